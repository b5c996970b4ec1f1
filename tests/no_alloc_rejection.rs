//! Rejecting a malformed header or a mistyped key allocates nothing before
//! the response is built: the header is borrowed, the key parsed on the
//! stack, and the store never asked.
//!
//! A counting global allocator needs `unsafe impl GlobalAlloc`; it lives in
//! this test crate only (the library itself forbids unsafe code). Counts are
//! per thread, so other tests running in parallel do not disturb them.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::{HeaderMap, HeaderValue, Uri};
use tm_auth::header::bearer_token;
use tm_auth::TmKey;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a plain thread-local cell.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (out, ALLOCATIONS.with(Cell::get) - before)
}

#[test]
fn rejections_decide_without_allocating() {
    let uri = Uri::from_static("/v1/verify");
    let cases = [
        "Bearer tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", // bad checksum
        "Bearer tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3",       // wrong length
        "Bearer Bearer tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6",
        "Basic dXNlcjpwYXNz",
    ];
    for value in cases {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static(value));
        let (rejected, count) = allocations_during(|| {
            bearer_token(&headers, &uri)
                .map_err(|e| tm_auth::AuthError::from(e).code())
                .and_then(|token| {
                    TmKey::parse(token)
                        .map(|_| ())
                        .map_err(|_| "invalid_api_key")
                })
                .is_err()
        });
        assert!(rejected, "{value}");
        assert_eq!(count, 0, "{value} allocated before the response");
    }
    // The counter works: building the response does allocate.
    let ((), count) = allocations_during(|| {
        let _ = tm_auth::AuthError::UnknownKey.to_response();
    });
    assert!(count > 0);
}
