//! A ready-made key management API (feature `admin`, axum): create, list,
//! edit, revoke and rotate keys, scoped to the owner your own
//! authentication resolves from each request.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `POST /keys` | create (`name`, optional `environment`, `allowed_ips`, `scopes`) | 201 `{key, warning, record}` — the only response that ever holds a key |
//! | `GET /keys?limit=&after=` | a page of the owner's keys, oldest first, revoked ones included (100 a page unless `limit` says otherwise, at most 1 000; `after` is the previous page's `next`) | 200 `{keys: [record], next}` |
//! | `PATCH /keys/{id}` | change `name`, `allowed_ips` and/or `scopes`; any other field is refused | 200 `{record}` |
//! | `POST /keys/{id}/revoke` | revoke, at once and for good | 200 `{record}` |
//! | `POST /keys/{id}/rotate` | a new key; the old one keeps working for `grace_period_seconds` (default 86 400, at most 30 days) | 201 `{key, warning, record, previous}` |
//! | `GET /audit?limit=&after=&key=` | a page of the owner's audit trail, oldest first (paged like `/keys`; `key` keeps one key's events) | 200 `{events: [event], next}` |
//! | `GET /scopes` | the scopes keys may be given, as the router was told them (empty: any valid scope) | 200 `{scopes}` |
//!
//! A record is `{id, name, environment, hint, status, created_at,
//! expires_at, revoked_at, allowed_ips, scopes, usage: {requests, rejected,
//! last_used_at, last_used_ip}}`, times in RFC 3339 UTC. An event is `{id,
//! at, at_ms, key_id, new_key_id, action, outcome, reason, actor,
//! client_ip, changes: [{field, before, after}]}`: every change made
//! through the router names the actor [`Authorize::actor`] gives and the
//! caller's address (the TCP peer from axum's `ConnectInfo` or a
//! [`PeerAddr`](crate::PeerAddr)). Errors are
//! `{"error", "code"}` JSON: 400 for bad input (an invalid CIDR names the
//! entry), 401 when `authorize` refuses, 404 `key_not_found` for an unknown
//! id *and* for another owner's id (it never reveals that a key exists), 409
//! for a revoked or expired key and for an owner at its limit of active
//! keys (`too_many_keys`), 415 for a write not sent as
//! `application/json` (which a browser cannot send cross-site without a
//! CORS preflight: a defence against cross-site request forgery when your
//! `authorize` reads a cookie), 503 when the store fails.
//! `openapi/admin.json` describes it all.
//!
//! ```
//! use tm_auth::admin;
//! use tm_auth::{KeyManager, MemoryStore};
//!
//! let manager = KeyManager::new(MemoryStore::new());
//! // Your own login decides who is asking: here, a header set by your gateway.
//! let keys = admin::router(manager, |parts: &http::request::Parts| {
//!     parts
//!         .headers
//!         .get("x-account-id")
//!         .and_then(|v| v.to_str().ok())
//!         .map(str::to_owned)
//! });
//! let app: axum::Router = axum::Router::new().nest("/settings/api", keys);
//! # let _ = app;
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{FromRequestParts, Path, State};
use axum::response::Response;
use axum::routing::{get, patch, post};
use axum::Router;
use http::header::CACHE_CONTROL;
use http::request::Parts;
use http::{HeaderValue, StatusCode, Uri};
use serde_json::Map;

use crate::audit::{Actor, AuditId, AuditQuery, MAX_AUDIT_PAGE};
use crate::key::Environment;
use crate::key::KeyId;
use crate::manager::{Acting, CreatedKey, KeyManager};
use crate::page::{Page, MAX_PAGE};
use crate::record::{KeyRecord, KeyStatus, KeyUpdate, NewKey};
use crate::scope::Scope;
use crate::usage::KeyUsage;
use crate::ManagerError;

mod body;
mod problem;
mod view;

use body::{Allowlist, CreateKey, EditKey, Grace, Json, Name, RevokeKey, RotateKey, Scopes};
use problem::{json, Problem};
use view::{rfc3339, to_value, EventView, UsageView, View};

/// Keys on a page of `GET /keys` when no `limit` is given.
pub const DEFAULT_PAGE: usize = 100;

