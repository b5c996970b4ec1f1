//! API keys: generation, parsing, checksum, hashing and the hint a list shows.
//!
//! A key is `tm_live_` or `tm_test_` followed by 32 base62 characters: 26
//! random ones (about 155 bits from the OS CSPRNG) and a 6-character CRC-32
//! checksum of everything before it. The checksum lets a typo be rejected
//! before any store is asked, and lets a scanner recognise a leaked key with
//! almost no false positives.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

mod id;

pub(crate) use id::UniformHasher;
pub use id::{InvalidKeyId, KeyId};

/// Length of every key, in bytes (all ASCII).
pub const KEY_LEN: usize = 40;
/// Length of the `tm_live_`/`tm_test_` prefix.
const PREFIX_LEN: usize = 8;
/// Random characters after the prefix.
const RANDOM_LEN: usize = 26;
/// Checksum characters at the end.
const CHECKSUM_LEN: usize = 6;
/// The bytes the checksum covers: prefix and random part.
const CHECKSUMMED_LEN: usize = PREFIX_LEN + RANDOM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Which kind of key: production (`tm_live_`) or development (`tm_test_`).
///
/// Keeping them apart means a test key pasted into production is refused
/// when the deployment asks for live keys only, and a handler can tell which
/// kind called it (Stripe's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Environment {
    /// Production keys, `tm_live_…`.
    Live,
    /// Development and testing keys, `tm_test_…`.
    Test,
}

impl Environment {
    /// Both environments, live first.
    pub const ALL: [Environment; 2] = [Environment::Live, Environment::Test];

    /// The key prefix for this environment, `"tm_live_"` or `"tm_test_"`.
    pub const fn prefix(self) -> &'static str {
        match self {
            Environment::Live => "tm_live_",
            Environment::Test => "tm_test_",
        }
    }

    /// `"live"` or `"test"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    /// The environment whose prefix `bytes` starts with.
    pub(crate) fn from_prefix(bytes: &[u8]) -> Option<Environment> {
        match bytes.get(..PREFIX_LEN)? {
            b"tm_live_" => Some(Environment::Live),
            b"tm_test_" => Some(Environment::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Environment {
    type Err = UnknownEnvironment;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(Environment::Live),
            "test" => Ok(Environment::Test),
            _ => Err(UnknownEnvironment),
        }
    }
}

/// A string that is neither `"live"` nor `"test"` was parsed as an [`Environment`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown environment: expected \"live\" or \"test\"")]
pub struct UnknownEnvironment;

/// Why a string is not a well-formed key.
///
/// Checks run in the order of the variants; the first failure is reported.
/// No variant carries any part of the rejected string, so an error can be
/// logged or returned to a client without leaking what was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFormatError {
    /// The string does not start with `tm_live_` or `tm_test_`.
    #[error("an API key starts with tm_live_ or tm_test_")]
    UnknownPrefix,
    /// The string is not 40 bytes long.
    #[error("an API key is {expected} characters long, this one has {actual}; was part of it lost when it was copied?")]
    Length {
        /// Always 40.
        expected: usize,
        /// The length in bytes of what was given.
        actual: usize,
    },
    /// A byte after the prefix is not one of `0-9`, `A-Z`, `a-z`.
    #[error("an API key has only the characters 0-9, A-Z and a-z after its prefix; position {position} holds another")]
    InvalidCharacter {
        /// Byte offset of the first offending byte (8 to 39).
        position: usize,
    },
    /// The last six characters do not match the checksum of the rest.
    #[error("the API key's checksum does not match: a character was changed or lost when the key was copied")]
    Checksum,
}

/// The operating system's random number generator failed.
///
/// On the platforms Rust supports this practically never happens; when it
/// does, no key is produced rather than a weak one.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessError(getrandom::Error);

/// Fills `out` with bytes from the OS CSPRNG.
pub(crate) fn fill_random(out: &mut [u8]) -> Result<(), RandomnessError> {
    getrandom::fill(out).map_err(RandomnessError)
}

