//! [`RequireScopeLayer`]: a route's scope requirement, checked after
//! [`ApiKeyLayer`](crate::ApiKeyLayer) authenticated the request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use tower::{Layer, Service};

use super::{grpc, respond, Realm, ResponseBody};
use crate::error::AuthError;
use crate::scope::{Scope, ScopeError};
use crate::verify::AuthenticatedKey;

/// Lets a request through only if its key may do what a scope names: the
/// key has that scope, or has no scopes at all (unrestricted).
///
/// Put it inside [`ApiKeyLayer`](crate::ApiKeyLayer), around the routes
/// that need the scope. A key without the scope is answered **403** with
/// code `insufficient_scope`, message "API key lacks the required scope"
/// and, as RFC 6750 §3.1 asks, `WWW-Authenticate: Bearer realm="api",
/// error="insufficient_scope", scope="emails:verify"`; a gRPC request gets
/// `PERMISSION_DENIED` (7). A request that reaches it without an
/// authenticated key (the layers in the wrong order) is answered 401 and
/// never let through.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tm_auth::{ApiKeyLayer, KeyManager, MemoryStore, NewKey, RequireScopeLayer};
///
/// let manager = KeyManager::new(MemoryStore::new());
/// let service = ServiceBuilder::new()
///     .layer(ApiKeyLayer::new(manager.clone()))
///     .layer(RequireScopeLayer::new("emails:verify"))
///     .service(service_fn(|_: Request<String>| async {
///         Ok::<_, Infallible>(Response::new(String::from("verified")))
///     }));
///
/// let reader = manager.create(NewKey::new("acct_42", "Reader").scopes(["lists:read"])).await?;
/// let request = Request::builder()
///     .header("authorization", format!("Bearer {}", reader.key.expose_secret()))
///     .body(String::new())?;
/// let response = service.oneshot(request).await?;
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// assert_eq!(
///     response.headers()["www-authenticate"],
///     r#"Bearer realm="api", error="insufficient_scope", scope="emails:verify""#
/// );
/// # Ok(()) }
/// ```
///
/// With axum, as a route layer: `.route("/verify", post(verify).route_layer(RequireScopeLayer::new("emails:verify")))`.
#[derive(Debug, Clone)]
pub struct RequireScopeLayer {
    scope: Scope,
    realm: Realm,
}

impl RequireScopeLayer {
    /// Requires `scope`, written in the program.
    ///
    /// # Panics
    ///
    /// If `scope` is not a valid [`Scope`] (as [`Scope::from_static`]);
    /// [`RequireScopeLayer::try_new`] returns the error instead.
    pub fn new(scope: &'static str) -> RequireScopeLayer {
        RequireScopeLayer::scope(Scope::from_static(scope))
    }

    /// Requires `scope`, or says why it is not one.
    pub fn try_new(scope: &str) -> Result<RequireScopeLayer, ScopeError> {
        Ok(RequireScopeLayer::scope(Scope::new(scope)?))
    }

    /// Requires an already checked scope.
    pub fn scope(scope: Scope) -> RequireScopeLayer {
        RequireScopeLayer {
            scope,
            realm: Realm::default(),
        }
    }

    /// The realm of the `WWW-Authenticate` challenge (`api` unless set):
    /// the same as the [`ApiKeyLayer`](crate::ApiKeyLayer)'s.
    pub fn realm(mut self, realm: Realm) -> RequireScopeLayer {
        self.realm = realm;
        self
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> RequireScope<S> {
        RequireScope {
            inner,
            scope: self.scope.clone(),
            realm: self.realm.clone(),
        }
    }
}

/// The service [`RequireScopeLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct RequireScope<S> {
    inner: S,
    scope: Scope,
    realm: Realm,
}

