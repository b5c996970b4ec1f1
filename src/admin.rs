//! A ready-made key management API (feature `admin`, axum): create, list,
//! edit, revoke and rotate keys, scoped to the owner your own
//! authentication resolves from each request.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `POST /keys` | create (`name`, optional `environment`, `allowed_ips`) | 201 `{key, warning, record}` — the only response that ever holds a key |
//! | `GET /keys` | list the owner's keys, revoked ones included | 200 `{keys: [record]}` |
//! | `PATCH /keys/{id}` | change `name` and/or `allowed_ips`; any other field is refused | 200 `{record}` |
//! | `POST /keys/{id}/revoke` | revoke, at once and for good | 200 `{record}` |
//! | `POST /keys/{id}/rotate` | a new key; the old one keeps working for `grace_period_seconds` (default 86 400, at most 30 days) | 201 `{key, warning, record, previous}` |
//!
//! A record is `{id, name, environment, hint, status, created_at,
//! expires_at, revoked_at, allowed_ips, usage: {requests, rejected,
//! last_used_at, last_used_ip}}`, times in RFC 3339 UTC. Errors are
//! `{"error", "code"}` JSON: 400 for bad input (an invalid CIDR names the
//! entry), 401 when `authorize` refuses, 404 `key_not_found` for an unknown
//! id *and* for another owner's id (it never reveals that a key exists), 409
//! for a revoked or expired key, 415 for a write not sent as
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

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::Router;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use ipnetwork::IpNetwork;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::key::Environment;
use crate::key::KeyId;
use crate::manager::{CreatedKey, KeyManager};
use crate::page::{Page, MAX_PAGE};
use crate::record::{KeyRecord, KeyStatus, KeyUpdate, NewKey};
use crate::usage::KeyUsage;
use crate::ManagerError;

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
}

/// The key management API over `manager`, each request scoped to the owner
/// `authorize` returns. Nest it where your settings live.
pub fn router(manager: KeyManager, authorize: impl Authorize) -> Router {
    let admin = Admin {
        manager,
        authorize: Arc::new(authorize),
    };
    Router::new()
        .route("/keys", post(create).get(list))
        .route("/keys/{id}", patch(edit))
        .route("/keys/{id}/revoke", post(revoke))
        .route("/keys/{id}/rotate", post(rotate))
        .with_state(admin)
}

/// The owner a request acts for.
struct Owner(String);

impl FromRequestParts<Admin> for Owner {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Owner, Problem> {
        match admin.authorize.owner(parts).await {
            Some(owner) => Ok(Owner(owner)),
            None => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Sign in to manage API keys",
            )),
        }
    }
}

/// An error answer: `{"error", "code"}`, and `"hint"` where one helps.
struct Problem {
    status: StatusCode,
    code: &'static str,
    message: String,
    hint: Option<&'static str>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            message: message.into(),
            hint: None,
        }
    }

    fn with_hint(mut self, hint: &'static str) -> Problem {
        self.hint = Some(hint);
        self
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn not_found() -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "No API key with this id",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.message, "code": self.code});
        if let Some(hint) = self.hint {
            body["hint"] = hint.into();
        }
        json(self.status, &body)
    }
}

impl From<ManagerError> for Problem {
    fn from(err: ManagerError) -> Problem {
        match err {
            ManagerError::InvalidName(err) => {
                Problem::bad("invalid_name", format!("Invalid name: {err}"))
            }
            ManagerError::InvalidAllowlist { .. } => {
                Problem::bad("too_many_ip_restrictions", err.to_string())
            }
            ManagerError::TooManyKeys { limit } => Problem::new(
                StatusCode::CONFLICT,
                "too_many_keys",
                format!("This account already has {limit} active API keys, the most it may have"),
            )
            .with_hint(
                "Revoke the keys you no longer use, then create the new one. \
                 (To replace a key, rotating it with a grace period of 0 needs no room.)",
            ),
            ManagerError::InvalidPage { .. } => Problem::bad("invalid_page", err.to_string()),
            ManagerError::NotFound => Problem::not_found(),
            ManagerError::Revoked => {
                Problem::new(StatusCode::CONFLICT, "key_revoked", err.to_string())
            }
            ManagerError::Expired => {
                Problem::new(StatusCode::CONFLICT, "key_expired", err.to_string())
            }
            ManagerError::Store(_) | ManagerError::Randomness(_) => {
                tracing::warn!(error = %err, "tm-auth admin: the key store failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key_store_unavailable",
                    "Service unavailable: try again in a moment",
                )
            }
            other => Problem::bad("invalid_request", other.to_string()),
        }
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A key as the API shows it: never the key itself.
#[derive(Serialize)]
struct View {
    id: String,
    name: String,
    environment: &'static str,
    hint: String,
    status: &'static str,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    allowed_ips: Vec<String>,
    usage: UsageView,
}

#[derive(Serialize)]
struct UsageView {
    requests: u64,
    rejected: u64,
    last_used_at: Option<String>,
    last_used_ip: Option<IpAddr>,
}

impl Admin {
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

fn to_value(view: View) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// A write's body: JSON sent as `application/json`, an object (empty body:
/// `{}`), holding only `allowed` fields.
fn body(
    headers: &HeaderMap,
    bytes: &Bytes,
    allowed: &[&str],
) -> Result<Map<String, Value>, Problem> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json_required",
            "Send the request body as JSON, with Content-Type: application/json",
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(Problem::bad(
            "invalid_json",
            "The body must be a JSON object",
        ));
    };
    if let Some(field) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        // Echoed bounded: the name is the caller's, of any length.
        let field = shortened(field, MAX_ECHO);
        let allowed = allowed
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Problem::bad(
            "field_not_editable",
            format!("`{field}` cannot be set here; the fields accepted are {allowed}"),
        ));
    }
    Ok(fields)
}

