//! One rate limit per key across every server: [`RedisLimiter`] takes
//! leases of quota from Redis and spends them locally.
//!
//! ```no_run
//! use tm_auth::redis_limiter::{OnStoreDown, RedisLimiter, RedisLimiterConfig};
//! use tm_auth::{KeyManager, MemoryStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RedisLimiter::connect(
//!     "redis://127.0.0.1:6379",
//!     RedisLimiterConfig::new().on_store_down(OnStoreDown::LocalShare),
//! )
//! .await?;
//! let manager = KeyManager::builder(MemoryStore::new())
//!     .rate_limiter(limiter.clone())
//!     .build();
//! // ... serve with `manager.layer()` ...
//! # let _ = manager;
//! // Once the server stops serving, give the unspent quota back.
//! limiter.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! Redis keeps, per key and window, the tokens granted so far. A server
//! asks for a *lease* of tokens with one Lua script that reads Redis's
//! `TIME`, so Redis's clock alone says which window a token belongs to
//! (fixed windows aligned to the Unix epoch, as for the in-process
//! limiter), and never grants more than the limit in a window. A request
//! spends one token of the server's lease with one compare-and-swap; it
//! waits for Redis only when the server holds no token for its key.
//!
//! Leases are sized from the key's recent rate on this server (about
//! 20 ms of it), at most 1 % of the limit per active server and half this
//! server's share of what is left; the next lease is asked for in the
//! background when half of one is spent. Requests that wait for a key's
//! lease are served in arrival order. Small limits (under 64 per active
//! server) and windows near exhaustion are leased one token per request.
//! Active servers are counted in a Redis sorted set each server beats into
//! every second.
//!
//! # What is guaranteed
//!
//! - **While Redis answers, a key is let in at most its limit in every
//!   window, across any number of servers**, whatever their clocks say:
//!   every admission spends a token granted for its window, Redis grants at
//!   most the limit per window, and a server stops spending a lease a guard
//!   of a few milliseconds before the window ends on its monotonic clock.
//! - The cost is under-use, never overshoot: tokens leased but not spent
//!   (at most about 1 % of the limit per server, or all of a crashed
//!   server's lease) are not granted again in that window. Call
//!   [`RedisLimiter::shutdown`] to give them back.
//! - No request waits for Redis longer than
//!   [`RedisLimiterConfig::timeout`] (50 ms by default).
//! - When Redis cannot be asked, the limiter decides locally, as
//!   [`OnStoreDown`] says; the guarantee then no longer holds. A server
//!   that cannot reach Redis while others can adds its local decisions to
//!   theirs: with [`OnStoreDown::LocalShare`], the cluster may let a key in
//!   up to its limit plus the share of each server without Redis. A lost
//!   Redis is tried again every 100 ms.
//! - A Redis that lost its counts (restarted empty, flushed) is noticed on
//!   its first answer; every key is then decided locally until the end of
//!   the window in which Redis began counting afresh, the same window on
//!   every server.
//! - A key's limit change applies on its next request: the server gives
//!   back the tokens leased under the old limit and leases under the new.
//!
//! A server keeps about 230 bytes for each key it has seen, for its life.
//!
//! Not supported: Redis Cluster (the scripts touch a per-key hash and one
//! shared marker, which need not share a slot). Use one primary, with
//! replicas or Sentinel for availability.

mod lease;
mod mono;
mod scripts;

use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::key::{KeyId, UniformHasher};
use crate::rate_limit::{Admission, RateLimit, RateLimitStatus, RateLimiter};

use lease::{guard_ms, Granted, KeyLease, NoToken};
use mono::Mono;
use scripts::Scripts;

/// What a [`RedisLimiter`] does when Redis cannot be asked (down, slower
/// than the timeout, or restarted without its counts). Leases a server
/// already holds are spent first in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreDown {
    /// Each server lets a key in up to its limit divided by the number of
    /// servers last seen active, counting what it already spent in the
    /// window: the cluster stays near the limit while Redis is away.
    #[default]
    LocalShare,
    /// Refuse (429) every request beyond the leases already held.
    Closed,
    /// Each server applies the whole limit on its own, as
    /// [`InProcessRateLimiter`](crate::InProcessRateLimiter) does.
    Open,
}

