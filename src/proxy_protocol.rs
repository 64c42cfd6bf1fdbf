//! The PROXY protocol (HAProxy, v1 text and v2 binary) on both sides of
//! the proxy: feature `proxy-protocol`.
//!
//! Behind an L4 balancer (AWS NLB, a Kubernetes `LoadBalancer` Service,
//! HAProxy in TCP mode) every connection comes from the balancer, and the
//! client's address travels in a PROXY header the balancer writes before
//! anything else. With [`Server::proxy_protocol`](crate::server::Server::proxy_protocol)
//! (nginx `listen … proxy_protocol`, HAProxy `accept-proxy`) the server reads
//! that header first, with the handshake deadline, and the address it
//! carries becomes the connection's peer: the trusted-proxy walk,
//! `X-Real-IP`, `X-Forwarded-For`, `Forwarded`, `ip_hash` and the access log
//! all see the client. The bytes after the header are the request (or a TLS
//! handshake) as usual.
//!
//! Only peers in the configured CIDR list may send the header: a PROXY
//! header is a claim anyone could make, so a connection from any other
//! address is closed unread, as is one whose header is malformed, truncated
//! or missing. A v2 `LOCAL` header (the balancer's own health check) or a
//! v1 `UNKNOWN` one is served as a direct connection from the balancer.
//!
//! Toward upstreams, [`UpstreamGroup::send_proxy_v2`](crate::proxy::UpstreamGroup::send_proxy_v2)
//! (HAProxy `send-proxy-v2`) writes a v2 header with the believed client's
//! address right after each connect.
//!
//! [`parse`] is the sans-IO part: a buffer that may hold part of a header
//! gives [`Status::Partial`], a whole one its length and addresses.
//!
//! Parsing and encoding are the `proxy-header` crate's: v1 and v2, and a
//! short buffer is "read more" wherever a header is cut.
//!
//! ```
//! use wsproxy::handshake::Status;
//! use wsproxy::proxy_protocol::parse;
//!
//! let buf = b"PROXY TCP4 198.51.100.7 10.0.0.1 50123 443\r\nGET / HTTP/1.1\r\n";
//! let Status::Complete(header) = parse(buf)? else { unreachable!() };
//! assert_eq!(header.len(), 44);
//! assert_eq!(header.source(), Some("198.51.100.7:50123".parse()?));
//! assert_eq!(parse(&buf[..20])?, Status::Partial);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::StatusCode;
use ipnet::IpNet;
use proxy_header::{Error as ParseError, ParseConfig, ProxiedAddress};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::handshake::Status;

/// The longest header accepted, TLVs included. v1 headers are at most 107
/// bytes; v2 ones with addresses 232, and balancers add a few small TLVs
/// (AWS NLB its VPC endpoint ID, HAProxy the SNI or a unique ID).
pub const MAX_HEADER_LEN: usize = 4096;

/// The v2 signature, then version/command, family, and a 16-bit length.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;

/// Which peers may send a PROXY header on a listener (nginx
/// `listen … proxy_protocol` with `set_real_ip_from`, HAProxy
/// `accept-proxy` on a `bind` reached only from the balancer).
///
/// ```
/// use wsproxy::proxy_protocol::ProxyProtocol;
///
/// let pp = ProxyProtocol::from_cidrs(["10.0.0.0/8", "fd00::/8", "192.0.2.7"])?;
/// assert!(pp.trusts("10.1.2.3".parse()?));
/// assert!(!pp.trusts("198.51.100.7".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    trusted: Vec<IpNet>,
}

