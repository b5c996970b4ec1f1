//! The layer over real TCP on loopback: the axum example's router served on
//! an ephemeral port, called with a hyper client.

mod support;

#[allow(dead_code)]
#[path = "../examples/axum_server.rs"]
mod axum_server;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{Fault, FaultyStore, Op};
use tm_auth::clock::ManualClock;
use tm_auth::{
    ApiKeyLayer, AuthenticatedKey, ClientIpHeader, Environment, KeyManager, MemoryStore, NewKey,
};

/// Serves `app` on `bind` (port 0) and returns the address.
async fn serve(app: Router, bind: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    fn hint(&self) -> String {
        self.json()["hint"].as_str().unwrap_or_default().to_owned()
    }
}

/// One POST over a fresh connection to `connect_to`.
async fn send(connect_to: &str, path: &str, headers: &[(&str, &[u8])]) -> Reply {
    send_as(http::Method::POST, connect_to, path, headers).await
}

/// One request over a fresh connection to `connect_to`.
async fn send_as(
    method: http::Method,
    connect_to: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Reply {
    let stream = tokio::net::TcpStream::connect(connect_to).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from_static(b"{}"))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn bearer(secret: &str) -> Vec<u8> {
    format!("Bearer {secret}").into_bytes()
}

#[tokio::test]
async fn the_example_router_over_tcp() {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager
        .create(NewKey::new("acct_1", "Production Server"))
        .await
        .unwrap();
    let secret = created.key.expose_secret();
    let addr = serve(axum_server::app(manager.clone()), "127.0.0.1:0")
        .await
        .to_string();

    let ok = send(&addr, "/v1/verify", &[("authorization", &bearer(secret))]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.json()["key"]["name"], "Production Server");
    assert_eq!(ok.json()["key"]["id"], created.record.id.to_string());

    // The caller's own usage, counted by the same manager.
    let usage = send_as(
        http::Method::GET,
        &addr,
        "/v1/usage",
        &[("authorization", &bearer(secret))],
    )
    .await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.body);
    assert_eq!(usage.json()["requests"], 2, "the POST above and this GET");
    assert_eq!(usage.json()["last_used_ip"], "127.0.0.1");

    // /health is not behind the layer.
    let health = send(&addr, "/health", &[]).await;
    assert_eq!(
        health.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "POST /health: routed, not authenticated"
    );

    // No header.
    let missing = send(&addr, "/v1/verify", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.code(), "missing_api_key");
    assert_eq!(missing.headers["www-authenticate"], "Bearer realm=\"api\"");
    assert_eq!(missing.headers["content-type"], "application/json");
    assert!(missing.hint().contains("Authorization: Bearer"));

    // Keys sent where they are never accepted.
    let header = send(&addr, "/v1/verify", &[("x-api-key", secret.as_bytes())]).await;
    assert_eq!(header.code(), "missing_api_key");
    assert!(header.hint().contains("Authorization"));
    let query = send(&addr, &format!("/v1/verify?api_key={secret}"), &[]).await;
    assert_eq!(query.code(), "missing_api_key");
    assert!(query.hint().contains("URL"));

    // Every classic mistake: 401, its code, a hint, RFC 6750's invalid_request.
    let long = format!("Bearer {secret}{}", "x".repeat(1100));
    let mistakes: Vec<(Vec<u8>, &str)> = vec![
        (format!("Bearer Bearer {secret}").into_bytes(), "twice"),
        (format!("Bearer{secret}").into_bytes(), "space"),
        (format!("Basic {secret}").into_bytes(), "Basic"),
        (format!("Token {secret}").into_bytes(), "Token"),
        (format!("ApiKey {secret}").into_bytes(), "ApiKey"),
        (secret.as_bytes().to_vec(), "Bearer"),
        (format!("Bearer \"{secret}\"").into_bytes(), "quotes"),
        (
            format!("Bearer {secret} extra").into_bytes(),
            "after the key",
        ),
        (format!("Bearer\t{secret}").into_bytes(), "tab"),
        (format!("Bearer {secret}é").into_bytes(), "non-ASCII"),
        (long.into_bytes(), "1 KiB"),
    ];
    for (value, hint_mentions) in &mistakes {
        let reply = send(&addr, "/v1/verify", &[("authorization", value)]).await;
        let shown = String::from_utf8_lossy(value);
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{shown}");
        assert_eq!(reply.code(), "malformed_authorization_header", "{shown}");
        assert_eq!(reply.json()["error"], "Invalid API key");
        assert!(
            reply.hint().contains(hint_mentions),
            "{shown}: {}",
            reply.hint()
        );
        let www = reply.headers["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"invalid_request\""), "{www}");
        assert!(
            !reply.body.contains(&secret[8..]),
            "the key is never echoed"
        );
    }
    let twice = send(
        &addr,
        "/v1/verify",
        &[
            ("authorization", &bearer(secret)),
            ("authorization", &bearer(secret)),
        ],
    )
    .await;
    assert_eq!(twice.code(), "malformed_authorization_header");
    assert!(twice.hint().contains("several"));

    // Malformed keys and unknown keys.
    let mut typo = secret.to_owned();
    typo.replace_range(20..21, if &secret[20..21] == "a" { "b" } else { "a" });
    for (value, expected_hint) in [
        (typo.as_str(), "checksum"),
        ("tm_live_short", "40 characters"),
        ("sk_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", "tm_live_"),
    ] {
        let reply = send(&addr, "/v1/verify", &[("authorization", &bearer(value))]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.code(), "invalid_api_key");
        assert!(reply.hint().contains(expected_hint), "{}", reply.hint());
        assert!(reply.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\""));
    }
    let unknown = tm_auth::TmKey::generate(Environment::Live);
    let reply = send(
        &addr,
        "/v1/verify",
        &[("authorization", &bearer(unknown.expose_secret()))],
    )
    .await;
    assert_eq!(reply.code(), "invalid_api_key");

    // Revoked: the very next request.
    manager.revoke(&created.record.id).await.unwrap();
    let revoked = send(&addr, "/v1/verify", &[("authorization", &bearer(secret))]).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert_eq!(revoked.code(), "api_key_revoked");
    assert!(revoked.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
}

