//! KeyManager semantics beyond the contract: the clock, rotation, refusals,
//! store failures and concurrency.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;
use support::{Fault, FaultyStore, Op};
use tm_auth::clock::ManualClock;
use tm_auth::{
    Environment, KeyLimits, KeyManager, KeyStatus, KeyStore, KeyUpdate, ManagerError, MemoryStore,
    NewKey, StoreError, TextError, TmKey, VerifyOptions,
};

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn managed() -> (KeyManager, ManualClock, MemoryStore) {
    let clock = ManualClock::new(start());
    let store = MemoryStore::new();
    (
        KeyManager::builder(store.clone())
            .clock(clock.clone())
            .build(),
        clock,
        store,
    )
}

#[tokio::test]
async fn rotation_grace_follows_the_clock() {
    let (manager, clock, _) = managed();
    let old = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let new = manager
        .rotate(&old.record.id, Duration::from_secs(600))
        .await
        .unwrap();

    let record = manager.get(&old.record.id).await.unwrap();
    assert_eq!(record.expires_at, Some(start() + Duration::from_secs(600)));
    assert_eq!(new.record.owner, "acct");
    assert_eq!(new.record.created_at, start());

    clock.advance(Duration::from_secs(599));
    assert!(manager.verify(old.key.expose_secret(), None).await.is_ok());
    // Expired when now >= expires_at: exactly at the end of the grace period.
    clock.advance(Duration::from_secs(1));
    let err = manager
        .verify(old.key.expose_secret(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "api_key_expired");
    assert_eq!(err.status(), 401);
    assert!(manager.verify(new.key.expose_secret(), None).await.is_ok());

    // An expired key cannot be rotated; a revoked one cannot be rotated or edited.
    assert!(matches!(
        manager
            .rotate(&old.record.id, Duration::from_secs(60))
            .await,
        Err(ManagerError::Expired)
    ));
    manager.revoke(&new.record.id).await.unwrap();
    assert!(matches!(
        manager
            .rotate(&new.record.id, Duration::from_secs(60))
            .await,
        Err(ManagerError::Revoked)
    ));
    assert!(matches!(
        manager
            .update(&new.record.id, KeyUpdate::new().name("x"))
            .await,
        Err(ManagerError::Revoked)
    ));
    assert_eq!(manager.get(&new.record.id).await.unwrap().name, "Main");
}

#[tokio::test]
async fn rotation_never_lengthens_an_expiry() {
    let (manager, _, _) = managed();
    let soon = start() + Duration::from_secs(60);
    let old = manager
        .create(NewKey::new("acct", "Trial").expires_at(soon))
        .await
        .unwrap();
    let new = manager
        .rotate(&old.record.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        manager.get(&old.record.id).await.unwrap().expires_at,
        Some(soon)
    );
    // The replacement keeps the provider's expiry too.
    assert_eq!(new.record.expires_at, Some(soon));
    // A grace too long to represent leaves the expiry alone instead of panicking.
    let other = manager.create(NewKey::new("acct", "Other")).await.unwrap();
    manager
        .rotate(&other.record.id, Duration::MAX)
        .await
        .unwrap();
    assert_eq!(
        manager.get(&other.record.id).await.unwrap().expires_at,
        None
    );
}

#[tokio::test]
async fn revocation_is_idempotent_and_keeps_the_first_time() {
    let (manager, clock, _) = managed();
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let first = manager.revoke(&created.record.id).await.unwrap();
    clock.advance(Duration::from_secs(5));
    let second = manager.revoke(&created.record.id).await.unwrap();
    assert_eq!(first.revoked_at, Some(start()));
    assert_eq!(second.revoked_at, first.revoked_at);
    assert_eq!(second.status_at(clock_now(&clock)), KeyStatus::Revoked);
}

fn clock_now(clock: &ManualClock) -> SystemTime {
    use tm_auth::clock::Clock;
    clock.now()
}

#[tokio::test]
async fn validation_errors_are_specific() {
    let (manager, _, store) = managed();
    assert!(matches!(
        manager.create(NewKey::new("", "Main")).await,
        Err(ManagerError::InvalidOwner(TextError::Empty))
    ));
    assert!(matches!(
        manager.create(NewKey::new("acct", "x".repeat(101))).await,
        Err(ManagerError::InvalidName(TextError::TooLong {
            max: 100,
            actual: 101
        }))
    ));
    assert!(matches!(
        manager.create(NewKey::new("acct", "Main\u{202E}")).await,
        Err(ManagerError::InvalidName(
            TextError::ForbiddenCharacter { .. }
        ))
    ));
    let many: Vec<IpNetwork> = (0..=64u32)
        .map(|i| IpNetwork::from(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes())))
        .collect();
    assert!(matches!(
        manager
            .create(NewKey::new("acct", "Main").allowed_ips(many.clone()))
            .await,
        Err(ManagerError::InvalidAllowlist {
            limit: 64,
            given: 65
        })
    ));
    assert!(store.is_empty(), "nothing is stored for a refused creation");

    let created = manager
        .create(NewKey::new("acct", "  Main  "))
        .await
        .unwrap();
    assert_eq!(created.record.name, "Main", "names are trimmed");
    assert!(matches!(
        manager
            .update(&created.record.id, KeyUpdate::new().name("\t"))
            .await,
        Err(ManagerError::InvalidName(TextError::Empty))
    ));
    assert!(matches!(
        manager
            .update(&created.record.id, KeyUpdate::new().allowed_ips(many))
            .await,
        Err(ManagerError::InvalidAllowlist { .. })
    ));
    assert_eq!(manager.get(&created.record.id).await.unwrap().name, "Main");
    // An empty allowlist lifts the restriction.
    manager
        .update(
            &created.record.id,
            KeyUpdate::new().allowed_ips(["10.0.0.0/8".parse().unwrap()]),
        )
        .await
        .unwrap();
    assert!(manager
        .verify(created.key.expose_secret(), None)
        .await
        .is_err());
    manager
        .update(&created.record.id, KeyUpdate::new().allowed_ips([]))
        .await
        .unwrap();
    assert!(manager
        .verify(created.key.expose_secret(), None)
        .await
        .is_ok());
}

