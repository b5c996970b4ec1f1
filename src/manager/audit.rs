//! Reading the audit trail, acting as someone, and where events go.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{CreatedKey, KeyManager};
use crate::audit::{Actor, AuditEntry, AuditEvent, AuditId, AuditPage, AuditQuery, MAX_AUDIT_PAGE};
use crate::error::ManagerError;
use crate::key::KeyId;
use crate::record::{KeyRecord, KeyUpdate, NewKey};
use crate::store::{AuditStore, KeyStore, StoreError};

/// A [`KeyManager`] acting for someone: the same actions, each audit event
/// naming the [`Actor`]. Made by [`KeyManager::acting`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tm_auth::audit::{Actor, AuditQuery};
/// use tm_auth::{KeyManager, MemoryStore, NewKey};
///
/// let manager = KeyManager::new(MemoryStore::new());
/// let ops = Actor::new("ops@example.com")?.client_ip("198.51.100.7".parse().ok());
/// let created = manager.acting(ops).create(NewKey::new("acct_42", "CI")).await?;
///
/// let log = manager.audit("acct_42", AuditQuery::first(10).key(created.record.id)).await?;
/// assert_eq!(log.events[0].event.actor.as_deref(), Some("ops@example.com"));
/// assert_eq!(log.events[0].event.client_ip, "198.51.100.7".parse().ok());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Acting<'a> {
    manager: &'a KeyManager,
    actor: Actor,
}

impl Acting<'_> {
    /// [`KeyManager::create`], as the actor.
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey, ManagerError> {
        self.manager.create_by(Some(&self.actor), new).await
    }

    /// [`KeyManager::update`], as the actor.
    pub async fn update(&self, id: &KeyId, update: KeyUpdate) -> Result<KeyRecord, ManagerError> {
        self.manager.update_by(Some(&self.actor), id, update).await
    }

    /// [`KeyManager::revoke`], as the actor.
    pub async fn revoke(&self, id: &KeyId) -> Result<KeyRecord, ManagerError> {
        self.manager.revoke_by(Some(&self.actor), id).await
    }

    /// [`KeyManager::rotate`], as the actor.
    pub async fn rotate(&self, id: &KeyId, grace: Duration) -> Result<CreatedKey, ManagerError> {
        self.manager.rotate_by(Some(&self.actor), id, grace).await
    }

    /// Who acts.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

impl KeyManager {
    /// This manager's actions on behalf of `actor`, whom their audit events
    /// name.
    pub fn acting(&self, actor: Actor) -> Acting<'_> {
        Acting {
            manager: self,
            actor,
        }
    }

    /// One page of `owner`'s audit events, oldest first (see
    /// [`AuditQuery`]); its [`next`](AuditPage::next) is the cursor for the
    /// page after it. With [`AuditQuery::key`], only the events of that key
    /// (including the rotation that created it). A limit of 0 or over
    /// [`MAX_AUDIT_PAGE`] is refused with [`ManagerError::InvalidPage`].
    pub async fn audit(&self, owner: &str, query: AuditQuery) -> Result<AuditPage, ManagerError> {
        if query.limit == 0 || query.limit > MAX_AUDIT_PAGE {
            return Err(ManagerError::InvalidPage {
                max: MAX_AUDIT_PAGE,
                given: query.limit,
            });
        }
        let mut events = self
            .bounded(
                None,
                self.inner
                    .audit
                    .list(owner, query.key, query.after, query.limit + 1),
            )
            .await?;
        let next = if events.len() > query.limit {
            events.truncate(query.limit);
            events.last().map(|entry| entry.id)
        } else {
            None
        };
        Ok(AuditPage { events, next })
    }

    /// Where this manager keeps the audit trail.
    pub fn audit_store(&self) -> &dyn AuditStore {
        &*self.inner.audit
    }
}

/// The audit store a key store keeps beside its keys
/// ([`KeyStore::audit_store`]), held through the key store.
pub(super) struct KeyStoreAudit(pub(super) Arc<dyn KeyStore>);

impl KeyStoreAudit {
    fn get(&self) -> Result<&dyn AuditStore, StoreError> {
        self.0
            .audit_store()
            .ok_or_else(|| StoreError::backend("the key store no longer keeps an audit trail"))
    }
}

#[async_trait]
impl AuditStore for KeyStoreAudit {
    async fn append(&self, event: &AuditEvent) -> Result<AuditId, StoreError> {
        self.get()?.append(event).await
    }

    async fn list(
        &self,
        owner: &str,
        key: Option<KeyId>,
        after: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.get()?.list(owner, key, after, limit).await
    }
}

/// Writes `event` to `tracing` with the stable field names
/// [`KeyManagerBuilder::audit_to_tracing`](crate::KeyManagerBuilder::audit_to_tracing)
/// lists; `id` is `None` when the store did not keep it.
pub(super) fn trace(id: Option<AuditId>, event: &AuditEvent) {
    let changed = event
        .changes
        .iter()
        .map(|c| c.field.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let key_id = event.key_id.map(|id| id.to_string());
    let new_key_id = event.new_key_id.map(|id| id.to_string());
    tracing::info!(
        target: "tm_auth::audit",
        audit_id = id.map(|id| id.0),
        action = event.action.as_str(),
        outcome = if event.outcome.refusal().is_some() { "refused" } else { "done" },
        reason = event.outcome.refusal(),
        owner = %event.owner,
        key_id = key_id.as_deref(),
        new_key_id = new_key_id.as_deref(),
        actor = event.actor.as_deref(),
        client_ip = event.client_ip.map(|ip| ip.to_string()).as_deref(),
        changed = %changed,
        "API key audit event"
    );
}
