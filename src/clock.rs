//! Where the manager reads the time, so expiry can be tested without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time.
///
/// [`KeyManager`](crate::KeyManager) decides expiry with its clock and
/// counts usage by it, and the [`InProcessRateLimiter`](crate::InProcessRateLimiter)
/// its windows (a shared limiter may keep time its own way: `RedisLimiter`
/// follows Redis's clock). [`SystemClock`] is the default and
/// [`ManualClock`] is for tests.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time in whole milliseconds since the Unix epoch (0 for
    /// any time before it).
    ///
    /// Usage counting and rate limits read this on every request they
    /// count; expiry reads [`now`](Clock::now). The default converts
    /// `now()`. A clock that can give the time as a count without building
    /// a `SystemTime` may answer directly, and must give what converting
    /// `now()` would.
    fn now_millis(&self) -> u64 {
        millis_since_epoch(self.now())
    }
}

/// `at` in whole milliseconds since the Unix epoch, 0 before it.
pub(crate) fn millis_since_epoch(at: SystemTime) -> u64 {
    // Seconds and the sub-second part apart: `Duration::as_millis` divides
    // a u128, which costs more than the rest of counting a request.
    at.duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs()
            .saturating_mul(1_000)
            .saturating_add(u64::from(d.subsec_millis()))
    })
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    /// The same clock (`CLOCK_REALTIME`, through libc as for `SystemTime`)
    /// read as seconds and nanoseconds: building a `SystemTime` and taking
    /// it apart again costs about a third as much again as the read itself
    /// (27 ns against 20 ns on the machine of `BENCHMARKS.md`), on every
    /// request counted.
    #[cfg(target_os = "linux")]
    fn now_millis(&self) -> u64 {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        // A time before the epoch is 0, as for `SystemTime`.
        let (Ok(secs), Ok(nanos)) = (u64::try_from(now.tv_sec), u64::try_from(now.tv_nsec)) else {
            return 0;
        };
        secs.saturating_mul(1_000).saturating_add(nanos / 1_000_000)
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// Reading it takes no lock (it is read on every verification, from every
/// thread a test or benchmark runs). It keeps the time to the nanosecond
/// within about 292 years of where it started, and saturates beyond.
///
/// ```
/// use std::time::Duration;
/// use tm_auth::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new(std::time::SystemTime::UNIX_EPOCH);
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now(), std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(60));
/// // What usage counting reads: the same time, in milliseconds.
/// assert_eq!(clock.now_millis(), 60_000);
/// ```
#[derive(Clone)]
pub struct ManualClock {
    shared: Arc<Shared>,
}

struct Shared {
    start: SystemTime,
    /// `start` as whole milliseconds since the epoch (floored, so negative
    /// before it) and the nanoseconds beyond them (0 to 999 999): what
    /// `now_millis` adds the offset to without building a `SystemTime`.
    start_ms: i64,
    start_sub_ms: i64,
    /// Nanoseconds since `start`.
    offset: AtomicI64,
}

const NANOS_PER_MS: i64 = 1_000_000;

/// `to - from` in nanoseconds, saturating at the ends of `i64` (about 292
/// years either way).
pub(crate) fn nanos_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |ns| -ns),
    }
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> ManualClock {
        let since_epoch: i128 = match start.duration_since(UNIX_EPOCH) {
            Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
            Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |ns| -ns),
        };
        let per_ms = i128::from(NANOS_PER_MS);
        let start_ms = since_epoch.div_euclid(per_ms);
        ManualClock {
            shared: Arc::new(Shared {
                start,
                start_ms: i64::try_from(start_ms).unwrap_or(if start_ms < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                }),
                // In 0..NANOS_PER_MS, so it fits.
                start_sub_ms: i64::try_from(since_epoch.rem_euclid(per_ms)).unwrap_or(0),
                offset: AtomicI64::new(0),
            }),
        }
    }

    /// Moves the clock forward by `by` (saturating at the latest time it keeps).
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        let _ = self
            .shared
            .offset
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |offset| {
                Some(offset.saturating_add(by))
            });
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: SystemTime) {
        let offset = nanos_between(self.shared.start, at);
        self.shared.offset.store(offset, Ordering::SeqCst);
    }
}