impl ProxyProtocol {
    /// Accepts headers from peers in these CIDR blocks or addresses. With
    /// an empty list no peer is trusted and every connection is closed.
    ///
    /// # Errors
    ///
    /// [`ProxyProtocolConfigError::InvalidCidr`] for an entry that is
    /// neither a CIDR block nor an address.
    pub fn from_cidrs<I, S>(cidrs: I) -> Result<Self, ProxyProtocolConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut trusted = Vec::new();
        for entry in cidrs {
            let text = entry.as_ref().trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(ProxyProtocolConfigError::InvalidCidr(text.to_owned())),
                },
            };
            trusted.push(net.trunc());
        }
        Ok(Self { trusted })
    }

    /// Whether `ip` may send a PROXY header. IPv4-mapped IPv6 addresses (a
    /// dual-stack listener's view of IPv4 peers) match IPv4 blocks.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Reads the header `peer` sent on `stream` and returns the client it
    /// names, or `peer` itself for a `LOCAL` or `UNKNOWN` header. Consumes
    /// exactly the header: it peeks, then reads what it saw, so whatever
    /// followed stays in the socket for the request head or a TLS
    /// handshake. The caller bounds the wait (the handshake deadline).
    pub(crate) async fn read_from(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyHeaderError> {
        if !self.trusts(peer.ip()) {
            return Err(ProxyHeaderError::Untrusted(peer.ip()));
        }
        // Header bytes already taken off the socket, when the header came
        // in pieces; empty in the common case of one segment.
        let mut taken: Vec<u8> = Vec::new();
        let mut window = [0u8; 536];
        // Each turn takes at least one byte off the socket or returns, and
        // `parse` refuses more than MAX_HEADER_LEN bytes: bounded.
        loop {
            let n = stream.peek(&mut window).await?;
            if n == 0 {
                return Err(ProxyHeaderError::Truncated);
            }
            let before = taken.len();
            taken.extend_from_slice(&window[..n]);
            match parse(&taken)? {
                Status::Complete(header) => {
                    let rest = header.len().saturating_sub(before);
                    // Peeked, so already in the socket's queue: no wait.
                    stream.read_exact(&mut window[..rest]).await?;
                    return Ok(header.source().unwrap_or(peer));
                }
                // Everything seen is header: take it and wait for more.
                Status::Partial => {
                    stream.read_exact(&mut window[..n]).await?;
                }
            }
        }
    }
}

/// A complete PROXY header, as [`parse`] found it.
///
/// ```
/// use wsproxy::handshake::Status;
/// use wsproxy::proxy_protocol::parse;
///
/// let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 50123 443\r\n";
/// let Status::Complete(header) = parse(v6)? else { unreachable!() };
/// assert_eq!(header.len(), v6.len());
/// assert_eq!(header.destination(), Some("[2001:db8::1]:443".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    len: usize,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
}

impl ProxyHeader {
    /// The header's length in bytes: what follows belongs to the client.
    #[allow(clippy::len_without_is_empty)] // a header is never empty
    pub fn len(&self) -> usize {
        self.len
    }

    /// The client's address, or `None` for a v2 `LOCAL` header, a v1
    /// `UNKNOWN` one or a family without IP addresses: the connection is
    /// then the sender's own.
    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// The address the client connected to, when `source` is known.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.destination
    }
}

/// Reads a PROXY header (v1 or v2) from the front of `buf`.
///
/// `Partial` means every byte of `buf` may still start a header: read more
/// and call again with the longer buffer.
///
/// # Errors
///
/// [`ProxyHeaderError::Malformed`] when `buf` cannot start a valid header
/// (a plain request, a bad address, a v2 command other than `LOCAL` and
/// `PROXY`), [`ProxyHeaderError::TooLarge`] for a header over
/// [`MAX_HEADER_LEN`].
///
/// ```
/// use wsproxy::handshake::Status;
/// use wsproxy::proxy_protocol::parse;
///
/// // A v2 LOCAL header: a balancer's health check.
/// let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
/// let Status::Complete(header) = parse(local)? else { unreachable!() };
/// assert_eq!((header.len(), header.source()), (16, None));
/// assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse(buf: &[u8]) -> Result<Status<ProxyHeader>, ProxyHeaderError> {
    // A v2 header says its length up front: refuse a long one before
    // waiting for its bytes.
    if buf.len() >= V2_FIXED_LEN && buf.starts_with(V2_SIGNATURE) {
        let declared = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if V2_FIXED_LEN + declared > MAX_HEADER_LEN {
            return Err(ProxyHeaderError::TooLarge);
        }
        // LOCAL (version 2, command 0): the spec has the receiver ignore
        // the family and the address block whatever they say, as HAProxy
        // does; the parser below would check them first.
        if buf[12] == 0x20 {
            let len = V2_FIXED_LEN + declared;
            if buf.len() < len {
                return Ok(Status::Partial);
            }
            return Ok(Status::Complete(ProxyHeader {
                len,
                source: None,
                destination: None,
            }));
        }
    }
    if buf.starts_with(b"PROXY") {
        v1_line(buf)?;
    }
    // TLVs are skipped, not copied: nothing here reads them.
    let config = ParseConfig {
        include_tlvs: false,
        ..ParseConfig::default()
    };
    let header = match proxy_header::ProxyHeader::parse(buf, config) {
        Ok((parsed, len)) => {
            // `None` for a v2 LOCAL header (the balancer speaks for itself,
            // a health check), a v1 UNKNOWN one, or AF_UNIX / AF_UNSPEC: no
            // IP to believe, so the spec has the receiver keep the
            // connection's own addresses.
            let addresses = parsed.proxied_address();
            ProxyHeader {
                len,
                source: addresses.map(|a| a.source),
                destination: addresses.map(|a| a.destination),
            }
        }
        Err(ParseError::BufferTooShort) if buf.len() < MAX_HEADER_LEN => {
            return Ok(Status::Partial)
        }
        Err(ParseError::BufferTooShort | ParseError::HeaderTooBig) => {
            return Err(ProxyHeaderError::TooLarge)
        }
        Err(e) => return Err(ProxyHeaderError::Malformed(e.to_string())),
    };
    if header.len > MAX_HEADER_LEN {
        return Err(ProxyHeaderError::TooLarge);
    }
    Ok(Status::Complete(header))
}

