//! A tonic client calling the `tonic_server` example with the key in
//! `TRUEMAIL_API_KEY`, sent as `authorization: Bearer …` metadata. Prints
//! the greeting, or the gRPC status with the crate's stable code and hint
//! (`tm-auth-code`, `tm-auth-hint` metadata) that a client can branch on.
//!
//! ```text
//! TRUEMAIL_API_KEY=tm_test_… cargo run --example tonic_client --features tonic
//! ```
//!
//! `ADDR` sets the server (127.0.0.1:50051 by default). Exits 0 on a
//! greeting, 1 on a refusal.

#[path = "greeter/mod.rs"]
mod greeter;

use greeter::HelloRequest;
use tonic::metadata::MetadataValue;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:50051".to_owned());
    let key = std::env::var("TRUEMAIL_API_KEY").unwrap_or_default();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut request = tonic::Request::new(HelloRequest {
        name: "tonic".to_owned(),
    });
    if !key.is_empty() {
        // Marked sensitive: never logged or shown by tonic or hyper.
        let mut bearer = MetadataValue::try_from(format!("Bearer {key}"))?;
        bearer.set_sensitive(true);
        request.metadata_mut().insert("authorization", bearer);
    }
    match greeter::say_hello(channel, request).await {
        Ok(reply) => {
            println!("{}", reply.get_ref().message);
            Ok(())
        }
        Err(status) => {
            let metadata = status.metadata();
            let text = |name: &str| {
                metadata
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            println!("refused: {:?}: {}", status.code(), status.message());
            println!("  tm-auth-code: {}", text("tm-auth-code"));
            println!("  tm-auth-hint: {}", text("tm-auth-hint"));
            std::process::exit(1);
        }
    }
}
