//! Where usage counts are kept: the [`UsageStore`] trait, what it stores
//! ([`UsageDelta`] batches adding up to [`UsageTotals`]), and
//! [`MemoryUsageStore`] for a key store that keeps no usage of its own.
//!
//! Usage is a trait of its own so that a custom [`KeyStore`](super::KeyStore)
//! needs none of it. The crate's stores keep usage beside their keys and say
//! so through [`KeyStore::usage_store`](super::KeyStore::usage_store); a
//! manager over a store that keeps none counts into a [`MemoryUsageStore`]
//! unless it is given another with
//! [`KeyManagerBuilder::usage_store`](crate::KeyManagerBuilder::usage_store).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;

use super::StoreError;
use crate::key::KeyId;

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
/// [`UsageStore::record_usage`].
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

/// Storage for usage counts, apart from the keys they count.
///
/// The manager adds each flushed batch with
/// [`record_usage`](UsageStore::record_usage) and reads the sums back. The
/// rules every implementation must keep (the
/// [conformance kit](crate::store::conformance) checks them):
///
/// - Batches add up: counts are summed, and the latest `last_used_at` wins
///   together with its `last_used_ip`, whatever order batches arrive in
///   ([`UsageTotals::add`] implements both).
/// - [`usage`](UsageStore::usage) answers `None` only for an id nothing was
///   recorded for. A store that knows its keys may answer `None` for ids of
///   no key, and ignore deltas for them; the manager answers
///   [`NotFound`](crate::ManagerError::NotFound) only for ids its key store
///   does not hold.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tm_auth::store::{MemoryUsageStore, UsageDelta, UsageStore};
/// use tm_auth::KeyId;
///
/// let usage = MemoryUsageStore::new();
/// let id = KeyId::generate();
/// let mut delta = UsageDelta::new(id);
/// delta.requests = 3;
/// usage.record_usage(&[delta.clone(), delta]).await?;
/// assert_eq!(usage.usage(&id).await?.map(|totals| totals.requests), Some(6));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds a batch of usage counts.
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError>;

    /// The totals recorded for `id`, or `None` (see the rules above).
    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError>;

    /// The totals of several keys, in the order of `ids`: what a page of
    /// keys shows, read at once. Each answer is what
    /// [`usage`](UsageStore::usage) would give.
    ///
    /// The default asks [`usage`](UsageStore::usage) for each; a store that
    /// can should answer with one query.
    async fn usage_batch(&self, ids: &[KeyId]) -> Result<Vec<Option<UsageTotals>>, StoreError> {
        let mut totals = Vec::with_capacity(ids.len());
        for id in ids {
            totals.push(self.usage(id).await?);
        }
        Ok(totals)
    }
}

macro_rules! delegate_usage_store {
    ($ty:ty) => {
        #[async_trait]
        impl<T: UsageStore + ?Sized> UsageStore for $ty {
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

delegate_usage_store!(Arc<T>);
delegate_usage_store!(Box<T>);

/// Usage totals kept in this process's memory, by key id: counts survive
/// flushes for the process's life and are lost when it ends.
///
/// What a manager counts into when its key store keeps no usage. It grows
/// by about a hundred bytes for each key ever used and never shrinks.
#[derive(Debug, Default)]
pub struct MemoryUsageStore {
    totals: Mutex<HashMap<KeyId, UsageTotals>>,
}

impl MemoryUsageStore {
    /// An empty store.
    pub fn new() -> MemoryUsageStore {
        MemoryUsageStore::default()
    }

    fn totals(&self) -> MutexGuard<'_, HashMap<KeyId, UsageTotals>> {
        // Every update is a whole `add` under the lock, so a panic elsewhere
        // cannot leave half a total behind.
        self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl UsageStore for MemoryUsageStore {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        let mut totals = self.totals();
        for delta in batch {
            totals.entry(delta.id).or_default().add(delta);
        }
        Ok(())
    }

    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        Ok(self.totals().get(id).cloned())
    }

    async fn usage_batch(&self, ids: &[KeyId]) -> Result<Vec<Option<UsageTotals>>, StoreError> {
        let totals = self.totals();
        Ok(ids.iter().map(|id| totals.get(id).cloned()).collect())
    }
}
