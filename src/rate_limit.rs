//! Per-key rate limits, in one place: [`RateLimit`] (valid by
//! construction), fixed windows aligned to the Unix epoch, the state of a
//! key's window, [`RateLimitStatus`], and the `RateLimit-*` response headers.
//!
//! A key has one [`Window`] per manager, kept by key id for the manager's
//! life whatever path counted the request (an in-memory store's entry, a
//! cache entry refilled after an eviction, a record from a store that must
//! be waited on): so a limit is exact within one process for every store.

use std::fmt;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};

use crate::key::{KeyId, UniformHasher};

/// A provider's per-key limit: at most [`requests`](RateLimit::requests) in
/// each [`window`](RateLimit::window) (fixed windows aligned to the Unix
/// epoch, e.g. every 5 minutes on the 5-minute marks).
///
/// Valid by construction: at least one request per window, and a window
/// within [`RATE_LIMIT_WINDOWS`] (1 second to 31 days). The common windows
/// have constructors that cannot fail; [`RateLimit::new`] checks any other.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use tm_auth::{InvalidRateLimit, NewKey, RateLimit};
///
/// // TrueMail's plans count requests per 5 minutes.
/// let limit = RateLimit::new(1_000, Duration::from_secs(300))?;
/// let new = NewKey::new("acct_42", "Production").rate_limit(limit);
/// # let _ = new;
///
/// let hourly = RateLimit::per_hour(NonZeroU32::new(5_000).unwrap());
/// assert_eq!(hourly.window(), Duration::from_secs(3600));
///
/// assert_eq!(RateLimit::new(0, Duration::from_secs(60)), Err(InvalidRateLimit::ZeroRequests));
/// # Ok::<(), InvalidRateLimit>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(try_from = "RateLimitFields", into = "RateLimitFields")
)]
pub struct RateLimit {
    requests: NonZeroU32,
    // Non-zero so that `Option<RateLimit>` takes 8 bytes in every record.
    window_ms: NonZeroU32,
}

/// Why a [`RateLimit`] cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRateLimit {
    /// Zero requests per window: a key that may never be used.
    #[error("a rate limit allows at least one request per window")]
    ZeroRequests,
    /// A window shorter than 1 second or longer than 31 days.
    #[error("a rate-limit window is between 1 second and 31 days, not {given:?}")]
    Window {
        /// The window asked for.
        given: Duration,
    },
}

/// Shortest and longest rate-limit windows a key may have.
pub const RATE_LIMIT_WINDOWS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(31 * 24 * 3600);

impl RateLimit {
    /// At most `requests` per `window`; refused with [`InvalidRateLimit`]
    /// for zero requests or a window outside [`RATE_LIMIT_WINDOWS`].
    pub fn new(requests: u32, window: Duration) -> Result<RateLimit, InvalidRateLimit> {
        let requests = NonZeroU32::new(requests).ok_or(InvalidRateLimit::ZeroRequests)?;
        if !RATE_LIMIT_WINDOWS.contains(&window) {
            return Err(InvalidRateLimit::Window { given: window });
        }
        // 31 days is 2 678 400 000 ms, under `u32::MAX`, and a second is
        // 1 000 ms, over zero: both conversions hold for every window here.
        let window_ms = u32::try_from(window.as_millis())
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or(InvalidRateLimit::Window { given: window })?;
        Ok(RateLimit {
            requests,
            window_ms,
        })
    }

    const fn per(requests: NonZeroU32, window_ms: NonZeroU32) -> RateLimit {
        RateLimit {
            requests,
            window_ms,
        }
    }

    /// At most `requests` a second.
    pub const fn per_second(requests: NonZeroU32) -> RateLimit {
        RateLimit::per(requests, NonZeroU32::new(1_000).unwrap())
    }

    /// At most `requests` a minute.
    pub const fn per_minute(requests: NonZeroU32) -> RateLimit {
        RateLimit::per(requests, NonZeroU32::new(60_000).unwrap())
    }

    /// At most `requests` an hour.
    pub const fn per_hour(requests: NonZeroU32) -> RateLimit {
        RateLimit::per(requests, NonZeroU32::new(3_600_000).unwrap())
    }

    /// At most `requests` a day.
    pub const fn per_day(requests: NonZeroU32) -> RateLimit {
        RateLimit::per(requests, NonZeroU32::new(86_400_000).unwrap())
    }

    /// Requests allowed per window.
    pub fn requests(&self) -> u32 {
        self.requests.get()
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms())
    }

    pub(crate) fn window_ms(&self) -> u64 {
        u64::from(self.window_ms.get())
    }

    /// The limit in one word, for a store that keeps it in an atomic: never
    /// zero (the window is at least 1 ms), so zero can mean "no limit".
    pub(crate) fn to_word(self) -> u64 {
        (u64::from(self.requests.get()) << 32) | u64::from(self.window_ms.get())
    }

    /// The limit [`to_word`](RateLimit::to_word) gave, or `None` for zero.
    pub(crate) fn from_word(word: u64) -> Option<RateLimit> {
        Some(RateLimit {
            requests: NonZeroU32::new((word >> 32) as u32)?,
            window_ms: NonZeroU32::new(word as u32)?,
        })
    }
}

