//! Everything the crate logs at TRACE, and every `Debug`/`Display` of its
//! public types, during a full scenario: no key's random part appears.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::{Capture, Fault, FaultyStore, Op};
use tm_auth::clock::ManualClock;
use tm_auth::{
    ApiKeyLayer, AuthenticatedKey, Environment, KeyManager, KeyUpdate, NewKey, PeerAddr, TmKey,
};
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;

async fn call(layer: &ApiKeyLayer, authorization: Option<String>, forwarded: Option<&str>) -> u16 {
    let service = ServiceBuilder::new().layer(layer.clone()).service_fn(
        |req: Request<Full<Bytes>>| async move {
            let who = req.extensions().get::<AuthenticatedKey>().cloned();
            tracing::info!(?who, "handler called");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        },
    );
    let mut request = Request::post("/v1/verify");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if let Some(value) = forwarded {
        request = request.header("x-forwarded-for", value);
    }
    let mut request = request.body(Full::new(Bytes::new())).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([10, 0, 0, 1], 5000))));
    let span = tracing::info_span!("request", key_id = tracing::field::Empty);
    let response = service.oneshot(request).instrument(span).await.unwrap();
    response.status().as_u16()
}

/// Everything logged on this thread, at every level, from now until the
/// guard is dropped.
fn capture_everything() -> (Capture, tracing::subscriber::DefaultGuard) {
    Capture::install(tracing::Level::TRACE)
}

/// No key's random part, nor any 8 consecutive characters of it, is in
/// `everything`.
fn assert_no_key_in<'a>(secrets: impl IntoIterator<Item = &'a str>, everything: &str) {
    for secret in secrets {
        for window in secret.as_bytes()[8..34].windows(8) {
            let window = std::str::from_utf8(window).unwrap();
            assert!(
                !everything.contains(window),
                "{window} of a key appears in:\n{everything}"
            );
        }
    }
}

