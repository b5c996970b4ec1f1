//! Where key records live: the [`KeyStore`] trait and its backends.
//!
//! A store never sees a plaintext key, only [`KeyRecord`]s holding the
//! key's SHA-256 hash. It cannot weaken a key either: no method clears
//! `revoked_at` or lengthens an expiry.
//!
//! [`MemoryStore`] is the embedded default. To keep keys elsewhere,
//! implement [`KeyStore`]; [`KeyManager`](crate::KeyManager) takes any
//! implementation, including `Arc<dyn KeyStore>`.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use ipnetwork::IpNetwork;

use crate::key::KeyHash;
use crate::key::KeyId;
use crate::record::{KeyRecord, KeyStatus};

pub mod cache;
#[cfg(feature = "conformance")]
pub mod conformance;
pub(crate) mod counters;
pub(crate) mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use memory::MemoryStore;
pub use memory::{StoredKey, StoredKeyRef};

/// A store failed. Management calls report it as
/// [`ManagerError::Store`](crate::ManagerError::Store); verification answers
/// 503 `key_store_unavailable` (fail closed: never let a request through,
/// never tell a valid key holder their key is bad).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A record with this id or hash already exists.
    #[error("a key with the same id or hash is already stored")]
    Conflict,
    /// The store did not answer within the configured timeout.
    #[error("the key store did not answer in time")]
    Timeout,
    /// The backend failed (connection lost, disk full, …).
    #[error("the key store failed: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    /// Wraps a backend's own error.
    pub fn backend(err: impl Into<Box<dyn StdError + Send + Sync>>) -> StoreError {
        StoreError::Backend(err.into())
    }
}

/// A change to a stored record, as the manager asks for it.
///
/// It carries nothing that could weaken a key: `expires_at` is applied only
/// if it is earlier than the record's current expiry (or the record has
/// none), and there is no way to touch `revoked_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreUpdate {
    /// A new (already validated) name.
    pub name: Option<String>,
    /// A new allowlist (empty: any address).
    pub allowed_ips: Option<Vec<IpNetwork>>,
    /// An expiry to apply if it is earlier than the current one.
    pub expires_at: Option<SystemTime>,
    /// A new rate limit (`Some(None)` removes it).
    pub rate_limit: Option<Option<crate::rate_limit::RateLimit>>,
}

impl StoreUpdate {
    /// Applies the update to `record` by the rules above. Stores may call this
    /// to keep the rules in one place; a revoked record is left unchanged.
    pub fn apply_to(&self, record: &mut KeyRecord) {
        if record.revoked_at.is_some() {
            return;
        }
        if let Some(name) = &self.name {
            record.name.clone_from(name);
        }
        if let Some(allowed) = &self.allowed_ips {
            record.allowed_ips.clone_from(allowed);
        }
        if let Some(limit) = self.rate_limit {
            record.rate_limit = limit;
        }
        if let Some(at) = self.expires_at {
            record.expires_at = Some(record.expires_at.map_or(at, |current| current.min(at)));
        }
    }
}

/// Requests rejected for a real key, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejections {
    /// The key was revoked.
    pub revoked: u64,
    /// The key had expired.
    pub expired: u64,
    /// A test key where only live keys are accepted, or the reverse.
    pub wrong_environment: u64,
    /// The client IP was outside the key's allowlist (or unknown).
    pub ip_not_allowed: u64,
    /// The key's rate limit was exceeded.
    pub rate_limited: u64,
}

impl Rejections {
    /// All rejections together.
    pub fn total(&self) -> u64 {
        self.revoked
            .saturating_add(self.expired)
            .saturating_add(self.wrong_environment)
            .saturating_add(self.ip_not_allowed)
            .saturating_add(self.rate_limited)
    }

