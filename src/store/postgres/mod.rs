//! [`PostgresStore`]: keys shared by many app servers (feature `postgres`).

use std::collections::HashMap;
use std::sync::LazyLock;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::cache::{CacheConfig, CachedStore};
use super::sql::{
    backend, count, id_bytes, id_from, sql_key_store, to_ms, usage_from, Dialect, SqlKeys,
    Statements,
};
use super::{StoreError, StoreUpdate, UsageDelta, UsageTotals};
use crate::key::KeyHash;
use crate::key::KeyId;
use crate::record::KeyRecord;

mod feed;

/// Schema changes, applied in order on connect under an advisory lock, so
/// several servers starting at once migrate once.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tm_auth_keys (
    seq BIGSERIAL PRIMARY KEY,
    id BYTEA NOT NULL UNIQUE,
    hash BYTEA NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    environment TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    hint TEXT NOT NULL,
    allowed_ips TEXT NOT NULL,
    rate_limit_requests BIGINT,
    rate_limit_window_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT
);
CREATE INDEX tm_auth_keys_by_owner ON tm_auth_keys (owner, seq);
CREATE TABLE tm_auth_usage (
    id BYTEA PRIMARY KEY REFERENCES tm_auth_keys (id),
    requests BIGINT NOT NULL DEFAULT 0,
    revoked BIGINT NOT NULL DEFAULT 0,
    expired BIGINT NOT NULL DEFAULT 0,
    wrong_environment BIGINT NOT NULL DEFAULT 0,
    ip_not_allowed BIGINT NOT NULL DEFAULT 0,
    rate_limited BIGINT NOT NULL DEFAULT 0,
    last_used_at_ms BIGINT,
    last_used_ip TEXT
);
"#,
    r#"
-- Every change to a key, however it is made, is announced to the servers'
-- caches on a channel of this schema's own (see feed.rs).
CREATE FUNCTION tm_auth_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    channel TEXT := 'tm_auth_' || left(md5(TG_TABLE_SCHEMA), 20);
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify(channel, 'c');
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify(channel, 'k' || encode(NEW.hash, 'hex'));
    ELSE
        PERFORM pg_notify(channel, 'k' || encode(OLD.hash, 'hex'));
        IF TG_OP = 'UPDATE' AND NEW.hash IS DISTINCT FROM OLD.hash THEN
            PERFORM pg_notify(channel, 'k' || encode(NEW.hash, 'hex'));
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tm_auth_keys_announce AFTER INSERT OR UPDATE OR DELETE ON tm_auth_keys
    FOR EACH ROW EXECUTE FUNCTION tm_auth_announce_change();
CREATE TRIGGER tm_auth_keys_announce_truncate AFTER TRUNCATE ON tm_auth_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tm_auth_announce_change();
"#,
    r#"
-- Announce changes made with `session_replication_role = replica` too
-- (what `pg_restore --disable-triggers`, logical replication's apply worker
-- and many maintenance scripts set): an ordinary trigger stays silent then,
-- and a revocation made that way would be served from every cache.
ALTER TABLE tm_auth_keys ENABLE ALWAYS TRIGGER tm_auth_keys_announce;
ALTER TABLE tm_auth_keys ENABLE ALWAYS TRIGGER tm_auth_keys_announce_truncate;
"#,
    r#"
-- Scopes: space-separated, sorted; empty is unrestricted. Editing them is
-- an UPDATE, so the announce trigger carries a narrowing to every cache.
ALTER TABLE tm_auth_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
CREATE TABLE tm_auth_audit (
    seq BIGSERIAL PRIMARY KEY,
    owner TEXT NOT NULL,
    key_id BYTEA,
    new_key_id BYTEA,
    action TEXT NOT NULL,
    refused TEXT,
    actor TEXT,
    client_ip TEXT,
    at_ms BIGINT NOT NULL,
    changes TEXT NOT NULL
);
CREATE INDEX tm_auth_audit_by_owner_time ON tm_auth_audit (owner, at_ms);
CREATE INDEX tm_auth_audit_by_owner ON tm_auth_audit (owner, seq);
-- The audit trail is append-only, whoever connects.
CREATE FUNCTION tm_auth_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the tm-auth audit trail is append-only';
END $$;
CREATE TRIGGER tm_auth_audit_no_change BEFORE UPDATE OR DELETE ON tm_auth_audit
    FOR EACH ROW EXECUTE FUNCTION tm_auth_audit_append_only();
CREATE TRIGGER tm_auth_audit_no_truncate BEFORE TRUNCATE ON tm_auth_audit
    FOR EACH STATEMENT EXECUTE FUNCTION tm_auth_audit_append_only();
"#,
];

