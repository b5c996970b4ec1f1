//! The server `benches/scripts/http_load.sh` loads: axum hello-world on one thread,
//! with or without `ApiKeyLayer`.
//!
//! ```text
//! AUTH=on   ADDR=127.0.0.1:8080 cargo run --release --example load_server
//! AUTH=off  ADDR=127.0.0.1:8080 cargo run --release --example load_server
//! AUTH=noop ADDR=127.0.0.1:8080 cargo run --release --example load_server
//! AUTH=floor ADDR=127.0.0.1:8080 cargo run --release --example load_server
//! ```
//!
//! Two references, each a `tower::util::MapRequestLayer` under the same
//! `Router::layer`: `noop` does nothing, for what axum charges any layer;
//! `floor` does only the benchmarks' floor — SHA-256 of the bearer key and
//! one lookup in a `HashMap<[u8; 32], _>` of the same keys — and lets every
//! request through, for what any layer that hashes keys must pay.
//!
//! The store holds 10 000 keys; the first line printed is the one to send.
//! With `AUTH=off` the same header is sent and ignored, so both runs move
//! the same bytes.
//!
//! `LIMIT=requests/seconds` gives every key that rate limit, and `LIMITER`
//! picks who enforces it (`benches/scripts/shared_limit.sh`; built with
//! `--features redis` for the last two):
//! - `local` (default): the in-process limiter;
//! - `redis`: `RedisLimiter` at `REDIS_URL`, leases spent locally;
//! - `eval`: one Redis `EVALSHA` per request (a fixed-window counter, as
//!   Kong's `redis` policy or Envoy's ratelimit service do), for contrast.
//!
//! At exit (SIGTERM or SIGINT) the server prints, on stderr, the requests
//! let in and refused per window.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http::Request;
use sha2::{Digest, Sha256};
use tm_auth::{ApiKeyLayer, KeyManager, MemoryStore, NewKey, RateLimit};

#[path = "per_request_limiter.rs"]
#[cfg(feature = "redis")]
mod per_request_limiter;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::var("AUTH").unwrap_or_else(|_| "on".to_owned());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let limit = match std::env::var("LIMIT") {
        Ok(text) => Some(parse_limit(&text)?),
        Err(_) => None,
    };
    let builder = KeyManager::builder(MemoryStore::new());
    let limiter_name = std::env::var("LIMITER").unwrap_or_else(|_| "local".to_owned());
    #[cfg(feature = "redis")]
    let mut shared = None;
    let builder = match limiter_name.as_str() {
        "local" => builder,
        #[cfg(feature = "redis")]
        "redis" => {
            let limiter = tm_auth::redis_limiter::RedisLimiter::connect(
                &redis_url(),
                tm_auth::redis_limiter::RedisLimiterConfig::new()
                    .key_prefix(format!("tm-auth-load:{}", std::process::id())),
            )
            .await?;
            shared = Some(limiter.clone());
            builder.rate_limiter(limiter)
        }
        #[cfg(feature = "redis")]
        "eval" => builder
            .rate_limiter(per_request_limiter::PerRequestLimiter::connect(&redis_url()).await?),
        other => {
            return Err(format!(
                "LIMITER is local, redis or eval (with --features redis), not {other:?}"
            )
            .into())
        }
    };
    let manager = builder.build();
    let mut keys = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let mut new = NewKey::new(format!("acct_{i}"), "Production - Main Website");
        if let Some(limit) = limit {
            new = new.rate_limit(limit);
        }
        keys.push(manager.create(new).await?.key);
    }
    let key = keys.first().ok_or("no key created")?;
    println!("{}", key.expose_secret());
    let floor: Arc<HashMap<[u8; 32], u64>> = Arc::new(
        keys.iter()
            .enumerate()
            .map(|(i, key)| (Sha256::digest(key.expose_secret()).into(), i as u64))
            .collect(),
    );

    let app = Router::new().route("/", get(|| async { "ok" }));
    let app = match mode.as_str() {
        "on" => app.layer(ApiKeyLayer::new(manager)),
        "off" => app,
        "noop" => app.layer(tower::util::MapRequestLayer::new(|request| request)),
        "floor" => app.layer(tower::util::MapRequestLayer::new(
            move |request: Request<Body>| {
                let key = request
                    .headers()
                    .get(AUTHORIZATION)
                    .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
                if let Some(key) = key {
                    let hash: [u8; 32] = Sha256::digest(key).into();
                    std::hint::black_box(floor.get(&hash));
                }
                request
            },
        )),
        other => return Err(format!("AUTH is on, off, noop or floor, not {other:?}").into()),
    };
    let app = app.layer(axum::middleware::from_fn(windows::count));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on {addr}, auth {mode}, limiter {limiter_name}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped())
    .await?;
    #[cfg(feature = "redis")]
    if let Some(limiter) = shared {
        eprintln!("decided without Redis: {}", limiter.decided_locally());
        limiter.shutdown().await?;
    }
    windows::print(limit);
    Ok(())
}

async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `requests/seconds`, e.g. `10000/1`.
fn parse_limit(text: &str) -> Result<RateLimit, Box<dyn std::error::Error>> {
    let (requests, seconds) = text.split_once('/').ok_or("LIMIT is requests/seconds")?;
    Ok(RateLimit::new(
        requests.parse()?,
        std::time::Duration::from_secs(seconds.parse()?),
    )?)
}

#[cfg(feature = "redis")]
fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Requests let in (2xx) and refused (429) per second of the system clock.
mod windows {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::{SystemTime, UNIX_EPOCH};

    use axum::body::Body;
    use axum::middleware::Next;
    use axum::response::Response;
    use http::Request;

    static COUNTS: Mutex<BTreeMap<u64, (u64, u64)>> = Mutex::new(BTreeMap::new());

    pub(crate) async fn count(request: Request<Body>, next: Next) -> Response {
        let response = next.run(request).await;
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts.entry(second).or_default();
        if response.status().is_success() {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        response
    }

    /// `window <second> admitted <n> refused <n>` for each whole second.
    pub(crate) fn print(limit: Option<tm_auth::RateLimit>) {
        let counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let whole: Vec<_> = counts.iter().skip(1).collect();
        for (second, (admitted, refused)) in whole.iter().take(whole.len().saturating_sub(1)) {
            eprintln!("window {second} admitted {admitted} refused {refused}");
        }
        if let Some(limit) = limit {
            eprintln!("limit {} per {:?}", limit.requests(), limit.window());
        }
    }
}
