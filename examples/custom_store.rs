//! A user-written `KeyStore`: the six methods of a wrapper that logs every
//! call (never a key: a store only ever sees hashes) and counts lookups,
//! then delegates to any other store. Used through `Arc<dyn KeyStore>`, as a
//! database-backed store of your own would be.
//!
//! ```text
//! cargo run --example custom_store
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tm_auth::store::{StoreUpdate, UsageStore};
use tm_auth::{KeyHash, KeyId, KeyManager, KeyRecord, KeyStore, MemoryStore, NewKey, StoreError};

/// Logs each call, then hands it to `inner`.
struct LoggingStore {
    inner: Arc<dyn KeyStore>,
    lookups: AtomicU64,
}

#[async_trait]
impl KeyStore for LoggingStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        println!(
            "  [store] insert {} ({}) for {}",
            record.id, record.hint, record.owner
        );
        self.inner.insert(record).await
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let found = self.inner.find_by_hash(hash).await?;
        let what = found
            .as_ref()
            .map_or("nothing".to_owned(), |r| r.id.to_string());
        println!("  [store] find_by_hash -> {what}");
        Ok(found)
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        println!("  [store] get {id}");
        self.inner.get(id).await
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        println!("  [store] list_by_owner {owner}");
        self.inner.list_by_owner(owner).await
    }

    async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        println!("  [store] update {id}");
        self.inner.update(id, update).await
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError> {
        println!("  [store] revoke {id}");
        self.inner.revoke(id, at).await
    }

    // Optional: usage counts go where the inner store keeps them. Without
    // this line the manager keeps them in memory for the process's life.
    fn usage_store(&self) -> Option<&dyn UsageStore> {
        self.inner.usage_store()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let logging = Arc::new(LoggingStore {
        inner: Arc::new(MemoryStore::new()),
        lookups: AtomicU64::new(0),
    });
    // Keep a typed handle for the counter, and give the manager a trait object.
    let store: Arc<dyn KeyStore> = logging.clone();
    let manager = KeyManager::new(store);

    println!("create:");
    let created = manager
        .create(NewKey::new("acct_7", "Zapier Integration"))
        .await?;
    println!("verify:");
    let who = manager.verify(created.key.expose_secret(), None).await?;
    println!("  -> {} / {}", who.owner(), who.name());
    println!("verify a mistyped key (refused by its checksum, the store is not asked):");
    let err = manager
        .verify("tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", None)
        .await
        .unwrap_err();
    println!("  -> {}", err.code());
    println!("usage (flushed to the inner store):");
    manager.flush_usage().await?;
    let usage = manager.usage(&created.record.id).await?;
    println!("  -> {} request(s)", usage.requests);
    println!("revoke, then verify:");
    manager.revoke(&created.record.id).await?;
    let err = manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap_err();
    println!("  -> {}", err.code());
    println!("store lookups: {}", logging.lookups.load(Ordering::Relaxed));
    Ok(())
}
