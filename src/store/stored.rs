//! A record as an in-memory store keeps it, with room for usage counting.

use std::fmt;

use crate::record::KeyRecord;
use crate::usage::UsageLink;

/// One version of a key's record as a store keeps it in memory, behind an
/// `Arc`, with a link to the manager's usage counters beside it.
///
/// Counting a request needs that key's counters. Found through the record
/// the verification has just read, they cost one more memory access; found
/// by the key's id in the manager's own map, they cost a second lookup — at
/// a million keys, two or three more cache misses per request. A store that
/// keeps `Arc<StoredKey>`s and answers
/// [`KeyStore::find_stored_now`](crate::KeyStore::find_stored_now) gets the
/// first; any other store still works and gets the second.
///
/// The link is filled by the manager on the key's first use and is not part
/// of the record: it is neither compared nor stored anywhere. When a store
/// changes a record (an update, a revocation), it keeps the new version as
/// [`replaced`](StoredKey::replaced) so the link goes along.
///
/// A link belongs to the manager that set it. Another manager over the same
/// store (or one rebuilt by
/// [`KeyManager::with_usage`](crate::KeyManager::with_usage) after keys
/// were used) counts correctly through its own map instead, one lookup
/// slower.
///
/// ```
/// use std::time::SystemTime;
/// use tm_auth::store::StoredKey;
/// use tm_auth::{Environment, KeyId, KeyRecord, TmKey};
///
/// let key = TmKey::generate(Environment::Live);
/// let stored = StoredKey::new(KeyRecord {
///     hash: key.hash(),
///     revoked_at: None,
///     expires_at: None,
///     allowed_ips: Vec::new(),
///     rate_limit: None,
///     id: KeyId::generate(),
///     environment: Environment::Live,
///     hint: key.hint(),
///     owner: "acct_42".into(),
///     name: "Production".into(),
///     created_at: SystemTime::now(),
/// });
/// let mut record = stored.record().clone();
/// record.name = "Production - Main Website".into();
/// let renamed = stored.replaced(record);
/// assert_eq!(renamed.record().name, "Production - Main Website");
/// ```
// `repr(C)`: the link (16 bytes) sits between the `Arc` counts and the
// record, so the counts, the link and what a verification reads of the
// record stay within the allocation's first 128 bytes.
#[repr(C)]
pub struct StoredKey {
    usage: UsageLink,
    record: KeyRecord,
}

impl StoredKey {
    /// A record not used yet.
    pub fn new(record: KeyRecord) -> StoredKey {
        StoredKey {
            usage: UsageLink::default(),
            record,
        }
    }

    /// The record.
    pub fn record(&self) -> &KeyRecord {
        &self.record
    }

    /// The next version of this key: `record`, keeping the link to the
    /// key's usage counters. A record with another id is another key: it
    /// gets no link, so one key's requests can never count (or use up a
    /// rate limit) for another.
    pub fn replaced(&self, record: KeyRecord) -> StoredKey {
        let usage = if record.id == self.record.id {
            self.usage.copy()
        } else {
            UsageLink::default()
        };
        StoredKey { usage, record }
    }

    pub(crate) fn usage_link(&self) -> &UsageLink {
        &self.usage
    }
}

impl From<KeyRecord> for StoredKey {
    fn from(record: KeyRecord) -> StoredKey {
        StoredKey::new(record)
    }
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.record, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_read_within_two_cache_lines_of_the_arc_counts() {
        // 16 bytes of `Arc` counts, then the link, then the record's hash,
        // revocation, expiry, allowlist and rate limit: 128 bytes.
        assert_eq!(std::mem::offset_of!(StoredKey, record), 16);
        assert_eq!(
            16 + std::mem::offset_of!(StoredKey, record)
                + std::mem::offset_of!(KeyRecord, rate_limit)
                + 8,
            128
        );
    }
}
