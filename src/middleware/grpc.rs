//! The gRPC answer to a rejected request: trailers-only, as every gRPC
//! client reads a call that failed before it started.
//!
//! A request whose `content-type` starts with `application/grpc` (gRPC,
//! and gRPC-Web in its binary and text forms) is answered HTTP 200 with no
//! body and the status in the headers: `grpc-status`, `grpc-message` (the
//! same public message as the JSON body's `error`, percent-encoded as the
//! gRPC spec asks), and the crate's stable code and hint as `tm-auth-code`
//! and `tm-auth-hint`. `www-authenticate`, `retry-after` and the
//! `RateLimit-*` headers are kept: they reach the client as metadata.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::error::AuthError;

/// How a rejected request is answered: as HTTP, or as gRPC with the
/// `content-type` its client expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Http,
    Grpc(&'static str),
}

impl Answer {
    /// The answer a request with these headers expects.
    pub(crate) fn for_request(headers: &HeaderMap) -> Answer {
        let Some(kind) = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes) else {
            return Answer::Http;
        };
        let Some(rest) = strip_prefix_ignore_case(kind, b"application/grpc") else {
            return Answer::Http;
        };
        let content_type = if let Some(web) = strip_prefix_ignore_case(rest, b"-web-text") {
            if web.starts_with(b"+proto") {
                "application/grpc-web-text+proto"
            } else {
                "application/grpc-web-text"
            }
        } else if let Some(web) = strip_prefix_ignore_case(rest, b"-web") {
            if web.starts_with(b"+proto") {
                "application/grpc-web+proto"
            } else {
                "application/grpc-web"
            }
        } else {
            "application/grpc"
        };
        Answer::Grpc(content_type)
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// gRPC status codes this crate answers with.
pub(crate) mod code {
    pub(crate) const PERMISSION_DENIED: u8 = 7;
    pub(crate) const RESOURCE_EXHAUSTED: u8 = 8;
    pub(crate) const UNAVAILABLE: u8 = 14;
    pub(crate) const UNAUTHENTICATED: u8 = 16;
}

impl AuthError {
    /// The gRPC status code for this error: 16 `UNAUTHENTICATED` for every
    /// 401, 7 `PERMISSION_DENIED` for `ip_not_allowed`, 8
    /// `RESOURCE_EXHAUSTED` for `rate_limited`, 14 `UNAVAILABLE` for
    /// `key_store_unavailable`.
    ///
    /// ```
    /// use tm_auth::AuthError;
    ///
    /// assert_eq!(AuthError::Revoked.grpc_code(), 16);
    /// ```
    pub fn grpc_code(&self) -> u8 {
        match self.status() {
            StatusCode::FORBIDDEN => code::PERMISSION_DENIED,
            StatusCode::TOO_MANY_REQUESTS => code::RESOURCE_EXHAUSTED,
            StatusCode::SERVICE_UNAVAILABLE => code::UNAVAILABLE,
            _ => code::UNAUTHENTICATED,
        }
    }

    /// The trailers-only gRPC response for this error (`content-type:
    /// application/grpc`): what [`ApiKeyLayer`](crate::ApiKeyLayer) answers
    /// a gRPC request it refuses, for use on other transports.
    ///
    /// ```
    /// use tm_auth::AuthError;
    ///
    /// let response = AuthError::Revoked.to_grpc_response();
    /// assert_eq!(response.status(), 200);
    /// assert_eq!(response.headers()["grpc-status"], "16");
    /// assert_eq!(response.headers()["grpc-message"], "Invalid API key");
    /// assert_eq!(response.headers()["tm-auth-code"], "api_key_revoked");
    /// ```
    pub fn to_grpc_response(&self) -> Response<Full<Bytes>> {
        let http = self.to_response();
        self.grpc_from(http, "application/grpc")
    }

