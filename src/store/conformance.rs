//! Behavioural checks any [`KeyStore`] must pass (feature `conformance`).
//!
//! Run them against your own backend from a test. Each check gets a fresh,
//! empty store from your closure, so checks cannot disturb each other:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tm_auth::store::conformance;
//! use tm_auth::MemoryStore;
//!
//! conformance::run(|| async { MemoryStore::new() }).await.unwrap();
//! # }
//! ```
//!
//! For a database, have the closure create a new schema, database or file.
//! The checks use timestamps with millisecond precision (the precision a
//! store must keep: records are compared to the millisecond) and IPv4 and
//! IPv6 allowlists. On failure the error lists
//! every failed check by name with what was wrong.
//!
//! What they check: records round-trip unchanged; duplicates by id or by hash
//! are refused with [`StoreError::Conflict`]; owners list in insertion order,
//! revoked keys included, whole or a page at a time; active keys are counted
//! as the manager's limits need; updates change the name, allowlist, scopes
//! and rate limit, only ever shorten an expiry and never touch a revoked record; revocation
//! keeps its first time and is seen by the next lookup; usage batches add up,
//! the latest use wins and unknown ids are ignored, and reading several
//! keys' usage at once agrees with reading each (for a store that keeps
//! usage; [`run_usage`] checks a [`UsageStore`] of its own); the crate's
//! in-memory answers agree with `find_by_hash`; concurrent inserts and
//! revocations lose nothing; audit events come back whole, numbered in the
//! order they were appended, by owner, by key and a page at a time (for a
//! store that keeps them; [`run_audit`] checks an [`AuditStore`] of its
//! own).

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::memory::fast::Seal;
use super::{AuditStore, KeyStore, Rejections, StoreError, StoreUpdate, UsageDelta, UsageStore};
use crate::audit::{AuditAction, AuditChange, AuditEvent, AuditField, AuditId, AuditOutcome};
use crate::key::KeyId;
use crate::key::{Environment, TmKey};
use crate::rate_limit::RateLimit;
use crate::record::KeyRecord;
use crate::scope::{scope_set, Scope};

const HUNDRED: NonZeroU32 = NonZeroU32::new(100).unwrap();
const FIVE: NonZeroU32 = NonZeroU32::new(5).unwrap();

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The check's name, e.g. `"update_never_lengthens_expiry"`.
    pub check: &'static str,
    /// What went wrong.
    pub problem: String,
}

/// Every check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failures(pub Vec<Failure>);

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} store conformance check(s) failed:", self.0.len())?;
        for failure in &self.0 {
            writeln!(f, "- {}: {}", failure.check, failure.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failures {}

impl Failures {
    /// `Ok` when nothing failed.
    fn outcome(failures: Vec<Failure>) -> Result<(), Failures> {
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Failures(failures))
        }
    }
}

type Outcome = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A record for `owner` with millisecond timestamps and both kinds of networks.
pub fn sample_record(owner: &str) -> KeyRecord {
    let key = TmKey::generate(Environment::Live);
    KeyRecord {
        hash: key.hash(),
        revoked_at: None,
        expires_at: Some(at_ms(4_102_444_800_123)),
        allowed_ips: vec![
            "203.0.113.0/24"
                .parse()
                .unwrap_or_else(|_| unreachable_network()),
            "2001:db8::/32"
                .parse()
                .unwrap_or_else(|_| unreachable_network()),
        ],
        environment: Environment::Live,
        hint: key.hint(),
        rate_limit: Some(RateLimit::per_minute(HUNDRED)),
        id: KeyId::generate(),
        owner: owner.to_owned(),
        name: "Production - Main Website".to_owned(),
        created_at: at_ms(1_767_225_600_456),
        scopes: scopes(&["emails:verify", "lists:read"]),
    }
}

/// Checked scopes (the kit's own literals, all valid).
fn scopes(list: &[&str]) -> Vec<Scope> {
    scope_set(list).unwrap_or_default()
}

#[cold]
fn unreachable_network() -> ipnetwork::IpNetwork {
    // Both literals above are valid networks; this keeps the kit free of panics.
    ipnetwork::IpNetwork::from(IpAddr::from([0, 0, 0, 0]))
}

