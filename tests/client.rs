//! The key holder's side (feature `client`): keys from the environment, the
//! client layer against the server layer, and the leak scanner on large
//! inputs with a counting allocator (per thread, like
//! `no_alloc_rejection.rs`: the unsafe `GlobalAlloc` lives in this test
//! crate only).
#![allow(unsafe_code)]
#![cfg(feature = "client")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::io::Read;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tm_auth::client::{BearerAuthLayer, EnvKeyError};
use tm_auth::scan::{find_keys, scan_reader};
use tm_auth::{ApiKeyLayer, AuthenticatedKey, Environment, KeyManager, MemoryStore, NewKey, TmKey};
use tower::{Layer, ServiceExt};

struct Counting;

thread_local! {
    /// Bytes allocated and not yet freed by this thread, and the peak.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + delta);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain thread-local cells.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The most memory `f` held at once beyond what was held before it.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let out = f();
    (out, PEAK.with(Cell::get) - start)
}

#[test]
fn from_env_reads_trims_and_explains() {
    let key = TmKey::generate(Environment::Live);
    std::env::set_var("TM_AUTH_TEST_GOOD", format!("{}\n", key.expose_secret()));
    assert!(TmKey::from_env("TM_AUTH_TEST_GOOD").unwrap() == key);

    std::env::remove_var("TM_AUTH_TEST_UNSET");
    let cases: [(&str, Option<String>, &str); 7] = [
        ("TM_AUTH_TEST_UNSET", None, "is not set"),
        ("TM_AUTH_TEST_EMPTY", Some(String::new()), "is empty"),
        (
            "TM_AUTH_TEST_BEARER",
            Some(format!("Bearer {}", key.expose_secret())),
            "\"Bearer \"",
        ),
        (
            "TM_AUTH_TEST_QUOTED",
            Some(format!("\"{}\"", key.expose_secret())),
            "quotes",
        ),
        (
            "TM_AUTH_TEST_PREFIX",
            Some(format!("sk_live_{}", &key.expose_secret()[8..])),
            "tm_live_ or tm_test_",
        ),
        (
            "TM_AUTH_TEST_LENGTH",
            Some(key.expose_secret()[..30].to_owned()),
            "30 characters long",
        ),
        (
            "TM_AUTH_TEST_CHECKSUM",
            Some(changed(key.expose_secret(), 12)),
            "a character was changed or lost when the key was copied",
        ),
    ];
    for (var, value, says) in cases {
        if let Some(value) = value {
            std::env::set_var(var, value);
        }
        let err = TmKey::from_env(var).unwrap_err();
        let shown = format!("{err} | {err:?}");
        assert!(shown.contains(var), "{shown}");
        assert!(shown.contains(says), "{var}: {shown}");
        assert!(!shown.contains(&key.expose_secret()[8..34]), "{shown}");
    }
    std::env::remove_var(tm_auth::client::DEFAULT_KEY_VAR);
    assert!(matches!(
        TmKey::from_default_env(),
        Err(EnvKeyError::Unset { var }) if var == "TRUEMAIL_API_KEY"
    ));
}

/// `secret` with the character at `at` changed (checksum left as it was).
fn changed(secret: &str, at: usize) -> String {
    let mut bytes = secret.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn the_client_layer_is_accepted_by_the_server_layer() {
    let manager = KeyManager::new(MemoryStore::new());
    let created = manager.create(NewKey::new("acct", "Client")).await.unwrap();
    let server = ApiKeyLayer::new(manager).layer(tower::service_fn(
        |req: Request<Full<Bytes>>| async move {
            let who = req
                .extensions()
                .get::<AuthenticatedKey>()
                .map(|k| k.name().to_owned());
            let sent = req.headers()["authorization"].clone();
            assert!(sent.is_sensitive(), "marked sensitive on the way");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                who.unwrap_or_default(),
            ))))
        },
    ));
    let client = BearerAuthLayer::for_environment(created.key.clone(), Environment::Live)
        .unwrap()
        .layer(server);
    // A stale header the caller left is replaced, not sent alongside.
    let request = Request::builder()
        .header("authorization", "Bearer tm_live_stale")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_client_layer_sends_exactly_one_sensitive_bearer_header() {
    let key = TmKey::generate(Environment::Test);
    let expected = format!("Bearer {}", key.expose_secret());
    let client =
        BearerAuthLayer::new(key).layer(tower::service_fn(|req: Request<()>| async move {
            let values: Vec<_> = req
                .headers()
                .get_all("authorization")
                .iter()
                .cloned()
                .collect();
            Ok::<_, Infallible>(values)
        }));
    let values = client.oneshot(Request::new(())).await.unwrap();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].to_str().unwrap(), expected);
    assert!(values[0].is_sensitive());
    assert!(
        !format!("{:?}", values[0]).contains("tm_test_"),
        "Debug redacts it"
    );
}

