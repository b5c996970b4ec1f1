//! The audit trail through the manager: one event per action with the
//! right before and after, refused attempts, concurrent edits in the order
//! the store applied them, the in-memory bound, and forwarding to tracing.

mod support;

use std::time::Duration;

use support::Capture;
use tm_auth::audit::{Actor, AuditAction, AuditChange, AuditField, AuditOutcome, AuditQuery};
use tm_auth::store::MemoryAuditStore;
use tm_auth::{KeyLimits, KeyManager, KeyUpdate, MemoryStore, NewKey};

async fn events(manager: &KeyManager, owner: &str) -> Vec<tm_auth::audit::AuditEntry> {
    manager
        .audit(owner, AuditQuery::first(1_000))
        .await
        .unwrap()
        .events
}

fn change(field: AuditField, before: &[&str], after: &[&str]) -> AuditChange {
    AuditChange {
        field,
        before: before.iter().map(|s| s.to_string()).collect(),
        after: after.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn each_action_writes_one_event_with_its_before_and_after() {
    let manager = KeyManager::new(MemoryStore::new());
    let alice = Actor::new("alice@example.com")
        .unwrap()
        .client_ip("203.0.113.9".parse().ok());
    let as_alice = manager.acting(alice);

    let created = as_alice
        .create(
            NewKey::new("acct", "Zapier")
                .allowed_ips(["10.0.0.0/8".parse().unwrap()])
                .scopes(["emails:verify", "lists:read"]),
        )
        .await
        .unwrap();
    let id = created.record.id;
    let log = events(&manager, "acct").await;
    assert_eq!(log.len(), 1, "one event for the creation");
    let event = &log[0].event;
    assert_eq!(event.action, AuditAction::Create);
    assert_eq!(event.outcome, AuditOutcome::Done);
    assert_eq!(event.key_id, Some(id));
    assert_eq!(event.owner, "acct");
    assert_eq!(event.actor.as_deref(), Some("alice@example.com"));
    assert_eq!(event.client_ip, "203.0.113.9".parse().ok());
    assert_eq!(
        event.changes,
        [
            change(AuditField::Name, &[], &["Zapier"]),
            change(AuditField::AllowedIps, &[], &["10.0.0.0/8"]),
            change(AuditField::Scopes, &[], &["emails:verify", "lists:read"]),
        ]
    );

    as_alice
        .update(
            &id,
            KeyUpdate::new()
                .name("Zapier (narrowed)")
                .allowed_ips([])
                .scopes(["lists:read"]),
        )
        .await
        .unwrap();
    // Asking for what is already there changes nothing, and says so.
    manager
        .update(&id, KeyUpdate::new().scopes(["lists:read"]))
        .await
        .unwrap();
    let log = events(&manager, "acct").await;
    assert_eq!(log.len(), 3, "one event per update");
    assert_eq!(
        log[1].event.changes,
        [
            change(AuditField::Name, &["Zapier"], &["Zapier (narrowed)"]),
            change(AuditField::AllowedIps, &["10.0.0.0/8"], &[]),
            change(
                AuditField::Scopes,
                &["emails:verify", "lists:read"],
                &["lists:read"]
            ),
        ]
    );
    assert_eq!(log[2].event.changes, []);
    assert_eq!(log[2].event.actor, None, "no actor named");

    let rotated = as_alice.rotate(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        rotated.record.scopes,
        ["lists:read"],
        "a rotation keeps the scopes"
    );
    let log = events(&manager, "acct").await;
    assert_eq!(log.len(), 4, "a rotation is one event");
    let rotation = &log[3].event;
    assert_eq!(rotation.action, AuditAction::Rotate);
    assert_eq!(rotation.key_id, Some(id));
    assert_eq!(rotation.new_key_id, Some(rotated.record.id));
    assert_eq!(rotation.changes.len(), 1);
    assert_eq!(rotation.changes[0].field, AuditField::ExpiresAt);
    assert!(rotation.changes[0].before.is_empty());

    as_alice.revoke(&rotated.record.id).await.unwrap();
    as_alice.revoke(&rotated.record.id).await.unwrap();
    let log = events(&manager, "acct").await;
    assert_eq!(log.len(), 6, "each revocation call is one event");
    assert_eq!(
        log[4].event.changes,
        [change(AuditField::Status, &["active"], &["revoked"])]
    );
    assert_eq!(log[5].event.changes, [], "the repeat changed nothing");

    // The new key's history starts with the rotation that made it.
    let history = manager
        .audit("acct", AuditQuery::first(100).key(rotated.record.id))
        .await
        .unwrap();
    let actions: Vec<_> = history.events.iter().map(|e| e.event.action).collect();
    assert_eq!(
        actions,
        [
            AuditAction::Rotate,
            AuditAction::Revoke,
            AuditAction::Revoke
        ]
    );
    assert!(events(&manager, "someone_else").await.is_empty());
}

#[tokio::test]
async fn refused_attempts_are_recorded_and_change_nothing() {
    let manager = KeyManager::builder(MemoryStore::new())
        .limits(KeyLimits::new().active_keys_per_owner(1))
        .build();
    let created = manager.create(NewKey::new("acct", "Only")).await.unwrap();
    let id = created.record.id;
    let too_many = manager
        .create(NewKey::new("acct", "Second"))
        .await
        .unwrap_err();
    assert!(matches!(
        too_many,
        tm_auth::ManagerError::TooManyKeys { .. }
    ));
    let bad_scope = manager
        .update(&id, KeyUpdate::new().scopes(["Not A Scope"]))
        .await
        .unwrap_err();
    assert!(matches!(bad_scope, tm_auth::ManagerError::InvalidScope(_)));
    manager.revoke(&id).await.unwrap();
    let revoked = manager
        .update(&id, KeyUpdate::new().name("Renamed"))
        .await
        .unwrap_err();
    assert!(matches!(revoked, tm_auth::ManagerError::Revoked));
    let rotation = manager.rotate(&id, Duration::ZERO).await.unwrap_err();
    assert!(matches!(rotation, tm_auth::ManagerError::Revoked));
    // Unknown ids belong to no one: nothing to record.
    assert!(manager.revoke(&tm_auth::KeyId::generate()).await.is_err());

    let log = events(&manager, "acct").await;
    let summary: Vec<(AuditAction, Option<&str>)> = log
        .iter()
        .map(|e| (e.event.action, e.event.outcome.refusal()))
        .collect();
    assert_eq!(
        summary,
        [
            (AuditAction::Create, None),
            (AuditAction::Create, Some("too_many_keys")),
            (AuditAction::Update, Some("invalid_scope")),
            (AuditAction::Revoke, None),
            (AuditAction::Update, Some("api_key_revoked")),
            (AuditAction::Rotate, Some("api_key_revoked")),
        ]
    );
    assert_eq!(log[1].event.key_id, None, "a refused creation has no key");
    assert_eq!(
        log[4].event.changes,
        [change(AuditField::Name, &["Only"], &["Renamed"])],
        "a refusal records what was asked for"
    );
    assert_eq!(manager.get(&id).await.unwrap().name, "Only");
}

/// Concurrent edits of one key: one event each, in the order the store
/// applied them, so each event's `before` is the previous event's `after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_are_recorded_once_each_in_the_order_applied() {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager.create(NewKey::new("acct", "Name 0")).await.unwrap();
    let id = created.record.id;
    let edits: Vec<_> = (1..=40)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                let update = KeyUpdate::new()
                    .name(format!("Name {i}"))
                    .scopes([format!("scope.{i}")]);
                manager.update(&id, update).await.unwrap()
            })
        })
        .collect();
    for edit in edits {
        edit.await.unwrap();
    }
    let log = events(&manager, "acct").await;
    let updates: Vec<_> = log
        .iter()
        .filter(|e| e.event.action == AuditAction::Update)
        .collect();
    assert_eq!(updates.len(), 40, "one event per edit");
    let mut current = vec!["Name 0".to_owned()];
    for entry in &updates {
        let name = entry
            .event
            .changes
            .iter()
            .find(|c| c.field == AuditField::Name)
            .expect("every edit renamed");
        assert_eq!(
            name.before, current,
            "event {} starts where the last ended",
            entry.id
        );
        current = name.after.clone();
    }
    assert_eq!(
        vec![manager.get(&id).await.unwrap().name],
        current,
        "the last event ends where the key is"
    );
}

