//! [`CachedStore`]: verification at in-memory speed in front of a remote
//! store, kept true by a change feed.
//!
//! A cache in front of a shared database is only as good as what tells it
//! that a key changed elsewhere. Here that is an [`Invalidator`], fed by the
//! backend's own change channel (for PostgreSQL, `LISTEN/NOTIFY`: see
//! [`PostgresStore::cached`](crate::store::postgres::PostgresStore::cached)).
//! The cache answers only while the feed vouches for it:
//!
//! - A feed that is down ([`Invalidator::disconnected`]) stops every cached
//!   answer at once: lookups go to the store until the feed is back, and the
//!   cache is emptied when it is (changes made meanwhile were not heard).
//! - A feed that falls silent stops the cache by itself: each
//!   [`Invalidator::synced`] (the feed proving it has delivered every change
//!   made before a moment) trusts the cache for
//!   [`CacheConfig::max_staleness`] after that moment, no longer.
//!
//! So a change made anywhere is refused here once its notification arrives
//! (typically milliseconds), and in every case within `max_staleness`.
//! Changes made through this `CachedStore` itself take effect before the
//! call returns.
//!
//! Positive and negative ("no such key") entries are bounded apart, so a
//! flood of unknown keys cannot evict real ones; a negative entry is written
//! only when the store answered "not found", never on an error, lives
//! [`CacheConfig::negative_ttl`] at most, and is dropped when a key with that
//! hash is inserted.

use std::any::Any;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::memory::fast::{FastLookup, Seal};
use super::memory::{StoredKey, StoredKeyRef};
use super::{KeyStore, StoreError, StoreUpdate, UsageStore};
use crate::key::KeyHash;
use crate::key::{KeyId, UniformHasher};
use crate::record::KeyRecord;

/// How a [`CachedStore`] is bounded.
///
/// ```
/// use std::time::Duration;
/// use tm_auth::store::cache::CacheConfig;
///
/// let config = CacheConfig::new()
///     .positive_capacity(500_000)
///     .negative_capacity(10_000)
///     .max_staleness(Duration::from_secs(2));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct CacheConfig {
    positive_capacity: usize,
    negative_capacity: usize,
    negative_ttl: Duration,
    max_age: Duration,
    max_staleness: Duration,
}

/// How long a cached key's record is served before it is read again, unless
/// configured otherwise: the bound on a change that no notification ever
/// announces (see [`CacheConfig::max_age`]).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30);

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            positive_capacity: 100_000,
            negative_capacity: 10_000,
            negative_ttl: Duration::from_secs(5),
            max_age: DEFAULT_MAX_AGE,
            max_staleness: Duration::from_secs(3),
        }
    }
}

impl CacheConfig {
    /// The defaults: 100 000 keys, 10 000 unknown hashes for 5 s each,
    /// entries re-read after 30 seconds ([`DEFAULT_MAX_AGE`]), trusted for
    /// 3 s past the feed's last proof of life.
    pub fn new() -> CacheConfig {
        CacheConfig::default()
    }

    /// Most keys held (at least 1). When full, entries past their age are
    /// dropped, and unless that frees a tenth the cache starts over (so a
    /// working set larger than the cache costs a refill, never a scan per
    /// lookup).
    pub fn positive_capacity(mut self, entries: usize) -> CacheConfig {
        self.positive_capacity = entries.max(1);
        self
    }

    /// Most unknown hashes held (at least 1), apart from the keys.
    pub fn negative_capacity(mut self, entries: usize) -> CacheConfig {
        self.negative_capacity = entries.max(1);
        self
    }

    /// How long "no such key" is remembered.
    pub fn negative_ttl(mut self, ttl: Duration) -> CacheConfig {
        self.negative_ttl = ttl;
        self
    }

