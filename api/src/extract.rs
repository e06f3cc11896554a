//! Request parsing that answers every failure in the API's JSON error shape.

use std::fmt::Display;
use std::str::FromStr;

use audio_dedup_core::{
    AudioFormat, ContentHash, ErrorCode, LibraryItemId, MessageId, ReferenceId, ReferenceKind,
    SessionId, ThreadId, UserId,
};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest JSON body any route takes.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// A JSON body parsed strictly (unknown fields are refused by the types themselves).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        ErrorCode::BodyTooLarge,
                        "the JSON body is larger than this route takes (docs/api.md)",
                    )
                } else {
                    ApiError::new(
                        ErrorCode::UnreadableBody,
                        "the request body could not be read",
                    )
                }
            })?;
        if bytes.is_empty() {
            return Err(ApiError::new(
                ErrorCode::EmptyBody,
                "a JSON body is required",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))
    }
}

/// Path parameters as raw strings, for `PathIds`.
struct RawPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for RawPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| RawPath(t))
            .map_err(|e: PathRejection| {
                ApiError::new(
                    ErrorCode::InvalidPath,
                    format!("invalid path parameter: {e}"),
                )
            })
    }
}

/// The path's parameters (one, or a pair) parsed into their types, each refused with its
/// own code.
pub struct PathIds<T>(pub T);

impl<S: Send + Sync, A: Field + Send> FromRequestParts<S> for PathIds<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RawPath(a) = RawPath::<String>::from_request_parts(parts, state).await?;
        Ok(PathIds(field(&a)?))
    }
}

impl<S: Send + Sync, A: Field + Send, B: Field + Send> FromRequestParts<S> for PathIds<(A, B)> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RawPath((a, b)) = RawPath::<(String, String)>::from_request_parts(parts, state).await?;
        Ok(PathIds((field(&a)?, field(&b)?)))
    }
}

/// A query string parsed strictly.
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| StrictQuery(t))
            .map_err(|e: QueryRejection| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("invalid query string: {}", e.body_text()),
                )
            })
    }
}

/// A value the API takes as text (in a path, a query or a JSON string), with the code it is
/// refused with: the one place each type's code is chosen.
pub trait Field: FromStr<Err: Display> {
    const INVALID: ErrorCode;
}

macro_rules! fields {
    ($($t:ty => $code:ident),* $(,)?) => {
        $(impl Field for $t {
            const INVALID: ErrorCode = ErrorCode::$code;
        })*
    };
}

fields! {
    ContentHash => InvalidHash,
    AudioFormat => UnknownFormat,
    ReferenceId => InvalidRefId,
    ReferenceKind => InvalidRefKind,
    SessionId => InvalidSessionId,
    ThreadId => InvalidThreadId,
    MessageId => InvalidMessageId,
    LibraryItemId => InvalidItemId,
    UserId => InvalidMember,
}

/// Parses `raw` as a `T`, or refuses it with `T`'s code.
pub fn field<T: Field>(raw: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|e: T::Err| ApiError::new(T::INVALID, e.to_string()))
}

/// For an optional JSON field: absent is `None`, but an explicit `null` is refused (the
/// spec's optional fields are not nullable). Use with `#[serde(default, deserialize_with)]`.
pub fn non_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A JSON Schema `integer` that fits a `u64`. JSON Schema counts a number with a zero
/// fractional part (`70363.0`, `1e3`) as an integer, so those are accepted too.
pub fn json_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is exactly representable; every integral f64 below it fits a u64.
            if v.is_finite() && v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v)
            {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "super::json_u64")]
        n: u64,
        #[serde(default, deserialize_with = "super::non_null")]
        o: Option<String>,
    }

    fn parse(s: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn integers_in_any_json_spelling_and_no_nulls() {
        assert_eq!(
            parse(r#"{"n":5}"#).map(|t| (t.n, t.o)).ok(),
            Some((5, None))
        );
        assert_eq!(parse(r#"{"n":70363.0}"#).map(|t| t.n).ok(), Some(70363));
        assert_eq!(parse(r#"{"n":1e3}"#).map(|t| t.n).ok(), Some(1000));
        assert_eq!(
            parse(r#"{"n":1,"o":"x"}"#).map(|t| t.o).ok(),
            Some(Some("x".to_owned()))
        );
        for bad in [
            r#"{"n":-1}"#,
            r#"{"n":1.5}"#,
            r#"{"n":-0.5}"#,
            r#"{"n":1e30}"#,
            r#"{"n":"1"}"#,
            r#"{"n":null}"#,
            r#"{"n":1,"o":null}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
