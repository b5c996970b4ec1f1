//! Reading `Authorization: Bearer <token>`, and telling a caller exactly
//! what is wrong with a header that is not.
//!
//! ```
//! use tm_auth::header::{parse_bearer, HeaderError};
//!
//! assert_eq!(parse_bearer(b"  bearer   tm_live_abc "), Ok("tm_live_abc"));
//! assert_eq!(parse_bearer(b"Bearer Bearer tm_live_abc"), Err(HeaderError::DoubleBearer));
//! assert_eq!(parse_bearer(b"tm_live_abc"), Err(HeaderError::NoScheme));
//! ```

use http::header::{HeaderMap, AUTHORIZATION};
use http::Uri;

use crate::key::{Environment, KeyFormatError, KeyHash, TmKey};

/// Where a key was found when it was not in the `Authorization` header.
/// Such a key is never accepted; the hint says where to put it instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MisplacedKey {
    /// In an `X-API-Key` (or similar) header.
    Header,
    /// In the URL's query string, where it ends up in logs.
    Query,
}

/// Why a request carries no bearer token: no `Authorization` header, or
/// one that is not `Bearer <token>`. Converts into the
/// [`AuthError`](crate::AuthError) a response is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BearerError {
    /// No `Authorization` header.
    #[error("no API key: the request has no Authorization header")]
    Missing {
        /// Where the key was sent instead, if it was.
        misplaced: Option<MisplacedKey>,
    },
    /// The `Authorization` header is not `Bearer <token>`.
    #[error("malformed Authorization header: {0}")]
    Malformed(#[from] HeaderError),
}

/// Why a request's key was refused before any store was asked: the header,
/// or the key's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyRejection {
    Bearer(BearerError),
    Format(KeyFormatError),
}

impl From<BearerError> for KeyRejection {
    fn from(err: BearerError) -> KeyRejection {
        KeyRejection::Bearer(err)
    }
}

impl From<HeaderError> for KeyRejection {
    fn from(err: HeaderError) -> KeyRejection {
        KeyRejection::Bearer(BearerError::Malformed(err))
    }
}

impl From<KeyFormatError> for KeyRejection {
    fn from(err: KeyFormatError) -> KeyRejection {
        KeyRejection::Format(err)
    }
}

/// Longest `Authorization` value considered, in bytes.
pub const MAX_HEADER_LEN: usize = 1024;

/// A well-known scheme that is not `Bearer`, named in the hint.
///
/// Only recognised names are kept: an unknown "scheme" might be the start
/// of a key, and a response never echoes what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtherScheme {
    /// `Basic`.
    Basic,
    /// `Token`.
    Token,
    /// `ApiKey`, `Api-Key` or `Key`.
    ApiKey,
    /// `Digest`.
    Digest,
    /// Anything else.
    Unknown,
}

impl OtherScheme {
    fn recognise(word: &str) -> OtherScheme {
        const NAMES: [(&str, OtherScheme); 6] = [
            ("basic", OtherScheme::Basic),
            ("token", OtherScheme::Token),
            ("apikey", OtherScheme::ApiKey),
            ("api-key", OtherScheme::ApiKey),
            ("key", OtherScheme::ApiKey),
            ("digest", OtherScheme::Digest),
        ];
        let word = word.trim_end_matches(':');
        NAMES
            .iter()
            .find(|(name, _)| word.eq_ignore_ascii_case(name))
            .map_or(OtherScheme::Unknown, |&(_, scheme)| scheme)
    }

    fn name(self) -> &'static str {
        match self {
            OtherScheme::Basic => "Basic",
            OtherScheme::Token => "Token",
            OtherScheme::ApiKey => "ApiKey",
            OtherScheme::Digest => "Digest",
            OtherScheme::Unknown => "another",
        }
    }
}

