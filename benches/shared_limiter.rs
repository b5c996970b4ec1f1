//! A hot rate-limited key verified through the in-process limiter and
//! through `RedisLimiter`, side by side in one run, at 1k and 1M keys.
//!
//! ```text
//! cargo bench --features redis --bench shared_limiter
//! ```
//!
//! Needs Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`). Both
//! managers share one `MemoryStore` and the system clock; the hot key's
//! limit (4 000 000 000 a day) is never reached, so every request is let in,
//! and with `RedisLimiter` spends a token of a lease asked for in the
//! background. `BENCHMARKS.md` turns the figures into the shared ÷ local
//! ratio.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tm_auth::redis_limiter::{RedisLimiter, RedisLimiterConfig};
use tm_auth::{KeyManager, MemoryStore, NewKey, RateLimit};

mod common;
use common::{create_keys, ready};

fn hot_key(c: &mut Criterion) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // Leases are asked for on the runtime's worker while the benchmark's
    // thread spends them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("hot_key");
    for (label, n) in [("1k", 1_000), ("1m", 1_000_000)] {
        let store = Arc::new(MemoryStore::new());
        let local = KeyManager::builder(Arc::clone(&store)).build();
        let prefix = format!("tm-auth-bench:{}", std::process::id());
        let limiter = runtime
            .block_on(RedisLimiter::connect(
                &url,
                RedisLimiterConfig::new().key_prefix(prefix),
            ))
            .expect("Redis answers at REDIS_URL");
        let shared = KeyManager::builder(Arc::clone(&store))
            .rate_limiter(limiter.clone())
            .build();
        create_keys(&runtime, &local, n - 1);
        let limit = RateLimit::per_day(NonZeroU32::new(4_000_000_000).unwrap());
        let hot = runtime
            .block_on(local.create(NewKey::new("acct_hot", "Hot key").rate_limit(limit)))
            .expect("create the hot key");
        let secret = hot.key.expose_secret().to_owned();
        let _guard = runtime.enter();
        for (name, manager) in [("local", &local), ("redis", &shared)] {
            // Warm: the key's usage counters exist and, with Redis, a lease
            // is held.
            for _ in 0..10_000 {
                let _ = runtime.block_on(manager.verify(&secret, None));
            }
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| {
                    let who = ready(manager.verify(black_box(&secret), None));
                    assert!(who.is_ok(), "the hot key is let in");
                    black_box(who)
                })
            });
        }
        println!(
            "{label}: {} requests decided without Redis",
            limiter.decided_locally()
        );
        runtime
            .block_on(limiter.shutdown())
            .expect("leases given back");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = hot_key
}
criterion_main!(benches);
