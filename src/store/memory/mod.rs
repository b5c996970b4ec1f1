//! The embedded, in-process store.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use async_trait::async_trait;

mod entry;
pub(crate) mod fast;
mod index;
mod slab;

use super::{
    AuditStore, KeyStore, MemoryAuditStore, StoreError, StoreUpdate, UsageDelta, UsageStore,
    UsageTotals,
};
use crate::key::KeyHash;
use crate::key::KeyId;
use crate::record::KeyRecord;
pub(crate) use entry::StoredKey;
pub(crate) use entry::{Entry, Restrictions};
pub(crate) use fast::StoredKeyRef;
use fast::{FastLookup, Seal};
use index::{hash_slot, id_slot, Index, MIN_SLOTS};
use slab::{Slab, SlabHandles};

/// Keys kept in memory: the default store, for one process and for tests.
///
/// Everything is lost when the process exits. Reads take no lock: a
/// verification reads one slot of an index and one entry, both with atomic
/// loads, so verifications on many threads never wait for each other or
/// for a writer. Changes are made in place in the key's entry, so a
/// revocation is seen by every lookup that starts after
/// [`revoke`](KeyStore::revoke) returns.
///
/// Cloning is cheap and clones share the same keys.
///
/// How it is laid out, because it decides what a verification costs. Keys
/// are kept in an append-only list (a key is never removed: a revoked key
/// stays listed), each in two parts: 128 bytes that a verification
/// reads and counts usage in, on a 128-byte boundary so the processor
/// fetches them as one block, and the rest beside them. Two open-addressing
/// indexes — by hash and by id — have 4-byte slots (the key's position and
/// part of the hash or id to filter with). A verification reads a slot,
/// then the key's 128 bytes, and confirms the full hash there. At a million
/// keys that is about 250 bytes for each key not used yet, and a
/// verification costs a little more than one lookup in a `HashMap` of the
/// hashes does (BENCHMARKS.md).
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
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// Most keys one store holds: an index slot keeps a position in at most 32
/// bits, and an index is at most three quarters full.
const MAX_KEYS: usize = 3 << 30;

struct Inner {
    entries: Arc<Slab>,
    handles: SlabHandles,
    by_hash: ArcSwap<Index>,
    by_id: ArcSwap<Index>,
    /// Held by every insert (so entries are appended one at a time and the
    /// indexes grow under one writer), and by listings.
    writer: Mutex<Owners>,
    /// Usage totals recorded by `record_usage`, by entry position.
    usage: Mutex<HashMap<u32, UsageTotals>>,
    /// The audit trail, bounded per owner.
    audit: MemoryAuditStore,
}

/// Each owner's keys, as a chain through the entries in insertion order.
#[derive(Default)]
struct Owners(HashMap<Arc<str>, Chain>);

