//! The key holder's side (feature `client`): a key read from the
//! environment, and a tower layer that sends it.
//!
//! Keep keys out of code and repositories: read them from an environment
//! variable at start-up with [`TmKey::from_env`] (or
//! [`TmKey::from_default_env`] for `TRUEMAIL_API_KEY`), which says exactly
//! what is wrong with a bad value without printing it, and attach them with
//! [`BearerAuthLayer`], which sends `Authorization: Bearer <key>` marked
//! sensitive and refuses a test key aimed at production (and the reverse).
//!
//! ```
//! use tm_auth::client::BearerAuthLayer;
//! use tm_auth::{Environment, TmKey};
//!
//! # std::env::set_var("MY_SERVICE_KEY", TmKey::generate(Environment::Live).expose_secret());
//! let key = TmKey::from_env("MY_SERVICE_KEY")?;
//! let layer = BearerAuthLayer::for_environment(key, Environment::Live)?;
//! # let _ = layer;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use tower::{Layer, Service};

use crate::key::{Environment, KeyFormatError, TmKey, KEY_LEN};

/// The variable [`TmKey::from_default_env`] reads.
pub const DEFAULT_KEY_VAR: &str = "TRUEMAIL_API_KEY";

/// Why a key could not be read from an environment variable. Messages name
/// the variable and what to do; they never contain its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvKeyError {
    /// The variable is not set.
    #[error("{var} is not set: export {var}=tm_live_… (or tm_test_… for development)")]
    Unset {
        /// The variable's name.
        var: String,
    },
    /// The value is not valid Unicode.
    #[error("{var} is not valid text: set it to the key exactly as it was shown")]
    NotUnicode {
        /// The variable's name.
        var: String,
    },
    /// The variable is set but empty (or only spaces).
    #[error("{var} is empty: set it to your API key")]
    Empty {
        /// The variable's name.
        var: String,
    },
    /// The value starts with `Bearer `: that belongs in the header, not in
    /// the variable.
    #[error(
        "{var} includes \"Bearer \": set it to the key alone; the client adds \"Bearer \" itself"
    )]
    BearerIncluded {
        /// The variable's name.
        var: String,
    },
    /// The value is wrapped in quotes.
    #[error("{var} is wrapped in quotes: remove them (quotes in a .env file or shell are not part of the key)")]
    Quoted {
        /// The variable's name.
        var: String,
    },
    /// The value does not start with `tm_live_` or `tm_test_`.
    #[error("{var} does not hold an API key: a key starts with tm_live_ or tm_test_")]
    WrongPrefix {
        /// The variable's name.
        var: String,
    },
    /// The value has the wrong length.
    #[error("{var} is {actual} characters long, an API key is {KEY_LEN}: was part of it lost when it was copied?")]
    WrongLength {
        /// The variable's name.
        var: String,
        /// The length found, after trimming surrounding spaces.
        actual: usize,
    },
    /// A character that no key contains.
    #[error("{var} has a character at position {position} that no API key contains (keys use 0-9, A-Z and a-z after the prefix)")]
    InvalidCharacter {
        /// The variable's name.
        var: String,
        /// Its byte offset in the trimmed value.
        position: usize,
    },
    /// The checksum does not match.
    #[error(
        "{var} fails the key's checksum: a character was changed or lost when the key was copied"
    )]
    Checksum {
        /// The variable's name.
        var: String,
    },
}

impl TmKey {
    /// Reads a key from the environment variable `var`: trims surrounding
    /// whitespace (a trailing newline from a file, say) and parses it. On
    /// failure the error says exactly what is wrong, never showing the
    /// value.
    ///
    /// ```
    /// use tm_auth::client::EnvKeyError;
    /// use tm_auth::TmKey;
    ///
    /// std::env::set_var("DOC_KEY", "Bearer tm_live_...");
    /// assert!(matches!(TmKey::from_env("DOC_KEY"), Err(EnvKeyError::BearerIncluded { .. })));
    /// ```
    pub fn from_env(var: &str) -> Result<TmKey, EnvKeyError> {
        TmKey::from_env_value(var, std::env::var_os(var))
    }