async fn insert(store: &dyn KeyStore, record: &KeyRecord) -> Outcome {
    store
        .insert(record.clone())
        .await
        .map_err(|e| format!("insert failed: {e}"))
}

async fn round_trip(store: &dyn KeyStore) -> Outcome {
    let record = sample_record("acct_1");
    insert(store, &record).await?;
    let found = store
        .find_by_hash(&record.hash)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        found.as_deref() == Some(&record),
        "find_by_hash returned {found:?}, expected {record:?}"
    );
    let got = store.get(&record.id).await.map_err(|e| e.to_string())?;
    ensure!(
        got.as_ref() == Some(&record),
        "get returned {got:?}, expected {record:?}"
    );
    let mut test_key = sample_record("acct_1");
    test_key.environment = Environment::Test;
    test_key.expires_at = None;
    test_key.rate_limit = None;
    test_key.allowed_ips.clear();
    insert(store, &test_key).await?;
    let got = store.get(&test_key.id).await.map_err(|e| e.to_string())?;
    ensure!(
        got.as_ref() == Some(&test_key),
        "a record without expiry, limit or allowlist came back as {got:?}"
    );
    Ok(())
}

async fn unknown_lookups(store: &dyn KeyStore) -> Outcome {
    let stranger = sample_record("acct_1");
    ensure!(
        store
            .find_by_hash(&stranger.hash)
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "find_by_hash found a key that was never inserted"
    );
    ensure!(
        store
            .get(&stranger.id)
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "get found an unknown id"
    );
    ensure!(
        store
            .list_by_owner("nobody")
            .await
            .map_err(|e| e.to_string())?
            .is_empty(),
        "an unknown owner has keys"
    );
    let update = StoreUpdate {
        name: Some("x".into()),
        ..StoreUpdate::default()
    };
    ensure!(
        store
            .update(&stranger.id, &update)
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "update of an unknown id answered a record"
    );
    ensure!(
        store
            .revoke(&stranger.id, at_ms(1))
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "revoke of an unknown id answered a record"
    );
    if let Some(usage) = store.usage_store() {
        ensure!(
            usage
                .usage(&stranger.id)
                .await
                .map_err(|e| e.to_string())?
                .is_none(),
            "usage of an unknown id answered totals"
        );
    }
    Ok(())
}

async fn duplicates_conflict(store: &dyn KeyStore) -> Outcome {
    let record = sample_record("acct_1");
    insert(store, &record).await?;
    let same_id = KeyRecord {
        hash: sample_record("acct_1").hash,
        ..record.clone()
    };
    ensure!(
        matches!(store.insert(same_id).await, Err(StoreError::Conflict)),
        "a second record with the same id was not refused with Conflict"
    );
    let same_hash = KeyRecord {
        id: KeyId::generate(),
        ..record.clone()
    };
    ensure!(
        matches!(store.insert(same_hash).await, Err(StoreError::Conflict)),
        "a second record with the same hash was not refused with Conflict"
    );
    let listed = store
        .list_by_owner("acct_1")
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        listed.len() == 1,
        "after refused duplicates the owner lists {} keys",
        listed.len()
    );
    Ok(())
}

async fn lists_in_insertion_order(store: &dyn KeyStore) -> Outcome {
    let mut expected = Vec::new();
    for i in 0..12 {
        let mut record = sample_record(if i % 3 == 0 { "acct_other" } else { "acct_1" });
        // The same creation time for all: order must come from insertion.
        record.created_at = at_ms(1_767_225_600_000);
        if i % 3 != 0 {
            expected.push(record.id);
        }
        insert(store, &record).await?;
    }
    store
        .revoke(&expected[1], at_ms(5))
        .await
        .map_err(|e| e.to_string())?;
    let listed: Vec<KeyId> = store
        .list_by_owner("acct_1")
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.id)
        .collect();
    ensure!(
        listed == expected,
        "listed {listed:?}, expected insertion order {expected:?} (revoked included)"
    );
    Ok(())
}

