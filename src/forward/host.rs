//! The `Host` the upstream sees.

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::Request;

use std::io::Write as _;

use super::{owned_value, ForwardContext};
use crate::handshake::{is_host_and_port, normalize_host, request_host};

/// Which `Host` the upstream receives (nginx `proxy_set_header Host …`).
///
/// # Examples
///
/// ```
/// use wsproxy::forward::{ForwardPolicy, HostMode};
///
/// let policy = ForwardPolicy::builder().host(HostMode::Fixed("api.internal".into())).build()?;
/// # let _ = policy;
/// # Ok::<(), wsproxy::forward::ForwardConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostMode {
    /// nginx `$http_host`, the default: the client's `Host` as sent, port
    /// included (the authority of an absolute-form target, RFC 9112
    /// §3.2.2), after the handshake's validity checks; the upstream's
    /// `host:port` when the client sent none (HTTP/1.0) or, on a hand-built
    /// request, an invalid one. HAProxy, Envoy and Go's `ReverseProxy` pass
    /// it unchanged too: a client of `chat.example:8443` stays on that port
    /// in the absolute URLs and redirects the upstream builds.
    #[default]
    ClientAsSent,
    /// nginx `$host`: the host of an absolute-form request target, else the
    /// `Host` header, lowercased and without its port; the upstream's host
    /// when the client sent neither (HTTP/1.0). The classic nginx WebSocket
    /// config, and this crate's default until `$http_host` replaced it: it
    /// drops the port a client used.
    Client,
    /// nginx `$host:$server_port`: the client's host with the listener's port.
    ClientWithListenerPort,
    /// nginx `proxy_set_header Host $proxy_host`: the upstream's `host:port`.
    Upstream,
    /// A fixed value, checked when the policy is built.
    Fixed(String),
}

/// [`HostMode`] with a fixed value already validated.
#[derive(Debug, Clone)]
pub(crate) enum HostRule {
    ClientAsSent,
    Client,
    ClientWithListenerPort,
    Upstream,
    Fixed(HeaderValue),
}

impl HostRule {
    pub(crate) fn value<B>(&self, req: &Request<B>, ctx: &ForwardContext) -> HeaderValue {
        let port = match self {
            Self::Fixed(v) => return v.clone(),
            Self::ClientAsSent => return as_sent(req, ctx),
            Self::Upstream => {
                let upstream = ctx.upstream().as_str().as_bytes().to_vec();
                return owned_value(upstream).unwrap_or(HeaderValue::from_static("localhost"));
            }
            Self::Client => None,
            Self::ClientWithListenerPort => Some(ctx.listener_port()),
        };
        // The common case, a lowercase `Host` without a port or trailing
        // dot under `$host`, is forwarded as it came.
        if port.is_none() && req.uri().authority().is_none() {
            if let Some(v) = req.headers().get(header::HOST) {
                let b = v.as_bytes();
                if !b.is_empty()
                    && !b.contains(&b':')
                    && !b.ends_with(b".")
                    && !b.iter().any(u8::is_ascii_uppercase)
                {
                    return v.clone();
                }
            }
        }
        let mut out = nginx_host(req, ctx).into_bytes();
        if let Some(port) = port {
            // Writing to a Vec cannot fail.
            let _ = write!(out, ":{port}");
        }
        // Built from a parsed URI or a valid header value; the fallback only
        // keeps the function total.
        owned_value(out).unwrap_or(HeaderValue::from_static("localhost"))
    }
}

/// nginx `$http_host`: the client's host as it came, port included,
/// falling back to the upstream's `host:port`.
fn as_sent<B>(req: &Request<B>, ctx: &ForwardContext) -> HeaderValue {
    if req.uri().authority().is_none() {
        // The common case: the parsed `Host` header, already checked by the
        // handshake (RFC 9112 §3.2), forwarded without a copy. Checked again
        // here for hand-built requests (hyper's, for `connect_upgrade`):
        // the check parses a copy.
        if let Some(v) = req.headers().get(header::HOST) {
            if ctx.host_checked() || v.to_str().is_ok_and(valid_host) {
                return v.clone();
            }
        }
    } else if let Some(host) = request_host(req) {
        // An absolute-form target's authority wins over `Host` (RFC 9112
        // §3.2.2); userinfo never goes on.
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        if valid_host(host) {
            if let Some(v) = owned_value(host.as_bytes().to_vec()) {
                return v;
            }
        }
    }
    let upstream = ctx.upstream().as_str().as_bytes().to_vec();
    owned_value(upstream).unwrap_or(HeaderValue::from_static("localhost"))
}

