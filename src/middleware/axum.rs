//! `AuthenticatedKey` as an axum extractor (feature `axum`).

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::error::AuthError;
use crate::manager::AuthenticatedKey;

/// Extracts the key [`ApiKeyLayer`](crate::ApiKeyLayer) authenticated.
///
/// Without the layer in front of the handler there is no key, and the
/// rejection is the layer's own JSON 401 `missing_api_key` (fail closed);
/// the missing layer is logged as an error. Use `Option<AuthenticatedKey>`
/// on routes where authentication is optional.
///
/// ```
/// use tm_auth::AuthenticatedKey;
///
/// async fn verify(who: AuthenticatedKey) -> String {
///     format!("authenticated as {}", who.name())
/// }
/// let app: axum::Router = axum::Router::new().route("/v1/verify", axum::routing::post(verify));
/// # let _ = app;
/// ```
impl<S: Send + Sync> FromRequestParts<S> for AuthenticatedKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<AuthenticatedKey>() {
            Some(who) => Ok(who.clone()),
            None => {
                tracing::error!(
                    path = %parts.uri.path(),
                    "AuthenticatedKey extractor used on a route without ApiKeyLayer; answering 401"
                );
                Err(AuthError::MissingApiKey { misplaced: None }
                    .to_response()
                    .into_response())
            }
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for AuthenticatedKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<AuthenticatedKey>().cloned())
    }
}
