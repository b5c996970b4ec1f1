//! [`KeyManager`]: the one place where keys are created, edited, revoked,
//! rotated and verified.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use crate::clock::{millis_since_epoch, Clock, SystemClock};
use crate::error::{AuthError, ManagerError};
use crate::key::{Environment, KeyHash, KeyHint, TmKey};
use crate::limits::{KeyLimits, OwnerLocks};
use crate::page::{KeyPage, Page, MAX_PAGE};
use crate::rate_limit::{RateLimit, RateLimitStatus};
use crate::record::{
    validate_name, validate_owner, KeyId, KeyRecord, KeyStatus, KeyUpdate, NewKey,
};
use crate::store::stored::Entry;
use crate::store::{KeyStore, StoreError, StoreUpdate, StoredKeyRef};
use crate::usage::{
    Dispatcher, KeyUsage, NoRuntime, Rejection, Subject, Tracker, UsageConfig, UsageSample,
    UsageTask,
};

/// How long a store call may take before it counts as a failure, unless
/// configured otherwise.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(3);

/// Creates, lists, edits, revokes, rotates and verifies keys over a
/// [`KeyStore`].
///
/// Cheap to clone (clones share the store), `Send + Sync`. Store calls are
/// bounded by a timeout ([`DEFAULT_STORE_TIMEOUT`] unless set with
/// [`with_store_timeout`](KeyManager::with_store_timeout)); the timeout
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
    clock: Arc<dyn Clock>,
    store_timeout: Duration,
    usage: Arc<Tracker>,
    limits: KeyLimits,
    /// Shared by every manager built from this one, so their creations for
    /// one owner are serialised together.
    owner_locks: Arc<OwnerLocks>,
}

/// A key just created: the key itself (shown once, never stored) and its record.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The key. Show it to the holder now: it cannot be recovered later.
    pub key: TmKey,
    /// What the store keeps.
    pub record: KeyRecord,
}

/// What [`KeyManager::verify_with`] checks besides the key itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    client_ip: Option<IpAddr>,
    environment: Option<Environment>,
    timeout: Option<Duration>,
}

impl VerifyOptions {
    /// No client IP, any environment, the manager's store timeout.
    pub fn new() -> VerifyOptions {
        VerifyOptions::default()
    }

    /// The client's address, checked against the key's allowlist.
    pub fn client_ip(mut self, ip: Option<IpAddr>) -> VerifyOptions {
        self.client_ip = ip;
        self
    }

    /// Accept keys of this environment only.
    pub fn require_environment(mut self, environment: Environment) -> VerifyOptions {
        self.environment = Some(environment);
        self
    }

    /// Bound the store lookup by `timeout` instead of the manager's default.
    pub fn store_timeout(mut self, timeout: Duration) -> VerifyOptions {
        self.timeout = Some(timeout);
        self
    }
}

/// Who called: what a verification returns and what the layer puts in the
/// request's extensions for the inner service.
///
/// ```
/// # use tm_auth::AuthenticatedKey;
/// async fn handler(request: http::Request<()>) -> String {
///     match request.extensions().get::<AuthenticatedKey>() {
///         Some(who) => format!("hello {} ({})", who.owner(), who.name()),
///         None => "not authenticated".into(),
///     }
/// }
/// ```
#[derive(Clone)]
pub struct AuthenticatedKey {
    record: Found,
    /// The name, copied from an in-memory entry when first asked for.
    name: OnceLock<Arc<str>>,
    rate_limit: Option<RateLimitStatus>,
}

/// A key as the store answered: its record, or the entry an in-memory store
/// keeps (read in place, usage counted in it).
#[derive(Clone)]
enum Found {
    Record(Arc<KeyRecord>),
    Stored(StoredKeyRef),
}

/// What judging a key reads, from a record or from an in-memory entry.
trait Verdict {
    fn revoked(&self) -> bool;
    fn expires(&self) -> bool;
    fn expired(&self, now: SystemTime) -> bool;
    fn rate_limit(&self) -> Option<RateLimit>;
    fn environment(&self) -> Environment;
    fn allows_ip(&self, client_ip: Option<IpAddr>) -> bool;
}

impl Verdict for KeyRecord {
    fn revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
    fn expires(&self) -> bool {
        self.expires_at.is_some()
    }
    fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
    fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }
    fn environment(&self) -> Environment {
        self.environment
    }
    fn allows_ip(&self, client_ip: Option<IpAddr>) -> bool {
        KeyRecord::allows_ip(self, client_ip)
    }
}

