//! HMAC-signed URLs for the local server, with S3 presigned-URL semantics: they name one
//! key (and for GETs one version), expire, and a PUT fixes its checksum, length, content
//! type and uploader. Anything changed breaks the signature.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::domain::{ContentHash, Millis, SignedRequest};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the signed URL is malformed or its signature does not match")]
    BadSignature,
    #[error("the signed URL has expired")]
    Expired,
    #[error("the request does not carry the signed header {0}")]
    HeaderMismatch(&'static str),
}

#[derive(Clone)]
pub struct UrlSigner {
    base_url: String,
    secret: [u8; 32],
}

/// A verified PUT grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPut {
    pub key: String,
    pub uploader: String,
    pub size: u64,
    pub sha256: ContentHash,
    pub content_type: String,
}

/// A verified grant to PUT one part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPart {
    pub key: String,
    pub upload_id: String,
    pub number: u32,
    pub size: u64,
    pub sha256: ContentHash,
}

/// A verified GET grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedGet {
    pub key: String,
    pub version: String,
    pub content_type: String,
}

/// Characters left as they are in query values: RFC 3986 unreserved.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

impl UrlSigner {
    pub fn new(base_url: impl Into<String>, secret: [u8; 32]) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            secret,
        }
    }

    fn mac(&self, parts: &[&str]) -> String {
        // new_from_slice only fails for invalid key lengths, and HMAC takes any length.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!());
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"\n");
        }
        hex::encode(m.finalize().into_bytes())
    }

    fn check(&self, parts: &[&str], signature: &str) -> Result<(), SignError> {
        let sig = hex::decode(signature).map_err(|_| SignError::BadSignature)?;
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!());
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"\n");
        }
        m.verify_slice(&sig).map_err(|_| SignError::BadSignature)
    }

    pub fn sign_put(
        &self,
        key: &str,
        uploader: &str,
        size: u64,
        sha256: &ContentHash,
        content_type: &str,
        expires_at: Millis,
    ) -> SignedRequest {
        let checksum = sha256.to_base64();
        let (size_s, exp_s) = (size.to_string(), expires_at.to_string());
        let sig = self.mac(&[
            "PUT",
            key,
            uploader,
            &size_s,
            &exp_s,
            &checksum,
            content_type,
        ]);
        let url = format!(
            "{}/blob/{}?X-Uploader={}&X-Size={}&X-Expires={}&X-Signature={}",
            self.base_url,
            key,
            enc(uploader),
            size,
            expires_at,
            sig
        );
        let headers = BTreeMap::from([
            ("content-type".to_owned(), content_type.to_owned()),
            ("if-none-match".to_owned(), "*".to_owned()),
            ("x-amz-checksum-sha256".to_owned(), checksum),
        ]);
        SignedRequest {
            url,
            method: "PUT".into(),
            headers,
            expires_at,
        }
    }

    /// A PUT of one part: the upload, part number, length and checksum are signed, as S3's
    /// presigned UploadPart signs them.
    pub fn sign_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        size: u64,
        sha256: &ContentHash,
        expires_at: Millis,
    ) -> SignedRequest {
        let checksum = sha256.to_base64();
        let (n, size_s, exp_s) = (number.to_string(), size.to_string(), expires_at.to_string());
        let sig = self.mac(&["PART", key, upload_id, &n, &size_s, &exp_s, &checksum]);
        let url = format!(
            "{}/blob/{}?X-Upload={}&X-Part={}&X-Size={}&X-Expires={}&X-Signature={}",
            self.base_url,
            key,
            enc(upload_id),
            number,
            size,
            expires_at,
            sig
        );
        SignedRequest {
            url,
            method: "PUT".into(),
            headers: BTreeMap::from([("x-amz-checksum-sha256".to_owned(), checksum)]),
            expires_at,
        }
    }

    /// Verifies a part PUT: query parameters, expiry and the signed checksum header.
    pub fn verify_part(
        &self,
        key: &str,
        query: &BTreeMap<String, String>,
        header: impl Fn(&str) -> Option<String>,
        now: Millis,
    ) -> Result<SignedPart, SignError> {
        let q = |k: &str| query.get(k).cloned().ok_or(SignError::BadSignature);
        let (upload_id, n, size_s, exp_s, sig) = (
            q("X-Upload")?,
            q("X-Part")?,
            q("X-Size")?,
            q("X-Expires")?,
            q("X-Signature")?,
        );
        let checksum = header("x-amz-checksum-sha256")
            .ok_or(SignError::HeaderMismatch("x-amz-checksum-sha256"))?;
        self.check(
            &["PART", key, &upload_id, &n, &size_s, &exp_s, &checksum],
            &sig,
        )?;
        let expires: Millis = exp_s.parse().map_err(|_| SignError::BadSignature)?;
        if now > expires {
            return Err(SignError::Expired);
        }
        Ok(SignedPart {
            key: key.to_owned(),
            upload_id,
            number: n.parse().map_err(|_| SignError::BadSignature)?,
            size: size_s.parse().map_err(|_| SignError::BadSignature)?,
            sha256: ContentHash::from_base64(&checksum)
                .map_err(|_| SignError::HeaderMismatch("x-amz-checksum-sha256"))?,
        })
    }

    pub fn sign_get(
        &self,
        key: &str,
        version: &str,
        content_type: &str,
        expires_at: Millis,
    ) -> SignedRequest {
        let exp_s = expires_at.to_string();
        let sig = self.mac(&["GET", key, version, &exp_s, content_type]);
        let url = format!(
            "{}/blob/{}?X-Version={}&X-Content-Type={}&X-Expires={}&X-Signature={}",
            self.base_url,
            key,
            enc(version),
            enc(content_type),
            expires_at,
            sig
        );
        SignedRequest {
            url,
            method: "GET".into(),
            headers: BTreeMap::new(),
            expires_at,
        }
    }

    /// Verifies a PUT: query parameters, expiry, and that the signed headers were sent as signed.
    pub fn verify_put(
        &self,
        key: &str,
        query: &BTreeMap<String, String>,
        header: impl Fn(&str) -> Option<String>,
        now: Millis,
    ) -> Result<SignedPut, SignError> {
        let q = |k: &str| query.get(k).cloned().ok_or(SignError::BadSignature);
        let (uploader, size_s, exp_s, sig) = (
            q("X-Uploader")?,
            q("X-Size")?,
            q("X-Expires")?,
            q("X-Signature")?,
        );
        let checksum = header("x-amz-checksum-sha256")
            .ok_or(SignError::HeaderMismatch("x-amz-checksum-sha256"))?;
        let content_type =
            header("content-type").ok_or(SignError::HeaderMismatch("content-type"))?;
        self.check(
            &[
                "PUT",
                key,
                &uploader,
                &size_s,
                &exp_s,
                &checksum,
                &content_type,
            ],
            &sig,
        )?;
        let expires: Millis = exp_s.parse().map_err(|_| SignError::BadSignature)?;
        if now > expires {
            return Err(SignError::Expired);
        }
        let sha256 = ContentHash::from_base64(&checksum)
            .map_err(|_| SignError::HeaderMismatch("x-amz-checksum-sha256"))?;
        let size = size_s.parse().map_err(|_| SignError::BadSignature)?;
        Ok(SignedPut {
            key: key.to_owned(),
            uploader,
            size,
            sha256,
            content_type,
        })
    }

    pub fn verify_get(
        &self,
        key: &str,
        query: &BTreeMap<String, String>,
        now: Millis,
    ) -> Result<SignedGet, SignError> {
        let q = |k: &str| query.get(k).cloned().ok_or(SignError::BadSignature);
        let (version, ct, exp_s, sig) = (
            q("X-Version")?,
            q("X-Content-Type")?,
            q("X-Expires")?,
            q("X-Signature")?,
        );
        self.check(&["GET", key, &version, &exp_s, &ct], &sig)?;
        let expires: Millis = exp_s.parse().map_err(|_| SignError::BadSignature)?;
        if now > expires {
            return Err(SignError::Expired);
        }
        Ok(SignedGet {
            key: key.to_owned(),
            version,
            content_type: ct,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_of(url: &str) -> BTreeMap<String, String> {
        let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let v = percent_decode(v);
                (k.to_owned(), v)
            })
            .collect()
    }

    fn percent_decode(s: &str) -> String {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .unwrap()
            .into_owned()
    }

    #[test]
    fn put_url_verifies_and_rejects_tampering_and_expiry() {
        let s = UrlSigner::new("http://127.0.0.1:3000", [7; 32]);
        let h = ContentHash::of(b"abc");
        let req = s.sign_put("audio/x", "session:ab", 3, &h, "audio/mpeg", 1_000);
        let q = query_of(&req.url);
        let hdr = |k: &str| req.headers.get(k).cloned();
        let ok = s.verify_put("audio/x", &q, hdr, 999).unwrap();
        assert_eq!(
            (ok.size, ok.sha256, ok.uploader.as_str()),
            (3, h, "session:ab")
        );
        assert_eq!(
            s.verify_put("audio/x", &q, hdr, 1_001),
            Err(SignError::Expired)
        );
        assert_eq!(
            s.verify_put("audio/y", &q, hdr, 0),
            Err(SignError::BadSignature)
        );
        let mut big = q.clone();
        big.insert("X-Size".into(), "4".into());
        assert_eq!(
            s.verify_put("audio/x", &big, hdr, 0),
            Err(SignError::BadSignature)
        );
        let other = ContentHash::of(b"abd").to_base64();
        let wrong_sum = |k: &str| {
            if k == "x-amz-checksum-sha256" {
                Some(other.clone())
            } else {
                hdr(k)
            }
        };
        assert_eq!(
            s.verify_put("audio/x", &q, wrong_sum, 0),
            Err(SignError::BadSignature)
        );
        let no_sum = |k: &str| {
            if k == "x-amz-checksum-sha256" {
                None
            } else {
                hdr(k)
            }
        };
        assert!(matches!(
            s.verify_put("audio/x", &q, no_sum, 0),
            Err(SignError::HeaderMismatch(_))
        ));
        let other_key = UrlSigner::new("http://127.0.0.1:3000", [8; 32]);
        assert_eq!(
            other_key.verify_put("audio/x", &q, hdr, 0),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn get_url_names_one_version() {
        let s = UrlSigner::new("http://h", [1; 32]);
        let req = s.sign_get("audio/x", "v1", "audio/mpeg", 50);
        let mut q = query_of(&req.url);
        assert_eq!(s.verify_get("audio/x", &q, 10).unwrap().version, "v1");
        q.insert("X-Version".into(), "v2".into());
        assert_eq!(
            s.verify_get("audio/x", &q, 10),
            Err(SignError::BadSignature)
        );
    }
}
