//! The leak scanner's speed at 1, 10 and 100 MB of log-like text with
//! look-alikes: time per byte stays flat (one pass, linear).
//!
//! ```text
//! cargo bench --bench scan
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tm_auth::scan::find_keys;
use tm_auth::{Environment, TmKey};

fn scan(c: &mut Criterion) {
    let key = TmKey::generate(Environment::Live);
    let line = "2026-11-26T10:00:00Z INFO GET /v1/verify tm_live_ look-alike tm_test_XXXX 200 ok\n";
    let mut group = c.benchmark_group("scan");
    group.sample_size(10);
    for mb in [1usize, 10, 100] {
        let mut text = line.repeat(mb * 1_000_000 / line.len());
        text.push_str(key.expose_secret());
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("find_keys", format!("{mb}MB")),
            &text,
            |b, text| b.iter(|| black_box(find_keys(text).count())),
        );
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