/// `uri-host [":" port]`, the check the handshake puts `Host` through.
fn valid_host(host: &str) -> bool {
    host.parse::<Authority>()
        .is_ok_and(|a| is_host_and_port(&a))
}

/// nginx `$host`, falling back to the upstream's host.
fn nginx_host<B>(req: &Request<B>, ctx: &ForwardContext) -> String {
    // Parsed heads never carry userinfo (the handshake refuses it), but a
    // hand-built request may; `$host` is the part after it.
    let host = request_host(req).map(|a| a.rsplit_once('@').map_or(a, |(_, h)| h));
    match host.map(normalize_host) {
        Some(h) if !h.is_empty() => h.into_owned(),
        _ => ctx.upstream().host().to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Scheme;

    fn ctx() -> ForwardContext {
        ForwardContext::new(
            "127.0.0.1:5000".parse().unwrap(),
            Scheme::Https,
            8443,
            "10.0.0.5:8080".parse().unwrap(),
        )
    }

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn as_sent_mode_keeps_the_port_and_case_like_nginx_http_host() {
        for host in [
            "chat.example:8443",
            "App.Example",
            "[::1]:8443",
            "app.example.",
        ] {
            let v = HostRule::ClientAsSent.value(&req("/", Some(host)), &ctx());
            assert_eq!(v, host);
        }
    }

    #[test]
    fn as_sent_mode_takes_an_absolute_target_without_userinfo() {
        let r = req("http://user@target.example:81/x", Some("header.example"));
        assert_eq!(
            HostRule::ClientAsSent.value(&r, &ctx()),
            "target.example:81"
        );
    }

    #[test]
    fn as_sent_mode_falls_back_to_the_upstream_authority() {
        // No Host (HTTP/1.0), and on a hand-built request an invalid one.
        for host in [None, Some("a b"), Some("x@y"), Some("host:port")] {
            let v = HostRule::ClientAsSent.value(&req("/", host), &ctx());
            assert_eq!(v, "10.0.0.5:8080", "{host:?}");
        }
    }

    #[test]
    fn client_mode_is_nginx_host_lowercase_without_port() {
        let v = HostRule::Client.value(&req("/", Some("App.Example:8443")), &ctx());
        assert_eq!(v, "app.example");
        let v = HostRule::Client.value(&req("/", Some("[::1]:8443")), &ctx());
        assert_eq!(v, "[::1]");
    }

    #[test]
    fn client_mode_drops_a_trailing_dot_like_nginx_host() {
        for host in ["app.example.", "App.Example.:8443"] {
            let v = HostRule::Client.value(&req("/", Some(host)), &ctx());
            assert_eq!(v, "app.example", "{host}");
        }
    }

    #[test]
    fn client_mode_drops_userinfo_of_a_hand_built_target() {
        let v = HostRule::Client.value(&req("http://user@target.example:81/x", None), &ctx());
        assert_eq!(v, "target.example");
    }

    #[test]
    fn absolute_form_target_wins_over_host_header() {
        let v = HostRule::Client.value(
            &req("http://target.example:81/x", Some("header.example")),
            &ctx(),
        );
        assert_eq!(v, "target.example");
    }

    #[test]
    fn missing_host_falls_back_to_upstream_host() {
        assert_eq!(HostRule::Client.value(&req("/", None), &ctx()), "10.0.0.5");
    }

    #[test]
    fn listener_port_upstream_and_fixed_modes() {
        let r = req("/", Some("app.example:9999"));
        assert_eq!(
            HostRule::ClientWithListenerPort.value(&r, &ctx()),
            "app.example:8443"
        );
        assert_eq!(HostRule::Upstream.value(&r, &ctx()), "10.0.0.5:8080");
        let fixed = HostRule::Fixed(HeaderValue::from_static("api.internal"));
        assert_eq!(fixed.value(&r, &ctx()), "api.internal");
    }
}