/// Settings of a [`RedisLimiter`].
///
/// ```
/// use std::time::Duration;
/// use tm_auth::redis_limiter::{OnStoreDown, RedisLimiterConfig};
///
/// let config = RedisLimiterConfig::new()
///     .key_prefix("billing-api")
///     .on_store_down(OnStoreDown::Closed)
///     .timeout(Duration::from_millis(20));
/// assert_eq!(config.timeout_value(), Duration::from_millis(20));
/// ```
#[derive(Debug, Clone)]
pub struct RedisLimiterConfig {
    key_prefix: String,
    on_store_down: OnStoreDown,
    timeout: Duration,
    heartbeat: Duration,
    lease_horizon: Duration,
}

/// The default [`RedisLimiterConfig::timeout`].
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

impl RedisLimiterConfig {
    /// Prefix `tm-auth`, [`OnStoreDown::LocalShare`], a 50 ms timeout, a
    /// heartbeat every second, leases of about 20 ms of traffic.
    pub fn new() -> RedisLimiterConfig {
        RedisLimiterConfig {
            key_prefix: "tm-auth".to_owned(),
            on_store_down: OnStoreDown::default(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            heartbeat: Duration::from_secs(1),
            lease_horizon: Duration::from_millis(20),
        }
    }

    /// The prefix of every Redis key the limiter writes: servers that share
    /// limits share a prefix; services that do not, use different ones.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> RedisLimiterConfig {
        self.key_prefix = prefix.into();
        self
    }

    /// What to do when Redis cannot be asked.
    pub fn on_store_down(mut self, mode: OnStoreDown) -> RedisLimiterConfig {
        self.on_store_down = mode;
        self
    }

    /// The longest a request waits for Redis (at least 1 ms); past it, the
    /// request is decided as [`OnStoreDown`] says.
    pub fn timeout(mut self, timeout: Duration) -> RedisLimiterConfig {
        self.timeout = timeout;
        self
    }

    /// The timeout set.
    pub fn timeout_value(&self) -> Duration {
        self.timeout
    }

    /// How often a server tells Redis it is active (at least 10 ms); a
    /// server silent for three beats is no longer counted.
    pub fn heartbeat(mut self, every: Duration) -> RedisLimiterConfig {
        self.heartbeat = every;
        self
    }

    /// How much of a key's traffic a lease should cover (at least 1 ms):
    /// longer means fewer Redis calls and more quota held per server.
    pub fn lease_horizon(mut self, horizon: Duration) -> RedisLimiterConfig {
        self.lease_horizon = horizon;
        self
    }

    fn check(&self) -> Result<(), RedisLimiterError> {
        if self.key_prefix.is_empty() || self.key_prefix.len() > 128 {
            return Err(RedisLimiterError::Config(
                "the key prefix is between 1 and 128 bytes",
            ));
        }
        if self.timeout < Duration::from_millis(1) {
            return Err(RedisLimiterError::Config("the timeout is at least 1 ms"));
        }
        if self.heartbeat < Duration::from_millis(10) {
            return Err(RedisLimiterError::Config("the heartbeat is at least 10 ms"));
        }
        if self.lease_horizon < Duration::from_millis(1) {
            return Err(RedisLimiterError::Config(
                "the lease horizon is at least 1 ms",
            ));
        }
        Ok(())
    }
}

impl Default for RedisLimiterConfig {
    fn default() -> RedisLimiterConfig {
        RedisLimiterConfig::new()
    }
}