#[tokio::test]
async fn the_in_memory_trail_keeps_the_latest_events_of_each_owner() {
    let manager = KeyManager::new(MemoryStore::with_audit_capacity(5));
    let created = manager.create(NewKey::new("acct", "Key")).await.unwrap();
    for i in 0..10 {
        manager
            .update(
                &created.record.id,
                KeyUpdate::new().name(format!("Name {i}")),
            )
            .await
            .unwrap();
    }
    manager.create(NewKey::new("other", "Key")).await.unwrap();
    let log = events(&manager, "acct").await;
    assert_eq!(log.len(), 5, "bounded per owner");
    assert_eq!(
        log.last().unwrap().event.changes[0].after,
        ["Name 9"],
        "the newest kept"
    );
    assert_eq!(
        events(&manager, "other").await.len(),
        1,
        "another owner's own room"
    );

    // A store that keeps no trail: the manager keeps one of its own, or
    // the one it is given.
    let given = std::sync::Arc::new(MemoryAuditStore::new());
    struct Shared(std::sync::Arc<MemoryAuditStore>);
    #[async_trait::async_trait]
    impl tm_auth::store::AuditStore for Shared {
        async fn append(
            &self,
            event: &tm_auth::audit::AuditEvent,
        ) -> Result<tm_auth::audit::AuditId, tm_auth::StoreError> {
            self.0.append(event).await
        }
        async fn list(
            &self,
            owner: &str,
            key: Option<tm_auth::KeyId>,
            after: Option<tm_auth::audit::AuditId>,
            limit: usize,
        ) -> Result<Vec<tm_auth::audit::AuditEntry>, tm_auth::StoreError> {
            self.0.list(owner, key, after, limit).await
        }
    }
    let manager = KeyManager::builder(MemoryStore::new())
        .audit_store(Shared(given.clone()))
        .build();
    manager.create(NewKey::new("acct", "Key")).await.unwrap();
    use tm_auth::store::AuditStore;
    assert_eq!(given.list("acct", None, None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn pages_are_bounded_and_chain() {
    let manager = KeyManager::new(MemoryStore::new());
    for i in 0..5 {
        manager
            .create(NewKey::new("acct", format!("Key {i}")))
            .await
            .unwrap();
    }
    assert!(manager.audit("acct", AuditQuery::first(0)).await.is_err());
    assert!(manager
        .audit("acct", AuditQuery::first(1_001))
        .await
        .is_err());
    let mut seen = Vec::new();
    let mut query = AuditQuery::first(2);
    loop {
        let page = manager.audit("acct", query).await.unwrap();
        seen.extend(page.events.iter().map(|e| e.id));
        match page.next {
            Some(next) => query = AuditQuery::first(2).after(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn events_can_be_forwarded_to_tracing_with_stable_fields() {
    let (capture, guard) = Capture::install(tracing::Level::INFO);
    let manager = KeyManager::builder(MemoryStore::new())
        .audit_to_tracing(true)
        .build();
    let bob = Actor::new("bob").unwrap();
    let created = manager
        .acting(bob)
        .create(NewKey::new("acct", "Traced").scopes(["emails:verify"]))
        .await
        .unwrap();
    drop(guard);
    let logs = capture.text();
    for field in [
        "audit_id=1",
        "action=\"create\"",
        "outcome=\"done\"",
        "owner=acct",
        "actor=\"bob\"",
        "changed=name,scopes",
    ] {
        assert!(logs.contains(field), "{field} missing from {logs}");
    }
    assert!(logs.contains(&created.record.id.to_string()));
    assert!(!logs.contains(&created.key.expose_secret()[8..]));

    // Off by default.
    let (capture, guard) = Capture::install(tracing::Level::INFO);
    KeyManager::new(MemoryStore::new())
        .create(NewKey::new("acct", "Quiet"))
        .await
        .unwrap();
    drop(guard);
    assert!(!capture.text().contains("API key audit event"));
}
