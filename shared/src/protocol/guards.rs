//! The guards that scripts/mutation-check switches off, one at a time, to prove the
//! simulation catches each bug. Gathered here so the flows name them; without a
//! `mutation-*` feature (every real build) each is `true`.

/// Only active audio takes a new reference.
pub(crate) const STATE_CHECK: bool = !cfg!(feature = "mutation-no-state-check");
/// A reference is its own item, written once (`Expect::Absent`) and found on a retry.
pub(crate) const REFERENCE_ITEMS: bool = !cfg!(feature = "mutation-no-reference-items");
/// A decrement is conditioned on the audio record's version.
pub(crate) const DECREMENT_GUARD: bool = !cfg!(feature = "mutation-no-decrement-guard");
/// A deletion removes exactly the object version the record names.
pub(crate) const EXACT_VERSION_DELETE: bool = !cfg!(feature = "mutation-no-exact-version-delete");
