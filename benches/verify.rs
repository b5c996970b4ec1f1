//! What authentication costs: key generation, parsing, and verification on
//! the in-memory store, directly and through the layer.
//!
//! ```text
//! cargo bench --bench verify
//! ```

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tm_auth::{ApiKeyLayer, Environment, KeyManager, MemoryStore, NewKey, TmKey};
use tower::{Layer, ServiceExt};

const VALID: &str = "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m30ODsrG";
const BAD_CHECKSUM: &str = "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6";
const WRONG_LENGTH: &str = "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3";

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
    group.bench_function("hash", |b| {
        let key = TmKey::parse(VALID).unwrap();
        b.iter(|| black_box(&key).hash())
    });
    group.finish();
}

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let manager = KeyManager::new(MemoryStore::new());
    let secrets: Vec<String> = runtime.block_on(async {
        let mut secrets = Vec::new();
        for i in 0..1_000 {
            let created = manager
                .create(NewKey::new("acct", format!("Key {i}")))
                .await
                .unwrap();
            secrets.push(created.key.expose_secret().to_owned());
        }
        secrets
    });
    let mut group = c.benchmark_group("verify_1k");
    let mut i = 0;
    group.bench_function("manager/valid", |b| {
        b.to_async(&runtime).iter(|| {
            i = (i + 1) % secrets.len();
            let secret = &secrets[i];
            let manager = &manager;
            async move { manager.verify(secret, None).await.is_ok() }
        })
    });
    let service = ApiKeyLayer::new(manager.clone()).layer(tower::service_fn(
        |_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        },
    ));
    for (name, value) in [
        ("layer/valid", format!("Bearer {}", secrets[0])),
        ("layer/bad_checksum", format!("Bearer {BAD_CHECKSUM}")),
        ("layer/missing_space", format!("Bearer{}", secrets[0])),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let request = Request::get("/")
                    .header("authorization", value.as_str())
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let service = service.clone();
                async move { service.oneshot(request).await.map(|r| r.status()) }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, keys, verify);
criterion_main!(benches);
