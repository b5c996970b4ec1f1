//! The manager's side of usage counting: which block counts a key, what is
//! pending for the store, and the observer's events.
//!
//! A key is counted in one of two places:
//!
//! - **Inline**, in the counters of the store entry the verification has
//!   just read ([`StoredKey`]), when the store keeps entries in memory. The
//!   first tracker to count through an entry claims its counters; from
//!   then on a request costs a few atomic operations on a line that was
//!   fetched with the entry, and no lookup.
//! - **Its own block**, in the tracker's per-key record, for stores that
//!   answer with plain records (SQL, most third-party stores), and for
//!   entries another tracker has claimed.
//!
//! Either way the tracker keeps one record per used key ([`Tracked`]): the
//! entries it claimed, its own block, and what is touched less than once a
//! request — rejections, what reached the store, the finished minutes. A
//! key's counts are the sum of its blocks; usually there is one. (A cache
//! that drops and refills an entry gives a key a second one; a block nobody
//! else can reach any more is folded into the tracker's own at the next
//! flush.)

use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::minutes::Minutes;
use super::{time_of, Event, KeyUsage, MinuteUsage, NewIp, Rejection, Spike};
use super::{UsageConfig, UsageSample};
use crate::clock::{millis_since_epoch, Clock};
use crate::key::{KeyId, UniformHasher};
use crate::record::KeyRecord;
use crate::store::counters::{Claim, Counters};
use crate::store::memory::Entry;
use crate::store::memory::StoredKeyRef;
use crate::store::{Rejections, UsageDelta, UsageTotals};

/// What a verification counts against: the store's entry (whose inline
/// counters it may use), resolved once, with the handle to keep if this
/// tracker claims it; or a plain record.
#[derive(Clone, Copy)]
pub(crate) enum Subject<'a> {
    Entry {
        handle: &'a StoredKeyRef,
        entry: Entry<'a>,
    },
    Record(&'a KeyRecord),
}

impl Subject<'_> {
    pub(crate) fn id(&self) -> KeyId {
        match self {
            Subject::Entry { entry, .. } => entry.id(),
            Subject::Record(record) => record.id,
        }
    }
}

/// This tracker's record of one used key.
pub(crate) struct Tracked {
    /// Counts made where no entry held them.
    own: Counters,
    /// Store entries whose inline counters count this key for this tracker.
    entries: Mutex<Vec<StoredKeyRef>>,
    rejected: [AtomicU64; 5],
    /// What already reached the store, to compute the next delta.
    sent_requests: AtomicU64,
    sent_rejected: [AtomicU64; 5],
    sent_last_used_ms: AtomicU64,
    /// Finished minutes of every block.
    minutes: Minutes,
}

/// A key's counts summed over its blocks.
struct Totals {
    requests: u64,
    last_used_ms: u64,
    last_ip: Option<IpAddr>,
}

impl Tracked {
    fn new(history_minutes: usize) -> Tracked {
        Tracked {
            own: Counters::default(),
            entries: Mutex::new(Vec::new()),
            rejected: Default::default(),
            sent_requests: AtomicU64::new(0),
            sent_rejected: Default::default(),
            sent_last_used_ms: AtomicU64::new(0),
            minutes: Minutes::new(history_minutes),
        }
    }

