//! Plain hyper 1 + hyper-util, no framework: `ApiKeyLayer` around a
//! `service_fn`, with the TCP peer inserted as `PeerAddr` per connection.
//!
//! ```text
//! cargo run --example hyper_server
//! ```
//!
//! It listens on 127.0.0.1:3000 (set `ADDR` to change it), creates a key
//! restricted to 127.0.0.1, and prints a `curl` line. Ctrl-C stops it.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tm_auth::{ApiKeyLayer, AuthenticatedKey, KeyManager, MemoryStore, NewKey, PeerAddr};
use tower::ServiceBuilder;

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let greeting = match request.extensions().get::<AuthenticatedKey>() {
        Some(who) => format!("hello, {} ({})\n", who.name(), who.owner()),
        None => "unreachable: the layer only calls us for authenticated requests\n".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(greeting))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager
        .create(
            NewKey::new("acct_demo", "Office Backend")
                .allowed_ips(["127.0.0.1/32".parse()?, "::1/128".parse()?]),
        )
        .await?;
    let layer = ApiKeyLayer::new(manager);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("Listening on http://{local}");
    println!(
        "Your API key (shown once, usable from 127.0.0.1 only): {}",
        created.key.expose_secret()
    );
    println!(
        "Try:\n  curl -i http://{local}/ -H 'Authorization: Bearer {}'",
        created.key.expose_secret()
    );

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let service = ServiceBuilder::new()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                request
            })
            .layer(layer.clone())
            .service_fn(handle);
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(err) = connection.await {
                eprintln!("connection from {peer}: {err}");
            }
        });
    }
}
