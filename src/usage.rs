//! Usage monitoring and per-key rate limits, kept by the [`KeyManager`](crate::KeyManager).
//!
//! Each key that is used gets a block of counters on its first use (keys
//! never used cost nothing): successful requests, rejections by reason, the
//! last use and its client address, a per-minute history, and the state of
//! its rate-limit window. Counting on the request path is lock-free and
//! allocates nothing after a key's first use: a few atomic operations on
//! counters found through the record the verification has just read (stores
//! that keep [`StoredKey`](crate::store::StoredKey)s, such as `MemoryStore`),
//! or by a lock-free map lookup (any other store).
//!
//! Counts reach the store in batches ([`KeyStore::record_usage`]): by
//! [`KeyManager::flush_usage`](crate::KeyManager::flush_usage), by the
//! background task [`KeyManager::spawn_usage_task`](crate::KeyManager::spawn_usage_task)
//! starts, and by that task's [`shutdown`](UsageTask::shutdown). A batch the
//! store refuses is not lost: its counts stay pending and go with the next
//! one. (A batch the store applied but whose answer was lost — a timeout —
//! is sent again: counts are at least once, not exactly once.)
//!
//! [`KeyStore::record_usage`]: crate::KeyStore::record_usage

use std::fmt;
use std::hash::BuildHasherDefault;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::record::{KeyId, KeyRecord, RateLimit, UniformHasher};
use crate::store::{Rejections, UsageDelta, UsageTotals};

/// How usage is monitored. The default keeps 24 hours of per-minute history
/// and calls a key's minute a spike above 5 times its trailing hourly
/// average, and never below 60 requests a minute.
#[derive(Clone)]
pub struct UsageConfig {
    pub(crate) enabled: bool,
    pub(crate) history_minutes: usize,
    pub(crate) spike_multiple: f64,
    pub(crate) spike_floor: u32,
    pub(crate) trailing_minutes: usize,
    pub(crate) observer: Option<Arc<dyn UsageObserver>>,
}

impl Default for UsageConfig {
    fn default() -> UsageConfig {
        UsageConfig {
            enabled: true,
            history_minutes: 24 * 60,
            spike_multiple: 5.0,
            spike_floor: 60,
            trailing_minutes: 60,
            observer: None,
        }
    }
}

impl fmt::Debug for UsageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageConfig")
            .field("enabled", &self.enabled)
            .field("history_minutes", &self.history_minutes)
            .field("spike_multiple", &self.spike_multiple)
            .field("spike_floor", &self.spike_floor)
            .field("trailing_minutes", &self.trailing_minutes)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl UsageConfig {
    /// The defaults (see [`UsageConfig`]).
    pub fn new() -> UsageConfig {
        UsageConfig::default()
    }

    /// Turns counting off. Rate limits are still enforced.
    pub fn disabled() -> UsageConfig {
        UsageConfig {
            enabled: false,
            ..UsageConfig::default()
        }
    }

    /// How much per-minute history each used key keeps (1 minute to 7 days).
    /// It costs 8 bytes a minute, allocated an hour (480 bytes) at a time
    /// when a key is used in that hour: at most about 11.5 KB per key for
    /// 24 hours, for keys used around the clock.
    pub fn history(mut self, span: Duration) -> UsageConfig {
        self.history_minutes = (span.as_secs() / 60).clamp(1, 7 * 24 * 60) as usize;
        self
    }

    /// A minute is a spike when its requests reach `multiple` times the
    /// average of the previous `trailing` minutes, and at least `floor`
    /// (so a key going from 1 to 5 requests a minute is not a spike).
    pub fn spike(mut self, multiple: f64, floor: u32, trailing: Duration) -> UsageConfig {
        self.spike_multiple = if multiple.is_finite() {
            multiple.max(1.0)
        } else {
            5.0
        };
        self.spike_floor = floor.max(2);
        self.trailing_minutes = (trailing.as_secs() / 60).clamp(1, 24 * 60) as usize;
        self
    }

    /// Tells `observer` of spikes and of keys used from a new address.
    /// Events are delivered by the task
    /// [`KeyManager::spawn_usage_task`](crate::KeyManager::spawn_usage_task)
    /// starts, never on the request path; when the observer falls behind,
    /// events are dropped (and counted) rather than slowing requests.
    pub fn observer(mut self, observer: impl UsageObserver) -> UsageConfig {
        self.observer = Some(Arc::new(observer));
        self
    }
}