impl<S: fmt::Debug> fmt::Debug for RequireScope<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScope")
            .field("inner", &self.inner)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScope<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RequireScopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let refusal = match request.extensions().get::<AuthenticatedKey>() {
            Some(who) if who.has_scope(self.scope.as_str()) => None,
            Some(_) => Some(AuthError::InsufficientScope {
                required: self.scope.clone(),
            }),
            None => {
                tracing::warn!(
                    scope = %self.scope,
                    "tm-auth: a request reached RequireScopeLayer without an authenticated key; \
                     put ApiKeyLayer outside it"
                );
                Some(AuthError::MissingApiKey { misplaced: None })
            }
        };
        let state = match refusal {
            None => State::Inner {
                future: self.inner.call(request),
            },
            Some(err) => {
                tracing::debug!(code = err.code(), scope = %self.scope, "API key refused by scope");
                let headers = std::mem::take(request.headers_mut());
                let answer = grpc::Answer::for_request(&headers);
                State::Refused {
                    response: Some(respond(&err, &self.realm, headers, answer)),
                }
            }
        };
        RequireScopeFuture { state }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RequireScope`]: the inner service's, or a refusal
    /// ready at once.
    pub struct RequireScopeFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Refused { response: Option<Response<Full<Bytes>>> },
        Inner { #[pin] future: F },
    }
}

impl<F, B, E> Future for RequireScopeFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(Either::Right))),
                None => panic!("RequireScopeFuture polled after completion"),
            },
            StateProj::Inner { future } => {
                future.poll(cx).map(|r| r.map(|res| res.map(Either::Left)))
            }
        }
    }
}

impl<F> fmt::Debug for RequireScopeFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopeFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiKeyLayer, KeyManager, KeyUpdate, MemoryStore, NewKey};
    use http::StatusCode;
    use http_body_util::BodyExt;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn ok() -> impl Service<
        Request<String>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new("ok".into())) })
    }

    fn request(key: &str, grpc: bool) -> Request<String> {
        let mut builder = Request::builder().header("authorization", format!("Bearer {key}"));
        if grpc {
            builder = builder.header("content-type", "application/grpc");
        }
        builder.body(String::new()).unwrap()
    }

    #[tokio::test]
    async fn refusals_are_403_insufficient_scope_with_the_rfc_6750_challenge() {
        let manager = KeyManager::new(MemoryStore::new());
        let service = ServiceBuilder::new()
            .layer(ApiKeyLayer::new(manager.clone()))
            .layer(RequireScopeLayer::new("emails:verify"))
            .service(ok());
        let scoped = manager
            .create(NewKey::new("o", "scoped").scopes(["emails:verify"]))
            .await
            .unwrap();
        let other = manager
            .create(NewKey::new("o", "other").scopes(["lists:read"]))
            .await
            .unwrap();
        let open = manager.create(NewKey::new("o", "open")).await.unwrap();

        for (key, status) in [
            (&scoped, StatusCode::OK),
            (&open, StatusCode::OK),
            (&other, StatusCode::FORBIDDEN),
        ] {
            let response = service
                .clone()
                .oneshot(request(key.key.expose_secret(), false))
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{}", key.record.name);
        }
        let response = service
            .clone()
            .oneshot(request(other.key.expose_secret(), false))
            .await
            .unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"emails:verify\""
        );
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["code"], "insufficient_scope");
        assert_eq!(json["error"], "API key lacks the required scope");
        assert!(json["hint"].as_str().unwrap().contains("emails:verify"));
        assert!(!String::from_utf8_lossy(&body).contains(other.key.expose_secret()));

        let grpc = service
            .clone()
            .oneshot(request(other.key.expose_secret(), true))
            .await
            .unwrap();
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "7");
        assert_eq!(grpc.headers()["tm-auth-code"], "insufficient_scope");

        // Narrowed: refused on the very next request.
        manager
            .update(&scoped.record.id, KeyUpdate::new().scopes(["lists:read"]))
            .await
            .unwrap();
        let response = service
            .clone()
            .oneshot(request(scoped.key.expose_secret(), false))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn without_an_authenticated_key_nothing_passes() {
        let service = RequireScopeLayer::new("emails:verify").layer(ok());
        let response = service.oneshot(request("whatever", false)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn an_invalid_requirement_is_refused() {
        assert!(RequireScopeLayer::try_new("Emails Verify").is_err());
        assert!(RequireScopeLayer::try_new("emails:verify").is_ok());
    }
}
