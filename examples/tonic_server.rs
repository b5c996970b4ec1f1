//! A tonic gRPC server behind `ApiKeyLayer`: tonic's hello-world
//! (`examples/greeter/greeter.proto`) answering only calls that carry a
//! valid key, and greeting the key's owner by the key's name.
//!
//! ```text
//! cargo run --example tonic_server --features tonic
//! TRUEMAIL_API_KEY=tm_test_… cargo run --example tonic_client --features tonic
//! ```
//!
//! It prints three keys it creates: one that works from anywhere, one
//! restricted to 203.0.113.0/24 (refused from here: `PermissionDenied`),
//! and one limited to 2 calls a minute (the third: `ResourceExhausted`).
//! `ADDR` sets the address (127.0.0.1:50051 by default); `KEY_FILE`, if
//! set, also receives the three keys, one a line, in that order.

#[path = "greeter/mod.rs"]
mod greeter;

use std::time::Duration;

use greeter::{GreeterServer, HelloReply};
use tm_auth::{
    ApiKeyLayer, AuthenticatedKey, Environment, KeyManager, MemoryStore, NewKey, RateLimit,
};
use tonic::{Response, Status};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:50051".to_owned());
    let manager = KeyManager::new(MemoryStore::new());
    let open = manager
        .create(NewKey::new("acct_42", "gRPC demo").environment(Environment::Test))
        .await?;
    let restricted = manager
        .create(
            NewKey::new("acct_42", "Office only")
                .environment(Environment::Test)
                .allowed_ips(["203.0.113.0/24".parse()?]),
        )
        .await?;
    let limited = manager
        .create(
            NewKey::new("acct_42", "Two a minute")
                .environment(Environment::Test)
                .rate_limit(RateLimit::new(2, Duration::from_secs(60))?),
        )
        .await?;
    let keys = [&open, &restricted, &limited].map(|created| created.key.expose_secret().to_owned());
    println!("key (any address):            {}", keys[0]);
    println!("key (203.0.113.0/24 only):    {}", keys[1]);
    println!("key (2 calls a minute):       {}", keys[2]);
    if let Ok(path) = std::env::var("KEY_FILE") {
        std::fs::write(path, keys.join("\n") + "\n")?;
    }

    let greeter = GreeterServer::new(|request| {
        // The layer put the verified key in the request's extensions.
        let who = request
            .extensions()
            .get::<AuthenticatedKey>()
            .ok_or_else(|| Status::internal("ApiKeyLayer is not in front of this service"))?;
        let name = &request.get_ref().name;
        Ok(Response::new(HelloReply {
            message: format!(
                "Hello {name}, from key \"{}\" of {}",
                who.name(),
                who.owner()
            ),
        }))
    });

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .layer(ApiKeyLayer::new(manager))
        .add_service(greeter)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await?;
    Ok(())
}
