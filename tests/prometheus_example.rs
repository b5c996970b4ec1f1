//! The Prometheus example's exposition, checked against real counters.

#[allow(dead_code)]
#[path = "../examples/prometheus.rs"]
mod prometheus;

use tm_auth::{KeyManager, MemoryStore, NewKey};

#[tokio::test]
async fn exposition_carries_every_used_key() {
    let manager = KeyManager::new(MemoryStore::new());
    let used = manager.create(NewKey::new("acct", "Used")).await.unwrap();
    let unused = manager.create(NewKey::new("acct", "Unused")).await.unwrap();
    for _ in 0..3 {
        manager
            .verify(used.key.expose_secret(), None)
            .await
            .unwrap();
    }
    manager.revoke(&used.record.id).await.unwrap();
    manager
        .verify(used.key.expose_secret(), None)
        .await
        .unwrap_err();

    let text = prometheus::render(&manager.usage_snapshot());
    let id = used.record.id;
    assert!(
        text.contains(&format!("tm_auth_requests_total{{key_id=\"{id}\"}} 3\n")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "tm_auth_rejections_total{{key_id=\"{id}\",reason=\"revoked\"}} 1\n"
    )));
    assert!(text.contains(&format!(
        "tm_auth_last_used_timestamp_seconds{{key_id=\"{id}\"}} "
    )));
    assert!(
        !text.contains(&unused.record.id.to_string()),
        "unused keys have no series"
    );
    // Every line is a comment or `name{labels} value`.
    for line in text.lines() {
        assert!(
            line.starts_with('#')
                || line
                    .rsplit_once(' ')
                    .is_some_and(|(_, v)| v.parse::<f64>().is_ok()),
            "{line}"
        );
    }
    assert!(
        !text.contains(&used.key.expose_secret()[8..]),
        "no key in metrics"
    );
}