    /// From counts in the order of the fields above.
    pub(crate) fn from_counts(counts: [u64; 5]) -> Rejections {
        let [revoked, expired, wrong_environment, ip_not_allowed, rate_limited] = counts;
        Rejections {
            revoked,
            expired,
            wrong_environment,
            ip_not_allowed,
            rate_limited,
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Rejections) {
        self.revoked = self.revoked.saturating_add(other.revoked);
        self.expired = self.expired.saturating_add(other.expired);
        self.wrong_environment = self
            .wrong_environment
            .saturating_add(other.wrong_environment);
        self.ip_not_allowed = self.ip_not_allowed.saturating_add(other.ip_not_allowed);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
    }
}

/// Usage of one key since the last flush: one element of a batch passed to
/// [`KeyStore::record_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageDelta {
    /// The key.
    pub id: KeyId,
    /// Successful verifications to add.
    pub requests: u64,
    /// Rejections to add.
    pub rejected: Rejections,
    /// The latest successful use in this batch, if any.
    pub last_used_at: Option<SystemTime>,
    /// The client address of that use, if known.
    pub last_used_ip: Option<IpAddr>,
}

impl UsageDelta {
    /// An empty delta for `id`.
    pub fn new(id: KeyId) -> UsageDelta {
        UsageDelta {
            id,
            requests: 0,
            rejected: Rejections::default(),
            last_used_at: None,
            last_used_ip: None,
        }
    }
}

/// The usage a store holds for one key: the sum of every delta recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageTotals {
    /// Successful verifications.
    pub requests: u64,
    /// Rejections of this key, by reason.
    pub rejected: Rejections,
    /// The latest successful use.
    pub last_used_at: Option<SystemTime>,
    /// The client address of that use, if it was known.
    pub last_used_ip: Option<IpAddr>,
}

impl UsageTotals {
    /// Folds one delta in: counts add up, and the later `last_used_at` wins
    /// (so batches applied out of order still end right).
    pub fn add(&mut self, delta: &UsageDelta) {
        self.requests = self.requests.saturating_add(delta.requests);
        self.rejected.add(&delta.rejected);
        if let Some(at) = delta.last_used_at {
            if self.last_used_at.is_none_or(|current| at >= current) {
                self.last_used_at = Some(at);
                self.last_used_ip = delta.last_used_ip;
            }
        }
    }
}

/// Storage for key records.
///
/// Implement it to keep keys in your own database; pass the store to
/// [`KeyManager::new`](crate::KeyManager::new). The rules every
/// implementation must keep:
///
/// - `insert` fails with [`StoreError::Conflict`] if the id or hash exists.
/// - `list_by_owner` returns records in insertion order.
/// - `update` never changes a revoked record and never lengthens an expiry
///   ([`StoreUpdate::apply_to`] implements both).
/// - `revoke` is atomic and idempotent: it sets `revoked_at` only if unset.
/// - Once `revoke` returns, no `find_by_hash` that starts afterwards may
///   return the record without `revoked_at` (on the same process; a store
///   shared by several processes documents its own bound).
///
/// ```
/// use std::sync::Arc;
/// use tm_auth::{KeyManager, KeyStore, MemoryStore};
///
/// // Any store works behind a trait object.
/// let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
/// let manager = KeyManager::new(store);
/// # let _ = manager;
/// ```
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new record.
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError>;

    /// The record whose key hashes to `hash`: the verification lookup.
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError>;

    /// The same lookup, answered without waiting when the store can (an
    /// in-memory map, a warm cache): `Some(answer)`, or `None` to say "call
    /// [`find_by_hash`](KeyStore::find_by_hash)". The default is `None`.
    ///
    /// Verification tries this first, so a store that answers here costs
    /// no future and no allocation per request. An answer here must be
    /// exactly what `find_by_hash` would answer at that moment.
    fn find_by_hash_now(
        &self,
        hash: &KeyHash,
    ) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        let _ = hash;
        None
    }

    /// The same lookup for a store that keeps its keys in memory as
    /// [`StoredKey`]s: the shared entry itself, answered without waiting, or
    /// `None` to say "call [`find_by_hash_now`](KeyStore::find_by_hash_now)".
    /// The default is `None`.
    ///
    /// Verification tries this first. It reads the entry in place, with no
    /// copy, and counts the request in the entry's own counters rather than
    /// in a map of the manager's. An answer here must be exactly what
    /// `find_by_hash` would answer at that moment.
    fn find_stored_now(&self, hash: &KeyHash) -> Option<Result<Option<StoredKeyRef>, StoreError>> {
        let _ = hash;
        None
    }

    /// The record with this id.
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// All of an owner's records, revoked ones included, oldest first.
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError>;

    /// One page of an owner's records, oldest first: up to `limit` of them,
    /// starting after the record with id `after` (from the oldest when
    /// `None`). An `after` that is not one of `owner`'s records gives an
    /// empty page.
    ///
    /// The default reads the whole list and cuts the page from it; a store
    /// that can should answer with one bounded query.
    async fn list_page(
        &self,
        owner: &str,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let all = self.list_by_owner(owner).await?;
        let start = match after {
            None => 0,
            Some(after) => match all.iter().position(|record| record.id == after) {
                Some(at) => at + 1,
                None => return Ok(Vec::new()),
            },
        };
        Ok(all.into_iter().skip(start).take(limit).collect())
    }

    /// How many of `owner`'s keys are active at `now`: neither revoked nor
    /// expired (`now >= expires_at`).
    ///
    /// The default counts the whole list; a store that can should count in
    /// one query.
    async fn count_active(&self, owner: &str, now: SystemTime) -> Result<usize, StoreError> {
        let all = self.list_by_owner(owner).await?;
        Ok(all
            .iter()
            .filter(|record| record.status_at(now) == KeyStatus::Active)
            .count())
    }

    /// Applies `update` (see [`StoreUpdate`]) and returns the record as it now
    /// is; `None` if there is no such id. A revoked record is returned
    /// unchanged.
    async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Sets `revoked_at` to `at` unless it is already set, and returns the
    /// record; `None` if there is no such id.
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError>;

    /// Adds a batch of usage counts. Deltas for unknown ids are ignored.
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError>;

    /// The usage totals recorded for `id`; `None` if there is no such id.
    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError>;

    /// The usage totals of several keys, in the order of `ids` (`None` for
    /// an id there is no key with): what a page of keys shows, read at once.
    ///
    /// The default asks [`usage`](KeyStore::usage) for each; a store that
    /// can should answer with one query.
    async fn usage_batch(&self, ids: &[KeyId]) -> Result<Vec<Option<UsageTotals>>, StoreError> {
        let mut totals = Vec::with_capacity(ids.len());
        for id in ids {
            totals.push(self.usage(id).await?);
        }
        Ok(totals)
    }
}

