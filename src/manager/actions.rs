//! The management actions — create, update, revoke, rotate — each written
//! once, taking the actor the audit event names.
//!
//! Every action on an owner's keys runs under that owner's lock, from the
//! read of the key as it was to the audit event's append, so the events of
//! one manager (and its clones) are appended in the order their changes
//! were applied, each with the right before and after.

use std::time::Duration;

use super::{CreatedKey, KeyManager};
use crate::audit::{Actor, AuditEvent};
use crate::audit::{AuditAction, AuditChange, AuditField, AuditOutcome};
use crate::error::ManagerError;
use crate::key::{KeyId, TmKey};
use crate::record::{validate_name, validate_owner, KeyRecord, KeyStatus, KeyUpdate, NewKey};
use crate::scope::{scope_set, Scope};
use crate::store::{StoreError, StoreUpdate};

/// The fields an update can change, in the order events list them.
const EDITABLE: [AuditField; 4] = [
    AuditField::Name,
    AuditField::AllowedIps,
    AuditField::Scopes,
    AuditField::RateLimit,
];

/// The code an audit event gives a refusal, for the errors that are one
/// (the others — not found, a failed store — change nothing anyone owns).
fn refusal(err: &ManagerError) -> Option<&'static str> {
    Some(match err {
        ManagerError::InvalidName(_) => "invalid_name",
        ManagerError::InvalidAllowlist { .. } => "invalid_allowlist",
        ManagerError::InvalidScope(_) => "invalid_scope",
        ManagerError::InvalidRateLimit(_) => "invalid_rate_limit",
        ManagerError::TooManyKeys { .. } => "too_many_keys",
        ManagerError::Revoked => "api_key_revoked",
        ManagerError::Expired => "api_key_expired",
        _ => return None,
    })
}

/// What an event records of a value that was asked for: at most 64 items
/// of at most 100 characters each, so a refused request cannot write an
/// unbounded event.
fn asked<I: IntoIterator<Item = String>>(items: I) -> Vec<String> {
    items
        .into_iter()
        .take(64)
        .map(|item| item.chars().take(100).collect())
        .collect()
}

/// A key's checked starting values.
struct Checked {
    name: String,
    scopes: Vec<Scope>,
}

impl KeyManager {
    /// Creates a key. The returned [`CreatedKey::key`] is the only time the
    /// key is seen; the store keeps its hash.
    ///
    /// Refused with [`ManagerError::TooManyKeys`] when the owner already
    /// has as many active keys as [`KeyLimits`](crate::KeyLimits) allows.
    /// Appends a `create` audit event, or a refused one, naming no actor
    /// (see [`acting`](KeyManager::acting) to name one).
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey, ManagerError> {
        self.create_by(None, new).await
    }

    /// Changes the name, IP allowlist, scopes and/or rate limit. A revoked
    /// key cannot be changed. A narrowed allowlist or set of scopes applies
    /// from the key's next request. Appends an `update` audit event with
    /// each changed field before and after, or a refused one.
    pub async fn update(&self, id: &KeyId, update: KeyUpdate) -> Result<KeyRecord, ManagerError> {
        self.update_by(None, id, update).await
    }

    /// Revokes a key: immediately (the next verification fails), irreversibly
    /// and idempotently (a second call returns the same `revoked_at`).
    /// Appends a `revoke` audit event.
    pub async fn revoke(&self, id: &KeyId) -> Result<KeyRecord, ManagerError> {
        self.revoke_by(None, id).await
    }

    /// Replaces a key: a new key with the same owner, name, environment,
    /// allowlist, scopes, rate limit and expiry, while the old one keeps
    /// working for `grace` (until the earlier of its own expiry and now +
    /// `grace`; with `Duration::ZERO` it stops at once).
    ///
    /// Either completes or leaves the old key as it was: a new key created
    /// before a failure is revoked before the error is returned. Appends a
    /// `rotate` audit event on the old key naming the new one, or a
    /// refused one.
    pub async fn rotate(&self, id: &KeyId, grace: Duration) -> Result<CreatedKey, ManagerError> {
        self.rotate_by(None, id, grace).await
    }