#[tokio::test]
async fn no_key_appears_in_logs_or_debug_output() {
    let (capture, _guard) = capture_everything();

    let clock = ManualClock::new(SystemTime::now());
    let store = FaultyStore::new();
    let manager = KeyManager::builder(store.clone())
        .clock(clock.clone())
        .audit_to_tracing(true)
        .build();
    let layer = ApiKeyLayer::new(manager.clone()).trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
    let live_only = ApiKeyLayer::new(manager.clone()).require_environment(Environment::Live);

    let live = manager
        .create(NewKey::new("acct", "Production"))
        .await
        .unwrap();
    let test = manager
        .create(NewKey::new("acct", "Development").environment(Environment::Test))
        .await
        .unwrap();
    let restricted = manager
        .create(NewKey::new("acct", "Office").allowed_ips(["203.0.113.0/24".parse().unwrap()]))
        .await
        .unwrap();
    let mut secrets: Vec<TmKey> = vec![live.key.clone(), test.key.clone(), restricted.key.clone()];
    let mut debug_output = Vec::new();

    let s = live.key.expose_secret().to_owned();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(call(&layer, Some(format!("Bearer {s}")), None).await);
    }
    // Every error path.
    let mut typo = s.clone();
    typo.replace_range(20..21, if &s[20..21] == "a" { "b" } else { "a" });
    for value in [
        None,
        Some(format!("Bearer Bearer {s}")),
        Some(format!("Bearer{s}")),
        Some(format!("Basic {s}")),
        Some(s.clone()),
        Some(format!("Bearer \"{s}\"")),
        Some(format!("Bearer {s} {s}")),
        Some(format!("Bearer {s}{}", "x".repeat(2000))),
        Some(format!("Bearer {typo}")),
        Some(format!("Bearer {}", &s[..30])),
        Some(format!(
            "Bearer {}",
            TmKey::generate(Environment::Live).expose_secret()
        )),
    ] {
        statuses.push(call(&layer, value, None).await);
    }
    statuses.push(
        call(
            &live_only,
            Some(format!("Bearer {}", test.key.expose_secret())),
            None,
        )
        .await,
    );
    let r = restricted.key.expose_secret().to_owned();
    statuses.push(call(&layer, Some(format!("Bearer {r}")), None).await);
    statuses.push(call(&layer, Some(format!("Bearer {r}")), Some("203.0.113.5")).await);
    statuses.push(call(&layer, Some(format!("Bearer {r}")), Some("garbage")).await);
    store.set(Op::Find, Fault::Fail);
    statuses.push(call(&layer, Some(format!("Bearer {s}")), None).await);
    store.clear();

    // Edit, rotate, expire, revoke.
    manager
        .update(&live.record.id, KeyUpdate::new().name("Production - Main"))
        .await
        .unwrap();
    let rotated = manager
        .rotate(&live.record.id, Duration::from_secs(1))
        .await
        .unwrap();
    secrets.push(rotated.key.clone());
    clock.advance(Duration::from_secs(2));
    statuses.push(call(&layer, Some(format!("Bearer {s}")), None).await);
    let revoked = manager.revoke(&rotated.record.id).await.unwrap();
    statuses.push(
        call(
            &layer,
            Some(format!("Bearer {}", rotated.key.expose_secret())),
            None,
        )
        .await,
    );
    store.set(Op::Update, Fault::Fail);
    let failed_rotation = manager
        .rotate(&test.record.id, Duration::ZERO)
        .await
        .unwrap_err();
    store.clear();

    // Every public type's Debug and Display.
    let who = manager
        .verify(test.key.expose_secret(), None)
        .await
        .unwrap();
    let errors: Vec<tm_auth::AuthError> = vec![
        manager.verify(&s, None).await.unwrap_err(),
        manager.verify(&typo, None).await.unwrap_err(),
        manager.verify(&format!("{s}x"), None).await.unwrap_err(),
        manager.verify(&r, None).await.unwrap_err(),
    ];
    for err in &errors {
        debug_output.push(format!("{err:?} {err} {}", err.hint()));
    }
    debug_output.push(format!("{failed_rotation:?} {failed_rotation}"));
    for key in &secrets {
        debug_output.push(format!("{key:?} {key} {:?} {}", key.hint(), key.hint()));
        debug_output.push(format!("{:?}", key.hash()));
    }
    debug_output.push(format!("{live:?} {test:?} {rotated:?} {revoked:?} {who:?}"));
    debug_output.push(format!(
        "{manager:?} {layer:?} {store:?}",
        store = store.inner
    ));
    debug_output.push(format!("{:?}", manager.list("acct").await.unwrap()));
    // The audit trail: every event, as stored and as `Debug` shows it.
    let audit = manager
        .audit("acct", tm_auth::audit::AuditQuery::first(1_000))
        .await
        .unwrap();
    assert!(
        audit.events.len() >= 6,
        "creates, edit, rotations and revocation were audited: {audit:?}"
    );
    debug_output.push(format!("{audit:?}"));

    drop(_guard);
    let logs = capture.text();
    // The capture works and saw the scenario, so the test below can fail.
    assert!(logs.contains("API key accepted"), "{logs}");
    assert!(logs.contains("API key rejected"));
    assert!(logs.contains("API key revoked"));
    assert!(
        logs.contains("API key audit event") && logs.contains("action=\"revoke\""),
        "audit events are forwarded to tracing: {logs}"
    );
    assert!(
        logs.contains(&format!("key_id={}", live.record.id)),
        "the key id is recorded on the request span"
    );
    assert!(
        statuses.contains(&200)
            && statuses.contains(&401)
            && statuses.contains(&403)
            && statuses.contains(&503)
    );

    let everything = format!("{logs}\n{}", debug_output.join("\n"));
    assert_no_key_in(secrets.iter().map(TmKey::expose_secret), &everything);
}

