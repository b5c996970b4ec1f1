//! The public contract of the `tm-auth` crate, written as a user's program.
//!
//! Copy this file unchanged to `tests/contract.rs`. It must compile and pass
//! against the crate's public API: every name used here is part of the API
//! that users' code is written against. The crate may offer more than this;
//! it may not offer less, or the same under other names.
//!
//! Dev-dependencies this file needs: tokio (macros, rt-multi-thread),
//! tower (util), http, http-body-util, bytes, serde_json, ipnetwork.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ipnetwork::IpNetwork;
use tower::{ServiceBuilder, ServiceExt};

use tm_auth::{
    ApiKeyLayer, AuthenticatedKey, ClientIpHeader, Environment, KeyFormatError, KeyManager,
    KeyStatus, KeyStore, KeyUpdate, ManagerError, MemoryStore, NewKey, PeerAddr, TmKey,
};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends one request through `layer` to an inner service that answers 200
/// with the authenticated key's name, from TCP peer `peer`, with an optional
/// forwarding header `(name, value)`. Returns the status, the
/// `WWW-Authenticate` header and the body as JSON (or as a JSON string on 200).
async fn call(
    layer: &ApiKeyLayer,
    authorization: Option<&str>,
    peer: &str,
    forwarding: Option<(&str, &str)>,
) -> (StatusCode, Option<String>, serde_json::Value) {
    let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
        |req: Request<Full<Bytes>>| async move {
            let who = req
                .extensions()
                .get::<AuthenticatedKey>()
                .expect("the layer inserts AuthenticatedKey before calling the inner service")
                .clone();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who.name().to_owned()))))
        },
    );
    let mut req = Request::post("/v1/verify");
    if let Some(value) = authorization {
        req = req.header(header::AUTHORIZATION, value);
    }
    if let Some((name, value)) = forwarding {
        req = req.header(name, value);
    }
    let mut req = req.body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip(peer), 40_000)));
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status();
    let www = res
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json = if status == StatusCode::OK {
        serde_json::Value::String(String::from_utf8(body.to_vec()).unwrap())
    } else {
        serde_json::from_slice(&body).expect("error responses are JSON")
    };
    (status, www, json)
}

/// Error bodies keep TrueMail's shape, `{"error": "<message>"}`, and add a
/// stable machine-readable `code` and, where it helps, a `hint`.
fn code(body: &serde_json::Value) -> &str {
    body["code"].as_str().expect("code is a string")
}

fn message(body: &serde_json::Value) -> &str {
    body["error"].as_str().expect("error is a string")
}