    pub(super) async fn create_by(
        &self,
        actor: Option<&Actor>,
        new: NewKey,
    ) -> Result<CreatedKey, ManagerError> {
        validate_owner(&new.owner).map_err(ManagerError::InvalidOwner)?;
        let _owner = self.inner.owner_locks.lock(&new.owner).await;
        let result = match self.check_new(&new) {
            Ok(checked) => self.insert_new(&new, checked, false).await,
            Err(err) => Err(err),
        };
        match &result {
            Ok(created) => {
                // A new key's starting values, each field that has one.
                let changes = [
                    AuditField::Name,
                    AuditField::AllowedIps,
                    AuditField::Scopes,
                    AuditField::RateLimit,
                    AuditField::ExpiresAt,
                ]
                .into_iter()
                .map(|field| AuditChange {
                    field,
                    before: Vec::new(),
                    after: crate::audit::field_value(&created.record, field, self.now()),
                })
                .filter(|change| !change.after.is_empty())
                .collect();
                self.audit_event(
                    actor,
                    &new.owner,
                    Some(created.record.id),
                    AuditAction::Create,
                    AuditOutcome::Done,
                    changes,
                    None,
                )
                .await;
            }
            Err(err) => {
                if let Some(reason) = refusal(err) {
                    let changes = vec![AuditChange {
                        field: AuditField::Name,
                        before: Vec::new(),
                        after: asked([new.name.clone()]),
                    }];
                    self.refused(
                        actor,
                        &new.owner,
                        None,
                        AuditAction::Create,
                        reason,
                        changes,
                    )
                    .await;
                }
            }
        }
        result
    }

    /// Checks what a new key asks for.
    fn check_new(&self, new: &NewKey) -> Result<Checked, ManagerError> {
        let name = validate_name(&new.name).map_err(ManagerError::InvalidName)?;
        self.check_allowlist(new.allowed_ips.len())?;
        let scopes = scope_set(&new.scopes)?;
        Ok(Checked { name, scopes })
    }

    /// Creates a key once the owner has room for it, with the owner's lock
    /// held. `replacing` says the new key takes the place of an active key
    /// that ends as it starts (a rotation with no grace period), so it
    /// needs no room of its own.
    async fn insert_new(
        &self,
        new: &NewKey,
        checked: Checked,
        replacing: bool,
    ) -> Result<CreatedKey, ManagerError> {
        let limit = self.inner.limits.active_keys();
        let active = self
            .bounded(None, self.inner.store.count_active(&new.owner, self.now()))
            .await?;
        let room = if replacing {
            limit.saturating_add(1)
        } else {
            limit
        };
        if active >= room {
            return Err(ManagerError::TooManyKeys { limit });
        }
        // A store may refuse a fresh key as a duplicate (ids are random, and
        // a store of your own may index part of them); another draw is then
        // as good as the first.
        let mut attempts = 0;
        let (key, record) = loop {
            let key = TmKey::try_generate(new.environment)?;
            let record = KeyRecord {
                id: KeyId::try_generate()?,
                owner: new.owner.clone(),
                name: checked.name.clone(),
                environment: new.environment,
                hint: key.hint(),
                hash: key.hash(),
                allowed_ips: new.allowed_ips.clone(),
                created_at: self.now(),
                expires_at: new.expires_at,
                revoked_at: None,
                rate_limit: new.rate_limit,
                scopes: checked.scopes.clone(),
            };
            attempts += 1;
            match self
                .bounded(None, self.inner.store.insert(record.clone()))
                .await
            {
                Ok(()) => break (key, record),
                Err(StoreError::Conflict) if attempts < 3 => continue,
                Err(err) => return Err(err.into()),
            }
        };
        tracing::info!(key_id = %record.id, owner = %record.owner, "API key created");
        Ok(CreatedKey { key, record })
    }

