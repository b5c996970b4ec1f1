//! The whole layer fed arbitrary header maps (and peers): never panics,
//! always answers one of its documented statuses, never echoes a key.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use tm_auth::PeerAddr;
use tower::{Layer, ServiceExt};

#[path = "../../tests/support/layer_world.rs"]
mod layer_world;
use layer_world::world;

fuzz_target!(|data: &[u8]| {
    let world = world();
    let Some((&peer_byte, rest)) = data.split_first() else {
        return;
    };
    let mut request = Request::builder().uri("/v1/verify");
    // Lines of "name: value"; invalid names or values are skipped, as a
    // server's parser would refuse them before any middleware.
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = substitute(&line[colon + 1..], &world.secrets);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(&value),
        ) else {
            continue;
        };
        request = request.header(name, value);
    }
    let Ok(mut request) = request.body(Full::new(Bytes::new())) else {
        return;
    };
    if peer_byte & 1 == 1 {
        let ip: IpAddr = [127, 0, 0, peer_byte].into();
        request
            .extensions_mut()
            .insert(PeerAddr(SocketAddr::new(ip, 4000)));
    }
    let service = world.layer.layer(tower::service_fn(|_req| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    let response = world.runtime.block_on(service.oneshot(request)).unwrap();
    let status = response.status().as_u16();
    assert!(
        [200, 400, 401, 403, 429, 503].contains(&status),
        "undocumented status {status}"
    );
    let body = world
        .runtime
        .block_on(response.into_body().collect())
        .unwrap()
        .to_bytes();
    // No key's random part ever comes back.
    for secret in &world.secrets {
        let random = &secret.as_bytes()[8..34];
        assert!(
            !body.windows(random.len()).any(|w| w == random),
            "a key was echoed"
        );
    }
});

fn substitute(value: &[u8], secrets: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match (value[i], value.get(i + 1)) {
            (b'$', Some(&d)) if (b'0'..=b'2').contains(&d) => {
                out.extend_from_slice(secrets[usize::from(d - b'0')].as_bytes());
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}
