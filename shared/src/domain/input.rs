//! What callers send, each rule in the one type that checks it when built. The api parses
//! into these and the services take only these, so no rule is checked twice or differently.

use serde_json::value::RawValue;

use super::{UserId, MAX_SNAPSHOT_BYTES, MAX_THREAD_MEMBERS, MAX_TITLE_LEN};
use crate::error::{DedupError, ErrorCode};

/// A thread's or library item's title: 1 to 200 characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub fn new(title: impl Into<String>) -> Result<Self, DedupError> {
        let title = title.into();
        let n = title.chars().count();
        let ok = (1..=MAX_TITLE_LEN).contains(&n)
            && !title.trim().is_empty()
            && !title.chars().any(char::is_control);
        if !ok {
            return Err(DedupError::refused(
                ErrorCode::InvalidTitle,
                format!("a title is 1 to {MAX_TITLE_LEN} characters, not blank, without control characters"),
            ));
        }
        Ok(Self(title))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Title> for String {
    fn from(t: Title) -> Self {
        t.0
    }
}

/// The other members a thread is created with, as listed: at most `MAX_THREAD_MEMBERS - 1`
/// entries, counted as sent (before duplicates and the caller are dropped), so the limit is
/// what the API's schema says (`maxItems`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members(Vec<UserId>);

impl Members {
    pub fn new(listed: Vec<UserId>) -> Result<Self, DedupError> {
        Self::check_count(listed.len())?;
        Ok(Self(listed))
    }

    /// Members as the API sends them: counted first, so an over-long list answers
    /// `too_many_members` whatever its names; then each name must be a user id.
    pub fn parse<S: AsRef<str>>(listed: &[S]) -> Result<Self, DedupError> {
        Self::check_count(listed.len())?;
        let users = listed
            .iter()
            .map(|m| {
                m.as_ref()
                    .parse::<UserId>()
                    .map_err(|e| DedupError::refused(ErrorCode::InvalidMember, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(users))
    }

    fn check_count(listed: usize) -> Result<(), DedupError> {
        if listed > MAX_THREAD_MEMBERS - 1 {
            return Err(DedupError::refused(
                ErrorCode::TooManyMembers,
                format!(
                    "members lists at most {} users besides the caller (who is always a member)",
                    MAX_THREAD_MEMBERS - 1
                ),
            ));
        }
        Ok(())
    }

    /// The thread's members: the caller first, then the others sorted, each once (a retry
    /// listing them in another order is the same thread).
    pub fn with_caller(&self, caller: &UserId) -> Vec<UserId> {
        let mut others: Vec<UserId> = self.0.iter().filter(|m| *m != caller).cloned().collect();
        others.sort();
        others.dedup();
        let mut members = Vec::with_capacity(others.len() + 1);
        members.push(caller.clone());
        members.extend(others);
        members
    }
}

/// A message's snapshot: any JSON value but `null`, at most `MAX_SNAPSHOT_BYTES` of text,
/// kept byte for byte as sent.
#[derive(Debug, Clone)]
pub struct Snapshot(Box<RawValue>);

impl Snapshot {
    pub fn new(raw: Box<RawValue>) -> Result<Self, DedupError> {
        if raw.get() == "null" {
            return Err(DedupError::refused(
                ErrorCode::InvalidSnapshot,
                "a snapshot is a JSON value other than null",
            ));
        }
        if raw.get().len() > MAX_SNAPSHOT_BYTES {
            return Err(DedupError::refused(
                ErrorCode::SnapshotTooLarge,
                format!("a snapshot is at most {MAX_SNAPSHOT_BYTES} bytes of JSON"),
            ));
        }
        Ok(Self(raw))
    }

    /// The JSON text, exactly as the client sent it.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    pub fn to_raw(&self) -> Box<RawValue> {
        self.0.clone()
    }
}

/// A proof of possession: the SHA-256 of the challenge, 64 hex digits (either case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof(String);

impl Proof {
    pub fn new(hex: &str) -> Result<Self, DedupError> {
        if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(DedupError::refused(
                ErrorCode::InvalidProof,
                "proof is 64 hex digits",
            ));
        }
        Ok(Self(hex.to_ascii_lowercase()))
    }

    /// Lower-case hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(r: Result<T, DedupError>) -> ErrorCode {
        r.unwrap_err().code()
    }

    #[test]
    fn titles() {
        assert_eq!(Title::new("Road trip").unwrap().as_str(), "Road trip");
        assert!(
            Title::new("é".repeat(MAX_TITLE_LEN)).is_ok(),
            "characters, not bytes"
        );
        for bad in ["", "   ", "a\nb", &"x".repeat(MAX_TITLE_LEN + 1)] {
            assert_eq!(code(Title::new(bad)), ErrorCode::InvalidTitle, "{bad:?}");
        }
    }

    #[test]
    fn members_are_counted_as_listed_and_kept_once() {
        let u = |s: &str| s.parse::<UserId>().unwrap();
        let most: Vec<UserId> = (0..MAX_THREAD_MEMBERS - 1)
            .map(|i| u(&format!("u{i}")))
            .collect();
        assert!(Members::new(most.clone()).is_ok());
        // Counted as listed: one more name is refused even if it repeats one.
        let mut over = most;
        over.push(u("u0"));
        assert_eq!(code(Members::new(over)), ErrorCode::TooManyMembers);
        let m = Members::new(vec![u("carol"), u("alice"), u("bob"), u("carol")]).unwrap();
        assert_eq!(
            m.with_caller(&u("alice")),
            [u("alice"), u("bob"), u("carol")]
        );
    }

    #[test]
    fn snapshots() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert_eq!(
            Snapshot::new(raw("{\"a\": 1}")).unwrap().text(),
            "{\"a\": 1}"
        );
        assert_eq!(code(Snapshot::new(raw("null"))), ErrorCode::InvalidSnapshot);
        let big = format!("\"{}\"", "x".repeat(MAX_SNAPSHOT_BYTES - 1));
        assert_eq!(code(Snapshot::new(raw(&big))), ErrorCode::SnapshotTooLarge);
        let fits = format!("\"{}\"", "x".repeat(MAX_SNAPSHOT_BYTES - 2));
        assert!(Snapshot::new(raw(&fits)).is_ok());
    }

    #[test]
    fn proofs() {
        assert_eq!(
            Proof::new(&"AB".repeat(32)).unwrap().as_str(),
            "ab".repeat(32)
        );
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(65)] {
            assert_eq!(code(Proof::new(bad)), ErrorCode::InvalidProof, "{bad:?}");
        }
    }
}
