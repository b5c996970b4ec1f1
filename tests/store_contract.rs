//! The store contract as a third party meets it: a store of the six
//! required methods gets every feature (usage kept in memory when it keeps
//! none), a usage store and a rate limiter can be given to the builder, and
//! the sealed fast path never bypasses a user's wrapper.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use support::{FaultyStore, Op};
use tm_auth::store::{MemoryUsageStore, StoreUpdate, UsageDelta, UsageTotals};
use tm_auth::{
    Admission, InProcessRateLimiter, KeyHash, KeyId, KeyManager, KeyRecord, KeyStore, ManagerError,
    MemoryStore, NewKey, RateLimit, RateLimitStatus, RateLimiter, StoreError, UsageStore,
};

mod support;

/// Six methods over a map, counting its lookups; keeps no usage.
#[derive(Default)]
struct SixMethods {
    keys: Mutex<Vec<KeyRecord>>,
    lookups: AtomicUsize,
}

#[async_trait]
impl KeyStore for SixMethods {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let mut keys = self.keys.lock().unwrap();
        if keys
            .iter()
            .any(|k| k.id == record.id || k.hash == record.hash)
        {
            return Err(StoreError::Conflict);
        }
        keys.push(record);
        Ok(())
    }
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let keys = self.keys.lock().unwrap();
        Ok(keys.iter().find(|k| k.hash == *hash).cloned().map(Arc::new))
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self
            .keys
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.id == *id)
            .cloned())
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let keys = self.keys.lock().unwrap();
        Ok(keys.iter().filter(|k| k.owner == owner).cloned().collect())
    }
    async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.keys.lock().unwrap();
        let Some(record) = keys.iter_mut().find(|k| k.id == *id) else {
            return Ok(None);
        };
        update.apply_to(record);
        Ok(Some(record.clone()))
    }
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError> {
        let mut keys = self.keys.lock().unwrap();
        let Some(record) = keys.iter_mut().find(|k| k.id == *id) else {
            return Ok(None);
        };
        record.revoked_at.get_or_insert(at);
        Ok(Some(record.clone()))
    }
}

#[tokio::test]
async fn six_methods_are_a_whole_store() {
    tm_auth::store::conformance::run(|| async { SixMethods::default() })
        .await
        .unwrap();
    let manager = KeyManager::new(SixMethods::default());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let unused = manager.create(NewKey::new("acct", "Spare")).await.unwrap();
    for _ in 0..3 {
        manager
            .verify(created.key.expose_secret(), None)
            .await
            .unwrap();
    }
    // Counted in memory: flushing moves the counts, it does not lose them.
    assert_eq!(manager.flush_usage().await.unwrap(), 1);
    assert_eq!(manager.usage(&created.record.id).await.unwrap().requests, 3);
    manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap();
    assert_eq!(manager.usage(&created.record.id).await.unwrap().requests, 4);
    // A key never used has empty usage; an id of no key is not found.
    assert_eq!(manager.usage(&unused.record.id).await.unwrap().requests, 0);
    assert!(matches!(
        manager.usage(&KeyId::generate()).await,
        Err(ManagerError::NotFound)
    ));
    let batch = manager
        .usage_batch(&[created.record.id, KeyId::generate(), unused.record.id])
        .await
        .unwrap();
    let requests: Vec<Option<u64>> = batch
        .iter()
        .map(|u| u.as_ref().map(|u| u.requests))
        .collect();
    assert_eq!(requests, [Some(4), None, Some(0)]);
    // Paging and counting work from the defaults.
    let page = manager
        .list_page("acct", tm_auth::Page::first(1))
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page.next, Some(created.record.id));
}

#[tokio::test]
async fn a_wrapper_is_always_asked_never_bypassed() {
    // A user's store that wraps the crate's in-memory store and counts its
    // calls: the crate's fast path must not skip its `find_by_hash`.
    let store = FaultyStore::new();
    let manager = KeyManager::new(Arc::new(store.clone()) as Arc<dyn KeyStore>);
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    for _ in 0..5 {
        manager
            .verify(created.key.expose_secret(), None)
            .await
            .unwrap();
    }
    assert_eq!(store.calls(Op::Find), 5);
}

