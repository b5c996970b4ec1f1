//! What a store keeps about a key, and the builders that create and edit it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;

use ipnetwork::IpNetwork;

use crate::key::{Environment, KeyHash, KeyHint};
use crate::rate_limit::RateLimit;

/// The public identifier of a key: `key_` and 22 base62 characters
/// (128 random bits).
///
/// Unlike the key itself, an id is not a secret: it names the key in
/// management calls, logs and URLs.
///
/// ```
/// use tm_auth::KeyId;
///
/// let id = KeyId::generate();
/// let text = id.to_string();
/// assert!(text.starts_with("key_"));
/// assert_eq!(text.parse::<KeyId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyId {
    // Two words rather than a `u128`: alignment 8 keeps `KeyRecord` free of padding.
    lo: u64,
    hi: u64,
}

const ID_PREFIX: &str = "key_";
const ID_DIGITS: usize = 22;

impl KeyId {
    /// A fresh random id from the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails; see [`KeyId::try_generate`].
    pub fn generate() -> KeyId {
        match KeyId::try_generate() {
            Ok(id) => id,
            Err(err) => panic!("{err}"),
        }
    }

    /// A fresh random id, reporting a failure of the OS random number generator.
    pub fn try_generate() -> Result<KeyId, crate::key::RandomnessError> {
        let mut bytes = [0u8; 16];
        crate::key::fill_random(&mut bytes)?;
        Ok(KeyId::from_u128(u128::from_le_bytes(bytes)))
    }

    /// The id as a number, for stores that keep it in a binary column.
    pub const fn as_u128(&self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }

    /// Rebuilds an id from [`as_u128`](KeyId::as_u128).
    pub const fn from_u128(value: u128) -> KeyId {
        KeyId {
            lo: value as u64,
            hi: (value >> 64) as u64,
        }
    }
}

impl std::hash::Hash for KeyId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(self.as_u128());
    }
}

impl PartialOrd for KeyId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_u128().cmp(&other.as_u128())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [b'0'; ID_DIGITS];
        let mut buf = [0u8; ID_DIGITS];
        let len = base62::encode_bytes(self.as_u128(), &mut buf)
            .unwrap_or(0)
            .min(ID_DIGITS);
        digits[ID_DIGITS - len..].copy_from_slice(&buf[..len]);
        f.write_str(ID_PREFIX)?;
        f.write_str(std::str::from_utf8(&digits).unwrap_or("?"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string is not a key id (`key_` and 22 base62 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key id is key_ followed by 22 characters 0-9, A-Z, a-z")]
pub struct InvalidKeyId;

impl FromStr for KeyId {
    type Err = InvalidKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix(ID_PREFIX).ok_or(InvalidKeyId)?;
        if digits.len() != ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(InvalidKeyId);
        }
        base62::decode(digits)
            .map(KeyId::from_u128)
            .map_err(|_| InvalidKeyId)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes values that are uniform already — a key's SHA-256 prefix, a
/// random [`KeyId`] — by passing their bits through, so maps keyed by them
/// pay no SipHash. Never use it for keys an attacker chooses: only keys this
/// crate generated are ever inserted into such maps.
#[derive(Default)]
pub(crate) struct UniformHasher(u64);

impl std::hash::Hasher for UniformHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only the integer writes below are used; fold anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write_u128(&mut self, value: u128) {
        // Truncation keeps the low 64 of 128 random bits.
        self.0 = value as u64;
    }
}

/// Where a key stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum KeyStatus {
    /// Accepted (subject to its IP restrictions).
    Active,
    /// Past its expiry, for example after a rotation's grace period.
    Expired,
    /// Revoked: refused forever.
    Revoked,
}

/// Everything stored about a key. The key itself is not here: only its
/// [`hash`](KeyRecord::hash) and [`hint`](KeyRecord::hint).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tm_auth::{KeyManager, KeyStatus, MemoryStore, NewKey};
///
/// let manager = KeyManager::new(MemoryStore::new());
/// let created = manager.create(NewKey::new("acct_42", "Zapier Integration")).await.unwrap();
/// let record = manager.get(&created.record.id).await.unwrap();
/// assert_eq!(record.hint, created.key.hint());
/// assert_eq!(record.status(), KeyStatus::Active);
/// assert!(record.allows_ip(None), "no allowlist: any address, even an unknown one");
/// # }
/// ```
// `repr(C)` keeps the fields every verification reads — hash, revocation,
// expiry, allowlist, rate limit, id (for usage counting) — together at the
// front, next to the `Arc` counts: 128 bytes, so a lookup in a large store
// touches two cache lines where it can. The id used to sit after the
// environment and the hint, 8 bytes further: that cost a third line often
// enough to show as 20 % of a verification at 1M keys (BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct KeyRecord {
    /// SHA-256 of the key, the lookup column.
    pub hash: KeyHash,
    /// When the key was revoked; once set, never cleared.
    pub revoked_at: Option<SystemTime>,
    /// When the key stops working, if ever (`now >= expires_at` is expired).
    pub expires_at: Option<SystemTime>,
    /// Networks the key may be used from; empty means anywhere.
    pub allowed_ips: Vec<IpNetwork>,
    /// The provider's per-key limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// The key's public identifier.
    pub id: KeyId,
    /// Live or test.
    pub environment: Environment,
    /// `tm_live_...abcd`, for lists.
    pub hint: KeyHint,
    /// The account the key belongs to.
    pub owner: String,
    /// The holder's description, e.g. "Production - Main Website".
    pub name: String,
    /// When the key was created.
    pub created_at: SystemTime,
}

