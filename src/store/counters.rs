//! The counters a request touches.
//!
//! [`Counters`] is one cache line of atomics. An in-memory store keeps one
//! inline in every entry (`store::memory::StoredKey`, and the slab's), right
//! after the line a verification reads, so counting a request costs no
//! memory access beyond the verification's own; any other key's counts go
//! to a block of the usage tracker's. What is touched less than once a
//! request — rejections, what reached the store, the finished minutes —
//! lives in the tracker's per-key record, not here.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Two 32-bit halves in one word, for a single atomic.
pub(crate) fn pack(high: u32, low: u32) -> u64 {
    (u64::from(high) << 32) | u64::from(low)
}

/// The halves [`pack`] joined.
pub(crate) fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// How an entry's inline counters stand for a usage tracker.
pub(crate) enum Claim {
    /// This tracker's already.
    Ours,
    /// Just claimed by this call.
    Won,
    /// Another tracker's.
    Theirs,
}

/// What counting one successful request found.
pub(crate) struct Counted {
    /// Requests in the current minute so far, this one included (`None`
    /// when no history is kept, or the request is older than the minute
    /// being counted).
    pub(crate) in_minute: Option<u32>,
    /// A minute this request closed, with its count: to be filed in the
    /// history ring.
    pub(crate) finished: Option<(u32, u32)>,
    /// The client address differs from the last one.
    pub(crate) new_ip: bool,
}

/// One cache line of counters: successful requests, the last use and its
/// address, the minute being counted and the spike threshold of the current
/// minute. (A key's rate-limit window is not here: it is kept by key id, see
/// [`Window`](crate::rate_limit::Window).)
#[derive(Default)]
#[repr(C)]
pub(crate) struct Counters {
    requests: AtomicU64,
    last_used_ms: AtomicU64,
    /// (epoch minute being counted, `requests` when it began, mod 2^32):
    /// the minute's count is how far `requests` has moved since, so a
    /// request costs one atomic increment, not two.
    current: AtomicU64,
    /// (epoch minute, spike threshold for that minute).
    spike: AtomicU64,
    last_ip: IpCell,
}

impl Counters {
    /// Successful requests counted here.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The latest success, in milliseconds since the Unix epoch (0: none).
    pub(crate) fn last_used_ms(&self) -> u64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn last_ip(&self) -> Option<IpAddr> {
        self.last_ip.load()
    }

