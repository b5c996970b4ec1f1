//! The HTTP answer to a rejected request.

use std::fmt::{self, Write};
use std::str::FromStr;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::Response;
use http_body_util::Full;

use crate::error::{retry_after_secs, AuthError};

/// The `realm` of the `WWW-Authenticate` challenge: visible ASCII (spaces
/// allowed inside), no `"` or `\`, at most 128 characters.
///
/// ```
/// use tm_auth::Realm;
///
/// assert!(Realm::new("TrueMail API").is_ok());
/// assert!(Realm::new("say \"hi\"").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realm(String);

/// A realm with characters a `WWW-Authenticate` header cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a realm is 1 to 128 visible ASCII characters or spaces, without \" or \\")]
pub struct InvalidRealm;

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
        if ok {
            Ok(Realm(realm.to_owned()))
        } else {
            Err(InvalidRealm)
        }
    }

    /// The realm's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Realm {
    /// `api`.
    fn default() -> Realm {
        Realm("api".to_owned())
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
        f.write_str(&self.0)
    }
}

/// RFC 6750 `error` and `error_description` for a 401. Descriptions use only
/// the characters RFC 6750 allows (no `"` or `\`).
fn challenge(err: &AuthError) -> Option<(&'static str, &'static str)> {
    match err {
        AuthError::MissingApiKey { .. } => None,
        AuthError::MalformedHeader(_) => Some((
            "invalid_request",
            "The Authorization header must be: Bearer <API key>",
        )),
        AuthError::Revoked => Some(("invalid_token", "The API key was revoked")),
        AuthError::Expired => Some(("invalid_token", "The API key has expired")),
        AuthError::WrongEnvironment { .. } => {
            Some(("invalid_token", "The API key is for another environment"))
        }
        _ => Some(("invalid_token", "The API key is invalid")),
    }
}

fn www_authenticate(err: &AuthError, realm: &Realm) -> HeaderValue {
    let mut value = format!("Bearer realm=\"{realm}\"");
    if let Some((code, description)) = challenge(err) {
        let _ = write!(
            value,
            ", error=\"{code}\", error_description=\"{description}\""
        );
    }
    // The realm was checked when it was built; fall back rather than panic.
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer"))
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
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
    out.push('"');
}

/// `{"error": …, "code": …, "hint": …}`.
fn json_body(err: &AuthError) -> String {
    let mut body = String::with_capacity(256);
    body.push_str("{\"error\":");
    push_json_string(&mut body, err.message());
    body.push_str(",\"code\":");
    push_json_string(&mut body, err.code());
    body.push_str(",\"hint\":");
    push_json_string(&mut body, &err.hint());
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
        let mut response = Response::new(Full::new(Bytes::from(json_body(self))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status() == http::StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, www_authenticate(self, realm));
        }
        if let Some(after) = self.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
        }
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
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#""a\"b\\c\u000ad""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd");
    }
}
