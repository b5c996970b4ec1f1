//! What a store keeps about a key, and the builders that create and edit it.

use std::net::IpAddr;
use std::time::SystemTime;

use ipnetwork::IpNetwork;

use crate::key::{Environment, KeyHash, KeyHint, KeyId};
use crate::rate_limit::RateLimit;
use crate::scope::Scope;

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
// touches two cache lines where it can. An id 8 bytes further on, after the
// environment and the hint, costs a third line often enough to show as 20 %
// of a verification at 1M keys (BENCHMARKS.md).
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
    /// What the key may do, sorted and without repeats; empty means
    /// unrestricted (see [`Scope`]).
    pub scopes: Vec<Scope>,
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

    /// Whether the key may do what `scope` names: always for a key with no
    /// scopes (unrestricted), otherwise only if `scope` is one of them.
    pub fn has_scope(&self, scope: &str) -> bool {
        crate::scope::grants(&self.scopes, scope)
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
/// (a live key, usable from any address, unrestricted, never expiring).
///
/// ```
/// use tm_auth::{Environment, NewKey};
///
/// let new = NewKey::new("acct_42", "Development - Local Testing")
///     .environment(Environment::Test)
///     .allowed_ips(["127.0.0.1/32".parse().unwrap()])
///     .scopes(["emails:verify", "lists:read"]);
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
    pub(crate) scopes: Vec<String>,
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
            scopes: Vec::new(),
        }
    }

    /// Restricts the key to these scopes (see [`Scope`]); without any the
    /// key is unrestricted. Checked when the key is created: each scope is
    /// 1 to 64 characters of `a-z 0-9 _ : . -`, at most 32 distinct ones
    /// ([`ManagerError::InvalidScope`](crate::ManagerError::InvalidScope)
    /// otherwise).
    pub fn scopes<I, S>(mut self, scopes: I) -> NewKey
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
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

/// An edit of a key: the name, the IP allowlist and the scopes (what a key
/// holder may change), and the provider's rate limit. The key itself can never be seen
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
    pub(crate) scopes: Option<Vec<String>>,
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

    /// Replaces the scopes, checked as [`NewKey::scopes`] checks them. An
    /// empty list lifts every restriction: the key becomes unrestricted.
    /// Narrowing takes effect on the key's next request.
    pub fn scopes<I, S>(mut self, scopes: I) -> KeyUpdate
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.allowed_ips.is_none()
            && self.rate_limit.is_none()
            && self.scopes.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!(std::mem::size_of::<KeyRecord>(), 208);
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
            scopes: Vec::new(),
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
    }
}
