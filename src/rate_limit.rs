//! Per-key rate limits, in one place: [`RateLimit`] (valid by
//! construction), fixed windows aligned to the Unix epoch, the state of a
//! key's window, [`RateLimitStatus`], and the `RateLimit-*` response headers.
//!
//! A key has one [`Window`] per manager, kept by key id for the manager's
//! life whatever path counted the request (an in-memory store's entry, a
//! cache entry refilled after an eviction, a record from a store that must
//! be waited on): so a limit is exact within one process for every store.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};

/// A provider's per-key limit: at most [`requests`](RateLimit::requests) in
/// each [`window`](RateLimit::window) (fixed windows aligned to the Unix
/// epoch, e.g. every 5 minutes on the 5-minute marks).
///
/// ```
/// use std::time::Duration;
/// use tm_auth::{NewKey, RateLimit};
///
/// // TrueMail's plans count requests per 5 minutes.
/// let new = NewKey::new("acct_42", "Production").rate_limit(RateLimit::new(1_000, Duration::from_secs(300)));
/// # let _ = new;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RateLimit {
    requests: u32,
    // Non-zero so that `Option<RateLimit>` takes 8 bytes in every record.
    window_ms: NonZeroU32,
}

/// Shortest and longest rate-limit windows a key may have.
pub const RATE_LIMIT_WINDOWS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(31 * 24 * 3600);

impl RateLimit {
    /// At most `requests` per `window`. The manager refuses (with
    /// [`ManagerError::InvalidRateLimit`](crate::ManagerError::InvalidRateLimit))
    /// zero requests and windows outside [`RATE_LIMIT_WINDOWS`].
    pub fn new(requests: u32, window: Duration) -> RateLimit {
        // A zero window becomes 1 ms, which `check` refuses like any window
        // under a second.
        let ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
        RateLimit {
            requests,
            window_ms: NonZeroU32::new(ms).unwrap_or(NonZeroU32::MIN),
        }
    }

    /// Requests allowed per window.
    pub fn requests(&self) -> u32 {
        self.requests
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
        (u64::from(self.requests) << 32) | u64::from(self.window_ms.get())
    }

    /// The limit [`to_word`](RateLimit::to_word) gave, or `None` for zero.
    pub(crate) fn from_word(word: u64) -> Option<RateLimit> {
        Some(RateLimit {
            requests: (word >> 32) as u32,
            window_ms: NonZeroU32::new(word as u32)?,
        })
    }

    /// Why this limit cannot be used, if it cannot.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.requests == 0 {
            return Err("a rate limit allows at least one request per window");
        }
        if !RATE_LIMIT_WINDOWS.contains(&self.window()) {
            return Err("a rate-limit window is between 1 second and 31 days");
        }
        Ok(())
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
#[derive(Default)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_exact_and_refusals_take_no_quota() {
        let window = Window::default();
        let limit = RateLimit::new(3, Duration::from_secs(10));
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
    fn concurrent_takes_admit_exactly_the_limit() {
        let window = std::sync::Arc::new(Window::default());
        let limit = RateLimit::new(1_000, Duration::from_secs(60));
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