    /// How long a key's record is served before it is read again, whatever
    /// the feed says: a last defence against a change no notification
    /// announces (a trigger dropped by a restore, a write to another copy of
    /// the table). Such a change is refused here at most this long after it
    /// is made. Each cached key in use then costs one lookup in the store
    /// per `age`; the key's usage counters and rate-limit window are kept
    /// across the re-read.
    pub fn max_age(mut self, age: Duration) -> CacheConfig {
        self.max_age = age;
        self
    }

    /// How long after the feed's last proof of delivery the cache is
    /// trusted: the worst-case time for a change made elsewhere to be
    /// refused here when notifications stop arriving.
    pub fn max_staleness(mut self, staleness: Duration) -> CacheConfig {
        self.max_staleness = staleness;
        self
    }

    /// The configured [`max_staleness`](CacheConfig::max_staleness).
    pub fn staleness(&self) -> Duration {
        self.max_staleness
    }
}

type Slots<V> = papaya::HashMap<u64, V, BuildHasherDefault<UniformHasher>>;

fn slot(hash: &KeyHash) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(prefix)
}

struct Positive {
    /// Kept as a `StoredKey`, so verifications through the cache read it in
    /// place and count usage in it (`find_stored_now`).
    stored: Arc<StoredKey>,
    filled_ms: AtomicU64,
    /// Announced as changed: not answered until read again. The entry is
    /// kept (and refreshed in place by the next fill) so the key's usage
    /// counters stay in one entry.
    stale: AtomicBool,
}

struct Negative {
    hash: KeyHash,
    expires_ms: u64,
}

struct State {
    config: CacheConfig,
    positive: Slots<Positive>,
    negative: Slots<Negative>,
    /// Milliseconds are counted from here.
    base: Instant,
    /// Cached answers are served while `now < trusted_until_ms`.
    trusted_until_ms: AtomicU64,
    /// Bumped before every invalidation: a fill that raced one is undone.
    generation: AtomicU64,
    /// Set when the feed went down: the cache is emptied when it is back.
    resync: AtomicBool,
}

fn build_slots<V>() -> Slots<V> {
    papaya::HashMap::builder()
        .hasher(BuildHasherDefault::<UniformHasher>::default())
        .resize_mode(papaya::ResizeMode::Blocking)
        .build()
}

