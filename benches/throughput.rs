//! Verifications per second on 1 and 2 threads, against the floor's own
//! scaling in the same run.
//!
//! ```text
//! cargo bench --bench throughput
//! ```
//!
//! A million keys in one shared `MemoryStore` (and, for the floor, one
//! shared `HashMap<[u8; 32], u32>`). Each thread walks its own random cycle
//! through the keys, each lookup waiting on the last (see `benches/verify.rs`),
//! for a fixed number of lookups; the total rate is lookups over wall time.
//! Five rounds alternate the floor, verification with usage counting on
//! (the default) and off; the medians are printed with the ratios the
//! targets compare:
//!
//! ```text
//! median verify: 1t …/s 2t …/s   scaling 2t/1t = …   vs floor's … = …
//! ```

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tm_auth::clock::Clock;
use tm_auth::{KeyManager, MemoryStore, UsageConfig};

mod common;

const KEYS: usize = 1_000_000;
const LOOKUPS_PER_THREAD: usize = 1_000_000;
const ROUNDS: usize = 5;

/// A clock standing still inside one minute, read without a lock. With the
/// system clock, a key's first request of each minute does more (it files
/// the finished minute in the key's history): whichever phase, 1 or 2
/// threads, a minute boundary fell in would pay for a million of them.
/// `benches/verify.rs` measures that case on its own.
struct Still(SystemTime);

impl Clock for Still {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// A single random cycle through `n` indices, as `next[i]`.
fn cycle(n: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % i as u64) as usize);
    }
    order
}

struct Shared {
    runtime_keys: Vec<[u8; 40]>,
    manager: KeyManager,
    /// The same store, with usage counting off.
    uncounted: KeyManager,
    floor: HashMap<[u8; 32], u32>,
}

/// What a thread does in a round.
#[derive(Clone, Copy)]
enum Walk {
    Floor,
    Verify,
    VerifyUncounted,
}

fn walk_floor(shared: &Shared, next: &[u32], lookups: usize) -> u64 {
    let zero = black_box(0u64);
    let mut at = 0usize;
    let mut sum = 0u64;
    for _ in 0..lookups {
        let key = &shared.runtime_keys[at];
        let hash: [u8; 32] = Sha256::digest(key).into();
        let found = u64::from(shared.floor.get(&hash).copied().unwrap_or(0));
        sum = sum.wrapping_add(found);
        at = next[at ^ (found & zero) as usize] as usize;
    }
    sum
}

fn walk_verify(shared: &Shared, manager: &KeyManager, next: &[u32], lookups: usize) -> u64 {
    // Each thread has its own runtime, as a server's worker would.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let zero = black_box(0u64);
        let mut at = 0usize;
        let mut sum = 0u64;
        for _ in 0..lookups {
            let secret = std::str::from_utf8(&shared.runtime_keys[at]).unwrap_or("");
            let found = common::verdict(&manager.verify(secret, None).await);
            sum = sum.wrapping_add(found);
            at = next[at ^ (found & zero) as usize] as usize;
        }
        sum
    })
}

/// Lookups per second with `threads` threads running `walk`.
fn rate(shared: &Arc<Shared>, cycles: &[Arc<Vec<u32>>], threads: usize, walk: Walk) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let shared = Arc::clone(shared);
            let next = Arc::clone(&cycles[t]);
            std::thread::spawn(move || match walk {
                Walk::Floor => walk_floor(&shared, &next, LOOKUPS_PER_THREAD),
                Walk::Verify => walk_verify(&shared, &shared.manager, &next, LOOKUPS_PER_THREAD),
                Walk::VerifyUncounted => {
                    walk_verify(&shared, &shared.uncounted, &next, LOOKUPS_PER_THREAD)
                }
            })
        })
        .collect();
    for handle in handles {
        black_box(handle.join().expect("thread"));
    }
    (threads * LOOKUPS_PER_THREAD) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: run only for the former.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(Still(
            UNIX_EPOCH + Duration::from_secs(29_000_000 * 60 + 20),
        ))
        .build();
    let keys: Vec<[u8; 40]> = common::create_keys(&runtime, &manager, KEYS)
        .iter()
        .map(|secret| {
            let mut key = [0u8; 40];
            key.copy_from_slice(secret.as_bytes());
            key
        })
        .collect();
    let floor = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (Sha256::digest(k).into(), i as u32))
        .collect();
    let uncounted = KeyManager::builder(Arc::clone(manager.store()))
        .usage(UsageConfig::disabled())
        .build();
    let shared = Arc::new(Shared {
        runtime_keys: keys,
        manager,
        uncounted,
        floor,
    });
    let cycles: Vec<Arc<Vec<u32>>> = (0..2)
        .map(|t| Arc::new(cycle(KEYS, 0x51_7CC1_B727_220A + t)))
        .collect();

    let walks = [
        ("floor", Walk::Floor),
        ("verify", Walk::Verify),
        ("verify_counting_off", Walk::VerifyUncounted),
    ];
    // rates[walk][threads - 1][round]
    let mut rates = vec![[Vec::new(), Vec::new()]; walks.len()];
    for round in 0..ROUNDS {
        let mut line = format!("round {round}:");
        for threads in [1, 2] {
            for (w, (name, walk)) in walks.iter().enumerate() {
                let r = rate(&shared, &cycles, threads, *walk);
                rates[w][threads - 1].push(r);
                line.push_str(&format!("  {name} {threads}t {r:.0}/s"));
            }
        }
        println!("{line}");
    }
    let medians: Vec<(f64, f64)> = rates
        .into_iter()
        .map(|[one, two]| (median(one), median(two)))
        .collect();
    let floor_scaling = medians[0].1 / medians[0].0;
    for ((name, _), (one, two)) in walks.iter().zip(&medians) {
        println!(
            "median {name}: 1t {one:.0}/s 2t {two:.0}/s   scaling 2t/1t = {:.3}   vs floor's {floor_scaling:.3} = {:.3}",
            two / one,
            (two / one) / floor_scaling
        );
    }
}
