//! Usage monitoring, kept by the [`KeyManager`](crate::KeyManager).
//!
//! Each key is counted: successful requests, rejections by reason, the last
//! use and its client address, and a per-minute history. Counting on the request path is lock-free and
//! allocates nothing after a key's first use. For a store that keeps keys in
//! memory (`MemoryStore`, a warm verification cache)
//! the counters a request touches are part of the key's entry, on the cache
//! line after the one verification reads: counting costs one atomic
//! increment and a few plain loads and stores, and no lookup. Any other
//! store's keys are counted in a block of the manager's, found by a
//! lock-free map lookup. What is touched less than once a request — the
//! rejections, the finished minutes (allocated an hour at a time), what
//! reached the store — is kept only for keys that are used.
//!
//! Counts reach the usage store in batches ([`UsageStore::record_usage`]): by
//! [`KeyManager::flush_usage`](crate::KeyManager::flush_usage), by the
//! background task [`KeyManager::spawn_usage_task`](crate::KeyManager::spawn_usage_task)
//! starts, and by that task's [`shutdown`](UsageTask::shutdown). A batch the
//! store refuses is not lost: its counts stay pending and go with the next
//! one. (A batch the store applied but whose answer was lost — a timeout —
//! is sent again: counts are at least once, not exactly once.)
//!
//! [`UsageStore::record_usage`]: crate::UsageStore::record_usage

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::key::KeyId;
pub use crate::rate_limit::RateLimitStatus;
use crate::store::Rejections;

mod minutes;
mod tracker;

pub(crate) use tracker::{Subject, Tracker};

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
    /// Events are delivered on a thread of their own
    /// (`tm-auth-usage-observer`), never on the request path; when the
    /// observer falls behind, events are dropped (and counted, see
    /// [`KeyManager::dropped_usage_events`](crate::KeyManager::dropped_usage_events))
    /// rather than slowing requests.
    pub fn observer(mut self, observer: impl UsageObserver) -> UsageConfig {
        self.observer = Some(Arc::new(observer));
        self
    }
}

/// Told of unusual usage: an unexpected spike, or a key used from a new
/// address, can point to a bug, unauthorized use or a breach.
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
    /// this process; the first use counts). Up to
    /// [`KNOWN_ADDRESSES_PER_KEY`] addresses are remembered per key; past
    /// that, new addresses are no longer told one by one but summed up by
    /// [`on_address_set_full`](UsageObserver::on_address_set_full).
    fn on_new_ip(&self, event: &NewIp) {
        let _ = event;
    }

    /// A key whose set of known addresses is full was used from addresses
    /// outside it: told at most once per key and minute, however many
    /// addresses there are (a key used from a botnet's addresses is itself
    /// worth an alert, not 300 000 of them).
    fn on_address_set_full(&self, event: &AddressSetFull) {
        let _ = event;
    }
}

/// Most addresses remembered per key for [`UsageObserver::on_new_ip`].
pub const KNOWN_ADDRESSES_PER_KEY: usize = 1024;

/// A key whose set of known addresses is full was used from an address
/// outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddressSetFull {
    /// The key.
    pub id: KeyId,
    /// The start of the minute this event covers.
    pub minute: SystemTime,
    /// The first address outside the set seen in that minute.
    pub first_ip: IpAddr,
    /// How many addresses the set holds: [`KNOWN_ADDRESSES_PER_KEY`].
    pub known: usize,
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

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// An event for the observer, sent from the request path.
pub(crate) enum Event {
    Spike(Spike),
    NewIp(NewIp),
}

/// Delivers events to the observer, remembering each key's addresses.
pub(crate) struct Dispatcher {
    observer: Arc<dyn UsageObserver>,
    seen: std::collections::HashMap<KeyId, Seen>,
}

/// A key's known addresses, and the last minute an address outside a full
/// set was told.
#[derive(Default)]
struct Seen {
    addresses: std::collections::HashSet<IpAddr>,
    full_told_minute: Option<u64>,
}

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
                if seen.addresses.contains(&new_ip.ip) {
                    return;
                }
                if seen.addresses.len() < KNOWN_ADDRESSES_PER_KEY {
                    seen.addresses.insert(new_ip.ip);
                    self.observer.on_new_ip(&new_ip);
                    return;
                }
                let minute = crate::clock::millis_since_epoch(new_ip.at) / 60_000;
                if seen.full_told_minute == Some(minute) {
                    return;
                }
                seen.full_told_minute = Some(minute);
                self.observer.on_address_set_full(&AddressSetFull {
                    id: new_ip.id,
                    minute: time_of(minute * 60_000),
                    first_ip: new_ip.ip,
                    known: KNOWN_ADDRESSES_PER_KEY,
                });
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
/// starts: it writes the counts to the usage store every interval. Call
/// [`shutdown`](UsageTask::shutdown) when the server stops, so pending
/// counts reach the store. (Observer events do not depend on it: the
/// manager's own observer thread delivers them; see
/// [`UsageConfig::observer`].)
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
