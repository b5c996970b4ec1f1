//! [`ApiKeyLayer`]: API-key authentication for any tower stack.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use ipnetwork::IpNetwork;
use tower::{Layer, Service};

use crate::error::AuthError;
use crate::header::bearer_token;
use crate::key::{Environment, TmKey};
use crate::manager::{KeyManager, VerifyOptions};

pub mod client_ip;
mod response;

#[cfg(feature = "axum")]
mod axum;

pub use client_ip::{ClientIpHeader, PeerAddr};
pub use response::{InvalidRealm, Realm};

/// The response body of [`ApiKeyService`]: the inner service's body, or the
/// layer's own JSON error body. Works for any inner body, including ones
/// that cannot be built from a string (tonic's).
pub type ResponseBody<B> = Either<B, Full<Bytes>>;

/// Authenticates every request by its `Authorization: Bearer tm_…` header.
///
/// On success the inner service finds an
/// [`AuthenticatedKey`](crate::AuthenticatedKey) in the request's
/// extensions. Every rejection is answered as a JSON response (401, 403,
/// 429 or 503); the service's error type stays the inner one's, so it fits
/// `axum::Router::layer`, hyper-util and tower stacks alike.
///
/// Checks run in this order and the first failure answers: header, key
/// format, lookup, revoked, expired, environment, client IP.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tm_auth::{ApiKeyLayer, AuthenticatedKey, KeyManager, MemoryStore, NewKey};
///
/// let manager = KeyManager::new(MemoryStore::new());
/// let created = manager.create(NewKey::new("acct_1", "Production Server")).await.unwrap();
///
/// let service = ServiceBuilder::new()
///     .layer(ApiKeyLayer::new(manager).trusted_proxies(["10.0.0.0/8".parse().unwrap()]))
///     .service_fn(|req: Request<Full<Bytes>>| async move {
///         let who = req.extensions().get::<AuthenticatedKey>().unwrap();
///         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("hello {}", who.owner())))))
///     });
///
/// let request = Request::get("/")
///     .header("authorization", format!("Bearer {}", created.key.expose_secret()))
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// let response = service.clone().oneshot(request).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
///
/// let response = service.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// # }
/// ```
#[derive(Clone)]
pub struct ApiKeyLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    manager: KeyManager,
    trusted_proxies: Vec<IpNetwork>,
    client_ip_header: ClientIpHeader,
    environment: Option<Environment>,
    realm: Realm,
    store_timeout: Option<Duration>,
}

impl ApiKeyLayer {
    /// A layer verifying keys with `manager`. By default: no trusted proxies
    /// (the TCP peer is the client), both environments accepted, realm
    /// `api`, the manager's store timeout.
    pub fn new(manager: KeyManager) -> ApiKeyLayer {
        ApiKeyLayer {
            config: Arc::new(Config {
                manager,
                trusted_proxies: Vec::new(),
                client_ip_header: ClientIpHeader::default(),
                environment: None,
                realm: Realm::default(),
                store_timeout: None,
            }),
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut Config)) -> ApiKeyLayer {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Proxies whose forwarding header is believed. Only a peer inside these
    /// networks may name another client address.
    pub fn trusted_proxies(self, networks: impl IntoIterator<Item = IpNetwork>) -> ApiKeyLayer {
        let networks = networks.into_iter().collect();
        self.edit(|c| c.trusted_proxies = networks)
    }

    /// Which forwarding header trusted proxies set: `X-Forwarded-For` (the
    /// default) or RFC 7239 `Forwarded`. The other is ignored.
    pub fn client_ip_header(self, header: ClientIpHeader) -> ApiKeyLayer {
        self.edit(|c| c.client_ip_header = header)
    }

    /// Accept keys of this environment only; the other answers 401
    /// `wrong_environment`.
    pub fn require_environment(self, environment: Environment) -> ApiKeyLayer {
        self.edit(|c| c.environment = Some(environment))
    }

    /// The realm of the `WWW-Authenticate` challenge.
    ///
    /// # Panics
    ///
    /// If `realm` is not 1 to 128 visible ASCII characters or spaces without
    /// `"` or `\` — a configuration mistake, caught when the layer is built.
    /// Use [`try_realm`](ApiKeyLayer::try_realm) to handle it instead.
    pub fn realm(self, realm: &str) -> ApiKeyLayer {
        match self.try_realm(realm) {
            Ok(layer) => layer,
            Err(err) => panic!("ApiKeyLayer::realm: {err}"),
        }
    }

    /// The realm of the `WWW-Authenticate` challenge, or why it cannot be one.
    pub fn try_realm(self, realm: &str) -> Result<ApiKeyLayer, InvalidRealm> {
        let realm = Realm::new(realm)?;
        Ok(self.edit(|c| c.realm = realm))
    }

    /// How long the key lookup may take before the request fails closed
    /// with 503 `key_store_unavailable` (default: the manager's store
    /// timeout, 3 seconds unless set).
    pub fn store_timeout(self, timeout: Duration) -> ApiKeyLayer {
        self.edit(|c| c.store_timeout = Some(timeout))
    }
}

impl fmt::Debug for ApiKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("trusted_proxies", &self.config.trusted_proxies)
            .field("client_ip_header", &self.config.client_ip_header)
            .field("environment", &self.config.environment)
            .field("realm", &self.config.realm)
            .field("store_timeout", &self.config.store_timeout)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;