/// Fills `out` with uniformly random base62 characters from the OS CSPRNG.
///
/// Rejection sampling on 6-bit values keeps every character equally likely
/// (a plain `% 62` would favour the first two).
pub(crate) fn fill_base62(out: &mut [u8]) -> Result<(), RandomnessError> {
    let mut pool = [0u8; 64];
    let mut filled = 0;
    while filled < out.len() {
        fill_random(&mut pool)?;
        for byte in pool {
            let value = usize::from(byte & 0x3f);
            if value < ALPHABET.len() {
                out[filled] = ALPHABET[value];
                filled += 1;
                if filled == out.len() {
                    break;
                }
            }
        }
    }
    pool.zeroize();
    Ok(())
}

fn checksum_chars(checksummed: &[u8]) -> [u8; CHECKSUM_LEN] {
    let crc = crc32fast::hash(checksummed);
    let mut digits = [0u8; 22];
    // A u32 has at most 6 base62 digits, so the buffer always suffices.
    let len = base62::encode_bytes(crc, &mut digits).unwrap_or(0);
    let mut out = [b'0'; CHECKSUM_LEN];
    let len = len.min(CHECKSUM_LEN);
    out[CHECKSUM_LEN - len..].copy_from_slice(&digits[..len]);
    out
}

/// Checks `secret` as a key — prefix, length, characters, checksum, in that
/// order — and returns its bytes.
fn check_format(input: &[u8]) -> Result<&[u8; KEY_LEN], KeyFormatError> {
    Environment::from_prefix(input).ok_or(KeyFormatError::UnknownPrefix)?;
    let bytes: &[u8; KEY_LEN] = input.try_into().map_err(|_| KeyFormatError::Length {
        expected: KEY_LEN,
        actual: input.len(),
    })?;
    let body = &bytes[PREFIX_LEN..];
    // Every byte at once first, with no branch per byte: nearly every key
    // checked is well formed. Then, if not, where.
    if body.iter().fold(false, |bad, &b| bad | !is_base62(b)) {
        let offset = body.iter().position(|&b| !is_base62(b)).unwrap_or(0);
        return Err(KeyFormatError::InvalidCharacter {
            position: PREFIX_LEN + offset,
        });
    }
    let sent = checksum_value(&bytes[CHECKSUMMED_LEN..]).ok_or(KeyFormatError::Checksum)?;
    let expected = crc32fast::hash(&bytes[..CHECKSUMMED_LEN]);
    if !bool::from(sent.ct_eq(&expected)) {
        return Err(KeyFormatError::Checksum);
    }
    Ok(bytes)
}

/// `[0-9A-Za-z]`, without a branch.
fn is_base62(b: u8) -> bool {
    // `| 0x20` folds A-Z onto a-z; nothing else lands in a-z.
    (b.wrapping_sub(b'0') < 10) | ((b | 0x20).wrapping_sub(b'a') < 26)
}

/// The checksum field as a number: base62 digits in the standard alphabet
/// (`0-9A-Za-z`, what `base62::encode` writes), or `None` if it is not one
/// or does not fit in 32 bits.
fn checksum_value(digits: &[u8]) -> Option<u32> {
    let mut value = 0u64;
    for &c in digits {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => return None,
        };
        value = value * 62 + u64::from(digit);
    }
    u32::try_from(value).ok()
}

