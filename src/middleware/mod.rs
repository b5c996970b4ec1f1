//! [`ApiKeyLayer`]: API-key authentication for any tower stack.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use ipnetwork::IpNetwork;
use tower::{Layer, Service};

use crate::error::AuthError;
use crate::header::key_hash;
use crate::key::Environment;
use crate::manager::KeyManager;
use crate::rate_limit::RateLimitStatus;
use crate::verify::{Ready, VerifyOptions};

pub mod client_ip;
mod grpc;
mod response;
mod scope;

#[cfg(feature = "axum")]
mod axum;

use client_ip::Resolved;
pub use client_ip::{ClientIpHeader, PeerAddr};
pub use response::{InvalidRealm, Realm};
pub use scope::{RequireScope, RequireScopeFuture, RequireScopeLayer};

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
/// format, lookup, revoked, expired, environment, client IP, rate limit.
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
    /// Whether the missing-forwarding-header warning was logged: it names a
    /// misconfiguration once, not on every request.
    warned_missing_header: Arc<AtomicBool>,
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
                warned_missing_header: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut Config)) -> ApiKeyLayer {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Proxies whose forwarding header is believed. Only a peer inside these
    /// networks may name another client address. A trusted peer that sends
    /// no header of the configured kind (see
    /// [`client_ip_header`](ApiKeyLayer::client_ip_header)) is not taken
    /// for the client: the client is unknown, so keys with IP restrictions
    /// are refused (403) and a warning is logged once. IPv4 proxies written
    /// in IPv6 notation must lie inside `::ffff:0:0/96`; a wider IPv6
    /// network such as `::/0` trusts no IPv4 peer.
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
        // On a TLS server tonic inserts the TCP connect info beside its
        // `TlsConnectInfo`, so this reads the peer there too.
        #[cfg(feature = "tonic")]
        let peer = peer.or_else(|| {
            extensions
                .get::<::tonic::transport::server::TcpConnectInfo>()
                .and_then(|c| c.remote_addr())
        });
        let config = &*self.config;
        match client_ip::resolve_peer(
            peer.map(|p| p.ip()),
            request.headers(),
            &config.trusted_proxies,
            config.client_ip_header,
        ) {
            Resolved::Client(ip) => Some(ip),
            Resolved::Unknown => None,
            Resolved::ProxyWithoutHeader(proxy) => {
                if !config.warned_missing_header.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        proxy = %proxy,
                        expected_header = config.client_ip_header.header_name(),
                        "tm-auth: a trusted proxy sent no forwarding header of the configured kind, \
                         so client addresses are unknown and IP-restricted keys are refused; \
                         configure ApiKeyLayer::client_ip_header to match what the proxy sends \
                         (logged once)"
                    );
                }
                None
            }
        }
    }

    /// Answers `request` with `err`'s response, built in the request's own
    /// header map (cleared), which a rejection then needs no new one for.
    fn reject<F, B, E, ReqBody>(
        &self,
        err: AuthError,
        mut request: Request<ReqBody>,
    ) -> ResponseFuture<F, B, E> {
        let headers = std::mem::take(request.headers_mut());
        drop(request);
        ResponseFuture {
            state: State::Rejected {
                response: Some(rejected(&err, &self.config, headers)),
            },
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
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Header and format errors are answered here, before any store call
        // or allocation for the verification.
        let hash = match key_hash(request.headers(), request.uri()) {
            Ok(hash) => hash,
            Err(err) => return self.reject(err.into(), request),
        };
        let mut options = VerifyOptions::new().client_ip(self.client_ip(&request));
        if let Some(environment) = self.config.environment {
            options = options.require_environment(environment);
        }
        if let Some(timeout) = self.config.store_timeout {
            options = options.store_timeout(timeout);
        }
        // A store that answers at once (the in-memory one, a warm cache) needs
        // no boxed future: the inner service is called right here.
        let later = match self.config.manager.verify_hash_ready(&hash, options) {
            Some(Ready::Done(Ok(who))) => {
                accepted(&who);
                let rate_limit = who.rate_limit();
                request.extensions_mut().insert(who);
                return ResponseFuture {
                    state: State::Inner {
                        future: self.inner.call(request),
                        rate_limit,
                    },
                };
            }
            Some(Ready::Done(Err(err))) => return self.reject(err, request),
            // Found at once, but the rate limiter must be waited on.
            Some(Ready::Later(verdict)) => Some(verdict),
            None => None,
        };
        // The inner service was made ready by `poll_ready`; keep that one and
        // leave a fresh clone behind for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        ResponseFuture {
            state: State::Verifying {
                future: Box::pin(async move {
                    let verdict = match later {
                        Some(verdict) => verdict.await,
                        None => config.manager.verify_hash(&hash, options).await,
                    };
                    match verdict {
                        Ok(who) => {
                            accepted(&who);
                            let rate_limit = who.rate_limit();
                            request.extensions_mut().insert(who);
                            let response = inner.call(request).await?;
                            Ok(with_rate_limit(response, rate_limit).map(Either::Left))
                        }
                        Err(err) => {
                            let headers = std::mem::take(request.headers_mut());
                            Ok(rejected(&err, &config, headers).map(Either::Right))
                        }
                    }
                }),
            },
        }
    }
}