#[tokio::test]
async fn verification_checks_run_in_order() {
    let (manager, clock, _) = managed();
    let restricted = vec!["10.0.0.0/8".parse::<IpNetwork>().unwrap()];
    let live_only = VerifyOptions::new().require_environment(Environment::Live);
    let test_key = manager
        .create(
            NewKey::new("acct", "Dev")
                .environment(Environment::Test)
                .allowed_ips(restricted.clone())
                .expires_at(start() + Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let secret = test_key.key.expose_secret();
    // Environment before IP.
    let err = manager.verify_with(secret, live_only).await.unwrap_err();
    assert_eq!(err.code(), "wrong_environment");
    // Expiry before environment.
    clock.advance(Duration::from_secs(10));
    let err = manager.verify_with(secret, live_only).await.unwrap_err();
    assert_eq!(err.code(), "api_key_expired");
    // Revocation before expiry.
    manager.revoke(&test_key.record.id).await.unwrap();
    let err = manager.verify_with(secret, live_only).await.unwrap_err();
    assert_eq!(err.code(), "api_key_revoked");
    // Format before lookup: a bad checksum never reaches the store.
    let err = manager
        .verify("tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_api_key");
    assert!(err.to_string().contains("checksum"));
}

#[tokio::test]
async fn a_failed_create_returns_no_key() {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone());
    store.set(Op::Insert, Fault::Fail);
    assert!(matches!(
        manager.create(NewKey::new("acct", "Main")).await,
        Err(ManagerError::Store(StoreError::Backend(_)))
    ));
    assert!(store.inner.is_empty());
}

#[tokio::test]
async fn a_duplicate_is_redrawn_but_not_forever() {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone());
    store.set(Op::Insert, Fault::ConflictOnce);
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    assert!(manager
        .verify(created.key.expose_secret(), None)
        .await
        .is_ok());
    store.set(Op::Insert, Fault::Conflict);
    assert!(matches!(
        manager.create(NewKey::new("acct", "Other")).await,
        Err(ManagerError::Store(StoreError::Conflict))
    ));
    assert_eq!(store.inner.len(), 1);
}

