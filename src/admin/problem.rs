//! The admin API's error answers: [`Problem`], `{"error", "code"}` JSON
//! (and `"hint"` where one helps), and how each [`ManagerError`] maps to one.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::ManagerError;

/// An error answer: `{"error", "code"}`, and `"hint"` where one helps.
#[derive(Debug)]
pub(super) struct Problem {
    status: StatusCode,
    code: &'static str,
    message: String,
    hint: Option<&'static str>,
}

impl Problem {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub(super) fn with_hint(mut self, hint: &'static str) -> Problem {
        self.hint = Some(hint);
        self
    }

    pub(super) fn bad(code: &'static str, message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(super) fn not_found() -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "No API key with this id",
        )
    }
}

#[cfg(test)]
impl Problem {
    pub(super) fn code(&self) -> &'static str {
        self.code
    }

    pub(super) fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.message, "code": self.code});
        if let Some(hint) = self.hint {
            body["hint"] = hint.into();
        }
        json(self.status, &body)
    }
}

impl From<ManagerError> for Problem {
    fn from(err: ManagerError) -> Problem {
        match err {
            ManagerError::InvalidName(err) => {
                Problem::bad("invalid_name", format!("Invalid name: {err}"))
            }
            ManagerError::InvalidAllowlist { .. } => {
                Problem::bad("too_many_ip_restrictions", err.to_string())
            }
            ManagerError::InvalidScope(err) => {
                Problem::bad("invalid_scope", format!("Invalid scopes: {err}"))
            }
            ManagerError::TooManyKeys { limit } => Problem::new(
                StatusCode::CONFLICT,
                "too_many_keys",
                format!("This account already has {limit} active API keys, the most it may have"),
            )
            .with_hint(
                "Revoke the keys you no longer use, then create the new one. \
                 (To replace a key, rotating it with a grace period of 0 needs no room.)",
            ),
            ManagerError::InvalidPage { .. } => Problem::bad("invalid_page", err.to_string()),
            ManagerError::NotFound => Problem::not_found(),
            ManagerError::Revoked => {
                Problem::new(StatusCode::CONFLICT, "key_revoked", err.to_string())
            }
            ManagerError::Expired => {
                Problem::new(StatusCode::CONFLICT, "key_expired", err.to_string())
            }
            ManagerError::Store(_) | ManagerError::Randomness(_) => {
                tracing::warn!(error = %err, "tm-auth admin: the key store failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key_store_unavailable",
                    "Service unavailable: try again in a moment",
                )
            }
            other => Problem::bad("invalid_request", other.to_string()),
        }
    }
}

/// `value` as a JSON response with `status`.
pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Most characters of the caller's own input an error message quotes.
pub(super) const MAX_ECHO: usize = 64;

/// `text` cut to `max` characters, with `…` when it was cut.
pub(super) fn shortened(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
