//! The `LISTEN/NOTIFY` feed that keeps a [`CachedStore`] over PostgreSQL
//! true.
//!
//! Messages on the schema's channel (sent by the trigger of migration 2, or
//! by a heartbeat):
//!
//! - `k<hash hex>`: the key with that hash was inserted, changed or deleted;
//! - `c`: the table was truncated;
//! - `p<token>:<ms>`: a heartbeat sent by the process with that token, `ms`
//!   after its base instant. Notifications arrive in commit order, so
//!   hearing our own heartbeat proves every change committed before it was
//!   sent has been heard.
//!
//! Anything else empties the cache: an unknown message cannot be trusted to
//! be harmless.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;

use super::PostgresStore;
use crate::key::KeyHash;
use crate::key::KeyId;
use crate::store::cache::{CacheConfig, CachedStore, Invalidator};
use crate::store::sql::backend;
use crate::store::StoreError;

/// How long to wait before listening again after a failure, at most.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What both tasks share.
#[derive(Clone)]
struct Channel {
    name: String,
    /// Tells our own heartbeats from other servers'.
    token: String,
    /// Heartbeats carry milliseconds since this instant.
    base: Instant,
}

pub(super) async fn start(
    store: PostgresStore,
    pool: &PgPool,
    config: CacheConfig,
) -> Result<CachedStore<PostgresStore>, StoreError> {
    // The table's own schema, as the trigger sees it (TG_TABLE_SCHEMA).
    let name: String = sqlx::query_scalar(
        "SELECT 'tm_auth_' || left(md5(n.nspname), 20)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = 'tm_auth_keys'::regclass",
    )
    .fetch_one(pool)
    .await
    .map_err(backend)?;
    let channel = Channel {
        name,
        // Unique per process; it need not be secret.
        token: format!("{:x}", KeyId::generate().as_u128()),
        base: Instant::now(),
    };

    // A pool of its own, so the listening connection is easy to find in
    // `pg_stat_activity` and never competes with queries for a slot.
    let options = (*pool.connect_options())
        .clone()
        .application_name("tm_auth_listener");
    let listen_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options);
    let listener = subscribe(&listen_pool, &channel.name).await?;

    let staleness = config.staleness();
    let cached = CachedStore::new(store, config);
    // The tasks stop when every clone of the cache, holding `stop`, is gone.
    let (stop, stopped) = watch::channel(());
    tokio::spawn(listen(
        listener,
        listen_pool,
        channel.clone(),
        cached.invalidator(),
        stopped.clone(),
    ));
    let every = (staleness / 3).max(Duration::from_millis(10));
    tokio::spawn(heartbeat(pool.clone(), channel, every, stopped));
    let cached = cached.keeping(Arc::new(stop));

    let deadline = Instant::now() + staleness;
    while !cached.is_trusted() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(cached)
}

async fn subscribe(pool: &PgPool, channel: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await.map_err(backend)?;
    // Report a lost connection at once, not after reconnecting: the cache
    // must stop before anything else happens.
    listener.eager_reconnect(false);
    listener.listen(channel).await.map_err(backend)?;
    Ok(listener)
}

async fn listen(
    mut listener: PgListener,
    pool: PgPool,
    channel: Channel,
    feed: Invalidator,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let received = tokio::select! {
            _ = stopped.changed() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => apply(&feed, &channel, notification.payload()),
            Ok(None) => {
                // The connection was lost; the next `try_recv` listens again
                // on a new one. What is said in between is never heard.
                feed.disconnected();
                tracing::warn!("tm-auth: key change feed lost; verifying against the database");
            }
            Err(error) => {
                feed.disconnected();
                tracing::warn!(%error, "tm-auth: key change feed lost; verifying against the database");
                let mut backoff = Duration::from_millis(50);
                listener = loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    match subscribe(&pool, &channel.name).await {
                        Ok(listener) => break listener,
                        Err(error) => {
                            tracing::debug!(%error, "tm-auth: key change feed still down");
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                };
            }
        }
    }
}

fn apply(feed: &Invalidator, channel: &Channel, payload: &str) {
    if let Some(hex) = payload.strip_prefix('k') {
        match KeyHash::from_hex(hex) {
            Some(hash) => feed.changed(&hash),
            None => feed.clear(),
        }
    } else if let Some(beat) = payload.strip_prefix('p') {
        let Some((token, ms)) = beat.split_once(':') else {
            return feed.clear();
        };
        if token != channel.token {
            return; // another server's heartbeat
        }
        match ms.parse::<u64>() {
            Ok(ms) => feed.synced(channel.base + Duration::from_millis(ms)),
            Err(_) => feed.clear(),
        }
    } else {
        feed.clear();
    }
}

async fn heartbeat(
    pool: PgPool,
    channel: Channel,
    every: Duration,
    mut stopped: watch::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = ticks.tick() => {}
        }
        // Taken before the query is sent, so before it commits: every change
        // committed earlier is delivered before this heartbeat.
        let sent = channel.base.elapsed().as_millis();
        let payload = format!("p{}:{sent}", channel.token);
        if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&channel.name)
            .bind(payload)
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "tm-auth: key change feed heartbeat failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn channel() -> Channel {
        Channel {
            name: "tm_auth_x".into(),
            token: "00ff".into(),
            base: Instant::now(),
        }
    }

    #[test]
    fn only_our_own_heartbeat_renews_trust() {
        let cached = CachedStore::new(MemoryStore::new(), CacheConfig::new());
        let feed = cached.invalidator();
        let channel = channel();
        apply(&feed, &channel, "pabcd:0");
        assert!(!cached.is_trusted(), "another server's heartbeat");
        apply(&feed, &channel, "p00ff:0");
        assert!(cached.is_trusted());
    }

    #[test]
    fn a_garbled_message_empties_the_cache_and_panics_on_nothing() {
        let cached = CachedStore::new(MemoryStore::new(), CacheConfig::new());
        let feed = cached.invalidator();
        let channel = channel();
        for payload in [
            "",
            "k",
            "kzz",
            "p",
            "p00ff",
            "p00ff:x",
            "x",
            "k\u{e9}\u{e9}",
            "p:",
        ] {
            apply(&feed, &channel, payload);
        }
        assert!(!cached.is_trusted());
    }
}
