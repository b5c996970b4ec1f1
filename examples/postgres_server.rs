//! The axum example on PostgreSQL: keys shared by every server that points
//! at the same database.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run --example postgres_server --features postgres
//! ```
//!
//! It migrates the database, creates a key, and serves `POST /v1/verify` and
//! `GET /v1/usage` on 127.0.0.1:3000 (set `ADDR` to change it). Start a
//! second copy on another `ADDR`: verification is answered from each
//! server's cache, and a key revoked through one is refused by the other as
//! soon as PostgreSQL's notification arrives (well under a millisecond on
//! one machine; at worst the cache's `max_staleness`, 3 s). Ctrl-C stops it
//! after flushing usage.

#[allow(dead_code)]
#[path = "axum_server.rs"]
mod axum_server;

use std::net::SocketAddr;
use std::time::Duration;

use tm_auth::store::cache::CacheConfig;
use tm_auth::store::postgres::PostgresStore;
use tm_auth::{KeyManager, NewKey};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres")?;
    let store = PostgresStore::connect(&url).await?;
    let manager = KeyManager::new(store.cached(CacheConfig::new()).await?);
    let created = manager
        .create(NewKey::new("acct_demo", "Production - Main Website"))
        .await?;

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("Listening on http://{local} (keys in PostgreSQL, cached here)");
    println!("Your API key (shown once): {}", created.key.expose_secret());
    println!(
        "Try:\n  curl -i -X POST http://{local}/v1/verify -H 'Authorization: Bearer {}'",
        created.key.expose_secret()
    );
    let usage_task = manager.spawn_usage_task(Duration::from_secs(10))?;
    axum::serve(
        listener,
        axum_server::app(manager.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    usage_task.shutdown().await?;
    Ok(())
}
