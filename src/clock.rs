//! Where the manager reads the time, so expiry can be tested without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A source of the current time.
///
/// [`KeyManager`](crate::KeyManager) decides expiry with its clock;
/// [`SystemClock`] is the default and [`ManualClock`] is for tests.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
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
/// ```
#[derive(Clone)]
pub struct ManualClock {
    shared: Arc<Shared>,
}

struct Shared {
    start: SystemTime,
    /// Nanoseconds since `start`.
    offset: AtomicI64,
}

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
        ManualClock {
            shared: Arc::new(Shared {
                start,
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
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
