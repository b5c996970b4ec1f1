//! The admin API's request bodies, typed: each write is a struct with
//! `deny_unknown_fields`, read by the [`Json`] extractor, and each field
//! type says what it accepts and answers its own mistake with its own code.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use http::header::CONTENT_TYPE;
use http::StatusCode;
use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::problem::{shortened, Problem, MAX_ECHO};
use super::MAX_GRACE;
use crate::key::Environment;

/// A write's body: sent as `application/json` (415 otherwise), an object
/// (an empty body reads as `{}`), with only the fields `T` names.
pub(super) struct Json<T>(pub(super) T);

/// A request body: a struct with `deny_unknown_fields`, whose fields are
/// [`Field`]s, so that only an unknown field or a body that is not an
/// object fails to deserialize.
pub(super) trait Body: DeserializeOwned {
    /// The fields accepted, for the message refusing any other.
    const FIELDS: &'static [&'static str];
}

impl<S: Send + Sync, T: Body> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Json<T>, Problem> {
        let is_json = request
            .headers()
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
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|_| Problem::bad("invalid_json", "The request body could not be read"))?;
        parse(&bytes).map(Json)
    }
}

fn parse<T: Body>(bytes: &[u8]) -> Result<T, Problem> {
    let not_object = || Problem::bad("invalid_json", "The body must be a JSON object");
    let bytes: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        // A derived struct also reads a JSON array, field by field in
        // order: only an object may name the fields it sets.
        Some(b'{') => bytes,
        Some(_) => return Err(not_object()),
    };
    serde_json::from_slice(bytes).map_err(|err| match unknown_field(&err, T::FIELDS) {
        Some(field) => {
            // Echoed bounded: the name is the caller's, of any length.
            let field = shortened(&field, MAX_ECHO);
            let accepted = T::FIELDS
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ");
            Problem::bad(
                "field_not_editable",
                format!("`{field}` cannot be set here; the fields accepted are {accepted}"),
            )
        }
        None => not_object(),
    })
}

/// The field `deny_unknown_fields` refused, if that is what `err` is.
///
/// serde words the error `` unknown field `{name}`, {expected} ``, where
/// `{expected}` is built from the accepted fields alone: cutting that known
/// ending off finds the name whatever characters it holds.
fn unknown_field(err: &serde_json::Error, fields: &[&str]) -> Option<String> {
    if !err.is_data() {
        return None;
    }
    let quoted: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
    let expected = match quoted.as_slice() {
        [] => "there are no fields".to_owned(),
        [one] => format!("expected {one}"),
        [a, b] => format!("expected {a} or {b}"),
        many => format!("expected one of {}", many.join(", ")),
    };
    let message = err.to_string();
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.rfind(&format!("`, {expected}"))?;
    Some(rest[..end].to_owned())
}

/// A body field: absent, or the value sent read as `T` (or why it cannot
/// be). Reading it never fails the body, so each field's mistake keeps its
/// own code and message.
#[derive(Default)]
pub(super) enum Field<T> {
    #[default]
    Absent,
    Given(Result<T, Problem>),
}

impl<T> Field<T> {
    /// The value sent, `None` if absent, or the field's problem.
    pub(super) fn value(self) -> Result<Option<T>, Problem> {
        match self {
            Field::Absent => Ok(None),
            Field::Given(value) => value.map(Some),
        }
    }
}

/// What a field accepts, read from the JSON value sent.
pub(super) trait FromJson: Sized {
    fn from_json(value: Value) -> Result<Self, Problem>;
}

impl<'de, T: FromJson> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Field<T>, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(Field::Given(T::from_json(value)))
    }
}

/// `name`: a string (validated by the manager).
pub(super) struct Name(pub(super) String);

impl FromJson for Name {
    fn from_json(value: Value) -> Result<Name, Problem> {
        match value {
            Value::String(name) => Ok(Name(name)),
            _ => Err(Problem::bad("invalid_name", "`name` must be a string")),
        }
    }
}

impl FromJson for Environment {
    fn from_json(value: Value) -> Result<Environment, Problem> {
        match value.as_str() {
            Some("live") => Ok(Environment::Live),
            Some("test") => Ok(Environment::Test),
            _ => Err(Problem::bad(
                "invalid_environment",
                "`environment` is \"live\" or \"test\"",
            )),
        }
    }
}

/// `allowed_ips`: a list of IPs and CIDR ranges (an empty list: any address).
pub(super) struct Allowlist(pub(super) Vec<IpNetwork>);

impl FromJson for Allowlist {
    fn from_json(value: Value) -> Result<Allowlist, Problem> {
        let Value::Array(entries) = value else {
            return Err(Problem::bad(
                "invalid_ip_restriction",
                "`allowed_ips` must be a list of IP addresses and CIDR ranges, e.g. [\"203.0.113.7\", \"10.0.0.0/8\"]",
            ));
        };
        let mut networks = Vec::with_capacity(entries.len());
        for entry in &entries {
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
        Ok(Allowlist(networks))
    }
}

/// An entry as the user sent it, shortened for an error message.
fn entry_text(entry: &Value) -> String {
    match entry {
        Value::String(s) => shortened(s, MAX_ECHO),
        other => shortened(&other.to_string(), MAX_ECHO),
    }
}

/// `scopes`: a list of scope names (an empty list: unrestricted); each is
/// checked by the manager, and against the router's known scopes.
pub(super) struct Scopes(pub(super) Vec<String>);

impl FromJson for Scopes {
    fn from_json(value: Value) -> Result<Scopes, Problem> {
        let not_list = || {
            Problem::bad(
                "invalid_scope",
                "`scopes` must be a list of scope names, e.g. [\"emails:verify\", \"lists:read\"]",
            )
        };
        let Value::Array(entries) = value else {
            return Err(not_list());
        };
        entries
            .into_iter()
            .map(|entry| match entry {
                Value::String(scope) => Ok(scope),
                _ => Err(not_list()),
            })
            .collect::<Result<_, _>>()
            .map(Scopes)
    }
}

/// `grace_period_seconds`: whole seconds from 0 to [`MAX_GRACE`].
pub(super) struct Grace(pub(super) Duration);

impl FromJson for Grace {
    fn from_json(value: Value) -> Result<Grace, Problem> {
        match value.as_u64().map(Duration::from_secs) {
            Some(grace) if grace <= MAX_GRACE => Ok(Grace(grace)),
            _ => Err(Problem::bad(
                "invalid_grace_period",
                "`grace_period_seconds` is a whole number of seconds from 0 to 2592000 (30 days)",
            )),
        }
    }
}

/// `POST /keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    #[serde(default)]
    pub(super) name: Field<Name>,
    #[serde(default)]
    pub(super) environment: Field<Environment>,
    #[serde(default)]
    pub(super) allowed_ips: Field<Allowlist>,
    #[serde(default)]
    pub(super) scopes: Field<Scopes>,
}