/// Rotation's grace period when none is given: a day.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest grace period accepted: 30 days.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Decides whose keys a request may manage: the owner, or `None` to answer
/// 401. Implement it over your own login; any
/// `Fn(&Parts) -> Option<String>` closure already is one.
#[async_trait]
pub trait Authorize: Send + Sync + 'static {
    /// The owner the request acts for, or `None` if it may not manage keys.
    async fn owner(&self, parts: &Parts) -> Option<String>;

    /// Who acts, as the audit trail names them: by default the owner.
    /// Override it to name the signed-in user (say, `alice@example.com`
    /// acting for `acct_42`). A name the audit trail cannot hold (empty,
    /// over 100 characters, control characters) is replaced by the owner.
    async fn actor(&self, parts: &Parts, owner: &str) -> String {
        let _ = parts;
        owner.to_owned()
    }
}

/// What the router is told besides the manager and [`Authorize`].
///
/// ```
/// use tm_auth::admin::{self, AdminConfig};
/// use tm_auth::{KeyManager, MemoryStore, Scope};
///
/// let config = AdminConfig::new()
///     .scopes([Scope::from_static("emails:verify"), Scope::from_static("lists:read")]);
/// let keys = admin::router_with(KeyManager::new(MemoryStore::new()), |_: &http::request::Parts| {
///     Some("acct_42".to_owned())
/// }, config);
/// # let _ = keys;
/// ```
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    scopes: Vec<Scope>,
}

impl AdminConfig {
    /// Every scope valid; see [`scopes`](AdminConfig::scopes).
    pub fn new() -> AdminConfig {
        AdminConfig::default()
    }

    /// The scopes keys may be given (what your routes require): a create
    /// or an edit naming any other is refused with 400 `unknown_scope`,
    /// and `GET /scopes` lists them for a dashboard's picker. Without a
    /// list, any valid scope is accepted.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = Scope>) -> AdminConfig {
        let mut scopes: Vec<Scope> = scopes.into_iter().collect();
        scopes.sort_unstable();
        scopes.dedup();
        self.scopes = scopes;
        self
    }
}

#[async_trait]
impl<F> Authorize for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    async fn owner(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

#[derive(Clone)]
struct Admin {
    manager: KeyManager,
    authorize: Arc<dyn Authorize>,
    config: Arc<AdminConfig>,
}

/// The key management API over `manager`, each request scoped to the owner
/// `authorize` returns. Nest it where your settings live.
pub fn router(manager: KeyManager, authorize: impl Authorize) -> Router {
    router_with(manager, authorize, AdminConfig::new())
}

/// [`router`], told more by `config`: the scopes keys may be given.
pub fn router_with(manager: KeyManager, authorize: impl Authorize, config: AdminConfig) -> Router {
    let admin = Admin {
        manager,
        authorize: Arc::new(authorize),
        config: Arc::new(config),
    };
    Router::new()
        .route("/keys", post(create).get(list))
        .route("/keys/{id}", patch(edit))
        .route("/keys/{id}/revoke", post(revoke))
        .route("/keys/{id}/rotate", post(rotate))
        .route("/audit", get(audit))
        .route("/scopes", get(scopes))
        .with_state(admin)
}

/// The owner a request acts for, and who acts, from where.
struct Owner {
    owner: String,
    actor: Actor,
}

impl FromRequestParts<Admin> for Owner {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Owner, Problem> {
        let Some(owner) = admin.authorize.owner(parts).await else {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Sign in to manage API keys",
            ));
        };
        let peer = parts
            .extensions
            .get::<crate::PeerAddr>()
            .map(|peer| peer.0)
            .or_else(|| {
                parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|info| info.0)
            })
            .map(|addr| addr.ip());
        let name = admin.authorize.actor(parts, &owner).await;
        // An owner id that is not valid text can own no key either.
        let actor = Actor::new(name)
            .or_else(|_| Actor::new(owner.clone()))
            .map_err(|err| Problem::bad("invalid_owner", format!("Invalid account id: {err}")))?
            .client_ip(peer);
        Ok(Owner { owner, actor })
    }
}

impl Owner {
    /// The manager, acting as this caller.
    fn acting<'a>(&self, manager: &'a KeyManager) -> Acting<'a> {
        manager.acting(self.actor.clone())
    }
}