    pub(super) async fn update_by(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
        update: KeyUpdate,
    ) -> Result<KeyRecord, ManagerError> {
        let owner = self.get(id).await?.owner;
        let _owner = self.inner.owner_locks.lock(&owner).await;
        // Read again under the lock: the state this change starts from.
        let before = self.get(id).await?;
        let checked = self.check_update(&update);
        let asked_changes = || {
            let mut changes = Vec::new();
            let mut push = |field, after: Vec<String>| {
                changes.push(AuditChange {
                    field,
                    before: crate::audit::field_value(&before, field, self.now()),
                    after: asked(after),
                });
            };
            if let Some(name) = &update.name {
                push(AuditField::Name, vec![name.clone()]);
            }
            if let Some(allowed) = &update.allowed_ips {
                push(
                    AuditField::AllowedIps,
                    allowed.iter().map(ToString::to_string).collect(),
                );
            }
            if let Some(scopes) = &update.scopes {
                push(AuditField::Scopes, scopes.clone());
            }
            if let Some(limit) = update.rate_limit {
                push(AuditField::RateLimit, crate::audit::rate_limit_items(limit));
            }
            changes
        };
        let checked = if before.revoked_at.is_some() {
            Err(ManagerError::Revoked)
        } else {
            checked
        };
        let change = match checked {
            Ok(change) => change,
            Err(err) => {
                if let Some(reason) = refusal(&err) {
                    self.refused(
                        actor,
                        &owner,
                        Some(*id),
                        AuditAction::Update,
                        reason,
                        asked_changes(),
                    )
                    .await;
                }
                return Err(err);
            }
        };
        let record = self
            .bounded(None, self.inner.store.update(id, &change))
            .await?
            .ok_or(ManagerError::NotFound)?;
        if record.revoked_at.is_some() {
            self.refused(
                actor,
                &owner,
                Some(*id),
                AuditAction::Update,
                "api_key_revoked",
                asked_changes(),
            )
            .await;
            return Err(ManagerError::Revoked);
        }
        tracing::info!(key_id = %record.id, "API key updated");
        let changes = crate::audit::changes(&before, &record, &EDITABLE, self.now());
        self.audit_event(
            actor,
            &owner,
            Some(*id),
            AuditAction::Update,
            AuditOutcome::Done,
            changes,
            None,
        )
        .await;
        Ok(record)
    }

    /// Checks an edit and turns it into the store's form.
    fn check_update(&self, update: &KeyUpdate) -> Result<StoreUpdate, ManagerError> {
        let name = match &update.name {
            Some(name) => Some(validate_name(name).map_err(ManagerError::InvalidName)?),
            None => None,
        };
        if let Some(allowed) = &update.allowed_ips {
            self.check_allowlist(allowed.len())?;
        }
        let scopes = match &update.scopes {
            Some(scopes) => Some(scope_set(scopes)?),
            None => None,
        };
        Ok(StoreUpdate {
            name,
            allowed_ips: update.allowed_ips.clone(),
            expires_at: None,
            rate_limit: update.rate_limit,
            scopes,
        })
    }

    pub(super) async fn revoke_by(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
    ) -> Result<KeyRecord, ManagerError> {
        let owner = self.get(id).await?.owner;
        let _owner = self.inner.owner_locks.lock(&owner).await;
        let before = self.get(id).await?;
        let record = self
            .bounded(None, self.inner.store.revoke(id, self.now()))
            .await?
            .ok_or(ManagerError::NotFound)?;
        tracing::info!(key_id = %record.id, "API key revoked");
        let changes = crate::audit::changes(&before, &record, &[AuditField::Status], self.now());
        self.audit_event(
            actor,
            &owner,
            Some(*id),
            AuditAction::Revoke,
            AuditOutcome::Done,
            changes,
            None,
        )
        .await;
        Ok(record)
    }

    pub(super) async fn rotate_by(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
        grace: Duration,
    ) -> Result<CreatedKey, ManagerError> {
        let owner = self.get(id).await?.owner;
        let _owner = self.inner.owner_locks.lock(&owner).await;
        let old = self.get(id).await?;
        let result = self.replace(&old, grace).await;
        match &result {
            Ok((created, after)) => {
                tracing::info!(old_key_id = %id, new_key_id = %created.record.id, "API key rotated");
                let changes =
                    crate::audit::changes(&old, after, &[AuditField::ExpiresAt], self.now());
                self.audit_event(
                    actor,
                    &owner,
                    Some(*id),
                    AuditAction::Rotate,
                    AuditOutcome::Done,
                    changes,
                    Some(created.record.id),
                )
                .await;
            }
            Err(err) => {
                if let Some(reason) = refusal(err) {
                    self.refused(
                        actor,
                        &owner,
                        Some(*id),
                        AuditAction::Rotate,
                        reason,
                        Vec::new(),
                    )
                    .await;
                }
            }
        }
        result.map(|(created, _)| created)
    }