/// What is wrong with an `Authorization` header. Never carries any of the
/// header's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// More than one `Authorization` header line.
    #[error("more than one Authorization header")]
    MultipleHeaders,
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("the Authorization header is longer than 1 KiB")]
    TooLong,
    /// A byte that is not visible ASCII or a space (a tab inside, a control
    /// character, non-ASCII).
    #[error("the Authorization header holds bytes that are not visible ASCII")]
    NotVisibleAscii,
    /// Empty, or only whitespace.
    #[error("the Authorization header is empty")]
    Empty,
    /// A key with no scheme in front of it.
    #[error("the Authorization header holds a key without the Bearer scheme")]
    NoScheme,
    /// A scheme other than Bearer.
    #[error("the Authorization header uses the {} scheme instead of Bearer", .0.name())]
    OtherScheme(OtherScheme),
    /// `Bearer` run together with the key, e.g. `Bearertm_live_…` or `Bearer:tm_live_…`.
    #[error("no space after Bearer")]
    MissingSpace,
    /// `Bearer` with nothing after it.
    #[error("Bearer is not followed by a key")]
    MissingToken,
    /// `Bearer Bearer <key>`.
    #[error("the header says Bearer twice")]
    DoubleBearer,
    /// Quotes around the key or the whole value.
    #[error("the key is wrapped in quotes")]
    Quoted,
    /// Another word after the key.
    #[error("there is an extra word after the key")]
    ExtraWord,
}

/// A hint followed by the form to send, as one static string.
macro_rules! send {
    ($hint:literal) => {
        concat!($hint, " Send: Authorization: Bearer tm_live_...")
    };
}

impl HeaderError {
    /// What to change, ending with the form to send.
    pub fn hint(&self) -> &'static str {
        match self {
            HeaderError::MultipleHeaders => send!("The request has several Authorization headers; send exactly one."),
            HeaderError::TooLong => send!("The Authorization header is over 1 KiB, far longer than a key."),
            HeaderError::NotVisibleAscii => send!(
                "The Authorization header holds a tab, a control character or a non-ASCII character, \
                 often from copying the key out of a document or chat."
            ),
            HeaderError::Empty => send!("The Authorization header is empty."),
            HeaderError::NoScheme => send!("The header holds the key alone; put Bearer and a space before it."),
            HeaderError::OtherScheme(OtherScheme::Basic) => send!(
                "The header uses the Basic scheme; API keys use Bearer, with no username, password or base64."
            ),
            HeaderError::OtherScheme(OtherScheme::Token) => send!("The header uses the Token scheme; API keys use Bearer."),
            HeaderError::OtherScheme(OtherScheme::ApiKey) => send!("The header uses the ApiKey scheme; API keys use Bearer."),
            HeaderError::OtherScheme(OtherScheme::Digest) => send!("The header uses the Digest scheme; API keys use Bearer."),
            HeaderError::OtherScheme(OtherScheme::Unknown) => send!("The header uses a scheme other than Bearer."),
            HeaderError::MissingSpace => send!("Put a space between Bearer and the key."),
            HeaderError::MissingToken => send!("The header says Bearer but no key follows it."),
            HeaderError::DoubleBearer => send!("The header says Bearer twice; say it once."),
            HeaderError::Quoted => send!("Remove the quotes around the key."),
            HeaderError::ExtraWord => send!("There is something after the key; send the key alone."),
        }
    }
}

fn is_key_prefixed(word: &str) -> bool {
    Environment::from_prefix(word.as_bytes()).is_some()
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '\'' | '`' | '“' | '”' | '‘' | '’')
}

fn starts_with_bearer(word: &str) -> bool {
    word.get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("bearer"))
}

/// The form nearly every request uses — `Bearer `, then a token of ASCII
/// letters, digits and `_` — read in one pass. Such a value passes every
/// rule of [`parse_bearer`] with this token as its answer (a property test
/// holds the two to that), unless the token itself starts with "bearer",
/// which is left to the full rules. Anything else answers `None`.
fn plain_bearer(value: &[u8]) -> Option<&str> {
    let token = value.strip_prefix(b"Bearer ")?;
    if token.is_empty()
        || !token
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        || token
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"bearer"))
    {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// Parses one `Authorization` value as `Bearer <token>` and returns the
/// token, borrowed from `value`.
///
/// Rules, in order: over 1 KiB is refused without being read; surrounding
/// spaces and tabs are ignored; what is left must be visible ASCII or
/// spaces; the scheme is case-insensitive; one or more spaces separate it
/// from the token. Anything else is diagnosed as a [`HeaderError`].
pub fn parse_bearer(value: &[u8]) -> Result<&str, HeaderError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong);
    }
    match plain_bearer(value) {
        Some(token) => Ok(token),
        None => parse_bearer_by_the_rules(value),
    }
}