    fn entries(&self) -> MutexGuard<'_, Vec<StoredKeyRef>> {
        // A panic while the list was held cannot leave it half changed.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn totals(&self) -> Totals {
        let mut totals = Totals {
            requests: self.own.requests(),
            last_used_ms: self.own.last_used_ms(),
            last_ip: self.own.last_ip(),
        };
        for entry in self.entries().iter() {
            let counters = entry.entry().counters();
            totals.requests += counters.requests();
            let last = counters.last_used_ms();
            if last > totals.last_used_ms {
                totals.last_used_ms = last;
                totals.last_ip = counters.last_ip().or(totals.last_ip);
            }
        }
        totals
    }

    /// Requests in each of `minutes`, told to `each` with the minute: what
    /// the ring holds plus the blocks still counting it. The entry list is
    /// locked once for all of them (a day of history is 1 440 minutes).
    fn in_minutes(&self, minutes: impl IntoIterator<Item = u32>, mut each: impl FnMut(u32, u32)) {
        let entries = self.entries();
        for minute in minutes {
            let mut count = self
                .minutes
                .count(minute)
                .saturating_add(self.own.in_minute(minute));
            for entry in entries.iter() {
                count = count.saturating_add(entry.entry().counters().in_minute(minute));
            }
            each(minute, count);
        }
    }

    #[cfg(test)]
    fn in_minute(&self, minute: u32) -> u32 {
        let mut count = 0;
        self.in_minutes([minute], |_, c| count = c);
        count
    }

    fn rejected(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.rejected[i].load(Ordering::Relaxed))
    }

    /// Folds the blocks of entries nobody else holds any more (a cache
    /// dropped them) into this record's own: they can no longer change.
    fn fold_unreachable(&self) {
        self.entries().retain(|entry| {
            if !entry.is_unreachable() {
                return true;
            }
            let counters = entry.entry().counters();
            self.own.absorb(counters);
            let (minute, count) = counters.current_minute();
            // Minute 0 is "never counted a minute" (history off).
            if minute != 0 && count > 0 {
                self.minutes.file(minute, count);
            }
            false
        });
    }
}

type KeyMap = papaya::HashMap<KeyId, Tracked, BuildHasherDefault<UniformHasher>>;

/// Tells trackers apart, so an entry's counters are only used by the
/// tracker that claimed them. Zero means "unclaimed".
static NEXT_TRACKER: AtomicU32 = AtomicU32::new(1);

fn next_tag() -> u32 {
    loop {
        let tag = NEXT_TRACKER.fetch_add(1, Ordering::Relaxed);
        if tag != 0 {
            return tag;
        }
    }
}

/// The manager's counters for every used key.
pub(crate) struct Tracker {
    config: UsageConfig,
    tag: u32,
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
            tag: next_tag(),
            // Records are inserted once per key and then only read: blocking
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

    fn history_minutes(&self) -> usize {
        if self.config.enabled {
            self.config.history_minutes
        } else {
            0
        }
    }

