//! What the proxy knows about one request: the listener, the peer, the
//! believed client and the chosen upstream.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::uri::Authority;
use http::HeaderValue;

/// The scheme a listener (or a trusted front proxy) served the client with.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::Scheme;
///
/// assert_eq!(Scheme::Https.as_str(), "https");
/// assert_eq!(Scheme::Https.default_port(), 443);
/// assert_eq!(Scheme::parse("HTTP"), Some(Scheme::Http));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Scheme {
    /// Plain HTTP (nginx `$scheme` = `http`).
    #[default]
    Http,
    /// HTTP over TLS (nginx `$scheme` = `https`).
    Https,
}

impl Scheme {
    /// The lowercase scheme name, as sent in `X-Forwarded-Proto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port a URL of this scheme means when it names none (RFC 9110 §4.2).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// Reads `http` or `https`, ignoring ASCII case and surrounding spaces.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who the proxy believes the client is, decided once per request by
/// [`ForwardPolicy::resolve_client`](super::ForwardPolicy::resolve_client).
///
/// Its address is the one to feed IP hash, `X-Real-IP` and `Forwarded: for=`:
/// an untrusted peer can never put another address here.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::{ForwardPolicy, Scheme};
///
/// let policy = ForwardPolicy::nginx();
/// let client = policy.resolve_client("127.0.0.1:50000".parse()?, &http::HeaderMap::new(), Scheme::Http);
/// assert_eq!(client.ip().to_string(), "127.0.0.1");
/// assert!(!client.is_peer_trusted());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub(crate) ip: IpAddr,
    pub(crate) proto: Scheme,
    pub(crate) peer_trusted: bool,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) origin: Option<HeaderValue>,
}

impl Client {
    /// The believed client address (nginx `$remote_addr` after `realip`).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The believed scheme the client used: the listener's, or a trusted
    /// peer's `X-Forwarded-Proto`.
    pub fn proto(&self) -> Scheme {
        self.proto
    }

    /// Whether the TCP peer is in the trusted-proxy list.
    pub fn is_peer_trusted(&self) -> bool {
        self.peer_trusted
    }

    /// The client's `Host` header as sent (nginx `$http_host`), kept so a
    /// redirect can be pointed back at the address the client used.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// The client's `Origin` header, kept for the CORS answer headers.
    pub fn origin(&self) -> Option<&HeaderValue> {
        self.origin.as_ref()
    }
}

/// Facts about one forwarded exchange that the policy does not decide: the
/// TCP peer, the listener, the chosen upstream and whether it is a WebSocket
/// upgrade.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::{ForwardContext, Scheme};
///
/// let ctx = ForwardContext::new("127.0.0.1:50000".parse()?, Scheme::Http, 8080, "127.0.0.1:9000".parse()?)
///     .with_websocket(true);
/// assert_eq!(ctx.upstream().as_str(), "127.0.0.1:9000");
/// assert!(ctx.is_websocket());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardContext {
    peer: SocketAddr,
    listener: Scheme,
    listener_port: u16,
    upstream: Authority,
    websocket: bool,
    /// The request's `Host` passed the handshake's own check
    /// (`parse_request`), so the rewrite need not parse it again.
    host_checked: bool,
    /// The upstream gets an HTTP/1.0 request line (the client's was 1.0).
    http10: bool,
    /// `Expect` is not sent on: the proxy answers `100-continue` itself.
    drop_expect: bool,
    /// The route's prefix rewrite, upstream's then client's, for `proxy_redirect
    /// default` to map back; boxed, as only rewriting routes have one.
    redirect_prefix: Option<Box<(String, String)>>,
}

impl ForwardContext {
    /// A plain-HTTP exchange from `peer`, accepted on a `listener` listener
    /// at `listener_port` (nginx `$server_port`), forwarded to `upstream`
    /// (`host:port`).
    pub fn new(
        peer: SocketAddr,
        listener: Scheme,
        listener_port: u16,
        upstream: Authority,
    ) -> Self {
        Self {
            peer,
            listener,
            listener_port,
            upstream,
            websocket: false,
            host_checked: false,
            http10: false,
            drop_expect: false,
            redirect_prefix: None,
        }
    }

    /// The request went upstream with its path's prefix `client` replaced
    /// by `upstream` (a route's rewrite, nginx `location /client/ {
    /// proxy_pass http://group/upstream/; }`): a redirect to the upstream
    /// under `upstream` is mapped back under `client`, as nginx's
    /// `proxy_redirect default` is `proxy_redirect
    /// http://group/upstream/ /client/`.
    #[must_use]
    pub fn with_redirect_prefix(
        mut self,
        upstream: impl Into<String>,
        client: impl Into<String>,
    ) -> Self {
        self.redirect_prefix = Some(Box::new((upstream.into(), client.into())));
        self
    }

    /// [`with_redirect_prefix`](Self::with_redirect_prefix), boxed already.
    #[must_use]
    pub(crate) fn with_boxed_redirect_prefix(
        mut self,
        prefixes: Option<Box<(String, String)>>,
    ) -> Self {
        self.redirect_prefix = prefixes;
        self
    }

    /// The prefixes of [`with_redirect_prefix`](Self::with_redirect_prefix).
    pub fn redirect_prefix(&self) -> Option<(&str, &str)> {
        self.redirect_prefix
            .as_deref()
            .map(|(u, c)| (u.as_str(), c.as_str()))
    }

    /// Marks the exchange as a validated WebSocket upgrade (or not).
    #[must_use]
    pub fn with_websocket(mut self, websocket: bool) -> Self {
        self.websocket = websocket;
        self
    }

    /// Marks the request's `Host` as checked by
    /// [`parse_request`](crate::handshake::parse_request): its head came
    /// from the wire, not from a host's hand.
    #[must_use]
    pub(crate) fn with_checked_host(mut self) -> Self {
        self.host_checked = true;
        self
    }

    /// Whether [`with_checked_host`](Self::with_checked_host) was set.
    /// [`ForwardPolicy::write_request_head`](super::ForwardPolicy::write_request_head)
    /// writes an HTTP/1.0 request line: an upstream never answers a 1.0
    /// request chunked, the one framing a 1.0 client cannot read.
    #[must_use]
    pub(crate) fn with_http10(mut self, http10: bool) -> Self {
        self.http10 = http10;
        self
    }

    /// [`ForwardPolicy::write_request_head`](super::ForwardPolicy::write_request_head)
    /// leaves `Expect` out, whatever the configured headers say: the proxy
    /// answers `100-continue` itself, as nginx does.
    #[must_use]
    pub(crate) fn without_expect(mut self, drop: bool) -> Self {
        self.drop_expect = drop;
        self
    }

    pub(crate) fn http10(&self) -> bool {
        self.http10
    }

    pub(crate) fn drops_expect(&self) -> bool {
        self.drop_expect
    }

    pub(crate) fn host_checked(&self) -> bool {
        self.host_checked
    }

    /// The TCP peer the proxy accepted.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The listener's scheme (nginx `$scheme`).
    pub fn listener(&self) -> Scheme {
        self.listener
    }

    /// The listener's port (nginx `$server_port`).
    pub fn listener_port(&self) -> u16 {
        self.listener_port
    }

    /// The chosen upstream's authority (`host:port`).
    pub fn upstream(&self) -> &Authority {
        &self.upstream
    }

    /// Whether the exchange is a validated WebSocket upgrade.
    pub fn is_websocket(&self) -> bool {
        self.websocket
    }
}