#[tokio::test]
async fn expired_keys() {
    let clock = ManualClock::new(SystemTime::now());
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let rotated = manager
        .rotate(&created.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    let addr = serve(axum_server::app(manager), "127.0.0.1:0")
        .await
        .to_string();
    let old = bearer(created.key.expose_secret());
    assert_eq!(
        send(&addr, "/v1/verify", &[("authorization", &old)])
            .await
            .status,
        StatusCode::OK
    );
    clock.advance(Duration::from_secs(60));
    let reply = send(&addr, "/v1/verify", &[("authorization", &old)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code(), "api_key_expired");
    let new = bearer(rotated.key.expose_secret());
    assert_eq!(
        send(&addr, "/v1/verify", &[("authorization", &new)])
            .await
            .status,
        StatusCode::OK
    );
}

async fn whoami(who: AuthenticatedKey) -> String {
    who.name().to_owned()
}

#[tokio::test]
async fn live_only_deployments_refuse_test_keys() {
    let manager = KeyManager::new(MemoryStore::new());
    let live = manager.create(NewKey::new("acct", "Live")).await.unwrap();
    let test = manager
        .create(NewKey::new("acct", "Test").environment(Environment::Test))
        .await
        .unwrap();
    let app = Router::new()
        .route("/", post(whoami))
        .layer(ApiKeyLayer::new(manager).require_environment(Environment::Live));
    let addr = serve(app, "127.0.0.1:0").await.to_string();
    let reply = send(
        &addr,
        "/",
        &[("authorization", &bearer(test.key.expose_secret()))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code(), "wrong_environment");
    assert!(reply.hint().contains("tm_live_"));
    let reply = send(
        &addr,
        "/",
        &[("authorization", &bearer(live.key.expose_secret()))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "Live");
}

#[tokio::test]
async fn ip_allowlists_over_ipv4_ipv6_and_mapped_addresses() {
    let manager = KeyManager::new(MemoryStore::new());
    let loopback_v4 = manager
        .create(NewKey::new("acct", "v4").allowed_ips(["127.0.0.0/8".parse().unwrap()]))
        .await
        .unwrap();
    let loopback_v6 = manager
        .create(NewKey::new("acct", "v6").allowed_ips(["::1/128".parse().unwrap()]))
        .await
        .unwrap();
    let elsewhere = manager
        .create(NewKey::new("acct", "elsewhere").allowed_ips(["203.0.113.0/24".parse().unwrap()]))
        .await
        .unwrap();
    let app = || {
        Router::new()
            .route("/", post(whoami))
            .layer(ApiKeyLayer::new(manager.clone()))
    };
    let v4 = serve(app(), "127.0.0.1:0").await.to_string();
    let v6 = serve(app(), "[::1]:0").await.to_string();
    // A dual-stack socket sees IPv4 clients as ::ffff:127.0.0.1.
    let dual = serve(app(), "[::]:0").await;
    let mapped = format!("127.0.0.1:{}", dual.port());

    let call = |addr: String, key: &tm_auth::TmKey| {
        let value = bearer(key.expose_secret());
        async move { send(&addr, "/", &[("authorization", &value)]).await }
    };
    assert_eq!(
        call(v4.clone(), &loopback_v4.key).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(v6.clone(), &loopback_v6.key).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(mapped.clone(), &loopback_v4.key).await.status,
        StatusCode::OK,
        "an IPv4-mapped peer matches IPv4 networks"
    );
    let denied = call(v6.clone(), &loopback_v4.key).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.code(), "ip_not_allowed");
    assert_eq!(denied.json()["error"], "IP address not allowed");
    assert!(denied.headers.get("www-authenticate").is_none());
    assert_eq!(
        call(v4.clone(), &loopback_v6.key).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(mapped, &loopback_v6.key).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(v4, &elsewhere.key).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn only_trusted_proxies_may_name_the_client() {
    let manager = KeyManager::new(MemoryStore::new());
    let office = manager
        .create(NewKey::new("acct", "Office").allowed_ips(["203.0.113.0/24".parse().unwrap()]))
        .await
        .unwrap();
    let value = bearer(office.key.expose_secret());
    let untrusting = Router::new()
        .route("/", post(whoami))
        .layer(ApiKeyLayer::new(manager.clone()).trusted_proxies(["10.0.0.0/8".parse().unwrap()]));
    let trusting = Router::new()
        .route("/", post(whoami))
        .layer(ApiKeyLayer::new(manager.clone()).trusted_proxies(["127.0.0.0/8".parse().unwrap()]));
    let rfc7239 = Router::new().route("/", post(whoami)).layer(
        ApiKeyLayer::new(manager)
            .trusted_proxies(["127.0.0.0/8".parse().unwrap()])
            .client_ip_header(ClientIpHeader::Forwarded),
    );
    let untrusting = serve(untrusting, "127.0.0.1:0").await.to_string();
    let trusting = serve(trusting, "127.0.0.1:0").await.to_string();
    let rfc7239 = serve(rfc7239, "127.0.0.1:0").await.to_string();
    let xff: (&str, &[u8]) = ("x-forwarded-for", b"203.0.113.50");
    let forwarded: (&str, &[u8]) = ("forwarded", b"for=203.0.113.50;proto=https");

    let spoofed = send(&untrusting, "/", &[("authorization", &value), xff]).await;
    assert_eq!(
        spoofed.status,
        StatusCode::FORBIDDEN,
        "an untrusted peer cannot spoof X-Forwarded-For"
    );
    assert!(spoofed.hint().contains("127.0.0.1"));
    assert_eq!(
        send(&trusting, "/", &[("authorization", &value), xff])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&trusting, "/", &[("authorization", &value), forwarded])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&rfc7239, "/", &[("authorization", &value), forwarded])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&rfc7239, "/", &[("authorization", &value), xff])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // A chain whose client entry is not an address fails closed.
    let garbage: (&str, &[u8]) = ("x-forwarded-for", b"unknown, 127.0.0.2");
    assert_eq!(
        send(&trusting, "/", &[("authorization", &value), garbage])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_failing_or_hanging_store_fails_closed() {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let app = Router::new()
        .route("/", post(whoami))
        .layer(ApiKeyLayer::new(manager).store_timeout(Duration::from_millis(200)));
    let addr = serve(app, "127.0.0.1:0").await.to_string();
    let value = bearer(created.key.expose_secret());

    for fault in [
        Fault::Fail,
        Fault::Hang,
        Fault::Slow(Duration::from_secs(5)),
    ] {
        store.set(Op::Find, fault);
        let started = Instant::now();
        let reply = send(&addr, "/", &[("authorization", &value)]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}");
        assert_eq!(reply.code(), "key_store_unavailable");
        assert_eq!(reply.json()["error"], "Service unavailable");
        let retry: u64 = reply.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=5).contains(&retry));
        assert!(reply.headers.get("www-authenticate").is_none());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{fault:?} took {:?}",
            started.elapsed()
        );
        assert!(
            !reply.body.contains("injected"),
            "store errors stay in the logs"
        );
    }
    // A slow store within the timeout still answers.
    store.set(Op::Find, Fault::Slow(Duration::from_millis(20)));
    assert_eq!(
        send(&addr, "/", &[("authorization", &value)]).await.status,
        StatusCode::OK
    );
    store.clear();
    assert_eq!(
        send(&addr, "/", &[("authorization", &value)]).await.status,
        StatusCode::OK
    );
}
