//! Identifiers. Each is validated once at the edge so the core never sees a path-unsafe string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 1 to {max} characters of A-Z a-z 0-9 '-' '_'")]
pub struct IdParseError {
    pub what: &'static str,
    pub max: usize,
}

fn is_safe_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

macro_rules! safe_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal) => {
        safe_id!($(#[$doc])* $name, $what, $max, |_: &str| false);
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $stored:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if is_safe_id(s, $max) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdParseError { what: $what, max: $max })
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                // Stored records may hold server-assigned forms no client can send.
                let stored: fn(&str) -> bool = $stored;
                if stored(&s) {
                    return Ok(Self(s));
                }
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

safe_id!(
    /// The caller, as named by the authorizer (`sub`) or the local token table.
    UserId, "user id", 128
);
/// `sub` claims map to user ids by one injective rule, the same for every issuer and on
/// every path (the HTTP API, the WebSocket authorizer, the local server's JWT mode):
/// `A-Z a-z 0-9 -` are kept; `_` and every other byte of the UTF-8 become `_XX`, the byte in
/// uppercase hex. Decoding is unambiguous (an `_` always starts an escape), so two subjects
/// never share a user id. Cognito's UUID subjects map to themselves.
impl UserId {
    pub fn from_subject(sub: &str) -> Result<Self, IdParseError> {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let too_long = IdParseError {
            what: "user id (from the token's subject)",
            max: Self::MAX_LEN,
        };
        let mut out = String::with_capacity(sub.len());
        for b in sub.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' {
                out.push(char::from(b));
            } else {
                out.push('_');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xF)]));
            }
            // Checked as it grows: a huge subject is refused without a huge allocation.
            if out.len() > Self::MAX_LEN {
                return Err(too_long);
            }
        }
        if out.is_empty() {
            return Err(too_long);
        }
        Ok(Self(out))
    }
}

safe_id!(
    /// A client-chosen id for one reference. Single use. The server assigns the ids of the
    /// references that messages and library items hold (see [`ReferenceId::managed`]).
    ReferenceId, "reference id", 128, is_managed_ref_id
);
safe_id!(
    /// A thread's id: client-chosen (the idempotency key of its creation) or server-made.
    ThreadId, "thread id", 128
);
safe_id!(
    /// A message's id, chosen by the client (a UUIDv7): the idempotency key of its creation.
    MessageId, "message id", 128
);
safe_id!(
    /// A library item's id, chosen by its owner.
    LibraryItemId, "library item id", 128
);

/// `<tag>.<id>[.<n>]`: the '.' is outside the client grammar, so the references API can
/// never name (and so never remove) a reference that a message or library item holds.
fn is_managed_ref_id(s: &str) -> bool {
    let mut parts = s.splitn(3, '.');
    let (Some(tag), Some(id)) = (parts.next(), parts.next()) else {
        return false;
    };
    matches!(tag, "m" | "l")
        && is_safe_id(id, 128)
        && parts
            .next()
            .is_none_or(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
}

impl ReferenceId {
    /// The reference a message holds on its audio.
    pub fn of_message(id: &MessageId) -> Self {
        Self(format!("m.{id}"))
    }

    /// The reference incarnation `n` of a library item holds (ids are single-use, and an
    /// item can be deleted and put again).
    pub fn of_library_item(id: &LibraryItemId, n: u64) -> Self {
        Self(format!("l.{id}.{n}"))
    }

    /// Whether a message or library item holds this reference (not the references API).
    pub fn is_managed(&self) -> bool {
        is_managed_ref_id(&self.0)
    }
}

impl ThreadId {
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string(),
        )
    }
}
safe_id!(
    /// An upload session's id.
    SessionId, "session id", 64
);

impl SessionId {
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }
}

/// What holds a reference to audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceKind {
    Message,
    Library,
}

impl ReferenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Library => "library",
        }
    }
}

impl FromStr for ReferenceKind {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "message" => Ok(Self::Message),
            "library" => Ok(Self::Library),
            _ => Err(IdParseError {
                what: "reference kind (message or library)",
                max: 7,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_path_tricks_and_oversize() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a b",
            "a%2Fb",
            "é",
            &"x".repeat(129),
        ] {
            assert!(bad.parse::<ReferenceId>().is_err(), "accepted {bad:?}");
        }
        for good in [
            "msg_1",
            "0190c0de-7a7b-7c00-8000-000000000000",
            &"x".repeat(128),
        ] {
            assert!(good.parse::<ReferenceId>().is_ok());
        }
    }

