//! The defects an adversarial review found, each reproduced as a user's
//! program would meet it. SECURITY.md's "Hardening" section names the test
//! here that guards each one.

mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ipnetwork::IpNetwork;
use tm_auth::clock::ManualClock;
use tm_auth::usage::{AddressSetFull, NewIp, UsageObserver, KNOWN_ADDRESSES_PER_KEY};
use tm_auth::{
    ApiKeyLayer, ClientIpHeader, KeyManager, KeyUpdate, ManagerError, MemoryStore, NewKey, Page,
    PeerAddr, UsageConfig,
};
use tower::{ServiceBuilder, ServiceExt};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One request through `layer` from TCP peer `peer` with `headers`; the
/// status and the JSON body (`null` on success).
async fn call(
    layer: &ApiKeyLayer,
    secret: &str,
    peer: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let service = ServiceBuilder::new().layer(layer.clone()).service_fn(
        |_: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        },
    );
    let mut request =
        Request::post("/v1/verify").header("authorization", format!("Bearer {secret}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Full::new(Bytes::new())).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip(peer), 40_000)));
    let response = service.oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = if status == StatusCode::OK {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, json)
}

// 5. An IPv6 supernet admits every IPv4 client.

#[tokio::test]
async fn an_ipv6_supernet_allowlist_admits_no_ipv4_client() {
    let manager = KeyManager::new(MemoryStore::new());
    let layer = ApiKeyLayer::new(manager.clone());
    for supernet in ["::/0", "::/64", "::/80"] {
        let key = manager
            .create(NewKey::new("acct", "IPv6 only").allowed_ips([net(supernet)]))
            .await
            .unwrap();
        let secret = key.key.expose_secret();
        for client in ["203.0.113.9", "::ffff:203.0.113.9"] {
            let (status, body) = call(&layer, secret, client, &[]).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{supernet} admitted {client}"
            );
            assert_eq!(body["code"], "ip_not_allowed");
        }
        let (status, _) = call(&layer, secret, "::9", &[]).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{supernet} still admits IPv6 clients"
        );
    }
    // The IPv4-mapped range is the way to write IPv4 networks in IPv6 form.
    let mapped = manager
        .create(NewKey::new("acct", "mapped").allowed_ips([net("::ffff:203.0.113.0/120")]))
        .await
        .unwrap();
    let (status, _) = call(&layer, mapped.key.expose_secret(), "203.0.113.9", &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_ipv6_supernet_of_trusted_proxies_lets_no_ipv4_peer_forge_x_forwarded_for() {
    let manager = KeyManager::new(MemoryStore::new());
    let office = manager
        .create(NewKey::new("acct", "Office").allowed_ips([net("10.0.0.0/8")]))
        .await
        .unwrap();
    let layer = ApiKeyLayer::new(manager).trusted_proxies([net("::/0")]);
    let forged = [("x-forwarded-for", "10.1.2.3")];
    let (status, _) = call(&layer, office.key.expose_secret(), "203.0.113.9", &forged).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an IPv4 peer is not a trusted proxy"
    );
    let (status, _) = call(&layer, office.key.expose_secret(), "2001:db8::1", &forged).await;
    assert_eq!(status, StatusCode::OK, "an IPv6 peer inside ::/0 is");
}

// 6. A trusted proxy that sends no forwarding header makes the proxy the client.

#[tokio::test]
async fn a_trusted_proxy_without_the_configured_header_leaves_the_client_unknown() {
    let (logs, _guard) = support::Capture::install(tracing::Level::WARN);
    let manager = KeyManager::new(MemoryStore::new());
    let internal = manager
        .create(NewKey::new("acct", "Internal").allowed_ips([net("10.0.0.0/8")]))
        .await
        .unwrap();
    let open = manager.create(NewKey::new("acct", "Open")).await.unwrap();
    // Configured for Forwarded; the proxy sends X-Forwarded-For.
    let layer = ApiKeyLayer::new(manager)
        .trusted_proxies([net("10.0.0.0/8")])
        .client_ip_header(ClientIpHeader::Forwarded);
    let sent = [("x-forwarded-for", "198.51.100.77")];
    for _ in 0..3 {
        let (status, body) = call(&layer, internal.key.expose_secret(), "10.0.0.2", &sent).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the proxy's own address must not match"
        );
        assert_eq!(body["code"], "ip_not_allowed");
        let hint = body["hint"].as_str().unwrap();
        assert!(hint.contains("could not determine"), "{hint}");
        assert!(!hint.contains("10.0.0.2"), "{hint}");
    }
    let (status, _) = call(&layer, open.key.expose_secret(), "10.0.0.2", &sent).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a key without IP restrictions still passes"
    );
    let logged = logs.text();
    assert_eq!(
        logged.matches("sent no forwarding header").count(),
        1,
        "the misconfiguration is named once:\n{logged}"
    );
    assert!(logged.contains("forwarded"), "{logged}");
}

