//! What authentication costs, side by side with the references.
//!
//! ```text
//! cargo bench --bench verify
//! ```
//!
//! Groups:
//! - `key`: generation and parsing (valid, bad checksum, wrong length).
//! - `lookup/{1k,100k,1m}`: `KeyManager::verify` on `MemoryStore` (usage
//!   counting on, the default, and off; at 1M also with every request its
//!   key's first of a minute, `verify_first_in_minute`), and the
//!   floor — SHA-256 of the 40-byte key plus one lookup in a
//!   `HashMap<[u8; 32], _>` of the same size. Each iteration draws a random
//!   key of the store, on both sides.
//! - `layer/1m`: the floor again (for ratios within one run), and one
//!   request through `tower::ServiceExt::oneshot` — the bare
//!   inner service; `ApiKeyLayer` with a valid, unknown, bad-checksum and
//!   revoked key; a hand-rolled `AsyncRequireAuthorizationLayer` looking the
//!   raw key up in a `HashMap<String, _>`; tower-http's deprecated
//!   `ValidateRequestHeaderLayer::bearer` with one token.
//!
//! - `anatomy/1m`: where a verification's time goes — the floor with
//!   overlapped and with dependent iterations, the floor's map alone, an
//!   index like `MemoryStore`'s alone, `MemoryStore`'s lookup (index and
//!   record) — and building a bad-checksum response.
//!
//! `BENCHMARKS.md` turns these figures into the targets' ratios.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tm_auth::clock::ManualClock;
use tm_auth::{
    ApiKeyLayer, AuthError, Environment, KeyFormatError, KeyHash, KeyManager, MemoryStore, Realm,
    TmKey, UsageConfig,
};
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AsyncRequireAuthorizationLayer;

mod common;
use common::{create_keys, ready, verdict, Chain, Pick};

const VALID: &str = "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m30ODsrG";
const BAD_CHECKSUM: &str = "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6";
const WRONG_LENGTH: &str = "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3";

/// A store of `n` keys, with their secrets.
///
/// The manager's clock stands still inside one minute: usage counting does
/// more for a key's first request of a minute (it files the finished minute
/// in the key's history), and with a moving clock whether a figure measured
/// that or not would depend on when it ran. `lookup/verify_first_in_minute`
/// measures that case on purpose.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    clock: ManualClock,
    manager: KeyManager,
    secrets: Vec<String>,
    floor: HashMap<[u8; 32], u32>,
}

fn fixture(n: usize) -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // 20 s into a minute.
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(29_000_000 * 60 + 20));
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let secrets = create_keys(&runtime, &manager, n);
    let floor = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| (Sha256::digest(s.as_bytes()).into(), i as u32))
        .collect();
    Fixture {
        runtime,
        clock,
        manager,
        secrets,
        floor,
    }
}