/// [`parse_bearer`]'s rules, after the length check.
fn parse_bearer_by_the_rules(value: &[u8]) -> Result<&str, HeaderError> {
    let is_blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value
        .iter()
        .position(|b| !is_blank(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_blank(b))
        .map_or(start, |i| i + 1);
    let trimmed = &value[start..end];
    if trimmed.iter().any(|&b| !(b' '..=b'~').contains(&b)) {
        return Err(HeaderError::NotVisibleAscii);
    }
    // All bytes are ASCII now, so this cannot fail.
    let text = std::str::from_utf8(trimmed).map_err(|_| HeaderError::NotVisibleAscii)?;
    let mut words = text.split(' ').filter(|w| !w.is_empty());
    let Some(scheme) = words.next() else {
        return Err(HeaderError::Empty);
    };
    if scheme.starts_with(is_quote) {
        return Err(HeaderError::Quoted);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(if starts_with_bearer(scheme) {
            HeaderError::MissingSpace
        } else if is_key_prefixed(scheme) {
            HeaderError::NoScheme
        } else {
            HeaderError::OtherScheme(OtherScheme::recognise(scheme))
        });
    }
    let Some(token) = words.next() else {
        return Err(HeaderError::MissingToken);
    };
    if starts_with_bearer(token) {
        return Err(HeaderError::DoubleBearer);
    }
    if token.starts_with(is_quote) || token.ends_with(is_quote) {
        return Err(HeaderError::Quoted);
    }
    if words.next().is_some() {
        return Err(HeaderError::ExtraWord);
    }
    Ok(token)
}

/// The hash of the key a request carries, or why it carries none: the
/// header rules, then the key's format, as [`bearer_token`] and
/// [`TmKey::parse`](crate::TmKey::parse) apply them.
///
/// Nearly every request sends exactly `Bearer <a well-formed key>`; that
/// value is checked as a key at once, which also proves it passes every
/// header rule (a key is 40 letters, digits and `_`). Anything else —
/// including a key that fails its checks — is read by the full rules, so
/// the answer, and its diagnosis, is the same either way (a property test
/// holds the two to that).
pub(crate) fn key_hash(headers: &HeaderMap, uri: &Uri) -> Result<KeyHash, KeyRejection> {
    let value = authorization(headers, uri)?;
    let usual = value.strip_prefix(b"Bearer ");
    let checked = usual.map(TmKey::hash_of_bytes);
    match checked {
        Some(Ok(hash)) => return Ok(hash),
        // Only the checksum failed: the token is `tm_live_` or `tm_test_`
        // and 32 base62 characters, which every header rule accepts, so
        // the full rules would find this token and this error. (A mistyped
        // key, the usual bad request.)
        Some(Err(KeyFormatError::Checksum)) => return Err(KeyFormatError::Checksum.into()),
        _ => {}
    }
    if value.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong.into());
    }
    let token = parse_bearer(value)?;
    // The same token the key check saw (the usual form, a key that failed
    // it): its answer stands, and the key is not checked twice.
    if let (Some(usual), Some(Err(err))) = (usual, checked) {
        if std::ptr::eq(usual, token.as_bytes()) {
            return Err(err.into());
        }
    }
    Ok(TmKey::hash_of(token)?)
}

/// The one `Authorization` value of a request, or why there is not one.
fn authorization<'a>(headers: &'a HeaderMap, uri: &Uri) -> Result<&'a [u8], BearerError> {
    let mut lines = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = lines.next() else {
        return Err(BearerError::Missing {
            misplaced: misplaced_key(headers, uri),
        });
    };
    if lines.next().is_some() {
        return Err(HeaderError::MultipleHeaders.into());
    }
    Ok(value.as_bytes())
}

/// The bearer token of a request, or why there is none.
///
/// With no `Authorization` header the error is [`BearerError::Missing`],
/// noting whether the key was sent somewhere it is never accepted (an
/// `X-API-Key`-style header, the query string).
pub fn bearer_token<'a>(headers: &'a HeaderMap, uri: &Uri) -> Result<&'a str, BearerError> {
    Ok(parse_bearer(authorization(headers, uri)?)?)
}

