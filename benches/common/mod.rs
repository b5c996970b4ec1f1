//! What the benchmarks share: how keys are drawn, and polling a future the
//! in-memory paths complete at once.

// Each bench binary uses a part of this module.
#![allow(dead_code)]

use std::hint::black_box;

/// A cheap PRNG (xorshift64), for shuffling and drawing.
pub(crate) struct Pick(pub u64);

impl Pick {
    /// 64 fresh bits.
    pub(crate) fn bits(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// An index below `len`.
    pub(crate) fn next(&mut self, len: usize) -> usize {
        (self.bits() % len as u64) as usize
    }
}

/// The keys to draw, each with the index of the next one: a single random
/// cycle through all of them (Sattolo's shuffle), stored contiguously.
///
/// The next key depends on the previous iteration's *result* (through an
/// AND with a zero the compiler cannot see), so each lookup waits on the
/// last, on every side. Without that, a short loop like the floor's lets
/// the CPU overlap one iteration's cache misses with the next one's, which
/// no request handler can do, and the sides would not count misses alike.
pub(crate) struct Chain<T> {
    pub entries: Vec<(T, u32)>,
    at: usize,
    zero: u64,
}

impl<T> Chain<T> {
    pub(crate) fn of(items: impl IntoIterator<Item = T>) -> Chain<T> {
        let mut entries: Vec<(T, u32)> = items.into_iter().map(|item| (item, 0)).collect();
        let n = entries.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut pick = Pick(0x9E37_79B9_7F4A_7C15);
        for i in (1..n).rev() {
            order.swap(i, pick.next(i));
        }
        for (entry, next) in entries.iter_mut().zip(order) {
            entry.1 = next as u32;
        }
        Chain {
            entries,
            at: 0,
            zero: black_box(0),
        }
    }

    /// The next item; `feedback` is anything computed from the previous result.
    pub(crate) fn step(&mut self, feedback: u64) -> &T {
        let (item, next) = &self.entries[self.at ^ (feedback & self.zero) as usize];
        self.at = *next as usize;
        item
    }
}

impl Chain<[u8; 40]> {
    /// Keys, stored contiguously.
    pub(crate) fn new(secrets: &[String]) -> Chain<[u8; 40]> {
        Chain::of(secrets.iter().map(|secret| {
            let mut key = [0u8; 40];
            let bytes = secret.as_bytes();
            let len = bytes.len().min(40);
            key[..len].copy_from_slice(&bytes[..len]);
            key
        }))
    }

    pub(crate) fn next(&mut self, feedback: u64) -> &str {
        std::str::from_utf8(self.step(feedback))
            .unwrap_or("")
            .trim_end_matches('\0')
    }
}

/// What the next draw waits on after a verification: a bit of its verdict
/// (the key's environment, read from the entry the verification itself
/// read). The floor waits on the value it found the same way. Not the id,
/// owner or name: those are for handlers, and reading them may cost a
/// memory access of its own that neither side should be charged here.
pub(crate) fn verdict<E>(who: &Result<tm_auth::AuthenticatedKey, E>) -> u64 {
    match who {
        Ok(who) => 1 + who.environment() as u64,
        Err(_) => 0,
    }
}

/// Creates `n` keys in `manager`, ten to an owner, each named like a
/// person would (about 25 characters): the store every benchmark measures.
/// Returns their secrets in creation order.
pub(crate) fn create_keys(
    runtime: &tokio::runtime::Runtime,
    manager: &tm_auth::KeyManager,
    n: usize,
) -> Vec<String> {
    runtime.block_on(async {
        let mut secrets = Vec::with_capacity(n);
        for i in 0..n {
            let new = tm_auth::NewKey::new(
                format!("acct_{:07}", i / 10),
                format!("Production - Website {i:04}"),
            );
            let created = manager.create(new).await.expect("create a key");
            secrets.push(created.key.expose_secret().to_owned());
        }
        secrets
    })
}

/// Polls a future that the in-memory store completes at once. Called inside
/// the benchmark's runtime context, so timers behave as in a server.
pub(crate) fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}
