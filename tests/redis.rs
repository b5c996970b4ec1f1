//! `RedisLimiter` through `KeyManager` and `ApiKeyLayer`, against a real
//! Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`): what a user of
//! one process with two limiters (two servers) sees. The multi-process
//! checks are in `tests/redis_cluster`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tm_auth::redis_limiter::{OnStoreDown, RedisLimiter, RedisLimiterConfig, RedisLimiterError};
use tm_auth::{ApiKeyLayer, KeyManager, MemoryStore, NewKey, RateLimit, RateLimiter};
use tower::{ServiceBuilder, ServiceExt};

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn prefix(test: &str) -> String {
    format!(
        "tm-auth-it:{test}:{}:{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    )
}

async fn limiter(prefix: &str) -> RedisLimiter {
    RedisLimiter::connect(&url(), RedisLimiterConfig::new().key_prefix(prefix))
        .await
        .expect("Redis answers at REDIS_URL")
}

fn delete_prefix(prefix: &str) {
    let client = redis::Client::open(url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
    }
}

/// The response's status and headers (the body is not looked at).
async fn call(layer: &ApiKeyLayer, secret: &str) -> http::response::Parts {
    ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|_: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("in")))
        })
        .oneshot(
            Request::get("/")
                .header("authorization", format!("Bearer {secret}"))
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap()
        .into_parts()
        .0
}

#[tokio::test]
async fn two_servers_share_one_limit_through_the_layer() {
    let prefix = prefix("layer");
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (limiter(&prefix).await, limiter(&prefix).await);
    let server_a = KeyManager::builder(Arc::clone(&store))
        .rate_limiter(a.clone())
        .build();
    let server_b = KeyManager::builder(Arc::clone(&store))
        .rate_limiter(b.clone())
        .build();
    let limit = RateLimit::per_hour(NonZeroU32::new(5).unwrap());
    let created = server_a
        .create(NewKey::new("acct", "Shared").rate_limit(limit))
        .await
        .unwrap();
    let secret = created.key.expose_secret();
    let (layer_a, layer_b) = (
        ApiKeyLayer::new(server_a.clone()),
        ApiKeyLayer::new(server_b),
    );
    let mut statuses = Vec::new();
    for i in 0..8 {
        let layer = if i % 2 == 0 { &layer_a } else { &layer_b };
        let response = call(layer, secret).await;
        if response.status == StatusCode::OK {
            assert_eq!(response.headers["ratelimit-limit"], "5");
            let remaining: u32 = response.headers["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(remaining < 5, "the cluster's remaining, not a fresh count");
        } else {
            assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
            let retry: u64 = response.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=3_600).contains(&retry), "until the hour ends: {retry}");
        }
        statuses.push(response.status);
    }
    let admitted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(
        admitted, 5,
        "5 across both servers, not 5 each: {statuses:?}"
    );
    assert_eq!(a.decided_locally() + b.decided_locally(), 0);
    let usage = server_a.usage(&created.record.id).await.unwrap();
    assert!(usage.requests >= 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    delete_prefix(&prefix);
}

#[tokio::test]
async fn shutdown_gives_unspent_tokens_back_and_refuses_afterwards() {
    let prefix = prefix("shutdown");
    let limiter = limiter(&prefix).await;
    let id = tm_auth::KeyId::generate();
    // A large limit: leases of many tokens, most unspent.
    let limit = RateLimit::per_hour(NonZeroU32::new(1_000_000).unwrap());
    for _ in 0..2_000 {
        limiter.admit(id, limit, 0).decided().await.unwrap();
    }
    let given_back = limiter.shutdown().await.unwrap();
    assert!(given_back > 0, "a lease was held and handed back");
    let other = tm_auth::KeyId::generate();
    assert!(
        limiter.admit(other, limit, 0).decided().await.is_err(),
        "after shutdown nothing beyond held leases is let in"
    );
    let client = redis::Client::open(url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let (granted, released): (u64, u64) = redis::cmd("HMGET")
        .arg(format!("{prefix}:key:{id}"))
        .arg("g")
        .arg("r")
        .query(&mut conn)
        .unwrap();
    assert_eq!(granted, 2_000, "net granted is what was let in");
    assert_eq!(released, given_back);
    delete_prefix(&prefix);
}

#[tokio::test]
async fn connecting_fails_clearly_and_promptly() {
    let bad_url = RedisLimiter::connect("not a url", RedisLimiterConfig::new()).await;
    assert!(matches!(bad_url, Err(RedisLimiterError::InvalidUrl(_))));
    let zero =
        RedisLimiter::connect(&url(), RedisLimiterConfig::new().timeout(Duration::ZERO)).await;
    assert!(matches!(zero, Err(RedisLimiterError::Config(_))));
    let empty = RedisLimiter::connect(&url(), RedisLimiterConfig::new().key_prefix("")).await;
    assert!(matches!(empty, Err(RedisLimiterError::Config(_))));
    // Nothing listens on port 1: refused at once, never hung.
    let started = std::time::Instant::now();
    let nobody = RedisLimiter::connect("redis://127.0.0.1:1", RedisLimiterConfig::new()).await;
    assert!(nobody.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn debug_output_names_no_secret() {
    let prefix = prefix("debug");
    let limiter = RedisLimiter::connect(
        &url(),
        RedisLimiterConfig::new()
            .key_prefix(&prefix)
            .on_store_down(OnStoreDown::Closed),
    )
    .await
    .unwrap();
    let text = format!("{limiter:?}");
    assert!(text.contains("Closed") && text.contains(&prefix), "{text}");
    assert!(
        !text.contains("redis://"),
        "no URL (it may carry a password): {text}"
    );
    assert_eq!(limiter.active_servers(), 1);
    assert!(limiter.redis_answers());
    limiter.shutdown().await.unwrap();
    delete_prefix(&prefix);
}