/// Told of unusual usage: the seed's advice is that unexpected spikes point
/// to bugs, unauthorized use or a breach.
///
/// ```
/// use tm_auth::usage::{NewIp, Spike, UsageObserver};
///
/// struct Alerts;
/// impl UsageObserver for Alerts {
///     fn on_spike(&self, spike: &Spike) {
///         eprintln!("key {} made {} requests this minute", spike.id, spike.requests);
///     }
///     fn on_new_ip(&self, event: &NewIp) {
///         eprintln!("key {} used from {} for the first time", event.id, event.ip);
///     }
/// }
/// ```
pub trait UsageObserver: Send + Sync + 'static {
    /// A key's requests in the current minute reached the spike threshold
    /// (told once per key and minute).
    fn on_spike(&self, spike: &Spike) {
        let _ = spike;
    }

    /// A key was used from an address it had not been used from before (in
    /// this process; the first use counts, and up to 1 024 addresses are
    /// remembered per key).
    fn on_new_ip(&self, event: &NewIp) {
        let _ = event;
    }
}

/// A minute in which a key's requests reached its spike threshold.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Spike {
    /// The key.
    pub id: KeyId,
    /// The start of the minute.
    pub minute: SystemTime,
    /// Requests so far in that minute (the threshold, when told).
    pub requests: u64,
    /// The average requests per minute over the trailing minutes.
    pub trailing_average: f64,
}

/// A key used from an address it had not been used from before.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewIp {
    /// The key.
    pub id: KeyId,
    /// The client address.
    pub ip: IpAddr,
    /// When.
    pub at: SystemTime,
}

/// One minute of a key's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MinuteUsage {
    /// The start of the minute.
    pub start: SystemTime,
    /// Successful requests in it.
    pub requests: u64,
}

/// A key's usage: what the store holds plus what this process has counted
/// and not flushed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyUsage {
    /// Successful requests.
    pub requests: u64,
    /// Rejected requests of this key, all reasons together.
    pub rejected: u64,
    /// The same, by reason.
    pub rejections: Rejections,
    /// The latest successful use.
    pub last_used_at: Option<SystemTime>,
    /// The client address of that use, if it was known.
    pub last_used_ip: Option<IpAddr>,
    /// Successful requests per minute, oldest first, over the configured
    /// history (counted by this process; minutes with none are included).
    pub per_minute: Vec<MinuteUsage>,
}

/// One key's counters as this process has counted them since it started:
/// what [`KeyManager::usage_snapshot`](crate::KeyManager::usage_snapshot)
/// returns, for exporting to a metrics system.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageSample {
    /// The key.
    pub id: KeyId,
    /// Successful requests.
    pub requests: u64,
    /// Rejections by reason.
    pub rejections: Rejections,
    /// The latest successful use.
    pub last_used_at: Option<SystemTime>,
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

/// Why a real key's request was refused, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The order of `Rejections::from_counts`.
pub(crate) enum Rejection {
    Revoked = 0,
    Expired = 1,
    WrongEnvironment = 2,
    IpNotAllowed = 3,
    RateLimited = 4,
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn pack(high: u32, low: u32) -> u64 {
    (u64::from(high) << 32) | u64::from(low)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
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
        let bits = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        self.high.store((bits >> 64) as u64, Ordering::Relaxed);
        self.low.store(bits as u64, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release);
    }

