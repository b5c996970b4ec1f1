//! The `X-Forwarded-For` / `Forwarded` client-IP resolution on arbitrary
//! header lines: never panics, and never names an address from a header
//! when the peer is not a trusted proxy.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tm_auth::middleware::client_ip::resolve;
use tm_auth::ClientIpHeader;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let name = if flags & 1 == 0 {
            "x-forwarded-for"
        } else {
            "forwarded"
        };
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let header = if flags & 2 == 0 {
        ClientIpHeader::XForwardedFor
    } else {
        ClientIpHeader::Forwarded
    };
    let peer: IpAddr = if flags & 4 == 0 {
        "10.0.0.1".parse().unwrap()
    } else {
        "203.0.113.7".parse().unwrap()
    };
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    let client = resolve(Some(peer), &headers, &trusted, header);
    if flags & 4 != 0 {
        assert_eq!(client, Some(peer), "an untrusted peer is its own client");
    }
});