/// `base` moved by `ns` nanoseconds, or `base` itself if the system cannot
/// represent that time.
pub(crate) fn moved_by(base: SystemTime, ns: i64) -> SystemTime {
    let by = Duration::from_nanos(ns.unsigned_abs());
    let at = if ns >= 0 {
        base.checked_add(by)
    } else {
        base.checked_sub(by)
    };
    at.unwrap_or(base)
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        moved_by(self.shared.start, self.shared.offset.load(Ordering::SeqCst))
    }

    /// From the offset, without building a `SystemTime`: benchmarks measure
    /// usage counting with this clock, and should not count a conversion
    /// the system clock does not make either.
    fn now_millis(&self) -> u64 {
        let shared = &*self.shared;
        let offset = shared.offset.load(Ordering::SeqCst);
        // Whole milliseconds of the offset, then the carry from the two
        // sub-millisecond parts (0 to 1): nothing here can overflow.
        let carry = (shared.start_sub_ms + offset.rem_euclid(NANOS_PER_MS)) / NANOS_PER_MS;
        let ms = shared
            .start_ms
            .saturating_add(offset.div_euclid(NANOS_PER_MS))
            .saturating_add(carry);
        u64::try_from(ms).unwrap_or(0)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A clock that gives only `now`, as a user's might.
    struct Fixed(SystemTime);

    impl Clock for Fixed {
        fn now(&self) -> SystemTime {
            self.0
        }
    }

    #[test]
    fn milliseconds_default_to_the_conversion_of_now() {
        let at = UNIX_EPOCH + Duration::new(1_767_225_600, 999_999_999);
        assert_eq!(Fixed(at).now_millis(), 1_767_225_600_999);
        assert_eq!(Fixed(UNIX_EPOCH - Duration::from_nanos(1)).now_millis(), 0);
        assert_eq!(
            millis_since_epoch(UNIX_EPOCH + Duration::from_micros(1_999)),
            1
        );
    }

    #[test]
    fn the_system_clock_in_milliseconds_is_the_system_time() {
        let before = millis_since_epoch(SystemTime::now());
        let now = SystemClock.now_millis();
        let after = millis_since_epoch(SystemTime::now());
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
        assert!(now > 1_700_000_000_000, "a time after 2023: {now}");
    }

    proptest! {
        /// Whatever the start (before or after the epoch, between two
        /// milliseconds) and however the clock is moved, its milliseconds
        /// are those of its time.
        #[test]
        fn a_manual_clock_in_milliseconds_is_its_time(
            start_ns in -4_000_000_000_000_000_000i64..4_000_000_000_000_000_000,
            moves in proptest::collection::vec(-1_000_000_000_000_000i64..1_000_000_000_000_000, 1..6),
        ) {
            let start = moved_by(UNIX_EPOCH, start_ns);
            let clock = ManualClock::new(start);
            prop_assert_eq!(clock.now_millis(), millis_since_epoch(clock.now()));
            for by in moves {
                let at = moved_by(clock.now(), by);
                clock.set(at);
                prop_assert_eq!(clock.now(), at);
                prop_assert_eq!(clock.now_millis(), millis_since_epoch(at));
            }
        }
    }

    #[test]
    fn a_manual_clock_moves_exactly_as_told_and_clones_share_it() {
        let start = SystemTime::UNIX_EPOCH + Duration::new(1_767_225_600, 123_456_789);
        let clock = ManualClock::new(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::new(90, 1));
        assert_eq!(other.now(), start + Duration::new(90, 1));
        let earlier = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        other.set(earlier);
        assert_eq!(clock.now(), earlier, "set goes backwards too");
        clock.set(start);
        clock.advance(Duration::MAX);
        assert!(clock.now() > start + Duration::from_secs(200 * 365 * 86_400));
    }
}
