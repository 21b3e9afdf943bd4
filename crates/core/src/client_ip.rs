//! Who the client is, as far as trusted proxies vouch for it: the one rule
//! the gateway (rate-limit keys, audit) and the admin (login throttle,
//! audit) both use.
//!
//! `X-Forwarded-For` is believed only when the TCP peer is a trusted proxy,
//! and then only from the right: each trusted proxy appended the address it
//! received the request from, while everything to the left of the first
//! untrusted entry is whatever the client chose to write. So the walk goes
//! right to left over the trusted hops and stops at the first address that
//! is not trusted. An entry that is not an address (`unknown`, garbage)
//! ends the walk at the last address a trusted party stood behind — the
//! proxy that wrote the garbage — rather than skipping it, which would hand
//! the choice to whatever the client put further left.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The client's address from the TCP `peer`, the `X-Forwarded-For` header
/// lines in the order received (the last one nearest), and the trusted
/// proxies' networks.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut vouched = peer;
    for hop in forwarded_for.rev().flat_map(|line| line.rsplit(',')) {
        match parse_hop(hop.trim()) {
            Some(ip) if is_trusted(&ip) => vouched = ip,
            Some(ip) => return ip,
            None => return vouched,
        }
    }
    vouched
}

/// An address as proxies write it: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8:ffff::/48".parse().unwrap()];
        let proxy = "10.0.0.2";
        // (peer, X-Forwarded-For lines, client)
        let cases: &[(&str, &[&str], &str)] = &[
            // Only a trusted peer's header is believed.
            (proxy, &["203.0.113.9, 10.1.1.1"], "203.0.113.9"),
            ("198.51.100.7", &["203.0.113.9"], "198.51.100.7"),
            (proxy, &[], proxy),
            // A client-forged leftmost entry does not win over the real hop.
            (proxy, &["1.2.3.4, 203.0.113.9"], "203.0.113.9"),
            // Every hop trusted: the farthest one vouched for.
            (proxy, &["10.9.9.9, 10.1.1.1"], "10.9.9.9"),
            // Ports and brackets, as HAProxy, Envoy and others write them.
            (proxy, &["1.2.3.4, 203.0.113.9:51234"], "203.0.113.9"),
            (proxy, &["[2001:db8::1]:443"], "2001:db8::1"),
            (proxy, &["[2001:db8::1]"], "2001:db8::1"),
            // Garbage ends the walk at the last address a trusted party stood behind.
            (proxy, &["1.2.3.4, unknown"], proxy),
            (proxy, &["1.2.3.4, garbage, 10.1.1.1"], "10.1.1.1"),
            (proxy, &["1.2.3.4, "], proxy),
            // Several header lines read as one list, the last line being nearest.
            (proxy, &["1.2.3.4", "203.0.113.7, 10.0.0.9"], "203.0.113.7"),
            // IPv6 trusted proxies too.
            ("2001:db8:ffff::1", &["192.0.2.5"], "192.0.2.5"),
        ];
        for (peer, lines, want) in cases {
            let got = client_ip(ip(peer), lines.iter().copied(), &trusted);
            assert_eq!(got, ip(want), "peer {peer}, X-Forwarded-For {lines:?}");
        }
    }
}
