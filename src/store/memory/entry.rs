//! A key as an in-memory store keeps it: the fields verification reads, in
//! atomics, with the key's usage counters beside them.
//!
//! Each key is two parts. The hot part — 128 bytes: hash, revocation,
//! expiry, rate limit, flags, then the usage counters — is all a
//! verification reads and writes. The cold part — id, owner, name,
//! allowlist, creation time — is read by management calls, by handlers
//! asking who called, and by verifications of keys with an allowlist.
//! [`StoredKey`] keeps both together; `MemoryStore` keeps the hot parts in
//! arrays of their own, aligned so each is one 128-byte block of memory
//! (which the processor fetches as one), and the cold parts beside them.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use ipnetwork::IpNetwork;

use crate::clock::{moved_by, nanos_between};
use crate::key::KeyId;
use crate::key::{Environment, KeyHash, KeyHint};
use crate::net::ip_allowed;
use crate::rate_limit::RateLimit;
use crate::record::KeyRecord;
use crate::scope::Scope;
use crate::store::counters::{Claim, Counters};
use crate::store::StoreUpdate;

/// `revoked_ns` of a key that is not revoked.
const NOT_REVOKED: i64 = i64::MIN;
/// `expires_ns` of a key that never expires.
const NEVER: i64 = i64::MAX;

const TEST_KEY: u32 = 1;
const HAS_ALLOWLIST: u32 = 2;
/// The key has scopes (without them it is unrestricted).
const HAS_SCOPES: u32 = 8;
/// The hint's environment, apart from the key's: a record a store was
/// given comes back exactly as it was, even one that disagrees with itself.
const TEST_HINT: u32 = 4;

/// Nanoseconds since the Unix epoch, kept exact between the years 1678
/// and 2262 and clamped outside them (the two ends are the markers for
/// "not revoked" and "never expires").
pub(crate) fn to_nanos(at: SystemTime) -> i64 {
    nanos_between(UNIX_EPOCH, at).clamp(i64::MIN + 1, i64::MAX - 1)
}

pub(crate) fn from_nanos(ns: i64) -> SystemTime {
    moved_by(UNIX_EPOCH, ns)
}

/// The part of a key every verification reads: one 128-byte block, the
/// first line for the checks, the second for counting.
#[derive(Default)]
#[repr(C)]
pub(crate) struct Hot {
    hash: [AtomicU64; 4],
    revoked_ns: AtomicI64,
    expires_ns: AtomicI64,
    /// `RateLimit::to_word`, or 0 for none.
    rate_limit: AtomicU64,
    /// The tracker counting in `counters` (0: none yet).
    tracker: AtomicU32,
    flags: AtomicU32,
    counters: Counters,
}

impl Hot {
    /// Writes `record`'s verification fields (into a blank part, or one not
    /// yet reachable by anyone).
    pub(super) fn fill(&self, record: &KeyRecord) {
        for (word, value) in self.hash.iter().zip(record.hash.words()) {
            word.store(value, Ordering::Relaxed);
        }
        let mut flags = 0;
        if record.environment == Environment::Test {
            flags |= TEST_KEY;
        }
        if !record.allowed_ips.is_empty() {
            flags |= HAS_ALLOWLIST;
        }
        if !record.scopes.is_empty() {
            flags |= HAS_SCOPES;
        }
        if record.hint.environment() == Environment::Test {
            flags |= TEST_HINT;
        }
        let revoked = record.revoked_at.map_or(NOT_REVOKED, to_nanos);
        let expires = record.expires_at.map_or(NEVER, to_nanos);
        self.revoked_ns.store(revoked, Ordering::Relaxed);
        self.expires_ns.store(expires, Ordering::Relaxed);
        let limit = record.rate_limit.map_or(0, RateLimit::to_word);
        self.rate_limit.store(limit, Ordering::Relaxed);
        self.flags.store(flags, Ordering::Relaxed);
    }