/// A [`RateLimit`] as serialised: `{"requests": 1000, "window_ms": 300000}`,
/// checked like [`RateLimit::new`] when read.
#[cfg(feature = "serde")]
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFields {
    requests: u32,
    window_ms: u64,
}

#[cfg(feature = "serde")]
impl TryFrom<RateLimitFields> for RateLimit {
    type Error = InvalidRateLimit;

    fn try_from(fields: RateLimitFields) -> Result<RateLimit, InvalidRateLimit> {
        RateLimit::new(fields.requests, Duration::from_millis(fields.window_ms))
    }
}

#[cfg(feature = "serde")]
impl From<RateLimit> for RateLimitFields {
    fn from(limit: RateLimit) -> RateLimitFields {
        RateLimitFields {
            requests: limit.requests(),
            window_ms: limit.window_ms(),
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Where a key stands in its rate-limit window after a request was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStatus {
    /// Requests allowed per window.
    pub limit: u32,
    /// Requests left in the current window.
    pub remaining: u32,
    /// Time until the window ends.
    pub reset: Duration,
}

impl RateLimitStatus {
    /// `remaining` of `limit` requests left in a window that ends in `reset`:
    /// what a [`RateLimiter`] answers for a request it lets in.
    pub fn new(limit: u32, remaining: u32, reset: Duration) -> RateLimitStatus {
        RateLimitStatus {
            limit,
            remaining,
            reset,
        }
    }
}

/// The IETF draft's `RateLimit-Limit`, `RateLimit-Remaining` and
/// `RateLimit-Reset` (seconds until the window ends).
pub(crate) fn set_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: Duration) {
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert(
        "ratelimit-reset",
        HeaderValue::from(retry_after_secs(reset)),
    );
}

/// (window index, requests let in) of a key's current fixed window, in one
/// word: a request is let in by one compare-and-swap.
#[derive(Debug, Default)]
pub(crate) struct Window(AtomicU64);

impl Window {
    /// Lets a request at `now_ms` into the window or says how long to wait.
    /// Windows are aligned to the Unix epoch. A refused request does not use
    /// up quota.
    pub(crate) fn take(&self, limit: RateLimit, now_ms: u64) -> Result<RateLimitStatus, Duration> {
        let window_ms = limit.window_ms().max(1);
        let index = now_ms / window_ms;
        let reset = Duration::from_millis((index + 1) * window_ms - now_ms);
        let index = index as u32;
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let (at, used) = ((current >> 32) as u32, current as u32);
            let used = if at == index { used } else { 0 };
            if used >= limit.requests() {
                return Err(reset);
            }
            let next = (u64::from(index) << 32) | u64::from(used + 1);
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(RateLimitStatus {
                        limit: limit.requests(),
                        remaining: limit.requests() - used - 1,
                        reset,
                    })
                }
                Err(actual) => current = actual,
            }
        }
    }
}

