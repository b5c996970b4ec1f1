//! tonic's hello-world service (`greeter.proto` beside this file), written
//! out by hand: the two messages as prost structs and the server and client
//! glue that `tonic-prost-build` would generate. Written rather than
//! generated so the examples and tests build on a fresh machine with no
//! `protoc` (Debian's `protobuf-compiler`) and no build script; a client
//! generated from `greeter.proto` speaks to this server unchanged.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::{Request, Response, Status};

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The one method's path.
pub(crate) const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

type Greet = dyn Fn(Request<HelloRequest>) -> Result<Response<HelloReply>, Status> + Send + Sync;

/// The `helloworld.Greeter` service, answering `SayHello` with `greet`.
#[derive(Clone)]
pub(crate) struct GreeterServer {
    greet: Arc<Greet>,
}

impl GreeterServer {
    pub(crate) fn new(
        greet: impl Fn(Request<HelloRequest>) -> Result<Response<HelloReply>, Status>
            + Send
            + Sync
            + 'static,
    ) -> GreeterServer {
        GreeterServer {
            greet: Arc::new(greet),
        }
    }
}

impl tonic::server::NamedService for GreeterServer {
    const NAME: &'static str = "helloworld.Greeter";
}

impl<B> tower::Service<http::Request<B>> for GreeterServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let greet = Arc::clone(&self.greet);
        Box::pin(async move {
            if request.uri().path() != SAY_HELLO {
                return Ok(Status::unimplemented("").into_http());
            }
            let method = tower::service_fn(move |req| std::future::ready(greet(req)));
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// Calls `SayHello` on `channel`.
pub(crate) async fn say_hello(
    channel: tonic::transport::Channel,
    request: Request<HelloRequest>,
) -> Result<Response<HelloReply>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(format!("the server is not ready: {err}")))?;
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(SAY_HELLO),
        tonic_prost::ProstCodec::default(),
    )
    .await
}