    /// This tracker's record of `id`, created on first use.
    fn tracked<'g>(&self, id: KeyId, guard: &'g impl papaya::Guard) -> &'g Tracked {
        match self.keys.get(&id, guard) {
            Some(found) => found,
            None => {
                self.keys
                    .get_or_insert_with(id, || Tracked::new(self.history_minutes()), guard)
            }
        }
    }

    /// The entry's inline counters if they are this tracker's, claiming
    /// them if nobody has.
    fn inline<'e>(&self, subject: &Subject<'e>) -> Option<&'e Counters> {
        let Subject::Entry { handle, entry } = *subject else {
            return None;
        };
        match entry.claim_counters(self.tag) {
            Claim::Ours => Some(entry.counters()),
            Claim::Won => {
                let guard = self.keys.guard();
                self.tracked(entry.id(), &guard)
                    .entries()
                    .push(handle.clone());
                Some(entry.counters())
            }
            Claim::Theirs => None,
        }
    }

    fn send(&self, event: Event) {
        if self.config.observer.is_some() && self.events.try_send(event).is_err() {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refused request of a real key.
    pub(crate) fn rejected(&self, subject: Subject<'_>, reason: Rejection) {
        if self.config.enabled {
            let guard = self.keys.guard();
            self.tracked(subject.id(), &guard).rejected[reason as usize]
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a successful request at `now_ms` by `clock` (read again only
    /// to date a new-IP event exactly).
    pub(crate) fn succeeded(
        &self,
        subject: Subject<'_>,
        now_ms: u64,
        ip: Option<IpAddr>,
        clock: &dyn Clock,
    ) {
        if !self.config.enabled {
            return;
        }
        let keep_minutes = self.config.history_minutes > 0;
        let guard;
        let (counters, tracked) = match self.inline(&subject) {
            Some(counters) => (counters, None),
            None => {
                guard = self.keys.guard();
                let tracked = self.tracked(subject.id(), &guard);
                (&tracked.own, Some(tracked))
            }
        };
        let counted = counters.count(now_ms, ip, keep_minutes);
        if counted.new_ip {
            if let Some(ip) = ip {
                self.send(Event::NewIp(NewIp {
                    id: subject.id(),
                    ip,
                    at: clock.now(),
                }));
            }
        }
        // Most requests end here. The key's record is needed once a minute
        // (to file the last one), and when the minute reaches the spike
        // floor: to work out the threshold, and to report reaching it. No
        // threshold is below the floor, so below it there is nothing to do.
        let minute = minute_of(now_ms);
        let spiking = counted
            .in_minute
            .filter(|&count| count >= self.config.spike_floor);
        let known = spiking.and(counters.spike_threshold(minute));
        let spike_work = match (spiking, known) {
            (None, _) => false,
            (Some(count), Some(threshold)) => count == threshold,
            (Some(_), None) => true,
        };
        if counted.finished.is_none() && !spike_work {
            return;
        }
        let guard = self.keys.guard();
        let tracked = tracked.unwrap_or_else(|| self.tracked(subject.id(), &guard));
        if let Some((finished, count)) = counted.finished {
            tracked.minutes.file(finished, count);
        }
        let Some(count) = spiking.filter(|_| spike_work) else {
            return;
        };
        let threshold = match known {
            Some(threshold) => threshold,
            None => {
                // The first to get here this minute, or one that does not see
                // its store yet: the same past minutes give the same figure.
                let average = self.trailing_average(tracked, minute);
                let computed = (average * self.config.spike_multiple).ceil();
                let threshold = (computed as u32).max(self.config.spike_floor);
                counters.set_spike_threshold(minute, threshold);
                threshold
            }
        };
        if count == threshold {
            self.send(Event::Spike(Spike {
                id: subject.id(),
                minute: time_of(u64::from(minute) * 60_000),
                requests: u64::from(count),
                trailing_average: self.trailing_average(tracked, minute),
            }));
        }
    }

    fn trailing_average(&self, tracked: &Tracked, minute: u32) -> f64 {
        let span = self
            .config
            .trailing_minutes
            .min(tracked.minutes.len().saturating_sub(1))
            .max(1);
        let mut total = 0u64;
        let past = (1..=span as u32).filter_map(|back| minute.checked_sub(back));
        tracked.in_minutes(past, |_, count| total += u64::from(count));
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
        let now_minute = minute_of(millis_since_epoch(now));
        let keys = self.keys.pin();
        let tracked = keys.get(&id);
        if let Some(t) = tracked {
            let counted = t.totals();
            usage.requests += counted
                .requests
                .saturating_sub(t.sent_requests.load(Ordering::Relaxed));
            let (now_counts, sent) = (t.rejected(), load(&t.sent_rejected));
            let pending = Rejections::from_counts(std::array::from_fn(|i| {
                now_counts[i].saturating_sub(sent[i])
            }));
            usage.rejections.add(&pending);
            let last = counted.last_used_ms;
            if last != 0 && usage.last_used_at.is_none_or(|at| time_of(last) >= at) {
                usage.last_used_at = Some(time_of(last));
                usage.last_used_ip = counted.last_ip.or(usage.last_used_ip);
            }
        }
        usage.rejected = usage.rejections.total();
        let span = tracked.map_or(self.config.history_minutes, |t| t.minutes.len()) as u32;
        let minutes = (0..span)
            .rev()
            .filter_map(|back| now_minute.checked_sub(back));
        let minute_of_count = |minute: u32, count: u32| MinuteUsage {
            start: time_of(u64::from(minute) * 60_000),
            requests: u64::from(count),
        };
        match tracked {
            Some(t) => t.in_minutes(minutes, |m, count| {
                usage.per_minute.push(minute_of_count(m, count));
            }),
            None => usage.per_minute = minutes.map(|m| minute_of_count(m, 0)).collect(),
        }
        usage
    }

    /// Every used key's counters, as counted by this process.
    pub(crate) fn snapshot(&self) -> Vec<UsageSample> {
        self.keys
            .pin()
            .iter()
            .map(|(id, t)| {
                let totals = t.totals();
                UsageSample {
                    id: *id,
                    requests: totals.requests,
                    rejections: Rejections::from_counts(t.rejected()),
                    last_used_at: (totals.last_used_ms != 0).then(|| time_of(totals.last_used_ms)),
                }
            })
            .collect()
    }

    /// The pending deltas, in batches, with what to mark as sent once each
    /// batch is stored. Call with `flush_lock` held.
    pub(crate) fn pending(&self) -> Vec<PendingBatch> {
        let mut batches = Vec::new();
        let mut batch = PendingBatch::default();
        for (id, t) in self.keys.pin().iter() {
            t.fold_unreachable();
            let totals = t.totals();
            let (requests, last) = (totals.requests, totals.last_used_ms);
            let rejected = t.rejected();
            let sent_requests = t.sent_requests.load(Ordering::Relaxed);
            let sent_rejected = load(&t.sent_rejected);
            let sent_last = t.sent_last_used_ms.load(Ordering::Relaxed);
            if requests == sent_requests && rejected == sent_rejected && last == sent_last {
                continue;
            }
            let mut delta = UsageDelta::new(*id);
            delta.requests = requests.saturating_sub(sent_requests);
            delta.rejected = Rejections::from_counts(std::array::from_fn(|i| {
                rejected[i].saturating_sub(sent_rejected[i])
            }));
            if last != sent_last && last != 0 {
                delta.last_used_at = Some(time_of(last));
                delta.last_used_ip = totals.last_ip;
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

impl Drop for Tracker {
    /// Hands the entries' counters back, so the next tracker over the same
    /// store (say, a second manager built over it) counts inline from a
    /// clean block instead of in its own map.
    fn drop(&mut self) {
        for (_, tracked) in self.keys.pin().iter() {
            for entry in tracked.entries().iter() {
                entry.entry().release_counters(self.tag);
            }
        }
    }
}

fn minute_of(ms: u64) -> u32 {
    (ms / 60_000) as u32
}

fn load(words: &[AtomicU64; 5]) -> [u64; 5] {
    std::array::from_fn(|i| words[i].load(Ordering::Relaxed))
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
            let Some(t) = keys.get(&mark.id) else {
                continue;
            };
            t.sent_requests.store(mark.requests, Ordering::Relaxed);
            for (sent, value) in t.sent_rejected.iter().zip(mark.rejected) {
                sent.store(value, Ordering::Relaxed);
            }
            t.sent_last_used_ms.store(mark.last, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::clock::ManualClock;
    use crate::key::{Environment, TmKey};
    use crate::store::memory::StoredKey;
    use crate::usage::UsageConfig;

    fn stored() -> Arc<StoredKey> {
        let key = TmKey::generate(Environment::Live);
        Arc::new(StoredKey::new(KeyRecord {
            hash: key.hash(),
            revoked_at: None,
            expires_at: None,
            allowed_ips: Vec::new(),
            rate_limit: None,
            id: KeyId::generate(),
            environment: Environment::Live,
            hint: key.hint(),
            owner: "acct".into(),
            name: "Main".into(),
            created_at: SystemTime::UNIX_EPOCH,
            scopes: Vec::new(),
        }))
    }

    fn count(tracker: &Tracker, handle: &StoredKeyRef, times: usize) {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(29_000_000 * 60));
        for _ in 0..times {
            let subject = Subject::Entry {
                handle,
                entry: handle.entry(),
            };
            tracker.succeeded(subject, clock.now_millis(), None, &clock);
        }
    }

    #[test]
    fn blocks_nobody_can_reach_are_folded_into_the_key_s_own() {
        let tracker = Tracker::new(UsageConfig::default());
        let first = stored();
        let id = first.id();
        let handle = StoredKeyRef::from(Arc::clone(&first));
        count(&tracker, &handle, 3);
        // The same key, refilled elsewhere (a cache dropped the first copy).
        let second = stored();
        let again = StoredKeyRef::from(Arc::new(StoredKey::new(KeyRecord {
            id,
            ..second.record()
        })));
        count(&tracker, &again, 2);
        drop(handle);
        let guard = tracker.keys.guard();
        let tracked = tracker.keys.get(&id, &guard).unwrap();
        assert_eq!(tracked.entries().len(), 2);
        tracker.pending();
        assert_eq!(tracked.entries().len(), 2, "the first is still held");
        drop(first);
        let batches = tracker.pending();
        assert_eq!(tracked.entries().len(), 1, "the unreachable one is folded");
        assert_eq!(tracked.totals().requests, 5, "and nothing is counted twice");
        assert_eq!(batches[0].deltas[0].requests, 5);
        let minute = 29_000_000;
        assert_eq!(tracked.in_minute(minute), 5, "its minute too");
    }
}
