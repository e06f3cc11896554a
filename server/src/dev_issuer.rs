//! `audio-dedup-server dev-issuer`: a JWT issuer in a folder, to try JWT mode by hand. `init`
//! writes a private ES256 key (mode 0600) and its JWKS; `token` mints a token from that key.
//! The server then runs with `--jwks D/jwks.json --jwt-issuer ISS --jwt-audience AUD`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use audio_dedup_core::identity::testing::{TestIssuer, TestIssuerError};

/// The private key, PKCS#8 PEM, readable by its owner only.
pub const KEY_FILE: &str = "issuer-key.pem";
/// The public keys, as an issuer serves them: what `--jwks` names.
pub const JWKS_FILE: &str = "jwks.json";
/// The issuer and audience `init` and `token` use unless told otherwise.
pub const DEFAULT_ISSUER: &str = TestIssuer::ISSUER;
pub const DEFAULT_AUDIENCE: &str = TestIssuer::AUDIENCE;

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path} (run `dev-issuer init --dir` first?): {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] TestIssuerError),
}

/// What `init` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initialized {
    pub key: PathBuf,
    pub jwks: PathBuf,
    /// False when `dir` already held a key (it is kept, so earlier tokens stay valid).
    pub created: bool,
}

/// Creates `dir` with a new key and its JWKS; an existing key is kept and its JWKS
/// written again.
pub fn init(dir: &Path) -> Result<Initialized, DevIssuerError> {
    let key = dir.join(KEY_FILE);
    let jwks = dir.join(JWKS_FILE);
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DevIssuerError::Write { path, source }
    };
    crate::private_files::create_dir(dir).map_err(write_err(dir))?;
    let created = !key.exists();
    let issuer = if created {
        let issuer = TestIssuer::new();
        crate::private_files::create_file(&key, issuer.private_key_pem()?.as_bytes())
            .map_err(write_err(&key))?;
        issuer
    } else {
        load(dir, DEFAULT_ISSUER, DEFAULT_AUDIENCE)?
    };
    issuer.write_jwks(&jwks)?;
    Ok(Initialized { key, jwks, created })
}

/// A token for `sub`, valid for `ttl`, from the key in `dir`.
pub fn token(
    dir: &Path,
    sub: &str,
    ttl: Duration,
    issuer: &str,
    audience: &str,
) -> Result<String, DevIssuerError> {
    let issuer = load(dir, issuer, audience)?;
    Ok(issuer.try_sign_with_header(&issuer.header(), &issuer.claims(sub, ttl))?)
}

fn load(dir: &Path, issuer: &str, audience: &str) -> Result<TestIssuer, DevIssuerError> {
    let path = dir.join(KEY_FILE);
    let pem = std::fs::read_to_string(&path).map_err(|source| DevIssuerError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(TestIssuer::from_private_key_pem(&pem, issuer, audience)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_keeps_its_key_and_tokens_verify_against_its_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("issuer");
        let first = init(&d).unwrap();
        assert!(first.created);
        let jwks = std::fs::read_to_string(&first.jwks).unwrap();
        let again = init(&d).unwrap();
        assert!(!again.created);
        assert_eq!(std::fs::read_to_string(&again.jwks).unwrap(), jwks);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
        }
        let t = token(&d, "alice", Duration::from_secs(10), "iss", "aud").unwrap();
        assert_eq!(t.split('.').count(), 3);
        assert!(matches!(
            token(
                &dir.path().join("none"),
                "a",
                Duration::from_secs(1),
                "i",
                "a"
            ),
            Err(DevIssuerError::Read { .. })
        ));
    }
}
