//! The forwarding policy: what the upstream and the client may see.
//!
//! [`ForwardPolicy`] is a sans-IO header rewriter over `http` types whose
//! default ([`ForwardPolicy::nginx`]) is the classic nginx WebSocket
//! configuration:
//!
//! ```nginx
//! map $http_upgrade $connection_upgrade { default upgrade; '' close; }
//! proxy_http_version 1.1;
//! proxy_set_header Upgrade $http_upgrade;
//! proxy_set_header Connection $connection_upgrade;
//! proxy_set_header Host $http_host;
//! proxy_set_header X-Real-IP $remote_addr;
//! proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
//! proxy_set_header X-Forwarded-Proto $scheme;
//! ```
//!
//! A request is handled in steps, because the proxy needs the client's
//! address before it picks an upstream (IP hash) and the upstream before it
//! rewrites `Host`:
//!
//! 1. [`ForwardPolicy::resolve_client`]: who the client is ([`Client`]);
//! 2. [`ForwardPolicy::check`] and [`ForwardPolicy::preflight`]: refuse a
//!    foreign WebSocket origin, answer a CORS preflight;
//! 3. (the caller picks an upstream) [`ForwardPolicy::rewrite_request`];
//! 4. [`ForwardPolicy::rewrite_response`] on the upstream's answer.
//!
//! A caller that only sends the rewritten heads on as bytes, as the proxy
//! does, writes them with [`ForwardPolicy::write_request_head`] and (for a
//! 101 read by [`parse_upgrade_answer`](crate::handshake::parse_upgrade_answer))
//! [`ForwardPolicy::write_switching_head`] instead: the same fields, no
//! `HeaderMap` edited or built.
//!
//! # nginx directives
//!
//! [`ForwardPolicy::builder`] changes the defaults and refuses bad settings
//! (a header value with CR, LF or NUL, a bad CIDR or origin) in `build()`,
//! never at run time.
//!
//! | nginx | builder |
//! |---|---|
//! | `proxy_http_version 1.1` | always (requests and answers leave as HTTP/1.1) |
//! | `map $http_upgrade $connection_upgrade {…}` + `proxy_set_header Upgrade`/`Connection` | always: `Upgrade: websocket`, `Connection: upgrade` on an upgrade, else `Connection: close` |
//! | `proxy_set_header Host $http_host` | `.host(HostMode::ClientAsSent)` (default: the port a client used survives) |
//! | `proxy_set_header Host $host` | `.host(HostMode::Client)` |
//! | `proxy_set_header Host $host:$server_port` | `.host(HostMode::ClientWithListenerPort)` |
//! | `proxy_set_header Host $proxy_host` | `.host(HostMode::Upstream)` |
//! | `proxy_set_header Host api.internal` | `.host(HostMode::Fixed("api.internal".into()))` |
//! | `proxy_set_header X-Real-IP $remote_addr` | always, the believed client |
//! | `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for` | `.x_forwarded_for(XForwardedFor::Append)` (default) |
//! | `proxy_set_header X-Forwarded-For $remote_addr` | `.x_forwarded_for(XForwardedFor::Replace)` |
//! | `proxy_set_header X-Forwarded-Proto $scheme` | always, the believed scheme |
//! | `set_real_ip_from 10.0.0.0/8; real_ip_header X-Forwarded-For; real_ip_recursive on;` | `.trusted_proxy("10.0.0.0/8")` (repeatable) |
//! | `proxy_set_header Forwarded …` | `.forwarded(true)` (RFC 7239) |
//! | `proxy_set_header Name value` / `Name ""` | `.set_request_header(name, value)` / `.remove_request_header(name)` |
//! | `add_header Name value always` / `proxy_hide_header Name` | `.add_response_header(name, value)` / `.remove_response_header(name)` |
//! | `add_header Access-Control-…` + `if ($request_method = OPTIONS) { return 204; }` | `.cors(Cors::any_origin())` or `.cors(Cors::origins([...]))`, then [`ForwardPolicy::preflight`] |
//! | `proxy_redirect default` / `off` | `.redirect(true)` (default) / `.redirect(false)` |
//! | (none; Origin checks live in the app) | `.allow_origin("https://app.example")` (repeatable; others get 403) |
//!
//! # Hop-by-hop fields and spoofing
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) and every field named in
//! `Connection` are removed both ways, except `Upgrade` and `Connection` on
//! a 101 answer. An untrusted peer cannot move the believed address: its
//! `X-Real-IP`, `X-Forwarded-Proto` and `Forwarded` are replaced or
//! dropped, and the rightmost `X-Forwarded-For` entry is always the peer the
//! proxy saw; with trusted proxies, `X-Forwarded-For` is walked from the
//! right past them, as nginx's `real_ip_recursive on` does.
//!
//! # Body framing
//!
//! `Transfer-Encoding` is hop-by-hop, yet the rewrite keeps the framing a
//! body arrived with, because wsproxy relays bodies in that framing (a
//! chunked request body re-framed by the proxy, still chunked):
//! `Content-Length` and `Transfer-Encoding` are kept verbatim, and naming
//! them in `Connection` does not remove them (the handshake layer has
//! already refused a request carrying both, or a coding list not ending in
//! `chunked`).
//! A caller that relays the body as received needs to do nothing; a caller
//! that decodes chunked bodies and re-frames them must set `Content-Length`
//! or `Transfer-Encoding: chunked` itself. The same holds for answers.
//!
//! # Examples
//!
//! ```
//! use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};
//!
//! let policy = ForwardPolicy::nginx();
//! let peer = "127.0.0.1:50000".parse()?;
//! let mut req = http::Request::get("/chat")
//!     .header("host", "chat.example")
//!     .header("upgrade", "websocket")
//!     .header("connection", "Upgrade")
//!     .header("x-real-ip", "6.6.6.6") // a spoofing attempt
//!     .body(())?;
//!
//! let client = policy.resolve_client(peer, req.headers(), Scheme::Http);
//! policy.check(&req, true)?;
//! let ctx = ForwardContext::new(peer, Scheme::Http, 80, "127.0.0.1:9000".parse()?).with_websocket(true);
//! policy.rewrite_request(&mut req, &client, &ctx);
//!
//! let h = req.headers();
//! assert_eq!(h["upgrade"], "websocket");
//! assert_eq!(h["connection"], "upgrade");
//! assert_eq!(h["host"], "chat.example");
//! assert_eq!(h["x-real-ip"], "127.0.0.1");
//! assert_eq!(h["x-forwarded-for"], "127.0.0.1");
//! assert_eq!(h["x-forwarded-proto"], "http");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Builders and setters return a changed copy: dropping it is always a bug.
#![warn(clippy::return_self_not_must_use)]