/// The later additions — the verification cache, the admin router, the
/// client layer, `from_env` and the scanner — under the same TRACE capture,
/// with every Debug and Display of their public types.
#[tokio::test]
async fn cache_admin_and_client_types_show_no_key() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tm_auth::client::BearerAuthLayer;
    use tm_auth::store::cache::{CacheConfig, CachedStore};

    let (capture, _guard) = capture_everything();
    let mut secrets: Vec<String> = Vec::new();
    let mut shown: Vec<String> = Vec::new();

    // The cache, including a store failure behind it.
    let store = FaultyStore::new();
    let cached = CachedStore::new(store.clone(), CacheConfig::new());
    cached.invalidator().synced(std::time::Instant::now());
    let manager = KeyManager::new(cached.clone());
    let created = manager.create(NewKey::new("acct", "Cached")).await.unwrap();
    secrets.push(created.key.expose_secret().to_owned());
    manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap();
    // The entry verification reads, used by now, and the record it holds.
    assert_eq!(cached.cached_keys(), 1, "the cache holds the key");
    let record = manager.get(&created.record.id).await.unwrap();
    shown.push(format!("{record:?}"));
    store.set(Op::Update, Fault::Fail);
    shown.push(format!(
        "{:?}",
        manager
            .update(&created.record.id, KeyUpdate::new().name("X"))
            .await
    ));
    store.clear();
    shown.push(format!(
        "{cached:?} {:?} {:?}",
        cached.invalidator(),
        CacheConfig::new()
    ));

    // The admin router: every answer but create's and rotate's is checked
    // too, since only those two may carry a key.
    let router = tm_auth::admin::router(manager.clone(), |_: &http::request::Parts| {
        Some("acct".to_owned())
    });
    let send = |method: &str, path: String, body: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let reply = router
        .clone()
        .oneshot(send("POST", "/keys".into(), r#"{"name":"Admin made"}"#))
        .await
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&reply.into_body().collect().await.unwrap().to_bytes()).unwrap();
    secrets.push(body["key"].as_str().unwrap().to_owned());
    let id = body["record"]["id"].as_str().unwrap().to_owned();
    let rotated = router
        .clone()
        .oneshot(send("POST", format!("/keys/{id}/rotate"), "{}"))
        .await
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&rotated.into_body().collect().await.unwrap().to_bytes()).unwrap();
    secrets.push(body["key"].as_str().unwrap().to_owned());
    for (method, path, body) in [
        ("GET", "/keys".to_owned(), ""),
        (
            "PATCH",
            format!("/keys/{id}"),
            r#"{"allowed_ips":["nope"]}"#,
        ),
        ("PATCH", format!("/keys/{id}"), r#"{"name":"Renamed"}"#),
        ("POST", format!("/keys/{id}/revoke"), "{}"),
        ("POST", "/keys/key_unknown/revoke".to_owned(), "{}"),
    ] {
        let reply = router
            .clone()
            .oneshot(send(method, path, body))
            .await
            .unwrap();
        let bytes = reply.into_body().collect().await.unwrap().to_bytes();
        shown.push(String::from_utf8_lossy(&bytes).into_owned());
    }

    store.set(Op::List, Fault::Fail);
    let failed = router
        .clone()
        .oneshot(send("GET", "/keys".into(), ""))
        .await
        .unwrap();
    assert_eq!(failed.status(), 503);
    store.clear();

    // The client side.
    let key = TmKey::generate(Environment::Live);
    secrets.push(key.expose_secret().to_owned());
    for (i, value) in [
        format!("Bearer {}", key.expose_secret()),
        format!("\"{}\"", key.expose_secret()),
        key.expose_secret()[..39].to_owned(),
        format!("{}x", &key.expose_secret()[..39]),
        format!("sk_live_{}", &key.expose_secret()[8..]),
    ]
    .iter()
    .enumerate()
    {
        let var = format!("TM_AUTH_HYGIENE_{i}");
        std::env::set_var(&var, value);
        if let Err(err) = TmKey::from_env(&var) {
            shown.push(format!("{err:?} {err}"));
        }
    }
    let layer = BearerAuthLayer::new(key.clone());
    shown.push(format!("{layer:?} {:?}", tower::Layer::layer(&layer, ())));
    if let Err(err) = BearerAuthLayer::for_environment(key.clone(), Environment::Test) {
        shown.push(format!("{err:?} {err}"));
    }
    let text = format!("leaked: {}", key.expose_secret());
    shown.push(format!(
        "{:?}",
        tm_auth::scan::find_keys(&text).collect::<Vec<_>>()
    ));

    drop(_guard);
    let logs = capture.text();
    assert!(
        logs.contains("API key") || !logs.is_empty(),
        "the capture saw the scenario"
    );
    let everything = format!("{logs}\n{}", shown.join("\n"));
    assert_no_key_in(secrets.iter().map(String::as_str), &everything);
}
