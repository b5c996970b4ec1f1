//! PostgresStore against a real server (feature `postgres`; `.ci/run`
//! creates a database per run and passes it as `DATABASE_URL`). Without
//! `DATABASE_URL` these tests fail: they never skip silently.
#![cfg(feature = "postgres")]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use tm_auth::store::cache::{CacheConfig, CachedStore};
use tm_auth::store::conformance;
use tm_auth::store::postgres::PostgresStore;
use tm_auth::{KeyManager, KeyStore, KeyUpdate, MemoryStore, NewKey};

fn options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a PostgreSQL database for this suite (see .ci/run)");
    url.parse().expect("DATABASE_URL is a PostgreSQL URL")
}

/// A store in a schema of its own.
async fn fresh() -> PostgresStore {
    let schema = format!("t_{}", tm_auth::KeyId::generate().as_u128());
    PostgresStore::connect_with(options(), Some(&schema))
        .await
        .expect("connect to PostgreSQL")
}

#[tokio::test]
async fn postgres_store_conforms() {
    if let Err(failures) = conformance::run(fresh).await {
        panic!("{failures}");
    }
}

#[tokio::test]
async fn postgres_store_behind_its_cache_conforms() {
    let cached = || async { fresh().await.cached(CacheConfig::new()).await.unwrap() };
    if let Err(failures) = conformance::run(cached).await {
        panic!("{failures}");
    }
}

#[tokio::test]
async fn two_servers_see_each_others_revocations_and_edits() {
    let schema = format!("t_{}", tm_auth::KeyId::generate().as_u128());
    // Two "servers": separate pools on the same tables.
    let one = KeyManager::new(
        PostgresStore::connect_with(options(), Some(&schema))
            .await
            .unwrap(),
    );
    let two = KeyManager::new(
        PostgresStore::connect_with(options(), Some(&schema))
            .await
            .unwrap(),
    );
    let client = Some("203.0.113.9".parse().unwrap());
    let mut secrets = Vec::new();
    for i in 0..20 {
        let created = one
            .create(NewKey::new("acct", format!("Key {i}")))
            .await
            .unwrap();
        assert!(two
            .verify(created.key.expose_secret(), client)
            .await
            .is_ok());
        secrets.push(created);
    }
    for created in &secrets {
        one.revoke(&created.record.id).await.unwrap();
        let err = two
            .verify(created.key.expose_secret(), client)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            "api_key_revoked",
            "refused on the other server's next request"
        );
    }
    let edited = one.create(NewKey::new("acct", "Office")).await.unwrap();
    assert!(two.verify(edited.key.expose_secret(), client).await.is_ok());
    one.update(
        &edited.record.id,
        KeyUpdate::new().allowed_ips(["198.51.100.0/24".parse().unwrap()]),
    )
    .await
    .unwrap();
    let err = two
        .verify(edited.key.expose_secret(), client)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ip_not_allowed");
    // Usage from both servers adds up in the shared tables.
    let live = one.create(NewKey::new("acct", "Live")).await.unwrap();
    for manager in [&one, &two] {
        manager
            .verify(live.key.expose_secret(), client)
            .await
            .unwrap();
        manager.flush_usage().await.unwrap();
    }
    assert_eq!(one.usage(&live.record.id).await.unwrap().requests, 2);
}

#[tokio::test]
async fn a_closed_pool_fails_closed() {
    let store = fresh().await;
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    store.close().await;
    let err = manager
        .verify(created.key.expose_secret(), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.status().as_u16()),
        ("key_store_unavailable", 503)
    );
}

/// Two "servers" on separate pools sharing one schema: `one` writes through
/// the database, `two` verifies through its cache.
async fn two_servers(
    config: CacheConfig,
) -> (KeyManager, KeyManager, CachedStore<PostgresStore>, String) {
    let schema = format!("t_{}", tm_auth::KeyId::generate().as_u128());
    let one = PostgresStore::connect_with(options(), Some(&schema))
        .await
        .expect("connect to PostgreSQL");
    let two = PostgresStore::connect_with(options(), Some(&schema))
        .await
        .expect("connect to PostgreSQL")
        .cached(config)
        .await
        .expect("start the cache");
    assert!(two.is_trusted(), "the feed is up once `cached` returns");
    (
        KeyManager::new(one),
        KeyManager::new(two.clone()),
        two,
        schema,
    )
}

