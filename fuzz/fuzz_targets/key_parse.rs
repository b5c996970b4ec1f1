//! `TmKey::parse` on arbitrary text: never panics; what it accepts
//! round-trips; an error's message is one of the fixed messages (only its
//! numbers vary), so it can never carry any of the input.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tm_auth::TmKey;

fn skeleton(message: &str) -> String {
    message.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn known_messages() -> &'static [String] {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        [
            "nope",
            "tm_live_short",
            "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p!",
            "tm_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6",
        ]
        .iter()
        .map(|text| skeleton(&TmKey::parse(text).err().unwrap().to_string()))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match TmKey::parse(text) {
        Ok(key) => {
            assert_eq!(key.expose_secret(), text);
            assert!(TmKey::parse(key.expose_secret()).unwrap() == key);
            assert!(!format!("{key:?} {key}").contains(&text[8..]));
        }
        Err(err) => {
            let shown = skeleton(&err.to_string());
            assert!(
                known_messages().contains(&shown),
                "unexpected message: {shown}"
            );
        }
    }
});
