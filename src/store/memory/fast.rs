//! The crate's own fast path through a store: answering a verification
//! from memory, with no future, and counting usage in the entry found.
//!
//! Sealed: [`KeyStore::fast_lookup`](crate::KeyStore::fast_lookup) takes a
//! [`Seal`] only this crate can make and answers a [`FastLookup`] only this
//! crate can name, so no other store implements it and no wrapper has to
//! forward it. A store without it is verified through `find_by_hash`, which
//! is always correct. What it answers is a [`StoredKeyRef`]: the key's
//! entry, shared, wherever the store keeps it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::entry::{reads, Entry, StoredKey};
use super::slab::{SlabHandle, SlabLease};
use crate::key::{Environment, KeyHash, KeyHint, KeyId};
use crate::rate_limit::RateLimit;
use crate::record::KeyRecord;
use crate::store::StoreError;

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

/// A shared handle on a stored key: what
/// [`FastLookup::find_stored_now`] answers.
///
/// Made from an `Arc<StoredKey>` (`StoredKeyRef::from(arc)`), or by
/// [`MemoryStore`](crate::MemoryStore) for the keys it keeps side by side.
/// Cloning it is one atomic increment, on a counter the cloning thread
/// rarely shares with another.
#[derive(Clone)]
pub struct StoredKeyRef(Repr);

#[derive(Clone)]
enum Repr {
    Shared(Arc<StoredKey>),
    Slab { handle: Arc<SlabHandle>, index: u32 },
}

impl From<Arc<StoredKey>> for StoredKeyRef {
    fn from(stored: Arc<StoredKey>) -> StoredKeyRef {
        StoredKeyRef(Repr::Shared(stored))
    }
}

impl StoredKeyRef {
    /// Both parts of the key, found.
    pub(crate) fn entry(&self) -> Entry<'_> {
        match &self.0 {
            Repr::Shared(stored) => stored.entry(),
            Repr::Slab { handle, index } => handle.slab.entry(*index),
        }
    }

    /// Whether nothing but this handle can reach the key any more (a cache
    /// dropped it): its counters can no longer change.
    pub(crate) fn is_unreachable(&self) -> bool {
        match &self.0 {
            Repr::Shared(stored) => Arc::strong_count(stored) == 1,
            Repr::Slab { .. } => false,
        }
    }
}

reads!(StoredKeyRef);

impl SlabLease {
    /// A reference to the key at `index`, which must have been pushed.
    pub(crate) fn entry(self, index: u32) -> StoredKeyRef {
        StoredKeyRef(Repr::Slab {
            handle: self.handle(),
            index,
        })
    }
}