impl Admin {
    /// Refuses a scope outside the router's list, when it has one.
    fn known_scopes(&self, scopes: &[String]) -> Result<(), Problem> {
        // An invalid scope is reported as such, whatever the list.
        crate::scope::scope_set(scopes).map_err(ManagerError::InvalidScope)?;
        let known = &self.config.scopes;
        if known.is_empty() {
            return Ok(());
        }
        match scopes
            .iter()
            .find(|scope| known.binary_search_by(|k| k.as_str().cmp(scope)).is_err())
        {
            Some(unknown) => Err(Problem::bad(
                "unknown_scope",
                format!(
                    "`{}` is not a scope of this API; the scopes are {}",
                    problem::shortened(unknown, problem::MAX_ECHO),
                    known
                        .iter()
                        .map(Scope::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    async fn view(&self, record: &KeyRecord) -> Result<View, Problem> {
        let usage = self.manager.usage(&record.id).await?;
        Ok(self.view_with(record, Some(&usage)))
    }

    /// `record` with `usage` (none: nothing counted yet).
    fn view_with(&self, record: &KeyRecord, usage: Option<&KeyUsage>) -> View {
        View {
            id: record.id.to_string(),
            name: record.name.clone(),
            environment: record.environment.as_str(),
            hint: record.hint.to_string(),
            status: match record.status_at(self.manager.now()) {
                KeyStatus::Active => "active",
                KeyStatus::Expired => "expired",
                KeyStatus::Revoked => "revoked",
            },
            created_at: rfc3339(record.created_at),
            expires_at: record.expires_at.map(rfc3339),
            revoked_at: record.revoked_at.map(rfc3339),
            allowed_ips: record.allowed_ips.iter().map(ToString::to_string).collect(),
            scopes: record.scopes.iter().map(ToString::to_string).collect(),
            usage: UsageView {
                requests: usage.map_or(0, |u| u.requests),
                rejected: usage.map_or(0, |u| u.rejected),
                last_used_at: usage.and_then(|u| u.last_used_at).map(rfc3339),
                last_used_ip: usage.and_then(|u| u.last_used_ip),
            },
        }
    }

    /// The owner's key with this id; 404 for a malformed id, an unknown one
    /// and another owner's alike.
    async fn owned(&self, owner: &str, id: &str) -> Result<KeyRecord, Problem> {
        let id: KeyId = id.parse().map_err(|_| Problem::not_found())?;
        match self.manager.get(&id).await {
            Ok(record) if record.owner == owner => Ok(record),
            Ok(_) | Err(ManagerError::NotFound) => Err(Problem::not_found()),
            Err(err) => Err(err.into()),
        }
    }

    /// 200 `{record}`: the answer to an edit or a revocation.
    async fn record(&self, record: &KeyRecord) -> Result<Response, Problem> {
        let view = self.view(record).await?;
        Ok(json(StatusCode::OK, &serde_json::json!({ "record": view })))
    }

    async fn created(
        &self,
        created: CreatedKey,
        previous: Option<&KeyRecord>,
    ) -> Result<Response, Problem> {
        let mut body = Map::new();
        body.insert("key".into(), created.key.expose_secret().into());
        body.insert(
            "warning".into(),
            "Copy this key now: it is shown only once and cannot be shown again.".into(),
        );
        body.insert("record".into(), to_value(self.view(&created.record).await?));
        if let Some(previous) = previous {
            body.insert("previous".into(), to_value(self.view(previous).await?));
        }
        let mut response = json(StatusCode::CREATED, &body);
        // The key must not linger in any cache on the way.
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

async fn create(
    State(admin): State<Admin>,
    caller: Owner,
    Json(body): Json<CreateKey>,
) -> Result<Response, Problem> {
    let owner = caller.owner.clone();
    let Some(Name(name)) = body.name.value()? else {
        return Err(Problem::bad(
            "invalid_name",
            "A key needs a descriptive name, e.g. \"Production - Main Website\"",
        ));
    };
    let environment = body.environment.value()?.unwrap_or(Environment::Live);
    let mut new = NewKey::new(owner, name).environment(environment);
    if let Some(Allowlist(networks)) = body.allowed_ips.value()? {
        new = new.allowed_ips(networks);
    }
    if let Some(Scopes(scopes)) = body.scopes.value()? {
        admin.known_scopes(&scopes)?;
        new = new.scopes(scopes);
    }
    let created = caller.acting(&admin.manager).create(new).await?;
    admin.created(created, None).await
}

async fn list(
    State(admin): State<Admin>,
    Owner { owner, .. }: Owner,
    uri: Uri,
) -> Result<Response, Problem> {
    let page = page_query(uri.query().unwrap_or_default())?;
    let page = admin.manager.list_page(&owner, page).await?;
    let ids: Vec<KeyId> = page.iter().map(|record| record.id).collect();
    // One store call for the whole page's usage.
    let usage = admin.manager.usage_batch(&ids).await?;
    let keys: Vec<View> = page
        .iter()
        .zip(usage)
        .map(|(record, usage)| admin.view_with(record, usage.as_ref()))
        .collect();
    let next = page.next.map(|id| id.to_string());
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "keys": keys, "next": next }),
    ))
}

/// `limit` (1 to 1 000, default [`DEFAULT_PAGE`]) and `after` (a key id,
/// the previous page's `next`) from `GET /keys`'s query. Other parameters
/// are ignored.
fn page_query(query: &str) -> Result<Page, Problem> {
    let mut page = Page::first(DEFAULT_PAGE);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                page.limit = match value.parse::<usize>() {
                    Ok(limit) if (1..=MAX_PAGE).contains(&limit) => limit,
                    _ => {
                        return Err(Problem::bad(
                            "invalid_page",
                            format!("`limit` is a whole number from 1 to {MAX_PAGE}"),
                        ))
                    }
                }
            }
            "after" => {
                page.after = Some(value.parse().map_err(|_| {
                    Problem::bad(
                        "invalid_page",
                        "`after` is a key id: the `next` of the previous page",
                    )
                })?)
            }
            _ => {}
        }
    }
    Ok(page)
}

async fn edit(
    State(admin): State<Admin>,
    caller: Owner,
    Path(id): Path<String>,
    Json(body): Json<EditKey>,
) -> Result<Response, Problem> {
    let record = admin.owned(&caller.owner, &id).await?;
    let mut update = KeyUpdate::new();
    if let Some(Name(name)) = body.name.value()? {
        update = update.name(name);
    }
    if let Some(Allowlist(networks)) = body.allowed_ips.value()? {
        update = update.allowed_ips(networks);
    }
    if let Some(Scopes(scopes)) = body.scopes.value()? {
        admin.known_scopes(&scopes)?;
        update = update.scopes(scopes);
    }
    let updated = caller
        .acting(&admin.manager)
        .update(&record.id, update)
        .await?;
    admin.record(&updated).await
}

async fn revoke(
    State(admin): State<Admin>,
    caller: Owner,
    Path(id): Path<String>,
    Json(RevokeKey {}): Json<RevokeKey>,
) -> Result<Response, Problem> {
    let record = admin.owned(&caller.owner, &id).await?;
    let revoked = caller.acting(&admin.manager).revoke(&record.id).await?;
    admin.record(&revoked).await
}

async fn rotate(
    State(admin): State<Admin>,
    caller: Owner,
    Path(id): Path<String>,
    Json(body): Json<RotateKey>,
) -> Result<Response, Problem> {
    let record = admin.owned(&caller.owner, &id).await?;
    let grace = body
        .grace_period_seconds
        .value()?
        .map_or(DEFAULT_GRACE, |Grace(grace)| grace);
    let created = caller
        .acting(&admin.manager)
        .rotate(&record.id, grace)
        .await?;
    let previous = admin.manager.get(&record.id).await?;
    admin.created(created, Some(&previous)).await
}

async fn audit(
    State(admin): State<Admin>,
    Owner { owner, .. }: Owner,
    uri: Uri,
) -> Result<Response, Problem> {
    let query = audit_query(uri.query().unwrap_or_default())?;
    let page = admin.manager.audit(&owner, query).await?;
    let next = page.next.map(|id| id.0);
    let events: Vec<EventView> = page.events.into_iter().map(EventView::new).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "events": events, "next": next }),
    ))
}