    /// A rotation with the owner's lock held: the new key, and the old
    /// key's record as the rotation left it.
    async fn replace(
        &self,
        old: &KeyRecord,
        grace: Duration,
    ) -> Result<(CreatedKey, KeyRecord), ManagerError> {
        match old.status_at(self.now()) {
            KeyStatus::Revoked => return Err(ManagerError::Revoked),
            KeyStatus::Expired => return Err(ManagerError::Expired),
            KeyStatus::Active => {}
        }
        let mut new = NewKey::new(old.owner.clone(), old.name.clone())
            .environment(old.environment)
            .allowed_ips(old.allowed_ips.iter().copied());
        new.expires_at = old.expires_at;
        new.rate_limit = old.rate_limit;
        let checked = Checked {
            name: old.name.clone(),
            scopes: old.scopes.clone(),
        };
        // With no grace period the old key ends as the new one starts.
        let created = self.insert_new(&new, checked, grace.is_zero()).await?;
        // A grace too long to represent leaves the old expiry as it is.
        let Some(cutoff) = self.now().checked_add(grace) else {
            return Ok((created, old.clone()));
        };
        let change = StoreUpdate {
            expires_at: Some(cutoff),
            ..StoreUpdate::default()
        };
        let outcome = match self
            .bounded(None, self.inner.store.update(&old.id, &change))
            .await
        {
            Ok(Some(record)) if record.revoked_at.is_some() => Err(ManagerError::Revoked),
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(ManagerError::NotFound),
            Err(err) => Err(ManagerError::Store(err)),
        };
        match outcome {
            Ok(after) => Ok((created, after)),
            Err(err) => {
                self.abandon(&created.record.id).await;
                Err(err)
            }
        }
    }

    fn check_allowlist(&self, given: usize) -> Result<(), ManagerError> {
        let limit = self.inner.limits.allowed_ips();
        if given > limit {
            return Err(ManagerError::InvalidAllowlist { limit, given });
        }
        Ok(())
    }

    /// Revokes a key that was created but never handed out.
    async fn abandon(&self, id: &KeyId) {
        if let Err(err) = self
            .bounded(None, self.inner.store.revoke(id, self.now()))
            .await
        {
            // Nobody holds this key's secret, so it cannot be used; say so loudly anyway.
            tracing::error!(key_id = %id, error = %err, "could not revoke a key created by a failed rotation");
        }
    }

    async fn refused(
        &self,
        actor: Option<&Actor>,
        owner: &str,
        key: Option<KeyId>,
        action: AuditAction,
        reason: &'static str,
        changes: Vec<AuditChange>,
    ) {
        let outcome = AuditOutcome::Refused {
            reason: reason.to_owned(),
        };
        self.audit_event(actor, owner, key, action, outcome, changes, None)
            .await;
    }

    /// Appends one event. A failed append does not undo the action, which
    /// has taken place (a revocation must stand): it is logged at `ERROR`
    /// with the event's fields instead.
    #[allow(clippy::too_many_arguments)]
    async fn audit_event(
        &self,
        actor: Option<&Actor>,
        owner: &str,
        key_id: Option<KeyId>,
        action: AuditAction,
        outcome: AuditOutcome,
        changes: Vec<AuditChange>,
        new_key_id: Option<KeyId>,
    ) {
        let event = AuditEvent {
            at: self.now(),
            owner: owner.to_owned(),
            key_id,
            action,
            outcome,
            actor: actor.map(|a| a.name().to_owned()),
            client_ip: actor.and_then(Actor::ip),
            changes,
            new_key_id,
        };
        match self.bounded(None, self.inner.audit.append(&event)).await {
            Ok(id) => {
                if self.inner.audit_to_tracing {
                    super::audit::trace(Some(id), &event);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "tm-auth: an audit event could not be stored");
                super::audit::trace(None, &event);
            }
        }
    }
}