#[tokio::test]
async fn a_failed_rotation_leaves_the_old_key_as_it_was() {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone());
    let old = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    store.set(Op::Update, Fault::Fail);
    assert!(matches!(
        manager.rotate(&old.record.id, Duration::ZERO).await,
        Err(ManagerError::Store(_))
    ));
    store.clear();
    let keys = manager.list("acct").await.unwrap();
    assert_eq!(keys.len(), 2, "the new key was stored before the failure");
    assert_eq!(
        keys[0].status(),
        KeyStatus::Active,
        "the old key is untouched"
    );
    assert_eq!(keys[0].expires_at, None);
    assert_eq!(
        keys[1].status(),
        KeyStatus::Revoked,
        "the new key was revoked before the error"
    );
    assert!(manager.verify(old.key.expose_secret(), None).await.is_ok());
}

#[tokio::test]
async fn a_failed_revoke_is_reported_and_can_be_retried() {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    store.set(Op::Revoke, Fault::Fail);
    assert!(matches!(
        manager.revoke(&created.record.id).await,
        Err(ManagerError::Store(_))
    ));
    store.clear();
    assert!(manager
        .verify(created.key.expose_secret(), None)
        .await
        .is_ok());
    manager.revoke(&created.record.id).await.unwrap();
    assert_eq!(
        manager
            .verify(created.key.expose_secret(), None)
            .await
            .unwrap_err()
            .code(),
        "api_key_revoked"
    );
}

#[tokio::test]
async fn store_calls_are_bounded_by_the_timeout() {
    let store = FaultyStore::new();
    let manager = KeyManager::builder(store.clone())
        .store_timeout(Duration::from_millis(50))
        .build();
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    store.set(Op::Find, Fault::Hang);
    store.set(Op::Revoke, Fault::Hang);
    let err = manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "key_store_unavailable");
    assert_eq!(err.status(), 503);
    assert!(matches!(
        manager.revoke(&created.record.id).await,
        Err(ManagerError::Store(StoreError::Timeout))
    ));
    store.set(Op::Find, Fault::Fail);
    let err = manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "key_store_unavailable");
    store.clear();
    assert!(manager
        .verify(created.key.expose_secret(), None)
        .await
        .is_ok());
}