fn keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    group.bench_function("generate", |b| {
        b.iter(|| TmKey::generate(black_box(Environment::Live)))
    });
    group.bench_function("parse/valid", |b| b.iter(|| TmKey::parse(black_box(VALID))));
    group.bench_function("parse/bad_checksum", |b| {
        b.iter(|| TmKey::parse(black_box(BAD_CHECKSUM)))
    });
    group.bench_function("parse/wrong_length", |b| {
        b.iter(|| TmKey::parse(black_box(WRONG_LENGTH)))
    });
    group.finish();
    // What counting usage adds with the system clock on top of the
    // `lookup` figures, whose manager reads a test clock: one read of the
    // wall clock in milliseconds per verification (a verification with
    // counting off reads none, unless its key expires or has a rate limit).
    // `system_now` is the `SystemTime` read expiry makes, for comparison.
    c.bench_function("clock/system_now_millis", |b| {
        b.iter(|| tm_auth::clock::Clock::now_millis(&tm_auth::clock::SystemClock))
    });
    c.bench_function("clock/system_now", |b| {
        b.iter(|| tm_auth::clock::Clock::now(&tm_auth::clock::SystemClock))
    });
    struct Converted;
    impl tm_auth::clock::Clock for Converted {
        fn now(&self) -> std::time::SystemTime {
            std::time::SystemTime::now()
        }
    }
    c.bench_function("clock/system_now_converted", |b| {
        b.iter(|| tm_auth::clock::Clock::now_millis(&Converted))
    });
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for (label, n) in [("1k", 1_000), ("100k", 100_000), ("1m", 1_000_000)] {
        let f = fixture(n);
        bench_floor(
            &mut group,
            BenchmarkId::new("floor", label),
            &f.secrets,
            &f.floor,
        );
        let mut chain = Chain::new(&f.secrets);
        let mut feedback = 0;
        let _guard = f.runtime.enter();
        // Steady state: every key used once, so its usage counters exist (a
        // key's first use allocates them, once).
        warm(&f.manager, &f.secrets);
        group.bench_function(BenchmarkId::new("verify", label), |b| {
            b.iter(|| {
                let secret = chain.next(feedback);
                let who = ready(f.manager.verify(secret, None));
                feedback = verdict(&who);
                black_box(who)
            })
        });
        if n == 1_000_000 {
            // Each sample starts a new minute, so almost every request is its
            // key's first of the minute: the finished minute is filed in the
            // key's history (whose hour is allocated when first written).
            let mut chain = Chain::new(&f.secrets);
            let mut feedback = 0;
            group.bench_function(BenchmarkId::new("verify_first_in_minute", label), |b| {
                b.iter_custom(|iters| {
                    f.clock.advance(Duration::from_secs(60));
                    let start = Instant::now();
                    for _ in 0..iters {
                        let secret = chain.next(feedback);
                        let who = ready(f.manager.verify(secret, None));
                        feedback = verdict(&who);
                        black_box(&who);
                    }
                    start.elapsed()
                })
            });
        }
        // The same store, with usage counting off (it is on by default).
        let uncounted = KeyManager::builder(Arc::clone(f.manager.store()))
            .usage(UsageConfig::disabled())
            .build();
        let mut chain = Chain::new(&f.secrets);
        let mut feedback = 0;
        group.bench_function(BenchmarkId::new("verify_counting_off", label), |b| {
            b.iter(|| {
                let secret = chain.next(feedback);
                let who = ready(uncounted.verify(secret, None));
                feedback = verdict(&who);
                black_box(who)
            })
        });
    }
    group.finish();
}

/// The floor: SHA-256 of the key and one lookup in a `HashMap<[u8; 32], _>`.
fn bench_floor(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    secrets: &[String],
    floor: &HashMap<[u8; 32], u32>,
) {
    let mut chain = Chain::new(secrets);
    let mut feedback = 0;
    group.bench_function(id, |b| {
        b.iter(|| {
            let secret = chain.next(feedback);
            let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            let found = floor.get(&hash).copied();
            feedback = u64::from(found.unwrap_or(0));
            black_box(found)
        })
    });
}

/// Uses every key once, so the figures that follow are steady state.
fn warm(manager: &KeyManager, secrets: &[String]) {
    for secret in secrets {
        let _ = ready(manager.verify(secret, None));
    }
}

type Body = Full<Bytes>;

fn bare() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send {
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::default()))
    })
}

fn request(secret: &str) -> Request<Body> {
    let mut request = Request::new(Body::default());
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {secret}")) {
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    request
}

/// Runs `service` once per iteration with a key drawn from `secrets`.
fn bench_service<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    service: S,
    secrets: &[String],
    expect: StatusCode,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    // Check once that the figure measures what its name says.
    let status = runtime
        .block_on(service.clone().oneshot(request(&secrets[0])))
        .unwrap()
        .status();
    assert_eq!(status, expect, "{name}");
    let mut chain = Chain::new(secrets);
    let mut feedback = 0;
    let _guard = runtime.enter();
    group.bench_function(name, |b| {
        b.iter(|| {
            let req = request(chain.next(feedback));
            let status = ready(service.clone().oneshot(req)).map(|r| r.status());
            feedback = status.as_ref().map_or(0, |s| u64::from(s.as_u16()));
            black_box(status)
        })
    });
}

