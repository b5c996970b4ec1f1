//! Verification on PostgreSQL: warm through `PostgresStore::cached`, cold
//! (every lookup a query), and `MemoryStore` beside them for the ratio.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo bench --features postgres --bench postgres_cache
//! ```
//!
//! Group `postgres/10k` (10 000 keys, each iteration a random one):
//! - `memory`: `KeyManager::verify` on `MemoryStore`;
//! - `cached_warm`: the same on `PostgresStore::cached`, every key cached;
//! - `uncached`: the same on `PostgresStore`, one query per verification;
//! - `round_trip`: `SELECT 1` on the same pool, what one round trip costs.
//!
//! The tables live in a schema of their own, dropped at the end.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sqlx::postgres::PgConnectOptions;
use tm_auth::store::cache::CacheConfig;
use tm_auth::store::postgres::PostgresStore;
use tm_auth::{KeyManager, MemoryStore, NewKey};

mod common;
use common::{ready, verdict, Chain};

const KEYS: usize = 10_000;

fn postgres(c: &mut Criterion) {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a PostgreSQL database for this benchmark");
    let options: PgConnectOptions = url.parse().expect("DATABASE_URL is a PostgreSQL URL");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let schema = format!("bench_{}", tm_auth::KeyId::generate().as_u128());
    let (memory, cached, uncached, store, secrets) = runtime.block_on(async {
        let store = PostgresStore::connect_with(options.clone(), Some(&schema))
            .await
            .expect("connect to PostgreSQL");
        let uncached = KeyManager::new(store.clone());
        let cached = KeyManager::new(store.cached(CacheConfig::new()).await.unwrap());
        let memory = KeyManager::new(MemoryStore::new());
        let mut secrets = Vec::with_capacity(KEYS);
        for i in 0..KEYS {
            let new = || {
                NewKey::new(
                    format!("acct_{:05}", i / 10),
                    format!("Production - Website {i:04}"),
                )
            };
            let created = uncached.create(new()).await.unwrap();
            memory.store().insert(created.record.clone()).await.unwrap();
            secrets.push(created.key.expose_secret().to_owned());
        }
        // Warm: every key cached (a fill racing a notification is dropped,
        // so go round until every lookup is answered from memory) and its
        // usage counters created on both managers.
        for _ in 0..3 {
            for secret in &secrets {
                cached.verify(secret, None).await.unwrap();
                memory.verify(secret, None).await.unwrap();
            }
        }
        (memory, cached, uncached, store, secrets)
    });

    let _guard = runtime.enter();
    let mut group = c.benchmark_group("postgres/10k");
    for (label, manager) in [("memory", &memory), ("cached_warm", &cached)] {
        let mut chain = Chain::new(&secrets);
        let mut feedback = 0;
        group.bench_function(label, |b| {
            b.iter(|| {
                let who = ready(manager.verify(chain.next(feedback), None));
                feedback = verdict(&who);
                black_box(who)
            })
        });
    }
    group.measurement_time(Duration::from_secs(10));
    let mut chain = Chain::new(&secrets);
    group.bench_function("uncached", |b| {
        b.to_async(&runtime).iter(|| {
            let secret = chain.next(0).to_owned();
            let uncached = &uncached;
            async move { black_box(uncached.verify(&secret, None).await.is_ok()) }
        })
    });
    let pool = runtime
        .block_on(sqlx::PgPool::connect_with(options.clone()))
        .unwrap();
    group.bench_function("round_trip", |b| {
        b.to_async(&runtime).iter(|| async {
            let one: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&pool)
                .await
                .unwrap();
            black_box(one)
        })
    });
    group.finish();

    runtime.block_on(async {
        store.close().await;
        sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
    });
}

criterion_group!(benches, postgres);
criterion_main!(benches);
