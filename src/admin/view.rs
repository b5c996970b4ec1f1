//! How the admin API shows a key: [`View`], never the key itself, with
//! times in RFC 3339 UTC.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

/// A key as the API shows it: never the key itself.
#[derive(Serialize)]
pub(super) struct View {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) environment: &'static str,
    pub(super) hint: String,
    pub(super) status: &'static str,
    pub(super) created_at: String,
    pub(super) expires_at: Option<String>,
    pub(super) revoked_at: Option<String>,
    pub(super) allowed_ips: Vec<String>,
    /// Empty: unrestricted.
    pub(super) scopes: Vec<String>,
    pub(super) usage: UsageView,
}

/// An audit event as the API shows it.
#[derive(Serialize)]
pub(super) struct EventView {
    pub(super) id: u64,
    pub(super) at: String,
    pub(super) at_ms: u64,
    pub(super) key_id: Option<String>,
    pub(super) new_key_id: Option<String>,
    pub(super) action: &'static str,
    pub(super) outcome: &'static str,
    pub(super) reason: Option<String>,
    pub(super) actor: Option<String>,
    pub(super) client_ip: Option<IpAddr>,
    pub(super) changes: Vec<crate::audit::AuditChange>,
}

impl EventView {
    pub(super) fn new(entry: crate::audit::AuditEntry) -> EventView {
        let event = entry.event;
        EventView {
            id: entry.id.0,
            at: rfc3339(event.at),
            at_ms: crate::clock::millis_since_epoch(event.at),
            key_id: event.key_id.map(|id| id.to_string()),
            new_key_id: event.new_key_id.map(|id| id.to_string()),
            action: event.action.as_str(),
            outcome: if event.outcome.refusal().is_some() {
                "refused"
            } else {
                "done"
            },
            reason: event.outcome.refusal().map(str::to_owned),
            actor: event.actor,
            client_ip: event.client_ip,
            changes: event.changes,
        }
    }
}

#[derive(Serialize)]
pub(super) struct UsageView {
    pub(super) requests: u64,
    pub(super) rejected: u64,
    pub(super) last_used_at: Option<String>,
    pub(super) last_used_ip: Option<IpAddr>,
}

pub(super) fn to_value(view: View) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// `at` as RFC 3339 in UTC, to the second (`1970-01-01T00:00:00Z` for a
/// time before the epoch, which no key has).
pub(super) fn rfc3339(at: SystemTime) -> String {
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
    use std::time::Duration;

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
