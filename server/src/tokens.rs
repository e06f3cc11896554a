//! The local token table: bearer token → user. Read from a JSON file or an environment
//! variable; the server refuses to start without one unless `--dev` asks it to make one.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use audio_dedup_api::{bearer, Authenticator, Caller};
use audio_dedup_core::UserId;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("the token table is not valid: {0}")]
    Invalid(String),
    #[error("no token table and no JWT issuer: pass --tokens FILE or set AUDIO_DEDUP_TOKENS, or --jwks with --jwt-issuer and --jwt-audience, or start with --dev")]
    Missing,
    #[error("cannot keep the dev token in {0}: {1}")]
    Write(String, std::io::Error),
}

/// The file in the data directory that keeps `--dev`'s token across restarts: a one-entry
/// token table, readable by its owner only.
pub const DEV_TOKENS_FILE: &str = "dev-tokens.json";

/// `--dev`'s token: the one kept in `data_dir`, or a new random one written there (mode
/// 0600, created with that mode, never widened after) for the next start to find.
pub fn dev_token(data_dir: &Path) -> Result<(String, TokenTable), TokenError> {
    let path = data_dir.join(DEV_TOKENS_FILE);
    let write_err = |e| TokenError::Write(path.display().to_string(), e);
    if !path.exists() {
        crate::private_files::create_dir(data_dir).map_err(write_err)?;
        let mut raw = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
        let token = format!("dev-{}", hex::encode(raw));
        let text = serde_json::json!({ &token: { "user": "dev", "admin": true } }).to_string();
        match crate::private_files::create_file(&path, text.as_bytes()) {
            Ok(()) => {}
            // Another start won the race: use its token.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(write_err(e)),
        }
    }
    let entries = read_entries(&path)?;
    let [(token, _)] = entries.0.as_slice() else {
        return Err(TokenError::Invalid(format!(
            "{} must hold exactly one token",
            path.display()
        )));
    };
    let token = token.clone();
    Ok((token, TokenTable::from_entries(entries)?))
}

/// A token file's entries, read and parsed once.
fn read_entries(path: &Path) -> Result<Entries, TokenError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TokenError::Read(path.display().to_string(), e))?;
    serde_json::from_str(&text).map_err(|e| TokenError::Invalid(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    user: String,
    #[serde(default)]
    admin: bool,
}

/// A token file's entries in file order, duplicates kept (a map would keep the last one
/// silently), so `insert` can refuse them.
struct Entries(Vec<(String, FileEntry)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of token -> {user, admin}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<String, FileEntry>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Tokens are kept only as SHA-256 digests, so the table in memory holds no secrets.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_digest: HashMap<[u8; 32], Caller>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenTable {
    pub fn insert(&mut self, token: &str, user: &str, admin: bool) -> Result<(), TokenError> {
        if token.len() < 16 {
            return Err(TokenError::Invalid(format!(
                "the token for {user} is shorter than 16 characters"
            )));
        }
        let user: UserId = user
            .parse()
            .map_err(|e| TokenError::Invalid(format!("{e}")))?;
        // A token listed twice would silently belong to whichever came last.
        match self.by_digest.entry(digest(token)) {
            std::collections::hash_map::Entry::Occupied(_) => Err(TokenError::Invalid(format!(
                "a token is listed twice (the second time for {user})"
            ))),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Caller { user, admin });
                Ok(())
            }
        }
    }

    /// `{"<token>": {"user": "alice", "admin": false}, ...}`
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        Self::from_entries(read_entries(path)?)
    }

    fn from_entries(entries: Entries) -> Result<Self, TokenError> {
        let mut t = Self::default();
        for (token, e) in entries.0 {
            t.insert(&token, &e.user, e.admin)?;
        }
        Ok(t)
    }

    /// `token=user[:admin],token=user`
    pub fn from_env_value(value: &str) -> Result<Self, TokenError> {
        let mut t = Self::default();
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (token, user) = pair
                .split_once('=')
                .ok_or_else(|| TokenError::Invalid("expected token=user".into()))?;
            let (user, admin) = match user.strip_suffix(":admin") {
                Some(u) => (u, true),
                None => (user, false),
            };
            t.insert(token, user, admin)?;
        }
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Adds every token of `other`; a token already here is an error.
    pub fn merge(&mut self, other: TokenTable) -> Result<(), TokenError> {
        for (d, caller) in other.by_digest {
            if self.by_digest.insert(d, caller).is_some() {
                return Err(TokenError::Invalid("a token is listed twice".into()));
            }
        }
        Ok(())
    }
}

impl Authenticator for TokenTable {
    fn authenticate(&self, parts: &http::request::Parts) -> Option<Caller> {
        self.by_digest.get(&digest(bearer(parts)?)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder();
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_token_listed_twice_is_refused_at_start_up() {
        let e = TokenTable::from_env_value("aaaaaaaaaaaaaaaa=alice,aaaaaaaaaaaaaaaa=root:admin")
            .unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.json");
        std::fs::write(
            &file,
            r#"{"aaaaaaaaaaaaaaaa": {"user": "alice"}, "aaaaaaaaaaaaaaaa": {"user": "root", "admin": true}}"#,
        )
        .unwrap();
        let e = TokenTable::from_file(&file).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let mut t = TokenTable::from_env_value("aaaaaaaaaaaaaaaa=alice").unwrap();
        let again = TokenTable::from_env_value("aaaaaaaaaaaaaaaa=bob").unwrap();
        assert!(t.merge(again).is_err());
    }

    #[test]
    fn env_table_authenticates_exact_tokens_only() {
        let t = TokenTable::from_env_value("aaaaaaaaaaaaaaaa=alice,bbbbbbbbbbbbbbbb=root:admin")
            .unwrap();
        let alice = t
            .authenticate(&parts(Some("Bearer aaaaaaaaaaaaaaaa")))
            .unwrap();
        assert_eq!((alice.user.as_str(), alice.admin), ("alice", false));
        assert!(
            t.authenticate(&parts(Some("bearer bbbbbbbbbbbbbbbb")))
                .unwrap()
                .admin
        );
        assert!(t
            .authenticate(&parts(Some("Bearer aaaaaaaaaaaaaaab")))
            .is_none());
        assert!(t
            .authenticate(&parts(Some("Basic aaaaaaaaaaaaaaaa")))
            .is_none());
        assert!(t.authenticate(&parts(None)).is_none());
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(TokenTable::from_env_value("short=alice").is_err());
        assert!(TokenTable::from_env_value("aaaaaaaaaaaaaaaa=../alice").is_err());
        assert!(TokenTable::from_env_value("aaaaaaaaaaaaaaaa").is_err());
    }
}