async fn pages_follow_the_list(store: &dyn KeyStore) -> Outcome {
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut record = sample_record(if i == 3 { "acct_other" } else { "acct_1" });
        record.created_at = at_ms(1_767_225_600_000);
        if i != 3 {
            ids.push(record.id);
        }
        insert(store, &record).await?;
    }
    let other = sample_record("acct_other");
    insert(store, &other).await?;
    store
        .revoke(&ids[2], at_ms(5))
        .await
        .map_err(|e| e.to_string())?;
    let page = |after: Option<KeyId>, limit: usize| async move {
        store
            .list_page("acct_1", after, limit)
            .await
            .map(|records| records.iter().map(|r| r.id).collect::<Vec<_>>())
            .map_err(|e| format!("list_page failed: {e}"))
    };
    let first = page(None, 4).await?;
    ensure!(
        first == ids[..4],
        "the first page is {first:?}, expected {:?}",
        &ids[..4]
    );
    let rest = page(Some(ids[3]), 4).await?;
    ensure!(
        rest == ids[4..],
        "the page after the 4th is {rest:?}, expected {:?}",
        &ids[4..]
    );
    let middle = page(Some(ids[0]), 2).await?;
    ensure!(
        middle == ids[1..3],
        "a page of 2 after the first is {middle:?}"
    );
    for (cursor, what) in [
        (ids[5], "the last key"),
        (other.id, "another owner's key"),
        (KeyId::generate(), "an unknown id"),
    ] {
        let after = page(Some(cursor), 4).await?;
        ensure!(
            after.is_empty(),
            "the page after {what} is {after:?}, expected none"
        );
    }
    let none = page(None, 0).await?;
    ensure!(none.is_empty(), "a page of 0 holds {none:?}");
    Ok(())
}

async fn counts_active_keys(store: &dyn KeyStore) -> Outcome {
    let now = at_ms(1_800_000_000_000);
    let mut never = sample_record("acct_1");
    never.expires_at = None;
    let mut later = sample_record("acct_1");
    later.expires_at = Some(at_ms(1_800_000_000_001));
    let mut at_now = sample_record("acct_1");
    at_now.expires_at = Some(now);
    let revoked = sample_record("acct_1");
    let elsewhere = sample_record("acct_other");
    for record in [&never, &later, &at_now, &revoked, &elsewhere] {
        insert(store, record).await?;
    }
    store
        .revoke(&revoked.id, at_ms(5))
        .await
        .map_err(|e| e.to_string())?;
    let count = |at| async move {
        store
            .count_active("acct_1", at)
            .await
            .map_err(|e| format!("count_active failed: {e}"))
    };
    let active = count(now).await?;
    ensure!(
        active == 2,
        "{active} keys counted active, expected 2 (revoked and expired at `now` excluded)"
    );
    let before = count(at_ms(1_799_999_999_999)).await?;
    ensure!(
        before == 3,
        "{before} keys counted active a millisecond earlier, expected 3"
    );
    let nobody = store
        .count_active("acct_nobody", now)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(nobody == 0, "an owner with no keys has {nobody}");
    Ok(())
}

async fn update_changes_what_it_says(store: &dyn KeyStore) -> Outcome {
    let record = sample_record("acct_1");
    insert(store, &record).await?;
    let allowed: Vec<ipnetwork::IpNetwork> =
        vec!["198.51.100.7/32".parse().map_err(|e| format!("{e}"))?];
    let update = StoreUpdate {
        name: Some("Renamed".into()),
        allowed_ips: Some(allowed.clone()),
        rate_limit: Some(None),
        ..StoreUpdate::default()
    };
    let updated = store
        .update(&record.id, &update)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("update answered None for a stored key")?;
    let expected = KeyRecord {
        name: "Renamed".into(),
        allowed_ips: allowed,
        rate_limit: None,
        ..record.clone()
    };
    ensure!(
        updated == expected,
        "update answered {updated:?}, expected {expected:?}"
    );
    let stored = store.get(&record.id).await.map_err(|e| e.to_string())?;
    ensure!(
        stored.as_ref() == Some(&expected),
        "after update the store holds {stored:?}"
    );
    let limit = RateLimit::per_minute(FIVE);
    let update = StoreUpdate {
        rate_limit: Some(Some(limit)),
        ..StoreUpdate::default()
    };
    let updated = store
        .update(&record.id, &update)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        updated.and_then(|r| r.rate_limit) == Some(limit),
        "a rate limit could not be set"
    );
    Ok(())
}