mod context;
mod cors;
mod error;
mod extra;
mod forwarded;
mod hop;
mod host;
mod origin;
mod redirect;
mod trusted;
mod underscore;
mod write;

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};

pub use context::{Client, ForwardContext, Scheme};
pub use cors::Cors;
pub use error::{ForwardConfigError, ForwardError};
pub use host::HostMode;

use cors::CompiledCors;
use extra::{HeaderEdits, RawEdit};
use hop::Keep;
use host::HostRule;
use origin::OriginAllowlist;
use trusted::TrustedProxies;

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How `X-Forwarded-For` is written.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::{ForwardPolicy, XForwardedFor};
///
/// let edge = ForwardPolicy::builder().x_forwarded_for(XForwardedFor::Replace).build()?;
/// # let _ = edge;
/// # Ok::<(), wsproxy::forward::ForwardConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum XForwardedFor {
    /// nginx `$proxy_add_x_forwarded_for`: the incoming list with the TCP
    /// peer appended, so the rightmost entry is always the peer the proxy
    /// saw, whoever sent the rest.
    #[default]
    Append,
    /// Only the believed client address (nginx `X-Forwarded-For
    /// $remote_addr` with `realip`): for an edge proxy whose upstreams read
    /// the first entry.
    Replace,
}

/// The forwarding policy: which client to believe, which requests to
/// refuse, and how request and answer headers are rewritten.
///
/// Built once (validated by [`ForwardPolicyBuilder::build`]), shared by
/// reference, and pure: no I/O, no clock.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::{ForwardPolicy, HostMode};
///
/// let policy = ForwardPolicy::builder()
///     .trusted_proxy("10.0.0.0/8")
///     .allow_origin("https://app.example")
///     .host(HostMode::ClientWithListenerPort)
///     .forwarded(true)
///     .set_request_header("X-Proxy", "wsproxy")
///     .build()?;
/// # let _ = policy;
/// # Ok::<(), wsproxy::forward::ForwardConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ForwardPolicy {
    host: HostRule,
    xff: XForwardedFor,
    forwarded: bool,
    redirect: bool,
    trusted: TrustedProxies,
    origins: OriginAllowlist,
    cors: Option<CompiledCors>,
    request_edits: HeaderEdits,
    response_edits: HeaderEdits,
    underscores: bool,
}

