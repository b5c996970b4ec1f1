//! What the SQL stores share: conversions between records and columns.
//!
//! Timestamps are stored as UTC milliseconds (`BIGINT`), ids and hashes as
//! bytes, allowlists as normalised comma-separated text, scopes as
//! space-separated text (RFC 6749 §3.3), counts as `BIGINT` (saturating),
//! audit events as rows of `tm_auth_audit`, their changes as one text.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::{Rejections, StoreError, StoreUpdate, UsageTotals};
use crate::audit::{
    AuditAction, AuditChange, AuditEntry, AuditEvent, AuditField, AuditId, AuditOutcome,
};
use crate::key::KeyId;
use crate::key::{Environment, KeyHash, KeyHint};
use crate::rate_limit::RateLimit;
use crate::record::KeyRecord;

pub(crate) fn backend(err: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend(err)
}

pub(crate) fn sql_error(err: sqlx::Error) -> StoreError {
    if err
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation())
    {
        StoreError::Conflict
    } else {
        backend(err)
    }
}

/// A stored row that this version cannot read.
#[derive(Debug, thiserror::Error)]
#[error("a stored key row is corrupt: {0}")]
struct CorruptRow(&'static str);

pub(crate) fn corrupt(what: &'static str) -> StoreError {
    backend(CorruptRow(what))
}

pub(crate) fn to_ms(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

pub(crate) fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn id_bytes(id: &KeyId) -> Vec<u8> {
    id.as_u128().to_le_bytes().to_vec()
}

pub(crate) fn allowlist_text(networks: &[IpNetwork]) -> String {
    networks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The columns every key query selects, in the order `record_from` reads them.
pub(crate) const COLUMNS: &str = "id, hash, owner, name, environment, hint, allowed_ips, rate_limit_requests, \
                                  rate_limit_window_ms, created_at_ms, expires_at_ms, revoked_at_ms, scopes";

/// A stored key row, read the same way from SQLite and PostgreSQL: anything
/// that does not parse is a `Backend` error naming what, never a panic.
pub(crate) fn record_from<R>(row: &R) -> Result<KeyRecord, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let get_err = |_| corrupt("a column is missing or has the wrong type");
    let id = id_from(row)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(get_err)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt("hash is not 32 bytes"))?;
    let environment: String = row.try_get("environment").map_err(get_err)?;
    let environment =
        Environment::from_str(&environment).map_err(|_| corrupt("unknown environment"))?;
    let hint: String = row.try_get("hint").map_err(get_err)?;
    let hint = KeyHint::from_str(&hint).map_err(|_| corrupt("bad hint"))?;
    let allowed: String = row.try_get("allowed_ips").map_err(get_err)?;
    let allowed_ips = allowed
        .split(',')
        .filter(|n| !n.is_empty())
        .map(IpNetwork::from_str)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt("bad allowlist"))?;
    let requests: Option<i64> = row.try_get("rate_limit_requests").map_err(get_err)?;
    let window: Option<i64> = row.try_get("rate_limit_window_ms").map_err(get_err)?;
    let rate_limit = match (requests, window) {
        (Some(requests), Some(window)) => Some(
            RateLimit::new(
                u32::try_from(requests).map_err(|_| corrupt("rate limit out of range"))?,
                Duration::from_millis(
                    u64::try_from(window).map_err(|_| corrupt("rate window out of range"))?,
                ),
            )
            .map_err(|_| corrupt("invalid rate limit"))?,
        ),
        _ => None,
    };
    let created_at: i64 = row.try_get("created_at_ms").map_err(get_err)?;
    let expires_at: Option<i64> = row.try_get("expires_at_ms").map_err(get_err)?;
    let revoked_at: Option<i64> = row.try_get("revoked_at_ms").map_err(get_err)?;
    let scopes: String = row.try_get("scopes").map_err(get_err)?;
    let scopes = crate::scope::scope_set(scopes.split(' ').filter(|s| !s.is_empty()))
        .map_err(|_| corrupt("bad scopes"))?;
    Ok(KeyRecord {
        hash: KeyHash::from_bytes(hash),
        revoked_at: revoked_at.map(from_ms),
        expires_at: expires_at.map(from_ms),
        allowed_ips,
        environment,
        hint,
        rate_limit,
        id,
        owner: row.try_get("owner").map_err(get_err)?,
        name: row.try_get("name").map_err(get_err)?,
        created_at: from_ms(created_at),
        scopes,
    })
}

