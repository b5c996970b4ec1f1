//! The `Authorization` header parser on arbitrary bytes: never panics, and
//! what it accepts is one non-empty word of visible ASCII taken from the
//! value. (Whether the word is a well-formed key is `TmKey::parse`'s job.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tm_auth::header::parse_bearer;

fuzz_target!(|value: &[u8]| {
    if let Ok(token) = parse_bearer(value) {
        assert!(!token.is_empty());
        assert!(token.bytes().all(|b| (b'!'..=b'~').contains(&b)));
        assert!(value.windows(token.len()).any(|w| w == token.as_bytes()));
    }
});