impl Default for ForwardPolicy {
    fn default() -> Self {
        Self::nginx()
    }
}

impl ForwardPolicy {
    /// The classic nginx WebSocket configuration (see the [module
    /// docs](self)), with `proxy_redirect default`, no trusted proxies, no
    /// origin check, no CORS and no `Forwarded` header.
    pub fn nginx() -> Self {
        Self {
            host: HostRule::ClientAsSent,
            xff: XForwardedFor::Append,
            forwarded: false,
            redirect: true,
            trusted: TrustedProxies::default(),
            origins: OriginAllowlist::default(),
            cors: None,
            request_edits: HeaderEdits::default(),
            response_edits: HeaderEdits::default(),
            underscores: false,
        }
    }

    /// A builder starting from [`ForwardPolicy::nginx`].
    pub fn builder() -> ForwardPolicyBuilder {
        ForwardPolicyBuilder::default()
    }

    /// Decides who the client is, before an upstream is chosen.
    ///
    /// From an untrusted peer, the peer itself and the listener's scheme.
    /// From a trusted proxy, the address found by walking `X-Forwarded-For`
    /// from the right past trusted hops (nginx `real_ip_recursive on`; all
    /// trusted gives the leftmost) and its `X-Forwarded-Proto`.
    ///
    /// # Examples
    ///
    /// ```
    /// use wsproxy::forward::{ForwardPolicy, Scheme};
    ///
    /// let policy = ForwardPolicy::builder().trusted_proxy("127.0.0.0/8").build()?;
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-forwarded-for", "198.51.100.7, 127.0.0.2".parse()?);
    /// headers.insert("x-forwarded-proto", "https".parse()?);
    /// let client = policy.resolve_client("127.0.0.1:4000".parse()?, &headers, Scheme::Http);
    /// assert_eq!(client.ip().to_string(), "198.51.100.7");
    /// assert_eq!(client.proto(), Scheme::Https);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resolve_client(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        listener: Scheme,
    ) -> Client {
        let (ip, proto, peer_trusted) = self.trusted.resolve(peer.ip(), headers, listener);
        Client {
            ip,
            proto,
            peer_trusted,
            host: headers.get(header::HOST).cloned(),
            origin: headers.get(header::ORIGIN).cloned(),
        }
    }

    /// Refuses a request the policy does not forward.
    ///
    /// # Errors
    ///
    /// [`ForwardError::OriginNotAllowed`] (403) for a WebSocket upgrade
    /// whose `Origin` is outside the allowlist. A request without `Origin`
    /// passes: browsers always send it on WebSocket handshakes.
    ///
    /// # Examples
    ///
    /// ```
    /// use wsproxy::forward::ForwardPolicy;
    ///
    /// let policy = ForwardPolicy::builder().allow_origin("https://app.example").build()?;
    /// let req = http::Request::get("/ws").header("origin", "https://evil.example").body(())?;
    /// let refused = policy.check(&req, true).map_err(|e| e.status());
    /// assert_eq!(refused, Err(http::StatusCode::FORBIDDEN));
    /// assert!(policy.check(&req, false).is_ok()); // plain HTTP is CORS's business
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check<B>(&self, req: &Request<B>, websocket: bool) -> Result<(), ForwardError> {
        if websocket {
            self.origins.check(req.headers())?;
        }
        Ok(())
    }

    /// The answer to a CORS preflight when CORS is configured: 204 with the
    /// `Access-Control-*` headers, or 403 for an origin outside
    /// [`Cors::origins`]. `None` means forward the request as usual.
    ///
    /// # Examples
    ///
    /// ```
    /// use wsproxy::forward::{Cors, ForwardPolicy};
    ///
    /// let policy = ForwardPolicy::builder().cors(Cors::any_origin()).build()?;
    /// let req = http::Request::options("/api")
    ///     .header("origin", "https://app.example")
    ///     .header("access-control-request-method", "POST")
    ///     .body(())?;
    /// let answer = policy.preflight(&req).ok_or("no preflight answer")?;
    /// assert_eq!(answer.status(), http::StatusCode::NO_CONTENT);
    /// assert_eq!(answer.headers()["access-control-allow-origin"], "*");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn preflight<B>(&self, req: &Request<B>) -> Option<Response<()>> {
        self.cors.as_ref()?.preflight(req)
    }

    /// Rewrites a request head for the upstream chosen in `ctx`.
    ///
    /// In order: hop-by-hop fields and those named in `Connection` are
    /// removed (RFC 9110 §7.6.1; `Transfer-Encoding` is kept, see the
    /// module's "Body framing"); `Upgrade: websocket` and
    /// `Connection: upgrade` for a WebSocket upgrade, else
    /// `Connection: close`; `Host` per [`HostMode`]; `X-Real-IP`,
    /// `X-Forwarded-For`, `X-Forwarded-Proto` (and `Forwarded` if enabled)
    /// from `client`; fields whose names have an underscore are dropped
    /// (nginx `underscores_in_headers off`), or when they are allowed, those
    /// that CGI-style backends read as a field set here (`X_Real_IP`); an
    /// absolute-form target becomes origin-form; the
    /// version becomes HTTP/1.1; the configured request headers are applied
    /// last. An untrusted peer's incoming `Forwarded` is removed.
    ///
    /// # Examples
    ///
    /// ```
    /// use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};
    ///
    /// let policy = ForwardPolicy::nginx();
    /// let peer = "127.0.0.1:50000".parse()?;
    /// let mut req = http::Request::post("/form")
    ///     .header("host", "app.example")
    ///     .header("x-forwarded-for", "203.0.113.1")
    ///     .header("content-length", "3")
    ///     .body(())?;
    /// let client = policy.resolve_client(peer, req.headers(), Scheme::Https);
    /// let ctx = ForwardContext::new(peer, Scheme::Https, 443, "127.0.0.1:9000".parse()?);
    /// policy.rewrite_request(&mut req, &client, &ctx);
    /// assert_eq!(req.headers()["connection"], "close");
    /// assert_eq!(req.headers()["x-forwarded-for"], "203.0.113.1, 127.0.0.1");
    /// assert_eq!(req.headers()["x-forwarded-proto"], "https");
    /// assert_eq!(req.headers()["content-length"], "3");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rewrite_request<B>(&self, req: &mut Request<B>, client: &Client, ctx: &ForwardContext) {
        let host = self.host.value(req, ctx);
        let real_ip = ip_value(client.ip());
        let forwarded_for = self.forwarded_for(req.headers(), client, ctx, &real_ip);
        if let Some(origin_form) = origin_form(req.uri()) {
            *req.uri_mut() = origin_form;
        }
        *req.version_mut() = Version::HTTP_11;

        let h = req.headers_mut();
        hop::strip(h, Keep::Nothing);
        underscore::strip(h, self.underscores, &self.request_edits);
        if ctx.is_websocket() {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            // nginx `map $http_upgrade $connection_upgrade { '' close; }`:
            // one request per upstream connection.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        h.insert(header::HOST, host);
        h.insert(X_REAL_IP, real_ip);
        h.insert(X_FORWARDED_FOR, forwarded_for);
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(client.proto().as_str()),
        );
        if self.forwarded {
            let element = forwarded::element(client.ip(), client.proto(), client.host());
            h.insert(header::FORWARDED, element);
        } else if !client.is_peer_trusted() {
            // Upstreams that read RFC 7239 must not see a forged `for=`.
            h.remove(header::FORWARDED);
        }
        self.request_edits.apply(h);
    }

    /// Rewrites the upstream's answer head for the client.
    ///
    /// Hop-by-hop fields are removed, except `Upgrade` and `Connection` on a
    /// 101; a plain answer gets `Connection: close`, matching the
    /// one-request upstream connection. With `proxy_redirect default` on, a
    /// `Location` or `Refresh` pointing at the upstream is pointed at the
    /// scheme and `Host` the client used (a relative URL when the client
    /// sent no `Host`). Plain answers then get the CORS headers and the
    /// configured answer headers. The version becomes HTTP/1.1.
    ///
    /// # Examples
    ///
    /// ```
    /// use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};
    ///
    /// let policy = ForwardPolicy::nginx();
    /// let peer = "127.0.0.1:50000".parse()?;
    /// let req = http::Request::get("/").header("host", "app.example").body(())?;
    /// let client = policy.resolve_client(peer, req.headers(), Scheme::Https);
    /// let ctx = ForwardContext::new(peer, Scheme::Https, 443, "127.0.0.1:9000".parse()?);
    ///
    /// let mut answer = http::Response::builder()
    ///     .status(302)
    ///     .header("location", "http://127.0.0.1:9000/login")
    ///     .header("keep-alive", "timeout=5")
    ///     .body(())?;
    /// policy.rewrite_response(&mut answer, &client, &ctx);
    /// assert_eq!(answer.headers()["location"], "https://app.example/login");
    /// assert!(answer.headers().get("keep-alive").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rewrite_response<B>(
        &self,
        resp: &mut Response<B>,
        client: &Client,
        ctx: &ForwardContext,
    ) {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        *resp.version_mut() = Version::HTTP_11;
        let h = resp.headers_mut();
        hop::strip(
            h,
            if switching {
                Keep::Upgrade
            } else {
                Keep::Nothing
            },
        );
        if self.redirect && redirect::has_target(h) {
            let to = match client.host().and_then(|v| v.to_str().ok()) {
                Some(host) => format!("{}://{}", client.proto(), host),
                None => String::new(),
            };
            redirect::rewrite(h, ctx.upstream(), ctx.redirect_prefix(), &to);
        }
        if switching {
            return;
        }
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if let Some(cors) = &self.cors {
            cors.decorate(client.origin(), h);
        }
        self.response_edits.apply(h);
    }

    /// Applies the configured response headers to an answer the proxy
    /// makes itself (a 404, 413, 502): nginx `add_header … always` adds
    /// them "regardless of the response code", so that, say, a CORS
    /// header reaches the browser on an error too.
    pub fn edit_own_answer(&self, headers: &mut HeaderMap) {
        self.response_edits.apply(headers);
    }

    /// `X-Forwarded-For` for this hop, computed before the strip so a
    /// client cannot hide the incoming list by naming it in `Connection`.
    /// `real_ip` is the believed client's value, reused when it is the
    /// whole answer.
    fn forwarded_for(
        &self,
        headers: &HeaderMap,
        client: &Client,
        ctx: &ForwardContext,
        real_ip: &HeaderValue,
    ) -> HeaderValue {
        let peer = ctx.peer().ip().to_canonical();
        if self.xff == XForwardedFor::Replace {
            return real_ip.clone();
        }
        let mut list: Vec<u8> = Vec::new();
        for value in headers.get_all(X_FORWARDED_FOR) {
            let v = value.as_bytes().trim_ascii();
            if v.is_empty() {
                continue;
            }
            list.extend_from_slice(v);
            list.extend_from_slice(b", ");
        }
        if list.is_empty() && peer == client.ip() {
            return real_ip.clone();
        }
        // Writing to a Vec cannot fail.
        let _ = write!(list, "{peer}");
        // Incoming values are valid header values and so is their join;
        // the fallback only keeps this total.
        owned_value(list).unwrap_or_else(|| ip_value(peer))
    }
}

