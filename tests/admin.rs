//! The admin router (feature `admin`) through `oneshot`: every endpoint and
//! every error, and `openapi/admin.json` kept true against real responses.
#![cfg(feature = "admin")]

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tm_auth::{admin, KeyManager, MemoryStore};
use tower::ServiceExt;

/// The routes the admin router serves, as `(method, path)`: what
/// `openapi/admin.json` must describe.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/keys"),
    ("get", "/keys"),
    ("patch", "/keys/{id}"),
    ("post", "/keys/{id}/revoke"),
    ("post", "/keys/{id}/rotate"),
    ("get", "/audit"),
    ("get", "/scopes"),
];

/// A router whose `authorize` reads the owner from `x-owner`.
fn app() -> (Router, KeyManager) {
    let manager = KeyManager::new(MemoryStore::new());
    let router = admin::router(manager.clone(), |parts: &http::request::Parts| {
        parts
            .headers
            .get("x-owner")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    (router, manager)
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    json: Value,
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    owner: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(owner) = owner {
        request = request.header("x-owner", owner);
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        json,
    }
}

fn code(reply: &Reply) -> &str {
    reply.json["code"].as_str().unwrap_or("")
}

async fn create(app: &Router, owner: &str, name: &str) -> Reply {
    let reply = call(
        app,
        "POST",
        "/keys",
        Some(owner),
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.json);
    reply
}

#[tokio::test]
async fn create_shows_the_key_once_and_list_never_does() {
    let (app, manager) = app();
    let created = call(
        &app,
        "POST",
        "/keys",
        Some("acct"),
        Some(json!({"name": "Production - Main Website", "environment": "test", "allowed_ips": ["203.0.113.7", "10.0.0.0/8"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.headers["cache-control"], "no-store");
    let key = created.json["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("tm_test_"));
    assert!(created.json["warning"]
        .as_str()
        .unwrap()
        .contains("only once"));
    let record = &created.json["record"];
    assert_eq!(record["name"], "Production - Main Website");
    assert_eq!(record["environment"], "test");
    assert_eq!(record["status"], "active");
    assert_eq!(
        record["allowed_ips"],
        json!(["203.0.113.7/32", "10.0.0.0/8"])
    );
    assert!(record["hint"].as_str().unwrap().ends_with(&key[36..]));
    manager
        .verify(&key, Some("10.1.2.3".parse().unwrap()))
        .await
        .unwrap();

    let listed = call(&app, "GET", "/keys", Some("acct"), None).await;
    assert_eq!(listed.status, StatusCode::OK);
    let keys = listed.json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["usage"]["requests"], 1);
    assert_eq!(keys[0]["usage"]["last_used_ip"], "10.1.2.3");
    assert!(
        !listed.json.to_string().contains(&key[8..34]),
        "never the key again"
    );
    // Another owner sees none of it.
    let theirs = call(&app, "GET", "/keys", Some("other"), None).await;
    assert_eq!(theirs.json["keys"], json!([]));
}

#[tokio::test]
async fn edit_changes_name_and_allowlist_and_refuses_anything_else() {
    let (app, _) = app();
    let id = create(&app, "acct", "Staging").await.json["record"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/keys/{id}");
    let edited = call(
        &app,
        "PATCH",
        &path,
        Some("acct"),
        Some(json!({"name": "Staging - CI", "allowed_ips": ["2001:db8::/32"]})),
    )
    .await;
    assert_eq!(edited.status, StatusCode::OK);
    assert_eq!(edited.json["record"]["name"], "Staging - CI");
    assert_eq!(
        edited.json["record"]["allowed_ips"],
        json!(["2001:db8::/32"])
    );
    let cleared = call(
        &app,
        "PATCH",
        &path,
        Some("acct"),
        Some(json!({"allowed_ips": []})),
    )
    .await;
    assert_eq!(cleared.json["record"]["allowed_ips"], json!([]));
    assert_eq!(
        cleared.json["record"]["name"], "Staging - CI",
        "untouched fields stay"
    );

    for (body, expected) in [
        (json!({"environment": "live"}), "field_not_editable"),
        (json!({"rate_limit": 5}), "field_not_editable"),
        (json!({"revoked_at": null}), "field_not_editable"),
        (
            json!({"allowed_ips": ["10.0.0.0/33"]}),
            "invalid_ip_restriction",
        ),
        (
            json!({"allowed_ips": ["not-an-ip"]}),
            "invalid_ip_restriction",
        ),
        (
            json!({"allowed_ips": "10.0.0.0/8"}),
            "invalid_ip_restriction",
        ),
        (json!({"name": ""}), "invalid_name"),
        (json!({"name": 5}), "invalid_name"),
        (json!(["name"]), "invalid_json"),
    ] {
        let reply = call(&app, "PATCH", &path, Some("acct"), Some(body.clone())).await;
        assert_eq!(
            (reply.status, code(&reply)),
            (StatusCode::BAD_REQUEST, expected),
            "{body}"
        );
        assert!(!reply.json["error"].as_str().unwrap().is_empty());
    }
    let bad = call(
        &app,
        "PATCH",
        &path,
        Some("acct"),
        Some(json!({"allowed_ips": ["10.0.0.1", "10.0.0.0/33"]})),
    )
    .await;
    assert!(
        bad.json["error"].as_str().unwrap().contains("10.0.0.0/33"),
        "names the bad entry"
    );
}

#[tokio::test]
async fn revoke_is_final_and_rotate_keeps_the_old_key_for_the_grace_period() {
    let (app, manager) = app();
    let first = create(&app, "acct", "Main").await;
    let id = first.json["record"]["id"].as_str().unwrap().to_owned();
    let old_key = first.json["key"].as_str().unwrap().to_owned();

    let rotated = call(
        &app,
        "POST",
        &format!("/keys/{id}/rotate"),
        Some("acct"),
        Some(json!({"grace_period_seconds": 3600})),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    assert_eq!(rotated.headers["cache-control"], "no-store");
    let new_key = rotated.json["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);
    assert!(
        rotated.json["previous"]["expires_at"].is_string(),
        "the old key expires"
    );
    manager.verify(&old_key, None).await.unwrap();
    manager.verify(&new_key, None).await.unwrap();
    for grace in [json!(-1), json!(2_592_001), json!("soon")] {
        let reply = call(
            &app,
            "POST",
            &format!("/keys/{id}/rotate"),
            Some("acct"),
            Some(json!({"grace_period_seconds": grace})),
        )
        .await;
        assert_eq!(code(&reply), "invalid_grace_period");
    }

    let revoked = call(
        &app,
        "POST",
        &format!("/keys/{id}/revoke"),
        Some("acct"),
        Some(json!({})),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(revoked.json["record"]["status"], "revoked");
    assert!(revoked.json["record"]["revoked_at"].is_string());
    assert_eq!(
        manager.verify(&old_key, None).await.unwrap_err().code(),
        "api_key_revoked"
    );
    // Still listed, marked revoked; cannot be edited or rotated.
    let listed = call(&app, "GET", "/keys", Some("acct"), None).await;
    assert_eq!(listed.json["keys"][0]["status"], "revoked");
    let edit = call(
        &app,
        "PATCH",
        &format!("/keys/{id}"),
        Some("acct"),
        Some(json!({"name": "Again"})),
    )
    .await;
    assert_eq!(
        (edit.status, code(&edit)),
        (StatusCode::CONFLICT, "key_revoked")
    );
    let again = call(
        &app,
        "POST",
        &format!("/keys/{id}/rotate"),
        Some("acct"),
        Some(json!({})),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn another_owners_key_or_an_unknown_id_is_not_found() {
    let (app, _) = app();
    let id = create(&app, "alice", "Alice's").await.json["record"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unknown = tm_auth::KeyId::generate().to_string();
    for target in [id.as_str(), unknown.as_str(), "not-an-id", "key_%00"] {
        for (method, path, body) in [
            (
                "PATCH",
                format!("/keys/{target}"),
                json!({"name": "Mine now"}),
            ),
            ("POST", format!("/keys/{target}/revoke"), json!({})),
            ("POST", format!("/keys/{target}/rotate"), json!({})),
        ] {
            let reply = call(&app, method, &path, Some("mallory"), Some(body)).await;
            assert_eq!(
                (reply.status, code(&reply)),
                (StatusCode::NOT_FOUND, "key_not_found"),
                "{method} {path}"
            );
            assert_eq!(reply.json["error"], "No API key with this id");
        }
    }
    let listed = call(&app, "GET", "/keys", Some("alice"), None).await;
    assert_eq!(listed.json["keys"][0]["name"], "Alice's", "untouched");
    assert_eq!(listed.json["keys"][0]["status"], "active");
}

#[tokio::test]
async fn create_validates_its_input() {
    let (app, _) = app();
    for (body, expected) in [
        (json!({}), "invalid_name"),
        (json!({"name": "   "}), "invalid_name"),
        (json!({"name": "x".repeat(500)}), "invalid_name"),
        (
            json!({"name": "Ok", "environment": "prod"}),
            "invalid_environment",
        ),
        (
            json!({"name": "Ok", "allowed_ips": ["300.1.1.1"]}),
            "invalid_ip_restriction",
        ),
        (
            json!({"name": "Ok", "owner": "someone-else"}),
            "field_not_editable",
        ),
        (json!("Ok"), "invalid_json"),
    ] {
        let reply = call(&app, "POST", "/keys", Some("acct"), Some(body.clone())).await;
        assert_eq!(
            (reply.status, code(&reply)),
            (StatusCode::BAD_REQUEST, expected),
            "{body}"
        );
    }
    let many: Vec<String> = (0..300)
        .map(|i| format!("10.0.{}.{}/32", i / 250, i % 250))
        .collect();
    let reply = call(
        &app,
        "POST",
        "/keys",
        Some("acct"),
        Some(json!({"name": "Ok", "allowed_ips": many})),
    )
    .await;
    assert_eq!(code(&reply), "too_many_ip_restrictions");
    let listed = call(&app, "GET", "/keys", Some("acct"), None).await;
    assert_eq!(listed.json["keys"], json!([]), "nothing half-created");
}

#[tokio::test]
async fn unauthorized_and_non_json_writes_are_refused() {
    let (app, _) = app();
    for (method, path) in [
        ("GET", "/keys"),
        ("POST", "/keys"),
        ("POST", "/keys/key_x/revoke"),
    ] {
        let reply = call(&app, method, path, None, Some(json!({"name": "x"}))).await;
        assert_eq!(
            (reply.status, code(&reply)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }
    // A cross-site form post cannot set application/json.
    let request = Request::post("/keys")
        .header("x-owner", "acct")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("name=Evil"))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let id = create(&app, "acct", "Main").await.json["record"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoke = call(
        &app,
        "POST",
        &format!("/keys/{id}/revoke"),
        Some("acct"),
        None,
    )
    .await;
    assert_eq!(code(&revoke), "json_required");
    let listed = call(&app, "GET", "/keys", Some("acct"), None).await;
    assert_eq!(listed.json["keys"][0]["status"], "active");
}

/// Every route and method is described, nothing more; every field of a real
/// record and error is in the schema, and the schema names no field the API
/// does not send.
#[tokio::test]
async fn the_openapi_description_matches_the_router() {
    let spec: Value =
        serde_json::from_str(include_str!("../openapi/admin.json")).expect("valid JSON");
    let mut described: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            described.push((method.clone(), path.clone()));
        }
    }
    let mut routes: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    described.sort();
    routes.sort();
    assert_eq!(described, routes);
    // And the router serves each of them: an unrouted method or path
    // would answer 405 or an empty 404 before any handler runs.
    let (served, _) = app();
    let key = create(&served, "acct", "Routed").await;
    let id = key.json["record"]["id"].as_str().unwrap().to_owned();
    for (method, path) in ROUTES {
        let path = path.replace("{id}", &id);
        let body = (*method != "get").then(|| json!({}));
        let reply = call(&served, &method.to_uppercase(), &path, Some("acct"), body).await;
        assert_ne!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert!(
            reply.json.get("code").is_some() || reply.status.is_success(),
            "{method} {path}: {:?}",
            reply.status
        );
    }

    let (app, manager) = app();
    let created = create(&app, "acct", "Main").await;
    manager
        .verify(
            created.json["key"].as_str().unwrap(),
            Some("10.0.0.1".parse().unwrap()),
        )
        .await
        .unwrap();
    let listed = call(&app, "GET", "/keys", Some("acct"), None).await;
    let schemas = &spec["components"]["schemas"];
    let same_fields = |schema: &Value, actual: &Value, what: &str| {
        let mut declared: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let mut sent: Vec<&String> = actual.as_object().unwrap().keys().collect();
        declared.sort();
        sent.sort();
        assert_eq!(declared, sent, "{what}");
    };
    same_fields(&schemas["Key"], &listed.json["keys"][0], "Key");
    same_fields(&schemas["Usage"], &listed.json["keys"][0]["usage"], "Usage");
    // Create sends the required fields; rotate adds `previous`.
    for field in schemas["CreatedKey"]["required"].as_array().unwrap() {
        assert!(
            created.json.get(field.as_str().unwrap()).is_some(),
            "{field}"
        );
    }
    let id = created.json["record"]["id"].as_str().unwrap();
    let rotated = call(
        &app,
        "POST",
        &format!("/keys/{id}/rotate"),
        Some("acct"),
        Some(json!({})),
    )
    .await;
    same_fields(&schemas["CreatedKey"], &rotated.json, "CreatedKey");
    let audit = call(&app, "GET", "/audit", Some("acct"), None).await;
    same_fields(
        &schemas["AuditEvent"],
        &audit.json["events"][0],
        "AuditEvent",
    );
    same_fields(
        &schemas["AuditChange"],
        &audit.json["events"][0]["changes"][0],
        "AuditChange",
    );
    same_fields(&schemas["Key"], &rotated.json["previous"], "Key (previous)");
    let error = call(&app, "GET", "/keys", None, None).await;
    let mut required: Vec<&str> = schemas["Error"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort();
    let mut sent: Vec<&str> = error
        .json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    sent.sort();
    assert_eq!(
        sent, required,
        "an error without a hint sends the required fields"
    );
    // An error with a hint sends every field the schema declares.
    let crowded = KeyManager::builder(MemoryStore::new())
        .limits(tm_auth::KeyLimits::new().active_keys_per_owner(0))
        .build();
    let crowded = admin::router(crowded, |_: &http::request::Parts| Some("acct".to_owned()));
    let refused = call(
        &crowded,
        "POST",
        "/keys",
        Some("acct"),
        Some(json!({"name": "Main"})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    same_fields(&schemas["Error"], &refused.json, "Error with a hint");
    // A page sends `keys` and `next`, as declared.
    let page_schema =
        &spec["paths"]["/keys"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    same_fields(page_schema, &listed.json, "a page of keys");
    let codes: Vec<&str> = schemas["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let source = [
        include_str!("../src/admin/mod.rs"),
        include_str!("../src/admin/body.rs"),
        include_str!("../src/admin/problem.rs"),
    ]
    .concat();
    for code in &codes {
        assert!(
            source.contains(&format!("\"{code}\"")),
            "documented code {code} is used"
        );
    }
    for used in [
        "unauthorized",
        "key_not_found",
        "invalid_name",
        "invalid_ip_restriction",
        "field_not_editable",
        "json_required",
        "invalid_json",
        "key_revoked",
        "key_expired",
        "key_store_unavailable",
        "invalid_environment",
        "invalid_grace_period",
        "too_many_ip_restrictions",
        "invalid_request",
        "too_many_keys",
        "invalid_page",
    ] {
        assert!(codes.contains(&used), "code {used} is documented");
    }
}

/// A router that knows the API's scopes and names the signed-in user from
/// `x-user` as the actor.
fn scoped_app() -> (Router, KeyManager) {
    struct Login;
    #[async_trait::async_trait]
    impl admin::Authorize for Login {
        async fn owner(&self, parts: &http::request::Parts) -> Option<String> {
            parts
                .headers
                .get("x-owner")?
                .to_str()
                .ok()
                .map(str::to_owned)
        }
        async fn actor(&self, parts: &http::request::Parts, owner: &str) -> String {
            parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(owner)
                .to_owned()
        }
    }
    let manager = KeyManager::new(MemoryStore::new());
    let config = admin::AdminConfig::new().scopes([
        tm_auth::Scope::from_static("emails:verify"),
        tm_auth::Scope::from_static("lists:read"),
    ]);
    (admin::router_with(manager.clone(), Login, config), manager)
}

#[tokio::test]
async fn scopes_are_set_edited_checked_and_listed() {
    let (scoped, manager) = scoped_app();
    let listed = call(&scoped, "GET", "/scopes", Some("acct"), None).await;
    assert_eq!(
        listed.json["scopes"],
        json!(["emails:verify", "lists:read"])
    );
    let created = call(
        &scoped,
        "POST",
        "/keys",
        Some("acct"),
        Some(json!({"name": "Zapier", "scopes": ["lists:read", "emails:verify", "lists:read"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json);
    assert_eq!(
        created.json["record"]["scopes"],
        json!(["emails:verify", "lists:read"]),
        "sorted, without repeats"
    );
    let id = created.json["record"]["id"].as_str().unwrap().to_owned();
    let narrowed = call(
        &scoped,
        "PATCH",
        &format!("/keys/{id}"),
        Some("acct"),
        Some(json!({"scopes": ["lists:read"]})),
    )
    .await;
    assert_eq!(narrowed.status, StatusCode::OK);
    assert_eq!(narrowed.json["record"]["scopes"], json!(["lists:read"]));
    let who = manager
        .verify(created.json["key"].as_str().unwrap(), None)
        .await
        .unwrap();
    assert!(!who.has_scope("emails:verify"), "narrowed at once");
    for (body, expected) in [
        (json!({"scopes": ["lists:write"]}), "unknown_scope"),
        (json!({"scopes": ["Lists Read"]}), "invalid_scope"),
        (json!({"scopes": "lists:read"}), "invalid_scope"),
        (json!({"scopes": [1]}), "invalid_scope"),
    ] {
        let reply = call(
            &scoped,
            "PATCH",
            &format!("/keys/{id}"),
            Some("acct"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&reply), expected, "{body}");
    }
    // Without a list of scopes, any valid scope goes, and too many do not.
    let (open, _) = app();
    let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
    let reply = call(
        &open,
        "POST",
        "/keys",
        Some("acct"),
        Some(json!({"name": "Many", "scopes": many})),
    )
    .await;
    assert_eq!(code(&reply), "invalid_scope");
    let reply = call(
        &open,
        "POST",
        "/keys",
        Some("acct"),
        Some(json!({"name": "Any", "scopes": ["anything:at.all"]})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

#[tokio::test]
async fn the_audit_trail_names_who_did_what_from_where_and_only_to_the_owner() {
    let (app, _) = scoped_app();
    let request = |method: &str, path: String, body: Option<Value>| {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("x-owner", "acct")
            .header("x-user", "alice@example.com");
        let body = match body {
            Some(body) => {
                builder = builder.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let mut request = builder.body(body).unwrap();
        request.extensions_mut().insert(axum::extract::ConnectInfo(
            "198.51.100.7:50000"
                .parse::<std::net::SocketAddr>()
                .unwrap(),
        ));
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    let created = request(
        "POST",
        "/keys".into(),
        Some(json!({"name": "Zapier", "scopes": ["emails:verify"]})),
    )
    .await;
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    request(
        "PATCH",
        format!("/keys/{id}"),
        Some(json!({"name": "Zapier (old)", "scopes": ["lists:read"]})),
    )
    .await;
    request("POST", format!("/keys/{id}/revoke"), Some(json!({}))).await;
    let refused = request(
        "PATCH",
        format!("/keys/{id}"),
        Some(json!({"name": "Again"})),
    )
    .await;
    assert_eq!(refused["code"], "key_revoked");

    let log = request("GET", format!("/audit?key={id}"), None).await;
    let events = log["events"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("create", "done"),
            ("update", "done"),
            ("revoke", "done"),
            ("update", "refused")
        ]
    );
    for event in events {
        assert_eq!(event["actor"], "alice@example.com");
        assert_eq!(event["client_ip"], "198.51.100.7");
        assert_eq!(event["key_id"], id.as_str());
    }
    let update = &events[1]["changes"];
    assert_eq!(
        update,
        &json!([
            {"field": "name", "before": ["Zapier"], "after": ["Zapier (old)"]},
            {"field": "scopes", "before": ["emails:verify"], "after": ["lists:read"]},
        ])
    );
    assert_eq!(events[3]["reason"], "api_key_revoked");
    let text = log.to_string();
    assert!(
        !text.contains(created["key"].as_str().unwrap()),
        "never the key"
    );

    // Paged, and another owner sees none of it, even asking by key id.
    let first = request("GET", "/audit?limit=2".into(), None).await;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    let next = first["next"].as_u64().unwrap();
    let rest = request("GET", format!("/audit?limit=2&after={next}"), None).await;
    assert_eq!(rest["events"][0]["action"], "revoke");
    let other = call(
        &app,
        "GET",
        &format!("/audit?key={id}"),
        Some("acct_other"),
        None,
    )
    .await;
    assert_eq!(other.json["events"], json!([]));
    let bad = call(&app, "GET", "/audit?after=x", Some("acct"), None).await;
    assert_eq!(code(&bad), "invalid_page");
}
