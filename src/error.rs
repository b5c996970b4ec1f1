//! Why a request or a management call failed.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use http::StatusCode;

use crate::header::{BearerError, HeaderError, KeyRejection, MisplacedKey};
use crate::key::{Environment, KeyFormatError, RandomnessError};
use crate::rate_limit::retry_after_secs;
use crate::record::TextError;
use crate::scope::Scope;
use crate::store::StoreError;

/// Why a request was not authenticated.
///
/// Each variant maps to one row of the HTTP table: a stable machine-readable
/// [`code`](AuthError::code), a [`status`](AuthError::status), the public
/// [`message`](AuthError::message) (TrueMail's `{"error": …}`) and a
/// [`hint`](AuthError::hint) telling the caller what to do. None of them,
/// nor the `Display` text, ever contains the key that was sent.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tm_auth::{KeyManager, MemoryStore};
///
/// let manager = KeyManager::new(MemoryStore::new());
/// let err = manager.verify("tm_live_nope", None).await.unwrap_err();
/// assert_eq!(err.code(), "invalid_api_key");
/// assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
/// assert_eq!(err.message(), "Invalid API key");
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no API key: the request has no Authorization header")]
    MissingApiKey {
        /// Where the key was sent instead, if it was.
        misplaced: Option<MisplacedKey>,
    },
    /// The `Authorization` header is not `Bearer <token>`.
    #[error("malformed Authorization header: {0}")]
    MalformedHeader(#[from] HeaderError),
    /// The token is not a well-formed key (prefix, length, characters, checksum).
    #[error("invalid API key: {0}")]
    InvalidFormat(#[from] KeyFormatError),
    /// Well-formed, but no such key exists.
    #[error("invalid API key: no such key")]
    UnknownKey,
    /// The key was revoked.
    #[error("the API key was revoked")]
    Revoked,
    /// The key has expired.
    #[error("the API key has expired")]
    Expired,
    /// A key of the other environment than the one required.
    #[error("a {actual} key was sent where only {required} keys are accepted")]
    WrongEnvironment {
        /// The environment the deployment accepts.
        required: Environment,
        /// The key's environment.
        actual: Environment,
    },
    /// The client IP is outside the key's allowlist, or unknown while the key has one.
    #[error("the client IP is not in the key's allowlist")]
    IpNotAllowed {
        /// The client address, if it could be determined.
        client_ip: Option<IpAddr>,
    },
    /// The key is valid but lacks the scope the route requires (see
    /// [`RequireScopeLayer`](crate::RequireScopeLayer)).
    #[error("the API key lacks the required scope {required}")]
    InsufficientScope {
        /// The scope the route requires.
        required: Scope,
    },
    /// The key is over its rate limit.
    #[error("the API key is over its rate limit")]
    RateLimited {
        /// How long until the key is let in again.
        retry_after: Duration,
        /// Requests allowed per window.
        limit: u32,
    },
    /// The key store failed or timed out. Requests fail closed.
    #[error("the key store is unavailable: {0}")]
    StoreUnavailable(#[source] StoreError),
}

/// What `Retry-After` says when the store is down: a few seconds.
pub(crate) const STORE_RETRY_AFTER: Duration = Duration::from_secs(2);

impl AuthError {
    /// The stable, machine-readable code, e.g. `"api_key_revoked"`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingApiKey { .. } => "missing_api_key",
            AuthError::MalformedHeader(_) => "malformed_authorization_header",
            AuthError::InvalidFormat(_) | AuthError::UnknownKey => "invalid_api_key",
            AuthError::Revoked => "api_key_revoked",
            AuthError::Expired => "api_key_expired",
            AuthError::WrongEnvironment { .. } => "wrong_environment",
            AuthError::IpNotAllowed { .. } => "ip_not_allowed",
            AuthError::InsufficientScope { .. } => "insufficient_scope",
            AuthError::RateLimited { .. } => "rate_limited",
            AuthError::StoreUnavailable(_) => "key_store_unavailable",
        }
    }

    /// The HTTP status: 401, 403, 429 or 503.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::IpNotAllowed { .. } | AuthError::InsufficientScope { .. } => {
                StatusCode::FORBIDDEN
            }
            AuthError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AuthError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The public message, TrueMail's `error` field: deliberately the same
    /// for every 401, so a caller cannot probe which keys exist.
    pub fn message(&self) -> &'static str {
        if let AuthError::InsufficientScope { .. } = self {
            return "API key lacks the required scope";
        }
        match self.status() {
            StatusCode::FORBIDDEN => "IP address not allowed",
            StatusCode::TOO_MANY_REQUESTS => "Rate limit exceeded",
            StatusCode::SERVICE_UNAVAILABLE => "Service unavailable",
            _ => "Invalid API key",
        }
    }

    /// What the caller should do next. Never quotes the key.
    pub fn hint(&self) -> Cow<'static, str> {
        match self {
            AuthError::MissingApiKey { misplaced: None } => Cow::Borrowed(
                "Send the API key in the Authorization header: Authorization: Bearer tm_live_... \
                 (keys in an X-API-Key header or in the URL are not accepted).",
            ),
            AuthError::MissingApiKey {
                misplaced: Some(MisplacedKey::Header),
            } => Cow::Borrowed(
                "The key was sent in an X-API-Key-style header, which is not accepted. \
                 Send it in the Authorization header: Authorization: Bearer tm_live_...",
            ),
            AuthError::MissingApiKey {
                misplaced: Some(MisplacedKey::Query),
            } => Cow::Borrowed(
                "The key was sent in the URL, which is not accepted: URLs end up in logs and \
                 browser history, so consider rotating this key. \
                 Send it in the Authorization header: Authorization: Bearer tm_live_...",
            ),
            AuthError::MalformedHeader(err) => Cow::Borrowed(err.hint()),
            AuthError::InvalidFormat(KeyFormatError::UnknownPrefix) => Cow::Borrowed(
                "API keys start with tm_live_ or tm_test_. Check that you copied the whole key.",
            ),
            // Static, so that rejecting a truncated key costs no formatting.
            AuthError::InvalidFormat(KeyFormatError::Length { expected, actual }) if actual < expected => Cow::Borrowed(
                "An API key is 40 characters long and this one is shorter: \
                 check that you copied the whole key.",
            ),
            AuthError::InvalidFormat(KeyFormatError::Length { .. }) => Cow::Borrowed(
                "An API key is 40 characters long and this one is longer: \
                 check that you copied the key and nothing more.",
            ),
            AuthError::InvalidFormat(KeyFormatError::InvalidCharacter { position }) => Cow::Owned(format!(
                "After its prefix an API key has only the characters 0-9, A-Z and a-z; \
                 position {position} holds another. Copy the key again."
            )),
            AuthError::InvalidFormat(_) => Cow::Borrowed(
                "The key's checksum does not match: a character was changed or lost when the key \
                 was copied. Copy it again, or create a new key.",
            ),
            AuthError::UnknownKey => Cow::Borrowed(
                "No such API key. Use the key exactly as it was shown when it was created, \
                 or create a new one.",
            ),
            AuthError::Revoked => Cow::Borrowed(
                "This API key was revoked and can never be used again. Create a new key.",
            ),
            AuthError::Expired => Cow::Borrowed(
                "This API key has expired (for example, the grace period after a rotation ended). \
                 Use the key that replaced it, or create a new one.",
            ),
            AuthError::WrongEnvironment { required, actual } => Cow::Owned(format!(
                "This server accepts {} keys only, and this is a {} key. \
                 Keep production and development keys apart.",
                required.prefix(),
                actual.prefix()
            )),
            AuthError::IpNotAllowed { client_ip: Some(ip) } => Cow::Owned(format!(
                "This key may only be used from the addresses in its IP restrictions, and the \
                 request came from {ip}. Edit the key's IP restrictions or call from an allowed address."
            )),
            AuthError::IpNotAllowed { client_ip: None } => Cow::Borrowed(
                "This key may only be used from the addresses in its IP restrictions, and the \
                 server could not determine the request's address.",
            ),
            AuthError::InsufficientScope { required } => Cow::Owned(format!(
                "This request needs an API key with the scope {required}, and this key's scopes \
                 do not include it. Use a key that has it, or add it to this key's scopes."
            )),
            AuthError::RateLimited { retry_after, .. } => Cow::Owned(format!(
                "This key has made more requests than its limit allows. Retry after {} seconds.",
                retry_after_secs(*retry_after)
            )),
            AuthError::StoreUnavailable(_) => Cow::Borrowed(
                "The key store is not answering. Retry in a few seconds.",
            ),
        }
    }

    /// How long a client should wait before retrying, for 429 and 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::RateLimited { retry_after, .. } => Some(*retry_after),
            AuthError::StoreUnavailable(_) => Some(STORE_RETRY_AFTER),
            _ => None,
        }
    }
}

