//! The HTTP answer to a rejected request.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write};
use std::str::FromStr;
use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::Response;
use http_body_util::Full;

use crate::error::AuthError;
use crate::rate_limit::retry_after_secs;
use crate::scope::Scope;

/// The `realm` of the `WWW-Authenticate` challenge: visible ASCII (spaces
/// allowed inside), no `"` or `\`, at most 128 characters.
///
/// The challenges for each kind of 401 are built once, with the realm, so
/// a rejection formats nothing.
///
/// ```
/// use tm_auth::Realm;
///
/// assert!(Realm::new("TrueMail API").is_ok());
/// assert!(Realm::new("say \"hi\"").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Realm {
    text: String,
    /// One per entry of [`CHALLENGES`], in order.
    challenges: Vec<HeaderValue>,
}

/// A realm with characters a `WWW-Authenticate` header cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a realm is 1 to 128 visible ASCII characters or spaces, without \" or \\")]
pub struct InvalidRealm;

/// RFC 6750 `error` and `error_description` for each kind of 401, in the
/// order [`challenge_index`] numbers them. Descriptions use only the
/// characters RFC 6750 allows (no `"` or `\`).
const CHALLENGES: [Option<(&str, &str)>; 6] = [
    None,
    Some((
        "invalid_request",
        "The Authorization header must be: Bearer <API key>",
    )),
    Some(("invalid_token", "The API key is invalid")),
    Some(("invalid_token", "The API key was revoked")),
    Some(("invalid_token", "The API key has expired")),
    Some(("invalid_token", "The API key is for another environment")),
];

fn challenge_index(err: &AuthError) -> usize {
    match err {
        AuthError::MissingApiKey { .. } => 0,
        AuthError::MalformedHeader(_) => 1,
        AuthError::Revoked => 3,
        AuthError::Expired => 4,
        AuthError::WrongEnvironment { .. } => 5,
        _ => 2,
    }
}

