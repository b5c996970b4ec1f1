//! The audit trail: one [`AuditEvent`] for every management action on a
//! key — create, update, rotate, revoke, and each attempt the manager
//! refused — saying who did it, from where, when, and what changed.
//!
//! Events are append-only: nothing in this crate edits or deletes one.
//! They never hold a key or its hash. Read them with
//! [`KeyManager::audit`](crate::KeyManager::audit); say who acts with
//! [`KeyManager::acting`](crate::KeyManager::acting).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tm_auth::audit::{Actor, AuditAction, AuditQuery};
//! use tm_auth::{KeyManager, KeyUpdate, MemoryStore, NewKey};
//!
//! let manager = KeyManager::new(MemoryStore::new());
//! let alice = manager.acting(Actor::new("alice@example.com")?);
//! let created = alice.create(NewKey::new("acct_42", "Zapier")).await?;
//! alice
//!     .update(&created.record.id, KeyUpdate::new().scopes(["emails:verify"]))
//!     .await?;
//!
//! let log = manager.audit("acct_42", AuditQuery::first(100)).await?;
//! let actions: Vec<_> = log.events.iter().map(|e| e.event.action).collect();
//! assert_eq!(actions, [AuditAction::Create, AuditAction::Update]);
//! assert_eq!(log.events[1].event.actor.as_deref(), Some("alice@example.com"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::key::KeyId;
use crate::record::{validate_owner, KeyRecord, TextError};

/// Most events one page may hold.
pub const MAX_AUDIT_PAGE: usize = 1_000;

/// An event's place in its store's log: events of one store are numbered
/// in the order the store appended them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct AuditId(pub u64);

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What was done, or tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum AuditAction {
    /// A key was created.
    Create,
    /// A key's name, allowlist, scopes or rate limit was edited.
    Update,
    /// A key was replaced by a new one.
    Rotate,
    /// A key was revoked.
    Revoke,
}

impl AuditAction {
    /// `create`, `update`, `rotate` or `revoke`: the stable text stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Rotate => "rotate",
            AuditAction::Revoke => "revoke",
        }
    }

    /// The action named by [`as_str`](AuditAction::as_str).
    pub fn parse(text: &str) -> Option<AuditAction> {
        Some(match text {
            "create" => AuditAction::Create,
            "update" => AuditAction::Update,
            "rotate" => AuditAction::Rotate,
            "revoke" => AuditAction::Revoke,
            _ => return None,
        })
    }
}

/// Whether the action took place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditOutcome {
    /// It did.
    Done,
    /// The manager refused it; nothing changed.
    Refused {
        /// A stable code: `api_key_revoked`, `api_key_expired`,
        /// `too_many_keys`, `invalid_name`, `invalid_allowlist`,
        /// `invalid_scope` or `invalid_rate_limit`.
        reason: String,
    },
}

impl AuditOutcome {
    /// The refusal's code, or `None` when the action took place.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            AuditOutcome::Done => None,
            AuditOutcome::Refused { reason } => Some(reason),
        }
    }
}

/// A field an action changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum AuditField {
    /// The key's name.
    Name,
    /// The IP allowlist (networks; none: any address).
    AllowedIps,
    /// The scopes (none: unrestricted).
    Scopes,
    /// The rate limit, as `requests/window_ms` (none: no limit).
    RateLimit,
    /// The expiry, in milliseconds since the Unix epoch (none: never).
    ExpiresAt,
    /// Where the key stands: `active`, `expired` or `revoked`.
    Status,
}

impl AuditField {
    /// The stable text stores keep, e.g. `allowed_ips`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditField::Name => "name",
            AuditField::AllowedIps => "allowed_ips",
            AuditField::Scopes => "scopes",
            AuditField::RateLimit => "rate_limit",
            AuditField::ExpiresAt => "expires_at",
            AuditField::Status => "status",
        }
    }

    /// The field named by [`as_str`](AuditField::as_str).
    pub fn parse(text: &str) -> Option<AuditField> {
        Some(match text {
            "name" => AuditField::Name,
            "allowed_ips" => AuditField::AllowedIps,
            "scopes" => AuditField::Scopes,
            "rate_limit" => AuditField::RateLimit,
            "expires_at" => AuditField::ExpiresAt,
            "status" => AuditField::Status,
            _ => return None,
        })
    }
}

/// One field's value before and after an action, as text, one item per
/// element (a name is one item; an empty list is no items).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AuditChange {
    /// Which field.
    pub field: AuditField,
    /// Its value before.
    pub before: Vec<String>,
    /// Its value after (for a refused action: what was asked for).
    pub after: Vec<String>,
}

/// Who acted: a name the caller gives (the signed-in user, a service
/// account) and, when known, the address of the management call.
///
/// ```
/// use tm_auth::audit::Actor;
///
/// let actor = Actor::new("alice@example.com")?.client_ip("203.0.113.9".parse().ok());
/// assert_eq!(actor.name(), "alice@example.com");
/// assert!(Actor::new("").is_err());
/// # Ok::<(), tm_auth::TextError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    name: String,
    client_ip: Option<IpAddr>,
}