    pub(super) fn hash(&self) -> KeyHash {
        KeyHash::from_words(std::array::from_fn(|i| {
            self.hash[i].load(Ordering::Relaxed)
        }))
    }

    /// Whether this is `hash`'s key, compared in constant time.
    pub(crate) fn hash_is(&self, hash: &KeyHash) -> bool {
        hash.has_words(std::array::from_fn(|i| {
            self.hash[i].load(Ordering::Relaxed)
        }))
    }
}

/// A hot part on a 128-byte boundary: the two lines a verification reads
/// are then one block, which the processor fetches together.
#[derive(Default)]
#[repr(align(128))]
pub(super) struct AlignedHot(pub(super) Hot);

/// Names this long or shorter are kept in the entry itself; longer ones
/// get an allocation of their own.
const INLINE_NAME: usize = 30;

enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Shared(Arc<str>),
}

impl Name {
    fn new(name: &str) -> Name {
        match u8::try_from(name.len()) {
            Ok(len) if name.len() <= INLINE_NAME => {
                let mut bytes = [0u8; INLINE_NAME];
                bytes[..name.len()].copy_from_slice(name.as_bytes());
                Name::Inline { len, bytes }
            }
            _ => Name::Shared(Arc::from(name)),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `str`, so the bytes are UTF-8.
            Name::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Name::Shared(name) => name,
        }
    }

    fn shared(&self) -> Arc<str> {
        match self {
            Name::Inline { .. } => Arc::from(self.as_str()),
            Name::Shared(name) => Arc::clone(name),
        }
    }
}

/// The rest of a key.
pub(crate) struct Cold {
    id: KeyId,
    created_ns: i64,
    owner: Arc<str>,
    /// The allowlist and the scopes; `None` when the key has neither.
    restrictions: ArcSwapOption<Restrictions>,
    /// The name; its lock is also the key's write lock, so changes to one
    /// key apply one at a time and a snapshot sees a whole one.
    name: Mutex<Name>,
    /// The next key of the same owner, for `MemoryStore`'s lists.
    next_of_owner: AtomicU32,
    /// The hint's last four characters (its environment is in the flags).
    hint_last: [u8; 4],
}