impl KeyRecord {
    /// The status now, by the system clock.
    pub fn status(&self) -> KeyStatus {
        self.status_at(SystemTime::now())
    }

    /// The status at `now`. Revocation wins over expiry.
    pub fn status_at(&self, now: SystemTime) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|at| now >= at) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// Whether `client_ip` may use this key. An empty allowlist admits any
    /// address, even an unknown one; a non-empty one admits only a known
    /// address inside one of its networks.
    pub fn allows_ip(&self, client_ip: Option<IpAddr>) -> bool {
        crate::net::ip_allowed(&self.allowed_ips, client_ip)
    }
}

/// Longest name or owner, in characters.
pub const MAX_TEXT_LEN: usize = 100;

/// Why a name or owner was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// Empty, or only whitespace.
    #[error("it is empty; give it a descriptive value such as \"Production - Main Website\"")]
    Empty,
    /// Longer than [`MAX_TEXT_LEN`] characters.
    #[error("it has {actual} characters; at most {max} are allowed")]
    TooLong {
        /// The limit.
        max: usize,
        /// What was given, after trimming.
        actual: usize,
    },
    /// A control character or a bidirectional override, which could hide or
    /// reorder text in a dashboard.
    #[error("character {position} is a control character or a bidirectional override, which is not allowed")]
    ForbiddenCharacter {
        /// Index (in characters, after trimming) of the first such character.
        position: usize,
    },
}

fn is_bidi_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Trims a key name and checks it: non-empty, at most 100 characters, no
/// control characters, no bidirectional overrides.
pub(crate) fn validate_name(name: &str) -> Result<String, TextError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(TextError::Empty);
    }
    check_text(name, |c| c.is_control() || is_bidi_override(c))?;
    Ok(name.to_owned())
}

/// Checks an owner id as given (not trimmed: it is an identifier, and
/// `" acct"` silently becoming `"acct"` would merge two accounts).
pub(crate) fn validate_owner(owner: &str) -> Result<(), TextError> {
    if owner.is_empty() {
        return Err(TextError::Empty);
    }
    check_text(owner, char::is_control)
}

fn check_text(text: &str, forbidden: impl Fn(char) -> bool) -> Result<(), TextError> {
    let actual = text.chars().count();
    if actual > MAX_TEXT_LEN {
        return Err(TextError::TooLong {
            max: MAX_TEXT_LEN,
            actual,
        });
    }
    match text.chars().position(forbidden) {
        Some(position) => Err(TextError::ForbiddenCharacter { position }),
        None => Ok(()),
    }
}