/// Binds a record's thirteen columns, in `COLUMNS` order, to an `INSERT`.
pub(crate) fn bind_record<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    record: &'q KeyRecord,
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    Vec<u8>: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    query
        .bind(id_bytes(&record.id))
        .bind(record.hash.as_bytes().to_vec())
        .bind(record.owner.as_str())
        .bind(record.name.as_str())
        .bind(record.environment.as_str())
        .bind(record.hint.to_string())
        .bind(allowlist_text(&record.allowed_ips))
        .bind(record.rate_limit.map(|l| i64::from(l.requests())))
        .bind(record.rate_limit.map(|l| count(l.window_ms())))
        .bind(to_ms(record.created_at))
        .bind(record.expires_at.map(to_ms))
        .bind(record.revoked_at.map(to_ms))
        .bind(crate::scope::joined(&record.scopes))
}

/// The key id in a row's `id` column.
pub(crate) fn id_from<R>(row: &R) -> Result<KeyId, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: Vec<u8> = row
        .try_get("id")
        .map_err(|_| corrupt("a column is missing or has the wrong type"))?;
    id_of(id)
}

/// The key id stored as these bytes.
fn id_of(bytes: Vec<u8>) -> Result<KeyId, StoreError> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| corrupt("id is not 16 bytes"))?;
    Ok(KeyId::from_u128(u128::from_le_bytes(id)))
}

/// Usage totals from a row of `requests, revoked, expired,
/// wrong_environment, ip_not_allowed, rate_limited, last_used_at_ms,
/// last_used_ip` (all null when the key has no usage row yet).
pub(crate) fn usage_from<R>(row: &R) -> Result<UsageTotals, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let get_err = |_| corrupt("a usage column has the wrong type");
    let number = |name: &str| -> Result<u64, StoreError> {
        let value: Option<i64> = row.try_get(name).map_err(get_err)?;
        Ok(value.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    };
    let last: Option<i64> = row.try_get("last_used_at_ms").map_err(get_err)?;
    let ip: Option<String> = row.try_get("last_used_ip").map_err(get_err)?;
    Ok(UsageTotals {
        requests: number("requests")?,
        rejected: Rejections::from_counts([
            number("revoked")?,
            number("expired")?,
            number("wrong_environment")?,
            number("ip_not_allowed")?,
            number("rate_limited")?,
        ]),
        last_used_at: last.map(from_ms),
        last_used_ip: ip.and_then(|ip| ip.parse().ok()),
    })
}

/// An audit row, read the same way from SQLite and PostgreSQL.
fn audit_from<R>(row: &R) -> Result<AuditEntry, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let get_err = |_| corrupt("an audit column is missing or has the wrong type");
    let key = |name: &str| -> Result<Option<KeyId>, StoreError> {
        let bytes: Option<Vec<u8>> = row.try_get(name).map_err(get_err)?;
        bytes.map(id_of).transpose()
    };
    let seq: i64 = row.try_get("seq").map_err(get_err)?;
    let action: String = row.try_get("action").map_err(get_err)?;
    let refused: Option<String> = row.try_get("refused").map_err(get_err)?;
    let client_ip: Option<String> = row.try_get("client_ip").map_err(get_err)?;
    let at: i64 = row.try_get("at_ms").map_err(get_err)?;
    let changes: String = row.try_get("changes").map_err(get_err)?;
    Ok(AuditEntry {
        id: AuditId(u64::try_from(seq).map_err(|_| corrupt("negative audit number"))?),
        event: AuditEvent {
            at: from_ms(at),
            owner: row.try_get("owner").map_err(get_err)?,
            key_id: key("key_id")?,
            action: AuditAction::parse(&action).ok_or_else(|| corrupt("unknown audit action"))?,
            outcome: match refused {
                None => AuditOutcome::Done,
                Some(reason) => AuditOutcome::Refused { reason },
            },
            actor: row.try_get("actor").map_err(get_err)?,
            client_ip: client_ip
                .map(|ip| ip.parse().map_err(|_| corrupt("bad audit address")))
                .transpose()?,
            changes: decode_changes(&changes).ok_or_else(|| corrupt("bad audit changes"))?,
            new_key_id: key("new_key_id")?,
        },
    })
}

