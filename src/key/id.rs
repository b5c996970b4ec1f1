//! [`KeyId`]: the public, non-secret name of a key; and the hasher for
//! maps keyed by values that are uniform already.

use std::fmt;
use std::str::FromStr;

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

    proptest! {
        #[test]
        fn key_id_parse_never_panics(text in "key_[0-9A-Za-z]{0,24}|.{0,30}") {
            if let Ok(id) = text.parse::<KeyId>() {
                prop_assert_eq!(id.to_string(), text);
            }
        }
    }
}