impl State {
    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        // Seconds and milliseconds apart: `as_millis` divides a u128, which
        // costs more than the rest of a cached lookup.
        let since = at.saturating_duration_since(self.base);
        since
            .as_secs()
            .saturating_mul(1_000)
            .saturating_add(u64::from(since.subsec_millis()))
    }

    fn trusted(&self, now_ms: u64) -> bool {
        now_ms < self.trusted_until_ms.load(Ordering::SeqCst)
    }

    /// The cached answer, if the cache may give one now.
    fn lookup(&self, hash: &KeyHash) -> Option<Option<Arc<StoredKey>>> {
        let now = self.now_ms();
        if !self.trusted(now) {
            return None;
        }
        let slot = slot(hash);
        if let Some(found) = self.positive.pin().get(&slot) {
            if found.stored.hash() == *hash
                && !found.stale.load(Ordering::SeqCst)
                && now.saturating_sub(found.filled_ms.load(Ordering::Relaxed))
                    < to_ms(self.config.max_age)
            {
                return Some(Some(Arc::clone(&found.stored)));
            }
        }
        match self.negative.pin().get(&slot) {
            Some(found) if found.hash == *hash && now < found.expires_ms => Some(None),
            _ => None,
        }
    }

    /// Remembers what the store answered, unless an invalidation ran since
    /// `generation` was read (the answer may predate it).
    fn fill(&self, hash: &KeyHash, generation: u64, answer: Option<&Arc<KeyRecord>>) {
        let now = self.now_ms();
        if !self.trusted(now) || self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let slot = slot(hash);
        match answer {
            Some(record) => {
                let positive = self.positive.pin();
                if let Some(existing) = positive.get(&slot) {
                    if existing.stored.hash() == *hash && existing.stored.id() == record.id {
                        existing.stored.refresh(record);
                        existing.filled_ms.store(now, Ordering::Relaxed);
                        existing.stale.store(false, Ordering::SeqCst);
                        self.undo_if_raced(hash, generation);
                        return;
                    }
                }
                let capacity = self.config.positive_capacity;
                if positive.len() >= capacity {
                    let max_age = to_ms(self.config.max_age);
                    positive.retain(|_, entry| {
                        now.saturating_sub(entry.filled_ms.load(Ordering::Relaxed)) < max_age
                    });
                    // Unless a tenth is free now, start over: each full scan
                    // is then paid for by a tenth of the capacity in fills.
                    if positive.len() > capacity - (capacity / 10).max(1) {
                        positive.clear();
                    }
                }
                positive.insert(
                    slot,
                    Positive {
                        stored: Arc::new(StoredKey::new(KeyRecord::clone(record))),
                        filled_ms: AtomicU64::new(now),
                        stale: AtomicBool::new(false),
                    },
                );
            }
            None => {
                let negative = self.negative.pin();
                let capacity = self.config.negative_capacity;
                if negative.len() >= capacity {
                    negative.retain(|_, entry| now < entry.expires_ms);
                    if negative.len() > capacity - (capacity / 10).max(1) {
                        negative.clear();
                    }
                }
                negative.insert(
                    slot,
                    Negative {
                        hash: *hash,
                        expires_ms: now.saturating_add(to_ms(self.config.negative_ttl)),
                    },
                );
            }
        }
        self.undo_if_raced(hash, generation);
    }

    /// An invalidation that bumped the generation after `fill` checked it
    /// may have run before the fill's write: undo the write.
    fn undo_if_raced(&self, hash: &KeyHash, generation: u64) {
        if self.generation.load(Ordering::SeqCst) != generation {
            self.drop_answers(hash);
        }
    }

    /// Stops answering for `hash`: its key entry goes stale, an unknown
    /// entry goes.
    fn drop_answers(&self, hash: &KeyHash) {
        let slot = slot(hash);
        if let Some(found) = self.positive.pin().get(&slot) {
            if found.stored.hash() == *hash {
                found.stale.store(true, Ordering::SeqCst);
            }
        }
        self.negative.pin().remove(&slot);
    }

    fn forget(&self, hash: &KeyHash) {
        // Generation first: see `fill`.
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.drop_answers(hash);
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.positive.pin().clear();
        self.negative.pin().clear();
    }
}

fn to_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A [`KeyStore`] with a verification cache in front of it.
///
/// Verification lookups (`find_by_hash`, and `find_by_hash_now` for the
/// layer's synchronous path) are answered from memory while the change feed
/// vouches for the cache (see the [module docs](self)); everything else —
/// management reads and writes, usage — goes to the store. Writes made
/// through this value invalidate their key before they return.
///
/// Built over PostgreSQL by
/// [`PostgresStore::cached`](crate::store::postgres::PostgresStore::cached).
/// Over another backend, build it with [`CachedStore::new`] and feed its
/// [`invalidator`](CachedStore::invalidator) from that backend's change
/// channel: until the feed calls [`Invalidator::synced`], every lookup goes
/// to the store.
///
/// Cloning is cheap; clones share the cache.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Instant;
/// use tm_auth::store::cache::{CacheConfig, CachedStore};
/// use tm_auth::{KeyManager, MemoryStore, NewKey};
///
/// let cached = CachedStore::new(MemoryStore::new(), CacheConfig::new());
/// let feed = cached.invalidator();
/// // The backend's change channel is connected and has delivered
/// // everything committed until now.
/// feed.synced(Instant::now());
///
/// let manager = KeyManager::new(cached.clone());
/// let created = manager.create(NewKey::new("acct_1", "Production")).await.unwrap();
/// manager.verify(created.key.expose_secret(), None).await.unwrap();
/// assert!(cached.is_trusted());
/// # }
/// ```
pub struct CachedStore<S> {
    inner: S,
    state: Arc<State>,
    /// Whatever keeps the feed running (e.g. the sender whose drop stops
    /// the listener tasks); dropped with the last clone.
    _feed: Option<Arc<dyn Any + Send + Sync>>,
}