/// A header value over bytes built here, without copying them again.
/// Strips an interim (1xx) answer's hop-by-hop fields before it is relayed:
/// it gets no other rewrite (no CORS, no redirect), as nginx relays 103.
pub(crate) fn strip_interim(headers: &mut http::HeaderMap) {
    hop::strip(headers, hop::Keep::Nothing);
}

pub(crate) fn owned_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(bytes)).ok()
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    // Formatted on the stack and moved into one shared block: the value is
    // cloned into `X-Forwarded-For` (and `X-Real-IP`), and a `Vec` or a
    // copied slice would allocate again, for its shared header, on the
    // first clone or at once.
    HeaderValue::from_maybe_shared(Bytes::from_owner(IpText::of(ip)))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// An address's text, formatted on the stack (and owned by the `Bytes` of
/// its header value on the `HeaderMap` path).
pub(crate) struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    pub(crate) fn of(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 46],
            len: 0,
        };
        if let IpAddr::V4(v4) = ip {
            // By hand: `Display` goes through the formatting machinery,
            // about twenty times the instructions for four numbers.
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                if octet >= 100 {
                    text.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    text.push(b'0' + octet / 10 % 10);
                }
                text.push(b'0' + octet % 10);
            }
            return text;
        }
        let mut out = &mut text.buf[..];
        // The longest address (IPv4-mapped IPv6) has 45 characters, so this
        // cannot fail.
        let _ = write!(out, "{ip}");
        text.len = 46 - out.len();
        text
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len.min(46)]
    }
}

