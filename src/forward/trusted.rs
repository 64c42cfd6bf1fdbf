//! Trusted proxies and the client address the proxy believes (nginx
//! `set_real_ip_from`, `real_ip_header X-Forwarded-For`,
//! `real_ip_recursive on`).

use std::net::IpAddr;

use http::header::HeaderMap;
use ipnet::IpNet;

use super::{ForwardConfigError, Scheme, X_FORWARDED_FOR, X_FORWARDED_PROTO};

/// The trusted-proxy CIDR list, parsed once at build.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses entries that are a CIDR block (`10.0.0.0/8`) or, as nginx
    /// `set_real_ip_from` also allows, a single address.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, ForwardConfigError> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let trimmed = entry.trim();
            let net = match trimmed.parse::<IpNet>() {
                Ok(net) => net,
                Err(source) => match trimmed.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(ForwardConfigError::InvalidCidr {
                            entry: entry.clone(),
                            source,
                        })
                    }
                },
            };
            nets.push(net.trunc());
        }
        Ok(Self { nets })
    }

    /// Whether `ip` is a trusted proxy. IPv4-mapped IPv6 addresses (a
    /// dual-stack listener's view of IPv4 peers) match IPv4 blocks.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The believed client address and scheme, and whether `peer` is trusted.
    ///
    /// From a trusted peer, `X-Forwarded-For` is walked from the right past
    /// trusted hops; the first untrusted entry is the client. When every
    /// entry is trusted the leftmost one wins, and a malformed entry stops
    /// the walk at the last hop that could be checked: both as nginx
    /// `real_ip_recursive on` does. The peer's `X-Forwarded-Proto` is
    /// believed only when the peer is trusted.
    pub(crate) fn resolve(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        listener: Scheme,
    ) -> (IpAddr, Scheme, bool) {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return (peer, listener, false);
        }
        let mut client = peer;
        // Fields are walked from the last one; a field that is not text is
        // garbage like any bad entry and stops the walk, so it cannot hide
        // the hops behind it.
        'walk: for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            let Ok(value) = value.to_str() else {
                break;
            };
            for entry in value.split(',').rev() {
                let Some(ip) = parse_forwarded_ip(entry) else {
                    break 'walk;
                };
                client = ip;
                if !self.contains(ip) {
                    break 'walk;
                }
            }
        }
        let proto = forwarded_proto(headers).unwrap_or(listener);
        (client, proto, true)
    }
}

/// One `X-Forwarded-For` entry: a bare address, or one with a port that
/// some proxies add (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, _) = rest.split_once(']')?;
        return host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The scheme a trusted front proxy reports. Of a list (`https, http`) or
/// several fields the last entry counts: the one the trusted peer itself
/// wrote. Entries before it may be the client's own, passed on by a front
/// proxy that appends, as a forged `X-Forwarded-For` entry would be.
/// Anything but `http` or `https` is ignored.
fn forwarded_proto(headers: &HeaderMap) -> Option<Scheme> {
    let value = headers.get_all(X_FORWARDED_PROTO).iter().next_back()?;
    Scheme::parse(value.to_str().ok()?.rsplit(',').next()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        let v: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        TrustedProxies::parse(&v).unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bad_cidr_is_refused() {
        let err = TrustedProxies::parse(&["10.0.0.0/33".to_string()]).unwrap_err();
        assert!(
            matches!(err, ForwardConfigError::InvalidCidr { ref entry, .. } if entry == "10.0.0.0/33")
        );
        assert_eq!(err.to_string(), "invalid trusted proxy `10.0.0.0/33`");
        assert!(TrustedProxies::parse(&["proxy.local".to_string()]).is_err());
    }

    #[test]
    fn single_addresses_and_v6_blocks_are_accepted() {
        let t = trusted(&["127.0.0.1", "fd00::/8"]);
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("fd12::1")));
    }

    #[test]
    fn ipv4_mapped_peer_matches_ipv4_block() {
        let t = trusted(&["10.0.0.0/8"]);
        assert!(t.contains(ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_sends() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = xff(&["203.0.113.9"]);
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let (client, proto, is_trusted) = t.resolve(ip("192.0.2.7"), &h, Scheme::Http);
        assert_eq!(client, ip("192.0.2.7"));
        assert_eq!(proto, Scheme::Http);
        assert!(!is_trusted);
    }

    #[test]
    fn walk_stops_at_the_first_untrusted_hop_from_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        // spoofed, real client, two trusted hops; the peer is a third.
        let h = xff(&["1.1.1.1, 198.51.100.4", "10.0.0.2, 10.0.0.3"]);
        let (client, _, is_trusted) = t.resolve(ip("10.0.0.1"), &h, Scheme::Http);
        assert_eq!(client, ip("198.51.100.4"));
        assert!(is_trusted);
    }

    #[test]
    fn all_hops_trusted_gives_the_leftmost() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["10.0.0.9, 10.0.0.2"]);
        let (client, _, _) = t.resolve(ip("10.0.0.1"), &h, Scheme::Http);
        assert_eq!(client, ip("10.0.0.9"));
    }

    #[test]
    fn trusted_peer_without_xff_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        let (client, proto, _) = t.resolve(ip("10.0.0.1"), &HeaderMap::new(), Scheme::Https);
        assert_eq!(client, ip("10.0.0.1"));
        assert_eq!(proto, Scheme::Https);
    }

    #[test]
    fn garbage_entry_stops_the_walk_at_the_last_checked_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["198.51.100.4, unknown, 10.0.0.2"]);
        let (client, _, _) = t.resolve(ip("10.0.0.1"), &h, Scheme::Http);
        assert_eq!(client, ip("10.0.0.2"));
    }

    #[test]
    fn non_text_field_stops_the_walk() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = xff(&["198.51.100.4"]);
        h.append(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\xff").unwrap());
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        let (client, _, _) = t.resolve(ip("10.0.0.1"), &h, Scheme::Http);
        assert_eq!(client, ip("10.0.0.2"));
    }

    #[test]
    fn entries_with_ports_and_brackets_are_read() {
        assert_eq!(parse_forwarded_ip(" 192.0.2.1:4711"), Some(ip("192.0.2.1")));
        assert_eq!(
            parse_forwarded_ip("[2001:db8::1]:80"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_forwarded_ip("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(
            parse_forwarded_ip("::ffff:192.0.2.1"),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(parse_forwarded_ip("host:80"), None);
    }

    #[test]
    fn trusted_peer_proto_is_its_own_last_entry() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        // A client's forged `https`, then what the front proxy appended.
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("HTTPS, http"));
        let (_, proto, _) = t.resolve(ip("10.0.0.1"), &h, Scheme::Https);
        assert_eq!(proto, Scheme::Http);
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http, HTTPS"));
        let (_, proto, _) = t.resolve(ip("10.0.0.1"), &h, Scheme::Http);
        assert_eq!(proto, Scheme::Https);
        h.append(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        let (_, proto, _) = t.resolve(ip("10.0.0.1"), &h, Scheme::Https);
        assert_eq!(proto, Scheme::Http);
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("gopher"));
        let (_, proto, _) = t.resolve(ip("10.0.0.1"), &h, Scheme::Http);
        assert_eq!(proto, Scheme::Http);
    }
}