/// `limit` (1 to 1 000, default [`DEFAULT_PAGE`]), `after` (an event id,
/// the previous page's `next`) and `key` (a key id) from `GET /audit`'s
/// query. Other parameters are ignored.
fn audit_query(query: &str) -> Result<AuditQuery, Problem> {
    let mut audit = AuditQuery::first(DEFAULT_PAGE);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                audit.limit = match value.parse::<usize>() {
                    Ok(limit) if (1..=MAX_AUDIT_PAGE).contains(&limit) => limit,
                    _ => {
                        return Err(Problem::bad(
                            "invalid_page",
                            format!("`limit` is a whole number from 1 to {MAX_AUDIT_PAGE}"),
                        ))
                    }
                }
            }
            "after" => {
                audit.after = Some(AuditId(value.parse().map_err(|_| {
                    Problem::bad(
                        "invalid_page",
                        "`after` is an event id: the `next` of the previous page",
                    )
                })?))
            }
            "key" => {
                audit.key = Some(
                    value
                        .parse()
                        .map_err(|_| Problem::bad("invalid_key_id", "`key` is a key id"))?,
                )
            }
            _ => {}
        }
    }
    Ok(audit)
}

async fn scopes(State(admin): State<Admin>, _: Owner) -> Response {
    let scopes: Vec<&str> = admin.config.scopes.iter().map(Scope::as_str).collect();
    json(StatusCode::OK, &serde_json::json!({ "scopes": scopes }))
}