impl<S: Clone> Clone for CachedStore<S> {
    fn clone(&self) -> CachedStore<S> {
        CachedStore {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
            _feed: self._feed.clone(),
        }
    }
}

impl<S> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("keys", &self.state.positive.len())
            .field("unknown", &self.state.negative.len())
            .field("trusted", &self.state.trusted(self.state.now_ms()))
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> CachedStore<S> {
    /// A cache over `inner`, not yet trusted: lookups go to `inner` until
    /// the feed calls [`Invalidator::synced`].
    pub fn new(inner: S, config: CacheConfig) -> CachedStore<S> {
        CachedStore {
            inner,
            state: Arc::new(State {
                config,
                positive: build_slots(),
                negative: build_slots(),
                base: Instant::now(),
                trusted_until_ms: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                resync: AtomicBool::new(false),
            }),
            _feed: None,
        }
    }

    #[cfg(feature = "postgres")]
    /// Keeps `guard` alive as long as this cache (e.g. what stops a feed's
    /// tasks when dropped).
    pub(crate) fn keeping(mut self, guard: Arc<dyn Any + Send + Sync>) -> CachedStore<S> {
        self._feed = Some(guard);
        self
    }

    /// The handle a change feed uses to keep this cache true.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator {
            state: Arc::downgrade(&self.state),
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Whether cached answers are being served right now.
    pub fn is_trusted(&self) -> bool {
        self.state.trusted(self.state.now_ms())
    }

    /// How many keys are cached.
    pub fn cached_keys(&self) -> usize {
        self.state.positive.len()
    }

    /// How many unknown hashes are cached.
    pub fn cached_unknown(&self) -> usize {
        self.state.negative.len()
    }

    /// What the cache would answer for `hash` right now without asking the
    /// store behind it: `Some(Some(record))` for a cached key,
    /// `Some(None)` for a hash cached as unknown, `None` when the store
    /// would be asked (not cached, stale, expired, or the cache is not
    /// trusted).
    pub fn cached(&self, hash: &KeyHash) -> Option<Option<KeyRecord>> {
        self.state
            .lookup(hash)
            .map(|answer| answer.map(|stored| stored.record()))
    }
}

/// Keeps a [`CachedStore`] true: the backend's change feed calls it.
///
/// Holding one does not keep the cache alive; once the cache is gone every
/// call does nothing and [`is_alive`](Invalidator::is_alive) is `false`, so
/// a feed task knows to stop.
#[derive(Clone)]
pub struct Invalidator {
    state: Weak<State>,
}

