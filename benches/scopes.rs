//! What a key's scopes cost its verification: a store of keys that each
//! carry three scopes against a store of unrestricted keys, side by side in
//! one run, with the system clock and default settings.
//!
//! ```text
//! cargo bench --bench scopes
//! ```
//!
//! Groups (`scopes/1k`, held in the processor's caches, and `scopes/100k`,
//! which are not), each drawing a random key of its store:
//! - `verify/unscoped`, `verify/scoped`: `KeyManager::verify`.
//! - `verify_and_check/unscoped`, `verify_and_check/scoped`: the same and
//!   `AuthenticatedKey::has_scope("emails:verify")`, what
//!   `RequireScopeLayer` adds to a request.
//!
//! `BENCHMARKS.md` gives the ratios.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tm_auth::{KeyManager, MemoryStore, NewKey};

mod common;
use common::{ready, verdict, Chain};

/// A manager over `keys` keys, ten to an owner, each with `scopes`, every
/// key used once (steady state); their secrets.
fn store(
    runtime: &tokio::runtime::Runtime,
    keys: usize,
    scopes: &[&str],
) -> (KeyManager, Vec<String>) {
    let manager = KeyManager::new(MemoryStore::new());
    let secrets = runtime.block_on(async {
        let mut secrets = Vec::with_capacity(keys);
        for i in 0..keys {
            let new = NewKey::new(
                format!("acct_{:07}", i / 10),
                format!("Production - Website {i:04}"),
            )
            .scopes(scopes.iter().copied());
            let created = manager.create(new).await.expect("create a key");
            secrets.push(created.key.expose_secret().to_owned());
        }
        secrets
    });
    {
        let _guard = runtime.enter();
        for secret in &secrets {
            let _ = ready(manager.verify(secret, None));
        }
    }
    (manager, secrets)
}

fn scopes(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (size, keys) in [("1k", 1_000), ("100k", 100_000)] {
        let sides = [
            ("unscoped", store(&runtime, keys, &[])),
            (
                "scoped",
                store(
                    &runtime,
                    keys,
                    &["emails:verify", "lists:read", "lists:write"],
                ),
            ),
        ];
        let _guard = runtime.enter();
        let mut group = c.benchmark_group(format!("scopes/{size}"));
        for (label, (manager, secrets)) in &sides {
            let mut chain = Chain::new(secrets);
            let mut feedback = 0;
            group.bench_function(BenchmarkId::new("verify", label), |b| {
                b.iter(|| {
                    let secret = chain.next(feedback);
                    let who = ready(manager.verify(secret, None));
                    feedback = verdict(&who);
                    black_box(who)
                })
            });
        }
        for (label, (manager, secrets)) in &sides {
            let mut chain = Chain::new(secrets);
            let mut feedback = 0;
            group.bench_function(BenchmarkId::new("verify_and_check", label), |b| {
                b.iter(|| {
                    let secret = chain.next(feedback);
                    let who = ready(manager.verify(secret, None));
                    let allowed = who.as_ref().is_ok_and(|who| who.has_scope("emails:verify"));
                    feedback = verdict(&who) + u64::from(allowed);
                    black_box(who)
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = scopes
}
criterion_main!(benches);