/// The longest v1 line, `\r\n` included (the spec's 107 bytes).
const V1_MAX_LEN: usize = 107;

/// Checks a v1 line as strictly as the spec words it, which the parser
/// below does not: one space after `PROXY`, at most [`V1_MAX_LEN`] bytes,
/// ports in plain decimal (no sign, no leading zero). An incomplete line
/// is left to the parser.
fn v1_line(buf: &[u8]) -> Result<(), ProxyHeaderError> {
    let malformed = |what: &str| {
        Err(ProxyHeaderError::Malformed(format!(
            "PROXY v1 line: {what}"
        )))
    };
    if buf.len() > 5 && buf[5] != b' ' {
        return malformed("no space after PROXY");
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyHeaderError::TooLarge);
        }
        return Ok(());
    };
    let fields: Vec<&[u8]> = buf[..end].split(|b| *b == b' ').collect();
    if matches!(fields.get(1), Some(&b"TCP4" | &b"TCP6")) {
        if fields.len() != 6 {
            return malformed("not PROXY TCPx SRC DST SPORT DPORT");
        }
        let plain = |port: &[u8]| {
            port.iter().all(u8::is_ascii_digit)
                && !port.is_empty()
                && (port.len() == 1 || port[0] != b'0')
        };
        if !plain(fields[4]) || !plain(fields[5]) {
            return malformed("a port is not plain decimal");
        }
    }
    Ok(())
}

/// A v2 `PROXY` header (TCP) carrying `source` to an upstream that connects
/// to `destination`, as HAProxy `send-proxy-v2` writes it.
///
/// Mixed families are written as IPv6, the IPv4 side IPv4-mapped: a v2
/// header holds one family.
///
/// ```
/// use wsproxy::handshake::Status;
/// use wsproxy::proxy_protocol::{encode_v2, parse};
///
/// let client = "198.51.100.7:50123".parse()?;
/// let bytes = encode_v2(client, "[::1]:9000".parse()?);
/// let Status::Complete(header) = parse(&bytes)? else { unreachable!() };
/// assert_eq!(header.len(), bytes.len());
/// assert_eq!(header.source().map(|a| a.ip().to_canonical()), Some(client.ip()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (source, destination)
        }
        _ => (as_v6(source), as_v6(destination)),
    };
    let mut out = Vec::with_capacity(V2_FIXED_LEN + 36);
    let header =
        proxy_header::ProxyHeader::with_address(ProxiedAddress::stream(source, destination));
    if header.encode_v2(&mut out).is_err() {
        // One family and no TLVs always encode; a LOCAL header only keeps
        // this total.
        out.clear();
        out.extend_from_slice(V2_SIGNATURE);
        out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    }
    out
}

fn as_v6(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SocketAddr::from((ip, addr.port()))
}

