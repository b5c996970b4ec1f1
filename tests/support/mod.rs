//! Shared by the integration tests: a store that fails, hangs or answers
//! slowly on chosen calls, and counts every call.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tm_auth::store::{StoreUpdate, UsageDelta, UsageStore, UsageTotals};
use tm_auth::{KeyHash, KeyId, KeyRecord, KeyStore, MemoryStore, StoreError};

/// A store call, to choose where a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Insert,
    Find,
    Get,
    List,
    Update,
    Revoke,
    RecordUsage,
}

/// What happens on that call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Fail,
    /// Answer `StoreError::Conflict`, once.
    ConflictOnce,
    /// Answer `StoreError::Conflict`, every time.
    Conflict,
    Hang,
    Slow(Duration),
}

/// Delegates to a `MemoryStore` unless a fault is set for the call.
#[derive(Clone, Default)]
pub(crate) struct FaultyStore {
    pub inner: MemoryStore,
    faults: Arc<Mutex<HashMap<Op, Fault>>>,
    calls: Arc<Mutex<HashMap<Op, usize>>>,
}

impl FaultyStore {
    pub(crate) fn new() -> FaultyStore {
        FaultyStore::default()
    }

    pub(crate) fn set(&self, op: Op, fault: Fault) {
        self.faults.lock().unwrap().insert(op, fault);
    }

    pub(crate) fn clear(&self) {
        self.faults.lock().unwrap().clear();
    }

    /// How many times `op` was called.
    pub(crate) fn calls(&self, op: Op) -> usize {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    async fn gate(&self, op: Op) -> Result<(), StoreError> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        let fault = {
            let mut faults = self.faults.lock().unwrap();
            let fault = faults.get(&op).copied();
            if fault == Some(Fault::ConflictOnce) {
                faults.remove(&op);
            }
            fault
        };
        match fault {
            None => Ok(()),
            Some(Fault::Conflict | Fault::ConflictOnce) => Err(StoreError::Conflict),
            Some(Fault::Fail) => Err(StoreError::backend("injected failure")),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Slow(by)) => {
                tokio::time::sleep(by).await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl KeyStore for FaultyStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.gate(Op::Insert).await?;
        self.inner.insert(record).await
    }
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.gate(Op::Find).await?;
        self.inner.find_by_hash(hash).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.gate(Op::Get).await?;
        self.inner.get(id).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.gate(Op::List).await?;
        self.inner.list_by_owner(owner).await
    }
    async fn update(
        &self,
        id: &KeyId,
        update: &StoreUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.gate(Op::Update).await?;
        self.inner.update(id, update).await
    }
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<Option<KeyRecord>, StoreError> {
        self.gate(Op::Revoke).await?;
        self.inner.revoke(id, at).await
    }
    fn usage_store(&self) -> Option<&dyn UsageStore> {
        Some(self)
    }
}

#[async_trait]
impl UsageStore for FaultyStore {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        self.gate(Op::RecordUsage).await?;
        self.inner.record_usage(batch).await
    }
    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        self.inner.usage(id).await
    }
}

/// Everything a `tracing` subscriber writes, kept for a test to read.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// What was written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// A subscriber writing everything at `level` and above here, for this
    /// thread, until the guard is dropped.
    pub(crate) fn install(level: tracing::Level) -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }
}