/// Counts batches, to see where the manager sends usage.
#[derive(Clone, Default)]
struct Recording {
    batches: Arc<AtomicUsize>,
    inner: Arc<MemoryUsageStore>,
}

#[async_trait]
impl UsageStore for Recording {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.inner.record_usage(batch).await
    }
    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        self.inner.usage(id).await
    }
}

#[tokio::test]
async fn usage_goes_to_the_usage_store_the_builder_was_given() {
    let store = MemoryStore::new();
    let usage = Recording::default();
    let manager = KeyManager::builder(store.clone())
        .usage_store(usage.clone())
        .build();
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap();
    manager.flush_usage().await.unwrap();
    assert_eq!(usage.batches.load(Ordering::SeqCst), 1);
    assert_eq!(
        usage
            .inner
            .usage(&created.record.id)
            .await
            .unwrap()
            .map(|t| t.requests),
        Some(1)
    );
    // Not in the key store's own usage.
    assert_eq!(
        store
            .usage(&created.record.id)
            .await
            .unwrap()
            .map(|t| t.requests),
        Some(0)
    );
    assert_eq!(manager.usage(&created.record.id).await.unwrap().requests, 1);
}

/// Refuses every request, saying when to come back.
struct Closed;

impl RateLimiter for Closed {
    fn admit(&self, _: KeyId, _: RateLimit, _: u64) -> Admission {
        Admission::Now(Err(Duration::from_secs(42)))
    }
}

#[tokio::test]
async fn the_builders_rate_limiter_decides() {
    let manager = KeyManager::builder(MemoryStore::new())
        .rate_limiter(Closed)
        .build();
    let limit = RateLimit::per_hour(NonZeroU32::new(1_000).unwrap());
    let limited = manager
        .create(NewKey::new("acct", "Limited").rate_limit(limit))
        .await
        .unwrap();
    let free = manager.create(NewKey::new("acct", "Free")).await.unwrap();
    let err = manager
        .verify(limited.key.expose_secret(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "rate_limited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(42)));
    assert_eq!(
        manager
            .usage(&limited.record.id)
            .await
            .unwrap()
            .rejections
            .rate_limited,
        1
    );
    // A key with no limit never asks the limiter.
    assert!(manager.verify(free.key.expose_secret(), None).await.is_ok());
}

#[tokio::test]
async fn managers_sharing_a_limiter_share_each_keys_window() {
    // What a cluster limiter gives several servers, shown with one process's.
    let limiter = Arc::new(InProcessRateLimiter::new());
    let store = MemoryStore::new();
    let one = KeyManager::builder(store.clone())
        .rate_limiter(Arc::clone(&limiter))
        .build();
    let two = KeyManager::builder(store)
        .rate_limiter(Arc::clone(&limiter))
        .build();
    let created = one
        .create(
            NewKey::new("acct", "Plan")
                .rate_limit(RateLimit::per_hour(NonZeroU32::new(4).unwrap())),
        )
        .await
        .unwrap();
    let secret = created.key.expose_secret();
    let mut admitted = 0;
    for manager in [&one, &two, &one, &two, &one, &two] {
        admitted += usize::from(manager.verify(secret, None).await.is_ok());
    }
    assert_eq!(admitted, 4);
    // Managers with limiters of their own each allow the whole limit.
    let three = KeyManager::new(two.store().clone());
    let admitted = (0..6)
        .filter(|_| admitted_now(three.verify_key_now(&created.key, Default::default())))
        .count();
    assert_eq!(admitted, 4);
}

fn admitted_now(verdict: Option<Result<tm_auth::AuthenticatedKey, tm_auth::AuthError>>) -> bool {
    verdict.expect("an in-memory store answers at once").is_ok()
}

#[tokio::test]
async fn in_memory_usage_is_kept_per_key() {
    let usage = MemoryUsageStore::new();
    let (a, b) = (KeyId::generate(), KeyId::generate());
    let mut delta = UsageDelta::new(a);
    delta.requests = 2;
    usage.record_usage(&[delta.clone(), delta]).await.unwrap();
    let mut totals = HashMap::new();
    for id in [a, b] {
        let got = usage.usage(&id).await.unwrap();
        totals.insert(id, got.map(|t| t.requests));
    }
    assert_eq!(totals[&a], Some(4));
    assert_eq!(totals[&b], None);
}

/// Decides every request later, as a limiter fetching quota from elsewhere
/// would: after a short wait, the first `allowed` requests are let in.
struct Remote {
    allowed: u32,
    asked: Arc<AtomicUsize>,
}

impl RateLimiter for Remote {
    fn admit(&self, _: KeyId, limit: RateLimit, _: u64) -> Admission {
        let asked = Arc::clone(&self.asked);
        let allowed = self.allowed;
        Admission::Later(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let seen = asked.fetch_add(1, Ordering::SeqCst) as u32;
            if seen < allowed {
                Ok(RateLimitStatus::new(
                    limit.requests(),
                    allowed - seen - 1,
                    Duration::from_secs(60),
                ))
            } else {
                Err(Duration::from_secs(7))
            }
        }))
    }
}

