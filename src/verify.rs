//! Verifying a key, in one place: the checks in order — lookup, revoked,
//! expired, environment, client IP, rate limit — each written once,
//! [`VerifyOptions`] for what is checked besides the key, and
//! [`AuthenticatedKey`], what a verification returns.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::clock::millis_since_epoch;
use crate::error::AuthError;
use crate::key::KeyId;
use crate::key::{Environment, KeyHash, KeyHint, TmKey};
use crate::manager::KeyManager;
use crate::rate_limit::{Admission, AdmissionFuture, RateLimit, RateLimitStatus};
use crate::record::KeyRecord;
use crate::scope::Scope;
use crate::store::memory::fast::Seal;
use crate::store::memory::Entry;
use crate::store::memory::Restrictions;
use crate::store::memory::StoredKeyRef;
use crate::store::StoreError;
use crate::usage::{Rejection, Subject};

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
    /// The scopes, read from an in-memory entry when first asked for
    /// (`None`: unrestricted).
    scopes: OnceLock<Option<Arc<Restrictions>>>,
    rate_limit: Option<RateLimitStatus>,
}

/// A key as the store answered: its record, or the entry an in-memory store
/// keeps (read in place, usage counted in it).
#[derive(Clone)]
enum Found {
    Record(Arc<KeyRecord>),
    Stored(StoredKeyRef),
}

/// A verification as far as it goes without waiting on the store.
pub(crate) enum Ready {
    Done(Result<AuthenticatedKey, AuthError>),
    /// Everything but the rate limiter's answer, which must be waited for.
    Later(Pin<Box<dyn Future<Output = Result<AuthenticatedKey, AuthError>> + Send>>),
}

/// Where the checks after the lookup ended.
enum Checked {
    /// Passed, with where the key stands in its rate-limit window.
    Done(Option<RateLimitStatus>),
    /// Passed all but the rate limit, which the limiter decides later.
    Later {
        admission: AdmissionFuture,
        now_ms: u64,
        limit: u32,
    },
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

    /// The key's scopes; empty for an unrestricted key. For a key an
    /// in-memory store keeps, they are read when first asked for, so a
    /// narrowing that returned before then already applies.
    pub fn scopes(&self) -> &[Scope] {
        match &self.record {
            Found::Record(record) => &record.scopes,
            Found::Stored(entry) => self
                .scopes
                .get_or_init(|| entry.entry().scopes())
                .as_deref()
                .map_or(&[], Restrictions::list),
        }
    }

