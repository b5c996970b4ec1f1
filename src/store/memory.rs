//! The embedded, in-process store.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::{KeyStore, StoreError, StoreUpdate, UsageDelta, UsageTotals};
use crate::key::KeyHash;
use crate::record::{KeyId, KeyRecord};

/// Keys kept in memory: the default store, for one process and for tests.
///
/// Everything is lost when the process exits. Reads take a shard's read lock
/// only (a [`DashMap`]), so verifications on many threads do not contend on
/// one lock. Every change replaces a record under its shard's write lock, so
/// a revocation is seen by every lookup that starts after
/// [`revoke`](KeyStore::revoke) returns.
///
/// Cloning is cheap and clones share the same keys.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tm_auth::{KeyManager, MemoryStore, NewKey};
///
/// let store = MemoryStore::new();
/// let manager = KeyManager::new(store.clone());
/// manager.create(NewKey::new("acct_1", "Production")).await.unwrap();
/// assert_eq!(store.len(), 1);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The verification path: one lookup, one `Arc` clone.
    by_hash: DashMap<KeyHash, Arc<KeyRecord>>,
    /// Management by id. Lock order, everywhere: `by_id` before `by_hash`.
    by_id: DashMap<KeyId, KeyHash>,
    /// Each owner's ids in insertion order.
    by_owner: DashMap<String, Vec<KeyId>>,
    usage: DashMap<KeyId, UsageTotals>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many keys are stored, revoked ones included.
    pub fn len(&self) -> usize {
        self.inner.by_id.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.inner.by_id.is_empty()
    }

    fn record(&self, id: &KeyId) -> Option<KeyRecord> {
        let hash = self.inner.by_id.get(id)?;
        let record = self.inner.by_hash.get(&*hash)?;
        Some(KeyRecord::clone(&record))
    }

    /// Replaces the record with `id` by `change(record)`, atomically.
    fn modify(&self, id: &KeyId, change: impl FnOnce(&mut KeyRecord)) -> Option<KeyRecord> {
        let hash = self.inner.by_id.get(id)?;
        let mut slot = self.inner.by_hash.get_mut(&*hash)?;
        let mut record = KeyRecord::clone(&slot);
        change(&mut record);
        if record != **slot {
            *slot = Arc::new(record.clone());
        }
        Some(record)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.len())
            .finish()
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let Entry::Vacant(id_slot) = self.inner.by_id.entry(record.id) else {
            return Err(StoreError::Conflict);
        };
        let Entry::Vacant(hash_slot) = self.inner.by_hash.entry(record.hash) else {
            return Err(StoreError::Conflict);
        };
        let (id, hash, owner) = (record.id, record.hash, record.owner.clone());
        // The owner list is written while the id slot is still held, so no one
        // can see the key by id before it is listed.
        hash_slot.insert(Arc::new(record));
        self.inner.by_owner.entry(owner).or_default().push(id);
        id_slot.insert(hash);
        Ok(())
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.inner.by_hash.get(hash).map(|r| Arc::clone(&r)))
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.record(id))
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let ids = match self.inner.by_owner.get(owner) {
            Some(ids) => ids.clone(),
            None => return Ok(Vec::new()),
        };
        Ok(ids.iter().filter_map(|id| self.record(id)).collect())
    }

    async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.modify(id, |record| update.apply_to(record)))
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.modify(id, |record| {
            record.revoked_at.get_or_insert(at);
        }))
    }

    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        for delta in batch {
            if self.inner.by_id.contains_key(&delta.id) {
                self.inner.usage.entry(delta.id).or_default().add(delta);
            }
        }
        Ok(())
    }

    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        if !self.inner.by_id.contains_key(id) {
            return Ok(None);
        }
        Ok(Some(
            self.inner
                .usage
                .get(id)
                .map(|u| u.clone())
                .unwrap_or_default(),
        ))
    }
}
