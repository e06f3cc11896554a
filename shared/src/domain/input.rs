//! What callers send, each rule in the one type that checks it when built. The api parses
//! into these and the services take only these, so no rule is checked twice or differently.

use serde_json::value::RawValue;

use super::{
    UserId, MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_DEPTH, MAX_TEXT_CHARS, MAX_THREAD_MEMBERS,
    MAX_TITLE_LEN,
};
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
            && !title.chars().any(|c| breaks_display(c, false));
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
/// nested at most `MAX_SNAPSHOT_DEPTH` arrays or objects deep, kept byte for byte as sent.
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
        if json_depth(raw.get()) > MAX_SNAPSHOT_DEPTH {
            return Err(DedupError::refused(
                ErrorCode::SnapshotTooDeep,
                format!("a snapshot nests at most {MAX_SNAPSHOT_DEPTH} arrays or objects"),
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

/// The deepest nesting of arrays and objects in valid JSON text, counted in one pass over
/// its bytes (no recursion, so any depth is safe to measure). Brackets inside strings do not
/// count; an escaped quote does not end a string.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The characters another member's client must never be handed in text it shows: control
/// characters other than line feed and tab, and the bidirectional overrides and isolates
/// that reorder the text around them (a title could make a message read as another's).
fn breaks_display(c: char, allow_lines: bool) -> bool {
    if allow_lines && (c == '\n' || c == '\t') {
        return false;
    }
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A message's plain-text body: 1 to `MAX_TEXT_CHARS` characters, not blank; line feeds
/// and tabs allowed, no other control characters or bidirectional overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn new(text: impl Into<String>) -> Result<Self, DedupError> {
        let text = text.into();
        let ok = !text.is_empty()
            && text.chars().count() <= MAX_TEXT_CHARS
            && !text.trim().is_empty()
            && !text.chars().any(|c| breaks_display(c, true));
        if !ok {
            return Err(DedupError::refused(
                ErrorCode::InvalidText,
                format!(
                    "a message text is 1 to {MAX_TEXT_CHARS} characters, not blank, with no control characters but line feeds and tabs"
                ),
            ));
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<MessageText> for String {
    fn from(t: MessageText) -> Self {
        t.0
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
        for bad in [
            "",
            "   ",
            "a\nb",
            "a\u{202e}b",
            &"x".repeat(MAX_TITLE_LEN + 1),
        ] {
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
    fn snapshot_nesting_is_limited_in_any_shape() {
        let raw = |s: String| RawValue::from_string(s).unwrap();
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(Snapshot::new(raw(nested(MAX_SNAPSHOT_DEPTH))).is_ok());
        assert_eq!(
            code(Snapshot::new(raw(nested(MAX_SNAPSHOT_DEPTH + 1)))),
            ErrorCode::SnapshotTooDeep
        );
        // The attack from issue #25: 20,000 nested arrays in 40 KB.
        assert_eq!(
            code(Snapshot::new(raw(nested(20_000)))),
            ErrorCode::SnapshotTooDeep
        );
        let objects = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_SNAPSHOT_DEPTH + 1),
            "}".repeat(MAX_SNAPSHOT_DEPTH + 1)
        );
        assert_eq!(
            code(Snapshot::new(raw(objects))),
            ErrorCode::SnapshotTooDeep
        );
        // Brackets in strings, and escaped quotes, are not nesting.
        let in_string = format!(r#"{{"s":"{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert!(Snapshot::new(raw(in_string)).is_ok());
        // Siblings do not add up.
        let wide = format!("[{}]", vec![nested(60); 100].join(","));
        assert!(Snapshot::new(raw(wide)).is_ok());
    }

    #[test]
    fn message_texts() {
        assert_eq!(
            MessageText::new("line one\n\tline two").unwrap().as_str(),
            "line one\n\tline two"
        );
        assert!(
            MessageText::new("é".repeat(MAX_TEXT_CHARS)).is_ok(),
            "characters"
        );
        for bad in [
            String::new(),
            " \n ".into(),
            "a\u{0}b".into(),
            "a\rb".into(),
            "bell\u{7}".into(),
            "esc\u{1b}[31m".into(),
            "\u{202e}reversed".into(),
            "x".repeat(MAX_TEXT_CHARS + 1),
        ] {
            assert_eq!(
                code(MessageText::new(bad.clone())),
                ErrorCode::InvalidText,
                "{bad:?}"
            );
        }
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
