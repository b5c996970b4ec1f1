//! Addresses and networks: how a client address is normalised and matched
//! against an allowlist or the trusted proxies. Records and client-IP
//! resolution both use it, and it uses neither.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// `::ffff:a.b.c.d` becomes `a.b.c.d`, so IPv4 allowlists match clients
/// reaching a dual-stack socket.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The allowlist rule: an empty list admits any address, even an unknown
/// one; a non-empty one admits only a known address inside one of its
/// networks.
pub(crate) fn ip_allowed(allowed: &[IpNetwork], client_ip: Option<IpAddr>) -> bool {
    allowed.is_empty() || client_ip.is_some_and(|ip| in_networks(allowed, ip))
}

/// Whether `ip` (normalised) is inside one of `networks`.
///
/// An IPv4 address matches an IPv4 network, and an IPv6 network only when
/// that network lies inside the IPv4-mapped range `::ffff:0:0/96` (so
/// `::ffff:203.0.113.0/120` admits 203.0.113.7). An IPv6 network that is
/// wider than the mapped range, such as `::/0` or `::/64`, admits no IPv4
/// address: it was written for IPv6 clients.
pub(crate) fn in_networks(networks: &[IpNetwork], ip: IpAddr) -> bool {
    // The usual case — no trusted proxies — costs nothing.
    if networks.is_empty() {
        return false;
    }
    match normalize(ip) {
        IpAddr::V4(v4) => {
            let mapped = v4.to_ipv6_mapped();
            networks.iter().any(|net| match net {
                IpNetwork::V4(net) => net.contains(v4),
                IpNetwork::V6(net) => within_mapped_range(net) && net.contains(mapped),
            })
        }
        ip @ IpAddr::V6(_) => networks.iter().any(|net| net.contains(ip)),
    }
}

/// Whether every address of `net` is an IPv4-mapped one (`::ffff:0:0/96`).
fn within_mapped_range(net: &ipnetwork::Ipv6Network) -> bool {
    net.prefix() >= 96 && net.network().to_ipv4_mapped().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allowlists() {
        let nets = nets(&["203.0.113.0/24", "2001:db8::/32"]);
        let some = |s: &str| Some(ip(s));
        assert!(ip_allowed(&[], None));
        assert!(ip_allowed(&[], some("198.51.100.1")));
        assert!(!ip_allowed(&nets, None));
        assert!(ip_allowed(&nets, some("203.0.113.7")));
        assert!(ip_allowed(&nets, some("::ffff:203.0.113.7")));
        assert!(ip_allowed(&nets, some("2001:db8::5")));
        assert!(!ip_allowed(&nets, some("198.51.100.1")));
        assert!(!ip_allowed(&nets, some("2001:db9::5")));
    }

    #[test]
    fn an_ipv6_supernet_admits_no_ipv4_client() {
        for supernet in [
            "::/0",
            "::/64",
            "::/80",
            "::/95",
            "::ffff:0:0/95",
            "::ffff:0:0/94",
        ] {
            let list = nets(&[supernet]);
            for client in ["203.0.113.9", "::ffff:203.0.113.9", "0.0.0.0", "10.0.0.1"] {
                assert!(
                    !in_networks(&list, ip(client)),
                    "{supernet} must not admit the IPv4 client {client}"
                );
            }
        }
        // They still admit the IPv6 clients they were written for.
        assert!(in_networks(&nets(&["::/0"]), ip("2001:db8::1")));
        assert!(in_networks(&nets(&["::/64"]), ip("::1")));
    }

    #[test]
    fn a_network_inside_the_mapped_range_admits_its_ipv4_clients() {
        let all_v4 = nets(&["::ffff:0:0/96"]);
        assert!(in_networks(&all_v4, ip("203.0.113.9")));
        assert!(in_networks(&all_v4, ip("::ffff:198.51.100.1")));
        assert!(!in_networks(&all_v4, ip("2001:db8::1")));
        let one_range = nets(&["::ffff:203.0.113.0/120"]);
        assert!(in_networks(&one_range, ip("203.0.113.7")));
        assert!(!in_networks(&one_range, ip("203.0.114.7")));
        let single = nets(&["::ffff:203.0.113.9/128"]);
        assert!(in_networks(&single, ip("203.0.113.9")));
        assert!(!in_networks(&single, ip("203.0.113.8")));
        // A /96 that is not the mapped range (the old IPv4-compatible one).
        assert!(!in_networks(&nets(&["::/96"]), ip("203.0.113.9")));
    }

    #[test]
    fn an_ipv4_network_never_admits_an_ipv6_client() {
        let list = nets(&["0.0.0.0/0"]);
        assert!(in_networks(&list, ip("198.51.100.1")));
        assert!(
            in_networks(&list, ip("::ffff:198.51.100.1")),
            "mapped is IPv4"
        );
        assert!(!in_networks(&list, ip("2001:db8::1")));
        assert!(!in_networks(&list, ip("::1")));
    }
}