impl AsRef<[u8]> for IpText {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The origin-form of an absolute-form target (RFC 9112 §3.2.1): upstreams
/// are origin servers, and nginx sends them origin-form too.
fn origin_form(uri: &Uri) -> Option<Uri> {
    uri.authority()?;
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    pq.parse().ok()
}

/// Builds a [`ForwardPolicy`]; every setting is checked in
/// [`build`](Self::build), never at run time.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::ForwardPolicy;
///
/// let policy = ForwardPolicy::builder()
///     .remove_request_header("HTTP_X_FORWARDED_FOR")
///     .add_response_header("Strict-Transport-Security", "max-age=63072000")
///     .build()?;
/// # let _ = policy;
/// # Ok::<(), wsproxy::forward::ForwardConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ForwardPolicyBuilder {
    host: HostMode,
    xff: XForwardedFor,
    forwarded: bool,
    redirect: bool,
    trusted: Vec<String>,
    origins: Vec<String>,
    cors: Option<Cors>,
    request_edits: Vec<RawEdit>,
    response_edits: Vec<RawEdit>,
    underscores: bool,
}

impl Default for ForwardPolicyBuilder {
    fn default() -> Self {
        Self {
            host: HostMode::ClientAsSent,
            xff: XForwardedFor::Append,
            forwarded: false,
            redirect: true,
            trusted: Vec::new(),
            origins: Vec::new(),
            cors: None,
            request_edits: Vec::new(),
            response_edits: Vec::new(),
            underscores: false,
        }
    }
}