/// What to create: owner and name are required, the rest has defaults
/// (a live key, usable from any address, never expiring).
///
/// ```
/// use tm_auth::{Environment, NewKey};
///
/// let new = NewKey::new("acct_42", "Development - Local Testing")
///     .environment(Environment::Test)
///     .allowed_ips(["127.0.0.1/32".parse().unwrap()]);
/// # let _ = new;
/// ```
#[derive(Debug, Clone)]
pub struct NewKey {
    pub(crate) owner: String,
    pub(crate) name: String,
    pub(crate) environment: Environment,
    pub(crate) allowed_ips: Vec<IpNetwork>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) rate_limit: Option<RateLimit>,
}

impl NewKey {
    /// A live key named `name` for account `owner`.
    pub fn new(owner: impl Into<String>, name: impl Into<String>) -> NewKey {
        NewKey {
            owner: owner.into(),
            name: name.into(),
            environment: Environment::Live,
            allowed_ips: Vec::new(),
            expires_at: None,
            rate_limit: None,
        }
    }

    /// Limits the key's requests (a provider's setting; see [`RateLimit`]).
    pub fn rate_limit(mut self, limit: RateLimit) -> NewKey {
        self.rate_limit = Some(limit);
        self
    }

    /// Live (the default) or test.
    pub fn environment(mut self, environment: Environment) -> NewKey {
        self.environment = environment;
        self
    }

    /// Restricts the key to these networks (a single address is a /32 or /128).
    pub fn allowed_ips(mut self, networks: impl IntoIterator<Item = IpNetwork>) -> NewKey {
        self.allowed_ips = networks.into_iter().collect();
        self
    }

    /// Makes the key stop working at `at`.
    pub fn expires_at(mut self, at: SystemTime) -> NewKey {
        self.expires_at = Some(at);
        self
    }
}

/// An edit of a key: the name and/or the IP allowlist (what a key holder may
/// change), and the provider's rate limit. The key itself can never be seen
/// or changed after creation. A management surface for key holders must
/// not pass their input to [`rate_limit`](KeyUpdate::rate_limit).
///
/// ```
/// use tm_auth::KeyUpdate;
///
/// let edit = KeyUpdate::new()
///     .name("Development - CI")
///     .allowed_ips(["203.0.113.0/24".parse().unwrap()]);
/// # let _ = edit;
/// ```
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    pub(crate) name: Option<String>,
    pub(crate) allowed_ips: Option<Vec<IpNetwork>>,
    pub(crate) rate_limit: Option<Option<RateLimit>>,
}

impl KeyUpdate {
    /// An edit that changes nothing yet.
    pub fn new() -> KeyUpdate {
        KeyUpdate::default()
    }

    /// Renames the key.
    pub fn name(mut self, name: impl Into<String>) -> KeyUpdate {
        self.name = Some(name.into());
        self
    }

    /// Replaces the allowlist; an empty list lifts the restriction.
    pub fn allowed_ips(mut self, networks: impl IntoIterator<Item = IpNetwork>) -> KeyUpdate {
        self.allowed_ips = Some(networks.into_iter().collect());
        self
    }

    /// Sets (`Some`) or removes (`None`) the key's rate limit: the
    /// provider's setting, not the key holder's.
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> KeyUpdate {
        self.rate_limit = Some(limit);
        self
    }

    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.allowed_ips.is_none() && self.rate_limit.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_round_trip_and_are_fixed_width() {
        for id in [
            KeyId::from_u128(0),
            KeyId::from_u128(1),
            KeyId::from_u128(u128::MAX),
            KeyId::generate(),
        ] {
            let text = id.to_string();
            assert_eq!(text.len(), 4 + ID_DIGITS, "{text}");
            assert_eq!(text.parse::<KeyId>(), Ok(id));
            assert_eq!(format!("{id:?}"), text);
        }
        assert_ne!(KeyId::generate(), KeyId::generate());
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in [
            "",
            "key_",
            "kei_0000000000000000000001",
            "key_000000000000000000001",
            "key_00000000000000000000-1",
            "key_zzzzzzzzzzzzzzzzzzzzzz", // more than 128 bits
        ] {
            assert_eq!(bad.parse::<KeyId>(), Err(InvalidKeyId), "{bad}");
        }
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(
            validate_name("  Zapier Integration \t").unwrap(),
            "Zapier Integration"
        );
        assert_eq!(validate_name(" \t "), Err(TextError::Empty));
        assert_eq!(validate_name(&"n".repeat(100)).unwrap().len(), 100);
        assert_eq!(
            validate_name(&"é".repeat(101)),
            Err(TextError::TooLong {
                max: 100,
                actual: 101
            })
        );
        assert_eq!(
            validate_name("a\u{7}b"),
            Err(TextError::ForbiddenCharacter { position: 1 })
        );
        assert_eq!(
            validate_name("evil\u{202E}txt.exe"),
            Err(TextError::ForbiddenCharacter { position: 4 })
        );
        assert_eq!(
            validate_name("x\u{2068}"),
            Err(TextError::ForbiddenCharacter { position: 1 })
        );
        assert_eq!(
            validate_name("Production – Main Website 🚀").unwrap(),
            "Production – Main Website 🚀"
        );
    }

