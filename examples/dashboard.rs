//! A key management dashboard: one small HTML page (plain HTML, CSS and JS,
//! embedded; no build step) over `tm_auth::admin::router`, and a protected
//! demo endpoint to try the keys on.
//!
//! ```text
//! cargo run --features admin --example dashboard      # then open the printed URL
//! ```
//!
//! Settings → API Keys: create a key with a descriptive name (shown once,
//! with a Copy button) and, if it should not do everything, the scopes it
//! may use; edit its name, IP restrictions and scopes; revoke it after a
//! confirmation (it stays listed, greyed and marked revoked); open a key's
//! history: who created, edited, rotated or revoked it, when and from
//! where. Try a key on
//!
//! ```text
//! curl -i http://127.0.0.1:3000/api/demo -H 'Authorization: Bearer tm_live_…'
//! curl -i -X POST http://127.0.0.1:3000/api/verify -H 'Authorization: Bearer tm_live_…'
//! ```
//!
//! `/api/demo` takes any valid key; `/api/verify` needs the scope
//! `emails:verify` (a key restricted to other scopes gets 403
//! `insufficient_scope`).
//!
//! The admin API is reached with a session cookie set when the page is
//! served — a stand-in for your own login, wired in through `authorize`.
//! Set `ADDR` to listen elsewhere (loopback only is wise: there is no real
//! login here).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tm_auth::admin::AdminConfig;
use tm_auth::{
    admin, ApiKeyLayer, AuthenticatedKey, KeyId, KeyManager, MemoryStore, RequireScopeLayer, Scope,
};

const PAGE: &str = include_str!("dashboard_assets/index.html");
const SCRIPT: &str = include_str!("dashboard_assets/app.js");
const STYLE: &str = include_str!("dashboard_assets/app.css");

/// The only account of this demo.
const OWNER: &str = "acct_demo";
const COOKIE: &str = "tm_dashboard";

/// The session a browser gets with the page; your login would issue its own.
#[derive(Clone)]
struct Session(String);

fn app(manager: KeyManager, session: Session) -> Router {
    let expected = format!("{COOKIE}={}", session.0);
    let authorize = move |parts: &http::request::Parts| {
        let signed_in = parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|c| c.trim() == expected);
        signed_in.then(|| OWNER.to_owned())
    };
    let demo = Router::new()
        .route("/api/demo", get(demo).post(demo))
        .route(
            "/api/verify",
            axum::routing::post(verify).layer(RequireScopeLayer::new("emails:verify")),
        )
        .layer(ApiKeyLayer::new(manager.clone()));
    // The scopes this API's routes use: what the dashboard offers.
    let config = AdminConfig::new()
        .scopes(["emails:verify", "lists:read", "lists:write"].map(Scope::from_static));
    Router::new()
        .route("/", get(page))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route("/app.css", get(|| asset("text/css; charset=utf-8", STYLE)))
        .with_state(session)
        .nest("/admin", admin::router_with(manager, authorize, config))
        .merge(demo)
}

async fn page(State(session): State<Session>) -> Response {
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", session.0);
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (SET_COOKIE, cookie),
            (CACHE_CONTROL, "no-store".to_owned()),
        ],
        PAGE,
    )
        .into_response()
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(CONTENT_TYPE, content_type)], body).into_response()
}

async fn demo(key: AuthenticatedKey) -> Json<serde_json::Value> {
    Json(json!({
        "ok": true,
        "message": format!("Authenticated with \"{}\" ({})", key.name(), key.hint()),
    }))
}

async fn verify(key: AuthenticatedKey) -> Json<serde_json::Value> {
    Json(json!({
        "ok": true,
        "message": format!("\"{}\" may verify emails", key.name()),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = KeyManager::new(MemoryStore::new());
    let session = Session(KeyId::generate().to_string());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("Dashboard: open http://{local}/ in your browser");
    println!("Demo endpoint: http://{local}/api/demo (Authorization: Bearer <a key you created>)");
    axum::serve(
        listener,
        app(manager, session).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
