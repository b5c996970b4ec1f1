//! An axum API with `POST /v1/verify` protected by `ApiKeyLayer`.
//!
//! ```text
//! cargo run --example axum_server
//! ```
//!
//! It listens on 127.0.0.1:3000 (set `ADDR` to change it), creates a live
//! key on the in-memory store, and prints it with a ready-to-paste `curl`
//! line. `GET /v1/usage` shows the calling key's usage; `GET /health` is
//! left open. Ctrl-C stops it, flushing usage and printing the key's totals.

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tm_auth::{ApiKeyLayer, AuthenticatedKey, KeyManager, MemoryStore, NewKey};

/// The protected API. `who` is filled in by the layer: a handler never sees
/// an unauthenticated request.
async fn verify(who: AuthenticatedKey) -> Json<Value> {
    Json(json!({
        "ok": true,
        "key": {
            "id": who.id().to_string(),
            "owner": who.owner(),
            "name": who.name(),
            "environment": who.environment().as_str(),
        }
    }))
}

/// The calling key's own usage.
async fn usage(State(manager): State<KeyManager>, who: AuthenticatedKey) -> Json<Value> {
    match manager.usage(&who.id()).await {
        Ok(usage) => Json(json!({
            "requests": usage.requests,
            "rejected": usage.rejected,
            "last_used_ip": usage.last_used_ip.map(|ip| ip.to_string()),
            "requests_this_minute": usage.per_minute.last().map_or(0, |m| m.requests),
        })),
        Err(err) => Json(json!({ "error": err.to_string() })),
    }
}

/// The application: protected routes get the layer, `/health` does not.
pub(crate) fn app(manager: KeyManager) -> Router {
    let protected = Router::new()
        .route("/v1/verify", post(verify))
        .route("/v1/usage", get(usage))
        .with_state(manager.clone())
        .layer(ApiKeyLayer::new(manager));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(protected)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager
        .create(NewKey::new("acct_demo", "Production - Main Website"))
        .await?;

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("Listening on http://{local}");
    println!("Your API key (shown once): {}", created.key.expose_secret());
    println!(
        "Try:\n  curl -i -X POST http://{local}/v1/verify -H 'Authorization: Bearer {}'",
        created.key.expose_secret()
    );
    // Counts reach the store every 10 s, and once more at shutdown.
    let usage_task = manager.spawn_usage_task(std::time::Duration::from_secs(10))?;
    // ConnectInfo gives the layer the TCP peer, for IP allowlists.
    axum::serve(
        listener,
        app(manager.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    usage_task.shutdown().await?;
    let usage = manager.usage(&created.record.id).await?;
    println!(
        "Usage of {}: {} requests, {} rejected",
        created.record.hint, usage.requests, usage.rejected
    );
    Ok(())
}