/// An API key: the secret a key holder sends as `Authorization: Bearer …`.
///
/// A `TmKey` is shown once, when it is created; stores keep only its
/// [`KeyHash`]. The type is built so the secret cannot leak by accident:
///
/// - `Debug` and `Display` print the [`hint`](TmKey::hint) only;
/// - `==` compares in constant time;
/// - the memory is zeroed when the key is dropped;
/// - [`expose_secret`](TmKey::expose_secret) is the only way to read it.
///
/// Not covered: copies of the bytes a move may leave on the stack (Rust
/// moves are plain copies), the string a key was parsed from (it belongs
/// to the caller, e.g. a request header), and anything your code does with
/// the text `expose_secret` returns.
///
/// ```
/// use tm_auth::{Environment, TmKey};
///
/// let key = TmKey::generate(Environment::Live);
/// assert!(key.expose_secret().starts_with("tm_live_"));
/// assert!(!format!("{key:?}").contains(&key.expose_secret()[8..]));
///
/// // A key typed or pasted with one character changed is caught by the checksum.
/// let parsed = TmKey::parse(key.expose_secret()).unwrap();
/// assert!(parsed == key);
/// assert!(TmKey::parse("tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6").is_err());
/// ```
pub struct TmKey {
    bytes: [u8; KEY_LEN],
}

impl TmKey {
    /// Generates a new key for `environment` from the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails, which on
    /// supported platforms does not happen in practice. Use
    /// [`try_generate`](TmKey::try_generate) to handle that case instead.
    pub fn generate(environment: Environment) -> TmKey {
        match TmKey::try_generate(environment) {
            Ok(key) => key,
            Err(err) => panic!("{err}"),
        }
    }

    /// Generates a new key, reporting a failure of the OS random number generator.
    pub fn try_generate(environment: Environment) -> Result<TmKey, RandomnessError> {
        let mut bytes = [0u8; KEY_LEN];
        bytes[..PREFIX_LEN].copy_from_slice(environment.prefix().as_bytes());
        if let Err(err) = fill_base62(&mut bytes[PREFIX_LEN..CHECKSUMMED_LEN]) {
            bytes.zeroize();
            return Err(err);
        }
        let checksum = checksum_chars(&bytes[..CHECKSUMMED_LEN]);
        bytes[CHECKSUMMED_LEN..].copy_from_slice(&checksum);
        Ok(TmKey { bytes })
    }

    /// Parses a key, checking prefix, length, characters and checksum in that
    /// order. Allocates nothing; the error never contains the input.
    pub fn parse(secret: &str) -> Result<TmKey, KeyFormatError> {
        Ok(TmKey {
            bytes: *check_format(secret.as_bytes())?,
        })
    }

    /// The hash of `secret` if it is a well-formed key, as
    /// `TmKey::parse(secret)?.hash()` would give, without copying the
    /// secret into a `TmKey` first: verification needs nothing else of it.
    pub(crate) fn hash_of(secret: &str) -> Result<KeyHash, KeyFormatError> {
        TmKey::hash_of_bytes(secret.as_bytes())
    }

    /// [`hash_of`](TmKey::hash_of) for bytes that may not be text at all.
    pub(crate) fn hash_of_bytes(secret: &[u8]) -> Result<KeyHash, KeyFormatError> {
        Ok(KeyHash(Sha256::digest(check_format(secret)?).into()))
    }

    /// The whole key, for the one moment it is shown or sent.
    ///
    /// Everything else about a key (its hash, hint and environment) is
    /// available without reading the secret.
    pub fn expose_secret(&self) -> &str {
        // Every constructor writes ASCII only; fall back to "" rather than panic.
        std::str::from_utf8(&self.bytes).unwrap_or("")
    }

    /// Production or development.
    pub fn environment(&self) -> Environment {
        Environment::from_prefix(&self.bytes).unwrap_or(Environment::Live)
    }

    /// SHA-256 of the whole 40-character key: what stores keep and look up.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.bytes).into())
    }

    /// What a key list shows so a person can tell keys apart:
    /// `tm_live_...` and the last four characters (checksum characters, so
    /// no random character is revealed).
    pub fn hint(&self) -> KeyHint {
        let mut last = [0u8; 4];
        last.copy_from_slice(&self.bytes[KEY_LEN - 4..]);
        KeyHint {
            environment: self.environment(),
            last,
        }
    }
}