fn name_field(fields: &Map<String, Value>) -> Result<Option<String>, Problem> {
    match fields.get("name") {
        None => Ok(None),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(_) => Err(Problem::bad("invalid_name", "`name` must be a string")),
    }
}

/// `allowed_ips`: a list of IPs and CIDR ranges (an empty list: any address).
fn allowlist_field(fields: &Map<String, Value>) -> Result<Option<Vec<IpNetwork>>, Problem> {
    let Some(value) = fields.get("allowed_ips") else {
        return Ok(None);
    };
    let Value::Array(entries) = value else {
        return Err(Problem::bad(
            "invalid_ip_restriction",
            "`allowed_ips` must be a list of IP addresses and CIDR ranges, e.g. [\"203.0.113.7\", \"10.0.0.0/8\"]",
        ));
    };
    let mut networks = Vec::with_capacity(entries.len());
    for entry in entries {
        let text = entry.as_str().map(str::trim).unwrap_or_default();
        let network = text.parse::<IpNetwork>().map_err(|_| {
            Problem::bad(
                "invalid_ip_restriction",
                format!(
                    "`{}` is not an IP address or CIDR range (e.g. 203.0.113.7 or 10.0.0.0/8)",
                    entry_text(entry)
                ),
            )
        })?;
        networks.push(network);
    }
    Ok(Some(networks))
}

/// Most characters of the caller's own input an error message quotes.
const MAX_ECHO: usize = 64;

/// `text` cut to `max` characters, with `…` when it was cut.
fn shortened(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// An entry as the user sent it, shortened for an error message.
fn entry_text(entry: &Value) -> String {
    match entry {
        Value::String(s) => shortened(s, MAX_ECHO),
        other => shortened(&other.to_string(), MAX_ECHO),
    }
}

async fn create(
    State(admin): State<Admin>,
    Owner(owner): Owner,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let fields = body(&headers, &bytes, &["name", "environment", "allowed_ips"])?;
    let Some(name) = name_field(&fields)? else {
        return Err(Problem::bad(
            "invalid_name",
            "A key needs a descriptive name, e.g. \"Production - Main Website\"",
        ));
    };
    let environment = match fields.get("environment") {
        None => Environment::Live,
        Some(Value::String(e)) if e == "live" => Environment::Live,
        Some(Value::String(e)) if e == "test" => Environment::Test,
        Some(_) => {
            return Err(Problem::bad(
                "invalid_environment",
                "`environment` is \"live\" or \"test\"",
            ))
        }
    };
    let mut new = NewKey::new(owner, name).environment(environment);
    if let Some(networks) = allowlist_field(&fields)? {
        new = new.allowed_ips(networks);
    }
    let created = admin.manager.create(new).await?;
    admin.created(created, None).await
}

async fn list(
    State(admin): State<Admin>,
    Owner(owner): Owner,
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
    Owner(owner): Owner,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let record = admin.owned(&owner, &id).await?;
    let fields = body(&headers, &bytes, &["name", "allowed_ips"])?;
    let mut update = KeyUpdate::new();
    if let Some(name) = name_field(&fields)? {
        update = update.name(name);
    }
    if let Some(networks) = allowlist_field(&fields)? {
        update = update.allowed_ips(networks);
    }
    let updated = admin.manager.update(&record.id, update).await?;
    admin.record(&updated).await
}

async fn revoke(
    State(admin): State<Admin>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let record = admin.owned(&owner, &id).await?;
    body(&headers, &bytes, &[])?;
    let revoked = admin.manager.revoke(&record.id).await?;
    admin.record(&revoked).await
}

async fn rotate(
    State(admin): State<Admin>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let record = admin.owned(&owner, &id).await?;
    let fields = body(&headers, &bytes, &["grace_period_seconds"])?;
    let grace = match fields.get("grace_period_seconds") {
        None => DEFAULT_GRACE,
        Some(value) => match value.as_u64().map(Duration::from_secs) {
            Some(grace) if grace <= MAX_GRACE => grace,
            _ => return Err(Problem::bad(
                "invalid_grace_period",
                "`grace_period_seconds` is a whole number of seconds from 0 to 2592000 (30 days)",
            )),
        },
    };
    let created = admin.manager.rotate(&record.id, grace).await?;
    let previous = admin.manager.get(&record.id).await?;
    admin.created(created, Some(&previous)).await
}

/// `at` as RFC 3339 in UTC, to the second (`1970-01-01T00:00:00Z` for a
/// time before the epoch, which no key has).
fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_796_256_000 + 3_723)), "2026-12-03T01:02:03Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }
}