#[tokio::test]
async fn a_hint_never_quotes_an_address_inside_the_trusted_proxies() {
    let manager = KeyManager::new(MemoryStore::new());
    let office = manager
        .create(NewKey::new("acct", "Office").allowed_ips([net("203.0.113.0/24")]))
        .await
        .unwrap();
    let layer = ApiKeyLayer::new(manager).trusted_proxies([net("10.0.0.0/8")]);
    let secret = office.key.expose_secret();
    // Every hop trusted: the leftmost, an internal address, is the client.
    let (status, body) = call(
        &layer,
        secret,
        "10.0.0.1",
        &[("x-forwarded-for", "10.0.0.7, 10.0.0.3")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let hint = body["hint"].as_str().unwrap();
    assert!(!hint.contains("10.0.0."), "{hint}");
    // An outside client is still named, so its holder can fix the allowlist.
    let (status, body) = call(
        &layer,
        secret,
        "10.0.0.1",
        &[("x-forwarded-for", "198.51.100.4")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["hint"].as_str().unwrap().contains("198.51.100.4"));
}

// Also: the observer was called for every new address past a key's first 1 024.

#[derive(Default)]
struct Told {
    new_ips: std::sync::atomic::AtomicUsize,
    full: Mutex<Vec<AddressSetFull>>,
}

struct Counting(Arc<Told>);

impl UsageObserver for Counting {
    fn on_new_ip(&self, _: &NewIp) {
        self.0.new_ips.fetch_add(1, Ordering::SeqCst);
    }
    fn on_address_set_full(&self, event: &AddressSetFull) {
        self.0.full.lock().unwrap().push(event.clone());
    }
}

/// Waits until the observer thread has told `new_ips` and `full` events,
/// then a little longer to see that nothing more comes.
async fn settle(told: &Told, new_ips: usize, full: usize) -> (usize, usize) {
    let read = || {
        (
            told.new_ips.load(Ordering::SeqCst),
            told.full.lock().unwrap().len(),
        )
    };
    for _ in 0..500 {
        if read() >= (new_ips, full) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    read()
}

#[tokio::test]
async fn new_addresses_past_the_known_set_are_told_once_a_minute_per_key() {
    let told = Arc::new(Told::default());
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .usage(UsageConfig::new().observer(Counting(Arc::clone(&told))))
        .build();
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let secret = created.key.expose_secret();
    let address = |n: u32| Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)));
    for n in 0..KNOWN_ADDRESSES_PER_KEY as u32 {
        manager.verify(secret, address(n)).await.unwrap();
    }
    assert_eq!(
        settle(&told, KNOWN_ADDRESSES_PER_KEY, 0).await,
        (KNOWN_ADDRESSES_PER_KEY, 0)
    );
    // 2 000 more addresses in the same minute: one event.
    for n in 0..2_000 {
        manager.verify(secret, address(10_000 + n)).await.unwrap();
    }
    assert_eq!(
        settle(&told, KNOWN_ADDRESSES_PER_KEY, 1).await,
        (KNOWN_ADDRESSES_PER_KEY, 1)
    );
    // Known addresses are still known; the next minute tells once more.
    clock.advance(Duration::from_secs(60));
    for n in 0..500 {
        manager.verify(secret, address(20_000 + n)).await.unwrap();
        manager.verify(secret, address(n)).await.unwrap();
    }
    assert_eq!(
        settle(&told, KNOWN_ADDRESSES_PER_KEY, 2).await,
        (KNOWN_ADDRESSES_PER_KEY, 2)
    );
    let full = told.full.lock().unwrap().clone();
    assert_eq!(full[0].id, created.record.id);
    assert_eq!(full[0].known, KNOWN_ADDRESSES_PER_KEY);
    assert_eq!(full[0].first_ip, address(10_000).unwrap());
    assert_eq!(full[1].minute, full[0].minute + Duration::from_secs(60));
    assert_eq!(full[1].first_ip, address(20_000).unwrap());
    assert_eq!(
        manager.dropped_usage_events(),
        0,
        "nothing was lost on the way"
    );
}

// 4. An SQL update racing a revocation reported `Revoked` although it applied.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_racing_a_revocation_on_sqlite_is_reported_as_what_it_did() {
    let path = std::env::temp_dir().join(format!("tm-auth-race-{}.db", tm_auth::KeyId::generate()));
    let store = tm_auth::store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let manager = KeyManager::new(store.clone());
    for round in 0..100 {
        let created = manager
            .create(NewKey::new("acct", "Original"))
            .await
            .unwrap();
        let id = created.record.id;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let updater = manager.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("update {i}");
                let result = updater.update(&id, KeyUpdate::new().name(&name)).await;
                (name, result)
            }));
            if i == 3 {
                let revoker = manager.clone();
                tasks.push(tokio::spawn(async move {
                    revoker.revoke(&id).await.unwrap();
                    (String::new(), Err(tm_auth::ManagerError::NotFound))
                }));
            }
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let stored = manager.get(&id).await.unwrap();
        assert!(stored.revoked_at.is_some());
        for (name, result) in outcomes.iter().filter(|(name, _)| !name.is_empty()) {
            match result {
                Ok(record) => assert_eq!(&record.name, name, "round {round}"),
                Err(tm_auth::ManagerError::Revoked) => assert_ne!(
                    &stored.name, name,
                    "round {round}: {name} answered Revoked, yet the key carries it"
                ),
                Err(other) => panic!("round {round}: {other}"),
            }
        }
    }
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

