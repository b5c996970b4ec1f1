//! What usage counting costs a verification: counting on and off measured
//! in alternation, for the target "counting on costs at most 10 % more than
//! off (median, same run)" on a machine whose speed drifts within a run.
//!
//! ```text
//! cargo bench --bench counting          # 1k, 100k and 1M keys (~20 s)
//! cargo bench --bench counting -- 1k    # one size
//! CLOCK=system cargo bench --bench counting   # with the system clock
//! ```
//!
//! For 1k, 100k and 1M keys: one `MemoryStore`, a manager that counts (the
//! default) and one with counting off over the same store, every key used
//! once first (the steady state `benches/verify.rs` measures too), the
//! clock standing still inside a minute. With `CLOCK=system` both managers
//! read the system clock instead, as a deployment does: counting then pays
//! one clock read per request, which a verification with counting off
//! makes only for a key that expires or has a rate limit. (A minute that
//! turns during the run makes one round's first use of every key file the
//! minute before; the median of the rounds does not see it.)
//!
//! Each of 21 rounds times a burst of
//! verifications with each manager, the order swapped every round, so a
//! change in the machine's speed weighs on both sides alike; a round's
//! ratio is its two bursts' on/off. Keys are drawn as in `benches/verify.rs`
//! (a random cycle, each draw waiting on the last verdict). Prints, per size:
//!
//! ```text
//! 1k: on … ns, off … ns (medians); on/off: median … (quartiles …–…) of 21 rounds
//! ```
//!
//! `benches/verify.rs` measures the two sides one after the other, minutes
//! apart at 1M keys; on a shared VM that ordering alone can move their ratio
//! by more than the 10 % the target allows.

use std::hint::black_box;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tm_auth::clock::ManualClock;
use tm_auth::{KeyManager, MemoryStore, UsageConfig};

mod common;
use common::{create_keys, ready, verdict, Chain};

const ROUNDS: usize = 21;
const BURST: usize = 100_000;

/// One side of a round: nanoseconds per verification over a burst.
struct Side {
    manager: KeyManager,
    chain: Chain<[u8; 40]>,
    feedback: u64,
}

impl Side {
    fn burst(&mut self) -> f64 {
        let start = Instant::now();
        for _ in 0..BURST {
            let secret = self.chain.next(self.feedback);
            let who = ready(self.manager.verify(secret, None));
            self.feedback = verdict(&who);
            black_box(&who);
        }
        start.elapsed().as_nanos() as f64 / BURST as f64
    }
}

/// The value at fraction `at` (0 to 1) of the sorted `values`.
fn quantile(values: &[f64], at: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[((sorted.len() - 1) as f64 * at).round() as usize]
}

fn measure(label: &str, n: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = MemoryStore::new();
    let (mut counting, mut uncounted) = (
        KeyManager::builder(store.clone()),
        KeyManager::builder(store).usage(UsageConfig::disabled()),
    );
    if !std::env::var("CLOCK").is_ok_and(|c| c == "system") {
        // 20 s into a minute: no burst files a finished minute.
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(29_000_000 * 60 + 20));
        counting = counting.clock(clock.clone());
        uncounted = uncounted.clock(clock);
    }
    let (counting, uncounted) = (counting.build(), uncounted.build());
    let secrets = create_keys(&runtime, &counting, n);
    let _guard = runtime.enter();
    // Every key once on each side: counters claimed, both paths warm.
    for secret in &secrets {
        black_box(ready(counting.verify(secret, None)).is_ok());
        black_box(ready(uncounted.verify(secret, None)).is_ok());
    }
    let mut on = Side {
        manager: counting,
        chain: Chain::new(&secrets),
        feedback: 0,
    };
    let mut off = Side {
        manager: uncounted,
        chain: Chain::new(&secrets),
        feedback: 0,
    };
    let (mut ons, mut offs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = on.burst();
            (a, off.burst())
        } else {
            let b = off.burst();
            (on.burst(), b)
        };
        ons.push(a);
        offs.push(b);
        ratios.push(a / b);
    }
    println!(
        "{label}: on {:.1} ns, off {:.1} ns (medians); on/off: median {:.3} (quartiles {:.3}–{:.3}) of {ROUNDS} rounds",
        quantile(&ons, 0.5),
        quantile(&offs, 0.5),
        quantile(&ratios, 0.5),
        quantile(&ratios, 0.25),
        quantile(&ratios, 0.75),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass
    // `--test` or `--list`: run only for the former.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    // `cargo bench --bench counting -- 1k` measures one size.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (label, n) in [("1k", 1_000), ("100k", 100_000), ("1m", 1_000_000)] {
        if only.is_empty() || only.iter().any(|o| o == label) {
            measure(label, n);
        }
    }
}
