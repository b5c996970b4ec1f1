//! Reading usage and writing it to the store: [`KeyManager::usage`], the
//! flush, and the background task that flushes.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use super::KeyManager;
use crate::error::ManagerError;
use crate::key::KeyId;
use std::sync::Arc;

use async_trait::async_trait;

use crate::store::{KeyStore, StoreError, UsageDelta, UsageStore, UsageTotals};
use crate::usage::{KeyUsage, NoRuntime, UsageSample, UsageTask};

impl KeyManager {
    /// A key's usage: the store's totals plus what this process has counted
    /// and not flushed yet, and its per-minute history.
    pub async fn usage(&self, id: &KeyId) -> Result<KeyUsage, ManagerError> {
        let usage = &self.inner.usage;
        // Read against a consistent store: no flush moves counts meanwhile.
        let _flushing = usage.flush_lock.lock().await;
        let totals = match self.bounded(None, self.usage_store().usage(id)).await? {
            Some(totals) => totals,
            None => self.unused(id).await?.ok_or(ManagerError::NotFound)?,
        };
        Ok(usage.usage(*id, totals, self.now()))
    }

    /// The usage of several keys, in the order of `ids` (`None` for an id
    /// no key has), read from the store in one call: what a page of keys
    /// shows. Each is what [`usage`](KeyManager::usage) would say.
    pub async fn usage_batch(&self, ids: &[KeyId]) -> Result<Vec<Option<KeyUsage>>, ManagerError> {
        let usage = &self.inner.usage;
        let _flushing = usage.flush_lock.lock().await;
        let mut totals = self
            .bounded(None, self.usage_store().usage_batch(ids))
            .await?;
        if totals.len() != ids.len() {
            return Err(ManagerError::Store(StoreError::backend(format!(
                "usage_batch answered {} totals for {} ids",
                totals.len(),
                ids.len()
            ))));
        }
        for (id, totals) in ids.iter().zip(totals.iter_mut()) {
            if totals.is_none() {
                *totals = self.unused(id).await?;
            }
        }
        let now = self.now();
        Ok(ids
            .iter()
            .zip(totals)
            .map(|(id, totals)| totals.map(|totals| usage.usage(*id, totals, now)))
            .collect())
    }

    /// Writes the counts not yet in the store, in batches; returns how many
    /// keys' counts were written. A batch the store refuses stays pending
    /// and goes with the next flush.
    pub async fn flush_usage(&self) -> Result<usize, ManagerError> {
        let usage = &self.inner.usage;
        let _flushing = usage.flush_lock.lock().await;
        let mut written = 0;
        for batch in usage.pending() {
            self.bounded(None, self.usage_store().record_usage(&batch.deltas))
                .await?;
            batch.mark_sent(usage);
            written += batch.deltas.len();
        }
        Ok(written)
    }

    /// The totals of a key nothing was recorded for: empty if the key
    /// exists (a usage store need not know every key), `None` if not.
    async fn unused(&self, id: &KeyId) -> Result<Option<UsageTotals>, ManagerError> {
        let exists = self.bounded(None, self.store().get(id)).await?.is_some();
        Ok(exists.then(UsageTotals::default))
    }

    /// Every used key's counters as this process counted them since it
    /// started: for exporting to a metrics system such as Prometheus.
    pub fn usage_snapshot(&self) -> Vec<UsageSample> {
        self.inner.usage.snapshot()
    }

    /// Observer events dropped because the observer fell behind.
    pub fn dropped_usage_events(&self) -> u64 {
        self.inner.usage.dropped_events()
    }

    /// Starts a Tokio task that flushes usage every `every` (failures are
    /// logged and retried with the next batch). Stop it with
    /// [`UsageTask::shutdown`], which flushes what is pending (dropping the
    /// `UsageTask` stops it too, after the same last flush).
    pub fn spawn_usage_task(&self, every: Duration) -> Result<UsageTask, NoRuntime> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let manager = self.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let every = every.max(Duration::from_millis(10));
        let handle = runtime.spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let mut tick = std::pin::pin!(ticks.tick());
                // Stop when told to, or when the `UsageTask` is dropped.
                let stop = std::future::poll_fn(|cx| {
                    if std::pin::Pin::new(&mut stopped).poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                    tick.as_mut().poll(cx).map(|_| false)
                })
                .await;
                if stop {
                    break;
                }
                if let Err(err) = manager.flush_usage().await {
                    tracing::warn!(error = %err, "usage flush failed; the counts are kept for the next one");
                }
            }
            manager.flush_usage().await
        });
        Ok(UsageTask {
            stop: Some(stop),
            handle,
        })
    }
}

/// The usage store a key store keeps beside its keys
/// ([`KeyStore::usage_store`]), held through the key store.
pub(super) struct KeyStoreUsage(pub(super) Arc<dyn KeyStore>);

impl KeyStoreUsage {
    fn get(&self) -> Result<&dyn UsageStore, StoreError> {
        self.0
            .usage_store()
            .ok_or_else(|| StoreError::backend("the key store no longer keeps usage"))
    }
}

#[async_trait]
impl UsageStore for KeyStoreUsage {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        self.get()?.record_usage(batch).await
    }

    async fn usage(&self, id: &KeyId) -> Result<Option<UsageTotals>, StoreError> {
        self.get()?.usage(id).await
    }

    async fn usage_batch(&self, ids: &[KeyId]) -> Result<Vec<Option<UsageTotals>>, StoreError> {
        self.get()?.usage_batch(ids).await
    }
}
