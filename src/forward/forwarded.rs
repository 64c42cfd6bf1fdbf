//! The RFC 7239 `Forwarded` header.

use std::io::Write as _;
use std::net::IpAddr;

use http::HeaderValue;

use super::Scheme;

/// One `Forwarded` element for the believed client:
/// `for=<ip>;proto=<scheme>[;host=<host>]`.
///
/// IPv6 addresses are bracketed and quoted (RFC 7239 §6: `[` and `:` are not
/// token characters); a host that is not a token is sent as a
/// quoted-string with `"` and `\` escaped (RFC 9110 §5.6.4).
pub(crate) fn element(client: IpAddr, proto: Scheme, host: Option<&HeaderValue>) -> HeaderValue {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"for=");
    match client {
        // Writing to a Vec cannot fail.
        IpAddr::V4(v4) => drop(write!(out, "{v4}")),
        IpAddr::V6(v6) => drop(write!(out, "\"[{v6}]\"")),
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_str().as_bytes());
    if let Some(host) = host {
        out.extend_from_slice(b";host=");
        let h = host.as_bytes();
        if !h.is_empty() && h.iter().all(|&b| is_tchar(b)) {
            out.extend_from_slice(h);
        } else {
            out.push(b'"');
            for &b in h {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'"');
        }
    }
    // Every byte came from an IP, a scheme name or a valid header value,
    // so the fallback is unreachable; it keeps the path panic-free.
    super::owned_value(out).unwrap_or(HeaderValue::from_static("for=unknown"))
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_bare_and_token_host_unquoted() {
        let v = element(
            "192.0.2.60".parse().unwrap(),
            Scheme::Http,
            Some(&HeaderValue::from_static("example.com")),
        );
        assert_eq!(v, "for=192.0.2.60;proto=http;host=example.com");
    }

    #[test]
    fn ipv6_is_quoted_and_bracketed() {
        let v = element("2001:db8:cafe::17".parse().unwrap(), Scheme::Https, None);
        assert_eq!(v, "for=\"[2001:db8:cafe::17]\";proto=https");
    }

    #[test]
    fn host_with_port_or_quotes_is_a_quoted_string() {
        let v = element(
            "192.0.2.60".parse().unwrap(),
            Scheme::Http,
            Some(&HeaderValue::from_static("a.example:8080")),
        );
        assert_eq!(v, "for=192.0.2.60;proto=http;host=\"a.example:8080\"");
        let v = element(
            "192.0.2.60".parse().unwrap(),
            Scheme::Http,
            Some(&HeaderValue::from_static("a\"b\\c")),
        );
        assert_eq!(v, "for=192.0.2.60;proto=http;host=\"a\\\"b\\\\c\"");
    }
}
