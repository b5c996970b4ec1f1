//! The state of a key's rate-limit window, and the window arithmetic.
//!
//! A key has one [`Window`] per manager, kept by key id for the manager's
//! life whatever path counted the request (an in-memory store's entry, a
//! cache entry refilled after an eviction, a record from a store that must
//! be waited on): so a limit is exact within one process for every store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::record::RateLimit;
use crate::usage::RateLimitStatus;

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