#[test]
fn the_environment_guard_works_both_ways() {
    let test_key = TmKey::generate(Environment::Test);
    let live_key = TmKey::generate(Environment::Live);
    let err = BearerAuthLayer::for_environment(test_key, Environment::Live).unwrap_err();
    assert_eq!(
        (err.key, err.target),
        (Environment::Test, Environment::Live)
    );
    let err = BearerAuthLayer::for_environment(live_key, Environment::Test).unwrap_err();
    assert_eq!(
        (err.key, err.target),
        (Environment::Live, Environment::Test)
    );
}

#[test]
fn the_scanner_reports_real_keys_only() {
    let live = TmKey::generate(Environment::Live);
    let test = TmKey::generate(Environment::Test);
    let split = TmKey::generate(Environment::Live);
    let s = split.expose_secret();
    let text = format!(
        "let key = \"{}\";\n\
         // changed: {}\n\
         TEST_KEY={}\n\
         long = \"{}\"\n    \"{}\" // not a key: quotes between\n\
         wrapped = {}\n          {}\n\
         docs: tm_live_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX, tm_test_...abcd\n",
        live.expose_secret(),
        changed(live.expose_secret(), 20),
        test.expose_secret(),
        &s[..20],
        &s[20..],
        &s[..25],
        &s[25..],
    );
    let found: Vec<_> = find_keys(&text).collect();
    let hints: Vec<_> = found
        .iter()
        .map(|f| (f.environment, f.hint.clone()))
        .collect();
    assert_eq!(
        hints,
        vec![
            (Environment::Live, live.hint().to_string()),
            (Environment::Test, test.hint().to_string()),
            (Environment::Live, split.hint().to_string()),
        ]
    );
    assert_eq!(
        &text[found[0].offset..found[0].offset + 40],
        live.expose_secret()
    );
    assert!(!format!("{found:?}").contains(&live.expose_secret()[8..34]));
}

/// 100 MB of log-like text made on the fly, with a key every 10 MB.
struct Generated {
    left: usize,
    made: usize,
    line: Vec<u8>,
    key_line: Vec<u8>,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() && self.left > 0 {
            let line = if self.made % 10_000_000 < self.line.len() {
                &self.key_line
            } else {
                &self.line
            };
            let take = line.len().min(buf.len() - n).min(self.left);
            buf[n..n + take].copy_from_slice(&line[..take]);
            n += take;
            self.left -= take;
            self.made += take;
            if take < line.len() {
                break;
            }
        }
        Ok(n)
    }
}

#[test]
fn a_100_mb_stream_scans_in_constant_memory() {
    let key = TmKey::generate(Environment::Live);
    let mut line =
        b"2026-11-26T10:00:00Z INFO GET /v1/verify tm_live_ look-alike 200 ok\n".to_vec();
    line.resize(100, b' ');
    let mut key_line = format!("leak: {} here\n", key.expose_secret()).into_bytes();
    key_line.resize(100, b' ');
    let reader = Generated {
        left: 100_000_000,
        made: 0,
        line,
        key_line,
    };
    let (found, peak) = peak_during(|| scan_reader(reader).map(Result::unwrap).collect::<Vec<_>>());
    assert_eq!(found.len(), 10);
    assert!(found.iter().all(|f| f.hint == key.hint()));
    assert!(
        peak < 256 * 1024,
        "held {peak} bytes at most: one buffer, not the input"
    );
}

#[test]
fn a_100_mb_text_scans_without_copying_it() {
    let key = TmKey::generate(Environment::Test);
    let mut text = "tm_test_ look-alike and filler. ".repeat(3_125_000); // 100 MB
    text.replace_range(50_000_000..50_000_040, key.expose_secret());
    let (found, peak) = peak_during(|| find_keys(&text).collect::<Vec<_>>());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].offset, 50_000_000);
    assert!(peak < 4 * 1024, "held {peak} bytes beyond the input");
}
