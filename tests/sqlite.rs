//! SqliteStore: the conformance kit, persistence across reopening, usage
//! batches through the manager, and failing closed when the database is gone.

use std::path::PathBuf;

use tm_auth::store::conformance;
use tm_auth::store::sqlite::SqliteStore;
use tm_auth::{KeyManager, KeyUpdate, NewKey, UsageStore};

/// A database file that is removed (with its WAL files) when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> TempDb {
        let name = format!("tm-auth-test-{}.db", tm_auth::KeyId::generate());
        TempDb(std::env::temp_dir().join(name))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let result =
        conformance::run(|| async { SqliteStore::in_memory().await.expect("in-memory SQLite") })
            .await;
    if let Err(failures) = result {
        panic!("{failures}");
    }
}

#[tokio::test]
async fn file_store_conforms() {
    let files: std::cell::RefCell<Vec<TempDb>> = Default::default();
    let result = conformance::run(|| {
        let db = TempDb::new();
        let path = db.0.clone();
        files.borrow_mut().push(db);
        async move { SqliteStore::open(path).await.expect("SQLite file") }
    })
    .await;
    if let Err(failures) = result {
        panic!("{failures}");
    }
}

#[tokio::test]
async fn keys_survive_closing_and_reopening_the_file() {
    let db = TempDb::new();
    let (secret, revoked_secret, id) = {
        let store = SqliteStore::open(&db.0).await.unwrap();
        let manager = KeyManager::new(store.clone());
        let kept = manager
            .create(
                NewKey::new("acct_42", "Production")
                    .allowed_ips(["203.0.113.0/24".parse().unwrap()])
                    .scopes(["emails:verify", "lists:read"]),
            )
            .await
            .unwrap();
        let gone = manager.create(NewKey::new("acct_42", "Old")).await.unwrap();
        manager.revoke(&gone.record.id).await.unwrap();
        manager
            .update(&kept.record.id, KeyUpdate::new().name("Production - Main"))
            .await
            .unwrap();
        manager
            .verify(
                kept.key.expose_secret(),
                Some("203.0.113.7".parse().unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(manager.flush_usage().await.unwrap(), 1);
        store.close().await;
        (
            kept.key.expose_secret().to_owned(),
            gone.key.expose_secret().to_owned(),
            kept.record.id,
        )
    };
    let store = SqliteStore::open(&db.0).await.unwrap();
    let manager = KeyManager::new(store.clone());
    let who = manager
        .verify(&secret, Some("203.0.113.7".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(who.name(), "Production - Main");
    assert_eq!(
        who.scopes(),
        ["emails:verify", "lists:read"],
        "the scopes survived"
    );
    assert!(!who.has_scope("lists:write"));
    let audit = manager
        .audit("acct_42", tm_auth::audit::AuditQuery::first(100))
        .await
        .unwrap();
    let actions: Vec<_> = audit
        .events
        .iter()
        .map(|e| e.event.action.as_str())
        .collect();
    assert_eq!(
        actions,
        ["create", "create", "revoke", "update"],
        "the audit trail survived"
    );
    let err = manager
        .verify(&secret, Some("198.51.100.1".parse().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ip_not_allowed", "the allowlist survived too");
    assert_eq!(
        manager
            .verify(&revoked_secret, None)
            .await
            .unwrap_err()
            .code(),
        "api_key_revoked"
    );
    let listed = manager.list("acct_42").await.unwrap();
    assert_eq!(listed.len(), 2);
    let usage = store.usage(&id).await.unwrap().unwrap();
    assert_eq!(usage.requests, 1);
    assert_eq!(usage.last_used_ip, Some("203.0.113.7".parse().unwrap()));
}

#[tokio::test]
async fn a_closed_database_fails_closed() {
    let store = SqliteStore::in_memory().await.unwrap();
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    store.close().await;
    let err = manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "key_store_unavailable");
    assert_eq!(err.status(), 503);
}

/// A database written before scopes and the audit trail existed (schema
/// version 1) is migrated on open: its keys are unrestricted and keep
/// working, and the new key gets its scopes and events.
#[tokio::test]
async fn a_version_1_database_is_migrated_and_its_keys_are_unrestricted() {
    use sqlx::Connection;

    let db = TempDb::new();
    // What the first release created, and one key written by it.
    let old = KeyManager::new(tm_auth::MemoryStore::new())
        .create(NewKey::new("acct_42", "Before scopes"))
        .await
        .unwrap();
    {
        let url = format!("sqlite://{}?mode=rwc", db.0.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE tm_auth_keys (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB NOT NULL UNIQUE,
                hash BLOB NOT NULL UNIQUE, owner TEXT NOT NULL, name TEXT NOT NULL,
                environment TEXT NOT NULL CHECK (environment IN ('live', 'test')),
                hint TEXT NOT NULL, allowed_ips TEXT NOT NULL, rate_limit_requests INTEGER,
                rate_limit_window_ms INTEGER, created_at_ms INTEGER NOT NULL,
                expires_at_ms INTEGER, revoked_at_ms INTEGER);
             CREATE INDEX tm_auth_keys_by_owner ON tm_auth_keys (owner, seq);
             CREATE TABLE tm_auth_usage (
                id BLOB PRIMARY KEY REFERENCES tm_auth_keys (id),
                requests INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0,
                expired INTEGER NOT NULL DEFAULT 0, wrong_environment INTEGER NOT NULL DEFAULT 0,
                ip_not_allowed INTEGER NOT NULL DEFAULT 0, rate_limited INTEGER NOT NULL DEFAULT 0,
                last_used_at_ms INTEGER, last_used_ip TEXT);
             PRAGMA user_version = 1;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let record = &old.record;
        sqlx::query(
            "INSERT INTO tm_auth_keys (id, hash, owner, name, environment, hint, allowed_ips,
                created_at_ms) VALUES (?, ?, ?, ?, 'live', ?, '', 0)",
        )
        .bind(record.id.as_u128().to_le_bytes().to_vec())
        .bind(record.hash.as_bytes().to_vec())
        .bind(&record.owner)
        .bind(&record.name)
        .bind(record.hint.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let store = SqliteStore::open(&db.0).await.unwrap();
    let manager = KeyManager::new(store);
    let who = manager.verify(old.key.expose_secret(), None).await.unwrap();
    assert_eq!(
        who.scopes(),
        [] as [tm_auth::Scope; 0],
        "an old key is unrestricted"
    );
    assert!(who.has_scope("emails:verify"));
    let new = manager
        .create(NewKey::new("acct_42", "After").scopes(["lists:read"]))
        .await
        .unwrap();
    let who = manager.verify(new.key.expose_secret(), None).await.unwrap();
    assert!(!who.has_scope("emails:verify"));
    let audit = manager
        .audit("acct_42", tm_auth::audit::AuditQuery::first(10))
        .await
        .unwrap();
    assert_eq!(audit.events.len(), 1, "the creation after the migration");
}
