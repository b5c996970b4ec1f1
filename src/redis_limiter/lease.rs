//! One key's quota on one server: tokens Redis granted for one window,
//! spent with one compare-and-swap, and what the next lease should ask for.
//!
//! Times here are milliseconds on the limiter's monotonic clock (never 0),
//! so a server whose wall clock jumps or is skewed spends a lease exactly as
//! long as Redis's window lasts.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::rate_limit::{RateLimit, RateLimitStatus, Window};

use super::mono::Mono;
use super::scripts::LeaseReply;

const TOKEN_BITS: u32 = 24;
const TOKENS: u64 = (1 << TOKEN_BITS) - 1;
/// The largest lease asked for: two of them still fit the token field.
pub(super) const MAX_LEASE: u32 = (TOKENS / 2) as u32;
/// The longest a lease is spent without asking Redis again. The guard
/// against clock drift grows with a lease's life; this keeps it small.
const MAX_LEASE_LIFE_MS: u64 = 10_000;
const NO_WINDOW: u64 = u64::MAX;

/// Milliseconds before Redis's window end that a lease stops being spent:
/// Redis's time and the server's are each rounded down to the millisecond
/// (2 ms), plus 1 ms to spare, plus 0.1 % of the lease's life for two
/// clocks drifting apart (far more than NTP-disciplined clocks do).
pub(super) fn guard_ms(to_end_ms: u64) -> u64 {
    3 + to_end_ms.min(MAX_LEASE_LIFE_MS) / 1000
}

/// A lease as this server keeps it: a [`LeaseReply`] placed on the
/// monotonic clock of the moment its request was sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Granted {
    pub window: u64,
    pub tokens: u32,
    pub remaining: u32,
    /// When Redis's window ends, at the earliest: Redis read its clock
    /// after the request was sent.
    pub window_end: u64,
    /// When this server stops spending the tokens.
    pub usable_until: u64,
}

impl Granted {
    pub(super) fn new(reply: &LeaseReply, sent: u64) -> Granted {
        let life = reply
            .to_end_ms
            .saturating_sub(guard_ms(reply.to_end_ms))
            .min(MAX_LEASE_LIFE_MS);
        Granted {
            window: reply.window,
            tokens: reply.granted.min(MAX_LEASE),
            remaining: reply.remaining,
            window_end: sent + reply.to_end_ms,
            usable_until: sent + life,
        }
    }
}

/// Why no token could be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoToken {
    /// The window's quota is all granted: refuse until it ends.
    Exhausted(Duration),
    /// The window ends too soon for a lease to be spent in it: wait.
    Closing(Duration),
    /// Ask Redis for a lease.
    Ask,
}

#[derive(Debug)]
struct Meta {
    /// Redis's window index of the tokens held.
    window: u64,
    granted_in_window: u64,
    granted_total: u64,
    last_ask: u64,
    spent_at_last_ask: u64,
}

/// One key's lease on this server.
#[derive(Debug)]
pub(super) struct KeyLease {
    /// (usable until : 40 | tokens left : 24): a token is spent by one
    /// compare-and-swap, and a lease past its time is never spent.
    word: AtomicU64,
    /// The limit the lease was granted under (`RateLimit::to_word`).
    limit: AtomicU64,
    /// Requests the cluster had left to grant as of the last lease.
    remaining: AtomicU32,
    window_end: AtomicU64,
    /// Spending under this many tokens asks for the next lease early; 0
    /// when leases are single tokens, asked for per request.
    prefetch_below: AtomicU32,
    /// No lease is asked for before this time: the window is exhausted, or
    /// closing.
    no_lease_until: AtomicU64,
    exhausted: AtomicBool,
    /// A lease is being asked for (one at a time per key).
    asking: AtomicBool,
    /// Requests waiting for a lease.
    waiting: AtomicU32,
    /// Woken when an ask ends, whatever its outcome.
    pub(super) answered: Notify,
    /// The requests waiting for a lease, in arrival order (one permit: the
    /// head's).
    pub(super) queue: Semaphore,
    meta: Mutex<Meta>,
    /// The window counted locally while Redis cannot be asked.
    fallback: Window,
}

