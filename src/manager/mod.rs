//! [`KeyManager`]: the one place where keys are created, listed, edited,
//! revoked and rotated. Verifying a key is in [`verify`](crate::verify);
//! reading and flushing usage in [`usage`](self::usage).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use crate::clock::{Clock, SystemClock};
use crate::error::ManagerError;
use crate::key::KeyId;
use crate::key::TmKey;
use crate::limits::{KeyLimits, OwnerLocks};
use crate::page::{KeyPage, Page, MAX_PAGE};
use crate::rate_limit::{InProcessRateLimiter, RateLimiter};
use crate::record::KeyRecord;
use crate::store::{
    AuditStore, KeyStore, MemoryAuditStore, MemoryUsageStore, StoreError, UsageStore,
};
use crate::usage::{Dispatcher, Tracker, UsageConfig, UsageObserver};

mod actions;
mod audit;
mod usage;

pub use audit::Acting;
use audit::KeyStoreAudit;
use usage::KeyStoreUsage;

/// How long a store call may take before it counts as a failure, unless
/// configured otherwise.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(3);

/// Creates, lists, edits, revokes, rotates and verifies keys over a
/// [`KeyStore`].
///
/// Cheap to clone (clones share the store), `Send + Sync`. Store calls are
/// bounded by a timeout ([`DEFAULT_STORE_TIMEOUT`] unless set with
/// [`KeyManagerBuilder::store_timeout`]); the timeout
/// needs a Tokio runtime with its timer enabled, as `#[tokio::main]` sets up.
///
/// Calls by id are not scoped to an owner: a server that lets key holders
/// call them must check [`KeyRecord::owner`] itself.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tm_auth::{KeyManager, MemoryStore, NewKey};
///
/// let manager = KeyManager::new(MemoryStore::new());
/// let created = manager.create(NewKey::new("acct_42", "Production - Main Website")).await?;
/// println!("your key (shown once): {}", created.key.expose_secret());
///
/// let who = manager.verify(created.key.expose_secret(), None).await?;
/// assert_eq!(who.owner(), "acct_42");
///
/// // Rotation: the old key keeps working for an hour.
/// let rotated = manager.rotate(&created.record.id, Duration::from_secs(3600)).await?;
/// assert!(manager.verify(rotated.key.expose_secret(), None).await.is_ok());
///
/// manager.revoke(&rotated.record.id).await?;
/// let err = manager.verify(rotated.key.expose_secret(), None).await.unwrap_err();
/// assert_eq!(err.code(), "api_key_revoked");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KeyManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn KeyStore>,
    usage_store: Arc<dyn UsageStore>,
    clock: Arc<dyn Clock>,
    store_timeout: Duration,
    usage: Arc<Tracker>,
    limits: KeyLimits,
    rate_limiter: Arc<dyn RateLimiter>,
    /// Shared by every manager built from this one, so their changes to
    /// one owner's keys, and the audit events of those changes, are
    /// serialised together.
    owner_locks: Arc<OwnerLocks>,
    audit: Arc<dyn AuditStore>,
    audit_to_tracing: bool,
}

/// A key just created: the key itself (shown once, never stored) and its record.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The key. Show it to the holder now: it cannot be recovered later.
    pub key: TmKey,
    /// What the store keeps.
    pub record: KeyRecord,
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("store_timeout", &self.inner.store_timeout)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Sets up a [`KeyManager`] once: its usage monitoring, clock, limits, rate
/// limiter and store timeout. Made by [`KeyManager::builder`]; every setting
/// has a default, so `KeyManager::builder(store).build()` is
/// [`KeyManager::new(store)`](KeyManager::new).
///
/// ```
/// use std::time::Duration;
/// use tm_auth::usage::UsageConfig;
/// use tm_auth::{KeyLimits, KeyManager, MemoryStore};
///
/// let manager = KeyManager::builder(MemoryStore::new())
///     .usage(UsageConfig::new().history(Duration::from_secs(3600)))
///     .limits(KeyLimits::new().active_keys_per_owner(20))
///     .store_timeout(Duration::from_millis(500))
///     .build();
/// assert_eq!(manager.limits().active_keys(), 20);
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct KeyManagerBuilder {
    store: Arc<dyn KeyStore>,
    usage: UsageConfig,
    observer: Option<Arc<dyn UsageObserver>>,
    usage_store: Option<Arc<dyn UsageStore>>,
    clock: Arc<dyn Clock>,
    store_timeout: Duration,
    limits: KeyLimits,
    rate_limiter: Option<Arc<dyn RateLimiter>>,
    audit_store: Option<Arc<dyn AuditStore>>,
    audit_to_tracing: bool,
}

