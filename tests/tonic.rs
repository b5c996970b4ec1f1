//! gRPC through tonic, as a user runs it: a tonic server with
//! `ApiKeyLayer` on a real TCP socket, a tonic client sending
//! `authorization: Bearer …` metadata. Every refusal must reach the client
//! as a real gRPC status (never `Internal`), with the crate's code and hint
//! as metadata; IP rules must see tonic's peer address.

#[path = "../examples/greeter/mod.rs"]
mod greeter;
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use greeter::{GreeterServer, HelloReply, HelloRequest};
use http_body_util::{BodyExt, Full};
use support::{Fault, FaultyStore, Op};
use tm_auth::clock::ManualClock;
use tm_auth::{
    ApiKeyLayer, AuthenticatedKey, CreatedKey, Environment, KeyManager, MemoryStore, NewKey,
    RateLimit,
};
use tonic::metadata::MetadataValue;
use tonic::{Code, Response, Status};
use tower::{ServiceBuilder, ServiceExt};

/// Serves the greeter behind `layer` on 127.0.0.1; the greeting names the
/// key the layer authenticated.
async fn serve(layer: ApiKeyLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let greeter = GreeterServer::new(|request| {
        let who = request
            .extensions()
            .get::<AuthenticatedKey>()
            .ok_or_else(|| Status::internal("no AuthenticatedKey"))?;
        Ok(Response::new(HelloReply {
            message: format!("{} as {}", request.get_ref().name, who.name()),
        }))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(greeter)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

/// One `SayHello` call with `authorization` (and `extra` metadata) set.
async fn call(
    addr: SocketAddr,
    authorization: Option<&str>,
    extra: &[(&'static str, &str)],
) -> Result<String, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    send(channel, authorization, extra).await
}

/// One `SayHello` call on `channel`.
async fn send(
    channel: tonic::transport::Channel,
    authorization: Option<&str>,
    extra: &[(&'static str, &str)],
) -> Result<String, Status> {
    let mut request = tonic::Request::new(HelloRequest {
        name: "grpc".to_owned(),
    });
    if let Some(value) = authorization {
        let value = MetadataValue::try_from(value).unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    for (name, value) in extra {
        request
            .metadata_mut()
            .insert(*name, MetadataValue::try_from(*value).unwrap());
    }
    greeter::say_hello(channel, request)
        .await
        .map(|reply| reply.into_inner().message)
}

fn bearer(created: &CreatedKey) -> String {
    format!("Bearer {}", created.key.expose_secret())
}

fn metadata(status: &Status, name: &str) -> String {
    status
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts `result` is a refusal with `code` and the crate's `tm_code`,
/// read by a real tonic client: never `Internal`.
fn refused(result: Result<String, Status>, code: Code, tm_code: &str, message: &str) -> Status {
    let status = result.expect_err("the call should have been refused");
    assert_ne!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(metadata(&status, "tm-auth-code"), tm_code, "{status:?}");
    assert_eq!(status.message(), message);
    assert!(!metadata(&status, "tm-auth-hint").is_empty());
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_is_served_and_the_handler_sees_it() {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let addr = serve(ApiKeyLayer::new(manager.clone())).await;
    assert_eq!(
        call(addr, Some(&bearer(&created)), &[]).await.unwrap(),
        "grpc as Main"
    );
    // Counted like an HTTP request, from the tonic peer's address.
    let usage = manager.usage(&created.record.id).await.unwrap();
    assert_eq!(usage.requests, 1);
    assert_eq!(usage.last_used_ip, Some("127.0.0.1".parse().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_401_is_unauthenticated_with_its_own_code() {
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let manager = KeyManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let revoked = manager.create(NewKey::new("acct", "Old")).await.unwrap();
    manager.revoke(&revoked.record.id).await.unwrap();
    let expiring = manager
        .create(NewKey::new("acct", "Short").expires_at(start + Duration::from_secs(60)))
        .await
        .unwrap();
    let test_key = manager
        .create(NewKey::new("acct", "Sandbox").environment(Environment::Test))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(120));
    let addr = serve(ApiKeyLayer::new(manager).require_environment(Environment::Live)).await;
    let invalid = "Invalid API key";
    refused(
        call(addr, None, &[]).await,
        Code::Unauthenticated,
        "missing_api_key",
        invalid,
    );
    refused(
        call(addr, Some("Bearer tm_live_not_a_real_key"), &[]).await,
        Code::Unauthenticated,
        "invalid_api_key",
        invalid,
    );
    refused(
        call(addr, Some("Bearer Bearer"), &[]).await,
        Code::Unauthenticated,
        "malformed_authorization_header",
        invalid,
    );
    refused(
        call(addr, Some(&bearer(&revoked)), &[]).await,
        Code::Unauthenticated,
        "api_key_revoked",
        invalid,
    );
    refused(
        call(addr, Some(&bearer(&expiring)), &[]).await,
        Code::Unauthenticated,
        "api_key_expired",
        invalid,
    );
    let status = refused(
        call(addr, Some(&bearer(&test_key)), &[]).await,
        Code::Unauthenticated,
        "wrong_environment",
        invalid,
    );
    // The challenge travels too, as for HTTP.
    assert!(metadata(&status, "www-authenticate").starts_with("Bearer realm="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_see_the_tonic_peer() {
    let manager = KeyManager::new(MemoryStore::new());
    let office = manager
        .create(NewKey::new("acct", "Office").allowed_ips(["203.0.113.0/24".parse().unwrap()]))
        .await
        .unwrap();
    let local = manager
        .create(NewKey::new("acct", "Local").allowed_ips(["127.0.0.1/32".parse().unwrap()]))
        .await
        .unwrap();
    let addr = serve(ApiKeyLayer::new(manager.clone())).await;
    refused(
        call(addr, Some(&bearer(&office)), &[]).await,
        Code::PermissionDenied,
        "ip_not_allowed",
        "IP address not allowed",
    );
    assert_eq!(
        call(addr, Some(&bearer(&local)), &[]).await.unwrap(),
        "grpc as Local"
    );
    // Behind a trusted proxy, the forwarding header names the client.
    let proxied =
        serve(ApiKeyLayer::new(manager).trusted_proxies(["127.0.0.1/32".parse().unwrap()])).await;
    let forwarded = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(
        call(proxied, Some(&bearer(&office)), &forwarded)
            .await
            .unwrap(),
        "grpc as Office"
    );
    refused(
        call(proxied, Some(&bearer(&local)), &forwarded).await,
        Code::PermissionDenied,
        "ip_not_allowed",
        "IP address not allowed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_key_is_resource_exhausted_with_when_to_retry() {
    let manager = KeyManager::new(MemoryStore::new());
    let limit = RateLimit::new(2, Duration::from_secs(3600)).unwrap();
    let created = manager
        .create(NewKey::new("acct", "Plan").rate_limit(limit))
        .await
        .unwrap();
    let addr = serve(ApiKeyLayer::new(manager)).await;
    for _ in 0..2 {
        call(addr, Some(&bearer(&created)), &[]).await.unwrap();
    }
    let status = refused(
        call(addr, Some(&bearer(&created)), &[]).await,
        Code::ResourceExhausted,
        "rate_limited",
        "Rate limit exceeded",
    );
    let retry: u64 = metadata(&status, "retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(metadata(&status, "ratelimit-limit"), "2");
    assert_eq!(metadata(&status, "ratelimit-remaining"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_is_unavailable() {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    store.set(Op::Find, Fault::Fail);
    let addr = serve(ApiKeyLayer::new(manager)).await;
    refused(
        call(addr, Some(&bearer(&created)), &[]).await,
        Code::Unavailable,
        "key_store_unavailable",
        "Service unavailable",
    );
}

/// A tonic server that terminates TLS: IP rules see the peer there too
/// (tonic inserts its `TcpConnectInfo` beside `TlsConnectInfo`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_ip_rules_see_the_peer_too() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
    // Made per run: no private key is kept in the repository.
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (made.cert.pem(), made.signing_key.serialize_pem());
    let manager = KeyManager::new(MemoryStore::new());
    let local = manager
        .create(NewKey::new("acct", "Local").allowed_ips(["127.0.0.1/32".parse().unwrap()]))
        .await
        .unwrap();
    let office = manager
        .create(NewKey::new("acct", "Office").allowed_ips(["203.0.113.0/24".parse().unwrap()]))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let greeter = GreeterServer::new(|request| {
        Ok(Response::new(HelloReply {
            message: format!("{} over TLS", request.get_ref().name),
        }))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&cert, &key)))
            .unwrap()
            .layer(ApiKeyLayer::new(manager))
            .add_service(greeter)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&cert))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        send(channel.clone(), Some(&bearer(&local)), &[])
            .await
            .unwrap(),
        "grpc over TLS"
    );
    refused(
        send(channel, Some(&bearer(&office)), &[]).await,
        Code::PermissionDenied,
        "ip_not_allowed",
        "IP address not allowed",
    );
}

/// A gRPC-Web call (binary or text) is refused in gRPC-Web's own form: the
/// status in the headers of an empty 200 response, the content type
/// echoing the request's kind.
#[tokio::test]
async fn grpc_web_calls_are_refused_in_grpc_web_form() {
    let manager = KeyManager::new(MemoryStore::new());
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(manager))
        .service_fn(|_: http::Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("reached"))))
        });
    for (sent, answered) in [
        ("application/grpc-web", "application/grpc-web"),
        ("application/grpc-web+proto", "application/grpc-web+proto"),
        ("application/grpc-web-text", "application/grpc-web-text"),
        ("application/grpc", "application/grpc"),
    ] {
        let request = http::Request::post("/helloworld.Greeter/SayHello")
            .header("content-type", sent)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "{sent}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], answered);
        assert_eq!(headers["grpc-status"], "16");
        assert_eq!(headers["grpc-message"], "Invalid API key");
        assert_eq!(headers["tm-auth-code"], "missing_api_key");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            body.is_empty(),
            "{sent}: a trailers-only answer has no body"
        );
    }
    // Plain HTTP keeps its JSON 401.
    let request = http::Request::post("/")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().get("grpc-status").is_none());
}

/// A key without the service's scope is refused `PERMISSION_DENIED` with
/// the code `insufficient_scope`; a key with it, or with no scopes, is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_the_scope_is_permission_denied() {
    let manager = KeyManager::new(MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let greeter = GreeterServer::new(|request| {
        Ok(Response::new(HelloReply {
            message: format!("hello {}", request.get_ref().name),
        }))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ApiKeyLayer::new(manager.clone()))
            .layer(tm_auth::RequireScopeLayer::new("greeter:hello"))
            .add_service(greeter)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let allowed = manager
        .create(NewKey::new("acct", "Greeter").scopes(["greeter:hello"]))
        .await
        .unwrap();
    let open = manager.create(NewKey::new("acct", "Open")).await.unwrap();
    let other = manager
        .create(NewKey::new("acct", "Lists").scopes(["lists:read"]))
        .await
        .unwrap();
    assert!(call(addr, Some(&bearer(&allowed)), &[]).await.is_ok());
    assert!(call(addr, Some(&bearer(&open)), &[]).await.is_ok());
    let status = refused(
        call(addr, Some(&bearer(&other)), &[]).await,
        Code::PermissionDenied,
        "insufficient_scope",
        "API key lacks the required scope",
    );
    assert_eq!(
        metadata(&status, "www-authenticate"),
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"greeter:hello\""
    );
}