fn misplaced_key(headers: &HeaderMap, uri: &Uri) -> Option<MisplacedKey> {
    const HEADERS: [&str; 5] = [
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-access-token",
    ];
    if HEADERS.iter().any(|name| headers.contains_key(*name)) {
        return Some(MisplacedKey::Header);
    }
    let query = uri.query()?;
    let named = query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        [
            "api_key",
            "apikey",
            "api-key",
            "key",
            "access_token",
            "token",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
    });
    (named || Environment::ALL.iter().any(|e| query.contains(e.prefix())))
        .then_some(MisplacedKey::Query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m30ODsrG";

    #[test]
    fn the_usual_form_and_the_unusual_ones_give_the_same_hash() {
        let uri = Uri::from_static("/");
        let expected = TmKey::parse(KEY).unwrap().hash();
        for value in [
            format!("Bearer {KEY}"),
            format!("bearer {KEY}"),
            format!("  Bearer   {KEY} "),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            assert_eq!(key_hash(&headers, &uri).unwrap(), expected, "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {KEY}x").parse().unwrap());
        assert!(matches!(
            key_hash(&headers, &uri),
            Err(KeyRejection::Bearer(BearerError::Malformed(
                HeaderError::ExtraWord
            ))) | Err(KeyRejection::Format(_))
        ));
        headers.append(AUTHORIZATION, format!("Bearer {KEY}").parse().unwrap());
        assert!(matches!(
            key_hash(&headers, &uri),
            Err(KeyRejection::Bearer(BearerError::Malformed(
                HeaderError::MultipleHeaders
            )))
        ));
    }

    #[test]
    fn accepts_the_bearer_form() {
        for value in [
            format!("Bearer {KEY}"),
            format!("bearer {KEY}"),
            format!("BEARER {KEY}"),
            format!("Bearer    {KEY}"),
            format!(" \tBearer {KEY} \t "),
        ] {
            assert_eq!(parse_bearer(value.as_bytes()), Ok(KEY), "{value:?}");
        }
    }

    #[test]
    fn diagnoses_each_mistake() {
        let cases: Vec<(String, HeaderError)> = vec![
            (format!("Bearer Bearer {KEY}"), HeaderError::DoubleBearer),
            (format!("bearer BEARER {KEY}"), HeaderError::DoubleBearer),
            (format!("Bearer Bearer{KEY}"), HeaderError::DoubleBearer),
            (format!("Bearer{KEY}"), HeaderError::MissingSpace),
            (format!("Bearer:{KEY}"), HeaderError::MissingSpace),
            (
                format!("Basic {KEY}"),
                HeaderError::OtherScheme(OtherScheme::Basic),
            ),
            (
                format!("Token {KEY}"),
                HeaderError::OtherScheme(OtherScheme::Token),
            ),
            (
                format!("ApiKey {KEY}"),
                HeaderError::OtherScheme(OtherScheme::ApiKey),
            ),
            (
                format!("Api-Key: {KEY}"),
                HeaderError::OtherScheme(OtherScheme::ApiKey),
            ),
            (
                format!("Foo {KEY}"),
                HeaderError::OtherScheme(OtherScheme::Unknown),
            ),
            (KEY.to_owned(), HeaderError::NoScheme),
            (format!("{KEY} extra"), HeaderError::NoScheme),
            (format!("Bearer \"{KEY}\""), HeaderError::Quoted),
            (format!("Bearer '{KEY}'"), HeaderError::Quoted),
            (format!("\"Bearer {KEY}\""), HeaderError::Quoted),
            (format!("Bearer {KEY} extra"), HeaderError::ExtraWord),
            (format!("Bearer\t{KEY}"), HeaderError::NotVisibleAscii),
            (format!("Bearer {KEY}\u{a0}"), HeaderError::NotVisibleAscii),
            ("Bearer".to_owned(), HeaderError::MissingToken),
            ("Bearer   ".to_owned(), HeaderError::MissingToken),
            ("".to_owned(), HeaderError::Empty),
            (" \t ".to_owned(), HeaderError::Empty),
            (format!("Bearer {}", "a".repeat(1100)), HeaderError::TooLong),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_bearer(value.as_bytes()), Err(expected), "{value:?}");
            assert!(!expected.hint().is_empty());
        }
        // Control bytes, including NUL, are refused.
        assert_eq!(
            parse_bearer(b"Bearer tm\0live"),
            Err(HeaderError::NotVisibleAscii)
        );
        assert_eq!(
            parse_bearer(b"Bearer tm\x7flive"),
            Err(HeaderError::NotVisibleAscii)
        );
    }

    #[test]
    fn exactly_1_kib_is_read() {
        let value = format!("Bearer {}", "a".repeat(MAX_HEADER_LEN - 7));
        assert_eq!(value.len(), MAX_HEADER_LEN);
        assert!(parse_bearer(value.as_bytes()).is_ok());
    }

    #[test]
    fn several_headers_are_malformed_whatever_they_hold() {
        let mut headers = HeaderMap::new();
        headers.append(AUTHORIZATION, format!("Bearer {KEY}").parse().unwrap());
        headers.append(AUTHORIZATION, format!("Bearer {KEY}").parse().unwrap());
        let err = bearer_token(&headers, &Uri::from_static("/")).unwrap_err();
        assert!(matches!(
            err,
            BearerError::Malformed(HeaderError::MultipleHeaders)
        ));
    }

    #[test]
    fn misplaced_keys_are_named_but_never_accepted() {
        let uri = Uri::from_static("/v1/verify");
        let mut headers = HeaderMap::new();
        assert!(matches!(
            bearer_token(&headers, &uri),
            Err(BearerError::Missing { misplaced: None })
        ));
        headers.insert("x-api-key", KEY.parse().unwrap());
        assert!(matches!(
            bearer_token(&headers, &uri),
            Err(BearerError::Missing {
                misplaced: Some(MisplacedKey::Header)
            })
        ));
        let query: Uri = format!("/v1/verify?api_key={KEY}").parse().unwrap();
        assert!(matches!(
            bearer_token(&HeaderMap::new(), &query),
            Err(BearerError::Missing {
                misplaced: Some(MisplacedKey::Query)
            })
        ));
        let other: Uri = "/v1/verify?page=2".parse().unwrap();
        assert!(matches!(
            bearer_token(&HeaderMap::new(), &other),
            Err(BearerError::Missing { misplaced: None })
        ));
    }

    proptest! {
        #[test]
        fn never_panics(value in proptest::collection::vec(any::<u8>(), 0..1200)) {
            if let Ok(token) = parse_bearer(&value) {
                prop_assert!(!token.is_empty());
                prop_assert!(token.bytes().all(|b| b.is_ascii_graphic()));
            }
        }

        #[test]
        fn a_key_checked_first_gets_the_answer_of_the_full_rules(
            scheme in "Bearer |bearer |Bearer  | Bearer |Bearer\\t|Basic |",
            key in "tm_(live|test)_[0-9A-Za-z]{26}(0ODsrG|[0-9A-Za-z]{6})|tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m30ODsrG|[ -~]{0,45}",
            tail in "| |x| tm_live_|\"",
            twice in any::<bool>(),
        ) {
            let value = format!("{scheme}{key}{tail}");
            let Ok(header) = http::HeaderValue::from_str(&value) else {
                return Ok(());
            };
            let mut headers = HeaderMap::new();
            headers.append(AUTHORIZATION, header.clone());
            if twice {
                headers.append(AUTHORIZATION, header);
            }
            let uri = Uri::from_static("/");
            let by_the_rules = bearer_token(&headers, &uri)
                .map_err(KeyRejection::from)
                .and_then(|token| Ok(TmKey::parse(token)?.hash()));
            let answer = key_hash(&headers, &uri);
            match (&answer, &by_the_rules) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(format!("{a:?}"), format!("{b:?}")),
                _ => prop_assert!(false, "{answer:?} against {by_the_rules:?} for {value:?}"),
            }
        }

        #[test]
        fn the_plain_form_agrees_with_the_rules(
            scheme in "(Bearer|bearer|BEARER|Bearer )",
            token in "[A-Za-z0-9_]{0,50}|[Bb]earer[A-Za-z0-9_]{0,10}|[A-Za-z0-9_ \"']{0,50}",
            noise in proptest::collection::vec(any::<u8>(), 0..3),
            noisy in any::<bool>(),
        ) {
            let mut value = format!("{scheme} {token}").into_bytes();
            if noisy {
                value.extend(&noise);
            }
            if let Some(plain) = plain_bearer(&value) {
                prop_assert_eq!(parse_bearer_by_the_rules(&value), Ok(plain));
            }
            prop_assert_eq!(parse_bearer(&value), parse_bearer_by_the_rules(&value));
        }

        #[test]
        fn the_token_is_returned_as_sent(token in "[!-~]{1,100}", spaces in 1usize..5) {
            prop_assume!(!starts_with_bearer(&token) && !token.starts_with(is_quote) && !token.ends_with(is_quote));
            let value = format!("Bearer{}{token}", " ".repeat(spaces));
            prop_assert_eq!(parse_bearer(value.as_bytes()), Ok(token.as_str()));
        }
    }
}