    /// Counts a successful request at `now_ms` from `ip`.
    pub(crate) fn count(&self, now_ms: u64, ip: Option<IpAddr>, keep_minutes: bool) -> Counted {
        // The one read-modify-write: on x86 every one of them waits for the
        // memory accesses before it, so one is all a request pays for.
        let before = self.requests.fetch_add(1, Ordering::Relaxed);
        // A plain store, not a locked read-modify-write: two requests in
        // the same instant may leave either time, both correct.
        if self.last_used_ms.load(Ordering::Relaxed) < now_ms {
            self.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
        let new_ip = match ip {
            Some(ip) if !self.last_ip.holds(ip) => {
                self.last_ip.store(ip);
                true
            }
            _ => false,
        };
        let (in_minute, finished) = if keep_minutes {
            self.count_minute((now_ms / 60_000) as u32, before)
        } else {
            (None, None)
        };
        Counted {
            in_minute,
            finished,
            new_ip,
        }
    }

    /// Places request number `before + 1` in `minute`: returns the minute's
    /// count so far and, if this request began the minute, the minute it
    /// closed with that minute's count. Around a minute boundary, racing
    /// requests may land one minute off; the totals are exact regardless.
    fn count_minute(&self, minute: u32, before: u64) -> (Option<u32>, Option<(u32, u32)>) {
        let mine = before as u32; // mod 2^32, like the word
        let mut current = self.current.load(Ordering::Relaxed);
        loop {
            let (at, start) = unpack(current);
            match at.cmp(&minute) {
                std::cmp::Ordering::Equal => {
                    return (Some(mine.wrapping_sub(start).wrapping_add(1)), None);
                }
                // A request stamped before the minute being counted (a clock
                // step back, or a slow thread): in the totals, not the history.
                std::cmp::Ordering::Greater => return (None, None),
                std::cmp::Ordering::Less => {}
            }
            match self.current.compare_exchange_weak(
                current,
                pack(minute, mine),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let count = mine.wrapping_sub(start);
                    let finished = (at != 0 && count > 0).then_some((at, count));
                    return (Some(1), finished);
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Requests counted here in `minute`, if it is the one being counted.
    pub(crate) fn in_minute(&self, minute: u32) -> u32 {
        let (at, count) = self.current_minute();
        if at == minute {
            count
        } else {
            0
        }
    }

    /// The minute being counted and its count so far.
    pub(crate) fn current_minute(&self) -> (u32, u32) {
        let (at, start) = unpack(self.current.load(Ordering::Acquire));
        let requests = self.requests.load(Ordering::Relaxed) as u32;
        (at, requests.wrapping_sub(start))
    }

    /// The spike threshold set for `minute`, if one was.
    pub(crate) fn spike_threshold(&self, minute: u32) -> Option<u32> {
        let (at, threshold) = unpack(self.spike.load(Ordering::Relaxed));
        (at == minute && threshold > 0).then_some(threshold)
    }

    pub(crate) fn set_spike_threshold(&self, minute: u32, threshold: u32) {
        self.spike
            .store(pack(minute, threshold.max(1)), Ordering::Relaxed);
    }

    /// Adds what `other` counted into this block (`other` is no longer
    /// written to).
    pub(crate) fn absorb(&self, other: &Counters) {
        self.requests.fetch_add(other.requests(), Ordering::Relaxed);
        let last = other.last_used_ms();
        if last > self.last_used_ms.fetch_max(last, Ordering::Relaxed) {
            if let Some(ip) = other.last_ip() {
                self.last_ip.store(ip);
            }
        }
    }

    /// Back to a block that has counted nothing (nobody may be counting in it).
    pub(crate) fn reset(&self) {
        for word in [
            &self.requests,
            &self.last_used_ms,
            &self.current,
            &self.spike,
            &self.last_ip.seq,
            &self.last_ip.high,
            &self.last_ip.low,
        ] {
            word.store(0, Ordering::Relaxed);
        }
    }
}

/// The last client address, written without locks: a sequence lock over
/// atomics. A writer that finds another writing skips its write (the other
/// address is just as recent); readers retry until they see a whole value.
#[derive(Default)]
struct IpCell {
    seq: AtomicU64,
    high: AtomicU64,
    low: AtomicU64,
}

/// An address as the cell keeps it: IPv4 as its IPv6-mapped form.
fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl IpCell {
    fn store(&self, ip: IpAddr) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq % 2 == 1
            || self
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        let bits = ip_bits(ip);
        self.high.store((bits >> 64) as u64, Ordering::Relaxed);
        self.low.store(bits as u64, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release);
    }

    fn load(&self) -> Option<IpAddr> {
        let v6 = Ipv6Addr::from(self.bits()?);
        Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
    }

    /// Whether the cell holds `ip` (an IPv4 address and its IPv6-mapped
    /// form are one address here). Compared as bits: this runs on every
    /// counted request, where building and matching an `IpAddr` cost more
    /// than the read.
    fn holds(&self, ip: IpAddr) -> bool {
        self.bits() == Some(ip_bits(ip))
    }

    /// A whole value, if one was stored and a writer let it be read.
    fn bits(&self) -> Option<u128> {
        for _ in 0..64 {
            let before = self.seq.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            let high = self.high.load(Ordering::Relaxed);
            let low = self.low.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let after = self.seq.load(Ordering::Relaxed);
            if before == after && before.is_multiple_of(2) {
                return Some((u128::from(high) << 64) | u128::from(low));
            }
            std::hint::spin_loop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_fits_one_cache_line() {
        assert!(std::mem::size_of::<Counters>() <= 64);
    }

    #[test]
    fn ip_cell_round_trips() {
        let cell = IpCell::default();
        assert_eq!(cell.load(), None);
        for ip in ["203.0.113.9", "2001:db8::1", "::1", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().unwrap();
            cell.store(ip);
            assert_eq!(cell.load(), Some(ip));
            assert!(cell.holds(ip));
        }
        assert!(!cell.holds("0.0.0.1".parse().unwrap()));
        assert!(!cell.holds("::".parse().unwrap()), "0.0.0.0 is not ::");
        // One address, written either way.
        cell.store("::ffff:198.51.100.7".parse().unwrap());
        assert!(cell.holds("198.51.100.7".parse().unwrap()));
        assert_eq!(cell.load(), "198.51.100.7".parse().ok());
    }

    #[test]
    fn counting_reports_new_addresses_and_closed_minutes() {
        let c = Counters::default();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let first = c.count(60_000 * 100, ip("203.0.113.1"), true);
        assert!(first.new_ip);
        assert_eq!(first.in_minute, Some(1));
        assert_eq!(first.finished, None, "no minute before it");
        let again = c.count(60_000 * 100 + 5, ip("203.0.113.1"), true);
        assert!(!again.new_ip, "the same address is not new");
        assert_eq!(again.in_minute, Some(2));
        let next = c.count(60_000 * 101, ip("203.0.113.2"), true);
        assert!(next.new_ip);
        assert_eq!(next.finished, Some((100, 2)));
        assert_eq!(next.in_minute, Some(1));
        let late = c.count(60_000 * 100 + 9, None, true);
        assert_eq!(late.in_minute, None, "older than the minute being counted");
        assert_eq!(c.requests(), 4, "late requests still count");
        assert_eq!(c.last_used_ms(), 60_000 * 101);
        assert_eq!(c.last_ip(), ip("203.0.113.2"));
        let untracked = c.count(60_000 * 200, None, false);
        assert_eq!((untracked.in_minute, untracked.finished), (None, None));
        c.reset();
        assert_eq!((c.requests(), c.last_used_ms(), c.last_ip()), (0, 0, None));
        assert_eq!(c.current_minute(), (0, 0));
    }

    #[test]
    fn absorbing_adds_counts_and_keeps_the_latest_use() {
        let (a, b) = (Counters::default(), Counters::default());
        a.count(1_000, "203.0.113.1".parse().ok(), false);
        b.count(2_000, "203.0.113.2".parse().ok(), false);
        b.count(2_000, None, false);
        a.absorb(&b);
        assert_eq!(a.requests(), 3);
        assert_eq!(a.last_used_ms(), 2_000);
        assert_eq!(a.last_ip(), "203.0.113.2".parse().ok());
    }
}
