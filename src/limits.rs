//! [`KeyLimits`]: how much one owner may hold, so that one account cannot
//! exhaust the store.

use std::hash::BuildHasher;

/// Active keys an owner may hold unless configured otherwise.
pub const DEFAULT_ACTIVE_KEYS_PER_OWNER: usize = 100;
/// Networks one key's allowlist may hold unless configured otherwise.
pub const DEFAULT_ALLOWED_IPS_PER_KEY: usize = 64;

/// What one owner may hold: a limit on **active** keys (neither revoked nor
/// expired) per owner, and on the networks in one key's allowlist. The
/// manager refuses a [`create`](crate::KeyManager::create) or
/// [`rotate`](crate::KeyManager::rotate) past the first with
/// [`ManagerError::TooManyKeys`](crate::ManagerError::TooManyKeys), and an
/// allowlist past the second with
/// [`ManagerError::InvalidAllowlist`](crate::ManagerError::InvalidAllowlist).
///
/// Revoked and expired keys do not count: an owner at the limit revokes a
/// key it no longer uses. A rotation with no grace period ends the old key
/// as the new one starts, so it is allowed at the limit; one with a grace
/// period holds both for a while, so it needs room for one more.
///
/// The limit is exact for creations made through one process (they are
/// serialised per owner). Servers sharing a store each check it, so
/// creations racing on N servers at the same instant may pass it by up to
/// N − 1.
///
/// ```
/// use tm_auth::{KeyLimits, KeyManager, MemoryStore};
///
/// let manager = KeyManager::builder(MemoryStore::new())
///     .limits(KeyLimits::new().active_keys_per_owner(500).allowed_ips_per_key(16))
///     .build();
/// assert_eq!(manager.limits().active_keys(), 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    active_keys: usize,
    allowed_ips: usize,
}

impl Default for KeyLimits {
    fn default() -> KeyLimits {
        KeyLimits {
            active_keys: DEFAULT_ACTIVE_KEYS_PER_OWNER,
            allowed_ips: DEFAULT_ALLOWED_IPS_PER_KEY,
        }
    }
}

impl KeyLimits {
    /// The defaults: [`DEFAULT_ACTIVE_KEYS_PER_OWNER`] (100) active keys per
    /// owner, [`DEFAULT_ALLOWED_IPS_PER_KEY`] (64) networks per allowlist.
    pub fn new() -> KeyLimits {
        KeyLimits::default()
    }

    /// At most `keys` active keys per owner (0 refuses every creation).
    pub fn active_keys_per_owner(mut self, keys: usize) -> KeyLimits {
        self.active_keys = keys;
        self
    }

    /// At most `networks` entries in one key's allowlist (0 allows no IP
    /// restrictions at all).
    pub fn allowed_ips_per_key(mut self, networks: usize) -> KeyLimits {
        self.allowed_ips = networks;
        self
    }

    /// The limit on active keys per owner.
    pub fn active_keys(&self) -> usize {
        self.active_keys
    }

    /// The limit on networks per allowlist.
    pub fn allowed_ips(&self) -> usize {
        self.allowed_ips
    }
}

/// Serialises the creations of each owner's keys within one process, so a
/// count of active keys and the insert that follows it cannot interleave
/// with another creation for the same owner. Owners share stripes: two
/// owners in one stripe wait for each other, which costs only time.
pub(crate) struct OwnerLocks {
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

const STRIPES: usize = 64;

impl OwnerLocks {
    pub(crate) fn new() -> OwnerLocks {
        OwnerLocks {
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub(crate) async fn lock(&self, owner: &str) -> tokio::sync::MutexGuard<'_, ()> {
        // Below the length, which is never zero.
        let stripe = self.hasher.hash_one(owner) % self.stripes.len() as u64;
        self.stripes[stripe as usize].lock().await
    }
}