/// Keys in PostgreSQL, shared by every app server that connects: the
/// key's SHA-256 is the unique, indexed lookup column; a revocation is one
/// `UPDATE … WHERE revoked_at_ms IS NULL` that can never clear it; usage
/// batches are one statement each. Timestamps are UTC milliseconds,
/// allowlists normalised text; never a plaintext key.
///
/// Every lookup asks the database, so a revocation made through any server
/// is refused by every server's next lookup. For verification at in-memory
/// speed, put [`cached`](PostgresStore::cached) in front: a local cache kept
/// true by `LISTEN/NOTIFY`.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tm_auth::store::postgres::PostgresStore;
/// use tm_auth::KeyManager;
///
/// let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
/// let manager = KeyManager::new(store);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    keys: SqlKeys<Postgres>,
}

impl PostgresStore {
    /// A store over your own pool (its size, timeouts and TLS are yours).
    /// Call [`migrate`](PostgresStore::migrate) once before the store is
    /// used; [`connect`](PostgresStore::connect) does both for a URL.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use sqlx::postgres::PgPoolOptions;
    /// use tm_auth::store::postgres::PostgresStore;
    ///
    /// let pool = PgPoolOptions::new().max_connections(32).connect("postgres://app@127.0.0.1/app").await?;
    /// let store = PostgresStore::new(pool);
    /// store.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub fn new(pool: PgPool) -> PostgresStore {
        PostgresStore {
            keys: SqlKeys { pool },
        }
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &PgPool {
        &self.keys.pool
    }