impl KeyLease {
    pub(super) fn new(limit: RateLimit) -> KeyLease {
        KeyLease {
            word: AtomicU64::new(0),
            limit: AtomicU64::new(limit.to_word()),
            remaining: AtomicU32::new(limit.requests()),
            window_end: AtomicU64::new(0),
            prefetch_below: AtomicU32::new(0),
            no_lease_until: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
            asking: AtomicBool::new(false),
            waiting: AtomicU32::new(0),
            answered: Notify::new(),
            queue: Semaphore::new(1),
            meta: Mutex::new(Meta {
                window: NO_WINDOW,
                granted_in_window: 0,
                granted_total: 0,
                last_ask: 0,
                spent_at_last_ask: 0,
            }),
            fallback: Window::default(),
        }
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        // A panic while the lock was held cannot leave `Meta` half-written
        // in a way that matters more than losing the lease, so go on.
        self.meta
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spends one token, answering the tokens left; `None` when the lease
    /// is empty or past its time. The clock is read coarsely unless the
    /// lease ends within the coarse clock's lag.
    pub(super) fn spend(&self, clock: &Mono) -> Option<u32> {
        self.spend_at(clock.coarse() + clock.lag_ms(), || clock.precise())
    }

    /// [`spend`](KeyLease::spend) at a time no earlier than now, asking
    /// `precise` for the time when that is not early enough.
    fn spend_at(&self, mut now: u64, precise: impl Fn() -> u64) -> Option<u32> {
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let tokens = current & TOKENS;
            if tokens == 0 {
                return None;
            }
            let until = current >> TOKEN_BITS;
            if now >= until {
                now = precise();
                if now >= until {
                    return None;
                }
            }
            match self.word.compare_exchange_weak(
                current,
                current - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((tokens - 1) as u32),
                Err(actual) => current = actual,
            }
        }
    }

    /// Where the key stands after a token was spent, `left` unspent here.
    pub(super) fn status(&self, limit: RateLimit, left: u32, now: u64) -> RateLimitStatus {
        let remaining = self
            .remaining
            .load(Ordering::Relaxed)
            .saturating_add(left)
            .min(limit.requests());
        let reset = self.window_end.load(Ordering::Relaxed).saturating_sub(now);
        RateLimitStatus::new(limit.requests(), remaining, Duration::from_millis(reset))
    }

    /// Whether a spend that left `left` tokens should ask for the next lease.
    pub(super) fn wants_more(&self, left: u32) -> bool {
        left < self.prefetch_below.load(Ordering::Relaxed)
    }

    pub(super) fn limit_word(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// Why no token is here at `now`.
    pub(super) fn no_token(&self, now: u64) -> NoToken {
        let until = self.no_lease_until.load(Ordering::Acquire);
        if now >= until {
            return NoToken::Ask;
        }
        let wait = Duration::from_millis(until - now);
        if self.exhausted.load(Ordering::Acquire) {
            NoToken::Exhausted(wait)
        } else {
            NoToken::Closing(wait)
        }
    }

    /// Claims the right to ask Redis for a lease; `false` when an ask is
    /// already on its way.
    pub(super) fn claim_ask(&self) -> bool {
        !self.asking.swap(true, Ordering::AcqRel)
    }

    /// Ends an ask and wakes whoever waits for it.
    pub(super) fn ask_ended(&self) {
        self.asking.store(false, Ordering::Release);
        self.answered.notify_waiters();
    }

    /// Whether requests are waiting for a lease: a new request queues
    /// behind them rather than take the tokens they wait for.
    pub(super) fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Counts a request waiting for a lease until the guard is dropped.
    pub(super) fn wait(&self) -> WaitGuard<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        WaitGuard(self)
    }

    /// Tokens to ask for at `now`: about what the key spends here in
    /// `horizon_ms`, capped at 1 % of the limit per server and at half this
    /// server's share of what is left; one token (asked per request) for
    /// small limits and near exhaustion.
    pub(super) fn want(&self, limit: RateLimit, servers: u32, now: u64, horizon_ms: u64) -> u32 {
        let servers = u64::from(servers.max(1));
        let requests = u64::from(limit.requests());
        let remaining = u64::from(self.remaining.load(Ordering::Relaxed));
        let waiting = u64::from(self.waiting.load(Ordering::Relaxed)).max(1);
        let left = self.word.load(Ordering::Acquire) & TOKENS;
        let mut meta = self.meta();
        let spent_total = meta.granted_total.saturating_sub(left);
        let spent = spent_total.saturating_sub(meta.spent_at_last_ask);
        let elapsed = now.saturating_sub(meta.last_ask).max(1);
        meta.last_ask = now;
        meta.spent_at_last_ask = spent_total;
        let exact = requests < 64 * servers || remaining < 64 * servers;
        let want = if exact {
            1
        } else {
            let by_rate = (spent * horizon_ms).div_ceil(elapsed);
            let cap = (requests / 100 / servers).min(remaining / (2 * servers));
            by_rate.min(cap).max(1)
        };
        self.prefetch_below
            .store(if exact { 0 } else { (want / 2) as u32 }, Ordering::Relaxed);
        want.max(waiting.min(requests)).min(u64::from(MAX_LEASE)) as u32
    }