impl fmt::Debug for KeyManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManagerBuilder")
            .field("usage", &self.usage)
            .field("store_timeout", &self.store_timeout)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl KeyManagerBuilder {
    /// Monitors usage as `config` says (counting is on by default; see
    /// [`UsageConfig`]). With an observer, a thread named
    /// `tm-auth-usage-observer` delivers its events, so a slow observer
    /// never slows requests.
    pub fn usage(mut self, config: UsageConfig) -> KeyManagerBuilder {
        self.usage = config;
        self
    }

    /// Tells `observer` of spikes and of keys used from a new address (see
    /// [`UsageConfig::observer`]), whatever usage config is set before or
    /// after: this observer takes the place of the config's own.
    pub fn observer(mut self, observer: impl UsageObserver) -> KeyManagerBuilder {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Keeps usage counts in `store` rather than in the key store's own
    /// ([`KeyStore::usage_store`]), or rather than in a
    /// [`MemoryUsageStore`] when the key store keeps none.
    pub fn usage_store(mut self, store: impl UsageStore) -> KeyManagerBuilder {
        self.usage_store = Some(Arc::new(store));
        self
    }

    /// Uses `clock` to decide expiry, stamp creation, revocation and
    /// rotation times, and count usage and rate limits.
    pub fn clock(mut self, clock: impl Clock) -> KeyManagerBuilder {
        self.clock = Arc::new(clock);
        self
    }

    /// Bounds every store call by `timeout` ([`DEFAULT_STORE_TIMEOUT`]
    /// unless set); a call that takes longer fails with
    /// [`StoreError::Timeout`] (503 on the request path).
    pub fn store_timeout(mut self, timeout: Duration) -> KeyManagerBuilder {
        self.store_timeout = timeout;
        self
    }

    /// Limits what one owner may hold (see [`KeyLimits`]; by default 100
    /// active keys per owner and 64 networks per allowlist).
    pub fn limits(mut self, limits: KeyLimits) -> KeyManagerBuilder {
        self.limits = limits;
        self
    }

    /// Decides keys' rate limits with `limiter` rather than with an
    /// [`InProcessRateLimiter`] of the manager's own.
    pub fn rate_limiter(mut self, limiter: impl RateLimiter) -> KeyManagerBuilder {
        self.rate_limiter = Some(Arc::new(limiter));
        self
    }

    /// Keeps the audit trail in `store` rather than in the key store's own
    /// ([`KeyStore::audit_store`]), or rather than in a
    /// [`MemoryAuditStore`](crate::store::MemoryAuditStore) when the key
    /// store keeps none.
    pub fn audit_store(mut self, store: impl AuditStore) -> KeyManagerBuilder {
        self.audit_store = Some(Arc::new(store));
        self
    }

    /// Also writes every audit event to `tracing`, at `INFO` level with the
    /// target `tm_auth::audit` and these fields, whose names are stable:
    /// `audit_id`, `action`, `outcome` (`done` or `refused`), `reason`,
    /// `owner`, `key_id`, `new_key_id`, `actor`, `client_ip` and `changed`
    /// (the changed fields' names, comma-separated). Values are never a key
    /// or a hash. Off by default.
    pub fn audit_to_tracing(mut self, on: bool) -> KeyManagerBuilder {
        self.audit_to_tracing = on;
        self
    }

    /// The manager.
    pub fn build(mut self) -> KeyManager {
        if let Some(observer) = self.observer {
            self.usage.observer = Some(observer);
        }
        let tracker = Tracker::new(self.usage);
        spawn_observer(&tracker);
        let usage_store: Arc<dyn UsageStore> = match self.usage_store {
            Some(store) => store,
            None if self.store.usage_store().is_some() => {
                Arc::new(KeyStoreUsage(Arc::clone(&self.store)))
            }
            None => Arc::new(MemoryUsageStore::new()),
        };
        let audit: Arc<dyn AuditStore> = match self.audit_store {
            Some(store) => store,
            None if self.store.audit_store().is_some() => {
                Arc::new(KeyStoreAudit(Arc::clone(&self.store)))
            }
            None => Arc::new(MemoryAuditStore::new()),
        };
        KeyManager {
            inner: Arc::new(Inner {
                store: self.store,
                usage_store,
                clock: self.clock,
                store_timeout: self.store_timeout,
                usage: Arc::new(tracker),
                limits: self.limits,
                rate_limiter: self
                    .rate_limiter
                    .unwrap_or_else(|| Arc::new(InProcessRateLimiter::new())),
                owner_locks: Arc::new(OwnerLocks::new()),
                audit,
                audit_to_tracing: self.audit_to_tracing,
            }),
        }
    }
}

/// Starts the thread that hands the tracker's events to its observer, if it
/// has one.
fn spawn_observer(tracker: &Tracker) {
    let (Some(observer), Some(mut events)) =
        (tracker.config().observer.clone(), tracker.take_receiver())
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("tm-auth-usage-observer".into())
        .spawn(move || {
            let mut dispatcher = Dispatcher::new(observer);
            // Ends when the manager, and so the sender, is dropped.
            while let Some(event) = events.blocking_recv() {
                dispatcher.deliver(event);
            }
        });
    if let Err(err) = spawned {
        tracing::error!(error = %err, "could not start the usage observer thread; its events are dropped");
    }
}

impl KeyManager {
    /// A manager over `store` with every default: the system clock, usage
    /// counting on, [`KeyLimits::default`], an in-process rate limiter. The
    /// same as `KeyManager::builder(store).build()`.
    pub fn new(store: impl KeyStore) -> KeyManager {
        KeyManager::builder(store).build()
    }

    /// Sets up a manager over `store`; see [`KeyManagerBuilder`].
    pub fn builder(store: impl KeyStore) -> KeyManagerBuilder {
        KeyManagerBuilder {
            store: Arc::new(store),
            usage: UsageConfig::default(),
            observer: None,
            usage_store: None,
            clock: Arc::new(SystemClock),
            store_timeout: DEFAULT_STORE_TIMEOUT,
            limits: KeyLimits::default(),
            rate_limiter: None,
            audit_store: None,
            audit_to_tracing: false,
        }
    }

    /// A manager like this one with `change` applied to a copy of its settings.
    fn rebuilt(&self, change: impl FnOnce(&mut Inner)) -> KeyManager {
        let mut inner = Inner {
            store: Arc::clone(&self.inner.store),
            usage_store: Arc::clone(&self.inner.usage_store),
            clock: Arc::clone(&self.inner.clock),
            store_timeout: self.inner.store_timeout,
            usage: Arc::clone(&self.inner.usage),
            limits: self.inner.limits,
            rate_limiter: Arc::clone(&self.inner.rate_limiter),
            owner_locks: Arc::clone(&self.inner.owner_locks),
            audit: Arc::clone(&self.inner.audit),
            audit_to_tracing: self.inner.audit_to_tracing,
        };
        change(&mut inner);
        KeyManager {
            inner: Arc::new(inner),
        }
    }

    /// A manager like this one whose usage is monitored as `config` says,
    /// with counts starting afresh.
    #[deprecated(
        since = "0.2.0",
        note = "set usage once with `KeyManager::builder(store).usage(config).build()`: this copy starts its counts afresh"
    )]
    pub fn with_usage(self, config: UsageConfig) -> KeyManager {
        let tracker = Tracker::new(config);
        spawn_observer(&tracker);
        self.rebuilt(|inner| inner.usage = Arc::new(tracker))
    }

    /// A manager like this one with `clock`.
    #[deprecated(
        since = "0.2.0",
        note = "use `KeyManager::builder(store).clock(clock)`"
    )]
    pub fn with_clock(self, clock: impl Clock) -> KeyManager {
        self.rebuilt(|inner| inner.clock = Arc::new(clock))
    }

    /// A manager like this one with a store timeout of `timeout`.
    #[deprecated(
        since = "0.2.0",
        note = "use `KeyManager::builder(store).store_timeout(timeout)`"
    )]
    pub fn with_store_timeout(self, timeout: Duration) -> KeyManager {
        self.rebuilt(|inner| inner.store_timeout = timeout)
    }

    /// A manager like this one with `limits`.
    #[deprecated(
        since = "0.2.0",
        note = "use `KeyManager::builder(store).limits(limits)`"
    )]
    pub fn with_limits(self, limits: KeyLimits) -> KeyManager {
        self.rebuilt(|inner| inner.limits = limits)
    }

    /// The limits this manager enforces.
    pub fn limits(&self) -> &KeyLimits {
        &self.inner.limits
    }

    /// The store this manager works on.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// Where this manager keeps usage counts: the one it was built with, the
    /// key store's own, or a [`MemoryUsageStore`] of its own.
    pub fn usage_store(&self) -> &dyn UsageStore {
        &*self.inner.usage_store
    }

    /// The rate limiter this manager admits requests of limited keys with.
    pub(crate) fn rate_limiter(&self) -> &dyn RateLimiter {
        &*self.inner.rate_limiter
    }

    /// The manager's current time.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// The clock the manager decides expiry and counts usage by.
    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.inner.clock
    }

    /// The manager's usage counters and rate-limit windows.
    pub(crate) fn tracker(&self) -> &Tracker {
        &self.inner.usage
    }

    /// Runs a store call, bounded by `timeout` (the manager's own when
    /// `None`).
    pub(crate) async fn bounded<T>(
        &self,
        timeout: Option<Duration>,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut call = std::pin::pin!(call);
        // An in-memory store answers on the first poll: arm no timer for it.
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            return result;
        }
        // Without a Tokio runtime there is no timer to race against.
        if tokio::runtime::Handle::try_current().is_err() {
            return call.await;
        }
        let limit = timeout.unwrap_or(self.inner.store_timeout);
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// All of `owner`'s keys, oldest first, revoked ones included. For an
    /// owner with many keys, [`list_page`](KeyManager::list_page) reads them
    /// a bounded page at a time.
    pub async fn list(&self, owner: &str) -> Result<Vec<KeyRecord>, ManagerError> {
        Ok(self
            .bounded(None, self.inner.store.list_by_owner(owner))
            .await?)
    }

    /// One page of `owner`'s keys, oldest first, revoked ones included (see
    /// [`Page`]); its [`next`](KeyPage::next) is the cursor for the page
    /// after it. A limit of 0 or over [`MAX_PAGE`] is refused with
    /// [`ManagerError::InvalidPage`]; a cursor that is not one of `owner`'s
    /// keys gives an empty page.
    pub async fn list_page(&self, owner: &str, page: Page) -> Result<KeyPage, ManagerError> {
        if page.limit == 0 || page.limit > MAX_PAGE {
            return Err(ManagerError::InvalidPage {
                max: MAX_PAGE,
                given: page.limit,
            });
        }
        // One more than asked for says whether another page follows.
        let mut keys = self
            .bounded(
                None,
                self.inner
                    .store
                    .list_page(owner, page.after, page.limit + 1),
            )
            .await?;
        let next = if keys.len() > page.limit {
            keys.truncate(page.limit);
            keys.last().map(|record| record.id)
        } else {
            None
        };
        Ok(KeyPage { keys, next })
    }

    /// The key with this id.
    pub async fn get(&self, id: &KeyId) -> Result<KeyRecord, ManagerError> {
        self.bounded(None, self.inner.store.get(id))
            .await?
            .ok_or(ManagerError::NotFound)
    }
}
