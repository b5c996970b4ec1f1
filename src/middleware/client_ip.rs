//! Which address a request came from, for IP allowlists.
//!
//! The client is the TCP peer, unless the peer is a trusted proxy: then one
//! forwarding header (`X-Forwarded-For`, or RFC 7239 `Forwarded`) names it.
//! That header is read right to left, skipping trusted hops; the first
//! untrusted address is the client. Anything doubtful — an entry that is
//! not an address, more than [`MAX_HOPS`] entries, bytes that are not ASCII
//! — makes the client *unknown*, which fails closed for keys that have an
//! allowlist. Nothing is ever skipped to reach a friendlier answer.
//!
//! ```
//! use std::net::IpAddr;
//! use http::HeaderMap;
//! use tm_auth::ClientIpHeader;
//! use tm_auth::middleware::client_ip::resolve;
//!
//! let trusted = ["10.0.0.0/8".parse().unwrap()];
//! let mut headers = HeaderMap::new();
//! headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.2".parse().unwrap());
//! let peer: IpAddr = "10.0.0.1".parse().unwrap();
//! let client = resolve(Some(peer), &headers, &trusted, ClientIpHeader::XForwardedFor);
//! assert_eq!(client, Some("203.0.113.7".parse().unwrap()));
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::header::{HeaderMap, HeaderName};
use ipnetwork::IpNetwork;

use crate::net::in_networks;
pub use crate::net::normalize;

/// Most forwarding entries read, across all lines; more makes the client unknown.
pub const MAX_HOPS: usize = 32;

/// The TCP peer of a request. Servers built on hyper insert it into each
/// request's extensions (see the `hyper_server` example); with the `axum`
/// feature, axum's `ConnectInfo<SocketAddr>` is read as well, and with the
/// `tonic` feature, tonic's `TcpConnectInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Which forwarding header a trusted proxy uses to name the client.
///
/// Exactly one is read: a proxy that appends to one header passes a
/// client's forged copy of the other straight through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
}

impl ClientIpHeader {
    /// The header's name, lowercase: `x-forwarded-for` or `forwarded`.
    pub fn header_name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
        }
    }
}

/// The client address of a request whose TCP peer is `peer`, or `None` when
/// it cannot be known: no peer, a trusted proxy that sent no forwarding
/// header of the configured kind, or one whose header does not name the
/// client unambiguously.
pub fn resolve(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxies: &[IpNetwork],
    header: ClientIpHeader,
) -> Option<IpAddr> {
    match resolve_peer(peer, headers, trusted_proxies, header) {
        Resolved::Client(ip) => Some(ip),
        Resolved::Unknown | Resolved::ProxyWithoutHeader(_) => None,
    }
}

/// What resolving a request's client found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The client's address.
    Client(IpAddr),
    /// No peer, or a forwarding header that does not name the client.
    Unknown,
    /// A trusted proxy (this one) sent no forwarding header of the
    /// configured kind: the proxy is misconfigured, or sends the other
    /// kind. The proxy is not the client, so the client is unknown.
    ProxyWithoutHeader(IpAddr),
}

pub(crate) fn resolve_peer(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxies: &[IpNetwork],
    header: ClientIpHeader,
) -> Resolved {
    let Some(peer) = peer.map(normalize) else {
        return Resolved::Unknown;
    };
    if !in_networks(trusted_proxies, peer) {
        return Resolved::Client(peer);
    }
    let mut hops = Hops::new();
    let mut lines = headers
        .get_all(HeaderName::from_static(header.header_name()))
        .iter()
        .peekable();
    if lines.peek().is_none() {
        return Resolved::ProxyWithoutHeader(peer);
    }
    for line in lines {
        let Ok(text) = line.to_str() else {
            return Resolved::Unknown;
        };
        let parsed = match header {
            ClientIpHeader::XForwardedFor => parse_x_forwarded_for(text, &mut hops),
            ClientIpHeader::Forwarded => parse_forwarded(text, &mut hops),
        };
        if parsed.is_none() {
            return Resolved::Unknown;
        }
    }
    let hops = hops.as_slice();
    hops.iter()
        .rev()
        .find(|ip| !in_networks(trusted_proxies, **ip))
        .or_else(|| hops.first())
        .map_or(Resolved::Unknown, |ip| Resolved::Client(*ip))
}

/// The entries of the forwarding header, on the stack: this runs per request.
struct Hops {
    ips: [IpAddr; MAX_HOPS],
    len: usize,
}