    /// Adds a lease granted under `limit_word`; `false` (nothing added)
    /// when the key's limit changed while it was asked for.
    pub(super) fn install(&self, lease: Granted, limit_word: u64) -> bool {
        let mut meta = self.meta();
        if self.limit.load(Ordering::Acquire) != limit_word {
            return false;
        }
        let same_window = meta.window == lease.window;
        if !same_window {
            meta.window = lease.window;
            meta.granted_in_window = 0;
        }
        meta.granted_in_window += u64::from(lease.tokens);
        meta.granted_total += u64::from(lease.tokens);
        self.remaining.store(lease.remaining, Ordering::Relaxed);
        self.window_end.store(lease.window_end, Ordering::Relaxed);
        if lease.tokens == 0 {
            self.exhausted
                .store(lease.remaining == 0, Ordering::Release);
            self.no_lease_until
                .store(lease.window_end, Ordering::Release);
            if !same_window {
                self.word.store(0, Ordering::Release);
            }
            return true;
        }
        self.no_lease_until.store(0, Ordering::Release);
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let kept = if same_window { current & TOKENS } else { 0 };
            let tokens = (kept + u64::from(lease.tokens)).min(TOKENS);
            let next = (lease.usable_until << TOKEN_BITS) | tokens;
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes every unspent token: (their window, how many), to give back.
    pub(super) fn drain(&self) -> Option<(u64, u32)> {
        let meta = self.meta();
        let tokens = (self.word.swap(0, Ordering::AcqRel) & TOKENS) as u32;
        (tokens > 0 && meta.window != NO_WINDOW).then_some((meta.window, tokens))
    }

    /// Starts over under a new limit, answering the unspent tokens granted
    /// under the old one, to give back.
    pub(super) fn relimit(&self, limit: RateLimit) -> Option<(u64, u32)> {
        let mut meta = self.meta();
        if self.limit.load(Ordering::Acquire) == limit.to_word() {
            return None;
        }
        let tokens = (self.word.swap(0, Ordering::AcqRel) & TOKENS) as u32;
        let window = meta.window;
        meta.window = NO_WINDOW;
        meta.granted_in_window = 0;
        self.limit.store(limit.to_word(), Ordering::Release);
        self.remaining.store(limit.requests(), Ordering::Relaxed);
        self.prefetch_below.store(0, Ordering::Relaxed);
        self.no_lease_until.store(0, Ordering::Release);
        self.exhausted.store(false, Ordering::Release);
        (tokens > 0 && window != NO_WINDOW).then_some((window, tokens))
    }

    /// Lets a request in by this server's own count while Redis cannot be
    /// asked: at most `allowed` in the manager's window at `now_ms`,
    /// counting what this server already spent from leases of that window.
    pub(super) fn take_locally(
        &self,
        limit: RateLimit,
        allowed: u32,
        now_ms: u64,
    ) -> Result<RateLimitStatus, Duration> {
        let index = now_ms / limit.window_ms();
        let refused = Duration::from_millis((index + 1) * limit.window_ms() - now_ms);
        let Ok(local) = RateLimit::new(allowed, limit.window()) else {
            return Err(refused);
        };
        {
            let meta = self.meta();
            if meta.window == index {
                let left = self.word.load(Ordering::Acquire) & TOKENS;
                let spent = meta.granted_in_window.saturating_sub(left);
                self.fallback
                    .seed(index, u32::try_from(spent).unwrap_or(u32::MAX));
            }
        }
        self.fallback
            .take(local, now_ms)
            .map(|status| RateLimitStatus::new(limit.requests(), status.remaining, status.reset))
    }
}

/// A request waiting for a lease; see [`KeyLease::wait`].
pub(super) struct WaitGuard<'a>(&'a KeyLease);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn spend(lease: &KeyLease, now: u64) -> Option<u32> {
        lease.spend_at(now, || now)
    }

    fn limit(requests: u32) -> RateLimit {
        RateLimit::per_minute(NonZeroU32::new(requests).unwrap())
    }

    fn reply(window: u64, granted: u32, remaining: u32, to_end_ms: u64) -> LeaseReply {
        LeaseReply {
            window,
            granted,
            remaining,
            to_end_ms,
            generation: "1".into(),
        }
    }

    #[test]
    fn a_lease_is_spent_token_by_token_and_not_past_its_time() {
        let lease = KeyLease::new(limit(1_000));
        assert_eq!(spend(&lease, 10), None, "no lease yet");
        let granted = Granted::new(&reply(7, 3, 900, 100), 10);
        assert_eq!(granted.usable_until, 10 + 100 - guard_ms(100));
        assert!(lease.install(granted, limit(1_000).to_word()));
        assert_eq!(spend(&lease, 11), Some(2));
        assert_eq!(spend(&lease, 12), Some(1));
        assert_eq!(spend(&lease, granted.usable_until), None, "past its time");
        assert_eq!(
            lease.spend_at(granted.usable_until, || granted.usable_until - 1),
            Some(0),
            "a coarse reading near the end is checked precisely"
        );
        assert!(lease.install(granted, limit(1_000).to_word()));
        for left in (0..3).rev() {
            assert_eq!(spend(&lease, 13), Some(left));
        }
        assert_eq!(spend(&lease, 14), None, "empty");
    }

    #[test]
    fn a_lease_of_the_same_window_adds_and_a_new_window_replaces() {
        let lease = KeyLease::new(limit(1_000));
        let word = limit(1_000).to_word();
        assert!(lease.install(Granted::new(&reply(7, 3, 900, 5_000), 0), word));
        assert!(lease.install(Granted::new(&reply(7, 2, 898, 4_000), 1_000), word));
        assert_eq!(spend(&lease, 1_001), Some(4), "3 + 2 - 1");
        assert!(lease.install(Granted::new(&reply(8, 2, 998, 60_000), 4_100), word));
        assert_eq!(
            spend(&lease, 4_101),
            Some(1),
            "the old window's tokens lapse"
        );
    }

    #[test]
    fn a_lease_from_before_a_limit_change_is_not_kept() {
        let lease = KeyLease::new(limit(1_000));
        assert!(lease.install(
            Granted::new(&reply(7, 5, 900, 5_000), 0),
            limit(1_000).to_word()
        ));
        assert_eq!(lease.relimit(limit(10)), Some((7, 5)), "handed back");
        assert_eq!(spend(&lease, 1), None);
        assert!(
            !lease.install(
                Granted::new(&reply(7, 5, 900, 5_000), 0),
                limit(1_000).to_word()
            ),
            "a lease asked for under the old limit"
        );
        assert_eq!(lease.relimit(limit(10)), None, "already at that limit");
    }

    #[test]
    fn an_empty_grant_marks_the_window_exhausted_or_closing() {
        let lease = KeyLease::new(limit(1_000));
        let word = limit(1_000).to_word();
        assert!(lease.install(Granted::new(&reply(7, 0, 0, 300), 100), word));
        assert_eq!(
            lease.no_token(150),
            NoToken::Exhausted(Duration::from_millis(250))
        );
        assert_eq!(lease.no_token(400), NoToken::Ask, "the window ended");
        assert!(lease.install(Granted::new(&reply(8, 0, 1_000, 2), 1_000), word));
        assert_eq!(
            lease.no_token(1_000),
            NoToken::Closing(Duration::from_millis(2))
        );
    }

    #[test]
    fn leases_are_sized_by_rate_and_capped_by_the_limit_and_what_is_left() {
        let big = limit(1_000_000);
        let lease = KeyLease::new(big);
        assert_eq!(lease.want(big, 2, 1, 20), 1, "no rate known yet");
        assert!(lease.install(
            Granted::new(&reply(7, 1, 999_999, 50_000), 1),
            big.to_word()
        ));
        // 100 000 spends in 10 ms: 10 000 a millisecond, 200 000 in 20 ms,
        // capped at 1 % of the limit per server.
        lease.meta().granted_total = 100_001;
        assert_eq!(lease.want(big, 2, 11, 20), 5_000);
        lease.remaining.store(4_000, Ordering::Relaxed);
        lease.meta().granted_total = 200_001;
        assert_eq!(
            lease.want(big, 2, 21, 20),
            1_000,
            "half of a server's share of 4 000"
        );
        lease.remaining.store(100, Ordering::Relaxed);
        assert_eq!(lease.want(big, 2, 31, 20), 1, "near exhaustion: one token");
        assert_eq!(lease.prefetch_below.load(Ordering::Relaxed), 0);
        let small = limit(100);
        assert_eq!(
            KeyLease::new(small).want(small, 2, 1, 20),
            1,
            "100 < 64 × 2"
        );
    }

    #[test]
    fn a_keys_state_stays_small() {
        // Kept for every key a server has seen: 176 bytes today, plus the
        // `Arc`'s counts and the map entry (about 230 bytes in all).
        assert!(std::mem::size_of::<KeyLease>() <= 192);
    }

    #[test]
    fn concurrent_spends_take_each_token_once() {
        let lease = KeyLease::new(limit(1_000));
        assert!(lease.install(
            Granted::new(&reply(7, 1_000, 0, 50_000), 0),
            limit(1_000).to_word()
        ));
        let spent: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..1_000).filter(|_| spend(&lease, 5).is_some()).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(spent, 1_000);
    }
}