#[derive(Clone, Copy)]
struct Chain {
    first: u32,
    last: u32,
    len: u32,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::with_audit(MemoryAuditStore::new())
    }

    fn with_audit(audit: MemoryAuditStore) -> MemoryStore {
        let entries = Arc::new(Slab::new());
        MemoryStore {
            inner: Arc::new(Inner {
                handles: SlabHandles::new(&entries),
                entries,
                by_hash: ArcSwap::from_pointee(Index::with_slots(MIN_SLOTS)),
                by_id: ArcSwap::from_pointee(Index::with_slots(MIN_SLOTS)),
                writer: Mutex::new(Owners::default()),
                usage: Mutex::new(HashMap::new()),
                audit,
            }),
        }
    }

    /// An empty store whose audit trail keeps the latest `events` events
    /// of each owner (the default keeps
    /// [`DEFAULT_AUDIT_EVENTS_PER_OWNER`](crate::store::DEFAULT_AUDIT_EVENTS_PER_OWNER)),
    /// dropping the oldest when an owner's is full.
    pub fn with_audit_capacity(events: usize) -> MemoryStore {
        MemoryStore::with_audit(MemoryAuditStore::with_capacity_per_owner(events))
    }

    /// How many keys are stored, revoked ones included.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn entry(&self, index: u32) -> Option<Entry<'_>> {
        self.entries.get(index)
    }

    /// Confirmed against the key's hot part only: what a verification reads.
    fn find_hash(&self, hash: &KeyHash) -> Option<u32> {
        let (key, tag) = hash_slot(hash);
        self.by_hash.load().find(key, tag, |index| {
            self.entries.hot(index).is_some_and(|hot| hot.hash_is(hash))
        })
    }

    fn find_id(&self, id: &KeyId) -> Option<u32> {
        let (key, tag) = id_slot(id);
        self.by_id.load().find(key, tag, |index| {
            self.entry(index).is_some_and(|e| e.id() == *id)
        })
    }

    fn by_id(&self, id: &KeyId) -> Option<Entry<'_>> {
        self.find_id(id).and_then(|index| self.entry(index))
    }

    /// Calls `each` with `owner`'s entries in insertion order, starting
    /// after the entry with id `after` (none if it is not one of the
    /// owner's), until `each` returns `false`.
    fn walk_owner(
        &self,
        owner: &str,
        after: Option<KeyId>,
        mut each: impl FnMut(Entry<'_>) -> bool,
    ) {
        let Some(chain) = self.writer().0.get(owner).copied() else {
            return;
        };
        // Every link up to the chain's last entry was written before the
        // chain was read: the walk ends there (or after `len` steps, a
        // bound that holds even if a link were wrong).
        let mut at = chain.first;
        if let Some(after) = after {
            let Some(index) = self.find_id(&after) else {
                return;
            };
            let Some(entry) = self.entry(index).filter(|e| e.owner() == owner) else {
                return;
            };
            if index == chain.last {
                return;
            }
            at = entry.next_of_owner().load(Ordering::Acquire);
        }
        for _ in 0..chain.len {
            let Some(entry) = self.entry(at) else {
                return;
            };
            if !each(entry) || at == chain.last {
                return;
            }
            at = entry.next_of_owner().load(Ordering::Acquire);
        }
    }

    fn writer(&self) -> MutexGuard<'_, Owners> {
        // Inserts leave the owner lists whole before anything can panic.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn usage(&self) -> MutexGuard<'_, HashMap<u32, UsageTotals>> {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// With the writer lock held: makes room for `keys` keys, rebuilding
    /// both indexes larger if they would be more than three quarters full.
    fn reserve(&self, keys: usize) {
        let slots = self.by_hash.load().slots.len();
        if keys <= slots / 4 * 3 {
            return;
        }
        let slots = (slots / 2 * 3).max(keys / 3 * 4 + 1);
        let (by_hash, by_id) = (Index::with_slots(slots), Index::with_slots(slots));
        for (index, entry) in self.entries.iter() {
            let (key, tag) = hash_slot(&entry.hash());
            by_hash.insert(key, tag, index);
            let (key, tag) = id_slot(&entry.id());
            by_id.insert(key, tag, index);
        }
        // Readers holding the old indexes finish with them; they still
        // find every key that was there when they started.
        self.by_hash.store(Arc::new(by_hash));
        self.by_id.store(Arc::new(by_id));
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
        let inner = &*self.inner;
        let mut owners = inner.writer();
        if inner.find_hash(&record.hash).is_some() || inner.find_id(&record.id).is_some() {
            return Err(StoreError::Conflict);
        }
        let count = inner.entries.len();
        if count >= MAX_KEYS {
            return Err(StoreError::backend(format!(
                "a MemoryStore holds at most {MAX_KEYS} keys"
            )));
        }
        inner.reserve(count + 1);
        let owner = match owners.0.get_key_value(record.owner.as_str()) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(record.owner.as_str()),
        };
        let (hash, id) = (hash_slot(&record.hash), id_slot(&record.id));
        let index = inner.entries.push(&record, Arc::clone(&owner));
        // Listed before it can be found, so no one finds a key by id that
        // its owner's list does not show.
        match owners.0.get_mut(&owner) {
            Some(chain) => {
                if let Some(last) = inner.entry(chain.last) {
                    last.next_of_owner().store(index, Ordering::Release);
                }
                chain.last = index;
                chain.len += 1;
            }
            None => {
                owners.0.insert(
                    owner,
                    Chain {
                        first: index,
                        last: index,
                        len: 1,
                    },
                );
            }
        }
        inner.by_id.load().insert(id.0, id.1, index);
        inner.by_hash.load().insert(hash.0, hash.1, index);
        Ok(())
    }

    // The manager uses `find_stored_now` (the fast path); other callers get
    // a copy of the record in an `Arc` of its own.
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.find_record(hash))
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.inner.by_id(id).map(Entry::record))
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let inner = &*self.inner;
        let mut records = Vec::new();
        inner.walk_owner(owner, None, |entry| {
            records.push(entry.record());
            true
        });
        Ok(records)
    }

    async fn list_page(
        &self,
        owner: &str,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let inner = &*self.inner;
        let mut records = Vec::new();
        if limit > 0 {
            inner.walk_owner(owner, after, |entry| {
                records.push(entry.record());
                records.len() < limit
            });
        }
        Ok(records)
    }

    async fn count_active(&self, owner: &str, now: SystemTime) -> Result<usize, StoreError> {
        let mut active = 0;
        self.inner.walk_owner(owner, None, |entry| {
            if !entry.is_revoked() && !entry.expired(now) {
                active += 1;
            }
            true
        });
        Ok(active)
    }

    async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.inner.by_id(id).map(|entry| entry.update(update)))
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.inner.by_id(id).map(|entry| entry.revoke(at)))
    }

    fn usage_store(&self) -> Option<&dyn UsageStore> {
        Some(self)
    }

    fn audit_store(&self) -> Option<&dyn AuditStore> {
        Some(&self.inner.audit)
    }

    fn fast_lookup(&self, _: Seal) -> Option<&dyn FastLookup> {
        Some(self)
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut usage = inner.usage();
        for delta in batch {
            if let Some(index) = inner.find_id(&delta.id) {
                usage.entry(index).or_default().add(delta);
            }
        }
        Ok(())
    }

    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        let inner = &*self.inner;
        Ok(inner
            .find_id(id)
            .map(|index| inner.usage().get(&index).cloned().unwrap_or_default()))
    }

    async fn usage_batch(&self, ids: &[KeyId]) -> Result<Vec<Option<UsageTotals>>, StoreError> {
        let inner = &*self.inner;
        let indexes: Vec<Option<u32>> = ids.iter().map(|id| inner.find_id(id)).collect();
        let usage = inner.usage();
        Ok(indexes
            .into_iter()
            .map(|index| index.map(|index| usage.get(&index).cloned().unwrap_or_default()))
            .collect())
    }
}

