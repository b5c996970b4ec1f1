//! Where audit events are kept: the [`AuditStore`] trait and the in-memory
//! [`MemoryAuditStore`].

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreError;
use crate::audit::{AuditEntry, AuditEvent, AuditId};
use crate::key::KeyId;

/// An append-only log of [`AuditEvent`]s: two methods, and no way to edit
/// or delete an event.
///
/// The rules every implementation keeps, which the
/// [conformance kit](crate::store::conformance) checks:
///
/// - `append` numbers events in the order it applies them: a later
///   append gets a larger [`AuditId`].
/// - `list` returns an owner's events in that order, only that owner's,
///   only `key`'s when it is given, starting after `after`.
///
/// A store that keeps events itself answers
/// [`KeyStore::audit_store`](crate::KeyStore::audit_store); otherwise the
/// manager keeps them in a [`MemoryAuditStore`] of its own, or in the one
/// given to [`KeyManagerBuilder::audit_store`](crate::KeyManagerBuilder::audit_store).
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends `event` and returns its number.
    async fn append(&self, event: &AuditEvent) -> Result<AuditId, StoreError>;

    /// Up to `limit` of `owner`'s events, oldest first, numbered after
    /// `after`; when `key` is given, only the events about that key (its
    /// `key_id`) or naming it as the new key of a rotation (`new_key_id`).
    async fn list(
        &self,
        owner: &str,
        key: Option<KeyId>,
        after: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Events an in-memory log keeps per owner unless told otherwise.
pub const DEFAULT_AUDIT_EVENTS_PER_OWNER: usize = 1_000;

/// Audit events in memory, at most a fixed number per owner: when an
/// owner's log is full, its oldest event is dropped to make room. Events
/// are lost when the process ends; keep them in a SQL store, or forward
/// them to `tracing`, where that matters.
#[derive(Debug)]
pub struct MemoryAuditStore {
    per_owner: usize,
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    next: u64,
    owners: HashMap<String, VecDeque<AuditEntry>>,
}

impl Default for MemoryAuditStore {
    fn default() -> MemoryAuditStore {
        MemoryAuditStore::new()
    }
}

impl MemoryAuditStore {
    /// A log keeping [`DEFAULT_AUDIT_EVENTS_PER_OWNER`] events per owner.
    pub fn new() -> MemoryAuditStore {
        MemoryAuditStore::with_capacity_per_owner(DEFAULT_AUDIT_EVENTS_PER_OWNER)
    }

    /// A log keeping the latest `events` events of each owner (at least 1).
    pub fn with_capacity_per_owner(events: usize) -> MemoryAuditStore {
        MemoryAuditStore {
            per_owner: events.max(1),
            log: Mutex::new(Log::default()),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // Every change leaves the log whole before it could panic.
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl AuditStore for MemoryAuditStore {
    async fn append(&self, event: &AuditEvent) -> Result<AuditId, StoreError> {
        let mut log = self.log();
        log.next += 1;
        let id = AuditId(log.next);
        let per_owner = self.per_owner;
        let events = log.owners.entry(event.owner.clone()).or_default();
        if events.len() >= per_owner {
            events.pop_front();
        }
        events.push_back(AuditEntry {
            id,
            event: event.clone(),
        });
        Ok(id)
    }

    async fn list(
        &self,
        owner: &str,
        key: Option<KeyId>,
        after: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let log = self.log();
        let Some(events) = log.owners.get(owner) else {
            return Ok(Vec::new());
        };
        let start = after.map_or(0, |after| events.partition_point(|e| e.id <= after));
        Ok(events
            .range(start..)
            .filter(|e| key.is_none() || e.event.key_id == key || e.event.new_key_id == key)
            .take(limit)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditAction, AuditOutcome};
    use std::time::SystemTime;

    fn event(owner: &str, key: u128) -> AuditEvent {
        AuditEvent {
            at: SystemTime::UNIX_EPOCH,
            owner: owner.into(),
            key_id: Some(KeyId::from_u128(key)),
            action: AuditAction::Update,
            outcome: AuditOutcome::Done,
            actor: None,
            client_ip: None,
            changes: Vec::new(),
            new_key_id: None,
        }
    }

    #[tokio::test]
    async fn a_full_owner_log_drops_its_oldest_event_only() {
        let store = MemoryAuditStore::with_capacity_per_owner(3);
        for i in 0..5 {
            store.append(&event("a", i)).await.unwrap();
        }
        store.append(&event("b", 9)).await.unwrap();
        let a = store.list("a", None, None, 10).await.unwrap();
        let keys: Vec<_> = a.iter().map(|e| e.event.key_id.unwrap()).collect();
        assert_eq!(
            keys,
            [2, 3, 4].map(KeyId::from_u128),
            "the two oldest dropped"
        );
        assert_eq!(store.list("b", None, None, 10).await.unwrap().len(), 1);
        let after = store.list("a", None, Some(a[0].id), 10).await.unwrap();
        assert_eq!(after.len(), 2);
        let one = store
            .list("a", Some(KeyId::from_u128(3)), None, 10)
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
    }
}