impl TmKey {
    /// Overwrites the key's bytes with zeros (volatile writes, which the
    /// compiler may not elide).
    fn wipe(&mut self) {
        self.bytes.zeroize();
        #[cfg(test)]
        tests::WIPES.with(|wipes| wipes.set(wipes.get() + 1));
    }
}

// Reading a key's memory after its drop would take `unsafe`, which this
// crate forbids; the tests check instead that `wipe` zeroes every byte and
// that dropping a key runs it. What is not guaranteed: copies the compiler
// made when the key was moved (zeroize's documented limit) — keep a key in
// one place, e.g. behind a `Box` or an `Arc`, if that matters to you.
impl Drop for TmKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Clone for TmKey {
    fn clone(&self) -> Self {
        TmKey { bytes: self.bytes }
    }
}

impl PartialEq for TmKey {
    fn eq(&self, other: &Self) -> bool {
        words_equal(&self.bytes, &other.bytes)
    }
}

impl Eq for TmKey {}

impl ConstantTimeEq for TmKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.bytes.ct_eq(&other.bytes)
    }
}

/// Equality in constant time, eight bytes at a time: the differences are
/// OR-ed together with no branch on the data, and only the final word is
/// compared (by `subtle`). About 8 ns for 32 bytes where a byte-wise
/// `ct_eq` takes about 50.
fn words_equal<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut diff = 0u64;
    for (x, y) in a_words.remainder().iter().zip(b_words.remainder()) {
        diff |= u64::from(x ^ y);
    }
    for (x, y) in a_words.zip(b_words) {
        diff |= word(x) ^ word(y);
    }
    diff.ct_eq(&0).into()
}

impl fmt::Debug for TmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TmKey").field(&self.hint()).finish()
    }
}

/// Prints the hint, never the secret.
impl fmt::Display for TmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.hint(), f)
    }
}

impl FromStr for TmKey {
    type Err = KeyFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TmKey::parse(s)
    }
}

/// SHA-256 of a key: what a store keeps instead of the key.
///
/// Equality is constant-time. Printing a hash is harmless (the key behind it
/// has 155 random bits), so `Debug` shows it in hex.
#[derive(Clone, Copy, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Wraps 32 bytes read back from storage.
    pub const fn from_bytes(bytes: [u8; 32]) -> KeyHash {
        KeyHash(bytes)
    }

    /// The 32 bytes of the digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash as four native-endian words, for a store that keeps it in
    /// atomics.
    pub(crate) fn words(&self) -> [u64; 4] {
        std::array::from_fn(|i| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(word)
        })
    }

    /// The hash [`words`](KeyHash::words) gave.
    pub(crate) fn from_words(words: [u64; 4]) -> KeyHash {
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        KeyHash(bytes)
    }

    /// Whether these are this hash's words, in constant time like `==`.
    pub(crate) fn has_words(&self, words: [u64; 4]) -> bool {
        let diff = self
            .words()
            .iter()
            .zip(words)
            .fold(0u64, |diff, (a, b)| diff | (a ^ b));
        diff.ct_eq(&0).into()
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(hex: &str) -> Option<KeyHash> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            *byte = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(KeyHash(out))
    }
}

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        words_equal(&self.0, &other.0)
    }
}

// Equality is byte equality (in constant time), so hashing the bytes agrees with it.
impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.to_hex())
    }
}

/// What a key list shows of a key: `tm_live_...` plus its last four
/// characters, e.g. `tm_live_...x7Qa`.
///
/// Compares equal to its text form, so `hint == "tm_live_...x7Qa"` works.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHint {
    environment: Environment,
    last: [u8; 4],
}

impl KeyHint {
    /// The environment the hinted key belongs to.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The hint of a key of `environment` ending in `last`.
    pub(crate) fn from_parts(environment: Environment, last: [u8; 4]) -> KeyHint {
        KeyHint { environment, last }
    }

    /// The last four characters, as bytes.
    pub(crate) fn last_bytes(&self) -> [u8; 4] {
        self.last
    }

