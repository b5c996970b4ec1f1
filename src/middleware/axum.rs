//! `AuthenticatedKey` as an axum extractor (feature `axum`).

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::error::AuthError;
use crate::verify::AuthenticatedKey;

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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::{ApiKeyLayer, AuthenticatedKey, KeyManager, MemoryStore, NewKey};

    async fn name(who: AuthenticatedKey) -> String {
        who.name().to_owned()
    }

    async fn maybe(who: Option<AuthenticatedKey>) -> String {
        who.map_or("anonymous".to_owned(), |w| w.name().to_owned())
    }

    #[tokio::test]
    async fn the_extractor_reads_what_the_layer_inserted() {
        let manager = KeyManager::new(MemoryStore::new());
        let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
        let app = Router::new()
            .route("/", get(name))
            .layer(ApiKeyLayer::new(manager));
        let request = Request::get("/")
            .header(
                "authorization",
                format!("Bearer {}", created.key.expose_secret()),
            )
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "Main"
        );
    }

    #[tokio::test]
    async fn without_the_layer_the_extractor_fails_closed_with_the_same_json() {
        let app = Router::new()
            .route("/", get(name))
            .route("/maybe", get(maybe));
        let response = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key("www-authenticate"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["code"], "missing_api_key");
        assert_eq!(json["error"], "Invalid API key");
        let response = app
            .oneshot(Request::get("/maybe").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "anonymous"
        );
    }
}