impl Cold {
    pub(super) fn new(record: &KeyRecord, owner: Arc<str>) -> Cold {
        Cold {
            id: record.id,
            created_ns: to_nanos(record.created_at),
            owner,
            restrictions: ArcSwapOption::new(Restrictions::shared(
                &record.allowed_ips,
                &record.scopes,
            )),
            name: Mutex::new(Name::new(&record.name)),
            next_of_owner: AtomicU32::new(0),
            hint_last: record.hint.last_bytes(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Name> {
        // Every change leaves the key whole before it can panic.
        self.name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Scopes joined by spaces this long or shorter are kept in the set itself.
const INLINE_SCOPES: usize = 103;

/// What restricts a key besides its hot fields, replaced as one so a key
/// pays one pointer for both: its allowlist, and its scopes — the sorted
/// list and, when they are short enough (most keys'), the same joined by
/// spaces inside this allocation, which a scope check scans without
/// following a pointer for each scope. The joined text comes first, in a
/// block of its own: a check of up to 63 characters of scopes reads one
/// cache line.
#[repr(C, align(64))]
pub(crate) struct Restrictions {
    joined_len: u8,
    joined: [u8; INLINE_SCOPES],
    list: Vec<Scope>,
    allowed: Vec<IpNetwork>,
}

impl Restrictions {
    /// `None` for a key with neither an allowlist nor scopes.
    fn shared(allowed: &[IpNetwork], scopes: &[Scope]) -> Option<Arc<Restrictions>> {
        (!allowed.is_empty() || !scopes.is_empty())
            .then(|| Arc::new(Restrictions::new(allowed, scopes)))
    }

    fn new(allowed: &[IpNetwork], scopes: &[Scope]) -> Restrictions {
        let mut set = Restrictions {
            list: scopes.to_vec(),
            allowed: allowed.to_vec(),
            joined_len: 0,
            joined: [0; INLINE_SCOPES],
        };
        let text = crate::scope::joined(scopes);
        if let Ok(len) = u8::try_from(text.len()) {
            if text.len() <= INLINE_SCOPES {
                set.joined[..text.len()].copy_from_slice(text.as_bytes());
                set.joined_len = len;
            }
        }
        set
    }

    /// The scopes (empty: unrestricted).
    pub(crate) fn list(&self) -> &[Scope] {
        &self.list
    }

    /// Whether `scope` is one of the key's scopes.
    fn contains(&self, scope: &str) -> bool {
        if self.joined_len == 0 {
            return crate::scope::grants(&self.list, scope);
        }
        self.joined[..usize::from(self.joined_len)]
            .split(|b| *b == b' ')
            .any(|s| s == scope.as_bytes())
    }
}

/// Where a key's cold part is: right beside its hot part, or at its
/// position in a slab (looked up only when needed, so a verification that
/// reads no cold field never touches that memory).
#[derive(Clone, Copy)]
pub(super) enum ColdAt<'a> {
    Here(&'a Cold),
    Slab(&'a boxcar::Vec<Cold>, u32),
}

/// One key, its two parts found: what every reading and writing of a
/// stored key goes through.
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub(super) hot: &'a Hot,
    pub(super) cold: ColdAt<'a>,
}

impl<'a> Entry<'a> {
    fn cold(self) -> &'a Cold {
        match self.cold {
            ColdAt::Here(cold) => cold,
            // Slab positions are handed out only for keys that are there,
            // and a slab never shrinks.
            ColdAt::Slab(slab, index) => &slab[index as usize],
        }
    }

    pub(crate) fn hot(self) -> &'a Hot {
        self.hot
    }

    pub(crate) fn hash(self) -> KeyHash {
        self.hot.hash()
    }

    /// The next key of the same owner (`MemoryStore`'s lists).
    pub(crate) fn next_of_owner(self) -> &'a AtomicU32 {
        &self.cold().next_of_owner
    }

    pub(crate) fn record(self) -> KeyRecord {
        let cold = self.cold();
        let name = cold.lock();
        self.snapshot(&name)
    }

    fn snapshot(self, name: &Name) -> KeyRecord {
        let cold = self.cold();
        KeyRecord {
            hash: self.hot.hash(),
            revoked_at: self.revoked_at(),
            expires_at: self.expires_at(),
            allowed_ips: cold
                .restrictions
                .load()
                .as_ref()
                .map_or_else(Vec::new, |r| r.allowed.clone()),
            rate_limit: self.rate_limit(),
            id: cold.id,
            environment: self.environment(),
            hint: self.hint(),
            owner: cold.owner.to_string(),
            name: name.as_str().to_owned(),
            created_at: from_nanos(cold.created_ns),
            scopes: cold
                .restrictions
                .load()
                .as_ref()
                .map_or_else(Vec::new, |r| r.list.clone()),
        }
    }

    /// The key's scopes as they are now; `None` for an unrestricted key.
    pub(crate) fn scopes(self) -> Option<Arc<Restrictions>> {
        if self.hot.flags.load(Ordering::SeqCst) & HAS_SCOPES == 0 {
            return None;
        }
        self.cold()
            .restrictions
            .load_full()
            .filter(|r| !r.list.is_empty())
    }

    /// Whether the key may do what `scope` names, as it is now: an
    /// unrestricted key reads nothing beyond its flags.
    pub(crate) fn has_scope(self, scope: &str) -> bool {
        if self.hot.flags.load(Ordering::SeqCst) & HAS_SCOPES == 0 {
            return true;
        }
        match &*self.cold().restrictions.load() {
            Some(r) if !r.list.is_empty() => r.contains(scope),
            // Widened between the two reads.
            _ => true,
        }
    }

    pub(crate) fn id(self) -> KeyId {
        self.cold().id
    }

    pub(crate) fn owner(self) -> &'a str {
        &self.cold().owner
    }

    pub(super) fn name(self) -> String {
        self.cold().lock().as_str().to_owned()
    }

    pub(crate) fn shared_name(self) -> Arc<str> {
        self.cold().lock().shared()
    }

    pub(crate) fn environment(self) -> Environment {
        if self.hot.flags.load(Ordering::Relaxed) & TEST_KEY != 0 {
            Environment::Test
        } else {
            Environment::Live
        }
    }

    pub(crate) fn hint(self) -> KeyHint {
        let environment = if self.hot.flags.load(Ordering::Relaxed) & TEST_HINT != 0 {
            Environment::Test
        } else {
            Environment::Live
        };
        KeyHint::from_parts(environment, self.cold().hint_last)
    }

    pub(crate) fn is_revoked(self) -> bool {
        // `SeqCst`, like the store in `revoke`: a verification that starts
        // after `revoke` returned sees it.
        self.hot.revoked_ns.load(Ordering::SeqCst) != NOT_REVOKED
    }

    pub(super) fn revoked_at(self) -> Option<SystemTime> {
        let ns = self.hot.revoked_ns.load(Ordering::SeqCst);
        (ns != NOT_REVOKED).then(|| from_nanos(ns))
    }

    pub(super) fn expires_at(self) -> Option<SystemTime> {
        let ns = self.hot.expires_ns.load(Ordering::SeqCst);
        (ns != NEVER).then(|| from_nanos(ns))
    }

    /// Whether the key expires at all (and so needs the clock).
    pub(crate) fn expires(self) -> bool {
        self.hot.expires_ns.load(Ordering::Relaxed) != NEVER
    }

    /// Whether the key has expired at `now`.
    pub(crate) fn expired(self, now: SystemTime) -> bool {
        to_nanos(now) >= self.hot.expires_ns.load(Ordering::SeqCst)
    }

    pub(crate) fn rate_limit(self) -> Option<RateLimit> {
        RateLimit::from_word(self.hot.rate_limit.load(Ordering::SeqCst))
    }

    /// Reads the allowlist only if the key has one.
    pub(crate) fn allows_ip(self, client_ip: Option<IpAddr>) -> bool {
        if self.hot.flags.load(Ordering::SeqCst) & HAS_ALLOWLIST == 0 {
            return true;
        }
        match &*self.cold().restrictions.load() {
            Some(r) if !r.allowed.is_empty() => ip_allowed(&r.allowed, client_ip),
            // Lifted between the two reads.
            _ => true,
        }
    }

    pub(crate) fn revoke(self, at: SystemTime) -> KeyRecord {
        let name = self.cold().lock();
        let _ = self.hot.revoked_ns.compare_exchange(
            NOT_REVOKED,
            to_nanos(at),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.snapshot(&name)
    }

    pub(crate) fn update(self, update: &StoreUpdate) -> KeyRecord {
        let mut name = self.cold().lock();
        if !self.is_revoked() {
            if let Some(new_name) = &update.name {
                *name = Name::new(new_name);
            }
            if let Some(allowed) = &update.allowed_ips {
                self.set_allowlist(allowed);
            }
            if let Some(limit) = update.rate_limit {
                self.hot
                    .rate_limit
                    .store(limit.map_or(0, RateLimit::to_word), Ordering::SeqCst);
            }
            if let Some(scopes) = &update.scopes {
                self.set_scopes(scopes);
            }
            if let Some(at) = update.expires_at {
                self.hot
                    .expires_ns
                    .fetch_min(to_nanos(at), Ordering::SeqCst);
            }
        }
        self.snapshot(&name)
    }

    fn refresh(self, record: &KeyRecord) {
        let mut name = self.cold().lock();
        if name.as_str() != record.name {
            *name = Name::new(&record.name);
        }
        self.set_allowlist(&record.allowed_ips);
        let scopes = self.cold().restrictions.load();
        if scopes.as_deref().map_or(&[][..], Restrictions::list) != record.scopes.as_slice() {
            drop(scopes);
            self.set_scopes(&record.scopes);
        }
        let limit = record.rate_limit.map_or(0, RateLimit::to_word);
        self.hot.rate_limit.store(limit, Ordering::SeqCst);
        let expires = record.expires_at.map_or(NEVER, to_nanos);
        self.hot.expires_ns.store(expires, Ordering::SeqCst);
        if let Some(at) = record.revoked_at {
            let _ = self.hot.revoked_ns.compare_exchange(
                NOT_REVOKED,
                to_nanos(at),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// With the write lock held.
    fn set_scopes(self, scopes: &[Scope]) {
        let allowed = self.current(|r| r.allowed.clone());
        self.restrict(&allowed, scopes, HAS_SCOPES, !scopes.is_empty());
    }

    /// With the write lock held.
    fn set_allowlist(self, allowed: &[IpNetwork]) {
        let scopes = self.current(|r| r.list.clone());
        self.restrict(allowed, &scopes, HAS_ALLOWLIST, !allowed.is_empty());
    }

    /// A part of the restrictions as they are (empty when there are none).
    fn current<T: Default>(self, part: impl FnOnce(&Restrictions) -> T) -> T {
        self.cold()
            .restrictions
            .load()
            .as_deref()
            .map(part)
            .unwrap_or_default()
    }

    /// Replaces the restrictions and sets or clears `flag`. Lifting a
    /// restriction clears its flag first; adding one stores it first: a
    /// check that sees the flag finds what it marks.
    fn restrict(self, allowed: &[IpNetwork], scopes: &[Scope], flag: u32, on: bool) {
        if !on {
            self.hot.flags.fetch_and(!flag, Ordering::SeqCst);
        }
        self.cold()
            .restrictions
            .store(Restrictions::shared(allowed, scopes));
        if on {
            self.hot.flags.fetch_or(flag, Ordering::SeqCst);
        }
    }

    pub(crate) fn counters(self) -> &'a Counters {
        &self.hot.counters
    }

    /// Claims the inline counters for tracker `tag`, unless another has them.
    pub(crate) fn claim_counters(self, tag: u32) -> Claim {
        let tracker = &self.hot.tracker;
        let current = tracker.load(Ordering::Relaxed);
        if current == tag {
            return Claim::Ours;
        }
        if current != 0 {
            return Claim::Theirs;
        }
        match tracker.compare_exchange(0, tag, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Claim::Won,
            Err(actual) if actual == tag => Claim::Ours,
            Err(_) => Claim::Theirs,
        }
    }

    /// Gives tracker `tag`'s claim back, with the counters cleared. Only a
    /// tracker that is going away calls this: nobody counts here meanwhile.
    pub(crate) fn release_counters(self, tag: u32) {
        if self.hot.tracker.load(Ordering::Acquire) == tag {
            self.hot.counters.reset();
            self.hot.tracker.store(0, Ordering::Release);
        }
    }
}

/// One key as a store keeps it in memory: everything in [`KeyRecord`],
/// laid out for verification, and the key's usage counters.
///
/// A verification reads the first 64 bytes — hash, revocation, expiry,
/// rate limit, environment, whether there is an allowlist — and counts the
/// request in the next 64; nothing else, unless the key has an allowlist.
/// Changes are made in place ([`revoke`](StoredKey::revoke),
/// [`update`](StoredKey::update)), so the counters stay with the key and a
/// change is seen by every verification that starts after it returns.
///
/// [`MemoryStore`](crate::MemoryStore) and the verification cache keep
/// their keys this way and hand them to verification through the sealed
/// fast path (`store::memory::fast`), so the manager counts usage in the keys
/// themselves instead of looking each one up in a map of its own.
pub struct StoredKey {
    hot: Hot,
    cold: Cold,
}

impl StoredKey {
    /// An entry holding `record`.
    pub fn new(record: KeyRecord) -> StoredKey {
        let hot = Hot::default();
        hot.fill(&record);
        let cold = Cold::new(&record, Arc::from(record.owner.as_str()));
        StoredKey { hot, cold }
    }

    pub(super) fn entry(&self) -> Entry<'_> {
        Entry {
            hot: &self.hot,
            cold: ColdAt::Here(&self.cold),
        }
    }

    /// Revokes the key at `at` unless it is revoked already, and returns the
    /// record as it now is (a second call returns the first `revoked_at`).
    pub fn revoke(&self, at: SystemTime) -> KeyRecord {
        self.entry().revoke(at)
    }

    /// Applies `update` by [`StoreUpdate`]'s rules (nothing changes on a
    /// revoked key; an expiry only ever moves earlier) and returns the
    /// record as it now is.
    pub fn update(&self, update: &StoreUpdate) -> KeyRecord {
        self.entry().update(update)
    }

    /// Makes the entry say what `record` (the same key, read again from the
    /// store behind a cache) says, except that a revocation is never undone.
    pub(crate) fn refresh(&self, record: &KeyRecord) {
        self.entry().refresh(record);
    }
}

/// The reading half of the API, the same on [`StoredKey`] and [`StoredKeyRef`].
macro_rules! reads {
    ($ty:ty) => {
        impl $ty {
            /// The record as it is now. Times are kept to the nanosecond
            /// between the years 1678 and 2262 (and clamped outside them).
            pub fn record(&self) -> KeyRecord {
                self.entry().record()
            }

            /// SHA-256 of the key.
            pub fn hash(&self) -> KeyHash {
                self.entry().hot.hash()
            }

            /// The key's id.
            pub fn id(&self) -> KeyId {
                self.entry().id()
            }

            /// The account the key belongs to.
            pub fn owner(&self) -> &str {
                self.entry().owner()
            }

            /// The key's name as it is now.
            pub fn name(&self) -> String {
                self.entry().name()
            }

            /// Live or test.
            pub fn environment(&self) -> Environment {
                self.entry().environment()
            }

            /// `tm_live_...abcd`.
            pub fn hint(&self) -> KeyHint {
                self.entry().hint()
            }

            /// Whether the key has been revoked.
            pub fn is_revoked(&self) -> bool {
                self.entry().is_revoked()
            }

            /// When the key was revoked.
            pub fn revoked_at(&self) -> Option<SystemTime> {
                self.entry().revoked_at()
            }

            /// When the key stops working.
            pub fn expires_at(&self) -> Option<SystemTime> {
                self.entry().expires_at()
            }

            /// The provider's per-key limit.
            pub fn rate_limit(&self) -> Option<RateLimit> {
                self.entry().rate_limit()
            }

            /// Whether `client_ip` may use this key (see
            /// [`KeyRecord::allows_ip`]).
            pub fn allows_ip(&self, client_ip: Option<IpAddr>) -> bool {
                self.entry().allows_ip(client_ip)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.record(), f)
            }
        }
    };
}

reads!(StoredKey);

pub(super) use reads;

impl From<KeyRecord> for StoredKey {
    fn from(record: KeyRecord) -> StoredKey {
        StoredKey::new(record)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::super::fast::StoredKeyRef;
    use super::super::slab::Slab;
    use super::*;

    #[test]
    fn edits_are_made_in_place_and_seen_through_a_shared_handle() {
        let key = crate::key::TmKey::generate(crate::key::Environment::Live);
        let stored = Arc::new(StoredKey::new(KeyRecord {
            hash: key.hash(),
            revoked_at: None,
            expires_at: None,
            allowed_ips: Vec::new(),
            rate_limit: None,
            id: crate::key::KeyId::generate(),
            environment: crate::key::Environment::Live,
            hint: key.hint(),
            owner: "acct_42".into(),
            name: "Production".into(),
            created_at: SystemTime::now(),
            scopes: Vec::new(),
        }));
        let shared = StoredKeyRef::from(Arc::clone(&stored));
        let rename = StoreUpdate {
            name: Some("Production - Main Website".into()),
            ..StoreUpdate::default()
        };
        assert_eq!(stored.update(&rename).name, "Production - Main Website");
        assert_eq!(shared.record().name, "Production - Main Website");
        let revoked = stored.revoke(SystemTime::now());
        assert!(revoked.revoked_at.is_some());
        assert_eq!(shared.id(), revoked.id);
        assert!(shared.is_revoked());
    }
    use crate::key::TmKey;

    pub(in crate::store::memory) fn record() -> KeyRecord {
        let key = TmKey::generate(Environment::Test);
        KeyRecord {
            hash: key.hash(),
            revoked_at: None,
            expires_at: Some(UNIX_EPOCH + Duration::new(4_102_444_800, 123_456_789)),
            allowed_ips: vec!["203.0.113.0/24".parse().unwrap()],
            rate_limit: Some(RateLimit::per_minute(
                std::num::NonZeroU32::new(100).unwrap(),
            )),
            id: KeyId::generate(),
            environment: Environment::Test,
            hint: key.hint(),
            owner: "acct_42".into(),
            name: "Production - Main Website".into(),
            created_at: UNIX_EPOCH + Duration::new(1_767_225_600, 987_654_321),
            scopes: crate::scope::scope_set(["emails:verify", "lists:read"]).unwrap(),
        }
    }

    #[test]
    fn what_verification_reads_is_one_aligned_block() {
        assert_eq!(std::mem::offset_of!(Hot, counters), 64);
        assert!(std::mem::size_of::<Hot>() <= 128);
        assert_eq!(std::mem::size_of::<AlignedHot>(), 128);
        assert_eq!(std::mem::align_of::<AlignedHot>(), 128);
        // Unused keys pay for this with the hot part (BENCHMARKS.md's
        // memory row): 96 bytes, 104 in the slab's list.
        assert_eq!(std::mem::size_of::<Cold>(), 96);
        let slab = Slab::new();
        for _ in 0..3 {
            slab.push(&record(), Arc::from("acct"));
        }
        for (index, entry) in slab.iter() {
            let at = entry.hot() as *const Hot as usize;
            assert_eq!(at % 128, 0, "key {index} starts a block");
        }
    }

    #[test]
    fn a_record_round_trips_exactly() {
        let original = record();
        let stored = StoredKey::new(original.clone());
        assert_eq!(stored.record(), original);
        let long = KeyRecord {
            name: "n".repeat(100),
            allowed_ips: Vec::new(),
            expires_at: None,
            rate_limit: None,
            environment: Environment::Live,
            ..original.clone()
        };
        assert_eq!(StoredKey::new(long.clone()).record(), long);
        let slab = Slab::new();
        let index = slab.push(&original, Arc::from(original.owner.as_str()));
        assert_eq!(slab.entry(index).record(), original, "the same in a slab");
        assert!(slab.get(index + 1).is_none());
    }

    #[test]
    fn times_are_exact_in_range_and_clamped_outside() {
        for at in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1, 1),
            UNIX_EPOCH - Duration::new(1, 1),
            UNIX_EPOCH + Duration::from_secs(9_000_000_000),
        ] {
            assert_eq!(from_nanos(to_nanos(at)), at, "{at:?}");
        }
        let far = UNIX_EPOCH + Duration::from_secs(20_000_000_000);
        assert_eq!(to_nanos(far), i64::MAX - 1);
        let mut r = record();
        r.expires_at = Some(far);
        assert!(
            StoredKey::new(r).expires_at().is_some(),
            "clamped, never confused with 'never expires'"
        );
    }

    #[test]
    fn verification_fields_follow_changes() {
        let stored = StoredKey::new(record());
        let entry = stored.entry();
        let inside = Some("203.0.113.5".parse().unwrap());
        let outside = Some("198.51.100.5".parse().unwrap());
        assert!(stored.allows_ip(inside) && !stored.allows_ip(outside));
        assert!(!stored.allows_ip(None), "an allowlist fails closed");
        assert_eq!(stored.environment(), Environment::Test);
        let lift = StoreUpdate {
            allowed_ips: Some(Vec::new()),
            rate_limit: Some(None),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(10)),
            ..StoreUpdate::default()
        };
        let after = stored.update(&lift);
        assert!(after.allowed_ips.is_empty() && stored.allows_ip(outside));
        assert!(stored.allows_ip(None));
        assert_eq!(stored.rate_limit(), None);
        assert!(entry.expired(UNIX_EPOCH + Duration::from_secs(10)));
        assert!(!entry.expired(UNIX_EPOCH + Duration::from_secs(9)));
        let later = StoreUpdate {
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(99)),
            ..StoreUpdate::default()
        };
        assert_eq!(
            stored.update(&later).expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(10)),
            "an expiry never moves later"
        );
    }

    #[test]
    fn scope_checks_follow_changes_and_long_sets() {
        let stored = StoredKey::new(record());
        let entry = stored.entry();
        assert!(entry.has_scope("emails:verify") && entry.has_scope("lists:read"));
        assert!(!entry.has_scope("lists") && !entry.has_scope("lists:write"));
        let set = |list: &[&str]| StoreUpdate {
            scopes: Some(crate::scope::scope_set(list).unwrap()),
            ..StoreUpdate::default()
        };
        stored.update(&set(&["lists:read"]));
        assert!(!entry.has_scope("emails:verify"), "narrowed in place");
        stored.update(&set(&[]));
        assert!(entry.has_scope("anything"), "no scopes: unrestricted");
        assert!(entry.scopes().is_none());
        // Too long to keep joined inline: checked on the list.
        let long: Vec<String> = (0..20).map(|i| format!("scope.number.{i:02}")).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let after = stored.update(&set(&long));
        assert_eq!(after.scopes.len(), 20);
        assert!(entry.has_scope("scope.number.07") && !entry.has_scope("scope.number.20"));
        assert!(!entry.has_scope("scope.number"), "whole scopes only");
        let short = StoredKey::new(KeyRecord {
            scopes: crate::scope::scope_set(["a", "ab", "abc"]).unwrap(),
            ..record()
        });
        assert!(short.entry().has_scope("ab"));
        assert!(!short.entry().has_scope("a b") && !short.entry().has_scope(""));
    }

    #[test]
    fn revocation_is_idempotent_and_freezes_the_entry() {
        let stored = StoredKey::new(record());
        let first = stored.revoke(UNIX_EPOCH + Duration::from_secs(5));
        let second = stored.revoke(UNIX_EPOCH + Duration::from_secs(6));
        assert_eq!(first.revoked_at, second.revoked_at);
        assert!(stored.is_revoked());
        let rename = StoreUpdate {
            name: Some("Renamed".into()),
            ..StoreUpdate::default()
        };
        assert_eq!(stored.update(&rename).name, "Production - Main Website");
        let mut unrevoked = stored.record();
        unrevoked.revoked_at = None;
        stored.refresh(&unrevoked);
        assert!(stored.is_revoked(), "a refresh never undoes a revocation");
    }

    #[test]
    fn a_refresh_takes_the_store_s_record() {
        let original = record();
        let stored = StoredKey::new(original.clone());
        let mut newer = original.clone();
        newer.name = "Renamed elsewhere".into();
        newer.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
        newer.expires_at = None;
        stored.refresh(&newer);
        assert_eq!(stored.record(), newer);
    }

    #[test]
    fn counters_are_claimed_once_and_released_clean() {
        let stored = StoredKey::new(record());
        let entry = stored.entry();
        assert!(matches!(entry.claim_counters(7), Claim::Won));
        assert!(matches!(entry.claim_counters(7), Claim::Ours));
        assert!(matches!(entry.claim_counters(8), Claim::Theirs));
        entry.counters().count(60_000, None, true);
        entry.release_counters(8);
        assert_eq!(entry.counters().requests(), 1, "not 8's to release");
        entry.release_counters(7);
        assert_eq!(entry.counters().requests(), 0);
        assert!(matches!(entry.claim_counters(8), Claim::Won));
    }
}
