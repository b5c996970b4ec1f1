//! Resident memory per key in `MemoryStore` at 1 million keys that have not
//! been used yet (names about 25 characters, no IP lists, ten keys per
//! owner), read from `/proc/self/statm` before and after loading.
//!
//! ```text
//! cargo run --release --example memory_per_key [-- KEYS]
//! ```
//!
//! Prints one line `bytes_per_key=N`. Linux only (it reads /proc).

use std::time::SystemTime;

use tm_auth::{Environment, KeyId, KeyRecord, KeyStore, MemoryStore, TmKey};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let store = MemoryStore::new();
    let before = resident_bytes();
    // Every allocation a record makes (its strings included) happens inside
    // the measured span; the keys themselves live on the stack and are gone.
    for i in 0..keys {
        let key = TmKey::generate(Environment::Live);
        let record = KeyRecord {
            id: KeyId::generate(),
            owner: format!("acct_{:07}", i / 10),
            name: format!("Production - Website {i:04}"),
            environment: Environment::Live,
            hint: key.hint(),
            hash: key.hash(),
            allowed_ips: Vec::new(),
            created_at: SystemTime::now(),
            expires_at: None,
            revoked_at: None,
            rate_limit: None,
            scopes: Vec::new(),
        };
        store.insert(record).await.expect("insert");
    }
    let after = resident_bytes();
    let per_key = (after.saturating_sub(before)) as f64 / keys as f64;
    println!("keys={keys} resident_before={before} resident_after={after}");
    println!("bytes_per_key={per_key:.0}");
    assert_eq!(store.len(), keys);
}