impl Actor {
    /// An actor named `name`: 1 to 100 characters, no control characters
    /// (the rules for an owner id).
    pub fn new(name: impl Into<String>) -> Result<Actor, TextError> {
        let name = name.into();
        validate_owner(&name)?;
        Ok(Actor {
            name,
            client_ip: None,
        })
    }

    /// The address the management call came from, if known.
    pub fn client_ip(mut self, ip: Option<IpAddr>) -> Actor {
        self.client_ip = ip;
        self
    }

    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address of the management call, if known.
    pub fn ip(&self) -> Option<IpAddr> {
        self.client_ip
    }
}

/// What happened to a key, by whom, from where and when. Never holds the
/// key or its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When, by the manager's clock.
    pub at: SystemTime,
    /// The account whose key it is.
    pub owner: String,
    /// The key acted on; `None` for a creation that was refused.
    pub key_id: Option<KeyId>,
    /// What was done or tried.
    pub action: AuditAction,
    /// Whether it took place.
    pub outcome: AuditOutcome,
    /// Who acted, as the caller named them; `None` when not said.
    pub actor: Option<String>,
    /// The address of the management call, when known.
    pub client_ip: Option<IpAddr>,
    /// Each changed field, before and after. A creation lists the key's
    /// starting values; a rotation, the old key's new expiry.
    pub changes: Vec<AuditChange>,
    /// For a rotation, the key that replaces this one.
    pub new_key_id: Option<KeyId>,
}

/// An event as its store keeps it: numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its place in the store's log.
    pub id: AuditId,
    /// What happened.
    pub event: AuditEvent,
}

/// Which page of an owner's events to read: up to `limit` (1 to
/// [`MAX_AUDIT_PAGE`]), oldest first, after the event `after`, of one key
/// only when `key` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuery {
    /// Start after this event (a previous page's [`AuditPage::next`]).
    pub after: Option<AuditId>,
    /// Most events to return.
    pub limit: usize,
    /// Only this key's events.
    pub key: Option<KeyId>,
}

impl AuditQuery {
    /// The first `limit` events of the owner.
    pub fn first(limit: usize) -> AuditQuery {
        AuditQuery {
            after: None,
            limit,
            key: None,
        }
    }

    /// Only `key`'s events.
    pub fn key(mut self, key: KeyId) -> AuditQuery {
        self.key = Some(key);
        self
    }

    /// Start after `event`.
    pub fn after(mut self, event: AuditId) -> AuditQuery {
        self.after = Some(event);
        self
    }
}

/// One page of an owner's events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditPage {
    /// The events on this page.
    pub events: Vec<AuditEntry>,
    /// The cursor for the next page when more events follow.
    pub next: Option<AuditId>,
}

/// A field's value as audit text.
pub(crate) fn field_value(record: &KeyRecord, field: AuditField, now: SystemTime) -> Vec<String> {
    match field {
        AuditField::Name => vec![record.name.clone()],
        AuditField::AllowedIps => record.allowed_ips.iter().map(|n| n.to_string()).collect(),
        AuditField::Scopes => record.scopes.iter().map(|s| s.to_string()).collect(),
        AuditField::RateLimit => rate_limit_items(record.rate_limit),
        AuditField::ExpiresAt => record
            .expires_at
            .map(|at| vec![crate::clock::millis_since_epoch(at).to_string()])
            .unwrap_or_default(),
        AuditField::Status => vec![match record.status_at(now) {
            crate::KeyStatus::Active => "active".to_owned(),
            crate::KeyStatus::Expired => "expired".to_owned(),
            crate::KeyStatus::Revoked => "revoked".to_owned(),
        }],
    }
}

/// A rate limit as audit text: `requests/window_ms`, none for no limit.
pub(crate) fn rate_limit_items(limit: Option<crate::RateLimit>) -> Vec<String> {
    limit
        .map(|l| vec![format!("{}/{}ms", l.requests(), l.window_ms())])
        .unwrap_or_default()
}

/// The fields that differ between `before` and `after`, among `fields`.
pub(crate) fn changes(
    before: &KeyRecord,
    after: &KeyRecord,
    fields: &[AuditField],
    now: SystemTime,
) -> Vec<AuditChange> {
    fields
        .iter()
        .filter_map(|&field| {
            let (was, is) = (
                field_value(before, field, now),
                field_value(after, field, now),
            );
            (was != is).then_some(AuditChange {
                field,
                before: was,
                after: is,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip() {
        for action in [
            AuditAction::Create,
            AuditAction::Update,
            AuditAction::Rotate,
            AuditAction::Revoke,
        ] {
            assert_eq!(AuditAction::parse(action.as_str()), Some(action));
        }
        for field in [
            AuditField::Name,
            AuditField::AllowedIps,
            AuditField::Scopes,
            AuditField::RateLimit,
            AuditField::ExpiresAt,
            AuditField::Status,
        ] {
            assert_eq!(AuditField::parse(field.as_str()), Some(field));
        }
        assert_eq!(AuditAction::parse("delete"), None);
    }
}