    /// [`from_env`](TmKey::from_env) for `TRUEMAIL_API_KEY`.
    pub fn from_default_env() -> Result<TmKey, EnvKeyError> {
        TmKey::from_env(DEFAULT_KEY_VAR)
    }

    /// The checks of `from_env` on a value already read (`None`: unset).
    pub(crate) fn from_env_value(var: &str, value: Option<OsString>) -> Result<TmKey, EnvKeyError> {
        let var = var.to_owned();
        let Some(value) = value else {
            return Err(EnvKeyError::Unset { var });
        };
        let Some(value) = value.to_str() else {
            return Err(EnvKeyError::NotUnicode { var });
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(EnvKeyError::Empty { var });
        }
        if value
            .get(..7)
            .is_some_and(|start| start.eq_ignore_ascii_case("bearer "))
        {
            return Err(EnvKeyError::BearerIncluded { var });
        }
        let is_quote = |c: char| matches!(c, '"' | '\'' | '`' | '\u{201c}' | '\u{201d}');
        if value.starts_with(is_quote) || value.ends_with(is_quote) {
            return Err(EnvKeyError::Quoted { var });
        }
        TmKey::parse(value).map_err(|err| match err {
            KeyFormatError::UnknownPrefix => EnvKeyError::WrongPrefix { var },
            KeyFormatError::Length { actual, .. } => EnvKeyError::WrongLength { var, actual },
            KeyFormatError::InvalidCharacter { position } => {
                EnvKeyError::InvalidCharacter { var, position }
            }
            KeyFormatError::Checksum => EnvKeyError::Checksum { var },
        })
    }
}

/// A test key aimed at production, or a live key at a test target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct EnvironmentMismatch {
    /// The key's environment.
    pub key: Environment,
    /// The environment the client was told it talks to.
    pub target: Environment,
}

impl EnvironmentMismatch {
    fn message(&self) -> &'static str {
        match self.key {
            Environment::Test => {
                "a test key (tm_test_) cannot call production: use a tm_live_ key there"
            }
            Environment::Live => {
                "a live key (tm_live_) must not be used against a test environment: use a tm_test_ key, and keep production keys in production"
            }
        }
    }
}

/// Adds `Authorization: Bearer <key>` to every outgoing request, the header
/// marked sensitive (so `http`'s `Debug` and well-behaved middleware such as
/// tower-http's tracing redact it). A request that already carries an
/// `Authorization` header has it replaced.
///
/// The key is held as the header value built once; that copy is not wiped
/// on drop (it is shared with every request sent), unlike [`TmKey`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use http::{Request, Response};
/// use tm_auth::client::BearerAuthLayer;
/// use tm_auth::{Environment, TmKey};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// let key = TmKey::generate(Environment::Live);
/// let client = BearerAuthLayer::new(key).layer(service_fn(|req: Request<()>| async move {
///     let auth = req.headers()["authorization"].clone();
///     assert!(auth.is_sensitive());
///     Ok::<_, std::convert::Infallible>(Response::new(()))
/// }));
/// client.oneshot(Request::new(())).await.unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct BearerAuthLayer {
    value: HeaderValue,
    environment: Environment,
}

impl fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

impl BearerAuthLayer {
    /// Sends `key` with every request.
    pub fn new(key: TmKey) -> BearerAuthLayer {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        BearerAuthLayer {
            value,
            environment: key.environment(),
        }
    }

    /// Sends `key` to a service that is `target` (`Live`: production),
    /// refusing a key of the other environment: a test key aimed at
    /// production, or a live key at a test service.
    pub fn for_environment(
        key: TmKey,
        target: Environment,
    ) -> Result<BearerAuthLayer, EnvironmentMismatch> {
        if key.environment() != target {
            return Err(EnvironmentMismatch {
                key: key.environment(),
                target,
            });
        }
        Ok(BearerAuthLayer::new(key))
    }

    /// The environment of the key sent.
    pub fn environment(&self) -> Environment {
        self.environment
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> BearerAuth<S> {
        BearerAuth {
            inner,
            value: self.value.clone(),
        }
    }
}

/// The service [`BearerAuthLayer`] builds.
#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    value: HeaderValue,
}

