//! The embedded, in-process store.

use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::{KeyStore, StoreError, StoreUpdate, StoredKey, UsageDelta, UsageTotals};
use crate::key::KeyHash;
use crate::record::{KeyId, KeyRecord, UniformHasher};

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
/// Both indexes are keyed by 64 bits — the first 8 bytes of the key's
/// SHA-256, and the low 64 bits of the random id — and a hit is confirmed
/// against the full value. Both are uniform already, so they need no
/// rehashing and the slots stay small. Two keys sharing a 64-bit prefix
/// (about one chance in 10^7 at a million keys) cannot both be stored: the
/// second `insert` answers [`StoreError::Conflict`], and
/// [`KeyManager::create`](crate::KeyManager::create) then draws a new key.
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

type UniformMap<V> = DashMap<u64, V, BuildHasherDefault<UniformHasher>>;

fn hash_slot(hash: &KeyHash) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(prefix)
}

fn id_slot(id: &KeyId) -> u64 {
    // Truncation keeps the low 64 random bits.
    id.as_u128() as u64
}

#[derive(Default)]
struct Inner {
    /// The verification path: one lookup, one `Arc` clone.
    by_hash: UniformMap<Arc<StoredKey>>,
    /// Id to hash slot. Lock order, everywhere: `by_id` before `by_hash`.
    by_id: UniformMap<u64>,
    /// Each owner's keys (id slots) in insertion order.
    by_owner: DashMap<String, Vec<u64>>,
    usage: UniformMap<UsageTotals>,
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
        let slot = self.inner.by_id.get(&id_slot(id))?;
        let stored = self.inner.by_hash.get(&*slot)?;
        (stored.record().id == *id).then(|| stored.record().clone())
    }

    fn lookup(&self, hash: &KeyHash) -> Option<Arc<StoredKey>> {
        self.inner
            .by_hash
            .get(&hash_slot(hash))
            .filter(|stored| stored.record().hash == *hash)
            .map(|stored| Arc::clone(&stored))
    }

    fn contains(&self, id: &KeyId) -> bool {
        self.inner
            .by_id
            .get(&id_slot(id))
            .and_then(|slot| self.inner.by_hash.get(&*slot))
            .is_some_and(|stored| stored.record().id == *id)
    }

    /// Replaces the record with `id` by `change(record)`, atomically.
    fn modify(&self, id: &KeyId, change: impl FnOnce(&mut KeyRecord)) -> Option<KeyRecord> {
        let slot = self.inner.by_id.get(&id_slot(id))?;
        let mut stored = self.inner.by_hash.get_mut(&*slot)?;
        if stored.record().id != *id {
            return None;
        }
        let mut record = stored.record().clone();
        change(&mut record);
        if record != *stored.record() {
            *stored = Arc::new(stored.replaced(record.clone()));
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
        let (id, hash) = (id_slot(&record.id), hash_slot(&record.hash));
        let Entry::Vacant(id_entry) = self.inner.by_id.entry(id) else {
            return Err(StoreError::Conflict);
        };
        let Entry::Vacant(hash_entry) = self.inner.by_hash.entry(hash) else {
            return Err(StoreError::Conflict);
        };
        let owner = record.owner.clone();
        hash_entry.insert(Arc::new(StoredKey::new(record)));
        // Listed while the id entry is still held, so no one finds the key by
        // id before it is listed.
        self.inner.by_owner.entry(owner).or_default().push(id);
        id_entry.insert(hash);
        Ok(())
    }

    // The manager uses `find_stored_now`; other callers get a copy of the
    // record in an `Arc` of its own.
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self
            .lookup(hash)
            .map(|stored| Arc::new(stored.record().clone())))
    }

    fn find_by_hash_now(
        &self,
        hash: &KeyHash,
    ) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        Some(Ok(self
            .lookup(hash)
            .map(|stored| Arc::new(stored.record().clone()))))
    }

    fn find_stored_now(
        &self,
        hash: &KeyHash,
    ) -> Option<Result<Option<Arc<StoredKey>>, StoreError>> {
        Some(Ok(self.lookup(hash)))
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.record(id))
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let slots = match self.inner.by_owner.get(owner) {
            Some(slots) => slots.clone(),
            None => return Ok(Vec::new()),
        };
        Ok(slots
            .iter()
            .filter_map(|slot| {
                let hash = self.inner.by_id.get(slot)?;
                let stored = self.inner.by_hash.get(&*hash)?;
                Some(stored.record().clone())
            })
            .collect())
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
            if self.contains(&delta.id) {
                self.inner
                    .usage
                    .entry(id_slot(&delta.id))
                    .or_default()
                    .add(delta);
            }
        }
        Ok(())
    }

    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        if !self.contains(id) {
            return Ok(None);
        }
        Ok(Some(
            self.inner
                .usage
                .get(&id_slot(id))
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
            rate_limit: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn answers_at_once_behind_an_arc_or_a_box() {
        let store = MemoryStore::new();
        let stored = record("a");
        store.insert(stored.clone()).await.unwrap();
        let shared: Arc<dyn KeyStore> = Arc::new(store.clone());
        let boxed: Box<dyn KeyStore> = Box::new(store.clone());
        for wrapped in [&shared as &dyn KeyStore, &boxed as &dyn KeyStore] {
            let found = wrapped.find_by_hash_now(&stored.hash);
            assert!(
                matches!(found, Some(Ok(Some(ref r))) if r.id == stored.id),
                "a wrapped store must keep answering without a future"
            );
        }
    }

    #[tokio::test]
    async fn a_used_key_links_its_counters_and_keeps_the_link_across_edits() {
        let store = MemoryStore::new();
        let manager = crate::KeyManager::new(store.clone());
        let created = manager
            .create(crate::NewKey::new("acct", "Main"))
            .await
            .unwrap();
        let hash = created.key.hash();
        let linked = |store: &MemoryStore| match store.find_stored_now(&hash) {
            Some(Ok(Some(stored))) => stored.usage_link().is_set(),
            _ => panic!("the key is stored"),
        };
        assert!(!linked(&store), "an unused key has no counters");
        manager
            .verify_key(&created.key, Default::default())
            .await
            .unwrap();
        assert!(linked(&store), "the first use links the counters");
        let update = crate::KeyUpdate::new().name("Renamed");
        manager.update(&created.record.id, update).await.unwrap();
        assert!(linked(&store), "a new version keeps the link");
        // Another key's record never inherits it.
        let Some(Ok(Some(stored))) = store.find_stored_now(&hash) else {
            panic!("the key is stored");
        };
        let other = stored.replaced(record("acct"));
        assert!(!other.usage_link().is_set());
        let same = stored.replaced(stored.record().clone());
        assert!(same.usage_link().is_set());
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
        assert_eq!(store.list_by_owner("a").await.unwrap(), vec![first.clone()]);

        // Sharing only the 64-bit index prefix is a conflict too...
        let mut bytes = *first.hash.as_bytes();
        bytes[31] ^= 1;
        let near = KeyHash::from_bytes(bytes);
        let prefix_twin = KeyRecord {
            id: KeyId::generate(),
            hash: near,
            ..first.clone()
        };
        assert!(matches!(
            store.insert(prefix_twin).await,
            Err(StoreError::Conflict)
        ));
        let id_twin = KeyRecord {
            id: KeyId::from_u128(first.id.as_u128() ^ (1 << 100)),
            hash: record("a").hash,
            ..first.clone()
        };
        assert!(matches!(
            store.insert(id_twin.clone()).await,
            Err(StoreError::Conflict)
        ));
        // ...and a lookup that matches only the prefix finds nothing.
        assert!(store.find_by_hash(&near).await.unwrap().is_none());
        assert!(store.get(&id_twin.id).await.unwrap().is_none());
        assert!(store.revoke(&id_twin.id, at(1)).await.unwrap().is_none());
        assert!(store
            .get(&first.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none());
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