impl Verdict for Entry<'_> {
    fn revoked(&self) -> bool {
        self.is_revoked()
    }
    fn expires(&self) -> bool {
        Entry::expires(*self)
    }
    fn expired(&self, now: SystemTime) -> bool {
        Entry::expired(*self, now)
    }
    fn rate_limit(&self) -> Option<RateLimit> {
        Entry::rate_limit(*self)
    }
    fn environment(&self) -> Environment {
        Entry::environment(*self)
    }
    fn allows_ip(&self, client_ip: Option<IpAddr>) -> bool {
        Entry::allows_ip(*self, client_ip)
    }
}

impl AuthenticatedKey {
    /// The key's id.
    pub fn id(&self) -> KeyId {
        match &self.record {
            Found::Record(record) => record.id,
            Found::Stored(entry) => entry.entry().id(),
        }
    }

    /// The account that owns the key.
    pub fn owner(&self) -> &str {
        match &self.record {
            Found::Record(record) => &record.owner,
            Found::Stored(entry) => entry.entry().owner(),
        }
    }

    /// The key's name (for a key an in-memory store keeps, as it is when
    /// first asked for).
    pub fn name(&self) -> &str {
        match &self.record {
            Found::Record(record) => &record.name,
            Found::Stored(entry) => self.name.get_or_init(|| entry.entry().shared_name()),
        }
    }

    /// Live or test: a handler may act differently on test keys.
    pub fn environment(&self) -> Environment {
        match &self.record {
            Found::Record(record) => record.environment,
            Found::Stored(entry) => entry.entry().environment(),
        }
    }

    /// `tm_live_...abcd`, for logs a person reads.
    pub fn hint(&self) -> KeyHint {
        match &self.record {
            Found::Record(record) => record.hint,
            Found::Stored(entry) => entry.entry().hint(),
        }
    }

    /// Where the key stands in its rate-limit window, if it has a limit.
    pub fn rate_limit(&self) -> Option<RateLimitStatus> {
        self.rate_limit
    }
}

impl fmt::Debug for AuthenticatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticatedKey")
            .field("id", &self.id())
            .field("owner", &self.owner())
            .field("name", &self.name())
            .field("environment", &self.environment())
            .finish()
    }
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("store_timeout", &self.inner.store_timeout)
            .finish_non_exhaustive()
    }
}

impl KeyManager {
    /// A manager over `store`, with the system clock.
    pub fn new(store: impl KeyStore) -> KeyManager {
        // A store given as `Arc<dyn KeyStore>` is shared as it is, not
        // wrapped once more (which would cost every call a second dynamic
        // dispatch and pointer hop).
        let any: &dyn std::any::Any = &store;
        let store: Arc<dyn KeyStore> = match any.downcast_ref::<Arc<dyn KeyStore>>() {
            Some(shared) => Arc::clone(shared),
            None => Arc::new(store),
        };
        KeyManager {
            inner: Arc::new(Inner {
                store,
                clock: Arc::new(SystemClock),
                store_timeout: DEFAULT_STORE_TIMEOUT,
                usage: Arc::new(Tracker::new(UsageConfig::default())),
                limits: KeyLimits::default(),
                owner_locks: Arc::new(OwnerLocks::new()),
            }),
        }
    }

    /// A manager like this one with `change` applied to a copy of its settings.
    fn rebuilt(&self, change: impl FnOnce(&mut Inner)) -> KeyManager {
        let mut inner = Inner {
            store: Arc::clone(&self.inner.store),
            clock: Arc::clone(&self.inner.clock),
            store_timeout: self.inner.store_timeout,
            usage: Arc::clone(&self.inner.usage),
            limits: self.inner.limits,
            owner_locks: Arc::clone(&self.inner.owner_locks),
        };
        change(&mut inner);
        KeyManager {
            inner: Arc::new(inner),
        }
    }