impl<S: fmt::Debug> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request
            .headers_mut()
            .insert(AUTHORIZATION, self.value.clone());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: &str) -> Result<TmKey, EnvKeyError> {
        TmKey::from_env_value("KEY_VAR", Some(value.into()))
    }

    #[test]
    fn every_mistake_has_its_own_error_and_none_shows_the_value() {
        let key = TmKey::generate(Environment::Live);
        let secret = key.expose_secret();
        let mut changed = secret.to_owned();
        let swap = if changed.as_bytes()[20] == b'a' {
            "b"
        } else {
            "a"
        };
        changed.replace_range(20..21, swap);
        type Expect = fn(&EnvKeyError) -> bool;
        let cases: Vec<(String, Expect)> = vec![
            (String::new(), |e| matches!(e, EnvKeyError::Empty { .. })),
            ("  \n".into(), |e| matches!(e, EnvKeyError::Empty { .. })),
            (format!("Bearer {secret}"), |e| {
                matches!(e, EnvKeyError::BearerIncluded { .. })
            }),
            (format!("bearer {secret}"), |e| {
                matches!(e, EnvKeyError::BearerIncluded { .. })
            }),
            (format!("\"{secret}\""), |e| {
                matches!(e, EnvKeyError::Quoted { .. })
            }),
            (format!("'{secret}'"), |e| {
                matches!(e, EnvKeyError::Quoted { .. })
            }),
            (format!("tm_prod_{}", &secret[8..]), |e| {
                matches!(e, EnvKeyError::WrongPrefix { .. })
            }),
            (secret[..39].to_owned(), |e| {
                matches!(e, EnvKeyError::WrongLength { actual: 39, .. })
            }),
            (format!("{}!{}", &secret[..20], &secret[21..]), |e| {
                matches!(e, EnvKeyError::InvalidCharacter { position: 20, .. })
            }),
            (changed, |e| matches!(e, EnvKeyError::Checksum { .. })),
        ];
        for (value, expected) in cases {
            let err = read(&value).unwrap_err();
            assert!(expected(&err), "{value:?} gave {err:?}");
            let shown = format!("{err} {err:?}");
            assert!(shown.contains("KEY_VAR"), "names the variable: {shown}");
            assert!(!shown.contains(&secret[8..34]), "never the key: {shown}");
        }
        assert!(read(&secret[8..]).is_err());
        let last = if secret.ends_with('x') { "y" } else { "x" };
        let checksum = read(&format!("{}{last}", &secret[..39])).unwrap_err();
        assert!(checksum
            .to_string()
            .contains("a character was changed or lost when the key was copied"));
    }

    #[test]
    fn unset_and_not_unicode_are_named() {
        assert!(matches!(
            TmKey::from_env_value("KEY_VAR", None),
            Err(EnvKeyError::Unset { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let bad = OsString::from_vec(vec![0xff, 0xfe]);
            assert!(matches!(
                TmKey::from_env_value("KEY_VAR", Some(bad)),
                Err(EnvKeyError::NotUnicode { .. })
            ));
        }
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let key = TmKey::generate(Environment::Test);
        let read = read(&format!("  {}\n", key.expose_secret())).unwrap();
        assert!(read == key);
    }

    #[test]
    fn the_environment_guard_refuses_crossed_keys() {
        let live = TmKey::generate(Environment::Live);
        let test = TmKey::generate(Environment::Test);
        let err = BearerAuthLayer::for_environment(test.clone(), Environment::Live).unwrap_err();
        assert_eq!(err.key, Environment::Test);
        assert!(err.to_string().contains("cannot call production"));
        assert!(BearerAuthLayer::for_environment(live.clone(), Environment::Test).is_err());
        assert!(BearerAuthLayer::for_environment(live, Environment::Live).is_ok());
        assert!(BearerAuthLayer::for_environment(test, Environment::Test).is_ok());
    }

    #[test]
    fn the_layer_debug_shows_no_key() {
        let key = TmKey::generate(Environment::Live);
        let random = key.expose_secret()[8..34].to_owned();
        let layer = BearerAuthLayer::new(key);
        let service = layer.layer(());
        let shown = format!("{layer:?} {service:?}");
        assert!(!shown.contains(&random));
    }
}