/// Scopes narrow, widen to none (unrestricted) and come back as set, and
/// an update that does not name them leaves them alone.
async fn update_changes_scopes(store: &dyn KeyStore) -> Outcome {
    let record = sample_record("acct_1");
    insert(store, &record).await?;
    for wanted in [
        scopes(&["lists:read"]),
        Vec::new(),
        scopes(&["a", "b.c", "d-e_f:g"]),
    ] {
        let update = StoreUpdate {
            scopes: Some(wanted.clone()),
            ..StoreUpdate::default()
        };
        let updated = store
            .update(&record.id, &update)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("update answered None for a stored key")?;
        ensure!(
            updated.scopes == wanted,
            "scopes set to {wanted:?} came back as {:?}",
            updated.scopes
        );
        let found = store
            .find_by_hash(&record.hash)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the key was not found after a scope change")?;
        ensure!(
            found.scopes == wanted,
            "the next lookup saw scopes {:?}, not {wanted:?}",
            found.scopes
        );
    }
    let rename = StoreUpdate {
        name: Some("Renamed".into()),
        ..StoreUpdate::default()
    };
    let renamed = store
        .update(&record.id, &rename)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("update answered None for a stored key")?;
    ensure!(
        renamed.scopes == scopes(&["a", "b.c", "d-e_f:g"]),
        "a rename changed the scopes to {:?}",
        renamed.scopes
    );
    Ok(())
}

fn sample_event(owner: &str, key: KeyId, n: u64) -> AuditEvent {
    AuditEvent {
        at: at_ms(1_767_225_600_000 + n),
        owner: owner.to_owned(),
        key_id: Some(key),
        action: AuditAction::Update,
        outcome: AuditOutcome::Done,
        actor: Some(format!("user {n}")),
        client_ip: None,
        changes: vec![AuditChange {
            field: AuditField::Name,
            before: vec![format!("Name {n}")],
            after: vec![format!("Name {}", n + 1)],
        }],
        new_key_id: None,
    }
}

/// An event with every field set comes back exactly as appended.
async fn audit_keeps_every_field(store: &dyn AuditStore) -> Outcome {
    let key = KeyId::generate();
    let event = AuditEvent {
        at: at_ms(1_767_225_600_789),
        owner: "acct_1".to_owned(),
        key_id: Some(key),
        action: AuditAction::Rotate,
        outcome: AuditOutcome::Refused {
            reason: "api_key_expired".to_owned(),
        },
        actor: Some("alice@example.com".to_owned()),
        client_ip: "2001:db8::7".parse().ok(),
        changes: vec![
            AuditChange {
                field: AuditField::Scopes,
                before: vec!["emails:verify".into(), "lists:read".into()],
                after: Vec::new(),
            },
            AuditChange {
                field: AuditField::Name,
                before: vec!["Production – Main Website 🚀".into()],
                after: vec!["Zapier".into()],
            },
        ],
        new_key_id: Some(KeyId::generate()),
    };
    let bare = AuditEvent {
        key_id: None,
        actor: None,
        client_ip: None,
        changes: Vec::new(),
        new_key_id: None,
        action: AuditAction::Create,
        outcome: AuditOutcome::Done,
        ..event.clone()
    };
    for appended in [&event, &bare] {
        store
            .append(appended)
            .await
            .map_err(|e| format!("append failed: {e}"))?;
    }
    let listed = store
        .list("acct_1", None, None, 10)
        .await
        .map_err(|e| e.to_string())?;
    let got: Vec<&AuditEvent> = listed.iter().map(|e| &e.event).collect();
    ensure!(
        got == [&event, &bare],
        "appended {:?}, listed {got:?}",
        [&event, &bare]
    );
    Ok(())
}