/// Why a [`RedisLimiter`] could not connect or shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisLimiterError {
    /// The URL is not a Redis URL.
    #[error("not a Redis URL: {0}")]
    InvalidUrl(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A setting is out of range.
    #[error("invalid Redis limiter setting: {0}")]
    Config(&'static str),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis failed: {0}")]
    Redis(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl RedisLimiterError {
    fn redis(error: redis::RedisError) -> RedisLimiterError {
        RedisLimiterError::Redis(Box::new(error))
    }
}

/// How long the connection to Redis may take when the limiter starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a limiter that lost Redis tries it again.
const DOWN_PROBE: Duration = Duration::from_millis(100);

/// A [`RateLimiter`] shared by every server that connects to the same
/// Redis with the same [key prefix](RedisLimiterConfig::key_prefix): a
/// key's limit holds across all of them. See the [module
/// docs](crate::redis_limiter) for how, and for what is guaranteed.
///
/// Cheap to clone; clones share leases. Keep one to call
/// [`shutdown`](RedisLimiter::shutdown) once the server stops serving.
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    scripts: Scripts,
    config: RedisLimiterConfig,
    server_id: String,
    servers_key: String,
    generation_key: String,
    keys: papaya::HashMap<KeyId, Arc<KeyLease>, BuildHasherDefault<UniformHasher>>,
    clock: Mono,
    /// Active servers as of the last heartbeat, this one included.
    servers: AtomicU32,
    /// Redis did not answer the last call.
    down: AtomicBool,
    /// [`RedisLimiter::shutdown`] ran: no more leases.
    shut: AtomicBool,
    /// Requests decided without Redis.
    local_decisions: AtomicU64,
    /// The generation marker of the Redis whose counts are trusted.
    generation: Mutex<String>,
    /// When Redis began counting afresh after losing its counts (Redis's
    /// time in ms, read from the new generation marker), 0 for never; and
    /// when this server noticed, on Redis's clock and on its own.
    lost_at: AtomicU64,
    noticed_redis: AtomicU64,
    noticed_mono: AtomicU64,
    /// Leases' round trip, in µs: a moving average (1/8 of each new one).
    round_trip_us: AtomicU64,
    runtime: tokio::runtime::Handle,
}

impl RedisLimiter {
    /// Connects to Redis at `url` (`redis://[:password@]host[:port][/db]`),
    /// joins the set of active servers and starts the heartbeat. Fails when
    /// Redis cannot be reached within 2 seconds or a setting is out of
    /// range. Call it inside a tokio runtime: leases are asked for on it.
    pub async fn connect(
        url: &str,
        config: RedisLimiterConfig,
    ) -> Result<RedisLimiter, RedisLimiterError> {
        config.check()?;
        let client =
            redis::Client::open(url).map_err(|e| RedisLimiterError::InvalidUrl(Box::new(e)))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(CONNECT_TIMEOUT)))
            // Each call is bounded by `config.timeout` where it is made; the
            // connection's own bound only keeps a lost reply from pinning it.
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            // A lost Redis is tried again at least every 100 ms: a server
            // back on Redis late counts locally while the others share.
            .set_max_delay(Duration::from_millis(100));
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| RedisLimiterError::Timeout(CONNECT_TIMEOUT))?
        .map_err(RedisLimiterError::redis)?;
        let mut id = [0u8; 8];
        crate::key::fill_random(&mut id).map_err(|e| RedisLimiterError::Redis(Box::new(e)))?;
        let prefix = &config.key_prefix;
        let inner = Arc::new(Inner {
            conn,
            scripts: Scripts::new(),
            servers_key: format!("{prefix}:servers"),
            generation_key: format!("{prefix}:generation"),
            server_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            config,
            keys: papaya::HashMap::builder()
                .hasher(BuildHasherDefault::<UniformHasher>::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            clock: Mono::new(),
            servers: AtomicU32::new(1),
            down: AtomicBool::new(false),
            shut: AtomicBool::new(false),
            local_decisions: AtomicU64::new(0),
            generation: Mutex::new(String::new()),
            lost_at: AtomicU64::new(0),
            noticed_redis: AtomicU64::new(0),
            noticed_mono: AtomicU64::new(0),
            round_trip_us: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
        });
        let beat = tokio::time::timeout(CONNECT_TIMEOUT, inner.beat_once())
            .await
            .map_err(|_| RedisLimiterError::Timeout(CONNECT_TIMEOUT))?
            .map_err(RedisLimiterError::redis)?;
        *inner.generation_lock() = beat.generation;
        inner.servers.store(beat.servers.max(1), Ordering::Relaxed);
        tokio::spawn(Inner::beat_forever(Arc::downgrade(&inner)));
        Ok(RedisLimiter { inner })
    }

    /// Servers that beat into Redis within the last three heartbeats, this
    /// one included, as of the last heartbeat.
    pub fn active_servers(&self) -> u32 {
        self.inner.servers.load(Ordering::Relaxed)
    }

    /// Whether the last call to Redis was answered in time.
    pub fn redis_answers(&self) -> bool {
        !self.inner.down.load(Ordering::Relaxed)
    }

    /// Requests decided so far without Redis, as [`OnStoreDown`] says:
    /// Redis did not answer within the timeout, or had lost its counts.
    /// The cluster-wide guarantee covers every other request.
    pub fn decided_locally(&self) -> u64 {
        self.inner.local_decisions.load(Ordering::Relaxed)
    }

    /// Gives back the unspent tokens of every lease, leaves the set of
    /// active servers and stops the heartbeat; answers the tokens given
    /// back. Call it once the server no longer serves: from then on the
    /// limiter refuses every request that its leases do not cover.
    pub async fn shutdown(&self) -> Result<u64, RedisLimiterError> {
        let inner = &self.inner;
        inner.shut.store(true, Ordering::Release);
        let drained: Vec<(String, u64, u32)> = {
            let guard = inner.keys.guard();
            inner
                .keys
                .iter(&guard)
                .filter_map(|(id, lease)| {
                    let (window, tokens) = lease.drain()?;
                    Some((inner.key_name(*id), window, tokens))
                })
                .collect()
        };
        // Not on a request's path: bounded by the connect timeout, not the
        // request timeout.
        let mut conn = inner.conn.clone();
        let given_back = within(
            CONNECT_TIMEOUT,
            inner.scripts.release_all(&mut conn, &drained),
        )
        .await?;
        let mut leave = redis::cmd("ZREM");
        leave.arg(&inner.servers_key).arg(&inner.server_id);
        within(CONNECT_TIMEOUT, leave.query_async::<u64>(&mut conn)).await?;
        Ok(given_back)
    }
}