    /// Monitors usage as `config` says (counting is on by default; see
    /// [`UsageConfig`]). Counts kept so far by this manager start afresh.
    /// Configure usage before the manager verifies keys: while the old
    /// manager is alive, the in-memory entries of keys it counted keep
    /// counting for it, and the new manager counts those keys in a map of
    /// its own (correct, one lookup slower; see
    /// [`StoredKey`](crate::store::StoredKey)).
    /// With an observer, a thread named `tm-auth-usage-observer` delivers its
    /// events, so a slow observer never slows requests.
    pub fn with_usage(self, config: UsageConfig) -> KeyManager {
        let tracker = Tracker::new(config);
        if let (Some(observer), Some(mut events)) =
            (tracker.config().observer.clone(), tracker.take_receiver())
        {
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
        self.rebuilt(|inner| inner.usage = Arc::new(tracker))
    }

    /// Uses `clock` to decide expiry and to stamp creation, revocation and
    /// rotation times.
    pub fn with_clock(self, clock: impl Clock) -> KeyManager {
        self.rebuilt(|inner| inner.clock = Arc::new(clock))
    }

    /// Bounds every store call by `timeout`; a call that takes longer fails
    /// with [`StoreError::Timeout`] (503 on the request path).
    pub fn with_store_timeout(self, timeout: Duration) -> KeyManager {
        self.rebuilt(|inner| inner.store_timeout = timeout)
    }

    /// Limits what one owner may hold (see [`KeyLimits`]; by default 100
    /// active keys per owner and 64 networks per allowlist).
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

    /// The manager's current time.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    async fn bounded<T>(
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

    /// Creates a key. The returned [`CreatedKey::key`] is the only time the
    /// key is seen; the store keeps its hash.
    ///
    /// Refused with [`ManagerError::TooManyKeys`] when the owner already
    /// has as many active keys as [`KeyLimits`] allows.
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey, ManagerError> {
        self.create_within_limit(new, false).await
    }

    /// Creates a key once the owner has room for it. `replacing` says the
    /// new key takes the place of an active key that ends as it starts (a
    /// rotation with no grace period), so it needs no room of its own.
    async fn create_within_limit(
        &self,
        new: NewKey,
        replacing: bool,
    ) -> Result<CreatedKey, ManagerError> {
        validate_owner(&new.owner).map_err(ManagerError::InvalidOwner)?;
        let name = validate_name(&new.name).map_err(ManagerError::InvalidName)?;
        self.check_allowlist(new.allowed_ips.len())?;
        if let Some(limit) = &new.rate_limit {
            limit.check().map_err(ManagerError::InvalidRateLimit)?;
        }
        // The count and the insert that follows it run alone for this owner.
        let _owner = self.inner.owner_locks.lock(&new.owner).await;
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
                name: name.clone(),
                environment: new.environment,
                hint: key.hint(),
                hash: key.hash(),
                allowed_ips: new.allowed_ips.clone(),
                created_at: self.now(),
                expires_at: new.expires_at,
                revoked_at: None,
                rate_limit: new.rate_limit,
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

    /// Changes the name and/or IP allowlist. A revoked key cannot be changed.
    pub async fn update(&self, id: &KeyId, update: KeyUpdate) -> Result<KeyRecord, ManagerError> {
        let name = match &update.name {
            Some(name) => Some(validate_name(name).map_err(ManagerError::InvalidName)?),
            None => None,
        };
        if let Some(allowed) = &update.allowed_ips {
            self.check_allowlist(allowed.len())?;
        }
        if let Some(Some(limit)) = &update.rate_limit {
            limit.check().map_err(ManagerError::InvalidRateLimit)?;
        }
        let change = StoreUpdate {
            name,
            allowed_ips: update.allowed_ips,
            expires_at: None,
            rate_limit: update.rate_limit,
        };
        let record = self
            .bounded(None, self.inner.store.update(id, &change))
            .await?
            .ok_or(ManagerError::NotFound)?;
        if record.revoked_at.is_some() {
            return Err(ManagerError::Revoked);
        }
        tracing::info!(key_id = %record.id, "API key updated");
        Ok(record)
    }

    /// Revokes a key: immediately (the next verification fails), irreversibly
    /// and idempotently (a second call returns the same `revoked_at`).
    pub async fn revoke(&self, id: &KeyId) -> Result<KeyRecord, ManagerError> {
        let record = self
            .bounded(None, self.inner.store.revoke(id, self.now()))
            .await?
            .ok_or(ManagerError::NotFound)?;
        tracing::info!(key_id = %record.id, "API key revoked");
        Ok(record)
    }

    /// Replaces a key: a new key with the same owner, name, environment,
    /// allowlist and expiry, while the old one keeps working for `grace`
    /// (until the earlier of its own expiry and now + `grace`; with
    /// `Duration::ZERO` it stops at once).
    ///
    /// Either completes or leaves the old key as it was: a new key created
    /// before a failure is revoked before the error is returned.
    pub async fn rotate(&self, id: &KeyId, grace: Duration) -> Result<CreatedKey, ManagerError> {
        let old = self.get(id).await?;
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
        // With no grace period the old key ends as the new one starts.
        let created = self.create_within_limit(new, grace.is_zero()).await?;
        // A grace too long to represent leaves the old expiry as it is.
        let Some(cutoff) = self.now().checked_add(grace) else {
            return Ok(created);
        };
        let change = StoreUpdate {
            expires_at: Some(cutoff),
            ..StoreUpdate::default()
        };
        let outcome = match self
            .bounded(None, self.inner.store.update(id, &change))
            .await
        {
            Ok(Some(record)) if record.revoked_at.is_some() => Err(ManagerError::Revoked),
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ManagerError::NotFound),
            Err(err) => Err(ManagerError::Store(err)),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(old_key_id = %id, new_key_id = %created.record.id, "API key rotated");
                Ok(created)
            }
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

    /// Verifies `secret` as a request would: format, lookup, revoked,
    /// expired, then the client IP against the key's allowlist (`None`: the
    /// address is unknown, which fails for a key that has an allowlist).
    pub async fn verify(
        &self,
        secret: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<AuthenticatedKey, AuthError> {
        self.verify_with(secret, VerifyOptions::new().client_ip(client_ip))
            .await
    }

    /// [`verify`](KeyManager::verify) with every option.
    pub async fn verify_with(
        &self,
        secret: &str,
        options: VerifyOptions,
    ) -> Result<AuthenticatedKey, AuthError> {
        let hash = TmKey::hash_of(secret)?;
        self.verify_hash(&hash, options).await
    }

    /// Verifies an already parsed key. Checks run in this order and the first
    /// failure answers: lookup, revoked, expired, environment, client IP.
    pub async fn verify_key(
        &self,
        key: &TmKey,
        options: VerifyOptions,
    ) -> Result<AuthenticatedKey, AuthError> {
        self.verify_hash(&key.hash(), options).await
    }

    /// [`verify_key`](KeyManager::verify_key) without waiting, when the store
    /// can answer at once ([`KeyStore::find_stored_now`] or
    /// [`KeyStore::find_by_hash_now`]); `None` otherwise.
    pub fn verify_key_now(
        &self,
        key: &TmKey,
        options: VerifyOptions,
    ) -> Option<Result<AuthenticatedKey, AuthError>> {
        self.verify_hash_now(&key.hash(), options)
    }

    pub(crate) async fn verify_hash(
        &self,
        hash: &KeyHash,
        options: VerifyOptions,
    ) -> Result<AuthenticatedKey, AuthError> {
        if let Some(verdict) = self.verify_hash_now(hash, options) {
            return verdict;
        }
        // Boxed: the store's future, and the timer racing it, are large, and
        // a future that carried them inline would cost every verification
        // that never needs them a copy.
        let found = Box::pin(self.bounded(options.timeout, self.inner.store.find_by_hash(hash)))
            .await
            .map_err(AuthError::StoreUnavailable)?;
        self.judge(hash, found.map(Found::Record), options)
    }

    /// The store's answer if it has one without waiting: its in-memory
    /// entry where it keeps them (read in place, usage counted in it), else
    /// its record.
    fn find_now(&self, hash: &KeyHash) -> Option<Result<Option<Found>, StoreError>> {
        let store = &self.inner.store;
        if let Some(found) = store.find_stored_now(hash) {
            return Some(found.map(|found| found.map(Found::Stored)));
        }
        let found = store.find_by_hash_now(hash)?;
        Some(found.map(|found| found.map(Found::Record)))
    }

    pub(crate) fn verify_hash_now(
        &self,
        hash: &KeyHash,
        options: VerifyOptions,
    ) -> Option<Result<AuthenticatedKey, AuthError>> {
        let found = self.find_now(hash)?;
        Some(
            found
                .map_err(AuthError::StoreUnavailable)
                .and_then(|found| self.judge(hash, found, options)),
        )
    }

    /// Everything after the lookup, in order: revoked, expired, environment,
    /// client IP, rate limit.
    fn judge(
        &self,
        hash: &KeyHash,
        found: Option<Found>,
        options: VerifyOptions,
    ) -> Result<AuthenticatedKey, AuthError> {
        let record = found.ok_or(AuthError::UnknownKey)?;
        // A store that answers with another key's record is treated as not
        // having found one.
        let rate_limit = match &record {
            Found::Record(stored) if stored.hash == *hash => {
                self.check(&**stored, Subject::Record(stored), options)?
            }
            Found::Stored(handle) => {
                // Found once: every check below reads the entry directly.
                let entry = handle.entry();
                if !entry.hot().hash_is(hash) {
                    return Err(AuthError::UnknownKey);
                }
                self.check(&entry, Subject::Entry { handle, entry }, options)?
            }
            _ => return Err(AuthError::UnknownKey),
        };
        Ok(AuthenticatedKey {
            record,
            name: OnceLock::new(),
            rate_limit,
        })
    }

    /// The checks after the lookup; on success, where the key stands in its
    /// rate-limit window.
    fn check(
        &self,
        key: &impl Verdict,
        subject: Subject<'_>,
        options: VerifyOptions,
    ) -> Result<Option<RateLimitStatus>, AuthError> {
        let usage = &*self.inner.usage;
        let refuse = |reason: Rejection, err: AuthError| {
            usage.rejected(subject, reason);
            Err(err)
        };
        if key.revoked() {
            return refuse(Rejection::Revoked, AuthError::Revoked);
        }
        let limit = key.rate_limit();
        let expires = key.expires();
        // The clock is read once, and only when something needs it: as a
        // `SystemTime` for a key that expires, else in the milliseconds
        // that are all counting and rate limits use.
        let clock = &*self.inner.clock;
        let now_ms = if expires {
            let now = clock.now();
            if key.expired(now) {
                return refuse(Rejection::Expired, AuthError::Expired);
            }
            millis_since_epoch(now)
        } else if limit.is_some() || usage.config().enabled {
            clock.now_millis()
        } else {
            0
        };
        if let Some(required) = options.environment {
            let actual = key.environment();
            if actual != required {
                let err = AuthError::WrongEnvironment { required, actual };
                return refuse(Rejection::WrongEnvironment, err);
            }
        }
        if !key.allows_ip(options.client_ip) {
            let err = AuthError::IpNotAllowed {
                client_ip: options.client_ip,
            };
            return refuse(Rejection::IpNotAllowed, err);
        }
        let rate_limit = match limit {
            Some(limit) => match usage.take(subject, limit, now_ms) {
                Ok(status) => Some(status),
                Err(retry_after) => {
                    return Err(AuthError::RateLimited {
                        retry_after,
                        limit: limit.requests(),
                    })
                }
            },
            None => None,
        };
        usage.succeeded(subject, now_ms, options.client_ip, clock);
        Ok(rate_limit)
    }

    /// A key's usage: the store's totals plus what this process has counted
    /// and not flushed yet, and its per-minute history.
    pub async fn usage(&self, id: &KeyId) -> Result<KeyUsage, ManagerError> {
        let usage = &self.inner.usage;
        // Read against a consistent store: no flush moves counts meanwhile.
        let _flushing = usage.flush_lock.lock().await;
        let totals = self
            .bounded(None, self.inner.store.usage(id))
            .await?
            .ok_or(ManagerError::NotFound)?;
        Ok(usage.usage(*id, totals, self.now()))
    }

    /// The usage of several keys, in the order of `ids` (`None` for an id
    /// no key has), read from the store in one call: what a page of keys
    /// shows. Each is what [`usage`](KeyManager::usage) would say.
    pub async fn usage_batch(&self, ids: &[KeyId]) -> Result<Vec<Option<KeyUsage>>, ManagerError> {
        let usage = &self.inner.usage;
        let _flushing = usage.flush_lock.lock().await;
        let totals = self
            .bounded(None, self.inner.store.usage_batch(ids))
            .await?;
        if totals.len() != ids.len() {
            return Err(ManagerError::Store(StoreError::backend(format!(
                "usage_batch answered {} totals for {} ids",
                totals.len(),
                ids.len()
            ))));
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
            self.bounded(None, self.inner.store.record_usage(&batch.deltas))
                .await?;
            batch.mark_sent(usage);
            written += batch.deltas.len();
        }
        Ok(written)
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
