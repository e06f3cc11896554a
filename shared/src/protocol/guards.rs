//! The guards that scripts/mutation-check switches off, one at a time, to prove the
//! simulation catches each bug. Gathered here so the flows name them. Without the `mutants`
//! feature (every real build) each is the constant `true`; a `mutants` build reads
//! `AUDIO_DEDUP_MUTANT` once and turns off the guard it names, so one build serves every
//! mutant.

/// Only active audio takes a new reference.
pub(crate) fn state_check() -> bool {
    on(Guard::StateCheck)
}
/// A reference is its own item, written once (`Expect::Absent`) and found on a retry.
pub(crate) fn reference_items() -> bool {
    on(Guard::ReferenceItems)
}
/// A decrement is conditioned on the audio record's version.
pub(crate) fn decrement_guard() -> bool {
    on(Guard::Decrement)
}
/// A write to a count shard that skips the audio record is conditioned on the shard's
/// version (an open shard is what stands for "the audio is active and referenced").
pub(crate) fn count_shard_guard() -> bool {
    on(Guard::CountShard)
}
/// A deletion removes exactly the object version the record names.
pub(crate) fn exact_version_delete() -> bool {
    on(Guard::ExactVersionDelete)
}

/// Closing a session gives its place in the owner's quota back.
pub(crate) fn session_release() -> bool {
    on(Guard::SessionRelease)
}

/// A membership change retried after a lost compare-and-swap starts again from the thread
/// record as it is now (not the members it read first), so concurrent changes are not lost.
pub(crate) fn membership_reread() -> bool {
    on(Guard::MembershipReread)
}

/// The guards, named in `AUDIO_DEDUP_MUTANT` as the mutant that lacks one.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "mutants", derive(strum::EnumString))]
enum Guard {
    #[cfg_attr(feature = "mutants", strum(serialize = "no-state-check"))]
    StateCheck,
    #[cfg_attr(feature = "mutants", strum(serialize = "no-reference-items"))]
    ReferenceItems,
    #[cfg_attr(feature = "mutants", strum(serialize = "no-decrement-guard"))]
    Decrement,
    #[cfg_attr(feature = "mutants", strum(serialize = "no-count-shard-guard"))]
    CountShard,
    #[cfg_attr(feature = "mutants", strum(serialize = "no-exact-version-delete"))]
    ExactVersionDelete,
    #[cfg_attr(feature = "mutants", strum(serialize = "no-session-release"))]
    SessionRelease,
    #[cfg_attr(feature = "mutants", strum(serialize = "no-membership-reread"))]
    MembershipReread,
}

#[cfg(not(feature = "mutants"))]
fn on(_: Guard) -> bool {
    true
}

#[cfg(feature = "mutants")]
fn on(guard: Guard) -> bool {
    static OFF: std::sync::OnceLock<Option<Guard>> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| {
        let name = std::env::var("AUDIO_DEDUP_MUTANT")
            .ok()
            .filter(|n| !n.is_empty())?;
        // A misspelt name would leave every guard on and the mutant "survive": say so loudly.
        match name.parse() {
            Ok(g) => Some(g),
            Err(_) => panic!("AUDIO_DEDUP_MUTANT={name}: no such mutant"),
        }
    }) != Some(guard)
}