    fn last_str(&self) -> &str {
        std::str::from_utf8(&self.last).unwrap_or("????")
    }
}

impl fmt::Display for KeyHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}...{}", self.environment.prefix(), self.last_str())
    }
}

impl fmt::Debug for KeyHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl PartialEq<str> for KeyHint {
    fn eq(&self, other: &str) -> bool {
        other.parse::<KeyHint>().is_ok_and(|h| h == *self)
    }
}

impl PartialEq<&str> for KeyHint {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl PartialEq<String> for KeyHint {
    fn eq(&self, other: &String) -> bool {
        *self == *other.as_str()
    }
}

impl PartialEq<KeyHint> for String {
    fn eq(&self, other: &KeyHint) -> bool {
        other == self
    }
}

/// A string is not a key hint of the form `tm_live_...abcd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key hint looks like tm_live_...abcd (prefix, three dots, four base62 characters)")]
pub struct InvalidHint;

impl FromStr for KeyHint {
    type Err = InvalidHint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let environment = Environment::from_prefix(bytes).ok_or(InvalidHint)?;
        let rest = &bytes[PREFIX_LEN..];
        match rest {
            [b'.', b'.', b'.', last @ ..]
                if last.len() == 4 && last.iter().all(u8::is_ascii_alphanumeric) =>
            {
                let mut out = [0u8; 4];
                out.copy_from_slice(last);
                Ok(KeyHint {
                    environment,
                    last: out,
                })
            }
            _ => Err(InvalidHint),
        }
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::KeyHint;
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

    impl Serialize for KeyHint {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_str(self)
        }
    }

