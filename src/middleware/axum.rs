//! `AuthenticatedKey` as an axum extractor (feature `axum`).

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::request::Parts;
use http::StatusCode;

use crate::verify::AuthenticatedKey;

/// Extracts the key [`ApiKeyLayer`](crate::ApiKeyLayer) authenticated.
///
/// Without the layer in front of the handler there is no key: that is the
/// server's mistake, not the caller's (who may well have sent a valid key),
/// so the rejection is a 500 whose JSON body says the server is
/// misconfigured (`code: "server_misconfigured"`), as axum's own
/// `Extension` answers a missing extension, and the route is logged at
/// error level. Nothing is let through. Use `Option<AuthenticatedKey>` on
/// routes where authentication is optional.
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
                    "AuthenticatedKey extractor used on a route ApiKeyLayer does not cover \
                     (add the layer with Router::layer or Router::route_layer); answering 500"
                );
                Err(misconfigured())
            }
        }
    }
}

/// The 500 for a route the layer does not cover.
fn misconfigured() -> Response {
    const BODY: &str = "{\"error\":\"Server misconfigured\",\"code\":\"server_misconfigured\",\
        \"hint\":\"The server reads the API key's identity on a route its authentication layer \
        does not cover. This is not a problem with your key; contact the API's operator.\"}";
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, BODY).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
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
    async fn without_the_layer_the_extractor_answers_500_server_misconfigured() {
        let app = Router::new()
            .route("/", get(name))
            .route("/maybe", get(maybe));
        let response = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(!response.headers().contains_key("www-authenticate"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["code"], "server_misconfigured");
        assert_eq!(json["error"], "Server misconfigured");
        assert!(json["hint"]
            .as_str()
            .unwrap()
            .contains("not a problem with your key"));
        let response = app
            .oneshot(Request::get("/maybe").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "anonymous"
        );
    }

    #[tokio::test]
    async fn route_layer_leaves_later_routes_public_and_unknown_paths_404() {
        let manager = KeyManager::new(MemoryStore::new());
        let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
        let app = Router::new()
            .route("/v1/verify", get(name))
            .route_layer(ApiKeyLayer::new(manager.clone()))
            .route("/health", get(|| async { "ok" }));
        let status = |path: &'static str, key: Option<String>| {
            let app = app.clone();
            async move {
                let mut request = Request::get(path);
                if let Some(key) = key {
                    request = request.header("authorization", format!("Bearer {key}"));
                }
                app.oneshot(request.body(Body::empty()).unwrap())
                    .await
                    .unwrap()
                    .status()
            }
        };
        let key = || Some(created.key.expose_secret().to_owned());
        assert_eq!(status("/health", None).await, StatusCode::OK);
        assert_eq!(status("/v1/verify", None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status("/v1/verify", key()).await, StatusCode::OK);
        assert_eq!(status("/nope", None).await, StatusCode::NOT_FOUND);
        // `.layer` on the whole router runs for unmatched paths as well.
        let whole = Router::new()
            .route("/v1/verify", get(name))
            .layer(ApiKeyLayer::new(manager));
        let response = whole
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}
