//! What a key may do: [`Scope`], one permission a provider names, and the
//! rules for a key's set of them.
//!
//! A key with no scopes is unrestricted: every route that asks for a scope
//! lets it through. A key with scopes passes only routes that ask for one
//! of them (see [`RequireScopeLayer`](crate::RequireScopeLayer)).

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest scope, in characters.
pub const MAX_SCOPE_LEN: usize = 64;

/// Most scopes a key may carry.
pub const MAX_SCOPES_PER_KEY: usize = 32;

/// One permission, such as `emails:verify`: 1 to 64 characters of
/// `a-z`, `0-9`, `_`, `:`, `.` and `-`. Valid by construction, so it can be
/// written into an RFC 6750 `scope="…"` challenge as it is.
///
/// ```
/// use tm_auth::Scope;
///
/// let scope: Scope = "emails:verify".parse().unwrap();
/// assert_eq!(scope.as_str(), "emails:verify");
/// assert!("Emails:Verify".parse::<Scope>().is_err(), "lower case only");
/// assert!("".parse::<Scope>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(Arc<str>);

/// Why a scope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// The empty string.
    #[error("a scope is empty; name it, e.g. \"emails:verify\"")]
    Empty,
    /// Longer than [`MAX_SCOPE_LEN`] characters.
    #[error("a scope has {actual} characters; at most {max} are allowed")]
    TooLong {
        /// The limit.
        max: usize,
        /// What was given.
        actual: usize,
    },
    /// A character outside `a-z`, `0-9`, `_`, `:`, `.`, `-`.
    #[error("character {position} of a scope is not one of a-z, 0-9, _ : . -")]
    ForbiddenCharacter {
        /// Index, in characters, of the first such character.
        position: usize,
    },
    /// More than [`MAX_SCOPES_PER_KEY`] scopes.
    #[error("a key has at most {max} scopes; {given} were given")]
    TooMany {
        /// The limit.
        max: usize,
        /// How many distinct scopes were given.
        given: usize,
    },
}

fn allowed(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '_' | ':' | '.' | '-')
}

impl Scope {
    /// Checks `scope` and wraps it.
    pub fn new(scope: &str) -> Result<Scope, ScopeError> {
        if scope.is_empty() {
            return Err(ScopeError::Empty);
        }
        if let Some(position) = scope.chars().position(|c| !allowed(c)) {
            return Err(ScopeError::ForbiddenCharacter { position });
        }
        // Only ASCII is left, so bytes are characters.
        if scope.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong {
                max: MAX_SCOPE_LEN,
                actual: scope.len(),
            });
        }
        Ok(Scope(Arc::from(scope)))
    }

    /// A scope written in the program, such as a route's requirement.
    ///
    /// # Panics
    ///
    /// If `scope` is not a valid scope: like `http::HeaderName::from_static`,
    /// it is meant for constants, where the mistake shows at start-up. Use
    /// [`Scope::new`] for anything read at run time.
    pub fn from_static(scope: &'static str) -> Scope {
        match Scope::new(scope) {
            Ok(scope) => scope,
            Err(err) => panic!("Scope::from_static({scope:?}): {err}"),
        }
    }

    /// The scope's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        Scope::new(s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Scope {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Scope {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Scope {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Scope, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Scope::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Checks every scope in `given` and returns the set, sorted and without
/// repeats: the form records keep, so two records with the same scopes
/// compare equal.
pub(crate) fn scope_set<I, S>(given: I) -> Result<Vec<Scope>, ScopeError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut scopes = given
        .into_iter()
        .map(|scope| Scope::new(scope.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    scopes.sort_unstable();
    scopes.dedup();
    if scopes.len() > MAX_SCOPES_PER_KEY {
        return Err(ScopeError::TooMany {
            max: MAX_SCOPES_PER_KEY,
            given: scopes.len(),
        });
    }
    Ok(scopes)
}

/// The scopes joined by spaces (RFC 6749 §3.3's form): how the SQL stores
/// keep them and how an in-memory entry scans them.
pub(crate) fn joined(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a key with `scopes` may do what `required` names: an
/// unrestricted key (no scopes) may do anything.
pub(crate) fn grants(scopes: &[Scope], required: &str) -> bool {
    scopes.is_empty()
        || scopes
            .binary_search_by(|s| s.as_str().cmp(required))
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_alphabet_and_the_length_are_checked() {
        assert!(Scope::new("emails:verify").is_ok());
        assert!(Scope::new("a.b_c-d:0").is_ok());
        assert_eq!(Scope::new(""), Err(ScopeError::Empty));
        assert_eq!(
            Scope::new("Emails"),
            Err(ScopeError::ForbiddenCharacter { position: 0 })
        );
        assert_eq!(
            Scope::new("a b"),
            Err(ScopeError::ForbiddenCharacter { position: 1 })
        );
        assert_eq!(
            Scope::new("a\"b"),
            Err(ScopeError::ForbiddenCharacter { position: 1 })
        );
        assert_eq!(
            Scope::new("é"),
            Err(ScopeError::ForbiddenCharacter { position: 0 })
        );
        assert!(Scope::new(&"a".repeat(64)).is_ok());
        assert_eq!(
            Scope::new(&"a".repeat(65)),
            Err(ScopeError::TooLong {
                max: 64,
                actual: 65
            })
        );
    }

    #[test]
    fn a_set_is_sorted_without_repeats_and_bounded() {
        let set = scope_set(["lists:read", "emails:verify", "lists:read"]).unwrap();
        assert_eq!(set, vec!["emails:verify", "lists:read"]);
        let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        assert_eq!(
            scope_set(&many),
            Err(ScopeError::TooMany { max: 32, given: 33 })
        );
        let repeated = std::iter::repeat_n("a", 100);
        assert_eq!(scope_set(repeated).unwrap().len(), 1, "repeats count once");
        assert_eq!(
            scope_set(["ok", "Not"]),
            Err(ScopeError::ForbiddenCharacter { position: 0 })
        );
    }

    #[test]
    fn no_scopes_grants_everything_and_a_set_only_its_own() {
        assert!(grants(&[], "anything"));
        let set = scope_set(["emails:verify", "lists:read"]).unwrap();
        assert!(grants(&set, "emails:verify"));
        assert!(grants(&set, "lists:read"));
        assert!(!grants(&set, "lists:write"));
        assert!(!grants(&set, "emails"));
        assert!(!grants(&set, ""));
    }

    #[test]
    #[should_panic(expected = "Scope::from_static")]
    fn from_static_refuses_an_invalid_constant() {
        let _ = Scope::from_static("Not Valid");
    }

    proptest! {
        #[test]
        fn validation_never_panics_and_keeps_its_promise(text in any::<String>()) {
            if let Ok(scope) = Scope::new(&text) {
                prop_assert!(!scope.as_str().is_empty());
                prop_assert!(scope.as_str().len() <= MAX_SCOPE_LEN);
                prop_assert!(scope.as_str().chars().all(allowed));
                let challenge = format!("scope=\"{scope}\"");
                prop_assert!(http::HeaderValue::from_str(&challenge).is_ok());
            }
        }
    }
}