impl FastLookup for MemoryStore {
    fn find_stored_now(&self, hash: &KeyHash) -> Option<Result<Option<StoredKeyRef>, StoreError>> {
        let inner = &*self.inner;
        // Before the lookup: see `SlabHandles::pick`.
        let lease = inner.handles.pick();
        Some(Ok(inner.find_hash(hash).map(|index| lease.entry(index))))
    }
}

impl MemoryStore {
    fn find_record(&self, hash: &KeyHash) -> Option<Arc<KeyRecord>> {
        let inner = &*self.inner;
        let index = inner.find_hash(hash)?;
        inner.entry(index).map(|entry| Arc::new(entry.record()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicU32;

    use std::time::Duration;

    use super::*;
    use crate::key::{Environment, TmKey};
    use crate::store::{Rejections, UsageDelta};

    /// A live key's record for `owner`, with no expiry, limit or allowlist.
    pub(crate) fn record(owner: &str) -> KeyRecord {
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
            scopes: Vec::new(),
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
            let entry = wrapped
                .fast_lookup(Seal::new())
                .expect("a wrapped store must keep answering without a future")
                .find_stored_now(&stored.hash);
            assert!(matches!(entry, Some(Ok(Some(ref e))) if e.id() == stored.id));
        }
    }

    #[tokio::test]
    async fn a_used_key_counts_in_its_own_entry_across_edits() {
        let store = MemoryStore::new();
        let manager = crate::KeyManager::new(store.clone());
        let created = manager
            .create(crate::NewKey::new("acct", "Main"))
            .await
            .unwrap();
        let hash = created.key.hash();
        let counted = |store: &MemoryStore| match store.find_stored_now(&hash) {
            Some(Ok(Some(entry))) => entry.entry().counters().requests(),
            _ => panic!("the key is stored"),
        };
        assert_eq!(counted(&store), 0);
        manager
            .verify_key(&created.key, Default::default())
            .await
            .unwrap();
        assert_eq!(counted(&store), 1, "counted in the entry");
        let update = crate::KeyUpdate::new().name("Renamed");
        manager.update(&created.record.id, update).await.unwrap();
        manager
            .verify_key(&created.key, Default::default())
            .await
            .unwrap();
        assert_eq!(counted(&store), 2, "an edit keeps the entry and its counts");
        assert_eq!(manager.usage(&created.record.id).await.unwrap().requests, 2);
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
    }

    #[tokio::test]
    async fn keys_that_share_an_index_slot_are_told_apart() {
        let store = MemoryStore::new();
        let first = record("a");
        store.insert(first.clone()).await.unwrap();
        // The same 12 leading bytes of hash (slot and filter), another key.
        let mut bytes = *first.hash.as_bytes();
        bytes[31] ^= 1;
        let twin = KeyRecord {
            id: KeyId::from_u128(first.id.as_u128() ^ (1 << 127)),
            hash: KeyHash::from_bytes(bytes),
            ..first.clone()
        };
        store.insert(twin.clone()).await.unwrap();
        for key in [&first, &twin] {
            let found = store.find_by_hash(&key.hash).await.unwrap().unwrap();
            assert_eq!(found.id, key.id);
            assert_eq!(store.get(&key.id).await.unwrap().unwrap().hash, key.hash);
        }
        store.revoke(&twin.id, at(1)).await.unwrap();
        assert!(store
            .get(&first.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none());
    }

    #[tokio::test]
    async fn indexes_grow_and_ids_a_program_chose_spread_out() {
        let store = MemoryStore::new();
        let mut records = Vec::new();
        for i in 1..=5_000u128 {
            let r = KeyRecord {
                id: KeyId::from_u128(i),
                ..record(if i % 3 == 0 { "three" } else { "other" })
            };
            store.insert(r.clone()).await.unwrap();
            records.push(r);
        }
        assert_eq!(store.len(), 5_000);
        let slots = store.inner.by_id.load().slots.len();
        assert!(slots >= 5_000 / 3 * 4, "at most three quarters full");
        for r in &records {
            assert_eq!(store.get(&r.id).await.unwrap().as_ref(), Some(r));
            let found = store.find_stored_now(&r.hash).unwrap().unwrap().unwrap();
            assert_eq!(found.id(), r.id);
        }
        assert!(store.get(&KeyId::from_u128(5_001)).await.unwrap().is_none());
        assert!(store
            .find_by_hash(&record("x").hash)
            .await
            .unwrap()
            .is_none());
        // Sequential ids must not pile up: on average an entry sits within
        // a few slots of where its search starts (about 2 at this load).
        let index = store.inner.by_id.load();
        let mean = mean_displacement(&index, &store);
        assert!(
            mean < 4.0,
            "entries sit {mean:.1} slots from home on average"
        );
        assert_eq!(store.list_by_owner("three").await.unwrap().len(), 1_666);
    }

    #[test]
    fn slots_keep_the_position_and_as_many_filter_bits_as_fit() {
        for position_bits in [5, 20, 31, 32] {
            let index = Index {
                slots: (0..64).map(|_| AtomicU32::new(0)).collect(),
                position_bits,
            };
            // Three keys starting at the same slot, two of them with the
            // same filter bits: positions come back, and a filter that
            // differs in its top bits (kept by every width but 32) is told
            // apart without a look at the entry.
            index.insert(7, 0xABCD_0000, 3);
            index.insert(7, 0x1234_0000, 9);
            index.insert(7, 0xABCD_FFFF, 12);
            let found = |tag: u32, want: u32| index.find(7, tag, |at| at == want);
            assert_eq!(found(0xABCD_0000, 3), Some(3));
            assert_eq!(found(0x1234_0000, 9), Some(9));
            assert_eq!(found(0xABCD_FFFF, 12), Some(12));
            let mut looked = Vec::new();
            index.find(7, 0x1234_0000, |at| {
                looked.push(at);
                false
            });
            if position_bits < 32 {
                assert_eq!(looked, vec![9], "filtered at {position_bits} position bits");
            } else {
                assert_eq!(looked, vec![3, 9, 12], "no filter bits: every candidate");
            }
            assert_eq!(
                index.find(8, 0xABCD_0000, |_| true),
                None,
                "an empty slot ends it"
            );
        }
        assert_eq!(Index::with_slots(1_340_415).position_bits, 21);
    }

    fn mean_displacement(index: &Index, store: &MemoryStore) -> f64 {
        let len = index.slots.len();
        let mut total = 0usize;
        let mut entries = 0usize;
        for (at, slot) in index.slots.iter().enumerate() {
            let slot = u64::from(slot.load(Ordering::Relaxed));
            if slot == 0 {
                continue;
            }
            let position = slot & ((1u64 << index.position_bits) - 1);
            let entry = store.inner.entry(position as u32 - 1).unwrap();
            let home = index.start(id_slot(&entry.id()).0);
            total += (at + len - home) % len;
            entries += 1;
        }
        total as f64 / entries as f64
    }

    #[test]
    fn readers_find_every_key_inserted_before_they_look_while_the_store_grows() {
        let store = MemoryStore::new();
        let done = std::sync::atomic::AtomicBool::new(false);
        let inserted = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                for _ in 0..20_000 {
                    let r = record("a");
                    runtime.block_on(store.insert(r.clone())).unwrap();
                    inserted.lock().unwrap().push(r.hash);
                }
                done.store(true, Ordering::SeqCst);
            });
            s.spawn(|| {
                let mut checked = 0;
                while !done.load(Ordering::SeqCst) || checked == 0 {
                    let known: Vec<KeyHash> = inserted.lock().unwrap().clone();
                    for hash in known.iter().rev().take(200) {
                        let found = store.find_stored_now(hash);
                        assert!(matches!(found, Some(Ok(Some(_)))), "lost a key");
                        checked += 1;
                    }
                }
            });
        });
        assert_eq!(store.len(), 20_000);
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
        // Later expiries are ignored; earlier ones apply.
        for (asked, kept) in [(100, 100), (200, 100), (50, 50)] {
            let updated = store.update(&r.id, &expire(asked)).await.unwrap().unwrap();
            assert_eq!(updated.expires_at, Some(at(kept)), "asked {asked}");
        }
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