impl Hops {
    fn new() -> Hops {
        Hops {
            ips: [IpAddr::V4(Ipv4Addr::UNSPECIFIED); MAX_HOPS],
            len: 0,
        }
    }

    fn push(&mut self, ip: IpAddr) -> Option<()> {
        let slot = self.ips.get_mut(self.len)?;
        *slot = normalize(ip);
        self.len += 1;
        Some(())
    }

    fn as_slice(&self) -> &[IpAddr] {
        &self.ips[..self.len]
    }
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// Each comma-separated entry must be a bare IPv4 or IPv6 address.
fn parse_x_forwarded_for(line: &str, hops: &mut Hops) -> Option<()> {
    for entry in line.split(',') {
        hops.push(trim_ows(entry).parse().ok()?)?;
    }
    Some(())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A cursor over one `Forwarded` line.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn token(&mut self) -> &[u8] {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        &self.bytes[start..self.at]
    }

    /// A token or a quoted string, unescaped into `out`; `None` if malformed
    /// or longer than `out`.
    fn value<'b>(&mut self, out: &'b mut [u8; 64]) -> Option<&'b [u8]> {
        let mut len = 0;
        if self.peek() == Some(b'"') {
            self.at += 1;
            loop {
                let mut b = self.peek()?;
                self.at += 1;
                match b {
                    b'"' => break,
                    b'\\' => {
                        b = self.peek()?;
                        self.at += 1;
                    }
                    _ => {}
                }
                *out.get_mut(len)? = b;
                len += 1;
            }
        } else {
            let token = self.token();
            out.get_mut(..token.len())?.copy_from_slice(token);
            len = token.len();
        }
        (len > 0).then_some(&out[..len])
    }
}

/// RFC 7239: `element *( "," element )`, each element `pair *( ";" pair )`,
/// each pair `token "=" ( token / quoted-string )`. Every element must carry
/// exactly one `for=` naming an address.
fn parse_forwarded(line: &str, hops: &mut Hops) -> Option<()> {
    let mut cursor = Cursor {
        bytes: line.as_bytes(),
        at: 0,
    };
    loop {
        let mut client = None;
        let mut seen_for = false;
        loop {
            cursor.skip_ows();
            if !matches!(cursor.peek(), Some(b';' | b',') | None) {
                let name_is_for = cursor.token().eq_ignore_ascii_case(b"for");
                if cursor.peek() != Some(b'=') {
                    return None;
                }
                cursor.at += 1;
                let mut buf = [0u8; 64];
                let value = cursor.value(&mut buf)?;
                if name_is_for {
                    if seen_for {
                        return None;
                    }
                    seen_for = true;
                    client = Some(parse_node(value)?);
                }
                cursor.skip_ows();
            }
            match cursor.peek() {
                Some(b';') => cursor.at += 1,
                Some(b',') | None => break,
                Some(_) => return None,
            }
        }
        hops.push(client?)?;
        if cursor.peek().is_none() {
            return Some(());
        }
        cursor.at += 1;
    }
}