/// The believed client as a v2 source: its own port when it is the peer
/// itself, else port 0 (an address learned from `X-Forwarded-For` has no
/// port).
pub(crate) fn client_source(client: IpAddr, peer: SocketAddr) -> SocketAddr {
    if peer.ip().to_canonical() == client.to_canonical() {
        SocketAddr::new(client, peer.port())
    } else {
        SocketAddr::new(client, 0)
    }
}

/// An unspecified address of `like`'s family, for a destination not known.
pub(crate) fn unspecified_like(like: SocketAddr) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// Why a connection's PROXY header was refused; the server closes the
/// connection without answering (nginx logs "broken header" and closes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// The peer is outside the trusted CIDR list.
    #[error("peer {0} may not send a PROXY header")]
    Untrusted(IpAddr),
    /// Not a PROXY header, or an invalid one.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// A header longer than [`MAX_HEADER_LEN`].
    #[error("PROXY header over {MAX_HEADER_LEN} bytes")]
    TooLarge,
    /// The connection ended inside the header.
    #[error("connection closed inside the PROXY header")]
    Truncated,
    /// Reading the socket failed.
    #[error("reading the PROXY header failed")]
    Io(#[from] io::Error),
}

impl ProxyHeaderError {
    /// 400 for what the client sent, 403 for an untrusted sender, 500 for a
    /// socket error: the status the access log would carry; no answer is
    /// written to the connection.
    ///
    /// ```
    /// use wsproxy::proxy_protocol::parse;
    ///
    /// let err = parse(b"GET / HTTP/1.1\r\n").unwrap_err();
    /// assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Untrusted(_) => StatusCode::FORBIDDEN,
            Self::Malformed(_) | Self::TooLarge | Self::Truncated => StatusCode::BAD_REQUEST,
            Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A bad [`ProxyProtocol`] setting.
///
/// ```
/// use wsproxy::proxy_protocol::{ProxyProtocol, ProxyProtocolConfigError};
///
/// let err = ProxyProtocol::from_cidrs(["10.0.0.0/33"]).unwrap_err();
/// assert_eq!(err, ProxyProtocolConfigError::InvalidCidr("10.0.0.0/33".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyProtocolConfigError {
    /// An entry that is neither a CIDR block nor an IP address.
    #[error("`{0}` is not a CIDR block or an IP address")]
    InvalidCidr(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V1_TCP4: &[u8] = b"PROXY TCP4 198.51.100.7 10.0.0.1 50123 443\r\n";
    const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::7 2001:db8::1 50123 443\r\n";

    fn complete(buf: &[u8]) -> ProxyHeader {
        match parse(buf).unwrap() {
            Status::Complete(h) => h,
            Status::Partial => panic!("partial: {buf:?}"),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client() {
        let h = complete(V1_TCP4);
        assert_eq!(h.len(), V1_TCP4.len());
        assert_eq!(h.source(), Some("198.51.100.7:50123".parse().unwrap()));
        assert_eq!(h.destination(), Some("10.0.0.1:443".parse().unwrap()));
        let h = complete(V1_TCP6);
        assert_eq!(h.source(), Some("[2001:db8::7]:50123".parse().unwrap()));
    }

    #[test]
    fn v1_lines_are_held_to_the_spec() {
        for bad in [
            &b"PROXY!TCP4 1.2.3.4 5.6.7.8 80 443\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Zero-padded to 121 bytes: longer than the spec's 107.
        let long = format!("PROXY TCP4 1.2.3.4 5.6.7.8 {:0>40} {:0>40}\r\n", 80, 443);
        assert!(matches!(
            parse(long.as_bytes()),
            Err(ProxyHeaderError::TooLarge)
        ));
        // A port of 0 is plain decimal; an incomplete line waits.
        assert_eq!(
            complete(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 443\r\n")
                .source()
                .map(|a| a.port()),
            Some(0)
        );
        assert!(matches!(parse(b"PROXY TCP4 1.2."), Ok(Status::Partial)));
    }

    #[test]
    fn v2_ipv4_and_ipv6_round_trip_through_encode() {
        for (src, dst) in [
            ("198.51.100.7:50123", "10.0.0.1:443"),
            ("[2001:db8::7]:50123", "[2001:db8::1]:443"),
        ] {
            let bytes = encode_v2(src.parse().unwrap(), dst.parse().unwrap());
            let h = complete(&bytes);
            assert_eq!(h.len(), bytes.len());
            assert_eq!(h.source(), Some(src.parse().unwrap()));
            assert_eq!(h.destination(), Some(dst.parse().unwrap()));
        }
    }

    #[test]
    fn bytes_after_the_header_are_not_counted() {
        let mut buf = V1_TCP4.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(complete(&buf).len(), V1_TCP4.len());
    }

    #[test]
    fn local_and_unknown_headers_keep_the_connection_s_own_peer() {
        let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        assert_eq!(complete(local).source(), None);
        // LOCAL with addresses: still ignored.
        let mut with = encode_v2(
            "198.51.100.7:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
        );
        with[12] = 0x20;
        assert_eq!(complete(&with).source(), None);
        // LOCAL with a family but an address block too short for it (or
        // none): the family is ignored too, as HAProxy ignores it.
        let short = b"\r\n\r\n\0\r\nQUIT\n\x20\x11\x00\x00";
        assert_eq!(
            (complete(short).len(), complete(short).source()),
            (16, None)
        );
        let odd = b"\r\n\r\n\0\r\nQUIT\n\x20\x21\x00\x02ab";
        assert_eq!(complete(odd).len(), 18);
        assert!(matches!(parse(&odd[..17]), Ok(Status::Partial)));
        assert_eq!(complete(b"PROXY UNKNOWN\r\n").source(), None);
    }

    #[test]
    fn malformed_headers_are_errors_not_partial() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r",
            b"\r\n\r\n\0\r\nQUIT\n\x22\x11\x00\x0c",
            b"\x16\x03\x01\x02\x00",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                matches!(err, ProxyHeaderError::Malformed(_)),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_long_header_is_refused_before_its_bytes_arrive() {
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&big), Err(ProxyHeaderError::TooLarge)));
        // A v1 line that never ends.
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&endless).is_err());
    }

