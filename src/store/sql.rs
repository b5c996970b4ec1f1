//! What the SQL stores share: conversions between records and columns.
//!
//! Timestamps are stored as UTC milliseconds (`BIGINT`), ids and hashes as
//! bytes, allowlists as normalised comma-separated text, counts as `BIGINT`
//! (saturating).

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type};

use super::{Rejections, StoreError, UsageTotals};
use crate::key::{Environment, KeyHash, KeyHint};
use crate::rate_limit::RateLimit;
use crate::record::{KeyId, KeyRecord};

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
                                  rate_limit_window_ms, created_at_ms, expires_at_ms, revoked_at_ms";

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
        (Some(requests), Some(window)) => Some(RateLimit::new(
            u32::try_from(requests).map_err(|_| corrupt("rate limit out of range"))?,
            Duration::from_millis(
                u64::try_from(window).map_err(|_| corrupt("rate window out of range"))?,
            ),
        )),
        _ => None,
    };
    let created_at: i64 = row.try_get("created_at_ms").map_err(get_err)?;
    let expires_at: Option<i64> = row.try_get("expires_at_ms").map_err(get_err)?;
    let revoked_at: Option<i64> = row.try_get("revoked_at_ms").map_err(get_err)?;
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
    })
}

/// Binds a record's twelve columns, in `COLUMNS` order, to an `INSERT`.
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
    let id: [u8; 16] = id.try_into().map_err(|_| corrupt("id is not 16 bytes"))?;
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