#[tokio::test]
async fn a_limiter_that_answers_later_is_waited_for() {
    use http::{Request, Response, StatusCode};
    use tower::{ServiceBuilder, ServiceExt};

    let asked = Arc::new(AtomicUsize::new(0));
    let manager = KeyManager::builder(MemoryStore::new())
        .rate_limiter(Remote {
            allowed: 2,
            asked: Arc::clone(&asked),
        })
        .build();
    let limit = RateLimit::per_hour(NonZeroU32::new(100).unwrap());
    let created = manager
        .create(NewKey::new("acct", "Remote").rate_limit(limit))
        .await
        .unwrap();
    // Not decidable at once.
    assert!(manager
        .verify_key_now(&created.key, Default::default())
        .is_none());
    let who = manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap();
    assert_eq!(who.rate_limit().map(|s| s.remaining), Some(1));
    // Through the layer: the second is let in, the third refused with the
    // limiter's wait; each admission was asked exactly once.
    let layer = tm_auth::ApiKeyLayer::new(manager.clone());
    let service = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("in")))
        });
    let request = || {
        Request::get("/")
            .header(
                "authorization",
                format!("Bearer {}", created.key.expose_secret()),
            )
            .body(String::new())
            .unwrap()
    };
    let first = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-limit"], "100");
    let refused = service.oneshot(request()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "7");
    // The answer `verify_key_now` dropped was never waited for: it spent
    // nothing.
    assert_eq!(asked.load(Ordering::SeqCst), 3);
    let usage = manager.usage(&created.record.id).await.unwrap();
    assert_eq!(usage.requests, 2);
    assert_eq!(usage.rejections.rate_limited, 1);
}

/// Never decides.
struct Hung;

impl RateLimiter for Hung {
    fn admit(&self, _: KeyId, _: RateLimit, _: u64) -> Admission {
        Admission::Later(Box::pin(std::future::pending()))
    }
}

#[tokio::test]
async fn a_limiter_that_never_answers_fails_closed_within_the_store_timeout() {
    let manager = KeyManager::builder(MemoryStore::new())
        .rate_limiter(Hung)
        .store_timeout(Duration::from_millis(50))
        .build();
    let limit = RateLimit::per_hour(NonZeroU32::new(100).unwrap());
    let created = manager
        .create(NewKey::new("acct", "Hung").rate_limit(limit))
        .await
        .unwrap();
    let verdict = tokio::time::timeout(
        Duration::from_secs(5),
        manager.verify(created.key.expose_secret(), None),
    )
    .await
    .expect("bounded by the store timeout, not left to hang");
    let err = verdict.unwrap_err();
    assert_eq!(err.code(), "key_store_unavailable");
    assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    // Neither let in nor counted as rate limited.
    let usage = manager.usage(&created.record.id).await.unwrap();
    assert_eq!((usage.requests, usage.rejections.rate_limited), (0, 0));
}
