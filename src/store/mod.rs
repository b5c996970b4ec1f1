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
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use ipnetwork::IpNetwork;

use crate::key::KeyHash;
use crate::key::KeyId;
use crate::record::{KeyRecord, KeyStatus};

mod audit;
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
mod usage;

pub use audit::{AuditStore, MemoryAuditStore, DEFAULT_AUDIT_EVENTS_PER_OWNER};
pub use memory::MemoryStore;
pub use usage::{MemoryUsageStore, Rejections, UsageDelta, UsageStore, UsageTotals};

use memory::fast::{FastLookup, Seal};

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
    /// A new set of scopes, sorted and without repeats (empty:
    /// unrestricted).
    pub scopes: Option<Vec<crate::scope::Scope>>,
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
        if let Some(scopes) = &self.scopes {
            record.scopes.clone_from(scopes);
        }
        if let Some(at) = self.expires_at {
            record.expires_at = Some(record.expires_at.map_or(at, |current| current.min(at)));
        }
    }
}

/// Storage for key records: six methods to implement.
///
/// Implement it to keep keys in your own database and pass the store to
/// [`KeyManager::new`](crate::KeyManager::new) or
/// [`KeyManager::builder`](crate::KeyManager::builder). Paging and counting
/// have defaults built on `list_by_owner`; usage counts are a trait of their
/// own ([`UsageStore`]). The rules every implementation must keep, which the
/// [conformance kit](crate::store::conformance) checks:
///
/// - Every field of a record comes back as it was stored, the scopes
///   included: a store that dropped them would turn a restricted key into
///   an unrestricted one.
/// - `insert` fails with [`StoreError::Conflict`] if the id or hash exists.
/// - `list_by_owner` returns records in insertion order.
/// - `update` never changes a revoked record and never lengthens an expiry
///   ([`StoreUpdate::apply_to`] implements both).
/// - `revoke` is atomic and idempotent: it sets `revoked_at` only if unset.
/// - Once `revoke` returns, no `find_by_hash` that starts afterwards may
///   return the record without `revoked_at` (on the same process; a store
///   shared by several processes documents its own bound).
///
/// A whole store, kept in a `Vec` for the sake of the example:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::SystemTime;
/// use async_trait::async_trait;
/// use tm_auth::store::{KeyStore, StoreError, StoreUpdate};
/// use tm_auth::{KeyHash, KeyId, KeyManager, KeyRecord};
///
/// #[derive(Default)]
/// struct VecStore(Mutex<Vec<KeyRecord>>);
///
/// impl VecStore {
///     fn with<T>(&self, f: impl FnOnce(&mut Vec<KeyRecord>) -> T) -> T {
///         f(&mut self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
///     }
/// }
///
/// #[async_trait]
/// impl KeyStore for VecStore {
///     async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
///         self.with(|keys| {
///             if keys.iter().any(|k| k.id == record.id || k.hash == record.hash) {
///                 return Err(StoreError::Conflict);
///             }
///             keys.push(record);
///             Ok(())
///         })
///     }
///     async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
///         Ok(self.with(|keys| keys.iter().find(|k| k.hash == *hash).cloned().map(Arc::new)))
///     }
///     async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
///         Ok(self.with(|keys| keys.iter().find(|k| k.id == *id).cloned()))
///     }
///     async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
///         Ok(self.with(|keys| keys.iter().filter(|k| k.owner == owner).cloned().collect()))
///     }
///     async fn update(&self, id: &KeyId, update: &StoreUpdate) -> Result<Option<KeyRecord>, StoreError> {
///         Ok(self.with(|keys| {
///             let record = keys.iter_mut().find(|k| k.id == *id)?;
///             update.apply_to(record);
///             Some(record.clone())
///         }))
///     }
///     async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError> {
///         Ok(self.with(|keys| {
///             let record = keys.iter_mut().find(|k| k.id == *id)?;
///             record.revoked_at.get_or_insert(at);
///             Some(record.clone())
///         }))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = KeyManager::new(VecStore::default());
/// let created = manager.create(tm_auth::NewKey::new("acct_42", "Production")).await?;
/// assert!(manager.verify(created.key.expose_secret(), None).await.is_ok());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new record.
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError>;

    /// The record whose key hashes to `hash`: the verification lookup.
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError>;

    /// The record with this id.
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// All of an owner's records, revoked ones included, oldest first.
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError>;

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

    /// Where this store keeps usage counts, if it keeps them itself.
    ///
    /// The default is `None`: a manager over this store counts into a
    /// [`MemoryUsageStore`] unless it is given a [`UsageStore`] with
    /// [`KeyManagerBuilder::usage_store`](crate::KeyManagerBuilder::usage_store).
    /// A store that implements [`UsageStore`] as well answers `Some(self)`.
    fn usage_store(&self) -> Option<&dyn UsageStore> {
        None
    }

    /// Where this store keeps the audit trail, if it keeps it itself.
    ///
    /// The default is `None`: a manager over this store keeps events in a
    /// [`MemoryAuditStore`] unless it is given an [`AuditStore`] with
    /// [`KeyManagerBuilder::audit_store`](crate::KeyManagerBuilder::audit_store).
    /// A store that implements [`AuditStore`] as well answers `Some(self)`.
    fn audit_store(&self) -> Option<&dyn AuditStore> {
        None
    }

    /// The crate's own fast path (see `store::memory::fast`): sealed, and
    /// answered only by the crate's in-memory stores and caches.
    #[doc(hidden)]
    fn fast_lookup(&self, seal: Seal) -> Option<&dyn FastLookup> {
        let _ = seal;
        None
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
            fn usage_store(&self) -> Option<&dyn UsageStore> {
                (**self).usage_store()
            }
            fn audit_store(&self) -> Option<&dyn AuditStore> {
                (**self).audit_store()
            }
            // Forwarded, so a store shared as an `Arc` or a `Box` keeps its
            // answers from memory.
            fn fast_lookup(&self, seal: Seal) -> Option<&dyn FastLookup> {
                (**self).fast_lookup(seal)
            }
        }
    };
}

delegate_store!(Arc<T>);
delegate_store!(Box<T>);