/// Changes as one text: a line per change, its field, the items before
/// and the items after separated by tabs, items by unit separators.
/// Control characters inside an item are replaced, so the separators are
/// unambiguous.
pub(crate) fn encode_changes(changes: &[AuditChange]) -> String {
    let clean = |item: &String| -> String {
        item.chars()
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect()
    };
    let items = |list: &[String]| list.iter().map(clean).collect::<Vec<_>>().join("\u{1F}");
    changes
        .iter()
        .map(|change| {
            format!(
                "{}\t{}\t{}",
                change.field.as_str(),
                items(&change.before),
                items(&change.after)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The changes [`encode_changes`] wrote; `None` if the text is not its.
pub(crate) fn decode_changes(text: &str) -> Option<Vec<AuditChange>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let items = |part: &str| -> Vec<String> {
        if part.is_empty() {
            Vec::new()
        } else {
            part.split('\u{1F}').map(str::to_owned).collect()
        }
    };
    text.split('\n')
        .map(|line| {
            let mut parts = line.split('\t');
            let field = AuditField::parse(parts.next()?)?;
            let before = items(parts.next()?);
            let after = items(parts.next()?);
            parts.next().is_none().then_some(AuditChange {
                field,
                before,
                after,
            })
        })
        .collect()
}

/// A SQL dialect the crate's stores speak: the statements every store
/// shares, written once and rendered for the dialect once.
pub(crate) trait Dialect: Database {
    /// The shared statements in this dialect.
    fn statements() -> &'static Statements;
}

/// The statements both SQL stores run, in one dialect.
pub(crate) struct Statements {
    insert: String,
    by_hash: String,
    by_id: String,
    by_owner: String,
    page: String,
    count_active: String,
    update: String,
    revoke: String,
    usage: String,
    audit_append: String,
    audit_list: String,
}

/// The shared statements, with `$1`-style parameters, `{columns}` for
/// [`COLUMNS`] and `{blob}` / `{int}` for the dialect's type names in casts.
const INSERT: &str = "INSERT INTO tm_auth_keys ({columns}) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
const BY_HASH: &str = "SELECT {columns} FROM tm_auth_keys WHERE hash = $1";
const BY_ID: &str = "SELECT {columns} FROM tm_auth_keys WHERE id = $1";
const BY_OWNER: &str = "SELECT {columns} FROM tm_auth_keys WHERE owner = $1 ORDER BY seq";
// After the cursor's row, if it is one of the owner's; past every row if it
// is not (an empty page).
const PAGE: &str = "SELECT {columns} FROM tm_auth_keys WHERE owner = $1 AND seq > CASE
         WHEN CAST($2 AS {blob}) IS NULL THEN 0
         ELSE COALESCE((SELECT seq FROM tm_auth_keys WHERE id = $2 AND owner = $1),
                       9223372036854775807) END
     ORDER BY seq LIMIT $3";
const COUNT_ACTIVE: &str = "SELECT count(*) AS active FROM tm_auth_keys WHERE owner = $1
     AND revoked_at_ms IS NULL AND (expires_at_ms IS NULL OR expires_at_ms > $2)";
// One statement: a revoked key is untouched and an expiry only ever moves
// earlier, whatever runs beside it; whether it applied is whether it
// returned the row.
const UPDATE: &str = "UPDATE tm_auth_keys SET
        name = COALESCE($1, name),
        allowed_ips = COALESCE($2, allowed_ips),
        expires_at_ms = CASE
            WHEN CAST($3 AS {int}) IS NULL THEN expires_at_ms
            WHEN expires_at_ms IS NULL OR CAST($3 AS {int}) < expires_at_ms THEN CAST($3 AS {int})
            ELSE expires_at_ms END,
        rate_limit_requests = CASE WHEN $4 THEN $5 ELSE rate_limit_requests END,
        rate_limit_window_ms = CASE WHEN $4 THEN $6 ELSE rate_limit_window_ms END,
        scopes = COALESCE($8, scopes)
     WHERE id = $7 AND revoked_at_ms IS NULL
     RETURNING {columns}";
const REVOKE: &str =
    "UPDATE tm_auth_keys SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL";
const AUDIT_APPEND: &str = "INSERT INTO tm_auth_audit \
     (owner, key_id, new_key_id, action, refused, actor, client_ip, at_ms, changes) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq";
// A key's history includes the rotation that created it.
const AUDIT_LIST: &str = "SELECT seq, owner, key_id, new_key_id, action, refused, actor, \
     client_ip, at_ms, changes FROM tm_auth_audit \
     WHERE owner = $1 AND seq > $2 \
       AND (CAST($3 AS {blob}) IS NULL OR key_id = $3 OR new_key_id = $3) \
     ORDER BY seq LIMIT $4";
const USAGE: &str = "SELECT u.requests, u.revoked, u.expired, u.wrong_environment, \
     u.ip_not_allowed, u.rate_limited, u.last_used_at_ms, u.last_used_ip \
     FROM tm_auth_keys k LEFT JOIN tm_auth_usage u ON u.id = k.id WHERE k.id = $1";

impl Statements {
    /// The shared statements with parameters written `$1` (PostgreSQL) or
    /// `?1` (SQLite), and the dialect's names for a blob and an integer.
    pub(crate) fn render(parameter: char, blob: &str, int: &str) -> Statements {
        let render = |template: &str| {
            template
                .replace("{columns}", COLUMNS)
                .replace("{blob}", blob)
                .replace("{int}", int)
                .replace('$', &parameter.to_string())
        };
        Statements {
            insert: render(INSERT),
            by_hash: render(BY_HASH),
            by_id: render(BY_ID),
            by_owner: render(BY_OWNER),
            page: render(PAGE),
            count_active: render(COUNT_ACTIVE),
            update: render(UPDATE),
            revoke: render(REVOKE),
            usage: render(USAGE),
            audit_append: render(AUDIT_APPEND),
            audit_list: render(AUDIT_LIST),
        }
    }
}

/// The queries both SQL stores share, over a pool of either dialect.
#[derive(Debug)]
pub(crate) struct SqlKeys<DB: Database> {
    pub(crate) pool: Pool<DB>,
}

impl<DB: Database> Clone for SqlKeys<DB> {
    fn clone(&self) -> SqlKeys<DB> {
        SqlKeys {
            pool: self.pool.clone(),
        }
    }
}

impl<DB> SqlKeys<DB>
where
    DB: Dialect,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
{
    pub(crate) async fn insert(&self, record: &KeyRecord) -> Result<(), StoreError> {
        bind_record(sqlx::query(&DB::statements().insert), record)
            .execute(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(())
    }

    async fn one(&self, sql: &'static str, key: Vec<u8>) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(record_from).transpose()
    }

    pub(crate) async fn find_by_hash(
        &self,
        hash: &KeyHash,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.one(&DB::statements().by_hash, hash.as_bytes().to_vec())
            .await
    }

    pub(crate) async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.one(&DB::statements().by_id, id_bytes(id)).await
    }

    pub(crate) async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(&DB::statements().by_owner)
            .bind(owner)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(record_from).collect()
    }

    pub(crate) async fn list_page(
        &self,
        owner: &str,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(&DB::statements().page)
            .bind(owner)
            .bind(after.as_ref().map(id_bytes))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(record_from).collect()
    }

    pub(crate) async fn count_active(
        &self,
        owner: &str,
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        let row = sqlx::query(&DB::statements().count_active)
            .bind(owner)
            .bind(to_ms(now))
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let active: i64 = row
            .try_get("active")
            .map_err(|_| corrupt("a count is not a number"))?;
        Ok(usize::try_from(active).unwrap_or(0))
    }

    pub(crate) async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let limit = update.rate_limit;
        let applied = sqlx::query(&DB::statements().update)
            .bind(update.name.as_deref())
            .bind(update.allowed_ips.as_deref().map(allowlist_text))
            .bind(update.expires_at.map(to_ms))
            .bind(limit.is_some())
            .bind(limit.flatten().map(|l| i64::from(l.requests())))
            .bind(limit.flatten().map(|l| count(l.window_ms())))
            .bind(id_bytes(id))
            .bind(update.scopes.as_deref().map(crate::scope::joined))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        // What the statement wrote, not a second read: a revocation that
        // lands between the two would make an applied update look refused.
        match applied {
            Some(row) => record_from(&row).map(Some),
            // Refused (revoked) or unknown: the record as it is, if any.
            None => self.get(id).await,
        }
    }

    pub(crate) async fn revoke(
        &self,
        id: &KeyId,
        at: SystemTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        sqlx::query(&DB::statements().revoke)
            .bind(to_ms(at))
            .bind(id_bytes(id))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        self.get(id).await
    }

    pub(crate) async fn append_audit(&self, event: &AuditEvent) -> Result<AuditId, StoreError> {
        let row = sqlx::query(&DB::statements().audit_append)
            .bind(event.owner.as_str())
            .bind(event.key_id.as_ref().map(id_bytes))
            .bind(event.new_key_id.as_ref().map(id_bytes))
            .bind(event.action.as_str())
            .bind(event.outcome.refusal())
            .bind(event.actor.as_deref())
            .bind(event.client_ip.map(|ip| ip.to_string()))
            .bind(to_ms(event.at))
            .bind(encode_changes(&event.changes))
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let seq: i64 = row
            .try_get("seq")
            .map_err(|_| corrupt("an audit number is not a number"))?;
        Ok(AuditId(u64::try_from(seq).unwrap_or(0)))
    }

    pub(crate) async fn list_audit(
        &self,
        owner: &str,
        key: Option<KeyId>,
        after: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(&DB::statements().audit_list)
            .bind(owner)
            .bind(after.map_or(0, |a| i64::try_from(a.0).unwrap_or(i64::MAX)))
            .bind(key.as_ref().map(id_bytes))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(audit_from).collect()
    }

    pub(crate) async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        let row = sqlx::query(&DB::statements().usage)
            .bind(id_bytes(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(usage_from).transpose()
    }
}

/// `KeyStore` and `UsageStore` for a SQL store: the shared queries of its `keys`
/// ([`SqlKeys`]), and for the usage batches, which the dialects write
/// differently, the store's own `write_usage` and `read_usage`.
macro_rules! sql_key_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::KeyStore for $store {
            async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
                self.keys.insert(&record).await
            }

            async fn find_by_hash(
                &self,
                hash: &KeyHash,
            ) -> Result<Option<std::sync::Arc<KeyRecord>>, StoreError> {
                Ok(self.keys.find_by_hash(hash).await?.map(std::sync::Arc::new))
            }

            async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
                self.keys.get(id).await
            }

            async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
                self.keys.list_by_owner(owner).await
            }

            async fn list_page(
                &self,
                owner: &str,
                after: Option<KeyId>,
                limit: usize,
            ) -> Result<Vec<KeyRecord>, StoreError> {
                self.keys.list_page(owner, after, limit).await
            }

            async fn count_active(
                &self,
                owner: &str,
                now: std::time::SystemTime,
            ) -> Result<usize, StoreError> {
                self.keys.count_active(owner, now).await
            }

            async fn update(
                &self,
                id: &KeyId,
                update: &StoreUpdate,
            ) -> Result<Option<KeyRecord>, StoreError> {
                self.keys.update(id, update).await
            }

            async fn revoke(
                &self,
                id: &KeyId,
                at: std::time::SystemTime,
            ) -> Result<Option<KeyRecord>, StoreError> {
                self.keys.revoke(id, at).await
            }

            fn usage_store(&self) -> Option<&dyn $crate::store::UsageStore> {
                Some(self)
            }

            fn audit_store(&self) -> Option<&dyn $crate::store::AuditStore> {
                Some(self)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::AuditStore for $store {
            async fn append(
                &self,
                event: &$crate::audit::AuditEvent,
            ) -> Result<$crate::audit::AuditId, StoreError> {
                self.keys.append_audit(event).await
            }

            async fn list(
                &self,
                owner: &str,
                key: Option<KeyId>,
                after: Option<$crate::audit::AuditId>,
                limit: usize,
            ) -> Result<Vec<$crate::audit::AuditEntry>, StoreError> {
                self.keys.list_audit(owner, key, after, limit).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::UsageStore for $store {
            async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
                self.write_usage(batch).await
            }

            async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
                self.keys.usage(id).await
            }

            async fn usage_batch(
                &self,
                ids: &[KeyId],
            ) -> Result<Vec<Option<UsageTotals>>, StoreError> {
                self.read_usage(ids).await
            }
        }
    };
}

pub(crate) use sql_key_store;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn changes_survive_their_column() {
        let changes = vec![
            AuditChange {
                field: AuditField::Name,
                before: vec!["Old\tname".into()],
                after: vec!["New".into()],
            },
            AuditChange {
                field: AuditField::Scopes,
                before: vec![],
                after: vec!["a:b".into(), "c".into()],
            },
        ];
        let decoded = decode_changes(&encode_changes(&changes)).unwrap();
        assert_eq!(decoded[1], changes[1]);
        assert_eq!(decoded[0].before, ["Old\u{FFFD}name"], "controls replaced");
        assert_eq!(decode_changes("").unwrap(), vec![]);
        assert_eq!(decode_changes("bogus\t\t"), None);
        assert_eq!(decode_changes("name\ta"), None);
    }

    proptest! {
        #[test]
        fn decoding_any_text_never_panics(text in any::<String>()) {
            let _ = decode_changes(&text);
        }
    }
}