/// Events are numbered in append order and listed by owner, by key
/// (including the rotation that named it the new key), after a cursor and
/// up to a limit.
async fn audit_lists_in_append_order(store: &dyn AuditStore) -> Outcome {
    let (one, two) = (KeyId::generate(), KeyId::generate());
    let mut ids: Vec<AuditId> = Vec::new();
    for n in 0..6 {
        let owner = if n == 3 { "acct_2" } else { "acct_1" };
        let mut event = sample_event(owner, if n % 2 == 0 { one } else { two }, n);
        if n == 5 {
            event.action = AuditAction::Rotate;
            event.key_id = Some(two);
            event.new_key_id = Some(one);
        }
        let id = store
            .append(&event)
            .await
            .map_err(|e| format!("append failed: {e}"))?;
        ensure!(
            ids.last().is_none_or(|last| *last < id),
            "event {n} was numbered {id}, not after {:?}",
            ids.last()
        );
        ids.push(id);
    }
    let all = store
        .list("acct_1", None, None, 100)
        .await
        .map_err(|e| e.to_string())?;
    let numbers: Vec<AuditId> = all.iter().map(|e| e.id).collect();
    let expected = [ids[0], ids[1], ids[2], ids[4], ids[5]];
    ensure!(
        numbers == expected,
        "acct_1's events listed as {numbers:?}, expected {expected:?}"
    );
    let page = store
        .list("acct_1", None, Some(ids[1]), 2)
        .await
        .map_err(|e| e.to_string())?;
    let numbers: Vec<AuditId> = page.iter().map(|e| e.id).collect();
    ensure!(
        numbers == [ids[2], ids[4]],
        "the page after {} of 2 was {numbers:?}",
        ids[1]
    );
    let of_one = store
        .list("acct_1", Some(one), None, 100)
        .await
        .map_err(|e| e.to_string())?;
    let numbers: Vec<AuditId> = of_one.iter().map(|e| e.id).collect();
    ensure!(
        numbers == [ids[0], ids[2], ids[4], ids[5]],
        "key one's events were {numbers:?} (its rotation included)"
    );
    let other = store
        .list("acct_2", Some(one), None, 100)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        other.is_empty(),
        "another owner's events were listed: {other:?}"
    );
    Ok(())
}

async fn update_never_lengthens_expiry(store: &dyn KeyStore) -> Outcome {
    let mut record = sample_record("acct_1");
    record.expires_at = None;
    insert(store, &record).await?;
    let expire = |ms| StoreUpdate {
        expires_at: Some(at_ms(ms)),
        ..StoreUpdate::default()
    };
    for (ms, expected) in [
        (2_000_000_000_000, 2_000_000_000_000),
        (3_000_000_000_000, 2_000_000_000_000),
        (1_900_000_000_000, 1_900_000_000_000),
    ] {
        let got = store
            .update(&record.id, &expire(ms))
            .await
            .map_err(|e| e.to_string())?
            .and_then(|r| r.expires_at);
        ensure!(
            got == Some(at_ms(expected)),
            "asking for expiry {ms} left {got:?}, expected {expected} ms"
        );
    }
    Ok(())
}

async fn revocation_is_final(store: &dyn KeyStore) -> Outcome {
    let record = sample_record("acct_1");
    insert(store, &record).await?;
    let first = store
        .revoke(&record.id, at_ms(1_800_000_000_000))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("revoke answered None for a stored key")?;
    ensure!(
        first.revoked_at == Some(at_ms(1_800_000_000_000)),
        "revoke set {:?}",
        first.revoked_at
    );
    let second = store
        .revoke(&record.id, at_ms(1_900_000_000_000))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        second.and_then(|r| r.revoked_at) == first.revoked_at,
        "a second revoke changed revoked_at"
    );
    let found = store
        .find_by_hash(&record.hash)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        found.and_then(|r| r.revoked_at) == first.revoked_at,
        "the next lookup did not see the revocation"
    );
    let update = StoreUpdate {
        name: Some("Renamed".into()),
        allowed_ips: Some(Vec::new()),
        expires_at: Some(at_ms(1)),
        rate_limit: Some(None),
        scopes: Some(Vec::new()),
    };
    let after = store
        .update(&record.id, &update)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("update of a revoked key answered None")?;
    let expected = KeyRecord {
        revoked_at: first.revoked_at,
        ..record.clone()
    };
    ensure!(
        after == expected,
        "an update changed a revoked record: {after:?}"
    );
    Ok(())
}

