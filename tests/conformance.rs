//! The store conformance kit: the in-memory store passes, a trait object
//! passes, and a store that breaks the rules is caught, check by check.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tm_auth::store::{
    conformance, MemoryUsageStore, StoreUpdate, UsageDelta, UsageStore, UsageTotals,
};
use tm_auth::{KeyHash, KeyId, KeyRecord, KeyStore, MemoryStore, StoreError};

#[tokio::test]
async fn memory_store_conforms() {
    if let Err(failures) = conformance::run(|| async { MemoryStore::new() }).await {
        panic!("{failures}");
    }
}

#[tokio::test]
async fn a_trusted_cache_in_front_conforms() {
    use std::time::Instant;
    use tm_auth::store::cache::{CacheConfig, CachedStore};
    let result = conformance::run(|| async {
        let cached = CachedStore::new(MemoryStore::new(), CacheConfig::new());
        cached.invalidator().synced(Instant::now());
        cached
    })
    .await;
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn trait_objects_conform() {
    let result =
        conformance::run(|| async { Arc::new(MemoryStore::new()) as Arc<dyn KeyStore> }).await;
    assert_eq!(result, Ok(()));
}

/// Lengthens expiries, lists newest first (so its pages, cut from the list,
/// are wrong too) and lets a second revoke move `revoked_at`: four rules
/// broken.
struct Careless(MemoryStore);

#[async_trait]
impl KeyStore for Careless {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.0.insert(record).await
    }
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.0.find_by_hash(hash).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.0.get(id).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let mut listed = self.0.list_by_owner(owner).await?;
        listed.reverse();
        Ok(listed)
    }
    async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        // Applies the new expiry even when it is later.
        let Some(mut record) = self.0.get(id).await? else {
            return Ok(None);
        };
        if let Some(at) = update.expires_at {
            record.expires_at = Some(at);
        }
        if let Some(name) = &update.name {
            record.name.clone_from(name);
        }
        Ok(Some(record))
    }
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError> {
        let first = self.0.revoke(id, at).await?;
        Ok(first.map(|mut r| {
            r.revoked_at = Some(at);
            r
        }))
    }
}

#[tokio::test]
async fn broken_rules_are_named() {
    let failures = conformance::run(|| async { Careless(MemoryStore::new()) })
        .await
        .unwrap_err();
    let failed: Vec<&str> = failures.0.iter().map(|f| f.check).collect();
    for expected in [
        "lists_in_insertion_order",
        "pages_follow_the_list",
        "update_never_lengthens_expiry",
        "revocation_is_final",
    ] {
        assert!(
            failed.contains(&expected),
            "{expected} not caught: {failures}"
        );
    }
    assert!(!failed.contains(&"round_trip"), "{failures}");
    assert!(failures
        .to_string()
        .contains("update_never_lengthens_expiry"));
}

#[tokio::test]
async fn a_usage_store_of_its_own_conforms() {
    let result = conformance::run_usage(|| async { MemoryUsageStore::new() }).await;
    assert_eq!(result, Ok(()));
}

/// Keeps only the latest batch, and the first use rather than the latest.
#[derive(Default)]
struct Forgetful(std::sync::Mutex<std::collections::HashMap<KeyId, UsageTotals>>);

#[async_trait]
impl UsageStore for Forgetful {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        let mut totals = self.0.lock().unwrap();
        for delta in batch {
            let mut fresh = UsageTotals::default();
            fresh.add(delta);
            totals.insert(delta.id, fresh);
        }
        Ok(())
    }
    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        Ok(self.0.lock().unwrap().get(id).cloned())
    }
}

#[tokio::test]
async fn a_usage_store_that_loses_counts_is_caught() {
    let failures = conformance::run_usage(|| async { Forgetful::default() })
        .await
        .unwrap_err();
    let failed: Vec<&str> = failures.0.iter().map(|f| f.check).collect();
    assert_eq!(failed, ["usage_adds_up"], "{failures}");
}
