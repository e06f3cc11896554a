//! The embedded store: SQLite (WAL) for the index, files on disk for blobs, and HMAC-signed
//! URLs that behave like S3 presigned requests. What the local server runs on.

mod blobs;
mod index;
mod parts;
mod signing;

pub use blobs::{object_dir, FsBlobStore};
pub use index::{SqliteIndex, Synchronous};
pub use parts::{uploads_in_progress, PartReceipt};
pub use signing::{SignError, SignedGet, SignedPart, SignedPut, UrlSigner};