/// Logs a rejection (its code and reason, never the key) and builds its
/// response. A client address inside the trusted-proxy networks is an
/// internal one: the response never quotes it.
/// A gRPC request (`content-type: application/grpc…`) is answered the gRPC
/// way (see [`grpc`]).
fn rejected(err: &AuthError, config: &Config, headers: http::HeaderMap) -> Response<Full<Bytes>> {
    tracing::debug!(code = err.code(), reason = %err, "API key rejected");
    let answer = grpc::Answer::for_request(&headers);
    let internal;
    let err = match err {
        AuthError::IpNotAllowed {
            client_ip: Some(ip),
        } if crate::net::in_networks(&config.trusted_proxies, *ip) => {
            internal = AuthError::IpNotAllowed { client_ip: None };
            &internal
        }
        err => err,
    };
    respond(err, &config.realm, headers, answer)
}

/// `err`'s response, HTTP or gRPC as `answer` says, built in `headers`.
fn respond(
    err: &AuthError,
    realm: &Realm,
    headers: http::HeaderMap,
    answer: grpc::Answer,
) -> Response<Full<Bytes>> {
    let response = err.response_with(realm, headers);
    match answer {
        grpc::Answer::Http => response,
        grpc::Answer::Grpc(content_type) => err.grpc_from(response, content_type),
    }
}

/// Records the key id on the current span (if it declares `key_id`) and logs
/// the acceptance; never the key.
fn accepted(who: &crate::AuthenticatedKey) {
    // When no subscriber takes anything at any level, no span is open to
    // record on and no log is written: this one load says so, where asking
    // for the current span looks up the thread's dispatcher per request.
    if tracing::level_filters::LevelFilter::current() == tracing::level_filters::LevelFilter::OFF {
        return;
    }
    // Only when something listens: reading the id is a memory access of
    // its own for a key an in-memory store keeps (see `StoredKey`).
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("key_id", tracing::field::display(who.id()));
    }
    tracing::debug!(key_id = %who.id(), owner = %who.owner(), "API key accepted");
}

