//! Why an operation did not go through, typed, so an app can branch on it (show "sign in",
//! "file too large", "quota reached") instead of parsing text. Kept in the cache as JSON.

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ClientError, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureReason {
    /// No answer: offline, or the server down. Retried without using up the budget.
    #[error("no answer from the server")]
    NoAnswer,
    /// The server answered "later" (5xx, 408, 429); retried.
    #[error("temporarily refused ({status} {code:?})")]
    Unavailable { status: u16, code: ErrorCode },
    /// The server refused it for good (4xx); `code` says why: `payload_too_large`,
    /// `quota_exceeded`, `thread_not_found`, ….
    #[error("refused ({status} {code:?}): {message}")]
    Refused {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// The server kept answering "later" through every retry.
    #[error("gave up after {attempts} answered attempts ({status} {code:?})")]
    GaveUp {
        attempts: u32,
        status: u16,
        code: ErrorCode,
    },
    /// An operation it depends on (the upload of its audio) failed.
    #[error("an operation it depends on failed")]
    DependencyFailed,
    /// The queued file changed or vanished since it was queued.
    #[error("the file changed or vanished since it was queued")]
    FileChanged,
    /// Something on this device: a file that cannot be read, local data, an invalid input.
    #[error("{message}")]
    Local { message: String },
}

impl FailureReason {
    /// The server's error code, where the server gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Unavailable { code, .. }
            | Self::Refused { code, .. }
            | Self::GaveUp { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn of(e: &ClientError) -> Self {
        match e {
            ClientError::Api(ApiError::Offline(_)) => Self::NoAnswer,
            ClientError::Api(ApiError::Retryable { status, code, .. }) => Self::Unavailable {
                status: *status,
                code: *code,
            },
            ClientError::Api(ApiError::Rejected {
                status,
                code,
                message,
            }) => Self::Refused {
                status: *status,
                code: *code,
                message: message.clone(),
            },
            ClientError::FileChanged(_) => Self::FileChanged,
            other => Self::Local {
                message: other.to_string(),
            },
        }
    }
}

impl ToSql for FailureReason {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        serde_json::to_string(self)
            .map(ToSqlOutput::from)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }
}

impl FromSql for FailureReason {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = v.as_str()?;
        // Caches written before reasons were typed hold plain text.
        Ok(serde_json::from_str(text).unwrap_or_else(|_| Self::Local {
            message: text.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_the_cache_and_old_text_still_reads() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (r TEXT)").unwrap();
        let r = FailureReason::Refused {
            status: 413,
            code: ErrorCode::BodyTooLarge,
            message: "too big".into(),
        };
        conn.execute("INSERT INTO t VALUES (?1)", [&r]).unwrap();
        conn.execute("INSERT INTO t VALUES ('refused (400 bad_request): x')", [])
            .unwrap();
        let got: Vec<FailureReason> = conn
            .prepare("SELECT r FROM t")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got[0], r);
        assert_eq!(got[0].code(), Some(ErrorCode::BodyTooLarge));
        assert!(matches!(&got[1], FailureReason::Local { message } if message.contains("x")));
    }
}
