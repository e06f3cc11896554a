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
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
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
safe_id!(
    /// A client-chosen id for one reference (a message id, a library item id). Single use.
    ReferenceId, "reference id", 128
);
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
    fn ids_deserialize_through_validation() {
        assert!(serde_json::from_str::<UserId>("\"alice\"").is_ok());
        assert!(serde_json::from_str::<UserId>("\"../alice\"").is_err());
    }
}
