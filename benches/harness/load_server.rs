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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http::Request;
use sha2::{Digest, Sha256};
use tm_auth::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::var("AUTH").unwrap_or_else(|_| "on".to_owned());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let manager = KeyManager::new(MemoryStore::new());
    let mut keys = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let created = manager
            .create(NewKey::new(
                format!("acct_{i}"),
                "Production - Main Website",
            ))
            .await?;
        keys.push(created.key);
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
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on {addr}, auth {mode}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