macro_rules! delegate_store {
    ($ty:ty) => {
        #[async_trait]
        impl<T: KeyStore + ?Sized> KeyStore for $ty {
            async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
                (**self).insert(record).await
            }
            async fn find_by_hash(
                &self,
                hash: &KeyHash,
            ) -> Result<Option<Arc<KeyRecord>>, StoreError> {
                (**self).find_by_hash(hash).await
            }
            // Forwarded, or a store behind an `Arc` or a `Box` would lose its
            // synchronous answers and cost a boxed future per verification.
            fn find_by_hash_now(
                &self,
                hash: &KeyHash,
            ) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
                (**self).find_by_hash_now(hash)
            }
            fn find_stored_now(
                &self,
                hash: &KeyHash,
            ) -> Option<Result<Option<StoredKeyRef>, StoreError>> {
                (**self).find_stored_now(hash)
            }
            async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
                (**self).get(id).await
            }
            async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
                (**self).list_by_owner(owner).await
            }
            async fn list_page(
                &self,
                owner: &str,
                after: Option<KeyId>,
                limit: usize,
            ) -> Result<Vec<KeyRecord>, StoreError> {
                (**self).list_page(owner, after, limit).await
            }
            async fn count_active(
                &self,
                owner: &str,
                now: SystemTime,
            ) -> Result<usize, StoreError> {
                (**self).count_active(owner, now).await
            }
            async fn update(
                &self,
                id: &KeyId,
                update: &StoreUpdate,
            ) -> Result<Option<KeyRecord>, StoreError> {
                (**self).update(id, update).await
            }
            async fn revoke(
                &self,
                id: &KeyId,
                at: SystemTime,
            ) -> Result<Option<KeyRecord>, StoreError> {
                (**self).revoke(id, at).await
            }
            async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
                (**self).record_usage(batch).await
            }
            async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
                (**self).usage(id).await
            }
            async fn usage_batch(
                &self,
                ids: &[KeyId],
            ) -> Result<Vec<Option<UsageTotals>>, StoreError> {
                (**self).usage_batch(ids).await
            }
        }
    };
}

delegate_store!(Arc<T>);
delegate_store!(Box<T>);
