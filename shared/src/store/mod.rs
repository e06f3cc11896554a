//! Storage adapters. Each implements the ports and nothing else.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "memory")]
pub mod memory;