    #[test]
    fn managed_reference_ids_are_stored_but_never_parsed_from_clients() {
        let m: MessageId = "0190c0de-7a7b".parse().unwrap();
        let r = ReferenceId::of_message(&m);
        assert!(r.is_managed());
        assert!(r.as_str().parse::<ReferenceId>().is_err());
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ReferenceId>(&json).unwrap(), r);
        let l = ReferenceId::of_library_item(&"fav".parse().unwrap(), 3);
        assert_eq!(l.as_str(), "l.fav.3");
        assert!(serde_json::from_str::<ReferenceId>(&serde_json::to_string(&l).unwrap()).is_ok());
        for bad in ["x.a", "m.", "m.a/b", "l.a.", "l.a.x", "m..", "m.a.1.2"] {
            assert!(!is_managed_ref_id(bad), "{bad}");
        }
        assert!(!"plain".parse::<ReferenceId>().unwrap().is_managed());
    }

    /// The inverse of `UserId::from_subject`, for the tests: proves the rule injective.
    fn subject_of(user: &UserId) -> Option<String> {
        let mut bytes = Vec::new();
        let mut it = user.as_str().bytes();
        while let Some(b) = it.next() {
            if b == b'_' {
                let hi = char::from(it.next()?).to_digit(16)?;
                let lo = char::from(it.next()?).to_digit(16)?;
                bytes.push(u8::try_from(hi * 16 + lo).ok()?);
            } else {
                bytes.push(b);
            }
        }
        String::from_utf8(bytes).ok()
    }

    #[test]
    fn subjects_map_to_user_ids_injectively() {
        let cases = [
            ("a_b", "a_5Fb"),
            ("a|b", "a_7Cb"),
            ("a_7Cb", "a_5F7Cb"),
            ("auth0|123", "auth0_7C123"),
            ("000123.abc.0456", "000123_2Eabc_2E0456"),
            ("é", "_C3_A9"),
            (
                "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
                "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (sub, user) in cases {
            let mapped = UserId::from_subject(sub).unwrap();
            assert_eq!(mapped.as_str(), user, "{sub}");
            assert_eq!(subject_of(&mapped).as_deref(), Some(sub));
            assert!(seen.insert(mapped), "{sub} collides");
        }
        // Limits: 128 kept bytes fit, 129 do not; an escape counts three.
        assert!(UserId::from_subject(&"x".repeat(128)).is_ok());
        assert!(UserId::from_subject(&"x".repeat(129)).is_err());
        assert!(UserId::from_subject(&"|".repeat(42)).is_ok());
        assert!(UserId::from_subject(&"|".repeat(43)).is_err());
        assert!(UserId::from_subject("").is_err());
        assert!(UserId::from_subject(&"é".repeat(10_000)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn subject_mapping_is_injective_and_valid(a in "\\PC{0,50}", b in "[a-z_|.0-9A-F]{0,12}") {
            for sub in [&a, &b] {
                if let Ok(user) = UserId::from_subject(sub) {
                    // Always a valid user id, and the subject can be read back from it.
                    proptest::prop_assert!(user.as_str().parse::<UserId>().is_ok());
                    let back = subject_of(&user);
                    proptest::prop_assert_eq!(back.as_deref(), Some(sub.as_str()));
                }
            }
            if let (Ok(ua), Ok(ub)) = (UserId::from_subject(&a), UserId::from_subject(&b)) {
                proptest::prop_assert_eq!(ua == ub, a == b);
            }
        }
    }

    #[test]
    fn ids_deserialize_through_validation() {
        assert!(serde_json::from_str::<UserId>("\"alice\"").is_ok());
        assert!(serde_json::from_str::<UserId>("\"../alice\"").is_err());
    }
}

/// An open WebSocket connection, as API Gateway names it (base64-like: `L0SM9cOFvHcCIhw=`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionId(String);

impl ConnectionId {
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ConnectionId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=_-".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdParseError {
                what: "connection id",
                max: Self::MAX_LEN,
            })
        }
    }
}

impl TryFrom<String> for ConnectionId {
    type Error = IdParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ConnectionId> for String {
    fn from(c: ConnectionId) -> Self {
        c.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}
