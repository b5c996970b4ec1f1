//! The monotonic clock leases are timed on, in milliseconds: a precise
//! reading, and a cheaper coarse one for the request path.
//!
//! Both read the same clock (on Linux, `CLOCK_MONOTONIC` and its coarse
//! variant, which lags it by less than [`Mono::lag_ms`]), so a coarse
//! reading far enough before a deadline proves the precise one is too.

#[derive(Debug)]
pub(super) struct Mono {
    #[cfg(not(target_os = "linux"))]
    start: std::time::Instant,
    /// How far a coarse reading may lag the precise clock, rounded up.
    lag_ms: u64,
}

impl Mono {
    pub(super) fn new() -> Mono {
        #[cfg(target_os = "linux")]
        {
            let res = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
            let res_ns = (res.tv_sec.max(0) as u64) * 1_000_000_000 + res.tv_nsec.max(0) as u64;
            // One tick is the usual lag, but a late tick (a loaded or
            // virtualised CPU) leaves the coarse clock further behind: CI
            // saw 6 ms with a 4 ms tick. Two ticks and 2 ms of margin.
            Mono {
                lag_ms: 2 * res_ns.div_ceil(1_000_000) + 2,
            }
        }
        #[cfg(not(target_os = "linux"))]
        Mono {
            start: std::time::Instant::now(),
            lag_ms: 0,
        }
    }

    /// Milliseconds now, rounded down; never 0.
    pub(super) fn precise(&self) -> u64 {
        #[cfg(target_os = "linux")]
        {
            ms(rustix::time::clock_gettime(
                rustix::time::ClockId::Monotonic,
            ))
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.start.elapsed().as_millis() as u64 + 1
        }
    }

    /// Milliseconds now, at most [`lag_ms`](Mono::lag_ms) behind
    /// [`precise`](Mono::precise).
    pub(super) fn coarse(&self) -> u64 {
        #[cfg(target_os = "linux")]
        {
            ms(rustix::time::clock_gettime(
                rustix::time::ClockId::MonotonicCoarse,
            ))
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.precise()
        }
    }

    pub(super) fn lag_ms(&self) -> u64 {
        self.lag_ms
    }
}

/// The time since boot in whole milliseconds, plus one so it is never 0.
#[cfg(target_os = "linux")]
fn ms(t: rustix::time::Timespec) -> u64 {
    (t.tv_sec.max(0) as u64) * 1_000 + (t.tv_nsec.max(0) as u64) / 1_000_000 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coarse_reading_lags_the_precise_one_by_less_than_the_lag() {
        let mono = Mono::new();
        // Each coarse reading between two precise ones, so a thread
        // descheduled between two readings cannot fail the comparison.
        for _ in 0..1_000 {
            let before = mono.precise();
            let coarse = mono.coarse();
            let after = mono.precise();
            assert!(coarse <= after + 1, "{coarse} vs {after}");
            assert!(
                coarse + mono.lag_ms() >= before,
                "{coarse} + {} vs {before}",
                mono.lag_ms()
            );
        }
    }
}