// 2. Rate-limit windows reset when the cache refills.

/// Sends the same 60 requests of a key limited to 5 an hour through a cache
/// of `capacity` keys over `store`, evicting the key with other keys'
/// requests and dropping the feed now and then; returns how many of the 60
/// were admitted.
async fn admitted_through_a_churning_cache(
    store: impl tm_auth::KeyStore + Clone,
    capacity: usize,
    use_the_layer: bool,
) -> usize {
    use tm_auth::store::cache::{CacheConfig, CachedStore};
    use tm_auth::RateLimit;
    let cached = CachedStore::new(store, CacheConfig::new().positive_capacity(capacity));
    let feed = cached.invalidator();
    feed.synced(std::time::Instant::now() + Duration::from_secs(3600));
    let manager = KeyManager::new(cached.clone());
    let limited = manager
        .create(
            NewKey::new("acct", "Limited")
                .rate_limit(RateLimit::new(5, Duration::from_secs(3600)).unwrap()),
        )
        .await
        .unwrap();
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(
            manager
                .create(NewKey::new("acct", format!("Other {i}")))
                .await
                .unwrap(),
        );
    }
    let layer = ApiKeyLayer::new(manager.clone());
    let mut admitted = 0;
    for i in 0..60 {
        let ok = if use_the_layer {
            call(&layer, limited.key.expose_secret(), "203.0.113.9", &[])
                .await
                .0
                == StatusCode::OK
        } else {
            manager
                .verify(limited.key.expose_secret(), None)
                .await
                .is_ok()
        };
        admitted += usize::from(ok);
        // Other keys' requests evict the limited key from a full cache.
        for other in &others {
            manager
                .verify(other.key.expose_secret(), None)
                .await
                .unwrap();
        }
        match i % 10 {
            // The feed drops (lookups go to the store) ...
            3 => feed.disconnected(),
            // ... and comes back: the cache starts empty.
            6 => feed.synced(std::time::Instant::now() + Duration::from_secs(3600)),
            _ => {}
        }
    }
    admitted
}