    #[test]
    fn owners_are_checked() {
        assert_eq!(validate_owner(""), Err(TextError::Empty));
        assert!(validate_owner("acct_42").is_ok());
        assert!(matches!(
            validate_owner(&"a".repeat(101)),
            Err(TextError::TooLong { .. })
        ));
        assert!(matches!(
            validate_owner("a\nb"),
            Err(TextError::ForbiddenCharacter { .. })
        ));
    }

    #[test]
    fn hot_fields_fit_two_cache_lines_with_the_arc_counts() {
        // 16 bytes of `Arc` counts, then everything a verification without
        // an environment check reads (up to the rate limit), in 128 bytes.
        assert_eq!(std::mem::size_of::<KeyRecord>(), 184);
        assert_eq!(std::mem::offset_of!(KeyRecord, rate_limit), 88);
        assert_eq!(std::mem::offset_of!(KeyRecord, id), 96);
        assert_eq!(std::mem::offset_of!(KeyRecord, environment), 112);
    }

    #[test]
    fn status_order_and_expiry_boundary() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let mut record = KeyRecord {
            id: KeyId::from_u128(1),
            owner: "o".into(),
            name: "n".into(),
            environment: Environment::Live,
            hint: "tm_live_...abcd".parse().unwrap(),
            hash: KeyHash::from_bytes([0; 32]),
            allowed_ips: vec![],
            created_at: now,
            expires_at: Some(now),
            revoked_at: None,
            rate_limit: None,
        };
        assert_eq!(
            record.status_at(now),
            KeyStatus::Expired,
            "now >= expires_at is expired"
        );
        assert_eq!(
            record.status_at(now - std::time::Duration::from_millis(1)),
            KeyStatus::Active
        );
        record.revoked_at = Some(now);
        assert_eq!(record.status_at(now), KeyStatus::Revoked);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_text_forms() {
        let id = KeyId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<KeyId>("\"key_nope\"").is_err());
        let hint: KeyHint = "tm_test_...ab12".parse().unwrap();
        let json = serde_json::to_string(&hint).unwrap();
        assert_eq!(json, "\"tm_test_...ab12\"");
        assert_eq!(serde_json::from_str::<KeyHint>(&json).unwrap(), hint);
        assert_eq!(
            serde_json::to_string(&Environment::Live).unwrap(),
            "\"live\""
        );
        assert_eq!(
            serde_json::to_string(&KeyStatus::Revoked).unwrap(),
            "\"revoked\""
        );
    }

    proptest! {
        #[test]
        fn name_validation_never_panics(name in any::<String>()) {
            if let Ok(valid) = validate_name(&name) {
                prop_assert!(!valid.is_empty());
                prop_assert!(valid.chars().count() <= MAX_TEXT_LEN);
                prop_assert!(!valid.chars().any(|c| c.is_control()));
            }
        }

        #[test]
        fn key_id_parse_never_panics(text in "key_[0-9A-Za-z]{0,24}|.{0,30}") {
            if let Ok(id) = text.parse::<KeyId>() {
                prop_assert_eq!(id.to_string(), text);
            }
        }
    }
}