impl fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidator")
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Invalidator {
    /// The key with this hash was inserted, changed or deleted.
    pub fn changed(&self, hash: &KeyHash) {
        if let Some(state) = self.state.upgrade() {
            state.forget(hash);
        }
    }

    /// Anything may have changed: empties the cache.
    pub fn clear(&self) {
        if let Some(state) = self.state.upgrade() {
            state.clear();
        }
    }

    /// The feed is down: stop serving cached answers now, and empty the
    /// cache when the feed is back (what changed meanwhile was not heard).
    pub fn disconnected(&self) {
        if let Some(state) = self.state.upgrade() {
            state.resync.store(true, Ordering::SeqCst);
            state.trusted_until_ms.store(0, Ordering::SeqCst);
            state.clear();
        }
    }

    /// The feed has delivered every change committed before `as_of`:
    /// trust the cache until `as_of + max_staleness`. After
    /// [`disconnected`](Invalidator::disconnected), the cache is emptied
    /// first.
    pub fn synced(&self, as_of: Instant) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        if state.resync.swap(false, Ordering::SeqCst) {
            state.clear();
        }
        let until = state
            .ms_at(as_of)
            .saturating_add(to_ms(state.config.max_staleness));
        state.trusted_until_ms.fetch_max(until, Ordering::SeqCst);
    }

    /// Whether the cache still exists.
    pub fn is_alive(&self) -> bool {
        self.state.strong_count() > 0
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for CachedStore<S> {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let hash = record.hash;
        let result = self.inner.insert(record).await;
        // Even on an error the insert may have happened.
        self.state.forget(&hash);
        result
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        if let Some(answer) = self.state.lookup(hash) {
            return Ok(answer.map(|stored| Arc::new(stored.record())));
        }
        let generation = self.state.generation.load(Ordering::SeqCst);
        // Errors are never cached: only an answer is.
        let answer = self.inner.find_by_hash(hash).await?;
        self.state.fill(hash, generation, answer.as_ref());
        Ok(answer)
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list_by_owner(owner).await
    }

    async fn list_page(
        &self,
        owner: &str,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list_page(owner, after, limit).await
    }

    async fn count_active(&self, owner: &str, now: SystemTime) -> Result<usize, StoreError> {
        self.inner.count_active(owner, now).await
    }

    async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let result = self.inner.update(id, update).await;
        self.after_write(&result);
        result
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError> {
        let result = self.inner.revoke(id, at).await;
        self.after_write(&result);
        result
    }

    // Usage is not cached: it goes to the cached store's own usage store.
    fn usage_store(&self) -> Option<&dyn UsageStore> {
        self.inner.usage_store()
    }

    fn audit_store(&self) -> Option<&dyn crate::store::AuditStore> {
        self.inner.audit_store()
    }

    fn fast_lookup(&self, _: Seal) -> Option<&dyn FastLookup> {
        Some(self)
    }
}

// What verification calls first: a warm entry is answered as the shared
// `StoredKey`, with no copy; a miss asks the cached store's own fast path.
impl<S: KeyStore> FastLookup for CachedStore<S> {
    fn find_stored_now(&self, hash: &KeyHash) -> Option<Result<Option<StoredKeyRef>, StoreError>> {
        match self.state.lookup(hash) {
            Some(answer) => Some(Ok(answer.map(StoredKeyRef::from))),
            None => self.inner.fast_lookup(Seal::new())?.find_stored_now(hash),
        }
    }
}