#[tokio::test]
async fn a_rate_limit_window_survives_cache_evictions_refills_and_feed_drops() {
    // A store that must be waited on, as PostgreSQL is.
    for capacity in [1, 2, 100_000] {
        let remote = support::FaultyStore::new();
        assert_eq!(
            admitted_through_a_churning_cache(remote, capacity, false).await,
            5,
            "capacity {capacity}, KeyManager::verify"
        );
        let remote = support::FaultyStore::new();
        assert_eq!(
            admitted_through_a_churning_cache(remote, capacity, true).await,
            5,
            "capacity {capacity}, through the layer"
        );
    }
    // A store that answers at once from entries of its own.
    assert_eq!(
        admitted_through_a_churning_cache(MemoryStore::new(), 1, true).await,
        5
    );
}

// 1. One owner can exhaust the store.

fn networks(n: u32) -> Vec<IpNetwork> {
    (0..n)
        .map(|i| IpNetwork::from(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes())))
        .collect()
}

#[tokio::test]
async fn an_owner_holds_at_most_100_active_keys_and_revoked_or_expired_ones_do_not_count() {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let store = MemoryStore::new();
    let manager = KeyManager::builder(store.clone())
        .clock(clock.clone())
        .build();
    assert_eq!(manager.limits().active_keys(), 100);
    let mut ids = Vec::new();
    for i in 0..100 {
        let created = manager
            .create(NewKey::new("acct", format!("Key {i}")))
            .await
            .unwrap();
        ids.push(created.record.id);
    }
    let refused = manager
        .create(NewKey::new("acct", "One more"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ManagerError::TooManyKeys { limit: 100 }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("revoke"), "{refused}");
    assert_eq!(store.len(), 100, "nothing stored for the refusal");
    // Another owner is not affected.
    manager
        .create(NewKey::new("acct_other", "Own"))
        .await
        .unwrap();
    // A revoked key frees a place.
    manager.revoke(&ids[0]).await.unwrap();
    let replacement = manager
        .create(NewKey::new("acct", "Replacement"))
        .await
        .unwrap();
    assert!(matches!(
        manager.create(NewKey::new("acct", "Again")).await,
        Err(ManagerError::TooManyKeys { limit: 100 })
    ));
    // A rotation that ends the old key at once needs no room; one with a
    // grace period holds both keys for a while, so it does.
    manager.rotate(&ids[1], Duration::ZERO).await.unwrap();
    assert!(matches!(
        manager.rotate(&ids[2], Duration::from_secs(60)).await,
        Err(ManagerError::TooManyKeys { limit: 100 })
    ));
    // An expired key frees a place too.
    manager.revoke(&replacement.record.id).await.unwrap();
    let soon = manager.now() + Duration::from_secs(10);
    manager
        .create(NewKey::new("acct", "Expiring").expires_at(soon))
        .await
        .unwrap();
    assert!(manager.create(NewKey::new("acct", "Later")).await.is_err());
    clock.advance(Duration::from_secs(10));
    manager.create(NewKey::new("acct", "Later")).await.unwrap();
    let edited = manager
        .update(&ids[3], KeyUpdate::new().name("Still editable"))
        .await;
    assert!(edited.is_ok(), "limits refuse new keys, not edits");
}

#[tokio::test]
async fn the_key_limit_holds_when_one_owner_creates_concurrently() {
    let store = MemoryStore::new();
    let manager = KeyManager::builder(store.clone())
        .limits(tm_auth::KeyLimits::new().active_keys_per_owner(10))
        .build();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                manager
                    .create(NewKey::new("acct", format!("Key {i}")))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(ManagerError::TooManyKeys { limit: 10 }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(store.len(), 10);
}

#[tokio::test]
async fn an_allowlist_holds_at_most_64_networks_unless_configured() {
    let manager = KeyManager::new(MemoryStore::new());
    assert!(manager
        .create(NewKey::new("acct", "Max").allowed_ips(networks(64)))
        .await
        .is_ok());
    let refused = manager
        .create(NewKey::new("acct", "Too many").allowed_ips(networks(256)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ManagerError::InvalidAllowlist {
                limit: 64,
                given: 256
            }
        ),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("64"),
        "the error names the limit: {refused}"
    );
    let key = manager.create(NewKey::new("acct", "Small")).await.unwrap();
    assert!(matches!(
        manager
            .update(&key.record.id, KeyUpdate::new().allowed_ips(networks(65)))
            .await,
        Err(ManagerError::InvalidAllowlist { limit: 64, .. })
    ));
    let wider = KeyManager::builder(MemoryStore::new())
        .limits(tm_auth::KeyLimits::new().allowed_ips_per_key(256))
        .build();
    assert!(wider
        .create(NewKey::new("acct", "Office").allowed_ips(networks(256)))
        .await
        .is_ok());
}

#[tokio::test]
async fn keys_are_listed_a_bounded_page_at_a_time() {
    let manager = KeyManager::new(MemoryStore::new());
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            manager
                .create(NewKey::new("acct", format!("Key {i}")))
                .await
                .unwrap()
                .record
                .id,
        );
    }
    manager.revoke(&ids[2]).await.unwrap();
    let other = manager
        .create(NewKey::new("acct_other", "Theirs"))
        .await
        .unwrap();
    let first = manager
        .list_page(
            "acct",
            Page {
                after: None,
                limit: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..3]);
    assert_eq!(
        first.next,
        Some(ids[2]),
        "revoked keys are listed, in order"
    );
    let second = manager
        .list_page(
            "acct",
            Page {
                after: first.next,
                limit: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(second.iter().map(|r| r.id).collect::<Vec<_>>(), ids[3..6]);
    let last = manager
        .list_page(
            "acct",
            Page {
                after: second.next,
                limit: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(last.iter().map(|r| r.id).collect::<Vec<_>>(), ids[6..]);
    assert_eq!(last.next, None);
    let exact = manager
        .list_page(
            "acct",
            Page {
                after: None,
                limit: 7,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (exact.len(), exact.next),
        (7, None),
        "no empty page after the last"
    );
    // Another owner's key is no cursor into this owner's keys.
    let foreign = manager
        .list_page(
            "acct",
            Page {
                after: Some(other.record.id),
                limit: 3,
            },
        )
        .await
        .unwrap();
    assert!(foreign.is_empty());
    for limit in [0, 1_001] {
        assert!(matches!(
            manager.list_page("acct", Page { after: None, limit }).await,
            Err(ManagerError::InvalidPage { max: 1_000, .. })
        ));
    }
    assert_eq!(
        manager
            .list_page(
                "acct",
                Page {
                    after: None,
                    limit: 1_000
                }
            )
            .await
            .unwrap()
            .len(),
        7
    );
}

/// Counts the store's usage reads, to see how many a page costs.
#[derive(Clone, Default)]
struct UsageReads {
    inner: MemoryStore,
    single: Arc<std::sync::atomic::AtomicUsize>,
    batched: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl tm_auth::KeyStore for UsageReads {
    async fn insert(&self, record: tm_auth::KeyRecord) -> Result<(), tm_auth::StoreError> {
        self.inner.insert(record).await
    }
    async fn find_by_hash(
        &self,
        hash: &tm_auth::KeyHash,
    ) -> Result<Option<Arc<tm_auth::KeyRecord>>, tm_auth::StoreError> {
        self.inner.find_by_hash(hash).await
    }
    async fn get(
        &self,
        id: &tm_auth::KeyId,
    ) -> Result<Option<tm_auth::KeyRecord>, tm_auth::StoreError> {
        self.inner.get(id).await
    }
    async fn list_by_owner(
        &self,
        owner: &str,
    ) -> Result<Vec<tm_auth::KeyRecord>, tm_auth::StoreError> {
        self.inner.list_by_owner(owner).await
    }
    async fn update(
        &self,
        id: &tm_auth::KeyId,
        update: &tm_auth::store::StoreUpdate,
    ) -> Result<Option<tm_auth::KeyRecord>, tm_auth::StoreError> {
        self.inner.update(id, update).await
    }
    async fn revoke(
        &self,
        id: &tm_auth::KeyId,
        at: SystemTime,
    ) -> Result<Option<tm_auth::KeyRecord>, tm_auth::StoreError> {
        self.inner.revoke(id, at).await
    }
    fn usage_store(&self) -> Option<&dyn tm_auth::UsageStore> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl tm_auth::UsageStore for UsageReads {
    async fn record_usage(
        &self,
        batch: &[tm_auth::store::UsageDelta],
    ) -> Result<(), tm_auth::StoreError> {
        self.inner.record_usage(batch).await
    }
    async fn usage(
        &self,
        id: &tm_auth::KeyId,
    ) -> Result<Option<tm_auth::store::UsageTotals>, tm_auth::StoreError> {
        self.single.fetch_add(1, Ordering::SeqCst);
        self.inner.usage(id).await
    }
    async fn usage_batch(
        &self,
        ids: &[tm_auth::KeyId],
    ) -> Result<Vec<Option<tm_auth::store::UsageTotals>>, tm_auth::StoreError> {
        self.batched.fetch_add(1, Ordering::SeqCst);
        self.inner.usage_batch(ids).await
    }
}

async fn admin_call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("x-owner", "acct");
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            axum::body::Body::from(body.to_string())
        }
        None => axum::body::Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn admin_app(store: UsageReads) -> (axum::Router, KeyManager) {
    let manager = KeyManager::new(store);
    let app = tm_auth::admin::router(manager.clone(), |parts: &http::request::Parts| {
        parts
            .headers
            .get("x-owner")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    (app, manager)
}

#[tokio::test]
async fn the_admin_api_refuses_a_flood_of_keys_and_pages_its_list() {
    let store = UsageReads::default();
    let (app, manager) = admin_app(store.clone());
    let wide: Vec<String> = networks(256).iter().map(ToString::to_string).collect();
    let (status, body) = admin_call(
        &app,
        "POST",
        "/keys",
        Some(serde_json::json!({"name": "Wide", "allowed_ips": wide})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "too_many_ip_restrictions");
    assert!(body["error"].as_str().unwrap().contains("64"), "{body}");
    for i in 0..100 {
        let (status, _) = admin_call(
            &app,
            "POST",
            "/keys",
            Some(serde_json::json!({"name": format!("Key {i}")})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, body) = admin_call(
        &app,
        "POST",
        "/keys",
        Some(serde_json::json!({"name": "Key 100"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "too_many_keys");
    assert!(body["hint"].as_str().unwrap().contains("Revoke"), "{body}");
    assert!(body.to_string().len() < 1_000);

    // Pages: 100 by default, the cursor in `next`, one usage read a page.
    let (single, batched) = (
        store.single.load(Ordering::SeqCst),
        store.batched.load(Ordering::SeqCst),
    );
    let (status, body) = admin_call(&app, "GET", "/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["keys"].as_array().unwrap().len(), 100);
    assert_eq!(body["next"], serde_json::Value::Null);
    assert_eq!(
        store.single.load(Ordering::SeqCst),
        single,
        "no per-key usage read"
    );
    assert_eq!(
        store.batched.load(Ordering::SeqCst),
        batched + 1,
        "one read for the page"
    );
    let mut seen = Vec::new();
    let mut path = "/keys?limit=30".to_owned();
    loop {
        let (status, body) = admin_call(&app, "GET", &path, None).await;
        assert_eq!(status, StatusCode::OK);
        let keys = body["keys"].as_array().unwrap();
        assert!(keys.len() <= 30);
        seen.extend(keys.iter().map(|k| k["name"].as_str().unwrap().to_owned()));
        match body["next"].as_str() {
            Some(next) => path = format!("/keys?limit=30&after={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..100).map(|i| format!("Key {i}")).collect();
    assert_eq!(seen, expected, "every key once, oldest first");
    for bad in [
        "/keys?limit=0",
        "/keys?limit=1001",
        "/keys?limit=ten",
        "/keys?after=key_nope",
    ] {
        let (status, body) = admin_call(&app, "GET", bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], "invalid_page", "{bad}");
    }
    // Another owner's key is no cursor into this owner's list.
    let theirs = manager
        .create(NewKey::new("acct_other", "Theirs"))
        .await
        .unwrap();
    let (status, body) = admin_call(
        &app,
        "GET",
        &format!("/keys?after={}", theirs.record.id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["keys"], serde_json::json!([]));
}

#[tokio::test]
async fn the_admin_api_echoes_at_most_64_characters_of_an_unknown_field() {
    let (app, _) = admin_app(UsageReads::default());
    let field = "x".repeat(100_000);
    let (status, body) = admin_call(
        &app,
        "POST",
        "/keys",
        Some(serde_json::json!({"name": "Ok", field.clone(): 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "field_not_editable");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(&"x".repeat(64)), "{message}");
    assert!(!message.contains(&"x".repeat(65)), "{message}");
    assert!(message.len() < 300, "{message}");
}
