//! [`SqliteStore`]: keys in an SQLite file, for one machine (feature `sqlite`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::LazyLock;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::sql::{
    backend, count, id_bytes, id_from, sql_key_store, to_ms, usage_from, Dialect, SqlKeys,
    Statements,
};
use super::{StoreError, StoreUpdate, UsageDelta, UsageTotals};
use crate::key::KeyHash;
use crate::key::KeyId;
use crate::record::KeyRecord;

/// Schema changes, applied in order on connect; `PRAGMA user_version`
/// records how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tm_auth_keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    hash BLOB NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    environment TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    hint TEXT NOT NULL,
    allowed_ips TEXT NOT NULL,
    rate_limit_requests INTEGER,
    rate_limit_window_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER
);
CREATE INDEX tm_auth_keys_by_owner ON tm_auth_keys (owner, seq);
CREATE TABLE tm_auth_usage (
    id BLOB PRIMARY KEY REFERENCES tm_auth_keys (id),
    requests INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    wrong_environment INTEGER NOT NULL DEFAULT 0,
    ip_not_allowed INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    last_used_at_ms INTEGER,
    last_used_ip TEXT
);
"#,
    r#"
ALTER TABLE tm_auth_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
CREATE TABLE tm_auth_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    key_id BLOB,
    new_key_id BLOB,
    action TEXT NOT NULL,
    refused TEXT,
    actor TEXT,
    client_ip TEXT,
    at_ms INTEGER NOT NULL,
    changes TEXT NOT NULL
);
CREATE INDEX tm_auth_audit_by_owner_time ON tm_auth_audit (owner, at_ms);
CREATE INDEX tm_auth_audit_by_owner ON tm_auth_audit (owner, seq);
-- The audit trail is append-only, whoever writes to the file.
CREATE TRIGGER tm_auth_audit_no_update BEFORE UPDATE ON tm_auth_audit
BEGIN SELECT RAISE(ABORT, 'the tm-auth audit trail is append-only'); END;
CREATE TRIGGER tm_auth_audit_no_delete BEFORE DELETE ON tm_auth_audit
BEGIN SELECT RAISE(ABORT, 'the tm-auth audit trail is append-only'); END;
"#,
];

/// Rows per usage statement: at nine parameters a row, 9 000, well within
/// SQLite's limit of 32 766.
const USAGE_ROWS_PER_STATEMENT: usize = 1_000;

/// Keys in SQLite: persistent, for one machine (several processes on it may
/// share the file). Runs its migrations on connect and uses WAL mode for
/// files. Timestamps are stored as UTC milliseconds, allowlists as
/// normalised text, the id and hash as blobs; never a plaintext key.
///
/// A revocation is one `UPDATE … WHERE revoked_at_ms IS NULL`: it is atomic,
/// keeps its first time, and is seen by the next lookup of every process
/// using the file.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tm_auth::store::sqlite::SqliteStore;
/// use tm_auth::{KeyManager, NewKey};
///
/// let store = SqliteStore::in_memory().await?; // or SqliteStore::open("keys.db")
/// let manager = KeyManager::new(store);
/// let created = manager.create(NewKey::new("acct_42", "Production")).await?;
/// assert!(manager.verify(created.key.expose_secret(), None).await.is_ok());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    keys: SqlKeys<Sqlite>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, in WAL mode.
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(backend)?;
        SqliteStore::migrated(pool).await
    }

    /// A private database in memory: gone when the store is dropped. Useful
    /// for tests; everything else behaves as with a file.
    pub async fn in_memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(backend)?
            .foreign_keys(true);
        // One connection, kept open: each in-memory connection is its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(backend)?;
        SqliteStore::migrated(pool).await
    }

    async fn migrated(pool: SqlitePool) -> Result<SqliteStore, StoreError> {
        let mut tx = pool.begin().await.map_err(backend)?;
        let applied: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let applied = usize::try_from(applied).unwrap_or(0);
        for migration in MIGRATIONS.iter().skip(applied) {
            sqlx::raw_sql(migration)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        if applied < MIGRATIONS.len() {
            sqlx::raw_sql(&format!("PRAGMA user_version = {}", MIGRATIONS.len()))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(SqliteStore {
            keys: SqlKeys { pool },
        })
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.keys.pool.close().await;
    }
}

impl SqliteStore {
    /// Adds a batch of usage, one statement per thousand keys.
    async fn write_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        for chunk in batch.chunks(USAGE_ROWS_PER_STATEMENT) {
            // One statement per chunk; the join drops deltas of unknown keys.
            let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO tm_auth_usage (id, requests, revoked, expired, wrong_environment, \
                 ip_not_allowed, rate_limited, last_used_at_ms, last_used_ip) \
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, \
                 v.column8, v.column9 FROM (",
            );
            sql.push_values(chunk, |mut row, delta| {
                let r = &delta.rejected;
                row.push_bind(id_bytes(&delta.id))
                    .push_bind(count(delta.requests))
                    .push_bind(count(r.revoked))
                    .push_bind(count(r.expired))
                    .push_bind(count(r.wrong_environment))
                    .push_bind(count(r.ip_not_allowed))
                    .push_bind(count(r.rate_limited))
                    .push_bind(delta.last_used_at.map(to_ms))
                    .push_bind(delta.last_used_ip.map(|ip| ip.to_string()));
            });
            sql.push(
                ") AS v JOIN tm_auth_keys k ON k.id = v.column1 WHERE true \
                 ON CONFLICT (id) DO UPDATE SET \
                 requests = requests + excluded.requests, \
                 revoked = revoked + excluded.revoked, \
                 expired = expired + excluded.expired, \
                 wrong_environment = wrong_environment + excluded.wrong_environment, \
                 ip_not_allowed = ip_not_allowed + excluded.ip_not_allowed, \
                 rate_limited = rate_limited + excluded.rate_limited, \
                 last_used_ip = CASE WHEN excluded.last_used_at_ms IS NOT NULL AND \
                     (last_used_at_ms IS NULL OR excluded.last_used_at_ms >= last_used_at_ms) \
                     THEN excluded.last_used_ip ELSE last_used_ip END, \
                 last_used_at_ms = CASE WHEN excluded.last_used_at_ms IS NOT NULL AND \
                     (last_used_at_ms IS NULL OR excluded.last_used_at_ms >= last_used_at_ms) \
                     THEN excluded.last_used_at_ms ELSE last_used_at_ms END",
            );
            sql.build()
                .execute(&self.keys.pool)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    /// Several keys' usage, one statement per thousand keys.
    async fn read_usage(&self, ids: &[KeyId]) -> Result<Vec<Option<UsageTotals>>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(USAGE_ROWS_PER_STATEMENT) {
            let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT k.id, u.requests, u.revoked, u.expired, u.wrong_environment, \
                 u.ip_not_allowed, u.rate_limited, u.last_used_at_ms, u.last_used_ip \
                 FROM tm_auth_keys k LEFT JOIN tm_auth_usage u ON u.id = k.id WHERE k.id IN (",
            );
            let mut list = sql.separated(", ");
            for id in chunk {
                list.push_bind(id_bytes(id));
            }
            sql.push(")");
            for row in sql
                .build()
                .fetch_all(&self.keys.pool)
                .await
                .map_err(backend)?
            {
                found.insert(id_from(&row)?, usage_from(&row)?);
            }
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }
}

sql_key_store!(SqliteStore);

impl Dialect for Sqlite {
    fn statements() -> &'static Statements {
        static STATEMENTS: LazyLock<Statements> =
            LazyLock::new(|| Statements::render('?', "BLOB", "INTEGER"));
        &STATEMENTS
    }
}