    /// Whether the key may do what `scope` names: always for an
    /// unrestricted key (no scopes), otherwise only if `scope` is one of
    /// its scopes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tm_auth::{KeyManager, MemoryStore, NewKey};
    ///
    /// let manager = KeyManager::new(MemoryStore::new());
    /// let new = NewKey::new("acct_42", "Zapier").scopes(["emails:verify"]);
    /// let created = manager.create(new).await?;
    /// let who = manager.verify(created.key.expose_secret(), None).await?;
    /// assert!(who.has_scope("emails:verify"));
    /// assert!(!who.has_scope("lists:write"));
    /// # Ok(()) }
    /// ```
    pub fn has_scope(&self, scope: &str) -> bool {
        match &self.record {
            Found::Record(record) => record.has_scope(scope),
            // Read in place, as the key is now (unless `scopes` already
            // read them: then the same answer as that list).
            Found::Stored(entry) => match self.scopes.get() {
                Some(set) => set
                    .as_deref()
                    .is_none_or(|set| crate::scope::grants(set.list(), scope)),
                None => entry.entry().has_scope(scope),
            },
        }
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

impl KeyManager {
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
    /// can answer from memory (a [`MemoryStore`](crate::MemoryStore), a warm
    /// [`CachedStore`](crate::store::cache::CachedStore)) and the rate
    /// limiter at once; `None` when either must be waited on.
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
        let ready = match self.verify_hash_ready(hash, options) {
            Some(ready) => ready,
            None => {
                // Boxed: the store's future, and the timer racing it, are
                // large, and a future that carried them inline would cost
                // every verification that never needs them a copy.
                let found =
                    Box::pin(self.bounded(options.timeout, self.store().find_by_hash(hash)))
                        .await
                        .map_err(AuthError::StoreUnavailable)?;
                self.judge(hash, found.map(Found::Record), options)
            }
        };
        match ready {
            Ready::Done(verdict) => verdict,
            Ready::Later(verdict) => verdict.await,
        }
    }

    /// The store's answer if it has one without waiting: its in-memory
    /// entry, read in place, with usage counted in it.
    fn find_now(&self, hash: &KeyHash) -> Option<Result<Option<Found>, StoreError>> {
        let found = self
            .store()
            .fast_lookup(Seal::new())?
            .find_stored_now(hash)?;
        Some(found.map(|found| found.map(Found::Stored)))
    }

    pub(crate) fn verify_hash_now(
        &self,
        hash: &KeyHash,
        options: VerifyOptions,
    ) -> Option<Result<AuthenticatedKey, AuthError>> {
        match self.verify_hash_ready(hash, options)? {
            Ready::Done(verdict) => Some(verdict),
            Ready::Later(_) => None,
        }
    }

    /// As far as a verification goes without waiting on the store: `None`
    /// when the store must be waited on.
    pub(crate) fn verify_hash_ready(
        &self,
        hash: &KeyHash,
        options: VerifyOptions,
    ) -> Option<Ready> {
        Some(match self.find_now(hash)? {
            Ok(found) => self.judge(hash, found, options),
            Err(err) => Ready::Done(Err(AuthError::StoreUnavailable(err))),
        })
    }

    /// Everything after the lookup, in order: revoked, expired, environment,
    /// client IP, rate limit.
    fn judge(&self, hash: &KeyHash, found: Option<Found>, options: VerifyOptions) -> Ready {
        let Some(record) = found else {
            return Ready::Done(Err(AuthError::UnknownKey));
        };
        // A store that answers with another key's record is treated as not
        // having found one.
        let checked = match &record {
            Found::Record(stored) if stored.hash == *hash => {
                self.check(&**stored, Subject::Record(stored), options)
            }
            Found::Stored(handle) => {
                // Found once: every check below reads the entry directly.
                let entry = handle.entry();
                if !entry.hot().hash_is(hash) {
                    return Ready::Done(Err(AuthError::UnknownKey));
                }
                self.check(&entry, Subject::Entry { handle, entry }, options)
            }
            _ => return Ready::Done(Err(AuthError::UnknownKey)),
        };
        match checked {
            Err(err) => Ready::Done(Err(err)),
            Ok(Checked::Done(rate_limit)) => Ready::Done(Ok(AuthenticatedKey {
                record,
                name: OnceLock::new(),
                scopes: OnceLock::new(),
                rate_limit,
            })),
            Ok(Checked::Later {
                admission,
                now_ms,
                limit,
            }) => {
                let manager = self.clone();
                Ready::Later(Box::pin(async move {
                    // A limiter that does not answer is bounded like a store
                    // that does not: the request fails closed, it never hangs.
                    let decided = manager
                        .bounded(options.timeout, async { Ok(admission.await) })
                        .await
                        .map_err(AuthError::StoreUnavailable)?;
                    manager.admitted(record, decided, now_ms, limit, options)
                }))
            }
        }
    }

    /// The end of a verification whose rate limiter answered later: counts
    /// the request as `check` would have.
    fn admitted(
        &self,
        record: Found,
        decided: Result<RateLimitStatus, Duration>,
        now_ms: u64,
        limit: u32,
        options: VerifyOptions,
    ) -> Result<AuthenticatedKey, AuthError> {
        let rate_limit = {
            let subject = match &record {
                Found::Record(stored) => Subject::Record(stored),
                Found::Stored(handle) => Subject::Entry {
                    handle,
                    entry: handle.entry(),
                },
            };
            match decided {
                Ok(status) => {
                    self.tracker()
                        .succeeded(subject, now_ms, options.client_ip, self.clock());
                    status
                }
                Err(retry_after) => {
                    self.tracker().rejected(subject, Rejection::RateLimited);
                    return Err(AuthError::RateLimited { retry_after, limit });
                }
            }
        };
        Ok(AuthenticatedKey {
            record,
            name: OnceLock::new(),
            scopes: OnceLock::new(),
            rate_limit: Some(rate_limit),
        })
    }

    /// The checks after the lookup; on success, where the key stands in its
    /// rate-limit window, or the rate limiter's answer to wait for.
    fn check(
        &self,
        key: &impl Verdict,
        subject: Subject<'_>,
        options: VerifyOptions,
    ) -> Result<Checked, AuthError> {
        let usage = self.tracker();
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
        let clock = self.clock();
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
            Some(limit) => match self.rate_limiter().admit(subject.id(), limit, now_ms) {
                Admission::Now(Ok(status)) => Some(status),
                Admission::Now(Err(retry_after)) => {
                    let err = AuthError::RateLimited {
                        retry_after,
                        limit: limit.requests(),
                    };
                    return refuse(Rejection::RateLimited, err);
                }
                // Counted when decided, by `admitted`.
                Admission::Later(admission) => {
                    return Ok(Checked::Later {
                        admission,
                        now_ms,
                        limit: limit.requests(),
                    })
                }
            },
            None => None,
        };
        usage.succeeded(subject, now_ms, options.client_ip, clock);
        Ok(Checked::Done(rate_limit))
    }
}
