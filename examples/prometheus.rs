//! Exporting per-key usage to Prometheus: an axum API protected by
//! `ApiKeyLayer`, and `GET /metrics` in Prometheus' text format, built from
//! `KeyManager::usage_snapshot()` (counters of this process since it started).
//!
//! ```text
//! cargo run --example prometheus
//! ```
//!
//! It listens on 127.0.0.1:3000 (set `ADDR` to change it) and prints a key
//! and two `curl` lines. Keep `/metrics` on an internal address in
//! production: it lists key ids.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use tm_auth::usage::UsageSample;
use tm_auth::{ApiKeyLayer, KeyManager, MemoryStore, NewKey};

/// Prometheus' text exposition format for the samples.
pub(crate) fn render(samples: &[UsageSample]) -> String {
    let mut out = String::new();
    out.push_str("# HELP tm_auth_requests_total Requests authenticated with the API key.\n");
    out.push_str("# TYPE tm_auth_requests_total counter\n");
    for s in samples {
        let _ = writeln!(
            out,
            "tm_auth_requests_total{{key_id=\"{}\"}} {}",
            s.id, s.requests
        );
    }
    out.push_str(
        "# HELP tm_auth_rejections_total Requests of the API key that were refused, by reason.\n",
    );
    out.push_str("# TYPE tm_auth_rejections_total counter\n");
    for s in samples {
        let r = &s.rejections;
        for (reason, count) in [
            ("revoked", r.revoked),
            ("expired", r.expired),
            ("wrong_environment", r.wrong_environment),
            ("ip_not_allowed", r.ip_not_allowed),
            ("rate_limited", r.rate_limited),
        ] {
            let _ = writeln!(
                out,
                "tm_auth_rejections_total{{key_id=\"{}\",reason=\"{reason}\"}} {count}",
                s.id
            );
        }
    }
    out.push_str("# HELP tm_auth_last_used_timestamp_seconds When the API key was last used.\n");
    out.push_str("# TYPE tm_auth_last_used_timestamp_seconds gauge\n");
    for s in samples {
        if let Some(at) = s
            .last_used_at
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        {
            let _ = writeln!(
                out,
                "tm_auth_last_used_timestamp_seconds{{key_id=\"{}\"}} {:.3}",
                s.id,
                at.as_secs_f64()
            );
        }
    }
    out
}

async fn metrics(State(manager): State<KeyManager>) -> String {
    render(&manager.usage_snapshot())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager
        .create(NewKey::new("acct_demo", "Production - Main Website"))
        .await?;
    let api = Router::new()
        .route("/v1/verify", get(|| async { "ok\n" }))
        .layer(ApiKeyLayer::new(manager.clone()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(manager)
        .merge(api);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("Listening on http://{local}");
    println!("Your API key (shown once): {}", created.key.expose_secret());
    println!(
        "Try:\n  curl http://{local}/v1/verify -H 'Authorization: Bearer {}'\n  curl http://{local}/metrics",
        created.key.expose_secret()
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
