//! The crate's own fast path through a store: answering a verification
//! from memory, with no future, and counting usage in the entry found.
//!
//! Sealed: [`KeyStore::fast_lookup`](super::KeyStore::fast_lookup) takes a
//! [`Seal`] only this crate can make and answers a [`FastLookup`] only this
//! crate can name, so no other store implements it and no wrapper has to
//! forward it. A store without it is verified through `find_by_hash`, which
//! is always correct.

use super::memory::StoredKeyRef;
use super::StoreError;
use crate::key::KeyHash;

/// Proof that the caller is this crate.
#[derive(Debug, Clone, Copy)]
pub struct Seal(());

impl Seal {
    pub(crate) const fn new() -> Seal {
        Seal(())
    }
}

/// A lookup answered without waiting.
pub trait FastLookup: Send + Sync {
    /// The entry whose key hashes to `hash`, read in place: `Some(answer)`
    /// when the store can answer now, `None` to say "call `find_by_hash`".
    /// An answer here is exactly what `find_by_hash` would answer at that
    /// moment.
    fn find_stored_now(&self, hash: &KeyHash) -> Option<Result<Option<StoredKeyRef>, StoreError>>;
}