    /// The gRPC form of `http`, the HTTP answer to this error: its headers
    /// kept as metadata, its status and body moved into `grpc-*` headers.
    pub(crate) fn grpc_from(
        &self,
        http: Response<Full<Bytes>>,
        content_type: &'static str,
    ) -> Response<Full<Bytes>> {
        let (mut parts, _) = http.into_parts();
        let headers = &mut parts.headers;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(u16::from(self.grpc_code())),
        );
        headers.insert(
            HeaderName::from_static("grpc-message"),
            percent_encoded(self.message()),
        );
        headers.insert(
            HeaderName::from_static("tm-auth-code"),
            HeaderValue::from_static(self.code()),
        );
        headers.insert(
            HeaderName::from_static("tm-auth-hint"),
            percent_encoded(&self.hint()),
        );
        parts.status = StatusCode::OK;
        Response::from_parts(parts, Full::new(Bytes::new()))
    }
}

/// `text` as the gRPC spec carries a message: bytes outside printable ASCII,
/// and `%`, as `%XX`.
fn percent_encoded(text: &str) -> HeaderValue {
    let plain = |b: u8| (b' '..=b'~').contains(&b) && b != b'%';
    if text.bytes().all(plain) {
        if let Ok(value) = HeaderValue::from_str(text) {
            return value;
        }
    }
    let mut out = String::with_capacity(text.len() + 16);
    for b in text.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // Only printable ASCII is left, which a header value always takes.
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::HeaderError;
    use crate::store::StoreError;
    use std::time::Duration;

    fn answer(content_type: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        Answer::for_request(&headers)
    }

    #[test]
    fn grpc_requests_are_told_apart_by_content_type() {
        for (sent, answered) in [
            ("application/grpc", "application/grpc"),
            ("application/grpc+proto", "application/grpc"),
            ("Application/GRPC+json", "application/grpc"),
            ("application/grpc-web", "application/grpc-web"),
            ("application/grpc-web+proto", "application/grpc-web+proto"),
            ("application/grpc-web-text", "application/grpc-web-text"),
            (
                "application/grpc-web-text+proto",
                "application/grpc-web-text+proto",
            ),
        ] {
            assert_eq!(answer(sent), Answer::Grpc(answered), "{sent}");
        }
        for sent in ["application/json", "text/plain", "application/gr", ""] {
            assert_eq!(answer(sent), Answer::Http, "{sent}");
        }
        assert_eq!(Answer::for_request(&HeaderMap::new()), Answer::Http);
    }

    #[test]
    fn every_error_has_its_grpc_status() {
        let cases = [
            (AuthError::MissingApiKey { misplaced: None }, 16),
            (AuthError::MalformedHeader(HeaderError::NoScheme), 16),
            (AuthError::UnknownKey, 16),
            (AuthError::Revoked, 16),
            (AuthError::Expired, 16),
            (AuthError::IpNotAllowed { client_ip: None }, 7),
            (
                AuthError::RateLimited {
                    retry_after: Duration::from_secs(3),
                    limit: 5,
                },
                8,
            ),
            (AuthError::StoreUnavailable(StoreError::Timeout), 14),
        ];
        for (err, code) in cases {
            let response = err.to_grpc_response();
            assert_eq!(response.status(), StatusCode::OK);
            let headers = response.headers();
            assert_eq!(headers["content-type"], "application/grpc");
            assert_eq!(headers["grpc-status"], code.to_string().as_str(), "{err:?}");
            assert_eq!(headers["grpc-message"], err.message());
            assert_eq!(headers["tm-auth-code"], err.code());
            assert!(!headers["tm-auth-hint"].is_empty());
        }
        let limited = AuthError::RateLimited {
            retry_after: Duration::from_millis(2_500),
            limit: 5,
        }
        .to_grpc_response();
        assert_eq!(limited.headers()["retry-after"], "3");
        assert_eq!(limited.headers()["ratelimit-limit"], "5");
        assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    }

    #[test]
    fn messages_are_percent_encoded_as_grpc_asks() {
        assert_eq!(percent_encoded("Invalid API key"), "Invalid API key");
        assert_eq!(percent_encoded("50% off"), "50%25 off");
        assert_eq!(percent_encoded("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[tokio::test]
    async fn the_body_is_empty() {
        use http_body::Body as _;
        let response = AuthError::UnknownKey.to_grpc_response();
        assert!(response.body().is_end_stream());
    }
}
