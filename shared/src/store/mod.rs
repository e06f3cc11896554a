//! Storage adapters. Each implements the ports and nothing else.

#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(any(feature = "memory", test))]
pub mod memory;
