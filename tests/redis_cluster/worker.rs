//! One server: a limiter driving each cell's traffic, printing what it let
//! in, by key and window of the true clock (taken before and after the
//! limiter's answer), as lines the oracle reads.
//!
//! `A cell key before after count`: admissions (window indices);
//! `O cell count`: requests offered; `W cell max_wait_us`;
//! `P cell phase count`: admissions before (0) or after (1) a limit change;
//! `L count`: requests the limiter decided without Redis.
//!
//! With `TM_DEBUG_WAITS` set, each wait over 200 ms is written to stderr
//! with where in its window the request came.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tm_auth::redis_limiter::{OnStoreDown, RedisLimiter, RedisLimiterConfig};
use tm_auth::{RateLimit, RateLimiter};

use crate::true_now_ms;

/// The id of key `index` of cell `cell`: the same in every worker.
pub(crate) fn key_id(cell: usize, index: u32) -> tm_auth::KeyId {
    format!("key_{:022}", cell as u64 * 1_000_000 + u64::from(index))
        .parse()
        .expect("a key id of 22 digits")
}

/// Zipf-skewed choice of one of `n` keys (exponent 1.1).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u32) -> Zipf {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|i| {
                total += 1.0 / f64::from(i).powf(1.1);
                total
            })
            .collect::<Vec<_>>();
        let cdf = cdf.iter().map(|c| c / total).collect();
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut u64) -> u32 {
        // xorshift64*: plenty for choosing keys.
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        let u = (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|c| *c < u) as u32
    }
}

#[derive(Default)]
struct Log {
    admitted: HashMap<(usize, u32, u64, u64), u64>,
    offered: HashMap<usize, u64>,
    max_wait_us: HashMap<usize, u64>,
    phases: HashMap<(usize, u8), u64>,
}

pub(crate) fn run(spec: &str) -> i32 {
    let spec: Value = match serde_json::from_str(spec) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("worker: bad spec: {e}");
            return 2;
        }
    };
    // The limiter's warnings (Redis lost, counts lost) go to the test's log.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(drive(spec))
}