// The shared limiter seeds the window it counts in while Redis is away.
#[cfg(feature = "redis")]
impl Window {
    /// Counts at least `used` requests as let in to window `index`, unless
    /// the window already moved past it.
    pub(crate) fn seed(&self, index: u64, used: u32) {
        let index = index as u32;
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let (at, counted) = ((current >> 32) as u32, current as u32);
            let counted = if at == index { counted } else { 0 };
            if at > index || counted >= used {
                return;
            }
            let next = (u64::from(index) << 32) | u64::from(used);
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// A [`RateLimiter`]'s answer for one request.
pub enum Admission {
    /// Decided at once: let in, with where the key now stands in its
    /// window; or refused, with how long until the window has room.
    Now(Result<RateLimitStatus, Duration>),
    /// To be decided by a future: a limiter shared by several servers that
    /// holds no quota for the key right now asks for some. The request
    /// waits for it, at most the manager's store timeout (past it, the
    /// request is answered 503 `key_store_unavailable`, as for a store that
    /// does not answer); a refused request uses no quota either way.
    Later(AdmissionFuture),
}

/// The future of an [`Admission::Later`].
pub type AdmissionFuture =
    Pin<Box<dyn Future<Output = Result<RateLimitStatus, Duration>> + Send + 'static>>;

impl Admission {
    /// Waits for the answer, if it is not known already.
    pub async fn decided(self) -> Result<RateLimitStatus, Duration> {
        match self {
            Admission::Now(answer) => answer,
            Admission::Later(future) => future.await,
        }
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Admission::Now(answer) => f.debug_tuple("Now").field(answer).finish(),
            Admission::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// Decides whether a request of a rate-limited key is let in: the limiter
/// a [`KeyManager`](crate::KeyManager) admits requests with.
///
/// [`InProcessRateLimiter`] is the default; a limiter shared by several
/// servers implements this trait too and is set with
/// [`KeyManagerBuilder::rate_limiter`](crate::KeyManagerBuilder::rate_limiter).
/// `admit` runs on the request path after every other check has passed.
/// It should answer [`Admission::Now`] whenever it can (a local token, a
/// window known to be full); [`Admission::Later`] makes the request wait,
/// so keep it for when quota must be fetched.
pub trait RateLimiter: Send + Sync + 'static {
    /// Lets one request of key `id` in under `limit` at `now_ms`
    /// (milliseconds since the Unix epoch by the manager's clock), or
    /// refuses it; see [`Admission`].
    fn admit(&self, id: KeyId, limit: RateLimit, now_ms: u64) -> Admission;
}

impl<T: RateLimiter + ?Sized> RateLimiter for std::sync::Arc<T> {
    fn admit(&self, id: KeyId, limit: RateLimit, now_ms: u64) -> Admission {
        (**self).admit(id, limit, now_ms)
    }
}

/// Rate limits exact within one process, for every store: each key's
/// window is kept by key id for the limiter's life, whatever path found the
/// key (an in-memory entry, a cache refilled after an eviction, a record
/// from a remote store). A request is let in by one compare-and-swap.
///
/// Servers that share a store each keep their own windows, so N servers
/// together let in up to N times a key's limit.
///
/// ```
/// use std::time::Duration;
/// use tm_auth::{InProcessRateLimiter, KeyId, RateLimit};
///
/// let limiter = InProcessRateLimiter::new();
/// let limit = RateLimit::per_minute(std::num::NonZeroU32::new(2).unwrap());
/// let id = KeyId::generate();
/// assert!(limiter.take(id, limit, 60_000).is_ok());
/// assert!(limiter.take(id, limit, 60_001).is_ok());
/// assert_eq!(limiter.take(id, limit, 60_002), Err(Duration::from_millis(59_998)));
/// ```
pub struct InProcessRateLimiter {
    windows: papaya::HashMap<KeyId, Window, BuildHasherDefault<UniformHasher>>,
}

impl InProcessRateLimiter {
    /// A limiter with no window yet.
    pub fn new() -> InProcessRateLimiter {
        InProcessRateLimiter {
            windows: papaya::HashMap::builder()
                .hasher(BuildHasherDefault::<UniformHasher>::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
        }
    }

    /// Lets one request of key `id` in under `limit` at `now_ms`, or says
    /// how long until the window has room: what [`admit`](RateLimiter::admit)
    /// answers, always at once.
    pub fn take(
        &self,
        id: KeyId,
        limit: RateLimit,
        now_ms: u64,
    ) -> Result<RateLimitStatus, Duration> {
        let guard = self.windows.guard();
        let window = match self.windows.get(&id, &guard) {
            Some(window) => window,
            None => self.windows.get_or_insert_with(id, Window::default, &guard),
        };
        window.take(limit, now_ms)
    }
}

impl Default for InProcessRateLimiter {
    fn default() -> InProcessRateLimiter {
        InProcessRateLimiter::new()
    }
}

impl std::fmt::Debug for InProcessRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessRateLimiter")
            .field("keys", &self.windows.len())
            .finish()
    }
}

impl RateLimiter for InProcessRateLimiter {
    fn admit(&self, id: KeyId, limit: RateLimit, now_ms: u64) -> Admission {
        Admission::Now(self.take(id, limit, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_exact_and_refusals_take_no_quota() {
        let window = Window::default();
        let limit = RateLimit::new(3, Duration::from_secs(10)).unwrap();
        let start = 1_000_000_000u64; // on a 10 s boundary
        for remaining in [2, 1, 0] {
            assert_eq!(window.take(limit, start + 1).unwrap().remaining, remaining);
        }
        for _ in 0..5 {
            assert_eq!(
                window.take(limit, start + 2_500),
                Err(Duration::from_millis(7_500))
            );
        }
        let next = window.take(limit, start + 10_000).unwrap();
        assert_eq!(next.remaining, 2, "the window rolled over");
        assert_eq!(next.reset, Duration::from_secs(10));
    }

    #[test]
    #[cfg(feature = "redis")]
    fn a_seeded_window_counts_what_was_let_in_elsewhere() {
        let window = Window::default();
        let limit = RateLimit::new(5, Duration::from_secs(10)).unwrap();
        window.seed(100, 3);
        assert_eq!(window.take(limit, 1_000_000).unwrap().remaining, 1);
        window.seed(100, 2);
        assert_eq!(
            window.take(limit, 1_000_001).unwrap().remaining,
            0,
            "never lowered"
        );
        let later = Window::default();
        assert_eq!(later.take(limit, 1_000_000).unwrap().remaining, 4);
        later.seed(99, 5);
        assert_eq!(
            later.take(limit, 1_000_000).unwrap().remaining,
            3,
            "an older window's count is ignored"
        );
    }

    #[test]
    fn concurrent_takes_admit_exactly_the_limit() {
        let window = std::sync::Arc::new(Window::default());
        let limit = RateLimit::new(1_000, Duration::from_secs(60)).unwrap();
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let window = &window;
                    scope.spawn(move || {
                        (0..1_000)
                            .filter(|_| window.take(limit, 120_000).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1_000);
    }
}