impl Body for CreateKey {
    const FIELDS: &'static [&'static str] = &["name", "environment", "allowed_ips", "scopes"];
}

/// `PATCH /keys/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EditKey {
    #[serde(default)]
    pub(super) name: Field<Name>,
    #[serde(default)]
    pub(super) allowed_ips: Field<Allowlist>,
    #[serde(default)]
    pub(super) scopes: Field<Scopes>,
}

impl Body for EditKey {
    const FIELDS: &'static [&'static str] = &["name", "allowed_ips", "scopes"];
}

/// `POST /keys/{id}/revoke`: nothing to say.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeKey {}

impl Body for RevokeKey {
    const FIELDS: &'static [&'static str] = &[];
}

/// `POST /keys/{id}/rotate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateKey {
    #[serde(default)]
    pub(super) grace_period_seconds: Field<Grace>,
}

impl Body for RotateKey {
    const FIELDS: &'static [&'static str] = &["grace_period_seconds"];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused<T: Body>(body: &str) -> (&'static str, String) {
        match parse::<T>(body.as_bytes()) {
            Ok(_) => panic!("{body} was accepted"),
            Err(problem) => (problem.code(), problem.message().to_owned()),
        }
    }

    #[test]
    fn unknown_fields_are_named_whatever_they_hold() {
        for (field, shown) in [
            ("owner", "owner".to_owned()),
            ("a`, expected `name`", "a`, expected `name`".to_owned()),
            ("", String::new()),
            (&"x".repeat(500), format!("{}…", "x".repeat(64))),
        ] {
            let body = serde_json::json!({ field: 1 }).to_string();
            let (code, message) = refused::<EditKey>(&body);
            assert_eq!(code, "field_not_editable");
            assert_eq!(
                message,
                format!(
                    "`{shown}` cannot be set here; the fields accepted are `name`, `allowed_ips`, `scopes`"
                )
            );
            let (code, message) = refused::<RevokeKey>(&body);
            assert_eq!(code, "field_not_editable");
            assert!(
                message.starts_with(&format!("`{shown}` cannot")),
                "{message}"
            );
            let (code, _) = refused::<CreateKey>(&body);
            assert_eq!(code, "field_not_editable");
            let (code, _) = refused::<RotateKey>(&body);
            assert_eq!(code, "field_not_editable");
        }
    }

    #[test]
    fn each_field_answers_its_own_mistake() {
        let cases: [(&str, &str); 6] = [
            (r#"{"name": 5}"#, "invalid_name"),
            (r#"{"name": null}"#, "invalid_name"),
            (r#"{"environment": "prod"}"#, "invalid_environment"),
            (r#"{"allowed_ips": "10.0.0.0/8"}"#, "invalid_ip_restriction"),
            (
                r#"{"allowed_ips": ["10.0.0.0/33"]}"#,
                "invalid_ip_restriction",
            ),
            (r#"{"allowed_ips": [7]}"#, "invalid_ip_restriction"),
        ];
        for (body, code) in cases {
            let parsed = parse::<CreateKey>(body.as_bytes()).unwrap();
            let problem = match (
                parsed.name.value(),
                parsed.environment.value(),
                parsed.allowed_ips.value(),
            ) {
                (Err(p), _, _) | (_, Err(p), _) | (_, _, Err(p)) => p,
                _ => panic!("{body} passed"),
            };
            assert_eq!(problem.code(), code, "{body}");
        }
        let parsed = parse::<RotateKey>(br#"{"grace_period_seconds": 2592001}"#).unwrap();
        assert_eq!(
            parsed.grace_period_seconds.value().err().map(|p| p.code()),
            Some("invalid_grace_period")
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_invalid_json() {
        for body in [
            "[]",
            r#"["Renamed"]"#,
            "5",
            "\"name\"",
            "{",
            r#"{"name": "a", "name": "b"}"#,
            r#"{"name": "a"} trailing"#,
        ] {
            assert_eq!(refused::<EditKey>(body).0, "invalid_json", "{body}");
        }
        assert!(parse::<EditKey>(b"  \n").is_ok(), "an empty body is {{}}");
        let parsed = parse::<EditKey>(br#"{"name": "Main", "allowed_ips": []}"#).unwrap();
        assert_eq!(
            parsed.name.value().ok().flatten().map(|n| n.0).as_deref(),
            Some("Main")
        );
        assert_eq!(
            parsed.allowed_ips.value().ok().flatten().map(|a| a.0.len()),
            Some(0)
        );
    }
}
