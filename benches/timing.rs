//! A statistical timing test by the dudect method (Reparaz, Balasch,
//! Verbauwhede, "Dude, is my code constant time?", 2017): time an operation
//! on two classes of inputs, interleaved at random, and compare the two
//! distributions with Welch's t-test — on all samples and on samples cropped
//! at 100 percentiles, since a leak often hides in the fast tail. `|t|`
//! beyond about 4.5 says the classes are told apart; dudect's own rule of
//! thumb calls `|t| < 10` at millions of measurements "no leak found".
//!
//! ```text
//! cargo bench --bench timing            # ~30 s; exits 1 if a bound is broken
//! TIMING_DETAIL=1 cargo bench --bench timing -- verify   # one case, with its worst crop
//! ```
//!
//! Cases, every run:
//! - `control/early_exit` (positive control): a byte loop that stops at the
//!   first difference, near-miss (last byte differs) vs far-miss (first):
//!   must show `|t| > 100`, proving the harness can see a leak here.
//! - `control/a_a` (A/A control): one input, labels drawn at random:
//!   `|t| <= 4.5`, proving the harness does not see leaks that are not there.
//! - `compare/key` and `compare/hash`: the crate's comparison primitive on
//!   `TmKey` and on `KeyHash` values, near-miss (last character or byte
//!   differs) vs far-miss (first random character or byte): `|t| < 10` at
//!   10 million measurements or more.
//! - `verify/near_vs_far`: the full `KeyManager::verify` path, 10 million
//!   samples, near-miss vs far-miss of a target key created for that
//!   sample alone (stored among up to 100 000 others; both guesses
//!   well-formed with valid checksums, both unknown): `|t| < 10`. A fixed
//!   pair of keys would measure which hash-table buckets the two land in;
//!   a small pool of targets reused many times lets the CPU learn their
//!   prefixes (see SECURITY.md), neither of which is what is asked.
//!
//! - `diagnostic/parse_reused_targets`, only when named (`cargo bench --bench
//!   timing -- diagnostic`), no bound: `TmKey::parse` on near-miss (last
//!   character) vs mid-miss (21st character) variants of 10 000 reused
//!   keys — the CPU-learning effect SECURITY.md describes.
//!
//! Hashing makes a key's lookup independent of how close a guess is; the
//! comparison of the stored hash is branch-free. What this cannot show:
//! leaks below the timer's resolution that add up over more samples than
//! were taken, or leaks on other hardware. `SECURITY.md` records the figures.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use tm_auth::{Environment, KeyHash, KeyManager, MemoryStore, NewKey, TmKey};

mod common;
use common::{ready, Pick as Rng};

/// Welch's t-test, accumulated online (Welford).
#[derive(Clone, Default)]
struct Welch {
    n: [f64; 2],
    mean: [f64; 2],
    m2: [f64; 2],
}

impl Welch {
    fn push(&mut self, class: usize, x: f64) {
        self.n[class] += 1.0;
        let delta = x - self.mean[class];
        self.mean[class] += delta / self.n[class];
        self.m2[class] += delta * (x - self.mean[class]);
    }

    fn t(&self) -> f64 {
        if self.n[0] < 1_000.0 || self.n[1] < 1_000.0 {
            return 0.0;
        }
        let var = |c: usize| self.m2[c] / (self.n[c] - 1.0);
        let se = (var(0) / self.n[0] + var(1) / self.n[1]).sqrt();
        if se == 0.0 {
            return 0.0;
        }
        (self.mean[0] - self.mean[1]) / se
    }
}

/// dudect's tests: one on every sample, one per crop percentile.
struct Dudect {
    crops: Vec<f64>,
    tests: Vec<Welch>,
    measured: u64,
}

impl Dudect {
    /// Crops at `1 - 0.5^(10 k / 100)`, k = 1..=100, of a first batch.
    fn calibrated(first: &[u64]) -> Dudect {
        let mut sorted: Vec<u64> = first.to_vec();
        sorted.sort_unstable();
        let crops = (1..=100)
            .map(|k| {
                let p = 1.0 - 0.5f64.powf(f64::from(10 * k) / 100.0);
                let at = ((sorted.len() - 1) as f64 * p) as usize;
                sorted[at] as f64
            })
            .collect();
        Dudect {
            crops,
            tests: vec![Welch::default(); 101],
            measured: 0,
        }
    }

