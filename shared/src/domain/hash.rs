//! `ContentHash`: the SHA-256 of an object's bytes, which is also its storage key.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// SHA-256 of audio content. Text form is exactly 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashParseError {
    #[error("a content hash is exactly 64 lowercase hex digits")]
    Malformed,
    #[error("x-amz-checksum-sha256 must be the base64 of a 32-byte SHA-256 digest")]
    MalformedBase64,
}

impl ContentHash {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Hash of an in-memory slice (small inputs; large ones go through [`StreamingHasher`]).
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses the S3 checksum header form: base64 of the raw digest.
    pub fn from_base64(text: &str) -> Result<Self, HashParseError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| HashParseError::MalformedBase64)?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| HashParseError::MalformedBase64)?;
        Ok(Self(bytes))
    }

    /// The S3 checksum header form (`x-amz-checksum-sha256`).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for ContentHash {
    type Err = HashParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Uppercase is rejected on purpose: one content, one spelling, one key.
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(HashParseError::Malformed);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| HashParseError::Malformed)?;
        Ok(Self(out))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", &self.to_hex()[..12])
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 with a byte count, fed chunk by chunk so no file is held in memory.
#[derive(Default, Clone)]
pub struct StreamingHasher {
    digest: Sha256,
    len: u64,
}

impl StreamingHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.digest.update(chunk);
        self.len += chunk.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (ContentHash, u64) {
        (ContentHash(self.digest.finalize().into()), self.len)
    }
}

/// Hashes a reader to the end in fixed-size chunks.
pub fn hash_reader<R: std::io::Read>(mut reader: R) -> std::io::Result<(ContentHash, u64)> {
    let mut hasher = StreamingHasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_lowercase_hex() {
        let h: ContentHash = EMPTY.parse().unwrap();
        assert_eq!(h.to_string(), EMPTY);
        assert_eq!(h, ContentHash::of(b""));
    }

    #[test]
    fn rejects_everything_but_64_lowercase_hex() {
        for bad in [
            "",
            &EMPTY[..63],
            &format!("{EMPTY}0"),
            &EMPTY.to_uppercase(),
            &EMPTY.replace('e', "g"),
            "../../../../etc/passwd",
            &format!("{}/..", &EMPTY[..61]),
        ] {
            assert!(bad.parse::<ContentHash>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn base64_round_trip_matches_s3_checksum_form() {
        let h = ContentHash::of(b"hello");
        assert_eq!(
            h.to_base64(),
            "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
        );
        assert_eq!(ContentHash::from_base64(&h.to_base64()).unwrap(), h);
        assert!(ContentHash::from_base64("AAAA").is_err());
        assert!(ContentHash::from_base64("not base64!").is_err());
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut s = StreamingHasher::new();
        for chunk in data.chunks(7919) {
            s.update(chunk);
        }
        let (h, n) = s.finish();
        assert_eq!(h, ContentHash::of(&data));
        assert_eq!(n, data.len() as u64);
        let (h2, n2) = hash_reader(&data[..]).unwrap();
        assert_eq!((h2, n2), (h, n));
    }

    proptest::proptest! {
        #[test]
        fn any_digest_round_trips(bytes in proptest::array::uniform32(0u8..)) {
            let h = ContentHash::from_bytes(bytes);
            proptest::prop_assert_eq!(h.to_string().parse::<ContentHash>().unwrap(), h);
            proptest::prop_assert_eq!(ContentHash::from_base64(&h.to_base64()).unwrap(), h);
        }
    }
}
