//! Usage monitoring, spike and new-address events, and per-key rate limits.

mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::{Fault, FaultyStore, Op};
use tm_auth::clock::ManualClock;
use tm_auth::usage::{NewIp, Spike, UsageObserver};
use tm_auth::UsageStore as _;
use tm_auth::{
    ApiKeyLayer, Environment, InvalidRateLimit, KeyManager, KeyUpdate, ManagerError, MemoryStore,
    NewKey, PeerAddr, RateLimit, UsageConfig, VerifyOptions,
};
use tower::{Layer, ServiceExt};

/// On a minute boundary, so minute arithmetic in the tests is plain.
fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 3600 * 3600)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_are_exact_under_concurrency_before_and_after_flush() {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let secret = created.key.expose_secret().to_owned();
    let (tasks, per_task) = (16, 500);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (manager, secret) = (manager.clone(), secret.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                manager.verify(&secret, ip("203.0.113.9")).await.unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let expected = (tasks * per_task) as u64;
    let before = manager.usage(&created.record.id).await.unwrap();
    assert_eq!(before.requests, expected);
    assert_eq!(before.last_used_ip, ip("203.0.113.9"));
    assert!(before.last_used_at.is_some());
    assert_eq!(manager.flush_usage().await.unwrap(), 1);
    assert_eq!(
        manager.flush_usage().await.unwrap(),
        0,
        "nothing left to write"
    );
    let after = manager.usage(&created.record.id).await.unwrap();
    assert_eq!(
        after.requests, expected,
        "flushing moves counts, it does not add them"
    );
    // The store holds them now.
    let stored = manager
        .usage_store()
        .usage(&created.record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.requests, expected);
    assert_eq!(stored.last_used_ip, ip("203.0.113.9"));
}

#[tokio::test]
async fn rejections_are_counted_by_reason() {
    let clock = ManualClock::new(start());
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let office = manager
        .create(NewKey::new("acct", "Office").allowed_ips(["203.0.113.0/24".parse().unwrap()]))
        .await
        .unwrap();
    let secret = office.key.expose_secret();
    manager
        .verify(secret, ip("198.51.100.1"))
        .await
        .unwrap_err();
    manager.verify(secret, None).await.unwrap_err();
    let live_only = VerifyOptions::new().require_environment(Environment::Test);
    manager.verify_with(secret, live_only).await.unwrap_err();
    manager.verify(secret, ip("203.0.113.5")).await.unwrap();
    manager.revoke(&office.record.id).await.unwrap();
    manager.verify(secret, ip("203.0.113.5")).await.unwrap_err();
    // An unknown key has nobody to count against.
    manager
        .verify(
            tm_auth::TmKey::generate(Environment::Live).expose_secret(),
            None,
        )
        .await
        .unwrap_err();
    let usage = manager.usage(&office.record.id).await.unwrap();
    assert_eq!(usage.requests, 1);
    assert_eq!(usage.rejections.ip_not_allowed, 2);
    assert_eq!(usage.rejections.wrong_environment, 1);
    assert_eq!(usage.rejections.revoked, 1);
    assert_eq!(usage.rejected, 4);
    // The history covers 24 hours, oldest first, with this minute last.
    assert_eq!(usage.per_minute.len(), 24 * 60);
    let last = usage.per_minute.last().unwrap();
    assert_eq!(last.start, start());
    assert_eq!(last.requests, 1);
    assert!(matches!(
        manager.usage(&tm_auth::KeyId::generate()).await,
        Err(ManagerError::NotFound)
    ));
}

#[tokio::test]
async fn a_failed_flush_loses_nothing() {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    for _ in 0..7 {
        manager
            .verify(created.key.expose_secret(), None)
            .await
            .unwrap();
    }
    store.set(Op::RecordUsage, Fault::Fail);
    assert!(matches!(
        manager.flush_usage().await,
        Err(ManagerError::Store(_))
    ));
    assert_eq!(manager.usage(&created.record.id).await.unwrap().requests, 7);
    for _ in 0..3 {
        manager
            .verify(created.key.expose_secret(), None)
            .await
            .unwrap();
    }
    store.clear();
    assert_eq!(manager.flush_usage().await.unwrap(), 1);
    let stored = store
        .inner
        .usage(&created.record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.requests, 10,
        "the refused batch went with the next one"
    );
    assert_eq!(
        manager.usage(&created.record.id).await.unwrap().requests,
        10
    );
}

#[tokio::test]
async fn shutdown_flushes_what_is_pending() {
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    // A long interval: only the shutdown flush can write.
    let task = manager.spawn_usage_task(Duration::from_secs(3600)).unwrap();
    for _ in 0..42 {
        manager
            .verify(created.key.expose_secret(), None)
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .usage(&created.record.id)
            .await
            .unwrap()
            .unwrap()
            .requests,
        0
    );
    assert_eq!(task.shutdown().await.unwrap(), 1);
    assert_eq!(
        store
            .usage(&created.record.id)
            .await
            .unwrap()
            .unwrap()
            .requests,
        42
    );
}

#[tokio::test]
async fn the_task_flushes_on_its_interval() {
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let task = manager.spawn_usage_task(Duration::from_millis(20)).unwrap();
    manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap();
    let mut stored = 0;
    for _ in 0..200 {
        stored = store
            .usage(&created.record.id)
            .await
            .unwrap()
            .unwrap()
            .requests;
        if stored == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored, 1);
    task.shutdown().await.unwrap();
}

/// Sends every event down a channel, for the test to read.
struct Recorder(std::sync::Mutex<mpsc::Sender<String>>);

impl UsageObserver for Recorder {
    fn on_spike(&self, spike: &Spike) {
        let _ = self
            .0
            .lock()
            .unwrap()
            .send(format!("spike {}", spike.requests));
    }
    fn on_new_ip(&self, event: &NewIp) {
        let _ = self.0.lock().unwrap().send(format!("ip {}", event.ip));
    }
}

fn observed(config: UsageConfig) -> (UsageConfig, mpsc::Receiver<String>) {
    let (send, receive) = mpsc::channel();
    (
        config.observer(Recorder(std::sync::Mutex::new(send))),
        receive,
    )
}

/// Everything told so far: events arrive on the observer thread, so wait a
/// little for them, then make sure nothing more comes.
fn drain(events: &mpsc::Receiver<String>, expected: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < expected {
        match events.recv_timeout(Duration::from_secs(5)) {
            Ok(event) => seen.push(event),
            Err(_) => break,
        }
    }
    while let Ok(event) = events.recv_timeout(Duration::from_millis(50)) {
        seen.push(event);
    }
    seen
}

#[tokio::test]
async fn spikes_are_told_once_and_only_above_the_floor() {
    let clock = ManualClock::new(start());
    let (config, events) = observed(UsageConfig::new().spike(5.0, 10, Duration::from_secs(3600)));
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .usage(config)
        .build();
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let secret = created.key.expose_secret();
    let verify = |n: usize| {
        let manager = manager.clone();
        async move {
            for _ in 0..n {
                manager.verify(secret, None).await.unwrap();
            }
        }
    };
    // An hour of two requests a minute, then a key going from 2 to 9: below
    // the floor of 10, not a spike.
    for _ in 0..60 {
        verify(2).await;
        clock.advance(Duration::from_secs(60));
    }
    verify(9).await;
    assert_eq!(drain(&events, 0), Vec::<String>::new());
    // The trailing hour now averages (59 x 2 + 9) / 60 = 2.1 a minute, so the
    // next minute's bar is ceil(5 x 2.1) = 11: one spike at the 11th
    // request, told once however far the minute goes.
    clock.advance(Duration::from_secs(60));
    verify(30).await;
    assert_eq!(drain(&events, 1), vec!["spike 11".to_owned()]);
    // A busier hour raises the bar: 5 x the trailing average.
    clock.advance(Duration::from_secs(60));
    verify(9).await;
    assert_eq!(drain(&events, 0), Vec::<String>::new());
}

#[tokio::test]
async fn new_addresses_are_told_once_each() {
    let (config, events) = observed(UsageConfig::new());
    let manager = KeyManager::builder(MemoryStore::new())
        .usage(config)
        .build();
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let secret = created.key.expose_secret();
    for client in [
        "203.0.113.1",
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.1",
        "2001:db8::1",
    ] {
        manager.verify(secret, ip(client)).await.unwrap();
    }
    assert_eq!(
        drain(&events, 3),
        vec!["ip 203.0.113.1", "ip 203.0.113.2", "ip 2001:db8::1"]
    );
    // Rejected requests are not uses.
    manager.revoke(&created.record.id).await.unwrap();
    manager
        .verify(secret, ip("198.51.100.77"))
        .await
        .unwrap_err();
    assert_eq!(drain(&events, 0), Vec::<String>::new());
}

#[tokio::test]
async fn disabled_usage_counts_nothing_but_still_limits() {
    let manager = KeyManager::builder(MemoryStore::new())
        .usage(UsageConfig::disabled())
        .build();
    let created = manager
        .create(
            NewKey::new("acct", "Main")
                .rate_limit(RateLimit::new(2, Duration::from_secs(60)).unwrap()),
        )
        .await
        .unwrap();
    let secret = created.key.expose_secret();
    manager.verify(secret, None).await.unwrap();
    manager.verify(secret, None).await.unwrap();
    assert_eq!(
        manager.verify(secret, None).await.unwrap_err().code(),
        "rate_limited"
    );
    let usage = manager.usage(&created.record.id).await.unwrap();
    assert_eq!((usage.requests, usage.rejected), (0, 0));
    assert!(manager.usage_snapshot().iter().all(|s| s.requests == 0));
}

async fn call(
    service_layer: &ApiKeyLayer,
    secret: &str,
) -> Response<http_body_util::Either<Full<Bytes>, Full<Bytes>>> {
    let service = service_layer.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    let mut request = Request::get("/")
        .header("authorization", format!("Bearer {secret}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([203, 0, 113, 9], 1234))));
    service.oneshot(request).await.unwrap()
}

#[tokio::test]
async fn rate_limits_let_exactly_the_limit_through_per_window() {
    // 20 s into a 5-minute window.
    let clock = ManualClock::new(start() + Duration::from_secs(20));
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let limited = manager
        .create(
            NewKey::new("acct", "Plan")
                .rate_limit(RateLimit::new(3, Duration::from_secs(300)).unwrap()),
        )
        .await
        .unwrap();
    let layer = ApiKeyLayer::new(manager.clone());
    let secret = limited.key.expose_secret();
    for remaining in ["2", "1", "0"] {
        let response = call(&layer, secret).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        assert_eq!(response.headers()["ratelimit-remaining"], remaining);
        assert_eq!(response.headers()["ratelimit-reset"], "280");
    }
    clock.advance(Duration::from_secs(100));
    for _ in 0..3 {
        let response = call(&layer, secret).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "180");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        assert_eq!(response.headers()["ratelimit-reset"], "180");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["code"], "rate_limited");
        assert_eq!(json["error"], "Rate limit exceeded");
    }
    // The window rolls over; refused requests used up no quota.
    clock.advance(Duration::from_secs(180));
    let response = call(&layer, secret).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["ratelimit-remaining"], "2");
    let usage = manager.usage(&limited.record.id).await.unwrap();
    assert_eq!(usage.requests, 4);
    assert_eq!(usage.rejections.rate_limited, 3);

    // Keys without a limit get no RateLimit headers.
    let free = manager.create(NewKey::new("acct", "Free")).await.unwrap();
    let response = call(&layer, free.key.expose_secret()).await;
    assert!(response.headers().get("ratelimit-limit").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_are_exact_under_concurrency() {
    // A stopped clock: the window cannot roll over during the test.
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(ManualClock::new(start()))
        .build();
    let created = manager
        .create(
            NewKey::new("acct", "Plan")
                .rate_limit(RateLimit::new(1_000, Duration::from_secs(3600)).unwrap()),
        )
        .await
        .unwrap();
    let secret = created.key.expose_secret().to_owned();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (manager, secret) = (manager.clone(), secret.clone());
        handles.push(tokio::spawn(async move {
            let mut passed = 0u64;
            for _ in 0..400 {
                if manager.verify(&secret, None).await.is_ok() {
                    passed += 1;
                }
            }
            passed
        }));
    }
    let mut passed = 0;
    for handle in handles {
        passed += handle.await.unwrap();
    }
    assert_eq!(
        passed, 1_000,
        "exactly the limit passes, from 8 tasks at once"
    );
    let usage = manager.usage(&created.record.id).await.unwrap();
    assert_eq!(usage.requests, 1_000);
    assert_eq!(usage.rejections.rate_limited, 2_200);
}

#[tokio::test]
async fn rate_limits_are_checked_and_editable() {
    let manager = KeyManager::new(MemoryStore::new());
    // A limit that could never be used cannot be made.
    assert_eq!(
        RateLimit::new(0, Duration::from_secs(60)),
        Err(InvalidRateLimit::ZeroRequests)
    );
    for window in [
        Duration::from_millis(500),
        Duration::from_secs(32 * 24 * 3600),
        Duration::ZERO,
        Duration::MAX,
    ] {
        assert_eq!(
            RateLimit::new(10, window),
            Err(InvalidRateLimit::Window { given: window })
        );
    }
    // The bounds themselves are valid.
    for window in [Duration::from_secs(1), Duration::from_secs(31 * 24 * 3600)] {
        assert_eq!(RateLimit::new(1, window).unwrap().window(), window);
    }
    // `?` turns the error into a `ManagerError`.
    let err = ManagerError::from(RateLimit::new(0, Duration::from_secs(1)).unwrap_err());
    assert!(matches!(
        err,
        ManagerError::InvalidRateLimit(InvalidRateLimit::ZeroRequests)
    ));
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let limit = RateLimit::new(1, Duration::from_secs(60)).unwrap();
    let edited = manager
        .update(&created.record.id, KeyUpdate::new().rate_limit(Some(limit)))
        .await
        .unwrap();
    assert_eq!(edited.rate_limit, Some(limit));
    assert_eq!(edited.rate_limit.unwrap().window(), Duration::from_secs(60));
    let secret = created.key.expose_secret();
    manager.verify(secret, None).await.unwrap();
    let err = manager.verify(secret, None).await.unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        ("rate_limited", StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(err
        .retry_after()
        .is_some_and(|d| d <= Duration::from_secs(60)));
    // Rotation keeps the provider's limit; removing it lifts it.
    let rotated = manager
        .rotate(&created.record.id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rotated.record.rate_limit, Some(limit));
    manager
        .update(&rotated.record.id, KeyUpdate::new().rate_limit(None))
        .await
        .unwrap();
    for _ in 0..5 {
        manager
            .verify(rotated.key.expose_secret(), None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn snapshots_list_every_used_key() {
    let manager = KeyManager::new(MemoryStore::new());
    let a = manager.create(NewKey::new("acct", "A")).await.unwrap();
    let b = manager.create(NewKey::new("acct", "B")).await.unwrap();
    let _unused = manager.create(NewKey::new("acct", "C")).await.unwrap();
    for _ in 0..3 {
        manager.verify(a.key.expose_secret(), None).await.unwrap();
    }
    manager.verify(b.key.expose_secret(), None).await.unwrap();
    let mut samples = manager.usage_snapshot();
    samples.sort_by_key(|s| s.requests);
    assert_eq!(samples.len(), 2, "unused keys have no counters");
    assert_eq!((samples[0].id, samples[0].requests), (b.record.id, 1));
    assert_eq!((samples[1].id, samples[1].requests), (a.record.id, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_and_limits_stay_exact_while_the_key_is_edited() {
    // Every edit makes a new version of the stored record; the counters and
    // the rate-limit window must be the same ones across versions.
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(ManualClock::new(start()))
        .build();
    let created = manager
        .create(
            NewKey::new("acct", "Plan")
                .rate_limit(RateLimit::new(3_000, Duration::from_secs(3600)).unwrap()),
        )
        .await
        .unwrap();
    let (id, secret) = (created.record.id, created.key.expose_secret().to_owned());
    let editor = {
        let manager = manager.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let update = KeyUpdate::new().name(format!("Plan {i}"));
                manager.update(&id, update).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (manager, secret) = (manager.clone(), secret.clone());
        handles.push(tokio::spawn(async move {
            let mut passed = 0u64;
            for _ in 0..500 {
                if manager.verify(&secret, ip("203.0.113.9")).await.is_ok() {
                    passed += 1;
                }
                tokio::task::yield_now().await;
            }
            passed
        }));
    }
    let mut passed = 0;
    for handle in handles {
        passed += handle.await.unwrap();
    }
    editor.await.unwrap();
    assert_eq!(passed, 3_000, "exactly the limit passes across edits");
    let usage = manager.usage(&id).await.unwrap();
    assert_eq!(usage.requests, 3_000);
    assert_eq!(usage.rejections.rate_limited, 1_000);
    manager.flush_usage().await.unwrap();
    assert_eq!(manager.usage(&id).await.unwrap().requests, 3_000);
}

#[tokio::test]
async fn managers_sharing_a_store_each_count_their_own_requests() {
    let store = MemoryStore::new();
    let first = KeyManager::new(store.clone());
    let second = KeyManager::new(store.clone());
    let created = first.create(NewKey::new("acct", "Main")).await.unwrap();
    let (id, secret) = (created.record.id, created.key.expose_secret());
    for _ in 0..3 {
        first.verify(secret, None).await.unwrap();
    }
    for _ in 0..5 {
        second.verify(secret, None).await.unwrap();
    }
    assert_eq!(first.usage(&id).await.unwrap().requests, 3);
    assert_eq!(second.usage(&id).await.unwrap().requests, 5);
    first.flush_usage().await.unwrap();
    second.flush_usage().await.unwrap();
    assert_eq!(first.usage(&id).await.unwrap().requests, 8);
    assert_eq!(second.usage(&id).await.unwrap().requests, 8);
}

#[tokio::test]
async fn a_manager_that_goes_away_hands_its_keys_counters_to_the_next() {
    let store = MemoryStore::new();
    let first = KeyManager::new(store.clone());
    let created = first.create(NewKey::new("acct", "Main")).await.unwrap();
    let (id, key) = (created.record.id, created.key);
    for _ in 0..3 {
        first.verify(key.expose_secret(), None).await.unwrap();
    }
    first.flush_usage().await.unwrap();
    drop(first);
    // The next manager (say, one rebuilt with `with_usage`) counts in the
    // key's entry again, from zero: nothing of the first is counted twice.
    let next = KeyManager::builder(store.clone())
        .usage(UsageConfig::new())
        .build();
    for _ in 0..2 {
        next.verify(key.expose_secret(), None).await.unwrap();
    }
    assert_eq!(
        next.usage(&id).await.unwrap().requests,
        5,
        "3 stored + 2 pending"
    );
    assert_eq!(next.usage_snapshot()[0].requests, 2, "this process's own");
    next.flush_usage().await.unwrap();
    assert_eq!(next.usage(&id).await.unwrap().requests, 5);
}

#[tokio::test]
async fn the_history_lists_each_minute_oldest_first_across_flushes() {
    let clock = ManualClock::new(start());
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let (id, secret) = (created.record.id, created.key.expose_secret());
    // 2 requests in the first minute, none in the second, 3 in the third,
    // and a flush between: history is this process's, flushed or not.
    for (minute, requests) in [(0, 2), (2, 3)] {
        clock.set(start() + Duration::from_secs(60 * minute + 5));
        for _ in 0..requests {
            manager.verify(secret, None).await.unwrap();
        }
        manager.flush_usage().await.unwrap();
    }
    let history = manager.usage(&id).await.unwrap().per_minute;
    let last: Vec<u64> = history[history.len() - 3..]
        .iter()
        .map(|m| m.requests)
        .collect();
    assert_eq!(last, vec![2, 0, 3]);
    assert_eq!(
        history.last().unwrap().start,
        start() + Duration::from_secs(120)
    );
    assert_eq!(history.iter().map(|m| m.requests).sum::<u64>(), 5);
}

#[test]
fn a_rate_limit_read_from_json_is_checked_like_a_new_one() {
    let limit: RateLimit = serde_json::from_str(r#"{"requests":1000,"window_ms":300000}"#).unwrap();
    assert_eq!(
        limit,
        RateLimit::new(1_000, Duration::from_secs(300)).unwrap()
    );
    assert_eq!(
        serde_json::to_value(limit).unwrap(),
        serde_json::json!({"requests": 1000, "window_ms": 300000})
    );
    for bad in [
        r#"{"requests":0,"window_ms":300000}"#,
        r#"{"requests":10,"window_ms":999}"#,
        r#"{"requests":10,"window_ms":300000,"burst":5}"#,
    ] {
        assert!(serde_json::from_str::<RateLimit>(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn the_builders_observer_is_told_whatever_order_usage_is_set_in() {
    for observer_first in [true, false] {
        let (send, events) = mpsc::channel();
        let recorder = Recorder(std::sync::Mutex::new(send));
        let config = UsageConfig::new().history(Duration::from_secs(3600));
        let builder = KeyManager::builder(MemoryStore::new());
        let manager = if observer_first {
            builder.observer(recorder).usage(config).build()
        } else {
            builder.usage(config).observer(recorder).build()
        };
        let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
        manager
            .verify(created.key.expose_secret(), ip("203.0.113.5"))
            .await
            .unwrap();
        assert_eq!(
            drain(&events, 1),
            vec!["ip 203.0.113.5"],
            "observer set first: {observer_first}"
        );
    }
}