async fn drive(spec: Value) -> i32 {
    let limiter: Arc<dyn RateLimiter> = match spec["limiter"].as_str() {
        Some("local") => Arc::new(tm_auth::InProcessRateLimiter::new()),
        _ => {
            let mode = match spec["mode"].as_str() {
                Some("closed") => OnStoreDown::Closed,
                Some("open") => OnStoreDown::Open,
                _ => OnStoreDown::LocalShare,
            };
            let config = RedisLimiterConfig::new()
                .key_prefix(spec["prefix"].as_str().unwrap_or("tm-auth-test"))
                .on_store_down(mode)
                .timeout(Duration::from_millis(
                    spec["timeout_ms"].as_u64().unwrap_or(50),
                ));
            match RedisLimiter::connect(spec["redis"].as_str().unwrap_or_default(), config).await {
                Ok(limiter) => {
                    *REDIS.lock().unwrap() = Some(limiter.clone());
                    Arc::new(limiter)
                }
                Err(e) => {
                    eprintln!("worker: cannot connect: {e}");
                    return 3;
                }
            }
        }
    };
    let start_at = spec["start_at_ms"].as_u64().unwrap_or(0);
    let stop_at = start_at + spec["duration_ms"].as_u64().unwrap_or(1_000);
    let skew = spec["skew_ms"].as_i64().unwrap_or(0);
    let log_each = spec["log_each"].as_bool().unwrap_or(false);
    let edge_burst = spec["edge_bursts_ms"].as_u64();
    let worker = spec["worker"].as_u64().unwrap_or(0);
    let cells = spec["cells"].as_array().cloned().unwrap_or_default();
    // Key ids are parsed before traffic starts: 10 000 of them, parsed by
    // each task as it began, held a debug build's only thread for about a
    // second, and every lease asked for meanwhile timed out.
    let ids: Vec<Arc<Vec<tm_auth::KeyId>>> = cells
        .iter()
        .enumerate()
        .map(|(index, cell)| {
            let keys = cell["keys"].as_u64().unwrap_or(1) as u32;
            Arc::new((0..keys).map(|i| key_id(index, i)).collect())
        })
        .collect();
    let now = true_now_ms();
    if start_at > now {
        tokio::time::sleep(Duration::from_millis(start_at - now)).await;
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let mut tasks = Vec::new();
    for (index, cell) in cells.into_iter().enumerate() {
        for task in 0..cell["tasks"].as_u64().unwrap_or(1) {
            let limiter = Arc::clone(&limiter);
            let log = Arc::clone(&log);
            let cell = cell.clone();
            let ids = Arc::clone(&ids[index]);
            let seed = (worker + 1) * 0x9E37_79B9 + (index as u64 + 1) * 7_919 + task * 104_729;
            tasks.push(tokio::spawn(async move {
                cell_traffic(
                    index, &cell, &ids, &*limiter, &log, seed, start_at, stop_at, skew, log_each,
                    edge_burst,
                )
                .await
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let redis = REDIS.lock().unwrap().take();
    let local = redis.as_ref().map_or(0, RedisLimiter::decided_locally);
    if let (Some(limiter), true) = (redis, spec["shutdown"].as_bool().unwrap_or(true)) {
        if let Err(e) = limiter.shutdown().await {
            eprintln!("worker: shutdown: {e}");
        }
    }
    let log = log.lock().unwrap();
    let mut out = std::io::stdout().lock();
    if !log_each {
        for ((cell, key, before, after), count) in &log.admitted {
            let _ = writeln!(out, "A {cell} {key} {before} {after} {count}");
        }
    }
    let _ = writeln!(out, "L {local}");
    for (cell, count) in &log.offered {
        let _ = writeln!(out, "O {cell} {count}");
    }
    for (cell, wait) in &log.max_wait_us {
        let _ = writeln!(out, "W {cell} {wait}");
    }
    for ((cell, phase), count) in &log.phases {
        let _ = writeln!(out, "P {cell} {phase} {count}");
    }
    let _ = out.flush();
    0
}

static REDIS: Mutex<Option<RedisLimiter>> = Mutex::new(None);

#[allow(clippy::too_many_arguments)]
async fn cell_traffic(
    index: usize,
    cell: &Value,
    ids: &[tm_auth::KeyId],
    limiter: &dyn RateLimiter,
    log: &Mutex<Log>,
    mut rng: u64,
    start_at: u64,
    stop_at: u64,
    skew: i64,
    log_each: bool,
    edge_burst: Option<u64>,
) {
    let keys = cell["keys"].as_u64().unwrap_or(1) as u32;
    let window_ms = cell["window_ms"].as_u64().unwrap_or(1_000);
    let first = RateLimit::new(
        cell["limit"].as_u64().unwrap_or(1) as u32,
        Duration::from_millis(window_ms),
    )
    .expect("a valid limit");
    let change = cell.get("limit_change").and_then(|c| {
        let after = c["after_ms"].as_u64()?;
        let limit = RateLimit::new(
            c["limit"].as_u64()? as u32,
            Duration::from_millis(window_ms),
        )
        .ok()?;
        Some((start_at + after, limit))
    });
    let rate = cell["rate"].as_u64().unwrap_or(0);
    let tasks = cell["tasks"].as_u64().unwrap_or(1);
    let gap = (rate > 0).then(|| Duration::from_micros(1_000_000 * tasks / rate));
    let zipf = Zipf::new(keys);
    let mut stdout = std::io::stdout();
    let mut n = 0u64;
    let mut next = tokio::time::Instant::now();
    loop {
        let before = true_now_ms();
        if before >= stop_at {
            break;
        }
        if let Some(burst) = edge_burst {
            // Only within `burst` ms of a window edge; sleep through the rest.
            let into = before % window_ms;
            if into > burst && into < window_ms - burst {
                tokio::time::sleep(Duration::from_millis(window_ms - burst - into)).await;
                continue;
            }
        }
        let key = zipf.sample(&mut rng);
        let (limit, phase) = match change {
            Some((at, limit)) if before >= at => (limit, 1u8),
            _ => (first, 0u8),
        };
        let clock = (before as i64 + skew).max(0) as u64;
        let asked = std::time::Instant::now();
        let answer = limiter
            .admit(ids[key as usize], limit, clock)
            .decided()
            .await;
        let after = true_now_ms();
        let waited = asked.elapsed().as_micros() as u64;
        if waited > 200_000 && std::env::var_os("TM_DEBUG_WAITS").is_some() {
            eprintln!(
                "wait {} ms at {} ms into the window, cell {index}, ok {}",
                waited / 1000,
                before % window_ms,
                answer.is_ok()
            );
        }
        {
            let mut log = log.lock().unwrap();
            *log.offered.entry(index).or_default() += 1;
            let max = log.max_wait_us.entry(index).or_default();
            *max = (*max).max(waited);
            if answer.is_ok() {
                let (wb, wa) = (before / window_ms, after / window_ms);
                *log.phases.entry((index, phase)).or_default() += 1;
                if log_each {
                    let _ = writeln!(stdout, "A {index} {key} {wb} {wa} 1");
                } else {
                    *log.admitted.entry((index, key, wb, wa)).or_default() += 1;
                }
            }
        }
        n += 1;
        match gap {
            Some(gap) => {
                next += gap;
                tokio::time::sleep_until(next).await;
            }
            None if n.is_multiple_of(16) => tokio::task::yield_now().await,
            None => {}
        }
    }
}
