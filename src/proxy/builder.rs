//! [`ProxyBuilder`]: the proxy's settings, each named after the nginx
//! directive it mirrors, validated by [`build`](ProxyBuilder::build).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{
    ConnectionHook, ConnectionReport, Inner, Live, Proxy, TcpKeepalive, Timeouts, UpstreamGroup,
    DEFAULT_LINGER,
};
use crate::balance::Balancer;
use crate::forward::ForwardPolicy;
use crate::handshake::Limits;
use crate::route::{Route, RouteConfigError, Routes, RoutesBuilder};
use crate::tunnel::TunnelConfig;

/// Builds a [`Proxy`]; [`build`](Self::build) validates.
#[must_use = "a ProxyBuilder does nothing until built"]
#[derive(Debug)]
pub struct ProxyBuilder {
    routes: RoutesBuilder<UpstreamGroup>,
    policy: ForwardPolicy,
    limits: Limits,
    timeouts: Timeouts,
    tunnel: Option<TunnelConfig>,
    max_tries: usize,
    keepalive_requests: u32,
    tcp_keepalive: Option<TcpKeepalive>,
    client_max_body_size: u64,
    on_end: Option<ConnectionHook>,
}

/// nginx's default `client_max_body_size`: 1 MiB.
const DEFAULT_CLIENT_MAX_BODY_SIZE: u64 = 1024 * 1024;

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self {
            routes: Routes::builder(),
            policy: ForwardPolicy::nginx(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            tunnel: None,
            max_tries: 3,
            keepalive_requests: 1000,
            tcp_keepalive: None,
            client_max_body_size: DEFAULT_CLIENT_MAX_BODY_SIZE,
            on_end: None,
        }
    }
}

impl ProxyBuilder {
    /// Sends every host and path to one balancer (nginx `location /` with
    /// `proxy_pass http://backend;`).
    #[must_use = "builder methods return the updated builder"]
    pub fn upstream(self, balancer: impl Balancer + 'static) -> Self {
        self.route(Route::new("/", UpstreamGroup::new("default", balancer)))
    }

    /// Adds a route (nginx `server_name` + `location`).
    #[must_use = "builder methods return the updated builder"]
    pub fn route(mut self, route: Route<UpstreamGroup>) -> Self {
        self.routes = self.routes.route(route);
        self
    }

    /// The header forwarding policy (default: [`ForwardPolicy::nginx`]).
    #[must_use = "builder methods return the updated builder"]
    pub fn policy(mut self, policy: ForwardPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Request and response head limits (default: 16 KiB, 100 headers).
    #[must_use = "builder methods return the updated builder"]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// All timeouts at once.
    #[must_use = "builder methods return the updated builder"]
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// nginx `client_header_timeout` (default 60 s).
    #[must_use = "builder methods return the updated builder"]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.handshake = timeout;
        self
    }

