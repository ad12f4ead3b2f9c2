//! Where a request comes from: the socket's peer, or — only when that peer
//! is one of the configured `trusted_proxies` — the right-most address of
//! `X-Forwarded-For` that is not a trusted proxy (the left part of the
//! header is whatever the client chose to send). The login throttle and the
//! anonymous allowance key on it (IPv6 by its /64, see
//! [`lms::throttle::ClientAddr`]).
//!
//! Without a socket address (a request handed to the router directly, as
//! in handler tests) the address is `unknown`: one shared bucket, limited
//! like any other.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;
use lms::throttle::ClientAddr;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From addresses (`10.0.0.1`) and networks (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        items
            .iter()
            .map(|s| {
                let s = s.as_ref().trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{s}` is not an IP address or network"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// At most this many `X-Forwarded-For` hops are looked at, from the right.
const MAX_HOPS: usize = 16;

/// The client's address of a request.
pub fn address(headers: &HeaderMap, ext: &Extensions, trusted: &TrustedProxies) -> ClientAddr {
    let Some(ConnectInfo(peer)) = ext.get::<ConnectInfo<SocketAddr>>() else {
        return ClientAddr::unknown();
    };
    ClientAddr::new(Some(client_ip(canonical(peer.ip()), headers, trusted)))
}

/// Whether the request reached the proxy in front of this server over TLS:
/// a trusted proxy (`--trusted-proxy`) says so with `X-Forwarded-Proto:
/// https`. A client's own header is not believed.
pub fn forwarded_https(headers: &HeaderMap, ext: &Extensions, trusted: &TrustedProxies) -> bool {
    let Some(ConnectInfo(peer)) = ext.get::<ConnectInfo<SocketAddr>>() else {
        return false;
    };
    trusted.trusts(canonical(peer.ip()))
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next_back())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.trusts(peer) {
        return peer;
    }
    let mut client = peer;
    // Every X-Forwarded-For header, in order, as one list; read right to left.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev().take(MAX_HOPS) {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Not an address: nothing to its left can be believed.
            return client;
        };
        client = canonical(ip);
        if !trusted.trusts(client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "127.0.0.1"]).expect("parse");
        let h = xff(&["203.0.113.9, 198.51.100.7, 10.1.2.3"]);
        // From a stranger: the socket's address, whatever the header says.
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
        // Through trusted proxies: the right-most untrusted hop, not the
        // left-most (which the client wrote).
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        assert_eq!(
            client_ip(
                ip("10.9.9.9"),
                &xff(&["203.0.113.9", "198.51.100.7"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Only trusted hops: the left-most of them.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &xff(&["10.0.0.2, 10.0.0.3"]), &trusted),
            ip("10.0.0.2")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
        // Garbage stops the walk at the last believed hop.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &xff(&["198.51.100.7, junk, 10.0.0.5"]),
                &trusted
            ),
            ip("10.0.0.5")
        );
        assert!(TrustedProxies::parse(&["nope"]).is_err());
    }
}