    fn layer(&self, inner: S) -> ApiKeyService<S> {
        ApiKeyService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service [`ApiKeyLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct ApiKeyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for ApiKeyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> ApiKeyService<S> {
    fn client_ip<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        let extensions = request.extensions();
        let peer = extensions.get::<PeerAddr>().map(|p| p.0);
        #[cfg(feature = "axum")]
        let peer = peer.or_else(|| {
            extensions
                .get::<::axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0)
        });
        client_ip::resolve(
            peer.map(|p| p.ip()),
            request.headers(),
            &self.config.trusted_proxies,
            self.config.client_ip_header,
        )
    }

    fn reject<B, E>(&self, err: AuthError) -> ResponseFuture<B, E> {
        tracing::debug!(code = err.code(), reason = %err, "API key rejected");
        ResponseFuture {
            state: State::Rejected(Some(err.to_response_in(&self.config.realm))),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Header and format errors are answered here, before any store call
        // or allocation for the verification.
        let key = match bearer_token(request.headers(), request.uri()) {
            Ok(token) => match TmKey::parse(token) {
                Ok(key) => key,
                Err(err) => return self.reject(err.into()),
            },
            Err(err) => return self.reject(err),
        };
        let mut options = VerifyOptions::new().client_ip(self.client_ip(&request));
        if let Some(environment) = self.config.environment {
            options = options.require_environment(environment);
        }
        if let Some(timeout) = self.config.store_timeout {
            options = options.store_timeout(timeout);
        }
        // The inner service was made ready by `poll_ready`; keep that one and
        // leave a fresh clone behind for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        ResponseFuture {
            state: State::Verifying(Box::pin(async move {
                match config.manager.verify_key(&key, options).await {
                    Ok(who) => {
                        drop(key);
                        let span = tracing::Span::current();
                        span.record("key_id", tracing::field::display(who.id()));
                        tracing::debug!(key_id = %who.id(), owner = %who.owner(), "API key accepted");
                        request.extensions_mut().insert(who);
                        let response = inner.call(request).await?;
                        Ok(response.map(Either::Left))
                    }
                    Err(err) => {
                        tracing::debug!(code = err.code(), reason = %err, "API key rejected");
                        Ok(err.to_response_in(&config.realm).map(Either::Right))
                    }
                }
            })),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The future of [`ApiKeyService`]: ready at once for requests rejected on
/// their header alone, boxed for those that need the store.
pub struct ResponseFuture<B, E> {
    state: State<B, E>,
}

enum State<B, E> {
    Rejected(Option<Response<Full<Bytes>>>),
    Verifying(BoxFuture<Result<Response<ResponseBody<B>>, E>>),
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Rejected(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(Either::Right))),
                // Polled after completion: a caller bug, answered by never
                // completing again rather than a panic.
                None => Poll::Pending,
            },
            State::Verifying(future) => future.as_mut().poll(cx),
        }
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