/// Whether two times (ms) fall in the same window of `limit`.
fn same_window(a: u64, b: u64, limit: RateLimit) -> bool {
    a / limit.window_ms() == b / limit.window_ms()
}

/// When a generation marker was written: the scripts write Redis's `TIME`
/// as seconds followed by six digits of microseconds.
fn marker_ms(generation: &str) -> Option<u64> {
    let micros: u64 = generation.parse().ok()?;
    Some(micros / 1_000)
}

/// `call`'s answer, or [`RedisLimiterError::Timeout`] after `limit`.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisLimiterError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| RedisLimiterError::Timeout(limit))?
        .map_err(RedisLimiterError::redis)
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisLimiter")
            .field("key_prefix", &inner.config.key_prefix)
            .field("server", &inner.server_id)
            .field("on_store_down", &inner.config.on_store_down)
            .field("keys", &inner.keys.len())
            .field("active_servers", &inner.servers.load(Ordering::Relaxed))
            .field("redis_answers", &!inner.down.load(Ordering::Relaxed))
            .field(
                "decided_locally",
                &inner.local_decisions.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl RateLimiter for RedisLimiter {
    fn admit(&self, id: KeyId, limit: RateLimit, now_ms: u64) -> Admission {
        let inner = &self.inner;
        let guard = inner.keys.guard();
        let lease = match inner.keys.get(&id, &guard) {
            Some(lease) => lease,
            None => inner
                .keys
                .get_or_insert_with(id, || Arc::new(KeyLease::new(limit)), &guard),
        };
        if lease.limit_word() != limit.to_word() {
            if let Some((window, tokens)) = lease.relimit(limit) {
                inner.give_back(id, window, tokens);
            }
        }
        // While requests wait for this key's lease, a new one queues behind
        // them: were it to take the tokens they wait for, a waiter could
        // lose every round to newer requests.
        let spent = if lease.has_waiters() {
            None
        } else {
            lease.spend(&inner.clock)
        };
        if let Some(left) = spent {
            let now = inner.clock.coarse();
            if lease.wants_more(left) && !inner.degraded(limit, now) {
                inner.ask(id, lease, limit);
            }
            return Admission::Now(Ok(lease.status(limit, left, now)));
        }
        let now = inner.now();
        if inner.degraded(limit, now) {
            return Admission::Now(inner.decide_locally(lease, limit, now_ms));
        }
        match lease.no_token(now) {
            NoToken::Exhausted(wait) => Admission::Now(Err(wait)),
            NoToken::Closing(_) | NoToken::Ask => Admission::Later(Box::pin(
                Arc::clone(inner).wait_for_lease(id, Arc::clone(lease), limit, now_ms),
            )),
        }
    }
}

impl Inner {
    /// Milliseconds on the limiter's monotonic clock, never 0.
    fn now(&self) -> u64 {
        self.clock.precise()
    }

    fn key_name(&self, id: KeyId) -> String {
        format!("{}:key:{id}", self.config.key_prefix)
    }

    fn generation_lock(&self) -> std::sync::MutexGuard<'_, String> {
        self.generation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisLimiterError> {
        within(self.config.timeout, call).await
    }

    /// Whether `limit`'s key is decided locally at `now`: Redis does not
    /// answer, or began counting afresh during the key's current window
    /// (its counts for the window's start are gone).
    fn degraded(&self, limit: RateLimit, now: u64) -> bool {
        if self.down.load(Ordering::Relaxed) || self.shut.load(Ordering::Relaxed) {
            return true;
        }
        let lost_at = self.lost_at.load(Ordering::Acquire);
        if lost_at == 0 {
            return false;
        }
        let redis_now = self.noticed_redis.load(Ordering::Relaxed)
            + now.saturating_sub(self.noticed_mono.load(Ordering::Relaxed));
        same_window(redis_now, lost_at, limit)
    }

    fn decide_locally(
        &self,
        lease: &KeyLease,
        limit: RateLimit,
        now_ms: u64,
    ) -> Result<RateLimitStatus, std::time::Duration> {
        self.local_decisions.fetch_add(1, Ordering::Relaxed);
        let mode = if self.shut.load(Ordering::Relaxed) {
            OnStoreDown::Closed
        } else {
            self.config.on_store_down
        };
        let allowed = match mode {
            OnStoreDown::Open => limit.requests(),
            OnStoreDown::LocalShare => {
                limit.requests() / self.servers.load(Ordering::Relaxed).max(1)
            }
            OnStoreDown::Closed => 0,
        };
        lease.take_locally(limit, allowed, now_ms)
    }

    async fn wait_for_lease(
        self: Arc<Self>,
        id: KeyId,
        lease: Arc<KeyLease>,
        limit: RateLimit,
        now_ms: u64,
    ) -> Result<RateLimitStatus, Duration> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let _waiting = lease.wait();
        // First come, first served: only the head of the queue spends or
        // asks, so a waiter never loses its turn to a newer request.
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, lease.queue.acquire()).await else {
            return self.decide_locally(&lease, limit, now_ms);
        };
        loop {
            let answered = lease.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let now = self.now();
            if let Some(left) = lease.spend(&self.clock) {
                return Ok(lease.status(limit, left, now));
            }
            if self.degraded(limit, now) {
                return self.decide_locally(&lease, limit, now_ms);
            }
            match lease.no_token(now) {
                NoToken::Exhausted(wait) => return Err(wait),
                NoToken::Closing(wait) => {
                    let until = tokio::time::Instant::now() + wait;
                    if until > deadline {
                        tokio::time::sleep_until(deadline).await;
                        return self.decide_locally(&lease, limit, now_ms);
                    }
                    tokio::time::sleep_until(until).await;
                    continue;
                }
                NoToken::Ask => self.ask(id, &lease, limit),
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return self.decide_locally(&lease, limit, now_ms);
            }
        }
    }

    /// Asks Redis for a lease for `id` in the background, unless an ask is
    /// already on its way.
    fn ask(self: &Arc<Self>, id: KeyId, lease: &Arc<KeyLease>, limit: RateLimit) {
        if !lease.claim_ask() {
            return;
        }
        struct Asking(Arc<KeyLease>);
        impl Drop for Asking {
            fn drop(&mut self) {
                self.0.ask_ended();
            }
        }
        let asking = Asking(Arc::clone(lease));
        let inner = Arc::clone(self);
        self.runtime.spawn(async move {
            inner.lease(id, &asking.0, limit).await;
            drop(asking);
        });
    }

    async fn lease(self: &Arc<Self>, id: KeyId, lease: &KeyLease, limit: RateLimit) {
        let sent = self.now();
        let want = lease.want(
            limit,
            self.servers.load(Ordering::Relaxed),
            sent,
            self.config.lease_horizon.as_millis() as u64,
        );
        let min_ms = self.min_lease_ms(limit);
        let key = self.key_name(id);
        let mut conn = self.conn.clone();
        let reply = self
            .bounded(self.scripts.lease(
                &mut conn,
                &key,
                &self.generation_key,
                (limit.requests(), limit.window_ms()),
                want,
                min_ms,
            ))
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => return self.went_down(&error),
        };
        let received = self.now();
        self.came_back();
        self.timed_round_trip(received - sent);
        let redis_now =
            (reply.window + 1) * limit.window_ms() - reply.to_end_ms.min(limit.window_ms());
        if self.lost_counts(&reply.generation, redis_now, sent) {
            if reply.granted > 0 {
                self.give_back(id, reply.window, reply.granted);
            }
            return;
        }
        let granted = Granted::new(&reply, sent);
        if !lease.install(granted, limit.to_word()) && reply.granted > 0 {
            self.give_back(id, reply.window, reply.granted);
        }
    }

    /// How close to its window's end a lease is no longer granted: its
    /// tokens could not be spent in time. The guard, plus a round trip, at
    /// most half the request timeout: the requests that wait for the next
    /// window meanwhile must not run out of time.
    fn min_lease_ms(&self, limit: RateLimit) -> u64 {
        let round_trip = self.round_trip_us.load(Ordering::Relaxed).div_ceil(1_000);
        let most = self.config.timeout.as_millis() as u64 / 2;
        guard_ms(limit.window_ms()) + round_trip.min(most)
    }

    fn timed_round_trip(&self, ms: u64) {
        let sample = ms * 1_000;
        let average = self.round_trip_us.load(Ordering::Relaxed);
        let next = if average == 0 {
            sample
        } else {
            (average * 7 + sample) / 8
        };
        self.round_trip_us.store(next, Ordering::Relaxed);
    }

    /// Gives `tokens` of `window` back to Redis, in the background.
    fn give_back(self: &Arc<Self>, id: KeyId, window: u64, tokens: u32) {
        let inner = Arc::clone(self);
        self.runtime.spawn(async move {
            let mut conn = inner.conn.clone();
            let key = inner.key_name(id);
            if let Err(error) = inner
                .bounded(inner.scripts.release(&mut conn, &key, window, tokens))
                .await
            {
                tracing::debug!(%error, "tm-auth: unspent rate-limit tokens not given back");
            }
        });
    }

    /// Whether Redis's generation marker says it lost the counts this
    /// server trusted; if so, keys are counted locally until the window in
    /// which Redis began counting afresh ends.
    ///
    /// That moment is the new marker's: the first script to run on the
    /// empty Redis wrote it with Redis's time. Every server reads the same
    /// marker, so all of them distrust the same windows, however late each
    /// notices; a server that noticed at `redis_now` would not agree with
    /// one that noticed a window later.
    fn lost_counts(&self, generation: &str, redis_now: u64, seen: u64) -> bool {
        let mut known = self.generation_lock();
        if *known == generation {
            return false;
        }
        *known = generation.to_owned();
        let began = marker_ms(generation)
            .filter(|&began| began <= redis_now)
            .unwrap_or(redis_now);
        self.noticed_redis.store(redis_now, Ordering::Relaxed);
        self.noticed_mono.store(seen, Ordering::Relaxed);
        self.lost_at.store(began.max(1), Ordering::Release);
        tracing::warn!(
            "tm-auth: Redis lost its rate-limit counts (restarted empty or flushed); \
             keys are counted locally until their current window ends"
        );
        true
    }

    fn went_down(&self, error: &RedisLimiterError) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(%error, mode = ?self.config.on_store_down,
                "tm-auth: Redis does not answer; rate limits are decided locally");
        }
    }

    fn came_back(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("tm-auth: Redis answers again; rate limits are shared");
        }
    }

    async fn beat_once(&self) -> redis::RedisResult<scripts::HeartbeatReply> {
        let mut conn = self.conn.clone();
        let ttl = self.config.heartbeat.as_millis() as u64 * 3;
        self.scripts
            .heartbeat(
                &mut conn,
                &self.servers_key,
                &self.generation_key,
                &self.server_id,
                ttl,
            )
            .await
    }

    async fn beat_forever(inner: Weak<Inner>) {
        loop {
            let pause = match inner.upgrade() {
                Some(inner) if inner.shut.load(Ordering::Relaxed) => return,
                Some(inner) if inner.down.load(Ordering::Relaxed) => DOWN_PROBE,
                Some(inner) => inner.config.heartbeat,
                None => return,
            };
            tokio::time::sleep(pause).await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.shut.load(Ordering::Relaxed) {
                return;
            }
            let seen = inner.now();
            match inner.bounded(inner.beat_once()).await {
                Ok(beat) => {
                    inner.came_back();
                    inner.servers.store(beat.servers.max(1), Ordering::Relaxed);
                    inner.lost_counts(&beat.generation, beat.now_ms, seen);
                }
                Err(error) => inner.went_down(&error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn a_generation_marker_dates_the_fresh_start() {
        assert_eq!(marker_ms("1796322287913456"), Some(1_796_322_287_913));
        assert_eq!(marker_ms("1796322287000001"), Some(1_796_322_287_000));
        assert_eq!(marker_ms("not a marker"), None);
        let second = RateLimit::per_second(NonZeroU32::new(100).unwrap());
        // Noticed 100 ms into the next window: that window is trusted.
        assert!(!same_window(1_796_322_288_015, 1_796_322_287_913, second));
        assert!(same_window(1_796_322_287_990, 1_796_322_287_913, second));
    }
}