    fn load(&self) -> Option<IpAddr> {
        for _ in 0..64 {
            let before = self.seq.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            let high = self.high.load(Ordering::Relaxed);
            let low = self.low.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let after = self.seq.load(Ordering::Relaxed);
            if before == after && before % 2 == 0 {
                let v6 = Ipv6Addr::from((u128::from(high) << 64) | u128::from(low));
                return Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4));
            }
            std::hint::spin_loop();
        }
        None
    }
}

/// A ring of per-minute counts, allocated an hour (480 bytes) at a time
/// when a minute of that hour is first counted: a key used for a few
/// minutes costs one hour of history, not a day's 11.5 KB.
#[repr(C)]
struct Minutes {
    len: usize,
    hours: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl Minutes {
    fn new(len: usize) -> Minutes {
        Minutes {
            hours: (0..len.div_ceil(60)).map(|_| OnceLock::new()).collect(),
            len,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn position(&self, minute: u32) -> Option<(usize, usize)> {
        let index = (minute as usize).checked_rem(self.len)?;
        Some((index / 60, index % 60))
    }

    /// The slot for `minute`, allocating its hour if needed.
    fn slot(&self, minute: u32) -> Option<&AtomicU64> {
        let (hour, at) = self.position(minute)?;
        let hour = self.hours.get(hour)?;
        hour.get_or_init(|| (0..60).map(|_| AtomicU64::new(0)).collect())
            .get(at)
    }

    /// The slot for `minute`, if its hour was ever counted.
    fn peek(&self, minute: u32) -> Option<&AtomicU64> {
        let (hour, at) = self.position(minute)?;
        self.hours.get(hour)?.get()?.get(at)
    }
}

/// One used key's counters. The fields every successful request touches
/// come first (the first 64 bytes, then the last client address); the
/// history ring is written once a minute.
#[repr(C)]
struct Counters {
    /// The [`Tracker`] these belong to (its `tag`), so a link a store keeps
    /// is only followed by the manager that made it.
    tracker: u64,
    requests: AtomicU64,
    last_used_ms: AtomicU64,
    /// (epoch minute, count) of the minute being counted now.
    current: AtomicU64,
    /// (epoch minute, spike threshold for that minute).
    spike: AtomicU64,
    /// Per-minute ring of finished minutes: (epoch minute, count) in each
    /// word. Its length is read by every request: it stays on the first line.
    minutes: Minutes,
    /// Read by every request that has a client address.
    last_ip: IpCell,
    /// (window index, requests let in) of the rate-limit window.
    window: AtomicU64,
    rejected: [AtomicU64; 5],
    /// What already reached the store, to compute the next delta.
    sent_requests: AtomicU64,
    sent_rejected: [AtomicU64; 5],
    sent_last_used_ms: AtomicU64,
    /// Whose counters these are, for the observer's events.
    id: KeyId,
}

impl Counters {
    fn new(tracker: u64, id: KeyId, history_minutes: usize) -> Counters {
        Counters {
            tracker,
            id,
            requests: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            current: AtomicU64::new(0),
            spike: AtomicU64::new(0),
            rejected: Default::default(),
            sent_requests: AtomicU64::new(0),
            sent_rejected: Default::default(),
            sent_last_used_ms: AtomicU64::new(0),
            last_ip: IpCell::default(),
            window: AtomicU64::new(0),
            minutes: Minutes::new(history_minutes),
        }
    }

    /// `which` (counts or sent counts) as loaded now, in `Rejection` order.
    fn load(which: &[AtomicU64; 5]) -> [u64; 5] {
        std::array::from_fn(|i| which[i].load(Ordering::Relaxed))
    }

    /// Lets a request into the rate-limit window or says how long to wait.
    /// A refused request does not use up quota.
    fn take(&self, limit: RateLimit, now_ms: u64) -> Result<RateLimitStatus, Duration> {
        let window_ms = limit.window_ms().max(1);
        let index = now_ms / window_ms;
        let reset = Duration::from_millis((index + 1) * window_ms - now_ms);
        let index = index as u32;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (at, used) = unpack(current);
            let used = if at == index { used } else { 0 };
            if used >= limit.requests() {
                return Err(reset);
            }
            match self.window.compare_exchange_weak(
                current,
                pack(index, used + 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
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

    /// Counts a request in its minute; returns the minute's count and
    /// whether it was the first of that minute. The thread that starts a new
    /// minute files the finished one in the history ring.
    fn count_minute(&self, minute: u32) -> Option<(u32, bool)> {
        if self.minutes.len() == 0 {
            return None;
        }
        let mut current = self.current.load(Ordering::Relaxed);
        loop {
            let (at, count) = unpack(current);
            let next = match at.cmp(&minute) {
                std::cmp::Ordering::Equal => pack(minute, count.saturating_add(1)),
                std::cmp::Ordering::Less => pack(minute, 1),
                // A request stamped before the minute being counted (a clock
                // step back, or a slow thread): in the totals, not the history.
                std::cmp::Ordering::Greater => return None,
            };
            match self.current.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let first = at != minute;
                    if first && count > 0 {
                        if let Some(slot) = self.minutes.slot(at) {
                            slot.store(current, Ordering::Relaxed);
                        }
                    }
                    return Some((unpack(next).1, first));
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Requests in `minute`, if the ring still holds it.
    fn minute_count(&self, minute: u32) -> u32 {
        let (at, count) = unpack(self.current.load(Ordering::Relaxed));
        if at == minute {
            return count;
        }
        let Some(slot) = self.minutes.peek(minute) else {
            return 0;
        };
        let (at, count) = unpack(slot.load(Ordering::Relaxed));
        if at == minute {
            count
        } else {
            0
        }
    }
}

/// An event for the observer, sent from the request path.
pub(crate) enum Event {
    Spike(Spike),
    NewIp(NewIp),
}

// The map owns every used key's counters; a store that keeps its records
// as `StoredKey`s also keeps a link to them beside the record, so most
// requests never search the map (one dependent cache miss instead of three
// at a million keys).
type KeyMap = papaya::HashMap<KeyId, Arc<Counters>, BuildHasherDefault<UniformHasher>>;

/// Where a store keeps, beside one version of a key's record, a link to the
/// manager's counters for that key: set on the key's first use through that
/// version, carried over to the next version by [`StoredKey::replaced`].
///
/// [`StoredKey::replaced`]: crate::store::StoredKey::replaced
#[derive(Default)]
pub(crate) struct UsageLink(OnceLock<Arc<Counters>>);

impl UsageLink {
    /// A link to the same counters as `self`, if it has any yet. A link set
    /// on the old version after this copy is made is not lost: the next use
    /// of the new version finds the counters in the map.
    pub(crate) fn copy(&self) -> UsageLink {
        let link = UsageLink::default();
        if let Some(counters) = self.0.get() {
            let _ = link.0.set(Arc::clone(counters));
        }
        link
    }

    #[cfg(test)]
    pub(crate) fn is_set(&self) -> bool {
        self.0.get().is_some()
    }
}

/// Tells trackers apart, so a link is only followed by its own tracker.
static NEXT_TRACKER: AtomicU64 = AtomicU64::new(1);

/// The manager's counters for every used key.
pub(crate) struct Tracker {
    config: UsageConfig,
    tag: u64,
    keys: KeyMap,
    events: tokio::sync::mpsc::Sender<Event>,
    receiver: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Event>>>,
    dropped_events: AtomicU64,
    /// One flush at a time, and `usage` reads consistently against it.
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
}

/// Most events waiting for the observer; more are dropped and counted.
const EVENT_QUEUE: usize = 4096;
/// Most deltas in one `record_usage` call.
const FLUSH_BATCH: usize = 10_000;

impl Tracker {
    pub(crate) fn new(config: UsageConfig) -> Tracker {
        let (events, receiver) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        Tracker {
            config,
            tag: NEXT_TRACKER.fetch_add(1, Ordering::Relaxed),
            // Counters are inserted once per key and then only read: blocking
            // resizes finish at once, where incremental ones leave reads
            // searching two tables until later writes complete the move.
            keys: papaya::HashMap::builder()
                .hasher(BuildHasherDefault::<UniformHasher>::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            events,
            receiver: std::sync::Mutex::new(Some(receiver)),
            dropped_events: AtomicU64::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn config(&self) -> &UsageConfig {
        &self.config
    }

    /// Runs `f` on the key's counters, creating them on its first use:
    /// through `link` when the store keeps one and it is this tracker's,
    /// otherwise from the map (and then the link is set, if still empty).
    /// The map is read under its guard: no reference count is touched.
    /// `record.id` is read only on the way through the map: with a link, a
    /// request reads nothing of the record beyond its first 128 bytes.
    fn with_counters<R>(
        &self,
        record: &KeyRecord,
        link: Option<&UsageLink>,
        f: impl FnOnce(&Counters) -> R,
    ) -> R {
        if let Some(counters) = link.and_then(|link| link.0.get()) {
            if counters.tracker == self.tag {
                return f(counters);
            }
        }
        let id = record.id;
        let keys = self.keys.pin();
        let counters = match keys.get(&id) {
            Some(found) => found,
            None => {
                let history = if self.config.enabled {
                    self.config.history_minutes
                } else {
                    0
                };
                keys.get_or_insert_with(id, || Arc::new(Counters::new(self.tag, id, history)))
            }
        };
        if let Some(link) = link {
            // Whoever sets it first wins; another tracker's link is left alone.
            let _ = link.0.set(Arc::clone(counters));
        }
        f(counters)
    }

    fn send(&self, event: Event) {
        if self.config.observer.is_some() && self.events.try_send(event).is_err() {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes a request of the key into its rate-limit window.
    pub(crate) fn take(
        &self,
        record: &KeyRecord,
        link: Option<&UsageLink>,
        limit: RateLimit,
        now: SystemTime,
    ) -> Result<RateLimitStatus, Duration> {
        self.with_counters(record, link, |counters| {
            let taken = counters.take(limit, millis(now));
            if taken.is_err() && self.config.enabled {
                counters.rejected[Rejection::RateLimited as usize].fetch_add(1, Ordering::Relaxed);
            }
            taken
        })
    }

    /// Counts a refused request of a real key.
    pub(crate) fn rejected(&self, record: &KeyRecord, link: Option<&UsageLink>, reason: Rejection) {
        if self.config.enabled {
            self.with_counters(record, link, |c| {
                c.rejected[reason as usize].fetch_add(1, Ordering::Relaxed)
            });
        }
    }

    /// Counts a successful request.
    pub(crate) fn succeeded(
        &self,
        record: &KeyRecord,
        link: Option<&UsageLink>,
        now: SystemTime,
        ip: Option<IpAddr>,
    ) {
        if !self.config.enabled {
            return;
        }
        self.with_counters(record, link, |counters| {
            let id = counters.id;
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let now_ms = millis(now);
            // A plain store, not a locked read-modify-write: two requests in
            // the same instant may leave either time, both correct.
            if counters.last_used_ms.load(Ordering::Relaxed) < now_ms {
                counters.last_used_ms.store(now_ms, Ordering::Relaxed);
            }
            if let Some(ip) = ip {
                if counters.last_ip.load() != Some(ip) {
                    counters.last_ip.store(ip);
                    self.send(Event::NewIp(NewIp { id, ip, at: now }));
                }
            }
            let minute = (now_ms / 60_000) as u32;
            let Some((count, _)) = counters.count_minute(minute) else {
                return;
            };
            // No threshold is below the floor, so below it there is nothing
            // to compare: most minutes of most keys never read the history
            // (at a million keys, reading it costs a few cache misses).
            if count < self.config.spike_floor {
                return;
            }
            let (at, mut threshold) = unpack(counters.spike.load(Ordering::Relaxed));
            if at != minute {
                // The first to get here this minute, or one that does not see
                // its store yet: the same past minutes give the same figure.
                let average = self.trailing_average(counters, minute);
                let computed = (average * self.config.spike_multiple).ceil();
                threshold = (computed as u32).max(self.config.spike_floor);
                counters
                    .spike
                    .store(pack(minute, threshold), Ordering::Relaxed);
            }
            if count == threshold {
                self.send(Event::Spike(Spike {
                    id,
                    minute: time_of(u64::from(minute) * 60_000),
                    requests: u64::from(count),
                    trailing_average: self.trailing_average(counters, minute),
                }));
            }
        });
    }

    fn trailing_average(&self, counters: &Counters, minute: u32) -> f64 {
        let span = self
            .config
            .trailing_minutes
            .min(counters.minutes.len().saturating_sub(1))
            .max(1);
        let total: u64 = (1..=span as u32)
            .filter_map(|back| minute.checked_sub(back))
            .map(|m| u64::from(counters.minute_count(m)))
            .sum();
        total as f64 / span as f64
    }

    /// This process's pending (unflushed) counts and history for `id`,
    /// added to the store's `totals`.
    pub(crate) fn usage(&self, id: KeyId, totals: UsageTotals, now: SystemTime) -> KeyUsage {
        let mut usage = KeyUsage {
            requests: totals.requests,
            rejected: 0,
            rejections: totals.rejected,
            last_used_at: totals.last_used_at,
            last_used_ip: totals.last_used_ip,
            per_minute: Vec::new(),
        };
        let now_minute = (millis(now) / 60_000) as u32;
        let keys = self.keys.pin();
        let counters = keys.get(&id);
        if let Some(c) = counters {
            let requests = c.requests.load(Ordering::Relaxed);
            usage.requests += requests.saturating_sub(c.sent_requests.load(Ordering::Relaxed));
            let (now_counts, sent) = (
                Counters::load(&c.rejected),
                Counters::load(&c.sent_rejected),
            );
            let pending = Rejections::from_counts(std::array::from_fn(|i| {
                now_counts[i].saturating_sub(sent[i])
            }));
            usage.rejections.add(&pending);
            let last = c.last_used_ms.load(Ordering::Relaxed);
            if last != 0 && usage.last_used_at.is_none_or(|at| time_of(last) >= at) {
                usage.last_used_at = Some(time_of(last));
                usage.last_used_ip = c.last_ip.load().or(usage.last_used_ip);
            }
        }
        usage.rejected = usage.rejections.total();
        let span = counters.map_or(self.config.history_minutes, |c| c.minutes.len()) as u32;
        usage.per_minute = (0..span)
            .rev()
            .filter_map(|back| now_minute.checked_sub(back))
            .map(|m| MinuteUsage {
                start: time_of(u64::from(m) * 60_000),
                requests: u64::from(counters.map_or(0, |c| c.minute_count(m))),
            })
            .collect();
        usage
    }

    /// Every used key's counters, as counted by this process.
    pub(crate) fn snapshot(&self) -> Vec<UsageSample> {
        self.keys
            .pin()
            .iter()
            .map(|(id, c)| {
                let last = c.last_used_ms.load(Ordering::Relaxed);
                UsageSample {
                    id: *id,
                    requests: c.requests.load(Ordering::Relaxed),
                    rejections: Rejections::from_counts(Counters::load(&c.rejected)),
                    last_used_at: (last != 0).then(|| time_of(last)),
                }
            })
            .collect()
    }

    /// The pending deltas, in batches, with what to mark as sent once each
    /// batch is stored. Call with `flush_lock` held.
    pub(crate) fn pending(&self) -> Vec<PendingBatch> {
        let mut batches = Vec::new();
        let mut batch = PendingBatch::default();
        for (id, c) in self.keys.pin().iter() {
            let requests = c.requests.load(Ordering::Relaxed);
            let rejected = Counters::load(&c.rejected);
            let last = c.last_used_ms.load(Ordering::Relaxed);
            let sent_requests = c.sent_requests.load(Ordering::Relaxed);
            let sent_rejected: [u64; 5] =
                std::array::from_fn(|i| c.sent_rejected[i].load(Ordering::Relaxed));
            let sent_last = c.sent_last_used_ms.load(Ordering::Relaxed);
            if requests == sent_requests && rejected == sent_rejected && last == sent_last {
                continue;
            }
            let mut delta = UsageDelta::new(*id);
            delta.requests = requests - sent_requests;
            delta.rejected =
                Rejections::from_counts(std::array::from_fn(|i| rejected[i] - sent_rejected[i]));
            if last != sent_last && last != 0 {
                delta.last_used_at = Some(time_of(last));
                delta.last_used_ip = c.last_ip.load();
            }
            batch.deltas.push(delta);
            batch.marks.push(Mark {
                id: *id,
                requests,
                rejected,
                last,
            });
            if batch.deltas.len() == FLUSH_BATCH {
                batches.push(std::mem::take(&mut batch));
            }
        }
        if !batch.deltas.is_empty() {
            batches.push(batch);
        }
        batches
    }

    pub(crate) fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<Event>> {
        self.receiver.lock().ok()?.take()
    }

    pub(crate) fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }
}

/// Deltas for one `record_usage` call, and what they were computed from.
#[derive(Default)]
pub(crate) struct PendingBatch {
    pub(crate) deltas: Vec<UsageDelta>,
    marks: Vec<Mark>,
}

struct Mark {
    id: KeyId,
    requests: u64,
    rejected: [u64; 5],
    last: u64,
}

impl PendingBatch {
    /// Records that the store holds these counts now.
    pub(crate) fn mark_sent(&self, tracker: &Tracker) {
        let keys = tracker.keys.pin();
        for mark in &self.marks {
            let Some(c) = keys.get(&mark.id) else {
                continue;
            };
            c.sent_requests.store(mark.requests, Ordering::Relaxed);
            for (sent, value) in c.sent_rejected.iter().zip(mark.rejected) {
                sent.store(value, Ordering::Relaxed);
            }
            c.sent_last_used_ms.store(mark.last, Ordering::Relaxed);
        }
    }
}

/// Delivers events to the observer, remembering each key's addresses.
pub(crate) struct Dispatcher {
    observer: Arc<dyn UsageObserver>,
    seen: std::collections::HashMap<KeyId, std::collections::HashSet<IpAddr>>,
}

/// Most addresses remembered per key for new-address events.
const SEEN_PER_KEY: usize = 1024;

impl Dispatcher {
    pub(crate) fn new(observer: Arc<dyn UsageObserver>) -> Dispatcher {
        Dispatcher {
            observer,
            seen: std::collections::HashMap::new(),
        }
    }

    pub(crate) fn deliver(&mut self, event: Event) {
        match event {
            Event::Spike(spike) => self.observer.on_spike(&spike),
            Event::NewIp(new_ip) => {
                let seen = self.seen.entry(new_ip.id).or_default();
                if seen.contains(&new_ip.ip) {
                    return;
                }
                if seen.len() < SEEN_PER_KEY {
                    seen.insert(new_ip.ip);
                }
                self.observer.on_new_ip(&new_ip);
            }
        }
    }
}

/// [`KeyManager::spawn_usage_task`](crate::KeyManager::spawn_usage_task) was
/// called outside a Tokio runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "spawn_usage_task needs a Tokio runtime: call it inside #[tokio::main] or a runtime's context"
)]
pub struct NoRuntime;

/// The background task [`KeyManager::spawn_usage_task`](crate::KeyManager::spawn_usage_task)
/// starts: it flushes counts every interval and delivers observer events.
/// Call [`shutdown`](UsageTask::shutdown) when the server stops, so pending
/// counts reach the store.
#[derive(Debug)]
pub struct UsageTask {
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) handle: tokio::task::JoinHandle<Result<usize, crate::ManagerError>>,
}

impl UsageTask {
    /// Stops the task after a last flush, and returns that flush's result:
    /// how many keys' counts were written.
    pub async fn shutdown(mut self) -> Result<usize, crate::ManagerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.handle).await {
            Ok(result) => result,
            Err(err) => Err(crate::ManagerError::Store(crate::StoreError::backend(err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_cell_round_trips() {
        let cell = IpCell::default();
        assert_eq!(cell.load(), None);
        for ip in ["203.0.113.9", "2001:db8::1", "::1", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().unwrap();
            cell.store(ip);
            assert_eq!(cell.load(), Some(ip));
        }
    }

    #[test]
    fn windows_are_exact_and_refusals_take_no_quota() {
        let counters = Counters::new(0, KeyId::from_u128(1), 1);
        let limit = RateLimit::new(3, Duration::from_secs(10));
        let start = 1_000_000_000u64; // on a 10 s boundary
        for remaining in [2, 1, 0] {
            assert_eq!(
                counters.take(limit, start + 1).unwrap().remaining,
                remaining
            );
        }
        for _ in 0..5 {
            assert_eq!(
                counters.take(limit, start + 2_500),
                Err(Duration::from_millis(7_500))
            );
        }
        let next = counters.take(limit, start + 10_000).unwrap();
        assert_eq!(next.remaining, 2, "the window rolled over");
        assert_eq!(next.reset, Duration::from_secs(10));
    }

    #[test]
    fn minutes_roll_over() {
        let counters = Counters::new(0, KeyId::from_u128(1), 3);
        assert_eq!(counters.count_minute(100), Some((1, true)));
        assert_eq!(counters.count_minute(100), Some((2, false)));
        assert_eq!(counters.count_minute(101), Some((1, true)));
        assert_eq!(counters.minute_count(100), 2, "filed in the ring");
        assert_eq!(counters.minute_count(101), 1, "being counted");
        assert_eq!(counters.count_minute(103), Some((1, true)));
        assert_eq!(counters.minute_count(101), 1);
        // Filing 103 reuses 100's slot (a ring of three minutes).
        assert_eq!(counters.count_minute(104), Some((1, true)));
        assert_eq!(counters.minute_count(100), 0, "overwritten");
        assert_eq!(counters.minute_count(103), 1);
        assert_eq!(
            counters.count_minute(100),
            None,
            "older than the minute being counted"
        );
        assert_eq!(
            Counters::new(0, KeyId::from_u128(1), 0).count_minute(5),
            None,
            "no history kept"
        );
    }

    #[test]
    fn history_is_allocated_an_hour_at_a_time() {
        let minutes = Minutes::new(24 * 60);
        let allocated = |m: &Minutes| m.hours.iter().filter(|h| h.get().is_some()).count();
        assert_eq!(allocated(&minutes), 0);
        assert!(minutes.peek(1_000).is_none(), "reading allocates nothing");
        minutes.slot(1_000).unwrap();
        minutes.slot(1_001).unwrap();
        assert_eq!(allocated(&minutes), 1);
        let odd = Minutes::new(90);
        assert_eq!(odd.hours.len(), 2);
        assert!(odd.slot(89).is_some() && odd.slot(90).is_some());
        assert!(Minutes::new(0).slot(5).is_none());
    }
}