/// `node = nodename [ ":" node-port ]`, where the name must be an IPv4
/// address or a bracketed IPv6 one; `unknown` and obfuscated `_names` are
/// not addresses.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let node = std::str::from_utf8(node).ok()?;
    let (ip, port) = if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip = IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?);
        match after {
            "" => (ip, None),
            _ => (ip, Some(after.strip_prefix(':')?)),
        }
    } else {
        let (v4, port) = match node.split_once(':') {
            Some((v4, port)) => (v4, Some(port)),
            None => (node, None),
        };
        (IpAddr::V4(v4.parse::<Ipv4Addr>().ok()?), port)
    };
    if let Some(port) = port {
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        let obfuscated = port.len() > 1
            && port.starts_with('_')
            && port
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !digits && !obfuscated {
            return None;
        }
    }
    Some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> Vec<IpNetwork> {
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    fn headers(name: &str, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                line.parse().unwrap(),
            );
        }
        map
    }

    fn xff(peer: &str, lines: &[&str]) -> Option<IpAddr> {
        resolve(
            Some(ip(peer)),
            &headers("x-forwarded-for", lines),
            &trusted(),
            ClientIpHeader::XForwardedFor,
        )
    }

    fn fwd(peer: &str, lines: &[&str]) -> Option<IpAddr> {
        resolve(
            Some(ip(peer)),
            &headers("forwarded", lines),
            &trusted(),
            ClientIpHeader::Forwarded,
        )
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_sends() {
        assert_eq!(
            xff("198.51.100.1", &["203.0.113.50"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(xff("198.51.100.1", &["garbage"]), Some(ip("198.51.100.1")));
        assert_eq!(xff("::ffff:198.51.100.1", &[]), Some(ip("198.51.100.1")));
        assert_eq!(
            resolve(
                None,
                &HeaderMap::new(),
                &trusted(),
                ClientIpHeader::XForwardedFor
            ),
            None
        );
    }

    #[test]
    fn x_forwarded_for_is_read_right_to_left_skipping_trusted_hops() {
        assert_eq!(xff("10.0.0.1", &["203.0.113.50"]), Some(ip("203.0.113.50")));
        assert_eq!(
            xff("10.0.0.1", &["1.1.1.1, 203.0.113.50, 10.0.0.2"]),
            Some(ip("203.0.113.50"))
        );
        // Several lines are one list, in order.
        assert_eq!(
            xff("10.0.0.1", &["1.1.1.1", "203.0.113.50", "10.0.0.2"]),
            Some(ip("203.0.113.50"))
        );
        // All trusted: the leftmost.
        assert_eq!(
            xff("10.0.0.1", &["10.0.0.3, 10.0.0.2"]),
            Some(ip("10.0.0.3"))
        );
        // No header: the proxy names nobody, and is not the client.
        assert_eq!(xff("10.0.0.1", &[]), None);
        // IPv6 and mapped entries.
        assert_eq!(xff("10.0.0.1", &["2001:db8::1"]), Some(ip("2001:db8::1")));
        assert_eq!(
            xff("10.0.0.1", &["::ffff:203.0.113.9"]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            xff("10.0.0.1", &[" 203.0.113.9 ,\t10.0.0.2 "]),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn a_trusted_proxy_that_sends_no_header_of_the_configured_kind_names_nobody() {
        let sends = |name: &str, kind| {
            resolve_peer(
                Some(ip("10.0.0.2")),
                &headers(name, &["203.0.113.50"]),
                &trusted(),
                kind,
            )
        };
        let proxy = Resolved::ProxyWithoutHeader(ip("10.0.0.2"));
        // Configured for Forwarded, the proxy sends X-Forwarded-For.
        assert_eq!(sends("x-forwarded-for", ClientIpHeader::Forwarded), proxy);
        assert_eq!(sends("forwarded", ClientIpHeader::XForwardedFor), proxy);
        assert_eq!(sends("x-real-ip", ClientIpHeader::XForwardedFor), proxy);
        assert_eq!(xff("10.0.0.2", &[]), None);
        assert_eq!(fwd("10.0.0.2", &[]), None);
        // An untrusted peer without a header is still the client.
        assert_eq!(xff("198.51.100.1", &[]), Some(ip("198.51.100.1")));
    }

    #[test]
    fn an_ipv6_supernet_of_trusted_proxies_trusts_no_ipv4_peer() {
        let everything_v6: Vec<IpNetwork> = vec!["::/0".parse().unwrap()];
        let forged = headers("x-forwarded-for", &["10.9.9.9"]);
        for peer in ["203.0.113.9", "::ffff:203.0.113.9"] {
            assert_eq!(
                resolve(
                    Some(ip(peer)),
                    &forged,
                    &everything_v6,
                    ClientIpHeader::XForwardedFor
                ),
                Some(ip("203.0.113.9")),
                "an IPv4 peer is not inside ::/0, so its X-Forwarded-For is ignored"
            );
        }
        // An IPv6 peer inside it is trusted.
        assert_eq!(
            resolve(
                Some(ip("2001:db8::7")),
                &forged,
                &everything_v6,
                ClientIpHeader::XForwardedFor
            ),
            Some(ip("10.9.9.9"))
        );
        // The mapped range is how to trust IPv4 proxies in IPv6 notation.
        let mapped: Vec<IpNetwork> = vec!["::ffff:10.0.0.0/104".parse().unwrap()];
        assert_eq!(
            resolve(
                Some(ip("10.0.0.1")),
                &forged,
                &mapped,
                ClientIpHeader::XForwardedFor
            ),
            Some(ip("10.9.9.9"))
        );
    }

    #[test]
    fn doubtful_x_forwarded_for_makes_the_client_unknown() {
        for bad in [
            "unknown",
            "_hidden",
            "fe80::1%eth0",
            "203.0.113.9:443",
            "[2001:db8::1]",
            "203.0.113.9,",
            "",
            "203.0.113.9, garbage, 10.0.0.2",
            "garbage, 203.0.113.9",
            "01.2.3.4",
        ] {
            assert_eq!(xff("10.0.0.1", &[bad]), None, "{bad:?}");
        }
        let many = vec!["203.0.113.9"; MAX_HOPS + 1].join(",");
        assert_eq!(xff("10.0.0.1", &[&many]), None);
        let exactly = vec!["203.0.113.9"; MAX_HOPS].join(",");
        assert_eq!(xff("10.0.0.1", &[&exactly]), Some(ip("203.0.113.9")));
        // The limit counts across lines.
        let half = vec!["203.0.113.9"; MAX_HOPS / 2 + 1].join(",");
        assert_eq!(xff("10.0.0.1", &[&half, &half]), None);
        // Non-ASCII bytes.
        let mut map = HeaderMap::new();
        map.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        assert_eq!(
            resolve(
                Some(ip("10.0.0.1")),
                &map,
                &trusted(),
                ClientIpHeader::XForwardedFor
            ),
            None
        );
    }

    #[test]
    fn forwarded_is_parsed_per_rfc_7239() {
        assert_eq!(
            fwd("10.0.0.1", &["for=203.0.113.50;proto=https"]),
            Some(ip("203.0.113.50"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["For=\"203.0.113.50:4711\""]),
            Some(ip("203.0.113.50"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=\"[2001:db8::1]:4711\""]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=\"[2001:db8::1]\""]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=\"203.0.113.50:_port\""]),
            Some(ip("203.0.113.50"))
        );
        assert_eq!(
            fwd(
                "10.0.0.1",
                &["for=198.51.100.7, for=203.0.113.50;by=10.0.0.1, for=10.0.0.2"]
            ),
            Some(ip("203.0.113.50"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=198.51.100.7", "for=203.0.113.50"]),
            Some(ip("203.0.113.50"))
        );
        // A comma inside quotes does not split elements.
        assert_eq!(
            fwd("10.0.0.1", &["proto=\"a,b\";for=203.0.113.50"]),
            Some(ip("203.0.113.50"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=\"203.0.\\113.50\""]),
            Some(ip("203.0.113.50"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=203.0.113.50 ; proto=http"]),
            Some(ip("203.0.113.50"))
        );
    }

    #[test]
    fn doubtful_forwarded_makes_the_client_unknown() {
        for bad in [
            "for=unknown",
            "for=_hidden",
            "for=\"_hidden:80\"",
            "proto=https",
            "for=203.0.113.50, proto=https",
            "for=203.0.113.50;for=198.51.100.1",
            "for=2001:db8::1",
            "for=\"2001:db8::1\"",
            "for=\"[2001:db8::1%eth0]\"",
            "for=\"[2001:db8::1]:\"",
            "for=\"203.0.113.50:123456\"",
            "for=203.0.113.50:80",
            "for=\"203.0.113.50",
            "for=",
            "for",
            "for=203.0.113.50 garbage",
            "",
        ] {
            assert_eq!(fwd("10.0.0.1", &[bad]), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(lines in proptest::collection::vec("[ -~]{0,80}", 0..4), forwarded in any::<bool>(), peer_trusted in any::<bool>()) {
            let mut map = HeaderMap::new();
            let kind = if forwarded { ClientIpHeader::Forwarded } else { ClientIpHeader::XForwardedFor };
            let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
            for line in &lines {
                if let Ok(value) = http::HeaderValue::from_str(line) {
                    map.append(HeaderName::from_static(name), value);
                }
            }
            let peer = if peer_trusted { ip("10.0.0.1") } else { ip("198.51.100.1") };
            let client = resolve(Some(peer), &map, &trusted(), kind);
            if !peer_trusted {
                prop_assert_eq!(client, Some(peer));
            }
        }

        #[test]
        fn real_addresses_come_back(a in any::<[u8; 4]>(), b in any::<[u16; 8]>()) {
            let v4 = IpAddr::from(a);
            let v6 = IpAddr::from(b);
            prop_assume!(!in_networks(&trusted(), normalize(v4)) && !in_networks(&trusted(), normalize(v6)));
            prop_assert_eq!(xff("10.0.0.1", &[&v4.to_string()]), Some(v4));
            prop_assert_eq!(xff("10.0.0.1", &[&v6.to_string()]), Some(normalize(v6)));
            prop_assert_eq!(fwd("10.0.0.1", &[&format!("for=\"[{v6}]:80\"")]), Some(normalize(v6)));
        }
    }
}
