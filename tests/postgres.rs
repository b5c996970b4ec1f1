//! PostgresStore against a real server (feature `postgres`; `.ci/run`
//! creates a database per run and passes it as `DATABASE_URL`). Without
//! `DATABASE_URL` these tests fail: they never skip silently.
#![cfg(feature = "postgres")]

use sqlx::postgres::PgConnectOptions;
use tm_auth::store::conformance;
use tm_auth::store::postgres::PostgresStore;
use tm_auth::{KeyManager, KeyUpdate, NewKey};

fn options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a PostgreSQL database for this suite (see .ci/run)");
    url.parse().expect("DATABASE_URL is a PostgreSQL URL")
}

/// A store in a schema of its own.
async fn fresh() -> PostgresStore {
    let schema = format!("t_{}", tm_auth::KeyId::generate().as_u128());
    PostgresStore::connect_with(options(), Some(&schema))
        .await
        .expect("connect to PostgreSQL")
}

#[tokio::test]
async fn postgres_store_conforms() {
    if let Err(failures) = conformance::run(fresh).await {
        panic!("{failures}");
    }
}

#[tokio::test]
async fn two_servers_see_each_others_revocations_and_edits() {
    let schema = format!("t_{}", tm_auth::KeyId::generate().as_u128());
    // Two "servers": separate pools on the same tables.
    let one = KeyManager::new(
        PostgresStore::connect_with(options(), Some(&schema))
            .await
            .unwrap(),
    );
    let two = KeyManager::new(
        PostgresStore::connect_with(options(), Some(&schema))
            .await
            .unwrap(),
    );
    let client = Some("203.0.113.9".parse().unwrap());
    let mut secrets = Vec::new();
    for i in 0..20 {
        let created = one
            .create(NewKey::new("acct", format!("Key {i}")))
            .await
            .unwrap();
        assert!(two
            .verify(created.key.expose_secret(), client)
            .await
            .is_ok());
        secrets.push(created);
    }
    for created in &secrets {
        one.revoke(&created.record.id).await.unwrap();
        let err = two
            .verify(created.key.expose_secret(), client)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            "api_key_revoked",
            "refused on the other server's next request"
        );
    }
    let edited = one.create(NewKey::new("acct", "Office")).await.unwrap();
    assert!(two.verify(edited.key.expose_secret(), client).await.is_ok());
    one.update(
        &edited.record.id,
        KeyUpdate::new().allowed_ips(["198.51.100.0/24".parse().unwrap()]),
    )
    .await
    .unwrap();
    let err = two
        .verify(edited.key.expose_secret(), client)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ip_not_allowed");
    // Usage from both servers adds up in the shared tables.
    let live = one.create(NewKey::new("acct", "Live")).await.unwrap();
    for manager in [&one, &two] {
        manager
            .verify(live.key.expose_secret(), client)
            .await
            .unwrap();
        manager.flush_usage().await.unwrap();
    }
    assert_eq!(one.usage(&live.record.id).await.unwrap().requests, 2);
}

#[tokio::test]
async fn a_closed_pool_fails_closed() {
    let store = fresh().await;
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    store.close().await;
    let err = manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.status().as_u16()),
        ("key_store_unavailable", 503)
    );
}
