//! A Rust client calling a tm-auth-protected API with hyper-util's client:
//! the key comes from `TRUEMAIL_API_KEY`, `BearerAuthLayer` sends it.
//!
//! ```text
//! cargo run --example axum_server                      # prints a key
//! TRUEMAIL_API_KEY=tm_live_… cargo run --features client --example client
//! TRUEMAIL_API_KEY=tm_live_… cargo run --features client --example client -- http://127.0.0.1:3000/v1/verify live
//! ```
//!
//! The optional second argument names the target's environment (`live` or
//! `test`): a key of the other environment is refused before anything is
//! sent. Prints the server's answer, or exactly what went wrong.

use std::process::ExitCode;

use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tm_auth::client::BearerAuthLayer;
use tm_auth::{Environment, TmKey};
use tower::{Layer, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:3000/v1/verify".to_owned());
    let target = match args.next().as_deref() {
        None => None,
        Some("live") => Some(Environment::Live),
        Some("test") => Some(Environment::Test),
        Some(other) => {
            eprintln!("the target environment is `live` or `test`, not `{other}`");
            return ExitCode::from(2);
        }
    };

    // Never in code, never in a repository: from the environment.
    let key = match TmKey::from_default_env() {
        Ok(key) => key,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let layer = match target {
        Some(target) => match BearerAuthLayer::for_environment(key, target) {
            Ok(layer) => layer,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        },
        None => BearerAuthLayer::new(key),
    };

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = match Request::builder()
        .method(Method::POST)
        .uri(&url)
        .body(Empty::new())
    {
        Ok(request) => request,
        Err(err) => {
            eprintln!("error: {url} is not a URL this client can call: {err}");
            return ExitCode::from(2);
        }
    };
    let response = match layer.layer(client).oneshot(request).await {
        Ok(response) => response,
        Err(err) => {
            eprintln!(
                "error: could not reach {url}: {err}. Is the server running \
                 (cargo run --example axum_server)?"
            );
            return ExitCode::FAILURE;
        }
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            eprintln!("error: the answer from {url} was cut off: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("{status}");
    println!("{}", String::from_utf8_lossy(&body));
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
