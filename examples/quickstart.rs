//! The whole life of an API key, on the in-memory store: no server, no setup.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Creates a production and a development key for one account, verifies a
//! request, restricts a key to an IP range and shows the rejection, rotates
//! a key with a grace period, revokes one, and prints each error's code and
//! hint as an API client would see them.

use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};

use tm_auth::{
    ApiKeyLayer, AuthError, AuthenticatedKey, Environment, KeyManager, KeyStatus, KeyUpdate,
    MemoryStore, NewKey, RateLimit,
};

fn show(err: &AuthError) {
    println!(
        "   -> {} {}  code: {}",
        err.status().as_u16(),
        err.message(),
        err.code()
    );
    println!("      hint: {}", err.hint());
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let manager = KeyManager::new(MemoryStore::new());
    let office: IpAddr = "203.0.113.9".parse()?;
    let elsewhere: IpAddr = "198.51.100.1".parse()?;

    println!("1. Create keys for account acct_42. Each key is shown once; only its SHA-256 hash is stored.");
    let production = manager
        .create(NewKey::new("acct_42", "Production - Main Website"))
        .await?;
    let development = manager
        .create(
            NewKey::new("acct_42", "Development - Local Testing").environment(Environment::Test),
        )
        .await?;
    println!(
        "   {:<28} {}",
        production.record.name,
        production.key.expose_secret()
    );
    println!(
        "   {:<28} {}",
        development.record.name,
        development.key.expose_secret()
    );
    println!("   (Debug never shows the secret: {:?})", production.key);

    println!("\n2. A request sends `Authorization: Bearer <key>`; the server verifies it.");
    let who = manager
        .verify(production.key.expose_secret(), Some(elsewhere))
        .await?;
    println!(
        "   -> accepted: {} / {} ({} key, id {})",
        who.owner(),
        who.name(),
        who.environment(),
        who.id()
    );

    println!("\n3. A key copied with one character changed is caught by its checksum, before any lookup.");
    let mut typo = production.key.expose_secret().to_owned();
    let replacement = if typo.ends_with('A') { "B" } else { "A" };
    typo.replace_range(39..40, replacement);
    if let Err(err) = manager.verify(&typo, None).await {
        show(&err);
    }

    println!("\n4. Edit the development key: rename it and allow only the office network.");
    let edited = manager
        .update(
            &development.record.id,
            KeyUpdate::new()
                .name("Development - Office")
                .allowed_ips(["203.0.113.0/24".parse()?]),
        )
        .await?;
    let allowed: Vec<String> = edited.allowed_ips.iter().map(ToString::to_string).collect();
    println!(
        "   name: {}, allowed from: {}",
        edited.name,
        allowed.join(", ")
    );
    println!("   from {office}:");
    let who = manager
        .verify(development.key.expose_secret(), Some(office))
        .await?;
    println!("   -> accepted: {}", who.name());
    println!("   from {elsewhere}:");
    if let Err(err) = manager
        .verify(development.key.expose_secret(), Some(elsewhere))
        .await
    {
        show(&err);
    }

    println!("\n5. Rotate the production key with a one-hour grace period.");
    let rotated = manager
        .rotate(&production.record.id, Duration::from_secs(3600))
        .await?;
    println!("   new key: {}", rotated.key.expose_secret());
    let old = manager.get(&production.record.id).await?;
    let still_works = manager
        .verify(production.key.expose_secret(), None)
        .await
        .is_ok();
    println!(
        "   the old key ({}) still works during the grace period: {still_works}",
        old.hint
    );

    println!("\n6. Revoke the old production key: the very next request fails, for good.");
    let revoked = manager.revoke(&production.record.id).await?;
    println!("   status: {:?}", revoked.status());
    if let Err(err) = manager.verify(production.key.expose_secret(), None).await {
        show(&err);
    }

    println!("\n7. The account's keys, oldest first (revoked ones stay listed):");
    for record in manager.list("acct_42").await? {
        let status = match record.status() {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        };
        println!(
            "   {:<28} {}  {:<8} {}",
            record.name, record.hint, status, record.id
        );
    }

    println!(
        "\n8. The same checks over HTTP: ApiKeyLayer wraps any tower service (axum, hyper, tonic)."
    );
    let service = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(manager.clone()))
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let who = req
                .extensions()
                .get::<AuthenticatedKey>()
                .map(|w| w.name().to_owned());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "hello, {}",
                who.unwrap_or_default()
            )))))
        });
    let good = format!("Bearer {}", rotated.key.expose_secret());
    let doubled = format!("Bearer Bearer {}", rotated.key.expose_secret());
    for (label, header) in [
        ("no Authorization header", None),
        ("`Bearer Bearer <key>`", Some(doubled.as_str())),
        ("`Bearer <key>`", Some(good.as_str())),
    ] {
        let mut request = Request::post("/v1/verify");
        if let Some(value) = header {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let response = service
            .clone()
            .oneshot(request.body(Full::new(Bytes::new()))?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "   {label}:\n   -> {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    println!("\n9. Usage of the production key, as a dashboard would show it:");
    let usage = manager.usage(&rotated.record.id).await?;
    let last_used = usage.last_used_at.map_or("never".to_owned(), |at| {
        format!("{} ms ago", at.elapsed().unwrap_or_default().as_millis())
    });
    println!(
        "   {} successful requests, {} rejected, last used {last_used}",
        usage.requests, usage.rejected
    );
    let this_minute = usage.per_minute.last().map_or(0, |m| m.requests);
    println!("   this minute: {this_minute} requests");

    println!("\n10. A plan limit set by the provider: 2 requests per minute.");
    let plan = RateLimit::new(2, Duration::from_secs(60))?;
    let limited = manager
        .create(NewKey::new("acct_42", "Zapier Integration").rate_limit(plan))
        .await?;
    for attempt in 1..=3 {
        match manager.verify(limited.key.expose_secret(), None).await {
            Ok(who) => {
                let left = who.rate_limit().map_or(0, |r| r.remaining);
                println!("   request {attempt}: accepted, {left} left this minute");
            }
            Err(err) => show(&err),
        }
    }
    Ok(())
}