impl ForwardPolicyBuilder {
    /// The `Host` the upstream sees (nginx `proxy_set_header Host`);
    /// default [`HostMode::ClientAsSent`] (`$http_host`).
    pub fn host(mut self, mode: HostMode) -> Self {
        self.host = mode;
        self
    }

    /// How `X-Forwarded-For` is written; default [`XForwardedFor::Append`].
    pub fn x_forwarded_for(mut self, mode: XForwardedFor) -> Self {
        self.xff = mode;
        self
    }

    /// Also send an RFC 7239 `Forwarded: for=…;proto=…;host=…` for the
    /// believed client, replacing any incoming one; default off.
    pub fn forwarded(mut self, on: bool) -> Self {
        self.forwarded = on;
        self
    }

    /// nginx `proxy_redirect default` (on) or `proxy_redirect off`.
    pub fn redirect(mut self, on: bool) -> Self {
        self.redirect = on;
        self
    }

    /// Trusts a proxy address or CIDR block (nginx `set_real_ip_from`);
    /// repeatable.
    pub fn trusted_proxy(mut self, cidr: impl Into<String>) -> Self {
        self.trusted.push(cidr.into());
        self
    }

    /// Allows WebSocket upgrades from this exact origin
    /// (`scheme://host[:port]`); repeatable. With none, all are allowed.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// Answers CORS preflights and decorates plain answers.
    pub fn cors(mut self, cors: Cors) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Sets a request header for the upstream, replacing any incoming one
    /// (nginx `proxy_set_header`). Applied after the built-in rewrite.
    pub fn set_request_header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.request_edits
            .push(RawEdit::Set(name.into(), value.as_ref().to_vec()));
        self
    }

    /// Removes a request header before forwarding (nginx
    /// `proxy_set_header Name ""`).
    pub fn remove_request_header(mut self, name: impl Into<String>) -> Self {
        self.request_edits.push(RawEdit::Remove(name.into()));
        self
    }

    /// Sets a header on plain (non-101) answers, replacing the upstream's
    /// (nginx `add_header … always`; replacing avoids duplicate fields),
    /// and on the proxy's own error answers.
    pub fn add_response_header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.response_edits
            .push(RawEdit::Set(name.into(), value.as_ref().to_vec()));
        self
    }

    /// Passes request fields whose names have an underscore (nginx
    /// `underscores_in_headers on`); default off, as in nginx, which drops
    /// them: CGI, WSGI and Rack read `X_Real_IP` and `X-Real-IP` as the same
    /// `HTTP_X_REAL_IP`, so a client could stand its own value beside the
    /// proxy's. Even when on, the underscore twins of the fields the proxy
    /// sets (`Host`, `X-Real-IP`, `X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `Forwarded`, the configured request headers) are dropped.
    ///
    /// ```
    /// use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};
    ///
    /// let policy = ForwardPolicy::builder().underscores_in_headers(true).build()?;
    /// let peer = "127.0.0.1:50000".parse()?;
    /// let mut req = http::Request::get("/")
    ///     .header("host", "app.example")
    ///     .header("x_real_ip", "6.6.6.6")
    ///     .header("x_tenant", "blue")
    ///     .body(())?;
    /// let client = policy.resolve_client(peer, req.headers(), Scheme::Http);
    /// let ctx = ForwardContext::new(peer, Scheme::Http, 80, "127.0.0.1:9000".parse()?);
    /// policy.rewrite_request(&mut req, &client, &ctx);
    /// assert!(req.headers().get("x_real_ip").is_none());
    /// assert_eq!(req.headers()["x_tenant"], "blue");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn underscores_in_headers(mut self, on: bool) -> Self {
        self.underscores = on;
        self
    }

    /// Removes a header from plain answers (nginx `proxy_hide_header`).
    pub fn remove_response_header(mut self, name: impl Into<String>) -> Self {
        self.response_edits.push(RawEdit::Remove(name.into()));
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// A [`ForwardConfigError`] for a header name that is not a token, a value
    /// with CR, LF, NUL or another control byte, a proxy-managed header
    /// (hop-by-hop fields, `Content-Length`), a bad CIDR or origin, or CORS
    /// credentials with any origin.
    pub fn build(self) -> Result<ForwardPolicy, ForwardConfigError> {
        let host = match self.host {
            HostMode::ClientAsSent => HostRule::ClientAsSent,
            HostMode::Client => HostRule::Client,
            HostMode::ClientWithListenerPort => HostRule::ClientWithListenerPort,
            HostMode::Upstream => HostRule::Upstream,
            HostMode::Fixed(v) => HostRule::Fixed(
                HeaderValue::from_str(&v)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| ForwardConfigError::InvalidHeaderValue {
                        name: "host".into(),
                    })?,
            ),
        };
        Ok(ForwardPolicy {
            host,
            xff: self.xff,
            forwarded: self.forwarded,
            redirect: self.redirect,
            trusted: TrustedProxies::parse(&self.trusted)?,
            origins: OriginAllowlist::parse(&self.origins)?,
            cors: self.cors.as_ref().map(Cors::compile).transpose()?,
            request_edits: HeaderEdits::compile(&self.request_edits)?,
            response_edits: HeaderEdits::compile(&self.response_edits)?,
            underscores: self.underscores,
        })
    }
}

#[cfg(test)]
mod tests;