    impl<'de> Deserialize<'de> for KeyHint {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            text.parse().map_err(de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    thread_local! {
        /// How many times `wipe` ran on this thread.
        pub(super) static WIPES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn wipe_zeroes_every_byte() {
        let mut key = TmKey::generate(Environment::Live);
        assert!(key.bytes.iter().any(|&b| b != 0));
        key.wipe();
        assert_eq!(key.bytes, [0u8; KEY_LEN]);
    }

    #[test]
    fn dropping_a_key_wipes_it_and_clones_wipe_their_own() {
        let before = WIPES.with(std::cell::Cell::get);
        let key = TmKey::generate(Environment::Test);
        let copy = key.clone();
        drop(key);
        assert_eq!(WIPES.with(std::cell::Cell::get), before + 1);
        drop(copy);
        assert_eq!(WIPES.with(std::cell::Cell::get), before + 2);
    }

    const VECTOR_LIVE: &str = "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m30ODsrG";
    const VECTOR_TEST: &str = "tm_test_a1b2c3d4e5f6g7h8i9j0k1l2m31xvO0l";

    #[test]
    fn known_answers() {
        let key = TmKey::parse(VECTOR_LIVE).unwrap();
        assert_eq!(
            key.hash().to_hex(),
            "553925bcf5fbc9710dce2b03191987f76929cc7178414ad70f991f7fe3547c45"
        );
        assert_eq!(
            TmKey::parse(VECTOR_TEST).unwrap().environment(),
            Environment::Test
        );
        // The checksum is computed the way the vectors say, zero padding included.
        assert_eq!(&checksum_chars(&VECTOR_LIVE.as_bytes()[..34]), b"0ODsrG");
        // The seed's illustration has the right shape but no valid checksum.
        assert_eq!(
            TmKey::parse("tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"),
            Err(KeyFormatError::Checksum)
        );
    }

    #[test]
    fn swapped_environment_fails_the_checksum() {
        let swapped = VECTOR_LIVE.replace("tm_live_", "tm_test_");
        assert!(matches!(
            TmKey::parse(&swapped),
            Err(KeyFormatError::Checksum)
        ));
    }

    #[test]
    fn errors_are_checked_in_order() {
        // Bad prefix wins over everything else.
        assert_eq!(
            TmKey::parse("xx_live_!").unwrap_err(),
            KeyFormatError::UnknownPrefix
        );
        assert_eq!(TmKey::parse("").unwrap_err(), KeyFormatError::UnknownPrefix);
        assert_eq!(
            TmKey::parse("TM_LIVE_").unwrap_err(),
            KeyFormatError::UnknownPrefix
        );
        // Then length, even with bad characters.
        assert_eq!(
            TmKey::parse("tm_live_!!").unwrap_err(),
            KeyFormatError::Length {
                expected: 40,
                actual: 10
            }
        );
        // Length is in bytes: 32 multi-byte characters are too long.
        let wide = format!("tm_live_{}", "é".repeat(32));
        assert!(matches!(
            TmKey::parse(&wide),
            Err(KeyFormatError::Length { actual: 72, .. })
        ));
        // Then characters, even when the checksum would also fail.
        let mut bad = VECTOR_LIVE.to_owned();
        bad.replace_range(12..13, "_");
        assert_eq!(
            TmKey::parse(&bad).unwrap_err(),
            KeyFormatError::InvalidCharacter { position: 12 }
        );
        let multibyte = format!("tm_live_{}é", &VECTOR_LIVE[8..38]);
        assert_eq!(
            TmKey::parse(&multibyte).unwrap_err(),
            KeyFormatError::InvalidCharacter { position: 38 }
        );
    }

    #[test]
    fn checksum_field_that_is_not_a_u32_is_a_checksum_error() {
        // "zzzzzz" is 62^6 - 1, more than u32::MAX.
        let key = format!("{}zzzzzz", &VECTOR_LIVE[..34]);
        assert_eq!(TmKey::parse(&key).unwrap_err(), KeyFormatError::Checksum);
    }

    #[test]
    fn every_single_character_change_is_caught() {
        for env in [Environment::Live, Environment::Test] {
            let key = TmKey::generate(env);
            let secret = key.expose_secret().as_bytes().to_vec();
            for position in 8..KEY_LEN {
                for &replacement in ALPHABET {
                    if replacement == secret[position] {
                        continue;
                    }
                    let mut changed = secret.clone();
                    changed[position] = replacement;
                    let changed = String::from_utf8(changed).unwrap();
                    assert_eq!(
                        TmKey::parse(&changed).unwrap_err(),
                        KeyFormatError::Checksum,
                        "position {position}"
                    );
                }
            }
        }
    }

    #[test]
    fn word_equality_matches_byte_equality() {
        let a = TmKey::generate(Environment::Live).hash();
        assert!(a == a);
        for byte in 0..32 {
            for bit in 0..8 {
                let mut bytes = *a.as_bytes();
                bytes[byte] ^= 1 << bit;
                assert!(a != KeyHash::from_bytes(bytes), "byte {byte} bit {bit}");
            }
        }
        let key = TmKey::parse(VECTOR_LIVE).unwrap();
        assert!(key == TmKey::parse(VECTOR_LIVE).unwrap());
        assert!(key != TmKey::parse(VECTOR_TEST).unwrap());
        // 40 bytes: five words and no remainder; odd sizes use the tail loop.
        assert!(words_equal(&[1u8, 2, 3], &[1, 2, 3]));
        assert!(!words_equal(&[1u8, 2, 3], &[1, 2, 4]));
    }

    #[test]
    fn hint_is_prefix_and_last_four() {
        let key = TmKey::parse(VECTOR_LIVE).unwrap();
        assert_eq!(key.hint().to_string(), "tm_live_...DsrG");
        assert_eq!(key.hint(), "tm_live_...DsrG");
        assert_eq!(key.hint(), String::from("tm_live_...DsrG"));
        assert!(key.hint() != "tm_test_...DsrG");
        assert_eq!("tm_live_...DsrG".parse::<KeyHint>().unwrap(), key.hint());
        assert!("tm_live_..DsrG".parse::<KeyHint>().is_err());
        assert!("tm_live_...Ds-G".parse::<KeyHint>().is_err());
        assert_eq!(format!("{:?}", key.hint()), "\"tm_live_...DsrG\"");
    }

    #[test]
    fn debug_and_display_redact() {
        let key = TmKey::generate(Environment::Test);
        let random = &key.expose_secret()[8..36];
        for text in [format!("{key:?}"), format!("{key}"), format!("{key:#?}")] {
            assert!(!text.contains(random), "{text}");
            assert!(text.contains("tm_test_..."), "{text}");
        }
    }

    #[test]
    fn a_key_hashes_to_its_published_sha256() {
        // `printf %s <key> | sha256sum`
        let key = TmKey::parse("tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m30ODsrG").unwrap();
        assert_eq!(
            key.hash().to_hex(),
            "553925bcf5fbc9710dce2b03191987f76929cc7178414ad70f991f7fe3547c45"
        );
        assert_eq!(TmKey::hash_of(key.expose_secret()), Ok(key.hash()));
    }

    #[test]
    fn hash_hex_round_trips() {
        let hash = TmKey::generate(Environment::Live).hash();
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(KeyHash::from_hex(&hash.to_hex().to_uppercase()), Some(hash));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
    }

    /// A chi-square test over the random part: every base62 character should
    /// be equally likely at every position. With 61 degrees of freedom the
    /// 99.99th percentile is about 113; a `% 62` bias on its own would push
    /// the statistic for 20 000 keys far beyond that.
    #[test]
    fn random_part_is_uniform() {
        let keys = 20_000;
        let mut counts = [0u64; 62];
        for _ in 0..keys {
            let key = TmKey::generate(Environment::Live);
            for &byte in &key.expose_secret().as_bytes()[PREFIX_LEN..CHECKSUMMED_LEN] {
                let index = ALPHABET.iter().position(|&a| a == byte).unwrap();
                counts[index] += 1;
            }
        }
        let total = (keys * RANDOM_LEN) as f64;
        let expected = total / 62.0;
        let chi_square: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi_square < 113.0, "chi-square {chi_square}");
    }

    proptest! {
        #[test]
        fn generate_parse_round_trip(live in any::<bool>()) {
            let env = if live { Environment::Live } else { Environment::Test };
            let key = TmKey::generate(env);
            let parsed = TmKey::parse(key.expose_secret()).unwrap();
            prop_assert!(parsed == key);
            prop_assert_eq!(parsed.environment(), env);
            prop_assert_eq!(parsed.hash(), key.hash());
            prop_assert_eq!(key.expose_secret().len(), KEY_LEN);
        }

        #[test]
        fn parse_never_panics(input in ".{0,64}") {
            let _ = TmKey::parse(&input);
        }

        #[test]
        fn the_character_test_is_the_ascii_alphanumeric_test(b in any::<u8>()) {
            prop_assert_eq!(is_base62(b), b.is_ascii_alphanumeric());
        }

        #[test]
        fn the_checksum_field_decodes_as_the_base62_crate_does(digits in "[0-9A-Za-z]{1,6}") {
            let ours = checksum_value(digits.as_bytes());
            let theirs = base62::decode(&digits).ok().and_then(|v| u32::try_from(v).ok());
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn hashing_without_a_copy_agrees_with_parsing(input in "tm_(live|test)_[0-9A-Za-z]{32}|.{0,48}") {
            match (TmKey::parse(&input), TmKey::hash_of(&input)) {
                (Ok(key), Ok(hash)) => prop_assert_eq!(key.hash(), hash),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                _ => prop_assert!(false, "parse and hash_of disagree"),
            }
        }

        #[test]
        fn parse_never_panics_near_keys(suffix in "[0-9A-Za-z_\\-é]{0,40}") {
            for prefix in ["tm_live_", "tm_test_"] {
                let input = format!("{prefix}{suffix}");
                if let Err(err) = TmKey::parse(&input) {
                    // Errors never quote the input.
                    prop_assert!(suffix.len() < 4 || !err.to_string().contains(&suffix));
                }
            }
        }
    }
}