impl<S> CachedStore<S> {
    /// A write through this cache takes effect here before it returns. A
    /// failed write may still have been applied, and its key is unknown:
    /// start over.
    fn after_write(&self, result: &Result<Option<KeyRecord>, StoreError>) {
        match result {
            Ok(Some(record)) => self.state.forget(&record.hash),
            Ok(None) => {}
            Err(_) => self.state.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;
    use crate::key::{Environment, TmKey};
    use crate::store::MemoryStore;

    type Hook = Box<dyn Fn() + Send + Sync>;

    /// A store that counts its lookups, can fail, and can run a hook in the
    /// middle of a lookup (to race an invalidation against a fill).
    #[test]
    fn a_default_cache_re_reads_a_key_within_30_seconds() {
        // The README's bound on a change no notification announces.
        let config = CacheConfig::new();
        assert_eq!(config.max_age, Duration::from_secs(30));
        assert_eq!(CacheConfig::default().max_age, DEFAULT_MAX_AGE);
    }

    #[derive(Default)]
    struct Remote {
        inner: MemoryStore,
        finds: AtomicUsize,
        failing: AtomicBool,
        during_find: Mutex<Option<Hook>>,
    }

    #[async_trait]
    impl KeyStore for Remote {
        async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
            self.inner.insert(record).await
        }
        async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
            self.finds.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Timeout);
            }
            let answer = self.inner.find_by_hash(hash).await;
            if let Some(hook) = &*self.during_find.lock().unwrap() {
                hook();
            }
            answer
        }
        async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
            self.inner.get(id).await
        }
        async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
            self.inner.list_by_owner(owner).await
        }
        async fn update(
            &self,
            id: &KeyId,
            update: &StoreUpdate,
        ) -> Result<Option<KeyRecord>, StoreError> {
            self.inner.update(id, update).await
        }
        async fn revoke(
            &self,
            id: &KeyId,
            at: SystemTime,
        ) -> Result<Option<KeyRecord>, StoreError> {
            self.inner.revoke(id, at).await
        }
        fn usage_store(&self) -> Option<&dyn UsageStore> {
            Some(&self.inner)
        }
    }

    fn record() -> KeyRecord {
        crate::store::memory::tests::record("acct")
    }

    fn unknown() -> KeyHash {
        TmKey::generate(Environment::Live).hash()
    }

    fn cache(config: CacheConfig) -> (CachedStore<Arc<Remote>>, Arc<Remote>) {
        let remote = Arc::new(Remote::default());
        (CachedStore::new(Arc::clone(&remote), config), remote)
    }

    fn finds(remote: &Remote) -> usize {
        remote.finds.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_warm_entry_is_answered_shared_and_counts_usage_in_place() {
        let (cached, remote) = cache(CacheConfig::new());
        cached.invalidator().synced(Instant::now());
        let manager = crate::KeyManager::new(cached.clone());
        let created = manager
            .create(crate::NewKey::new("acct", "Main"))
            .await
            .unwrap();
        let hash = created.key.hash();
        assert!(
            cached.find_stored_now(&hash).is_none(),
            "cold: the remote store cannot answer at once"
        );
        for _ in 0..3 {
            manager
                .verify_key(&created.key, Default::default())
                .await
                .unwrap();
        }
        assert_eq!(finds(&remote), 1, "one fill, then the cache answers");
        match cached.find_stored_now(&hash) {
            Some(Ok(Some(stored))) => {
                assert_eq!(stored.id(), created.record.id);
                // The first request read the remote store; the two warm ones
                // were counted in the cached entry.
                assert_eq!(stored.entry().counters().requests(), 2);
            }
            other => panic!("a warm entry is answered at once, got {other:?}"),
        }
        let usage = manager.usage(&created.record.id).await.unwrap();
        assert_eq!(usage.requests, 3);
    }

    #[tokio::test]
    async fn a_synced_cache_answers_without_the_store() {
        let (cached, remote) = cache(CacheConfig::new());
        cached.invalidator().synced(Instant::now());
        let key = record();
        cached.insert(key.clone()).await.unwrap();
        for _ in 0..3 {
            let found = cached.find_by_hash(&key.hash).await.unwrap().unwrap();
            assert_eq!(found.id, key.id);
        }
        assert_eq!(finds(&remote), 1);
        let now = cached.find_stored_now(&key.hash).unwrap().unwrap().unwrap();
        assert_eq!(now.id(), key.id);
        assert_eq!(cached.cached_keys(), 1);
    }

    #[tokio::test]
    async fn an_unsynced_cache_always_asks_the_store() {
        let (cached, remote) = cache(CacheConfig::new());
        let key = record();
        cached.insert(key.clone()).await.unwrap();
        for _ in 0..3 {
            assert!(cached.find_by_hash(&key.hash).await.unwrap().is_some());
        }
        assert_eq!(finds(&remote), 3);
        assert!(cached.find_stored_now(&key.hash).is_none());
        assert!(!cached.is_trusted());
    }

    #[tokio::test]
    async fn trust_ends_max_staleness_after_the_last_sync() {
        let (cached, remote) = cache(CacheConfig::new().max_staleness(Duration::ZERO));
        cached.invalidator().synced(Instant::now());
        assert!(!cached.is_trusted());
        let key = record();
        cached.insert(key.clone()).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        assert_eq!(finds(&remote), 2);
    }

    #[tokio::test]
    async fn a_lost_feed_stops_the_cache_at_once_and_it_restarts_empty() {
        let (cached, remote) = cache(CacheConfig::new());
        let feed = cached.invalidator();
        feed.synced(Instant::now());
        let key = record();
        cached.insert(key.clone()).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        feed.disconnected();
        assert!(!cached.is_trusted());
        assert!(cached.find_stored_now(&key.hash).is_none());
        cached.find_by_hash(&key.hash).await.unwrap();
        assert_eq!(finds(&remote), 2, "down: the store answers");
        feed.synced(Instant::now());
        assert!(cached.is_trusted());
        assert_eq!(
            cached.cached_keys(),
            0,
            "back: nothing heard meanwhile is trusted"
        );
        cached.find_by_hash(&key.hash).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        assert_eq!(finds(&remote), 3);
    }

    #[tokio::test]
    async fn a_change_heard_on_the_feed_drops_the_key() {
        let (cached, remote) = cache(CacheConfig::new());
        let feed = cached.invalidator();
        feed.synced(Instant::now());
        let key = record();
        cached.insert(key.clone()).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        // Another server revokes it.
        remote
            .inner
            .revoke(&key.id, SystemTime::UNIX_EPOCH)
            .await
            .unwrap();
        feed.changed(&key.hash);
        let found = cached.find_by_hash(&key.hash).await.unwrap().unwrap();
        assert!(found.revoked_at.is_some());
        assert_eq!(finds(&remote), 2);
    }

    #[tokio::test]
    async fn writes_through_the_cache_take_effect_before_they_return() {
        let (cached, _remote) = cache(CacheConfig::new());
        cached.invalidator().synced(Instant::now());
        let key = record();
        cached.insert(key.clone()).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        let update = StoreUpdate {
            allowed_ips: Some(vec!["10.0.0.0/8".parse().unwrap()]),
            ..StoreUpdate::default()
        };
        cached.update(&key.id, &update).await.unwrap();
        let found = cached.find_stored_now(&key.hash);
        assert!(found.is_none(), "the edited key is read again");
        let found = cached.find_by_hash(&key.hash).await.unwrap().unwrap();
        assert_eq!(found.allowed_ips.len(), 1);
        cached
            .revoke(&key.id, SystemTime::UNIX_EPOCH)
            .await
            .unwrap();
        let found = cached.find_by_hash(&key.hash).await.unwrap().unwrap();
        assert!(found.revoked_at.is_some());
    }

    #[tokio::test]
    async fn unknown_hashes_are_remembered_until_inserted() {
        let (cached, remote) = cache(CacheConfig::new());
        let feed = cached.invalidator();
        feed.synced(Instant::now());
        let key = record();
        assert!(cached.find_by_hash(&key.hash).await.unwrap().is_none());
        assert!(cached.find_by_hash(&key.hash).await.unwrap().is_none());
        assert_eq!(finds(&remote), 1);
        assert!(matches!(cached.find_stored_now(&key.hash), Some(Ok(None))));
        // Inserted on another server: the notification clears the entry.
        remote.inner.insert(key.clone()).await.unwrap();
        feed.changed(&key.hash);
        assert!(cached.find_by_hash(&key.hash).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn unknown_hashes_expire() {
        let (cached, remote) = cache(CacheConfig::new().negative_ttl(Duration::ZERO));
        cached.invalidator().synced(Instant::now());
        let hash = unknown();
        cached.find_by_hash(&hash).await.unwrap();
        cached.find_by_hash(&hash).await.unwrap();
        assert_eq!(finds(&remote), 2);
    }

    #[tokio::test]
    async fn records_are_read_again_after_max_age() {
        let (cached, remote) = cache(CacheConfig::new().max_age(Duration::ZERO));
        cached.invalidator().synced(Instant::now());
        let key = record();
        cached.insert(key.clone()).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        assert_eq!(finds(&remote), 2);
    }

    #[tokio::test]
    async fn store_errors_are_never_cached() {
        let (cached, remote) = cache(CacheConfig::new());
        cached.invalidator().synced(Instant::now());
        let key = record();
        remote.inner.insert(key.clone()).await.unwrap();
        remote.failing.store(true, Ordering::SeqCst);
        assert!(cached.find_by_hash(&key.hash).await.is_err());
        assert!(
            cached.find_stored_now(&key.hash).is_none(),
            "no negative entry"
        );
        remote.failing.store(false, Ordering::SeqCst);
        assert!(cached.find_by_hash(&key.hash).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_flood_of_unknown_keys_cannot_evict_real_ones() {
        let (cached, remote) = cache(CacheConfig::new().negative_capacity(10));
        cached.invalidator().synced(Instant::now());
        let key = record();
        cached.insert(key.clone()).await.unwrap();
        cached.find_by_hash(&key.hash).await.unwrap();
        for _ in 0..1_000 {
            cached.find_by_hash(&unknown()).await.unwrap();
        }
        assert!(cached.cached_unknown() <= 10);
        let before = finds(&remote);
        assert!(cached.find_by_hash(&key.hash).await.unwrap().is_some());
        assert_eq!(finds(&remote), before, "the real key is still cached");
    }

    #[tokio::test]
    async fn keys_are_bounded_too() {
        let (cached, _remote) = cache(CacheConfig::new().positive_capacity(4));
        cached.invalidator().synced(Instant::now());
        for _ in 0..50 {
            let key = record();
            cached.insert(key.clone()).await.unwrap();
            cached.find_by_hash(&key.hash).await.unwrap();
            assert!(cached.cached_keys() <= 4);
        }
    }

    async fn use_key(manager: &crate::KeyManager, key: &TmKey, times: usize) {
        for _ in 0..times {
            manager.verify_key(key, Default::default()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_key_whose_entry_was_dropped_and_filled_again_keeps_every_count() {
        let (cached, _remote) = cache(CacheConfig::new().positive_capacity(1));
        cached.invalidator().synced(Instant::now());
        let manager = crate::KeyManager::new(cached.clone());
        let first = manager
            .create(crate::NewKey::new("acct", "First"))
            .await
            .unwrap();
        let second = manager
            .create(crate::NewKey::new("acct", "Second"))
            .await
            .unwrap();
        // Warm, counted in the cached entry; then the other key evicts it,
        // and it is read and cached anew: a second entry for one key.
        use_key(&manager, &first.key, 3).await;
        use_key(&manager, &second.key, 1).await;
        use_key(&manager, &first.key, 4).await;
        let id = first.record.id;
        assert_eq!(manager.usage(&id).await.unwrap().requests, 7);
        // The first entry is gone from the cache: a flush folds its counts
        // into the manager's own, and nothing is lost or counted twice.
        use_key(&manager, &second.key, 1).await;
        assert_eq!(manager.flush_usage().await.unwrap(), 2);
        assert_eq!(manager.usage(&id).await.unwrap().requests, 7);
        use_key(&manager, &first.key, 2).await;
        manager.flush_usage().await.unwrap();
        assert_eq!(manager.usage(&id).await.unwrap().requests, 9);
        let sample = manager.usage_snapshot();
        assert_eq!(sample.iter().find(|s| s.id == id).unwrap().requests, 9);
    }

    #[tokio::test]
    async fn a_fill_racing_an_invalidation_is_not_kept() {
        let (cached, remote) = cache(CacheConfig::new());
        let feed = cached.invalidator();
        feed.synced(Instant::now());
        let key = record();
        remote.inner.insert(key.clone()).await.unwrap();
        // The record is read, then revoked elsewhere and announced before
        // the read's answer reaches the cache.
        let hash = key.hash;
        let racing = feed.clone();
        *remote.during_find.lock().unwrap() = Some(Box::new(move || racing.changed(&hash)));
        let stale = cached.find_by_hash(&key.hash).await.unwrap().unwrap();
        assert!(stale.revoked_at.is_none());
        *remote.during_find.lock().unwrap() = None;
        assert!(cached.find_stored_now(&key.hash).is_none(), "not cached");
    }

    #[tokio::test]
    async fn a_dropped_cache_leaves_a_dead_invalidator() {
        let (cached, _remote) = cache(CacheConfig::new());
        let feed = cached.invalidator();
        assert!(feed.is_alive());
        drop(cached);
        assert!(!feed.is_alive());
        feed.synced(Instant::now());
        feed.changed(&unknown());
    }
}
