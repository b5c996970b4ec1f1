//! The server `bench/http_load.sh` loads: axum hello-world on one thread,
//! with or without `ApiKeyLayer`.
//!
//! ```text
//! AUTH=on   ADDR=127.0.0.1:8080 cargo run --release --example load_server
//! AUTH=off  ADDR=127.0.0.1:8080 cargo run --release --example load_server
//! AUTH=noop ADDR=127.0.0.1:8080 cargo run --release --example load_server
//! ```
//!
//! `noop` is a reference: a layer that does nothing, for what axum's
//! `Router::layer` charges any layer.
//!
//! The store holds 10 000 keys; the first line printed is the one to send.
//! With `AUTH=off` the same header is sent and ignored, so both runs move
//! the same bytes.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use tm_auth::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::var("AUTH").unwrap_or_else(|_| "on".to_owned());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let manager = KeyManager::new(MemoryStore::new());
    let mut first = None;
    for i in 0..10_000 {
        let created = manager
            .create(NewKey::new(
                format!("acct_{i}"),
                "Production - Main Website",
            ))
            .await?;
        first.get_or_insert(created.key);
    }
    let key = first.ok_or("no key created")?;
    println!("{}", key.expose_secret());

    let app = Router::new().route("/", get(|| async { "ok" }));
    let app = match mode.as_str() {
        "on" => app.layer(ApiKeyLayer::new(manager)),
        "off" => app,
        "noop" => app.layer(tower::util::MapRequestLayer::new(|request| request)),
        other => return Err(format!("AUTH is on, off or noop, not {other:?}").into()),
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