#[tokio::test]
async fn missing_ids_are_not_found() {
    let (manager, _, _) = managed();
    let id = tm_auth::KeyId::generate();
    assert!(matches!(
        manager.get(&id).await,
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        manager.update(&id, KeyUpdate::new()).await,
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        manager.revoke(&id).await,
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        manager.rotate(&id, Duration::ZERO).await,
        Err(ManagerError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creation_and_revocation() {
    let store = MemoryStore::new();
    // 200 active keys per owner: above the default limit of 100.
    let manager = KeyManager::builder(store.clone())
        .limits(KeyLimits::new().active_keys_per_owner(1_000))
        .build();
    let mut tasks = Vec::new();
    for task in 0..32 {
        let manager = manager.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("acct_{}", task % 4);
            let mut created = Vec::new();
            for i in 0..50 {
                let key = manager
                    .create(NewKey::new(owner.clone(), format!("key {i}")))
                    .await
                    .unwrap();
                if i % 2 == 0 {
                    manager.revoke(&key.record.id).await.unwrap();
                }
                created.push((key, i % 2 == 0));
            }
            created
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_eq!(store.len(), 32 * 50);
    for owner in 0..4 {
        let listed = manager.list(&format!("acct_{owner}")).await.unwrap();
        assert_eq!(listed.len(), 8 * 50);
    }
    for (created, revoked) in &all {
        let result = manager.verify(created.key.expose_secret(), None).await;
        assert_eq!(result.is_err(), *revoked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_verification_started_after_revoke_returns_succeeds() {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let secret = Arc::new(created.key.expose_secret().to_owned());
    let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (manager, secret, revoked) = (manager.clone(), secret.clone(), revoked.clone());
        tasks.push(tokio::spawn(async move {
            let mut late_successes = 0;
            for _ in 0..2_000 {
                let started_after = revoked.load(std::sync::atomic::Ordering::SeqCst);
                let ok = manager.verify(&secret, None).await.is_ok();
                if started_after && ok {
                    late_successes += 1;
                }
                tokio::task::yield_now().await;
            }
            late_successes
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    manager.revoke(&created.record.id).await.unwrap();
    revoked.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in tasks {
        assert_eq!(task.await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_verification_started_after_an_allowlist_edit_returns_uses_the_old_list() {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let secret = Arc::new(created.key.expose_secret().to_owned());
    let client: Option<IpAddr> = Some("203.0.113.9".parse().unwrap());
    let edited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (manager, secret, edited) = (manager.clone(), secret.clone(), edited.clone());
        tasks.push(tokio::spawn(async move {
            let (mut late_successes, mut successes) = (0, 0);
            for _ in 0..2_000 {
                let started_after = edited.load(std::sync::atomic::Ordering::SeqCst);
                let ok = manager.verify(&secret, client).await.is_ok();
                successes += usize::from(ok);
                if started_after && ok {
                    late_successes += 1;
                }
                tokio::task::yield_now().await;
            }
            (late_successes, successes)
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    manager
        .update(
            &created.record.id,
            KeyUpdate::new().allowed_ips(["198.51.100.0/24".parse().unwrap()]),
        )
        .await
        .unwrap();
    edited.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut successes = 0;
    for task in tasks {
        let (late, ok) = task.await.unwrap();
        assert_eq!(late, 0, "a verification that started after the edit passed");
        successes += ok;
    }
    assert!(successes > 0, "the key was in use before the edit");
}

#[tokio::test]
async fn key_store_behind_box_works_too() {
    let store: Box<dyn KeyStore> = Box::new(MemoryStore::new());
    let manager = KeyManager::new(store);
    let created = manager.create(NewKey::new("acct", "Boxed")).await.unwrap();
    assert!(manager
        .verify(created.key.expose_secret(), None)
        .await
        .is_ok());
    // The generated key parses back to itself.
    assert!(TmKey::parse(created.key.expose_secret()).unwrap() == created.key);
}

#[tokio::test]
async fn a_flood_of_garbage_and_unknown_keys_writes_nothing_and_keeps_nothing() {
    let store = FaultyStore::new();
    let manager = KeyManager::new(store.clone());
    let real = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    let inserts = store.calls(Op::Insert);
    // Bad checksums: refused before the store is asked.
    for _ in 0..10_000 {
        let key = TmKey::generate(Environment::Live);
        let mut garbled = key.expose_secret().to_owned();
        let last = if garbled.ends_with('0') { "1" } else { "0" };
        garbled.replace_range(39.., last);
        let err = manager.verify(&garbled, None).await.unwrap_err();
        assert_eq!(err.code(), "invalid_api_key");
    }
    assert_eq!(store.calls(Op::Find), 0, "no lookup for a bad checksum");
    // Well-formed unknown keys: one read each, nothing else.
    for _ in 0..10_000 {
        let key = TmKey::generate(Environment::Live);
        assert!(manager.verify(key.expose_secret(), None).await.is_err());
    }
    assert_eq!(store.calls(Op::Find), 10_000);
    manager.flush_usage().await.unwrap();
    assert_eq!(store.calls(Op::Insert), inserts);
    for op in [Op::Update, Op::Revoke, Op::RecordUsage] {
        assert_eq!(store.calls(op), 0, "{op:?}: a flood writes nothing");
    }
    assert!(
        manager.usage_snapshot().is_empty(),
        "no per-key state for keys that do not exist"
    );
    // The real key still works, and only its use is counted.
    manager
        .verify(real.key.expose_secret(), None)
        .await
        .unwrap();
    assert_eq!(manager.usage_snapshot().len(), 1);
}

#[tokio::test]
async fn a_store_given_as_a_trait_object_is_shared_not_copied() {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let one = KeyManager::new(Arc::clone(&store));
    let two = KeyManager::builder(Arc::clone(&store)).build();
    let created = one.create(NewKey::new("acct", "Shared")).await.unwrap();
    // Written through one manager, seen through the other and the store.
    assert!(store.get(&created.record.id).await.unwrap().is_some());
    two.revoke(&created.record.id).await.unwrap();
    let err = one
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "api_key_revoked");
}