    #[test]
    fn cidrs_accept_blocks_and_addresses_and_refuse_junk() {
        let pp = ProxyProtocol::from_cidrs(["10.0.0.0/8", "::1"]).unwrap();
        assert!(pp.trusts("10.255.0.1".parse().unwrap()));
        assert!(pp.trusts("::ffff:10.0.0.1".parse().unwrap()));
        assert!(pp.trusts("::1".parse().unwrap()));
        assert!(!pp.trusts("11.0.0.1".parse().unwrap()));
        assert_eq!(
            ProxyProtocol::from_cidrs(["10.0.0.0/33"]).unwrap_err(),
            ProxyProtocolConfigError::InvalidCidr("10.0.0.0/33".into())
        );
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let bytes = encode_v2(
            "198.51.100.7:5".parse().unwrap(),
            "[::1]:9000".parse().unwrap(),
        );
        let h = complete(&bytes);
        assert_eq!(h.source(), Some("[::ffff:198.51.100.7]:5".parse().unwrap()));
    }

    proptest! {
        /// A header split at any byte is `Partial` up to the split, then the
        /// same header as the whole.
        #[test]
        fn a_header_split_anywhere_is_partial_then_the_same(
            which in 0usize..4,
            cut in 0usize..64,
        ) {
            let v2_4 = encode_v2("198.51.100.7:1".parse().unwrap(), "10.0.0.1:2".parse().unwrap());
            let v2_6 = encode_v2("[2001:db8::7]:1".parse().unwrap(), "[::1]:2".parse().unwrap());
            let whole: Vec<u8> = match which {
                0 => V1_TCP4.to_vec(),
                1 => V1_TCP6.to_vec(),
                2 => v2_4,
                _ => v2_6,
            };
            let cut = cut % whole.len();
            prop_assert_eq!(parse(&whole[..cut]).unwrap(), Status::Partial);
            prop_assert_eq!(parse(&whole).unwrap(), Status::Complete(complete(&whole)));
        }

        /// Random bytes, alone or after a header's opening, never panic and
        /// never claim more than they hold.
        #[test]
        fn random_bytes_never_panic(
            start in 0usize..5,
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let openings: [&[u8]; 5] = [b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE];
            let bytes = [openings[start], &tail].concat();
            if let Ok(Status::Complete(h)) = parse(&bytes) {
                prop_assert!(h.len() <= bytes.len());
            }
        }
    }
}
