//! API-key authentication middleware for services built on
//! [tower](https://docs.rs/tower) — axum, hyper, tonic.
//!
//! `tm-auth` gives an API provider a complete API-key model and wires it into
//! any tower stack as one [`ApiKeyLayer`]:
//!
//! - **Keys** ([`TmKey`]): `tm_live_…` / `tm_test_…`, 40 characters, about
//!   155 random bits and a CRC-32 checksum that catches typos before any
//!   store is asked. Shown once at creation, stored only as a SHA-256
//!   [`KeyHash`]; never printed by `Debug` or `Display`, compared in
//!   constant time, zeroed on drop.
//! - **Management** ([`KeyManager`]): many named keys per account, edits of
//!   name, IP restrictions and scopes, revocation that works on the very
//!   next request, rotation with a grace period, and an [`audit`] trail of
//!   every change: who, from where, when, before and after.
//! - **Scopes** ([`Scope`], [`RequireScopeLayer`]): what a key may do; a
//!   route that needs a scope the key lacks answers 403
//!   `insufficient_scope`.
//! - **Storage** ([`KeyStore`]): the in-memory [`MemoryStore`], or your own.
//! - **Usage** ([`usage`]): per-key counts, per-minute history, spike and
//!   new-address alerts, per-key rate limits ([`RateLimit`]) answered with 429.
//! - **HTTP** ([`ApiKeyLayer`]): `Authorization: Bearer tm_live_…`, JSON
//!   errors with a stable `code` and a `hint`, RFC 6750 `WWW-Authenticate`,
//!   IP allowlists that honour only trusted proxies.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tm_auth::{ApiKeyLayer, Environment, KeyManager, MemoryStore, NewKey};
//!
//! let manager = KeyManager::new(MemoryStore::new());
//! let created = manager
//!     .create(NewKey::new("acct_42", "Production - Main Website"))
//!     .await?;
//! // Show this once; only its hash is stored.
//! let secret = created.key.expose_secret();
//! assert!(secret.starts_with("tm_live_"));
//!
//! let who = manager.verify(secret, None).await?;
//! assert_eq!(who.environment(), Environment::Live);
//!
//! // Wrap any tower service (an axum Router, a hyper service, tonic):
//! let layer = ApiKeyLayer::new(manager).trusted_proxies(["10.0.0.0/8".parse()?]);
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! - `axum`: [`AuthenticatedKey`] as an axum extractor, and the client IP
//!   read from axum's `ConnectInfo<SocketAddr>`.
//! - `serde`: `Serialize`/`Deserialize` for ids, hints, environments,
//!   statuses, scopes and audit fields.
//! - `admin`: `admin::router`, a JSON key management API (axum) with the
//!   audit trail.
//! - `sqlite`: `store::sqlite::SqliteStore`, keys in an SQLite file.
//! - `postgres`: `store::postgres::PostgresStore`, keys shared by many servers.
//! - `redis`: `redis_limiter::RedisLimiter`, one rate limit per key across
//!   many servers, from leases of quota taken on Redis.
//! - `conformance`: `store::conformance`, the behavioural checks every
//!   [`KeyStore`] must pass, for your own backends' tests.
//!
//! # What is guaranteed, and what is not
//!
//! - A key's secret never appears in a response, an error, a log line or a
//!   `Debug` output of this crate. Hints show the prefix and the last four
//!   characters, which are checksum characters.
//! - Verification fails closed: a store error or timeout answers 503, never
//!   2xx and never 401.
//! - With [`MemoryStore`], a revocation is seen by every verification that
//!   starts after [`KeyManager::revoke`] returns.
//! - Management calls by id are not scoped to an owner; check
//!   [`KeyRecord::owner`] before exposing them to key holders.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin")]
pub mod admin;
pub mod audit;
#[cfg(feature = "client")]
pub mod client;
pub mod clock;
mod error;
pub mod header;
mod key;
mod limits;
mod manager;
pub mod middleware;
mod net;
mod page;
mod rate_limit;
mod record;
#[cfg(feature = "redis")]
pub mod redis_limiter;
#[cfg(feature = "client")]
pub mod scan;
mod scope;
pub mod store;
pub mod usage;
mod verify;

pub use error::{AuthError, ManagerError};
pub use header::{BearerError, HeaderError, MisplacedKey};
pub use key::{
    Environment, InvalidHint, InvalidKeyId, KeyFormatError, KeyHash, KeyHint, KeyId,
    RandomnessError, TmKey, UnknownEnvironment, KEY_LEN,
};
pub use limits::{KeyLimits, DEFAULT_ACTIVE_KEYS_PER_OWNER, DEFAULT_ALLOWED_IPS_PER_KEY};
pub use manager::{Acting, CreatedKey, KeyManager, KeyManagerBuilder, DEFAULT_STORE_TIMEOUT};
pub use middleware::{
    ApiKeyLayer, ApiKeyService, ClientIpHeader, InvalidRealm, PeerAddr, Realm, RequireScope,
    RequireScopeFuture, RequireScopeLayer, ResponseBody, ResponseFuture,
};
pub use page::{KeyPage, Page, MAX_PAGE};
pub use rate_limit::{
    Admission, AdmissionFuture, InProcessRateLimiter, InvalidRateLimit, RateLimit, RateLimitStatus,
    RateLimiter, RATE_LIMIT_WINDOWS,
};
pub use record::{KeyRecord, KeyStatus, KeyUpdate, NewKey, TextError, MAX_TEXT_LEN};
pub use scope::{Scope, ScopeError, MAX_SCOPES_PER_KEY, MAX_SCOPE_LEN};
pub use store::{KeyStore, MemoryStore, StoreError, UsageStore};
pub use usage::{KeyUsage, UsageConfig, UsageObserver, UsageTask};
pub use verify::{AuthenticatedKey, VerifyOptions};

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
