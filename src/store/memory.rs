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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::{Environment, TmKey};
    use crate::store::{Rejections, UsageDelta};

    fn record(owner: &str) -> KeyRecord {
        let key = TmKey::generate(Environment::Live);
        KeyRecord {
            id: KeyId::generate(),
            owner: owner.to_owned(),
            name: "Main".to_owned(),
            environment: Environment::Live,
            hint: key.hint(),
            hash: key.hash(),
            allowed_ips: Vec::new(),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            revoked_at: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn duplicate_ids_or_hashes_conflict() {
        let store = MemoryStore::new();
        let first = record("a");
        store.insert(first.clone()).await.unwrap();
        let same_id = KeyRecord {
            hash: record("a").hash,
            ..first.clone()
        };
        assert!(matches!(
            store.insert(same_id).await,
            Err(StoreError::Conflict)
        ));
        let same_hash = KeyRecord {
            id: KeyId::generate(),
            ..first.clone()
        };
        assert!(matches!(
            store.insert(same_hash).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.len(), 1);
        assert_eq!(store.list_by_owner("a").await.unwrap(), vec![first]);
    }

    #[tokio::test]
    async fn lists_keep_insertion_order_per_owner() {
        let store = MemoryStore::new();
        let mut expected = Vec::new();
        for i in 0..20 {
            let r = record(if i % 2 == 0 { "even" } else { "odd" });
            if i % 2 == 0 {
                expected.push(r.id);
            }
            store.insert(r).await.unwrap();
        }
        let listed: Vec<KeyId> = store
            .list_by_owner("even")
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, expected);
        assert!(store.list_by_owner("nobody").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn updates_never_weaken_a_key() {
        let store = MemoryStore::new();
        let r = record("a");
        store.insert(r.clone()).await.unwrap();
        let expire = |secs| StoreUpdate {
            expires_at: Some(at(secs)),
            ..StoreUpdate::default()
        };
        assert_eq!(
            store
                .update(&r.id, &expire(100))
                .await
                .unwrap()
                .unwrap()
                .expires_at,
            Some(at(100))
        );
        // Later expiries are ignored; earlier ones apply.
        assert_eq!(
            store
                .update(&r.id, &expire(200))
                .await
                .unwrap()
                .unwrap()
                .expires_at,
            Some(at(100))
        );
        assert_eq!(
            store
                .update(&r.id, &expire(50))
                .await
                .unwrap()
                .unwrap()
                .expires_at,
            Some(at(50))
        );
        // Revocation is kept at its first time and freezes the record.
        let revoked = store.revoke(&r.id, at(10)).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(at(10)));
        assert_eq!(
            store
                .revoke(&r.id, at(20))
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(at(10))
        );
        let rename = StoreUpdate {
            name: Some("Renamed".into()),
            ..StoreUpdate::default()
        };
        let after = store.update(&r.id, &rename).await.unwrap().unwrap();
        assert_eq!(after.name, "Main");
        assert_eq!(after.revoked_at, Some(at(10)));
        // The verification path sees the revocation.
        let found = store.find_by_hash(&r.hash).await.unwrap().unwrap();
        assert_eq!(found.revoked_at, Some(at(10)));
        // Unknown ids.
        assert!(store
            .update(&KeyId::generate(), &rename)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .revoke(&KeyId::generate(), at(1))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn usage_batches_add_up() {
        let store = MemoryStore::new();
        let r = record("a");
        store.insert(r.clone()).await.unwrap();
        assert_eq!(
            store.usage(&r.id).await.unwrap(),
            Some(UsageTotals::default())
        );
        let mut first = UsageDelta::new(r.id);
        first.requests = 3;
        first.last_used_at = Some(at(20));
        first.last_used_ip = Some("203.0.113.1".parse().unwrap());
        let mut older = UsageDelta::new(r.id);
        older.requests = 2;
        older.rejected = Rejections {
            revoked: 1,
            ip_not_allowed: 2,
            ..Rejections::default()
        };
        older.last_used_at = Some(at(10));
        older.last_used_ip = Some("203.0.113.2".parse().unwrap());
        let unknown = UsageDelta::new(KeyId::generate());
        store
            .record_usage(&[first, older, unknown.clone()])
            .await
            .unwrap();
        let totals = store.usage(&r.id).await.unwrap().unwrap();
        assert_eq!(totals.requests, 5);
        assert_eq!(totals.rejected.total(), 3);
        assert_eq!(
            totals.last_used_at,
            Some(at(20)),
            "the latest use wins, whatever the order"
        );
        assert_eq!(totals.last_used_ip, Some("203.0.113.1".parse().unwrap()));
        assert_eq!(store.usage(&unknown.id).await.unwrap(), None);
    }
}