/// The usage store a usage check runs on, and the key store whose keys it
/// counts, if it counts only known keys.
#[derive(Clone, Copy)]
struct Usage<'a> {
    store: &'a dyn UsageStore,
    keys: Option<&'a dyn KeyStore>,
}

impl Usage<'_> {
    /// A record the usage store will count.
    async fn known(&self) -> Result<KeyRecord, String> {
        let record = sample_record("acct_1");
        if let Some(keys) = self.keys {
            insert(keys, &record).await?;
        }
        Ok(record)
    }
}

async fn usage_adds_up(usage: Usage<'_>) -> Outcome {
    let record = usage.known().await?;
    let store = usage.store;
    let totals = store.usage(&record.id).await.map_err(|e| e.to_string())?;
    ensure!(
        totals
            .as_ref()
            .is_none_or(|t| t.requests == 0 && t.last_used_at.is_none()),
        "a new key's usage is {totals:?}"
    );
    let ip_a: IpAddr = "203.0.113.1".parse().map_err(|e| format!("{e}"))?;
    let ip_b: IpAddr = "2001:db8::9".parse().map_err(|e| format!("{e}"))?;
    let mut later = UsageDelta::new(record.id);
    later.requests = 5;
    later.rejected = Rejections::from_counts([1, 0, 2, 0, 3]);
    later.last_used_at = Some(at_ms(1_800_000_000_200));
    later.last_used_ip = Some(ip_b);
    let mut earlier = UsageDelta::new(record.id);
    earlier.requests = 2;
    earlier.last_used_at = Some(at_ms(1_800_000_000_100));
    earlier.last_used_ip = Some(ip_a);
    let stranger = UsageDelta::new(KeyId::generate());
    store
        .record_usage(&[later, stranger])
        .await
        .map_err(|e| format!("record_usage failed: {e}"))?;
    store
        .record_usage(&[earlier])
        .await
        .map_err(|e| format!("record_usage failed: {e}"))?;
    let totals = store
        .usage(&record.id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("usage answered None for a stored key")?;
    ensure!(
        totals.requests == 7,
        "requests add up to {}, expected 7",
        totals.requests
    );
    ensure!(
        totals.rejected == Rejections::from_counts([1, 0, 2, 0, 3]),
        "rejections are {:?}",
        totals.rejected
    );
    ensure!(
        totals.last_used_at == Some(at_ms(1_800_000_000_200)) && totals.last_used_ip == Some(ip_b),
        "the latest use should win: got {:?} from {:?}",
        totals.last_used_at,
        totals.last_used_ip
    );
    Ok(())
}

async fn usage_batch_agrees_with_usage(usage: Usage<'_>) -> Outcome {
    let (used, unused) = (usage.known().await?, usage.known().await?);
    let store = usage.store;
    let mut delta = UsageDelta::new(used.id);
    delta.requests = 3;
    delta.rejected = Rejections::from_counts([0, 1, 0, 0, 2]);
    delta.last_used_at = Some(at_ms(1_800_000_000_300));
    delta.last_used_ip = "203.0.113.4".parse().ok();
    store
        .record_usage(&[delta])
        .await
        .map_err(|e| format!("record_usage failed: {e}"))?;
    let stranger = KeyId::generate();
    let ids = [unused.id, stranger, used.id, used.id];
    let batch = store
        .usage_batch(&ids)
        .await
        .map_err(|e| format!("usage_batch failed: {e}"))?;
    let mut one_by_one = Vec::new();
    for id in &ids {
        one_by_one.push(store.usage(id).await.map_err(|e| e.to_string())?);
    }
    ensure!(
        batch == one_by_one,
        "usage_batch answered {batch:?}, usage one by one {one_by_one:?}"
    );
    ensure!(batch[1].is_none(), "an unknown id has usage {:?}", batch[1]);
    Ok(())
}

async fn answers_now_agree(store: &dyn KeyStore) -> Outcome {
    let Some(fast) = store.fast_lookup(Seal::new()) else {
        return Ok(());
    };
    let record = sample_record("acct_1");
    insert(store, &record).await?;
    let stranger = sample_record("acct_1");
    for hash in [record.hash, stranger.hash] {
        if let Some(now) = fast.find_stored_now(&hash) {
            let now = now.map_err(|e| e.to_string())?;
            let later = store.find_by_hash(&hash).await.map_err(|e| e.to_string())?;
            ensure!(
                now.as_ref().map(|stored| stored.record()) == later.as_deref().cloned(),
                "the in-memory answer was {now:?} where find_by_hash answered {later:?}"
            );
        }
    }
    store
        .revoke(&record.id, at_ms(7))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(now) = fast.find_stored_now(&record.hash) {
        let now = now.map_err(|e| e.to_string())?;
        ensure!(
            now.and_then(|stored| stored.revoked_at()).is_some(),
            "the in-memory answer did not see a revocation"
        );
    }
    Ok(())
}

async fn concurrency_loses_nothing(store: Arc<dyn KeyStore>) -> Outcome {
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                let record = sample_record(&format!("acct_{task}"));
                store
                    .insert(record.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                store
                    .revoke(&record.id, at_ms(9))
                    .await
                    .map_err(|e| e.to_string())?;
                ids.push(record);
            }
            Ok::<_, String>(ids)
        });
    }
    // Run them interleaved on the caller's runtime, without requiring a spawner.
    let results = join_all(tasks).await;
    for (task, result) in results.into_iter().enumerate() {
        let records = result?;
        let listed = store
            .list_by_owner(&format!("acct_{task}"))
            .await
            .map_err(|e| e.to_string())?;
        ensure!(
            listed.len() == records.len(),
            "owner acct_{task} lists {} of {} keys",
            listed.len(),
            records.len()
        );
        for record in records {
            let found = store
                .find_by_hash(&record.hash)
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                found.is_some_and(|r| r.revoked_at.is_some()),
                "a concurrently revoked key is not revoked"
            );
        }
    }
    Ok(())
}

