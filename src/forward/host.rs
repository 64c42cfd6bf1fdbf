//! The `Host` the upstream sees.

use http::header::{self, HeaderValue};
use http::Request;

use std::io::Write as _;

use super::{owned_value, ForwardContext};
use crate::handshake::{normalize_host, request_host};

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
    /// nginx `$host`: the host of an absolute-form request target, else the
    /// `Host` header, lowercased and without its port; the upstream's host
    /// when the client sent neither (HTTP/1.0). The classic WebSocket config.
    #[default]
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
    Client,
    ClientWithListenerPort,
    Upstream,
    Fixed(HeaderValue),
}

impl HostRule {
    pub(crate) fn value<B>(&self, req: &Request<B>, ctx: &ForwardContext) -> HeaderValue {
        let port = match self {
            Self::Fixed(v) => return v.clone(),
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