    /// Connects to `url` (a pool of up to 16 connections) and migrates the
    /// default schema: the short form of [`new`](PostgresStore::new) and
    /// [`migrate`](PostgresStore::migrate).
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(backend)?;
        PostgresStore::connect_with(options, None).await
    }

    /// Connects with `options`, keeping the tables in `schema` (created if
    /// needed) when given: one database can then hold several independent
    /// stores, e.g. one per test.
    pub async fn connect_with(
        options: PgConnectOptions,
        schema: Option<&str>,
    ) -> Result<PostgresStore, StoreError> {
        let options = match schema {
            Some(schema) => {
                if !schema
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    || schema.is_empty()
                {
                    return Err(backend(InvalidSchema));
                }
                options.options([("search_path", schema)])
            }
            None => options,
        };
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await
            .map_err(backend)?;
        if let Some(schema) = schema {
            sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&pool)
                .await
                .map_err(backend)?;
        }
        let store = PostgresStore::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Creates or updates the tables, the index and the change-feed
    /// triggers in the pool's schema (its `search_path`). Safe to run from
    /// every server at start: migrations run once, under an advisory lock,
    /// and a second run changes nothing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.keys.pool.begin().await.map_err(backend)?;
        // One migrator at a time across every server: a transaction-scoped lock.
        sqlx::query("SELECT pg_advisory_xact_lock(7254131004)")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS tm_auth_migrations (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM tm_auth_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
        let applied = usize::try_from(applied.unwrap_or(0)).unwrap_or(0);
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
            sqlx::raw_sql(migration)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query("INSERT INTO tm_auth_migrations (version) VALUES ($1)")
                .bind(i64::try_from(index + 1).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    /// This store behind a verification cache kept true on every server by
    /// PostgreSQL's `LISTEN/NOTIFY` (see [`CachedStore`] for the rules).
    ///
    /// A trigger announces every change to a key — through any server, or
    /// by hand in SQL — on a channel of this store's schema. A task holds a
    /// dedicated connection (`application_name` `tm_auth_listener`)
    /// listening there and drops what changed; another sends a heartbeat
    /// through that channel every third of
    /// [`max_staleness`](CacheConfig::max_staleness), and each heartbeat
    /// heard renews the cache's trust, since PostgreSQL delivers
    /// notifications in commit order. So:
    ///
    /// - a revocation or edit made on another server is refused here as
    ///   soon as its notification arrives (measured: see the README), and at
    ///   worst `max_staleness` after it committed;
    /// - when the listening connection drops, the cache stops answering at
    ///   once and every lookup goes to the database until it is listening
    ///   again, when the cache starts empty;
    /// - if the database is unreachable, heartbeats stop and so does the
    ///   cache: verification fails closed with 503.
    ///
    /// Returns once the cache is trusted, or after `max_staleness` (still
    /// correct, answering from the database until the feed is up). The
    /// tasks need a Tokio runtime and stop when the last clone of the
    /// returned store is dropped.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tm_auth::store::cache::CacheConfig;
    /// use tm_auth::store::postgres::PostgresStore;
    /// use tm_auth::KeyManager;
    ///
    /// let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
    /// let manager = KeyManager::new(store.cached(CacheConfig::new()).await?);
    /// # Ok(()) }
    /// ```
    pub async fn cached(
        &self,
        config: CacheConfig,
    ) -> Result<CachedStore<PostgresStore>, StoreError> {
        feed::start(self.clone(), &self.keys.pool, config).await
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.keys.pool.close().await;
    }
}

/// A schema name that is not a plain identifier.
#[derive(Debug, thiserror::Error)]
#[error("a schema name is letters, digits and underscores only")]
struct InvalidSchema;

impl PostgresStore {
    /// Adds a batch of usage in one statement.
    async fn write_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        // PostgreSQL cannot update one row twice in a statement: merge first.
        let mut merged: HashMap<KeyId, UsageTotals> = HashMap::new();
        for delta in batch {
            merged.entry(delta.id).or_default().add(delta);
        }
        if merged.is_empty() {
            return Ok(());
        }
        // The batch as columns, one array a column, for UNNEST.
        let mut ids = Vec::with_capacity(merged.len());
        let mut requests = Vec::with_capacity(merged.len());
        let mut rejected: [Vec<i64>; 5] = Default::default();
        let mut last_used_at = Vec::with_capacity(merged.len());
        let mut last_used_ip = Vec::with_capacity(merged.len());
        for (id, totals) in &merged {
            ids.push(id_bytes(id));
            requests.push(count(totals.requests));
            let r = &totals.rejected;
            for (column, value) in rejected.iter_mut().zip([
                r.revoked,
                r.expired,
                r.wrong_environment,
                r.ip_not_allowed,
                r.rate_limited,
            ]) {
                column.push(count(value));
            }
            last_used_at.push(totals.last_used_at.map(to_ms));
            last_used_ip.push(totals.last_used_ip.map(|ip| ip.to_string()));
        }
        let [revoked, expired, wrong_environment, ip_not_allowed, rate_limited] = rejected;
        // One statement for the whole batch; the join drops unknown keys.
        sqlx::query(
            "INSERT INTO tm_auth_usage (id, requests, revoked, expired, wrong_environment, ip_not_allowed,
                                        rate_limited, last_used_at_ms, last_used_ip)
             SELECT v.id, v.requests, v.revoked, v.expired, v.wrong_environment, v.ip_not_allowed,
                    v.rate_limited, v.last_used_at_ms, v.last_used_ip
             FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[],
                         $7::BIGINT[], $8::BIGINT[], $9::TEXT[])
                  AS v(id, requests, revoked, expired, wrong_environment, ip_not_allowed, rate_limited,
                       last_used_at_ms, last_used_ip)
             JOIN tm_auth_keys k ON k.id = v.id
             ON CONFLICT (id) DO UPDATE SET
                requests = tm_auth_usage.requests + EXCLUDED.requests,
                revoked = tm_auth_usage.revoked + EXCLUDED.revoked,
                expired = tm_auth_usage.expired + EXCLUDED.expired,
                wrong_environment = tm_auth_usage.wrong_environment + EXCLUDED.wrong_environment,
                ip_not_allowed = tm_auth_usage.ip_not_allowed + EXCLUDED.ip_not_allowed,
                rate_limited = tm_auth_usage.rate_limited + EXCLUDED.rate_limited,
                last_used_ip = CASE WHEN EXCLUDED.last_used_at_ms IS NOT NULL AND
                    (tm_auth_usage.last_used_at_ms IS NULL OR EXCLUDED.last_used_at_ms >= tm_auth_usage.last_used_at_ms)
                    THEN EXCLUDED.last_used_ip ELSE tm_auth_usage.last_used_ip END,
                last_used_at_ms = CASE WHEN EXCLUDED.last_used_at_ms IS NOT NULL AND
                    (tm_auth_usage.last_used_at_ms IS NULL OR EXCLUDED.last_used_at_ms >= tm_auth_usage.last_used_at_ms)
                    THEN EXCLUDED.last_used_at_ms ELSE tm_auth_usage.last_used_at_ms END",
        )
        .bind(ids)
        .bind(requests)
        .bind(revoked)
        .bind(expired)
        .bind(wrong_environment)
        .bind(ip_not_allowed)
        .bind(rate_limited)
        .bind(last_used_at)
        .bind(last_used_ip)
        .execute(&self.keys.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// Several keys' usage in one statement.
    async fn read_usage(&self, ids: &[KeyId]) -> Result<Vec<Option<UsageTotals>>, StoreError> {
        let rows = sqlx::query(
            "SELECT k.id, u.requests, u.revoked, u.expired, u.wrong_environment, u.ip_not_allowed,
                    u.rate_limited, u.last_used_at_ms, u.last_used_ip
             FROM tm_auth_keys k LEFT JOIN tm_auth_usage u ON u.id = k.id
             WHERE k.id = ANY($1::BYTEA[])",
        )
        .bind(ids.iter().map(id_bytes).collect::<Vec<_>>())
        .fetch_all(&self.keys.pool)
        .await
        .map_err(backend)?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(id_from(row)?, usage_from(row)?);
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }
}

sql_key_store!(PostgresStore);

impl Dialect for Postgres {
    fn statements() -> &'static Statements {
        static STATEMENTS: LazyLock<Statements> =
            LazyLock::new(|| Statements::render('$', "BYTEA", "BIGINT"));
        &STATEMENTS
    }
}