/// Eight updates race one revocation, over many rounds: an update the store
/// reports as refused (it answered with the record revoked) must not have
/// been applied, and one it reports as applied answers with its change.
async fn update_racing_revoke_is_reported_truly(store: &dyn KeyStore) -> Outcome {
    const ROUNDS: usize = 50;
    const UPDATES: usize = 8;
    for round in 0..ROUNDS {
        let record = sample_record("acct_race");
        insert(store, &record).await?;
        let id = record.id;
        let mut updates: Vec<_> = (0..UPDATES)
            .map(|i| {
                let change = StoreUpdate {
                    name: Some(format!("update {i}")),
                    ..StoreUpdate::default()
                };
                async move { store.update(&id, &change).await }
            })
            .collect();
        // The revocation starts in the middle of the updates.
        let later = updates.split_off(UPDATES / 2);
        let revoke = async { store.revoke(&id, at_ms(1_767_225_700_000)).await };
        let (before, (revoked, after)) =
            futures_join(join_all(updates), futures_join(revoke, join_all(later))).await;
        revoked.map_err(|e| format!("revoke failed: {e}"))?;
        let finally = store
            .get(&id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the raced record is gone")?;
        for (i, answer) in before.into_iter().chain(after).enumerate() {
            let answer = answer
                .map_err(|e| format!("update failed: {e}"))?
                .ok_or("update answered None for a stored key")?;
            let name = format!("update {i}");
            if answer.revoked_at.is_some() {
                ensure!(
                    finally.name != name,
                    "round {round}: {name} was reported refused (the record came back revoked) \
                     but the stored record carries it"
                );
            } else {
                ensure!(
                    answer.name == name,
                    "round {round}: {name} was reported applied, but the answer is named {:?}",
                    answer.name
                );
            }
        }
    }
    Ok(())
}

/// Polls two futures together until both have finished.
async fn futures_join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(|cx| {
        if out_a.is_none() {
            if let std::task::Poll::Ready(value) = a.as_mut().poll(cx) {
                out_a = Some(value);
            }
        }
        if out_b.is_none() {
            if let std::task::Poll::Ready(value) = b.as_mut().poll(cx) {
                out_b = Some(value);
            }
        }
        match (out_a.take(), out_b.take()) {
            (Some(a), Some(b)) => std::task::Poll::Ready((a, b)),
            (a, b) => {
                out_a = a;
                out_b = b;
                std::task::Poll::Pending
            }
        }
    })
    .await
}