#[test]
fn key_format() {
    let key = TmKey::generate(Environment::Live);
    let secret = key.expose_secret();
    assert_eq!(secret.len(), 40);
    assert!(secret.starts_with("tm_live_"));
    assert!(secret[8..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(key.environment(), Environment::Live);

    let test_key = TmKey::generate(Environment::Test);
    assert!(test_key.expose_secret().starts_with("tm_test_"));
    assert_eq!(test_key.environment(), Environment::Test);

    // Parsing round-trips, and equality (constant-time) holds.
    let parsed = TmKey::parse(secret).unwrap();
    assert!(parsed == key);
    let parsed: TmKey = secret.parse().unwrap();
    assert!(parsed == key);
    assert!(parsed != test_key);

    // Two generated keys differ.
    assert!(TmKey::generate(Environment::Live) != TmKey::generate(Environment::Live));

    // The secret never shows in Debug or Display.
    let random_part = &secret[8..];
    assert!(!format!("{key:?}").contains(random_part));
    assert!(!format!("{key}").contains(random_part));

    // The hint shows the prefix and the last four characters only.
    assert_eq!(key.hint(), format!("tm_live_...{}", &secret[36..]));

    // The hash is SHA-256 of the whole key string.
    assert_eq!(key.hash().as_bytes().len(), 32);
    assert_eq!(key.hash(), parsed.hash());

    // Known answers pin the checksum (CRC-32, standard base62 alphabet,
    // zero-padded) and the hash.
    let vector = TmKey::parse("tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m30ODsrG").unwrap();
    assert_eq!(vector.environment(), Environment::Live);
    assert_eq!(
        hex(vector.hash().as_bytes()),
        "553925bcf5fbc9710dce2b03191987f76929cc7178414ad70f991f7fe3547c45"
    );
    assert!(TmKey::parse("tm_test_a1b2c3d4e5f6g7h8i9j0k1l2m31xvO0l").is_ok());

    // The last characters carry a checksum: one changed character is caught
    // before any store is asked.
    let mut typo = secret.to_owned();
    let i = 20;
    let replacement = if &typo[i..=i] == "x" { "y" } else { "x" };
    typo.replace_range(i..=i, replacement);
    assert!(matches!(TmKey::parse(&typo), Err(KeyFormatError::Checksum)));

    assert!(matches!(
        TmKey::parse("tm_live_abc"),
        Err(KeyFormatError::Length { .. })
    ));
    assert!(matches!(
        TmKey::parse("sk_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"),
        Err(KeyFormatError::UnknownPrefix)
    ));
    assert!(matches!(
        TmKey::parse(&format!("tm_live_{}-", &secret[8..39])),
        Err(KeyFormatError::InvalidCharacter { .. })
    ));
}

#[tokio::test]
async fn key_lifecycle() {
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone());

    let created = manager
        .create(NewKey::new("acct_42", "Production - Main Website"))
        .await
        .unwrap();
    let key = created.key; // shown once: the store keeps only its hash
    let record = created.record;
    assert_eq!(record.owner, "acct_42");
    assert_eq!(record.name, "Production - Main Website");
    assert_eq!(record.environment, Environment::Live);
    assert_eq!(record.hint, key.hint());
    assert_eq!(record.hash, key.hash());
    assert!(record.allowed_ips.is_empty());
    assert!(record.revoked_at.is_none());
    assert_eq!(record.status(), KeyStatus::Active);

    let dev = manager
        .create(
            NewKey::new("acct_42", "Development - Local Testing")
                .environment(Environment::Test)
                .allowed_ips([net("127.0.0.1/32"), net("::1/128")]),
        )
        .await
        .unwrap();
    assert!(dev.key.expose_secret().starts_with("tm_test_"));
    assert_eq!(dev.record.allowed_ips.len(), 2);

    // A name is required.
    assert!(matches!(
        manager.create(NewKey::new("acct_42", "  ")).await,
        Err(ManagerError::InvalidName(_))
    ));

    // Listing is per owner, oldest first.
    let listed = manager.list("acct_42").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, record.id);
    assert_eq!(listed[1].id, dev.record.id);
    assert!(manager.list("acct_other").await.unwrap().is_empty());

    // Verification without HTTP.
    let who = manager.verify(key.expose_secret(), None).await.unwrap();
    assert_eq!(who.id(), record.id);
    assert_eq!(who.owner(), "acct_42");
    assert_eq!(who.name(), "Production - Main Website");
    assert_eq!(who.environment(), Environment::Live);

    // IP restrictions are enforced by verify too.
    let err = manager
        .verify(dev.key.expose_secret(), Some(ip("203.0.113.9")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ip_not_allowed");
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    assert!(manager
        .verify(dev.key.expose_secret(), Some(ip("127.0.0.1")))
        .await
        .is_ok());
    // A key with IP restrictions and no known client IP fails closed.
    assert_eq!(
        manager
            .verify(dev.key.expose_secret(), None)
            .await
            .unwrap_err()
            .code(),
        "ip_not_allowed"
    );

    // Editing: name and IP restrictions, never the key itself.
    let edited = manager
        .update(
            &dev.record.id,
            KeyUpdate::new()
                .name("Development - CI")
                .allowed_ips([net("203.0.113.0/24")]),
        )
        .await
        .unwrap();
    assert_eq!(edited.name, "Development - CI");
    assert_eq!(edited.hash, dev.record.hash);
    assert!(manager
        .verify(dev.key.expose_secret(), Some(ip("203.0.113.9")))
        .await
        .is_ok());
    assert!(manager.get(&dev.record.id).await.unwrap().name == "Development - CI");

    // Revocation: immediate, irreversible, idempotent, and the key stays listed.
    let revoked = manager.revoke(&record.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(revoked.status(), KeyStatus::Revoked);
    let err = manager.verify(key.expose_secret(), None).await.unwrap_err();
    assert_eq!(err.code(), "api_key_revoked");
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    let again = manager.revoke(&record.id).await.unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    let listed = manager.list("acct_42").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].status(), KeyStatus::Revoked);

    // Unknown ids.
    let missing = TmKey::generate(Environment::Live);
    assert_eq!(
        manager
            .verify(missing.expose_secret(), None)
            .await
            .unwrap_err()
            .code(),
        "invalid_api_key"
    );
    let elsewhere = KeyManager::new(MemoryStore::new())
        .create(NewKey::new("acct_42", "Elsewhere"))
        .await
        .unwrap();
    assert!(matches!(
        manager.get(&elsewhere.record.id).await,
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        manager.revoke(&elsewhere.record.id).await,
        Err(ManagerError::NotFound)
    ));

    // Rotation: a new key with the same owner, name, environment and IP
    // restrictions; the old one keeps working until its grace period ends.
    let rotated = manager
        .rotate(&dev.record.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(rotated.key != dev.key);
    assert_eq!(rotated.record.name, "Development - CI");
    assert_eq!(rotated.record.environment, Environment::Test);
    assert_eq!(rotated.record.allowed_ips, vec![net("203.0.113.0/24")]);
    let old = manager.get(&dev.record.id).await.unwrap();
    assert!(old.expires_at.is_some());
    assert!(manager
        .verify(dev.key.expose_secret(), Some(ip("203.0.113.9")))
        .await
        .is_ok());
    // With no grace period, the old key stops working at once.
    let rotated_again = manager
        .rotate(&rotated.record.id, Duration::ZERO)
        .await
        .unwrap();
    assert!(manager
        .verify(rotated.key.expose_secret(), Some(ip("203.0.113.9")))
        .await
        .is_err());
    assert!(manager
        .verify(rotated_again.key.expose_secret(), Some(ip("203.0.113.9")))
        .await
        .is_ok());
}

#[tokio::test]
async fn trait_object_backend() {
    // Any KeyStore works behind a trait object.
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let manager = KeyManager::new(store);
    let created = manager
        .create(NewKey::new("acct_7", "Zapier Integration"))
        .await
        .unwrap();
    assert!(manager
        .verify(created.key.expose_secret(), None)
        .await
        .is_ok());
}

#[tokio::test]
async fn middleware() {
    let manager = KeyManager::new(MemoryStore::new());
    let live = manager
        .create(NewKey::new("acct_1", "Production Server"))
        .await
        .unwrap();
    let restricted = manager
        .create(NewKey::new("acct_1", "Office Backend").allowed_ips([net("203.0.113.0/24")]))
        .await
        .unwrap();
    let test = manager
        .create(NewKey::new("acct_1", "Development").environment(Environment::Test))
        .await
        .unwrap();
    let layer = ApiKeyLayer::new(manager.clone()).trusted_proxies([net("10.0.0.0/8")]);
    let secret = live.key.expose_secret();
    let bearer = format!("Bearer {secret}");

    // The happy path: the inner service sees who called.
    let (status, _, body) = call(&layer, Some(&bearer), "198.51.100.1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Production Server");

    // The auth scheme is case-insensitive.
    let (status, _, _) = call(
        &layer,
        Some(&format!("bearer {secret}")),
        "198.51.100.1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Missing and malformed headers: 401, JSON, a hint, and RFC 6750's header.
    let (status, www, body) = call(&layer, None, "198.51.100.1", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(www.unwrap().starts_with("Bearer"));
    assert_eq!(code(&body), "missing_api_key");
    assert_eq!(message(&body), "Invalid API key");
    for mistake in [
        format!("Bearer Bearer {secret}"),
        format!("Bearer{secret}"),
        format!("Basic {secret}"),
        secret.to_owned(),
    ] {
        let (status, www, body) = call(&layer, Some(&mistake), "198.51.100.1", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{mistake}");
        assert!(www.is_some(), "{mistake}");
        assert_eq!(code(&body), "malformed_authorization_header", "{mistake}");
        assert_eq!(message(&body), "Invalid API key", "{mistake}");
        assert!(
            body["hint"].as_str().is_some_and(|h| !h.is_empty()),
            "{mistake}"
        );
        assert!(
            !body.to_string().contains(&secret[8..]),
            "an error never echoes the key"
        );
    }

    // A well-formed but unknown key.
    let unknown = TmKey::generate(Environment::Live);
    let (status, _, body) = call(
        &layer,
        Some(&format!("Bearer {}", unknown.expose_secret())),
        "198.51.100.1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "invalid_api_key");
    assert_eq!(message(&body), "Invalid API key");

    // IP restrictions: 403, and only trusted proxies may name the client.
    let restricted_bearer = format!("Bearer {}", restricted.key.expose_secret());
    let (status, _, body) = call(&layer, Some(&restricted_bearer), "198.51.100.1", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "ip_not_allowed");
    assert_eq!(message(&body), "IP address not allowed");
    let (status, _, _) = call(&layer, Some(&restricted_bearer), "203.0.113.50", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &layer,
        Some(&restricted_bearer),
        "::ffff:203.0.113.50",
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "IPv4-mapped IPv6 peers match IPv4 networks"
    );
    let xff = Some(("x-forwarded-for", "203.0.113.50"));
    let (status, _, _) = call(&layer, Some(&restricted_bearer), "198.51.100.1", xff).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an untrusted peer cannot spoof X-Forwarded-For"
    );
    let (status, _, _) = call(&layer, Some(&restricted_bearer), "10.1.2.3", xff).await;
    assert_eq!(status, StatusCode::OK, "a trusted proxy names the client");

    // Exactly one forwarding header is read: X-Forwarded-For by default, or
    // RFC 7239 Forwarded when configured.
    let forwarded = Some(("forwarded", "for=203.0.113.50;proto=https"));
    let (status, _, _) = call(&layer, Some(&restricted_bearer), "10.1.2.3", forwarded).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "Forwarded is ignored unless configured"
    );
    let rfc7239 = ApiKeyLayer::new(manager.clone())
        .trusted_proxies([net("10.0.0.0/8")])
        .client_ip_header(ClientIpHeader::Forwarded);
    let (status, _, _) = call(&rfc7239, Some(&restricted_bearer), "10.1.2.3", forwarded).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&rfc7239, Some(&restricted_bearer), "10.1.2.3", xff).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "X-Forwarded-For is ignored when Forwarded is chosen"
    );

    // Environments: a deployment may accept live keys only.
    let live_only = ApiKeyLayer::new(manager.clone()).require_environment(Environment::Live);
    let (status, _, body) = call(
        &live_only,
        Some(&format!("Bearer {}", test.key.expose_secret())),
        "198.51.100.1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "wrong_environment");

    // Revocation takes effect on the very next request.
    manager.revoke(&live.record.id).await.unwrap();
    let (status, _, body) = call(&layer, Some(&bearer), "198.51.100.1", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "api_key_revoked");
    assert_eq!(message(&body), "Invalid API key");
}
