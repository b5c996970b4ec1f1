//! The defects an adversarial review found, each reproduced as a user's
//! program would meet it. SECURITY.md's "Hardening" section names the test
//! here that guards each one.

mod support;

use std::convert::Infallible;
use std::io::Write;
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
    ApiKeyLayer, ClientIpHeader, KeyManager, KeyUpdate, MemoryStore, NewKey, PeerAddr, UsageConfig,
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

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture_warnings() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
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
    let (logs, _guard) = capture_warnings();
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
    let manager = KeyManager::new(MemoryStore::new())
        .with_clock(clock.clone())
        .with_usage(UsageConfig::new().observer(Counting(Arc::clone(&told))));
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
        .create(NewKey::new("acct", "Limited").rate_limit(RateLimit::new(5, Duration::from_secs(3600))))
        .await
        .unwrap();
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(manager.create(NewKey::new("acct", format!("Other {i}"))).await.unwrap());
    }
    let layer = ApiKeyLayer::new(manager.clone());
    let mut admitted = 0;
    for i in 0..60 {
        let ok = if use_the_layer {
            call(&layer, limited.key.expose_secret(), "203.0.113.9", &[]).await.0 == StatusCode::OK
        } else {
            manager.verify(limited.key.expose_secret(), None).await.is_ok()
        };
        admitted += usize::from(ok);
        // Other keys' requests evict the limited key from a full cache.
        for other in &others {
            manager.verify(other.key.expose_secret(), None).await.unwrap();
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
    assert_eq!(admitted_through_a_churning_cache(MemoryStore::new(), 1, true).await, 5);
}