/// Verifies on `two` until its cache holds the key (a fill that raced a
/// notification, such as the key's own insert, is dropped).
async fn warm(two: &KeyManager, cache: &CachedStore<PostgresStore>, created: &tm_auth::CreatedKey) {
    for _ in 0..50 {
        two.verify(created.key.expose_secret(), client())
            .await
            .unwrap();
        if matches!(cache.cached(&created.record.hash), Some(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the key was never answered from the cache");
}

fn client() -> Option<IpAddr> {
    Some("203.0.113.9".parse().unwrap())
}

/// How long after `change` returned until `two` refuses `secret` with
/// `code`, polling as fast as it can, failing past `bound`.
async fn propagation(
    two: &KeyManager,
    secret: &str,
    code: &str,
    bound: Duration,
    change: impl std::future::Future<Output = ()>,
) -> Duration {
    change.await;
    let start = Instant::now();
    loop {
        match two.verify(secret, client()).await {
            Err(err) if err.code() == code => return start.elapsed(),
            _ if start.elapsed() > bound => panic!("not refused within {bound:?}"),
            _ => tokio::task::yield_now().await,
        }
    }
}

fn report(what: &str, mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
    println!("{what}: n={} median={median:?} max={max:?}", times.len());
    (median, max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_a_cached_server_within_the_bound() {
    let config = CacheConfig::new();
    let bound = config.staleness();
    let (one, two, cache, _) = two_servers(config).await;
    let mut keys = Vec::new();
    for i in 0..100 {
        let created = one
            .create(NewKey::new("acct", format!("Key {i}")))
            .await
            .unwrap();
        warm(&two, &cache, &created).await;
        keys.push(created);
    }
    let mut times = Vec::new();
    for created in &keys {
        let revoke = async {
            one.revoke(&created.record.id).await.unwrap();
        };
        times.push(
            propagation(
                &two,
                created.key.expose_secret(),
                "api_key_revoked",
                bound,
                revoke,
            )
            .await,
        );
    }
    let (_, max) = report("revocation propagation over 100 revocations", times);
    assert!(max < bound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_edit_reaches_a_cached_server_within_the_bound() {
    let config = CacheConfig::new();
    let bound = config.staleness();
    let (one, two, cache, _) = two_servers(config).await;
    let mut times = Vec::new();
    for i in 0..20 {
        let created = one
            .create(NewKey::new("acct", format!("Office {i}")))
            .await
            .unwrap();
        warm(&two, &cache, &created).await;
        let edit = async {
            one.update(
                &created.record.id,
                KeyUpdate::new().allowed_ips(["198.51.100.0/24".parse().unwrap()]),
            )
            .await
            .unwrap();
        };
        times.push(
            propagation(
                &two,
                created.key.expose_secret(),
                "ip_not_allowed",
                bound,
                edit,
            )
            .await,
        );
    }
    let (_, max) = report("allowlist edit propagation over 20 edits", times);
    assert!(max < bound);
}

/// A narrowing of a key's scopes made on one server is refused by a route
/// that needs the removed scope on another, cached server, within the
/// cache's bound: the scopes travel with the record through the change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_narrowing_reaches_a_cached_server_within_the_bound() {
    use std::convert::Infallible;
    use tm_auth::{ApiKeyLayer, RequireScopeLayer};
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    let config = CacheConfig::new();
    let bound = config.staleness();
    let (one, two, cache, _) = two_servers(config).await;
    let route = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(two.clone()))
        .layer(RequireScopeLayer::new("emails:verify"))
        .service(service_fn(|_: http::Request<String>| async {
            Ok::<_, Infallible>(http::Response::new(String::from("ok")))
        }));
    let call = |secret: String| {
        let route = route.clone();
        async move {
            let request = http::Request::builder()
                .header("authorization", format!("Bearer {secret}"))
                .body(String::new())
                .unwrap();
            route.oneshot(request).await.unwrap().status()
        }
    };
    let mut times = Vec::new();
    for i in 0..20 {
        let created = one
            .create(
                NewKey::new("acct", format!("Integration {i}"))
                    .scopes(["emails:verify", "lists:read"]),
            )
            .await
            .unwrap();
        warm(&two, &cache, &created).await;
        let secret = created.key.expose_secret().to_owned();
        assert_eq!(call(secret.clone()).await, 200, "allowed before the edit");
        one.update(&created.record.id, KeyUpdate::new().scopes(["lists:read"]))
            .await
            .unwrap();
        let start = Instant::now();
        loop {
            match call(secret.clone()).await.as_u16() {
                403 => break,
                _ if start.elapsed() > bound => panic!("not refused within {bound:?}"),
                _ => tokio::task::yield_now().await,
            }
        }
        times.push(start.elapsed());
    }
    let (_, max) = report("scope narrowing propagation over 20 edits", times);
    assert!(max < bound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_inserted_elsewhere_clears_the_unknown_entry() {
    let config = CacheConfig::new();
    let bound = config.staleness();
    let (one, two, cache, _) = two_servers(config).await;
    // A record and its key made apart, so `two` can meet the key first.
    let created = KeyManager::new(MemoryStore::new())
        .create(NewKey::new("acct", "Later"))
        .await
        .unwrap();
    let err = two
        .verify(created.key.expose_secret(), client())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_api_key");
    assert!(
        matches!(cache.cached(&created.record.hash), Some(None)),
        "the unknown key is remembered"
    );
    one.store().insert(created.record.clone()).await.unwrap();
    let start = Instant::now();
    while two
        .verify(created.key.expose_secret(), client())
        .await
        .is_err()
    {
        assert!(start.elapsed() < bound, "still unknown after {bound:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_makes_the_cache_fall_back_to_the_database() {
    // Long heartbeats, so trust could only come from the cache's own
    // staleness bound: what refuses the key below is the fallback.
    let (one, two, cache, schema) =
        two_servers(CacheConfig::new().max_staleness(Duration::from_secs(6))).await;
    let created = one.create(NewKey::new("acct", "Main")).await.unwrap();
    warm(&two, &cache, &created).await;

    let admin = sqlx::PgPool::connect_with(options()).await.unwrap();
    let listening = "SELECT pid FROM pg_stat_activity
                     WHERE application_name = 'tm_auth_listener'
                       AND query LIKE '%' || 'tm_auth_' || left(md5($1), 20) || '%'";
    let pids: Vec<i32> = sqlx::query_scalar(listening)
        .bind(&schema)
        .fetch_all(&admin)
        .await
        .unwrap();
    assert_eq!(pids.len(), 1, "one listening connection for this schema");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pids[0])
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(killed);
    let start = Instant::now();
    while cache.is_trusted() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the cache noticed the lost feed"
        );
        tokio::task::yield_now().await;
    }
    // Revoked while `two` hears nothing: refused at once all the same.
    one.revoke(&created.record.id).await.unwrap();
    let err = two
        .verify(created.key.expose_secret(), client())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "api_key_revoked");

    // The feed comes back by itself, and the cache with it.
    let fresh = one.create(NewKey::new("acct", "After")).await.unwrap();
    let start = Instant::now();
    while !cache.is_trusted() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the feed came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warm(&two, &cache, &fresh).await;
    let err = two
        .verify(created.key.expose_secret(), client())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "api_key_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_server_fails_closed_when_the_database_goes() {
    let staleness = Duration::from_millis(600);
    let (one, two, cache, _) = two_servers(CacheConfig::new().max_staleness(staleness)).await;
    let created = one.create(NewKey::new("acct", "Main")).await.unwrap();
    two.verify(created.key.expose_secret(), client())
        .await
        .unwrap();
    cache.inner().close().await;
    let start = Instant::now();
    loop {
        match two.verify(created.key.expose_secret(), client()).await {
            Err(err) if err.code() == "key_store_unavailable" => {
                assert_eq!(err.status().as_u16(), 503);
                break;
            }
            Err(err) => panic!("a store failure is never a bad key: {}", err.code()),
            Ok(_) => assert!(
                start.elapsed() < staleness * 2,
                "cached grants stop within max_staleness"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A TCP proxy in front of PostgreSQL that can be cut (every connection
/// dropped, new ones refused) and restored: the database "going away".
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (accepting, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let mut cut = cuts.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_fails_closed_and_recovers_when_back() {
    let schema = format!("t_{}", tm_auth::KeyId::generate().as_u128());
    let direct = options();
    let one = KeyManager::new(
        PostgresStore::connect_with(direct.clone(), Some(&schema))
            .await
            .unwrap(),
    );
    let proxy = Proxy::start((direct.get_host().to_owned(), direct.get_port())).await;
    let via_proxy = direct.clone().host("127.0.0.1").port(proxy.port);
    let cache = PostgresStore::connect_with(via_proxy, Some(&schema))
        .await
        .unwrap()
        .cached(CacheConfig::new().max_staleness(Duration::from_millis(900)))
        .await
        .unwrap();
    let two = KeyManager::builder(cache.clone())
        .store_timeout(Duration::from_secs(2))
        .build();
    let created = one.create(NewKey::new("acct", "Main")).await.unwrap();
    warm(&two, &cache, &created).await;

    proxy.down();
    let start = Instant::now();
    loop {
        match two.verify(created.key.expose_secret(), client()).await {
            Err(err) if err.code() == "key_store_unavailable" => break,
            Err(err) => panic!("a lost database is never a bad key: {}", err.code()),
            Ok(_) => assert!(
                start.elapsed() < Duration::from_secs(2),
                "cached grants stop once the feed is lost"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!cache.is_trusted());

    proxy.up();
    let start = Instant::now();
    while two
        .verify(created.key.expose_secret(), client())
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "recovers when the database is back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while !cache.is_trusted() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the feed comes back too"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    warm(&two, &cache, &created).await;
    one.revoke(&created.record.id).await.unwrap();
    let elapsed = propagation(
        &two,
        created.key.expose_secret(),
        "api_key_revoked",
        Duration::from_millis(900),
        async {},
    )
    .await;
    println!("revocation after the database came back: refused after {elapsed:?}");
}

/// Revokes key `id` by hand in SQL, as a DBA would: in a session of its
/// own to `schema` that first runs `setup`.
async fn revoke_in_sql(schema: &str, setup: &str, id: tm_auth::KeyId) {
    use sqlx::Connection;
    let mut dba = sqlx::PgConnection::connect_with(&options().options([("search_path", schema)]))
        .await
        .expect("connect to PostgreSQL");
    sqlx::raw_sql(setup).execute(&mut dba).await.unwrap();
    sqlx::query("UPDATE tm_auth_keys SET revoked_at_ms = 1 WHERE id = $1")
        .bind(id.as_u128().to_le_bytes().to_vec())
        .execute(&mut dba)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_in_replica_role_reaches_a_cached_server() {
    let config = CacheConfig::new();
    let bound = config.staleness();
    let (one, two, cache, schema) = two_servers(config).await;
    let created = one.create(NewKey::new("acct", "Restored")).await.unwrap();
    warm(&two, &cache, &created).await;
    // What pg_restore --disable-triggers and logical replication do.
    let revoke = revoke_in_sql(
        &schema,
        "SET session_replication_role = replica",
        created.record.id,
    );
    let took = propagation(
        &two,
        created.key.expose_secret(),
        "api_key_revoked",
        bound,
        revoke,
    )
    .await;
    println!("replica-role revocation propagation: {took:?}");
    let accepted = accepted_of(&two, created.key.expose_secret(), 200).await;
    assert_eq!(accepted, 0, "accepted after the revocation was seen");
}

/// How many of `n` verifications of `secret` on `two` succeed.
async fn accepted_of(two: &KeyManager, secret: &str, n: usize) -> usize {
    let mut accepted = 0;
    for _ in 0..n {
        if two.verify(secret, client()).await.is_ok() {
            accepted += 1;
        }
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_no_trigger_announces_is_refused_within_max_age() {
    let max_age = Duration::from_millis(500);
    let (one, two, cache, schema) = two_servers(CacheConfig::new().max_age(max_age)).await;
    let created = one
        .create(NewKey::new("acct", "Unannounced"))
        .await
        .unwrap();
    warm(&two, &cache, &created).await;
    // A dump restored without its triggers: nothing will be announced.
    let revoke = revoke_in_sql(
        &schema,
        "ALTER TABLE tm_auth_keys DISABLE TRIGGER ALL",
        created.record.id,
    );
    // The cache is trusted throughout (heartbeats keep coming): only the
    // entry's age makes it read the record again.
    let took = propagation(
        &two,
        created.key.expose_secret(),
        "api_key_revoked",
        max_age + Duration::from_millis(500),
        revoke,
    )
    .await;
    println!("unannounced revocation refused after {took:?} (max_age {max_age:?})");
    assert!(cache.is_trusted());
    assert_eq!(accepted_of(&two, created.key.expose_secret(), 50).await, 0);
}

#[tokio::test]
async fn a_store_over_the_callers_pool_migrates_when_asked_and_once() {
    let schema = format!("t_{}", tm_auth::KeyId::generate().as_u128());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options().options([("search_path", schema.as_str())]))
        .await
        .expect("connect to PostgreSQL");
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    let store = PostgresStore::new(pool);
    assert!(
        store.get(&tm_auth::KeyId::generate()).await.is_err(),
        "no tables before migrate()"
    );
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let manager = KeyManager::new(store.clone());
    let created = manager.create(NewKey::new("acct", "Main")).await.unwrap();
    assert!(manager
        .verify(created.key.expose_secret(), None)
        .await
        .is_ok());
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM tm_auth_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3, 4], "each migration ran once");
    // The audit trail holds the creation, and nobody connected can change it.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM tm_auth_audit")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(events, 1);
    for statement in [
        "UPDATE tm_auth_audit SET actor = 'someone else'",
        "DELETE FROM tm_auth_audit",
        "TRUNCATE tm_auth_audit",
    ] {
        let err = sqlx::query(statement)
            .execute(store.pool())
            .await
            .expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
}