    /// nginx `proxy_connect_timeout` (default 4 s).
    #[must_use = "builder methods return the updated builder"]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// nginx `proxy_read_timeout` (default 60 s); also ends a tunnel whose
    /// upstream stays silent this long, as nginx does.
    #[must_use = "builder methods return the updated builder"]
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.read = timeout;
        self
    }

    /// nginx `proxy_send_timeout` (default 60 s).
    #[must_use = "builder methods return the updated builder"]
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.send = timeout;
        self
    }

    /// nginx `keepalive_timeout` (default 75 s). Zero turns keep-alive
    /// off, as `keepalive_timeout 0` does: each HTTP/1.1 answer carries
    /// `Connection: close`, and an HTTP/2 connection closes as soon as its
    /// last stream ends.
    #[must_use = "builder methods return the updated builder"]
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.keepalive = timeout;
        self
    }

    /// nginx `keepalive_requests` (default 1000): requests served on one
    /// client connection before it is closed.
    #[must_use = "builder methods return the updated builder"]
    pub fn keepalive_requests(mut self, requests: u32) -> Self {
        self.keepalive_requests = requests;
        self
    }

    /// Upstreams tried per request, the first included (nginx
    /// `proxy_next_upstream_tries`; default 3). Each upstream is tried at
    /// most once per request, so `usize::MAX` tries every one (nginx's 0).
    #[must_use = "builder methods return the updated builder"]
    pub fn max_tries(mut self, tries: usize) -> Self {
        self.max_tries = tries;
        self
    }

    /// nginx `proxy_next_upstream_timeout` (default zero: no limit): a
    /// request whose try fails this long after its first began goes to no
    /// other upstream, and gets the failure's answer. A try under way is not
    /// cut short. Without it a request on upstreams that take it and never
    /// answer may wait [`max_tries`](Self::max_tries) read timeouts.
    #[must_use = "builder methods return the updated builder"]
    pub fn next_upstream_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.next_upstream = timeout;
        self
    }

    /// The tunnel's timeouts. By default they follow the proxy's: the
    /// upstream side's read timeout is the read timeout and the send timeout
    /// is the send timeout, as in nginx's upgraded connections; after one
    /// side closes, the other may go on while it moves, and ends after 5 s
    /// of silence (nginx closes both at once; the linger lets a WebSocket
    /// closing handshake complete). WebSocket
    /// frames are tracked, so that tunnels can be closed politely (drain,
    /// rebalance) and their reports carry the peers' Close codes.
    #[must_use = "builder methods return the updated builder"]
    pub fn tunnel(mut self, config: TunnelConfig) -> Self {
        self.tunnel = Some(config);
        self
    }

    /// TCP keepalive on the sockets to upstreams, and on the client sockets
    /// a [`Server`](crate::server::Server) accepts (off by default, as in
    /// nginx and HAProxy).
    #[must_use = "builder methods return the updated builder"]
    pub fn tcp_keepalive(mut self, keepalive: TcpKeepalive) -> Self {
        self.tcp_keepalive = Some(keepalive);
        self
    }

    /// The largest request body the proxy forwards, in bytes (nginx
    /// `client_max_body_size`; default 1 MiB, 0 for no limit as in nginx).
    ///
    /// A request whose Content-Length is larger is answered 413 before
    /// anything of it reaches an upstream. A chunked body is answered 413
    /// as soon as its chunk sizes add up to more, before any byte of the
    /// chunk that crosses the limit is forwarded (the head and earlier
    /// chunks are already upstream: its connection is then closed).
    ///
    /// ```
    /// use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
    /// use wsproxy::Proxy;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let upstreams: UpstreamSet = [Upstream::new("127.0.0.1:8010".parse::<std::net::SocketAddr>()?)]
    ///     .into_iter()
    ///     .collect();
    /// let proxy = Proxy::builder()
    ///     .upstream(RoundRobin::new(upstreams))
    ///     .client_max_body_size(16 * 1024 * 1024)
    ///     .build()?;
    /// assert_eq!(proxy.client_max_body_size(), 16 * 1024 * 1024);
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_max_body_size(mut self, bytes: u64) -> Self {
        self.client_max_body_size = bytes;
        self
    }

    /// Calls `hook` with the client's address and the [`ConnectionReport`]
    /// once each connection has ended, tunnel included, whichever way it
    /// came in: [`Proxy::serve`], a [`Server`](crate::server::Server) (whose
    /// own [`on_connection_end`](crate::server::Server::on_connection_end)
    /// is called after this one), or [`Proxy::connect_upgrade`], where each
    /// request the host hands over is one connection. The place for an
    /// access log (nginx `access_log`).
    ///
    /// The hook runs on the connection's task, so it should be quick (a
    /// buffered write, a channel send). Without a hook, nothing of the
    /// report is kept while a tunnel runs.
    ///
    /// ```
    /// use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
    /// use wsproxy::Proxy;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let upstreams: UpstreamSet = [Upstream::new("127.0.0.1:8010".parse::<std::net::SocketAddr>()?)]
    ///     .into_iter()
    ///     .collect();
    /// let proxy = Proxy::builder()
    ///     .upstream(RoundRobin::new(upstreams))
    ///     .on_connection_end(|client, report| {
    ///         let status = report.status.map_or(0, |s| s.as_u16());
    ///         println!("{client} {status} {:?}", report.duration);
    ///     })
    ///     .build()?;
    /// # let _ = proxy;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use = "builder methods return the updated builder"]
    pub fn on_connection_end<H>(mut self, hook: H) -> Self
    where
        H: Fn(SocketAddr, &ConnectionReport) + Send + Sync + 'static,
    {
        self.on_end = Some(ConnectionHook::new(hook));
        self
    }

    /// Validates and builds the proxy.
    ///
    /// # Errors
    ///
    /// [`ProxyConfigError`] for a route table that does not build (no route
    /// at all included), zero tries or a zero timeout (but keep-alive's,
    /// which turns keep-alive off, and the next-upstream one, which sets no
    /// limit).
    pub fn build(self) -> Result<Proxy, ProxyConfigError> {
        if self.max_tries == 0 {
            return Err(ProxyConfigError::ZeroTries);
        }
        let t = self.timeouts;
        for (name, d) in [
            ("handshake", t.handshake),
            ("connect", t.connect),
            ("read", t.read),
            ("send", t.send),
        ] {
            if d.is_zero() {
                return Err(ProxyConfigError::ZeroTimeout(name));
            }
        }
        let tunnel = self.tunnel.unwrap_or_else(|| {
            TunnelConfig::new()
                .upstream_read_timeout(t.read)
                .send_timeout(t.send)
                .linger_timeout(DEFAULT_LINGER)
                .track_frames(true)
        });
        let routes = self.routes.build()?;
        #[cfg(all(feature = "rustls", feature = "proxy-protocol"))]
        if let Some(route) = routes
            .iter()
            .find(|r| r.target().sends_proxy_v2() && r.target().upstream_tls().is_some())
        {
            return Err(ProxyConfigError::ProxyHeaderOverTls(
                route.target().name().to_owned(),
            ));
        }
        Ok(Proxy {
            live: Arc::new(Live::new(Inner {
                routes: Arc::new(routes),
                retired: Vec::new(),
                policy: self.policy,
                limits: self.limits,
                timeouts: t,
                tunnel,
                max_tries: self.max_tries,
                keepalive_requests: self.keepalive_requests.max(1),
                tcp_keepalive: self.tcp_keepalive,
                client_max_body_size: self.client_max_body_size,
                counters: Arc::default(),
                draining: Arc::new(AtomicBool::new(false)),
                no_tunnels: Arc::new(Notify::new()),
                on_end: self.on_end,
            })),
        })
    }
}

/// A proxy configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyConfigError {
    /// The route table is invalid or empty.
    #[error("invalid routes")]
    Routes(#[from] RouteConfigError),
    /// `max_tries` is zero.
    #[error("max_tries must be at least 1")]
    ZeroTries,
    /// A timeout is zero.
    #[error("{0} timeout must be greater than zero")]
    ZeroTimeout(&'static str),
    /// A group both sends a PROXY header and reaches its upstreams over
    /// TLS: the header would go inside the TLS session, where HAProxy's
    /// `send-proxy-v2` with `ssl` sends it in clear before the handshake,
    /// and upstreams expect it (features `proxy-protocol` and `rustls`).
    #[error("group {0:?} cannot send a proxy protocol header over tls")]
    ProxyHeaderOverTls(String),
}