impl From<BearerError> for AuthError {
    fn from(err: BearerError) -> AuthError {
        match err {
            BearerError::Missing { misplaced } => AuthError::MissingApiKey { misplaced },
            BearerError::Malformed(err) => AuthError::MalformedHeader(err),
        }
    }
}

impl From<KeyRejection> for AuthError {
    fn from(err: KeyRejection) -> AuthError {
        match err {
            KeyRejection::Bearer(err) => err.into(),
            KeyRejection::Format(err) => AuthError::InvalidFormat(err),
        }
    }
}

/// Why a management call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The key name was refused.
    #[error("invalid key name: {0}")]
    InvalidName(TextError),
    /// The owner was refused.
    #[error("invalid owner: {0}")]
    InvalidOwner(TextError),
    /// The IP allowlist holds more networks than
    /// [`KeyLimits::allowed_ips_per_key`](crate::KeyLimits::allowed_ips_per_key)
    /// allows.
    #[error("an IP allowlist holds at most {limit} networks; {given} were given")]
    InvalidAllowlist {
        /// The most networks an allowlist may hold.
        limit: usize,
        /// How many were given.
        given: usize,
    },
    /// A scope, or the set of scopes, was refused (see
    /// [`Scope`](crate::Scope)).
    #[error("invalid scopes: {0}")]
    InvalidScope(#[from] crate::scope::ScopeError),
    /// The owner already has as many active keys as
    /// [`KeyLimits::active_keys_per_owner`](crate::KeyLimits::active_keys_per_owner)
    /// allows; nothing was created.
    #[error("this account already has {limit} active API keys, the most it may have: revoke keys it no longer uses, then try again")]
    TooManyKeys {
        /// The most active keys an owner may have.
        limit: usize,
    },
    /// The page asked for is out of range: its `limit` is 0 or over
    /// [`MAX_PAGE`](crate::MAX_PAGE).
    #[error("a page holds 1 to {max} keys; {given} were asked for")]
    InvalidPage {
        /// The largest page.
        max: usize,
        /// The limit asked for.
        given: usize,
    },
    /// A rate limit could not be made (see [`RateLimit::new`](crate::RateLimit::new)).
    #[error("invalid rate limit: {0}")]
    InvalidRateLimit(#[from] crate::rate_limit::InvalidRateLimit),
    /// No key has this id.
    #[error("no key has this id")]
    NotFound,
    /// The key is revoked, so it cannot be updated or rotated.
    #[error("the key is revoked; a revoked key cannot be changed or rotated: create a new one")]
    Revoked,
    /// The key has expired, so it cannot be rotated.
    #[error("the key has expired; an expired key cannot be rotated: create a new one")]
    Expired,
    /// The store failed or timed out; nothing was changed.
    #[error("key store error: {0}")]
    Store(#[from] StoreError),
    /// The OS random number generator failed; no key was created.
    #[error(transparent)]
    Randomness(#[from] RandomnessError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<AuthError> {
        vec![
            AuthError::MissingApiKey { misplaced: None },
            AuthError::MissingApiKey {
                misplaced: Some(MisplacedKey::Header),
            },
            AuthError::MissingApiKey {
                misplaced: Some(MisplacedKey::Query),
            },
            AuthError::MalformedHeader(HeaderError::DoubleBearer),
            AuthError::InvalidFormat(KeyFormatError::UnknownPrefix),
            AuthError::InvalidFormat(KeyFormatError::Length {
                expected: 40,
                actual: 3,
            }),
            AuthError::InvalidFormat(KeyFormatError::InvalidCharacter { position: 9 }),
            AuthError::InvalidFormat(KeyFormatError::Checksum),
            AuthError::UnknownKey,
            AuthError::Revoked,
            AuthError::Expired,
            AuthError::WrongEnvironment {
                required: Environment::Live,
                actual: Environment::Test,
            },
            AuthError::IpNotAllowed { client_ip: None },
            AuthError::IpNotAllowed {
                client_ip: Some("203.0.113.9".parse().unwrap()),
            },
            AuthError::InsufficientScope {
                required: Scope::from_static("emails:verify"),
            },
            AuthError::RateLimited {
                retry_after: Duration::from_millis(1500),
                limit: 10,
            },
            AuthError::StoreUnavailable(StoreError::Timeout),
        ]
    }

    #[test]
    fn table() {
        let rows: Vec<(&str, u16, &str)> = all()
            .iter()
            .map(|e| (e.code(), e.status().as_u16(), e.message()))
            .collect();
        let expected = [
            ("missing_api_key", 401, "Invalid API key"),
            ("missing_api_key", 401, "Invalid API key"),
            ("missing_api_key", 401, "Invalid API key"),
            ("malformed_authorization_header", 401, "Invalid API key"),
            ("invalid_api_key", 401, "Invalid API key"),
            ("invalid_api_key", 401, "Invalid API key"),
            ("invalid_api_key", 401, "Invalid API key"),
            ("invalid_api_key", 401, "Invalid API key"),
            ("invalid_api_key", 401, "Invalid API key"),
            ("api_key_revoked", 401, "Invalid API key"),
            ("api_key_expired", 401, "Invalid API key"),
            ("wrong_environment", 401, "Invalid API key"),
            ("ip_not_allowed", 403, "IP address not allowed"),
            ("ip_not_allowed", 403, "IP address not allowed"),
            (
                "insufficient_scope",
                403,
                "API key lacks the required scope",
            ),
            ("rate_limited", 429, "Rate limit exceeded"),
            ("key_store_unavailable", 503, "Service unavailable"),
        ];
        assert_eq!(rows, expected);
    }

    #[test]
    fn every_error_has_a_hint() {
        for err in all() {
            assert!(!err.hint().is_empty(), "{err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(
            AuthError::StoreUnavailable(StoreError::Timeout).retry_after(),
            Some(STORE_RETRY_AFTER)
        );
        assert_eq!(AuthError::Revoked.retry_after(), None);
    }
}