    fn push(&mut self, class: usize, time: u64) {
        let x = time as f64;
        self.measured += 1;
        self.tests[0].push(class, x);
        for (test, &crop) in self.tests[1..].iter_mut().zip(&self.crops) {
            if x < crop {
                test.push(class, x);
            }
        }
    }

    fn max_t(&self) -> f64 {
        self.tests.iter().map(|t| t.t().abs()).fold(0.0, f64::max)
    }

    /// Which test gave the largest |t|, and its classes' mean difference.
    fn worst(&self) -> (usize, f64) {
        let (index, test) = self
            .tests
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.t().abs().total_cmp(&b.1.t().abs()))
            .expect("101 tests");
        (index, test.mean[0] - test.mean[1])
    }
}

enum Bound {
    /// The harness must see this leak.
    Above(f64),
    /// No leak may be seen.
    AtMost(f64),
    /// A diagnostic, reported without a bound.
    None,
}

/// Measures `op` on `total` inputs made by `input(rng, class)`, in batches,
/// each sample's class drawn at random; returns max |t| over the tests.
fn run<I>(
    total: usize,
    rng: &mut Rng,
    mut input: impl FnMut(&mut Rng, usize) -> I,
    op: impl Fn(&I) -> bool,
) -> (f64, u64) {
    const BATCH: usize = 500_000;
    // Classes come from a stream of their own, never from the one that
    // draws the inputs.
    let mut classes = Rng(rng.bits() | 1);
    for _ in 0..64 {
        classes.bits();
    }
    let mut dudect: Option<Dudect> = None;
    let mut times = Vec::with_capacity(BATCH);
    let mut done = 0;
    while done < total {
        let n = BATCH.min(total - done);
        let inputs: Vec<(usize, I)> = (0..n)
            .map(|_| {
                let class = (classes.bits() >> 63) as usize;
                (class, input(rng, class))
            })
            .collect();
        times.clear();
        for (_, item) in &inputs {
            let start = Instant::now();
            black_box(op(black_box(item)));
            times.push(start.elapsed().as_nanos() as u64);
        }
        let dudect = dudect.get_or_insert_with(|| Dudect::calibrated(&times));
        for ((class, _), &time) in inputs.iter().zip(&times) {
            dudect.push(*class, time);
        }
        done += n;
    }
    let dudect = dudect.expect("at least one batch");
    if std::env::var_os("TIMING_DETAIL").is_some() {
        let (crop, difference) = dudect.worst();
        eprintln!("  worst test: crop {crop} (0 = none), mean difference {difference:.2} ns");
    }
    (dudect.max_t(), dudect.measured)
}

/// The comparison every attacker hopes for: stops at the first difference.
fn early_exit_eq(a: &[u8; 40], b: &[u8; 40]) -> bool {
    for i in 0..40 {
        if black_box(a[i]) != black_box(b[i]) {
            return false;
        }
    }
    true
}

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `key` with the random character at `position` (8..34) replaced by
/// another, and the checksum recomputed so it stays well-formed.
fn variant(key: &str, position: usize, rng: &mut Rng) -> String {
    let mut bytes = key.as_bytes()[..34].to_vec();
    let old = bytes[position];
    while bytes[position] == old {
        bytes[position] = ALPHABET[rng.next(ALPHABET.len())];
    }
    let crc = crc32fast::hash(&bytes);
    let mut digits = [0u8; 22];
    let len = base62::encode_bytes(crc, &mut digits).unwrap_or(0);
    bytes.extend(std::iter::repeat_n(b'0', 6 - len));
    bytes.extend_from_slice(&digits[..len]);
    String::from_utf8(bytes).expect("ASCII")
}