/// Adds the `RateLimit-*` headers for a key that has a limit.
fn with_rate_limit<B>(mut response: Response<B>, status: Option<RateLimitStatus>) -> Response<B> {
    if let Some(status) = status {
        crate::rate_limit::set_headers(
            response.headers_mut(),
            status.limit,
            status.remaining,
            status.reset,
        );
    }
    response
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`ApiKeyService`]: ready at once for a rejection the
    /// layer can decide without waiting, the inner service's own future when
    /// the store answered at once, and a boxed future only for stores that
    /// must be waited on.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Rejected { response: Option<Response<Full<Bytes>>> },
        Inner { #[pin] future: F, rate_limit: Option<RateLimitStatus> },
        Verifying { future: BoxFuture<Result<Response<ResponseBody<B>>, E>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(Either::Right))),
                // A caller bug, as for any future: said at once rather than
                // left to hang a task that waits for a wake-up never coming.
                None => panic!("ResponseFuture polled after completion"),
            },
            StateProj::Inner { future, rate_limit } => future
                .poll(cx)
                .map(|r| r.map(|res| with_rate_limit(res, *rate_limit).map(Either::Left))),
            StateProj::Verifying { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::task::Waker;

    use crate::key::TmKey;

    use async_trait::async_trait;
    use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
    use http::StatusCode;
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;
    use crate::key::KeyHash;
    use crate::key::KeyId;
    use crate::record::{KeyRecord, NewKey};
    use crate::store::{KeyStore, MemoryStore, StoreError, StoreUpdate};

    /// Fails every call: a request that gets a 401 from it was answered
    /// without asking the store.
    struct UnreachableStore;

    fn unreachable<T>() -> Result<T, StoreError> {
        Err(StoreError::backend("the store was called"))
    }

    #[async_trait]
    impl KeyStore for UnreachableStore {
        async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
            unreachable()
        }
        async fn find_by_hash(&self, _: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
            unreachable()
        }
        async fn get(&self, _: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
            unreachable()
        }
        async fn list_by_owner(&self, _: &str) -> Result<Vec<KeyRecord>, StoreError> {
            unreachable()
        }
        async fn update(
            &self,
            _: &KeyId,
            _: &StoreUpdate,
        ) -> Result<Option<KeyRecord>, StoreError> {
            unreachable()
        }
        async fn revoke(
            &self,
            _: &KeyId,
            _: std::time::SystemTime,
        ) -> Result<Option<KeyRecord>, StoreError> {
            unreachable()
        }
    }

    fn request(authorization: Option<&str>) -> Request<String> {
        let mut builder = Request::get("/");
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(String::new()).unwrap()
    }

    fn echo_name() -> impl Service<
        Request<String>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
    > + Clone {
        service_fn(|req: Request<String>| async move {
            let name = req
                .extensions()
                .get::<crate::AuthenticatedKey>()
                .map(|w| w.name().to_owned());
            Ok::<_, Infallible>(Response::new(name.unwrap_or_default()))
        })
    }

    async fn json(response: Response<ResponseBody<String>>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn header_and_format_errors_never_reach_the_store() {
        let layer = ApiKeyLayer::new(KeyManager::new(UnreachableStore));
        let service = ServiceBuilder::new().layer(layer).service(echo_name());
        for (value, code) in [
            (None, "missing_api_key"),
            (Some("Bearer Bearer x"), "malformed_authorization_header"),
            (
                Some("Bearer tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"),
                "invalid_api_key",
            ),
            (Some("Bearer tm_live_short"), "invalid_api_key"),
        ] {
            let response = service.clone().oneshot(request(value)).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{value:?}");
            assert_eq!(json(response).await["code"], code);
        }
        // A well-formed key does reach it, and the failure is a 503.
        let key = TmKey::generate(Environment::Live);
        let value = format!("Bearer {}", key.expose_secret());
        let response = service.oneshot(request(Some(&value))).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn header_rejections_are_ready_at_once() {
        let layer = ApiKeyLayer::new(KeyManager::new(UnreachableStore));
        let mut service = layer.layer(echo_name());
        let mut future = std::pin::pin!(service.call(request(Some("Basic abc"))));
        let mut cx = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(response)) => assert_eq!(response.status(), StatusCode::UNAUTHORIZED),
            _ => panic!("a header rejection needs no async work"),
        }
    }

    #[test]
    #[should_panic(expected = "ResponseFuture polled after completion")]
    fn a_rejection_polled_after_completion_panics_rather_than_hangs() {
        let layer = ApiKeyLayer::new(KeyManager::new(UnreachableStore));
        let mut service = layer.layer(echo_name());
        let mut future = std::pin::pin!(service.call(request(Some("Basic abc"))));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_ready());
        let _ = future.as_mut().poll(&mut cx);
    }

    #[tokio::test]
    async fn a_store_that_answers_at_once_needs_no_waiting() {
        let manager = KeyManager::new(MemoryStore::new());
        let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
        let mut service = ApiKeyLayer::new(manager).layer(echo_name());
        let value = format!("Bearer {}", created.key.expose_secret());
        let mut future = std::pin::pin!(service.call(request(Some(&value))));
        let mut cx = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(response)) => assert_eq!(response.status(), StatusCode::OK),
            _ => panic!("MemoryStore answers at once; the layer should not wait"),
        }
    }

    #[tokio::test]
    async fn the_inner_service_sees_who_called() {
        let manager = KeyManager::new(MemoryStore::new());
        let created = manager
            .create(NewKey::new("acct", "Zapier Integration"))
            .await
            .unwrap();
        let service = ApiKeyLayer::new(manager).layer(echo_name());
        let value = format!("Bearer {}", created.key.expose_secret());
        let response = service.oneshot(request(Some(&value))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "Zapier Integration");
    }

    #[tokio::test]
    async fn the_realm_is_configurable_and_checked() {
        let layer = ApiKeyLayer::new(KeyManager::new(MemoryStore::new())).realm("TrueMail API");
        let response = layer
            .layer(echo_name())
            .oneshot(request(None))
            .await
            .unwrap();
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"TrueMail API\""
        );
        let layer = ApiKeyLayer::new(KeyManager::new(MemoryStore::new()));
        assert!(layer.clone().try_realm("bad\"realm").is_err());
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| layer.realm("bad\\realm")));
        assert!(panicked.is_err());
    }

    #[tokio::test]
    async fn poll_ready_and_errors_come_from_the_inner_service() {
        #[derive(Clone)]
        struct NeverReady;
        impl Service<Request<String>> for NeverReady {
            type Response = Response<String>;
            type Error = &'static str;
            type Future = std::future::Ready<Result<Response<String>, &'static str>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Err("inner not ready"))
            }
            fn call(&mut self, _: Request<String>) -> Self::Future {
                std::future::ready(Err("inner failed"))
            }
        }
        let manager = KeyManager::new(MemoryStore::new());
        let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
        let mut service = ApiKeyLayer::new(manager).layer(NeverReady);
        assert_eq!(service.ready().await.err(), Some("inner not ready"));
        let value = format!("Bearer {}", created.key.expose_secret());
        assert_eq!(
            service.call(request(Some(&value))).await.err(),
            Some("inner failed")
        );
    }

    #[tokio::test]
    async fn builder_settings_are_kept_per_layer() {
        let manager = KeyManager::new(MemoryStore::new());
        let test_key = manager
            .create(NewKey::new("acct", "Dev").environment(Environment::Test))
            .await
            .unwrap();
        let base = ApiKeyLayer::new(manager);
        let live_only = base.clone().require_environment(Environment::Live);
        let value = format!("Bearer {}", test_key.key.expose_secret());
        let ok = base
            .layer(echo_name())
            .oneshot(request(Some(&value)))
            .await
            .unwrap();
        assert_eq!(
            ok.status(),
            StatusCode::OK,
            "configuring a clone leaves the original alone"
        );
        let refused = live_only
            .layer(echo_name())
            .oneshot(request(Some(&value)))
            .await
            .unwrap();
        assert_eq!(json(refused).await["code"], "wrong_environment");
    }
}