impl Realm {
    /// Checks and wraps `realm`.
    pub fn new(realm: &str) -> Result<Realm, InvalidRealm> {
        let ok = !realm.is_empty()
            && realm.len() <= 128
            && !realm.starts_with(' ')
            && !realm.ends_with(' ')
            && realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if !ok {
            return Err(InvalidRealm);
        }
        let challenges = CHALLENGES
            .iter()
            .map(|challenge| {
                let mut value = format!("Bearer realm=\"{realm}\"");
                if let Some((code, description)) = challenge {
                    let _ = write!(
                        value,
                        ", error=\"{code}\", error_description=\"{description}\""
                    );
                }
                // Checked first; then shared, so a rejection clones a static
                // value (no reference count to touch).
                HeaderValue::from_str(&value).map_err(|_| InvalidRealm)?;
                Ok(HeaderValue::from_static(intern(value)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Realm {
            text: realm.to_owned(),
            challenges,
        })
    }

    /// The realm's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// RFC 6750 §3.1's challenge for a key without `required`. A realm
    /// and a scope are both valid header text by construction.
    fn scope_challenge(&self, required: &Scope) -> HeaderValue {
        HeaderValue::try_from(format!(
            "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{required}\"",
            self.text
        ))
        .unwrap_or(HeaderValue::from_static(
            "Bearer error=\"insufficient_scope\"",
        ))
    }

    fn challenge(&self, err: &AuthError) -> HeaderValue {
        self.challenges
            .get(challenge_index(err))
            .cloned()
            .unwrap_or(HeaderValue::from_static("Bearer"))
    }
}

impl PartialEq for Realm {
    fn eq(&self, other: &Realm) -> bool {
        self.text == other.text
    }
}

impl Eq for Realm {}

// "api" is a valid realm; the fallback only keeps this free of panics.
static DEFAULT_REALM: LazyLock<Realm> = LazyLock::new(|| {
    Realm::new("api").unwrap_or_else(|_| Realm {
        text: "api".to_owned(),
        challenges: Vec::new(),
    })
});

impl Default for Realm {
    /// `api`.
    fn default() -> Realm {
        DEFAULT_REALM.clone()
    }
}

impl FromStr for Realm {
    type Err = InvalidRealm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Realm::new(s)
    }
}

impl fmt::Display for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    if !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // Every message, code and hint of this crate takes this path.
        out.push_str(text);
    } else {
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// Text built once and kept for the life of the process: challenges and
/// error bodies, so a rejection's response shares static bytes instead of
/// counting references to heap ones. What is kept is bounded by what the
/// program configures and this crate's own messages: the challenges of
/// each distinct realm, and one body per error with a fixed hint.
fn intern(text: String) -> &'static str {
    static INTERNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut interned = INTERNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = interned.iter().find(|s| **s == text) {
        return found;
    }
    let leaked: &'static str = Box::leak(text.into_boxed_str());
    interned.push(leaked);
    leaked
}

/// The JSON body, built once per process for each error whose hint is
/// static (every header and format error, so a flood of bad keys formats
/// nothing), and found per thread without a lock.
fn body(err: &AuthError) -> Bytes {
    let Cow::Borrowed(hint) = err.hint() else {
        return Bytes::from(json_body(err));
    };
    // Keyed by the addresses of the static code and hint: identical text may
    // share an address, so the code is part of the key.
    let key = (err.code().as_ptr() as usize, hint.as_ptr() as usize);
    thread_local! {
        static BODIES: RefCell<Vec<((usize, usize), &'static str)>> = const { RefCell::new(Vec::new()) };
    }
    let text = BODIES.with(|bodies| {
        let mut bodies = bodies.borrow_mut();
        if let Some((_, body)) = bodies.iter().find(|(k, _)| *k == key) {
            return *body;
        }
        let body = intern(json_body(err));
        bodies.push((key, body));
        body
    });
    Bytes::from_static(text.as_bytes())
}

/// `{"error": …, "code": …, "hint": …}`.
fn json_body(err: &AuthError) -> String {
    let hint = err.hint();
    let mut body = String::with_capacity(48 + err.message().len() + err.code().len() + hint.len());
    body.push_str("{\"error\":");
    push_json_string(&mut body, err.message());
    body.push_str(",\"code\":");
    push_json_string(&mut body, err.code());
    body.push_str(",\"hint\":");
    push_json_string(&mut body, &hint);
    body.push('}');
    body
}

impl AuthError {
    /// The HTTP response for this error, with the default realm (`api`):
    /// status, JSON body, `WWW-Authenticate` on 401, `Retry-After` on 429
    /// and 503. What [`ApiKeyLayer`](crate::ApiKeyLayer) answers, for use on
    /// other transports.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        self.to_response_in(&Realm::default())
    }

    /// [`to_response`](AuthError::to_response) with the given realm.
    pub fn to_response_in(&self, realm: &Realm) -> Response<Full<Bytes>> {
        self.response_with(realm, HeaderMap::with_capacity(6))
    }

    /// The response, its headers written into `headers` (emptied first):
    /// the layer passes the rejected request's own map, whose memory is
    /// then reused rather than freed and allocated again.
    pub(crate) fn response_with(
        &self,
        realm: &Realm,
        mut headers: HeaderMap,
    ) -> Response<Full<Bytes>> {
        headers.clear();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status() == http::StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, realm.challenge(self));
        }
        if let AuthError::InsufficientScope { required } = self {
            headers.insert(WWW_AUTHENTICATE, realm.scope_challenge(required));
        }
        if let Some(after) = self.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
        }
        if let AuthError::RateLimited { retry_after, limit } = self {
            crate::rate_limit::set_headers(&mut headers, *limit, 0, *retry_after);
        }
        let mut response = Response::new(Full::new(body(self)));
        *response.status_mut() = self.status();
        *response.headers_mut() = headers;
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::HeaderError;
    use crate::store::StoreError;
    use http_body_util::BodyExt;

    async fn body_json(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn bodies_are_json_with_error_code_and_hint() {
        let response = AuthError::Revoked.to_response();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let json = body_json(response).await;
        assert_eq!(json["error"], "Invalid API key");
        assert_eq!(json["code"], "api_key_revoked");
        assert!(json["hint"].as_str().unwrap().contains("revoked"));
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let realm = Realm::default();
        let missing = AuthError::MissingApiKey { misplaced: None }.to_response_in(&realm);
        assert_eq!(missing.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
        let malformed = AuthError::MalformedHeader(HeaderError::NoScheme).to_response_in(&realm);
        let value = malformed.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            value.starts_with("Bearer realm=\"api\", error=\"invalid_request\""),
            "{value}"
        );
        for err in [
            AuthError::UnknownKey,
            AuthError::Revoked,
            AuthError::Expired,
        ] {
            let response = err.to_response_in(&Realm::new("TrueMail API").unwrap());
            let value = response.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(
                value.starts_with("Bearer realm=\"TrueMail API\", error=\"invalid_token\""),
                "{value}"
            );
            let description = value
                .split("error_description=\"")
                .nth(1)
                .unwrap()
                .trim_end_matches('"');
            assert!(description.bytes().all(|b| b == 0x20
                || b == 0x21
                || (0x23..=0x5b).contains(&b)
                || (0x5d..=0x7e).contains(&b)));
        }
        let forbidden = AuthError::IpNotAllowed { client_ip: None }.to_response();
        assert!(forbidden.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn retry_after_on_503() {
        let response = AuthError::StoreUnavailable(StoreError::Timeout).to_response();
        assert_eq!(response.status(), 503);
        let secs: u64 = response.headers()[RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=5).contains(&secs));
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn rate_limited_responses_say_when_to_come_back() {
        let err = AuthError::RateLimited {
            retry_after: std::time::Duration::from_millis(41_200),
            limit: 100,
        };
        let response = err.to_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[RETRY_AFTER], "42");
        assert_eq!(response.headers()["ratelimit-limit"], "100");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        assert_eq!(response.headers()["ratelimit-reset"], "42");
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn realms_are_checked() {
        for bad in [
            "",
            "a\"b",
            "a\\b",
            "tab\there",
            "é",
            " lead",
            "trail ",
            &"r".repeat(129),
        ] {
            assert_eq!(Realm::new(bad), Err(InvalidRealm), "{bad:?}");
        }
        assert_eq!(
            Realm::new("my-api.example.com").unwrap().as_str(),
            "my-api.example.com"
        );
    }

    #[test]
    fn static_hints_need_no_escaping() {
        // The fast path in push_json_string is the one every hint takes.
        for err in [
            AuthError::MalformedHeader(HeaderError::Quoted),
            AuthError::InvalidFormat(crate::KeyFormatError::Checksum),
            AuthError::MissingApiKey { misplaced: None },
        ] {
            let hint = err.hint();
            assert!(
                !hint.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20),
                "{hint}"
            );
        }
    }

    #[tokio::test]
    async fn cached_bodies_match_fresh_ones() {
        for _ in 0..3 {
            for err in [
                AuthError::InvalidFormat(crate::KeyFormatError::Checksum),
                AuthError::MalformedHeader(HeaderError::DoubleBearer),
                AuthError::MalformedHeader(HeaderError::Quoted),
                AuthError::Revoked,
                AuthError::IpNotAllowed {
                    client_ip: Some("203.0.113.9".parse().unwrap()),
                },
            ] {
                let expected: serde_json::Value = serde_json::from_str(&json_body(&err)).unwrap();
                assert_eq!(body_json(err.to_response()).await, expected);
                assert_eq!(expected["code"], err.code());
            }
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#""a\"b\\c\u000ad""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd");
    }
}