fn main() -> ExitCode {
    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
        | 1);
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let mut results: Vec<(&str, f64, u64, Bound)> = Vec::new();
    let target = TmKey::generate(Environment::Live);

    if wanted("control/early_exit") {
        let (t, n) = run(
            1_000_000,
            &mut rng,
            |rng, class| {
                let key: [u8; 40] = target.expose_secret().as_bytes().try_into().unwrap();
                let mut guess = key;
                let at = if class == 0 { 39 } else { 8 };
                guess[at] ^= 1 + (rng.bits() % 7) as u8;
                (key, guess)
            },
            |(a, b)| early_exit_eq(a, b),
        );
        results.push(("control/early_exit", t, n, Bound::Above(100.0)));
    }
    if wanted("control/a_a") {
        let other = variant(target.expose_secret(), 33, &mut rng);
        let guess = TmKey::parse(&other).expect("well-formed");
        let (t, n) = run(
            10_000_000,
            &mut rng,
            |_, _| (target.clone(), guess.clone()),
            |(a, b)| a == b,
        );
        results.push(("control/a_a", t, n, Bound::AtMost(4.5)));
    }
    if wanted("compare/key") {
        // Fresh variants per batch would cost more than the comparison;
        // a pool of each class, drawn from at random, keeps inputs varied.
        let pool = |rng: &mut Rng, position: usize| -> Vec<TmKey> {
            (0..256)
                .map(|_| TmKey::parse(&variant(target.expose_secret(), position, rng)).unwrap())
                .collect()
        };
        let (near, far) = (pool(&mut rng, 33), pool(&mut rng, 8));
        let (t, n) = run(
            10_000_000,
            &mut rng,
            |rng, class| {
                let from = if class == 0 { &near } else { &far };
                from[rng.next(from.len())].clone()
            },
            |guess| *guess == target,
        );
        results.push(("compare/key", t, n, Bound::AtMost(10.0)));
    }
    if wanted("compare/hash") {
        let stored = target.hash();
        let (t, n) = run(
            10_000_000,
            &mut rng,
            |rng, class| {
                let mut bytes = *stored.as_bytes();
                let at = if class == 0 { 31 } else { 0 };
                bytes[at] ^= 1 + (rng.bits() % 255) as u8;
                KeyHash::from_bytes(bytes)
            },
            |guess| *guess == stored,
        );
        results.push(("compare/hash", t, n, Bound::AtMost(10.0)));
    }
    if wanted("verify/near_vs_far") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        // Every sample's target is a key created for it and used once,
        // among 100 000 others in a store that is replaced as it fills, so
        // no input ever repeats a prefix the CPU has seen (a small pool of
        // targets lets the branch predictor learn their prefixes, which
        // shows as a position effect between the classes).
        const STORE: usize = 100_000;
        let mut manager = Arc::new(KeyManager::new(MemoryStore::new()));
        let mut created = 0;
        let (t, n) = run(
            10_000_000,
            &mut rng,
            |rng, class| {
                if created == STORE {
                    manager = Arc::new(KeyManager::new(MemoryStore::new()));
                    created = 0;
                }
                created += 1;
                // Ten keys to an owner, well within the per-owner limit.
                let owner = format!("acct_{}", created / 10);
                let target = ready(manager.create(NewKey::new(owner, "Target")))
                    .expect("create a target key");
                let guess = variant(
                    target.key.expose_secret(),
                    if class == 0 { 33 } else { 8 },
                    rng,
                );
                (Arc::clone(&manager), guess)
            },
            |(manager, guess)| ready(manager.verify(guess, None)).is_ok(),
        );
        results.push(("verify/near_vs_far", t, n, Bound::AtMost(10.0)));
    }

    // Run only when asked by name: the reused-pool effect SECURITY.md
    // describes, on parsing alone.
    if filter
        .as_deref()
        .is_some_and(|f| "diagnostic/parse_reused_targets".contains(f) && f.contains("diagnostic"))
    {
        let stored: Vec<String> = (0..10_000)
            .map(|_| {
                TmKey::generate(Environment::Live)
                    .expose_secret()
                    .to_owned()
            })
            .collect();
        let (t, n) = run(
            10_000_000,
            &mut rng,
            |rng, class| {
                let target = &stored[rng.next(stored.len())];
                variant(target, if class == 0 { 33 } else { 20 }, rng)
            },
            |guess| TmKey::parse(guess).is_ok(),
        );
        results.push(("diagnostic/parse_reused_targets", t, n, Bound::None));
    }

    let mut broken = 0;
    for (name, t, n, bound) in &results {
        let (ok, rule) = match bound {
            Bound::Above(b) => (*t > *b, format!("> {b}")),
            Bound::AtMost(b) => (*t <= *b, format!("<= {b}")),
            Bound::None => (true, "none".to_owned()),
        };
        broken += usize::from(!ok);
        println!(
            "{name:<22} measurements {n:>10}  max |t| {t:>9.2}  bound {rule:<7} {}",
            match (ok, bound) {
                (_, Bound::None) => "reported",
                (true, _) => "ok",
                (false, _) => "BROKEN",
            }
        );
    }
    if broken == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{broken} bound(s) broken");
        ExitCode::FAILURE
    }
}