fn layer(c: &mut Criterion) {
    let f = fixture(1_000_000);
    // Revoke a thousand keys, and keep the rest apart.
    let (revoked, valid) = f.secrets.split_at(1_000);
    f.runtime.block_on(async {
        for secret in revoked {
            let who = f.manager.verify(secret, None).await.unwrap();
            f.manager.revoke(&who.id()).await.unwrap();
        }
    });
    let unknown: Vec<String> = (0..1_000)
        .map(|_| {
            TmKey::generate(Environment::Live)
                .expose_secret()
                .to_owned()
        })
        .collect();
    // Bad-checksum keys as many as the valid ones (so fetching them misses
    // the cache alike): the valid keys with their last character changed.
    let bad_checksum: Vec<String> = valid
        .iter()
        .map(|s| {
            let last = if s.ends_with('A') { "B" } else { "A" };
            format!("{}{last}", &s[..39])
        })
        .collect();
    let valid = valid.to_vec();
    let revoked = revoked.to_vec();
    {
        let _guard = f.runtime.enter();
        warm(&f.manager, &valid);
    }

    // What a user would write instead: the raw key string in a map.
    let raw: Arc<HashMap<String, u32>> = Arc::new(
        f.secrets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect(),
    );
    let hand_rolled = AsyncRequireAuthorizationLayer::new(move |request: Request<Body>| {
        let raw = Arc::clone(&raw);
        async move {
            let token = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match token.and_then(|t| raw.get(t)) {
                Some(_) => Ok(request),
                None => {
                    let mut response = Response::new(Body::default());
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                    Err(response)
                }
            }
        }
    });
    #[allow(deprecated)]
    let one_token =
        tower_http::validate_request::ValidateRequestHeaderLayer::bearer(&f.secrets[5_000]);
    let one_token_secret = vec![f.secrets[5_000].clone()];

    let layer = ApiKeyLayer::new(f.manager.clone());
    let mut group = c.benchmark_group("layer/1m");
    let rt = &f.runtime;
    // The floor again, in this group, so the ratios compare figures of one run.
    bench_floor(
        &mut group,
        BenchmarkId::from_parameter("floor"),
        &valid,
        &f.floor,
    );
    bench_service(&mut group, rt, "bare", bare(), &valid, StatusCode::OK);
    bench_service(
        &mut group,
        rt,
        "tm_auth/valid",
        layer.layer(bare()),
        &valid,
        StatusCode::OK,
    );
    bench_service(
        &mut group,
        rt,
        "tm_auth/unknown",
        layer.layer(bare()),
        &unknown,
        StatusCode::UNAUTHORIZED,
    );
    bench_service(
        &mut group,
        rt,
        "tm_auth/bad_checksum",
        layer.layer(bare()),
        &bad_checksum,
        StatusCode::UNAUTHORIZED,
    );
    bench_service(
        &mut group,
        rt,
        "tm_auth/revoked",
        layer.layer(bare()),
        &revoked,
        StatusCode::UNAUTHORIZED,
    );
    bench_service(
        &mut group,
        rt,
        "hand_rolled/valid",
        hand_rolled.layer(bare()),
        &valid,
        StatusCode::OK,
    );
    bench_service(
        &mut group,
        rt,
        "validate_bearer/valid",
        one_token.layer(bare()),
        &one_token_secret,
        StatusCode::OK,
    );
    group.finish();
}

/// Where the time of a verification at 1M keys goes, each figure quoted in
/// BENCHMARKS.md ("Where the time and memory go"), and what building a
/// rejection costs.
fn anatomy(c: &mut Criterion) {
    let f = fixture(1_000_000);
    let hashes: Vec<KeyHash> = f
        .secrets
        .iter()
        .filter_map(|s| TmKey::parse(s).ok())
        .map(|k| k.hash())
        .collect();
    let mut group = c.benchmark_group("anatomy/1m");
    // The floor with independent iterations (indices from a PRNG, the same
    // contiguous keys): nothing waits on a previous lookup, so the CPU may
    // overlap their misses.
    let keys = Chain::new(&f.secrets);
    let mut pick = Pick(0x2545_F491_4F6C_DD1D);
    group.bench_function("floor_overlapped", |b| {
        b.iter(|| {
            let key = &keys.entries[pick.next(keys.entries.len())].0;
            let hash: [u8; 32] = Sha256::digest(key).into();
            black_box(f.floor.get(&hash).copied())
        })
    });
    bench_floor(
        &mut group,
        BenchmarkId::from_parameter("floor_dependent"),
        &f.secrets,
        &f.floor,
    );
    let mut chain = Chain::of(hashes.iter().copied());
    let mut feedback = 0;
    group.bench_function("floor_map_only", |b| {
        b.iter(|| {
            let found = f.floor.get(chain.step(feedback).as_bytes()).copied();
            feedback = u64::from(found.unwrap_or(0));
            black_box(found)
        })
    });
    let realm = Realm::default();
    group.bench_function("response_bad_checksum", |b| {
        b.iter(|| {
            AuthError::InvalidFormat(KeyFormatError::Checksum).to_response_in(black_box(&realm))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = keys, lookups, layer, anatomy
}
criterion_main!(benches);