/// Polls all futures together until each has finished.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Adds a check's failure, if it failed, to `failures`.
fn note(failures: &mut Vec<Failure>, check: &'static str, outcome: Outcome) {
    if let Err(problem) = outcome {
        failures.push(Failure { check, problem });
    }
}

/// Runs every check, each on a fresh store from `fresh`, and reports all
/// failures.
pub async fn run<S, F, Fut>(mut fresh: F) -> Result<(), Failures>
where
    S: KeyStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    let mut failures = Vec::new();
    macro_rules! check {
        ($name:ident) => {{
            let store: Arc<dyn KeyStore> = Arc::new(fresh().await);
            note(&mut failures, stringify!($name), $name(&*store).await);
        }};
    }
    check!(round_trip);
    check!(unknown_lookups);
    check!(duplicates_conflict);
    check!(lists_in_insertion_order);
    check!(pages_follow_the_list);
    check!(counts_active_keys);
    check!(update_changes_what_it_says);
    check!(update_changes_scopes);
    check!(update_never_lengthens_expiry);
    check!(revocation_is_final);
    macro_rules! check_usage {
        ($name:ident) => {{
            let store: Arc<dyn KeyStore> = Arc::new(fresh().await);
            // A store that keeps no usage is checked by `run_usage`, on the
            // usage store it is used with.
            if let Some(usage) = store.usage_store() {
                let usage = Usage {
                    store: usage,
                    keys: Some(&*store),
                };
                note(&mut failures, stringify!($name), $name(usage).await);
            }
        }};
    }
    check_usage!(usage_adds_up);
    check_usage!(usage_batch_agrees_with_usage);
    macro_rules! check_audit {
        ($name:ident) => {{
            let store: Arc<dyn KeyStore> = Arc::new(fresh().await);
            // A store that keeps no audit trail is checked by `run_audit`,
            // on the audit store it is used with.
            if let Some(audit) = store.audit_store() {
                note(&mut failures, stringify!($name), $name(audit).await);
            }
        }};
    }
    check_audit!(audit_keeps_every_field);
    check_audit!(audit_lists_in_append_order);
    check!(answers_now_agree);
    check!(update_racing_revoke_is_reported_truly);
    let store: Arc<dyn KeyStore> = Arc::new(fresh().await);
    note(
        &mut failures,
        "concurrency_loses_nothing",
        concurrency_loses_nothing(store).await,
    );
    Failures::outcome(failures)
}

/// Runs the usage checks against a [`UsageStore`] kept apart from any key
/// store, each on a fresh one from `fresh`. (A key store that keeps usage
/// itself, [`KeyStore::usage_store`], has them run by [`run`].)
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tm_auth::store::{conformance, MemoryUsageStore};
///
/// conformance::run_usage(|| async { MemoryUsageStore::new() }).await.unwrap();
/// # }
/// ```
pub async fn run_usage<U, F, Fut>(mut fresh: F) -> Result<(), Failures>
where
    U: UsageStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = U>,
{
    let mut failures = Vec::new();
    macro_rules! check {
        ($name:ident) => {{
            let store = fresh().await;
            let usage = Usage {
                store: &store,
                keys: None,
            };
            note(&mut failures, stringify!($name), $name(usage).await);
        }};
    }
    check!(usage_adds_up);
    check!(usage_batch_agrees_with_usage);
    Failures::outcome(failures)
}

/// Runs the audit checks against an [`AuditStore`] kept apart from any key
/// store, each on a fresh one from `fresh`. (A key store that keeps its
/// audit trail itself, [`KeyStore::audit_store`], has them run by [`run`].)
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tm_auth::store::{conformance, MemoryAuditStore};
///
/// conformance::run_audit(|| async { MemoryAuditStore::new() }).await.unwrap();
/// # }
/// ```
pub async fn run_audit<A, F, Fut>(mut fresh: F) -> Result<(), Failures>
where
    A: AuditStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = A>,
{
    let mut failures = Vec::new();
    macro_rules! check {
        ($name:ident) => {{
            let store = fresh().await;
            note(&mut failures, stringify!($name), $name(&store).await);
        }};
    }
    check!(audit_keeps_every_field);
    check!(audit_lists_in_append_order);
    Failures::outcome(failures)
}
