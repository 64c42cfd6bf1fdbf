//! The proxy: serves one accepted client connection end to end.
//!
//! [`Proxy`] joins the sans-IO core ([`handshake`](crate::handshake),
//! [`forward`](crate::forward), [`route`](crate::route),
//! [`balance`](crate::balance)) and the [`tunnel`](mod@crate::tunnel). It does not
//! accept sockets: [`Server`](crate::server::Server) does, or the host
//! application's own accept loop calls [`Proxy::serve`].
//!
//! One connection, step by step, as the classic nginx WebSocket configuration
//! behaves:
//!
//! 1. read the request head within the handshake timeout
//!    (`client_header_timeout`, whole head, however slowly it trickles in);
//! 2. refuse bad requests with the core's status (400, 403, 404, 413, 414,
//!    426, 431, 501; 408 for a head that did not arrive in time), a short
//!    body and `Connection: close`;
//! 3. pick an upstream and connect within the connect timeout
//!    (`proxy_connect_timeout`), trying the next one after a refused or timed
//!    out connect (`proxy_next_upstream error timeout`, 3 tries by default):
//!    502 or 504 when none is left;
//! 4. send the rewritten head; read the answer within the read timeout
//!    (`proxy_read_timeout`, 504);
//! 5. a WebSocket upgrade that the upstream completes (101 with a valid
//!    `Sec-WebSocket-Accept`) becomes a [`tunnel`](crate::tunnel::tunnel);
//!    anything else is relayed as an ordinary HTTP answer and the client's
//!    next bytes are read as a new request, never tunneled.
//!
//! Bytes the client sends after its head wait until the upstream's 101 has
//! passed the checks, so a request smuggled behind an upgrade that the
//! upstream refuses is parsed as a request of its own. Plain HTTP requests
//! are proxied too, bodies streamed both ways (Content-Length, chunked, or
//! until close), with keep-alive toward the client (`keepalive_timeout`
//! 75 s, `keepalive_requests` 1000) and `Connection: close` toward the
//! upstream. [`Proxy::counters`] is a cheap snapshot of handshakes, open
//! tunnels (also per upstream), outcomes and proxy-made answers by status.
//!
//! Hosts that parse requests themselves (hyper, axum) call
//! [`Proxy::connect_upgrade`], which connects the upstream and checks its
//! 101 before the client gets one, then [`PendingUpgrade::tunnel`] over the
//! upgraded stream (`examples/hyper_embed.rs`).
//!
//! Every way in behaves alike: a connection served by a
//! [`Server`](crate::server::Server) or [`Proxy::serve`], and a request a
//! host hands to [`Proxy::connect_upgrade`] (counted as one connection), get
//! the same counters (connections, requests, handshakes, proxy-made answers
//! by status, tunnels, bytes), the same `conn` tracing span with its
//! `tunnel closed` event, the same
//! [`on_connection_end`](ProxyBuilder::on_connection_end) report, and a
//! place in the tunnel registry, so that [`Proxy::drain`] reaches them. A
//! tunnel's bytes reach the counters while it runs, at each 64 KiB or
//! second of traffic (and with its timer's wake-ups), not only at its end.
//!
//! # After the 101
//!
//! A WebSocket outlives the request that opened it by hours, so what happens
//! to open tunnels matters as much as the handshake: a deploy should not cut
//! thousands at once, an upstream added for load should get some of the old
//! connections, and a tunnel to a dead backend should end. All of it goes
//! through WebSocket Close frames inserted at frame boundaries
//! ([`TunnelHandle::close`](crate::tunnel::TunnelHandle::close)), so clients
//! see an ordinary close and reconnect.
//!
//! - **The registry.** Every tunnel the proxy opens is listed in its group's
//!   [`TunnelRegistry`] ([`UpstreamGroup::tunnels`], [`Proxy::tunnels`])
//!   until it ends, however it ends: `list`, `count_by_upstream`,
//!   `close_upstream`, `close_all`, `cut_all`. Under a hash strategy each
//!   entry keeps the connection's [`Affinity`](crate::balance::Affinity).
//! - **Draining.** [`Server::drain_window`](crate::server::Server::drain_window)
//!   sends every open tunnel Close 1001 on shutdown, spread over the window;
//!   [`Proxy::drain`] does the same for hosts without a `Server`.
//! - **Rebalancing.** [`Rebalancer`] moves tunnels off upstreams above
//!   `factor ×` their weighted share (1.25 by default, HAProxy's
//!   `hash-balance-factor`) with Close 1012, at a set rate; clients reconnect
//!   through the balancer. It works in rounds: plan with the sans-IO
//!   [`Rebalance`](crate::balance::Rebalance) (the fewest closes that bring
//!   every upstream down to its cap), close, wait for the closed tunnels to
//!   end and their clients to come back, measure again. With affinity only
//!   tunnels whose key now maps elsewhere move, so they do not come back to
//!   the same upstream.
//! - **Dead peers.** Tunnel pings
//!   ([`TunnelConfig::ping`](crate::tunnel::TunnelConfig::ping)), kernel
//!   keepalive on both sockets ([`ProxyBuilder::tcp_keepalive`]), and
//!   [`HealthChecker::close_on_down`](HealthChecker::close_on_down)
//!   for the tunnels of an upstream that checks mark down.
//!
//! ```no_run
//! use std::time::Duration;
//! use wsproxy::balance::{LeastConn, Upstream, UpstreamSet};
//! use wsproxy::proxy::{Rebalancer, UpstreamGroup};
//! use wsproxy::route::Route;
//! use wsproxy::server::Server;
//! use wsproxy::Proxy;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let set: UpstreamSet = [Upstream::new("127.0.0.1:9001".parse::<std::net::SocketAddr>()?)]
//!     .into_iter()
//!     .collect();
//! let group = UpstreamGroup::new("chat", LeastConn::new(set.clone()));
//! let proxy = Proxy::builder().route(Route::new("/", group.clone())).build()?;
//!
//! // Scale-out: a second backend joins and takes its share, 50 closes a second.
//! set.add(Upstream::new("127.0.0.1:9002".parse::<std::net::SocketAddr>()?));
//! let report = Rebalancer::new(group, set).rate(50).run().await;
//! println!("max/mean {:.2} -> {:.2}", report.before.ratio(), report.after.ratio());
//!
//! // Deploy: Close 1001 to every client over 10 s, cut the rest at 30 s.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8020").await?;
//! Server::new(proxy)
//!     .drain_window(Duration::from_secs(10))
//!     .drain_timeout(Duration::from_secs(30))
//!     .serve(listener, async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Memory of an open tunnel
//!
//! Under a [`Server`](crate::server::Server) each tunnel runs as its own
//! small task, and nothing of the handshake stays alive while it idles:
//! bytes read past the heads are copied out of the 8 KiB read buffers
//! (sharing them would keep each buffer resident for the tunnel's whole
//! life), the task is a plain future rather than an `async` block (which
//! would hold the moved streams twice), and its tracing span is kept only
//! when a subscriber wants it. A test in
//! [`server`](crate::server) holds the task to its byte budget; the
//! gateway's resident memory per idle WebSocket, measured by the anchors in
//! `benches/README.md`, stays under 2 KiB.
//!
//! # Passive health
//!
//! What counts against an upstream's `max_fails` is what nginx counts as an
//! unsuccessful attempt (`proxy_next_upstream error timeout
//! invalid_header`): a refused or timed out connect, a failed write of the
//! request head, and an answer head that times out, is cut short or cannot
//! be parsed. These say the upstream is unreachable or not answering.
//! Nothing that happens after the answer head counts (a slow body, an idle
//! tunnel), and neither does an invalid 101: the upstream answered, and the
//! client's own request decides whether a 101 fits it. A timeout reading
//! the answer head counts although a client can pick a slow path, as in
//! nginx; two rules keep one client from locking everyone out that way: the
//! last available upstream of a set is never marked failed, and when every
//! upstream is marked anyway, one is tried rather than answering 502.

mod conn;
mod connect;
mod counters;
mod drain;
mod exchange;
mod guard;
mod head_io;
mod health;
mod keepalive;
mod rebalance;
mod reclaim;
mod registry;
mod relay;
mod upgrade;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};

use crate::balance::{Balancer, UpstreamAddr};
use crate::forward::{ForwardPolicy, Scheme};
use crate::frame::CloseFrame;
use crate::handshake::Limits;
use crate::route::{Route, RouteConfigError, Routes, RoutesBuilder};
use crate::tunnel::{TunnelConfig, TunnelStats};

pub use connect::ConnectError;
pub use counters::{CountersSnapshot, Outcome};
pub(crate) use drain::{close_spread, CUT_GRACE};
#[allow(unused_imports)] // for the tower service
pub(crate) use exchange::Exchange;
#[cfg(test)]
pub(crate) use guard::Running;
pub use health::{
    HealthCheck, HealthCheckBuilder, HealthChecker, HealthConfigError, Probe, ProbeFuture,
    TcpProbe, WebSocketProbe,
};
pub use keepalive::TcpKeepalive;
pub use rebalance::{RebalanceReport, Rebalancer};
pub(crate) use reclaim::Reclaim;
#[cfg(test)]
pub(crate) use registry::{Listed, Registered};
pub use registry::{LiveTunnel, TunnelRegistry};
pub use upgrade::{PendingUpgrade, UpgradeError};

use counters::Counters;

/// A named set of upstreams with the balancer that chooses among them
/// (nginx `upstream name { ... }`).
///
/// Clones share the balancer and the registry of live tunnels.
#[derive(Clone)]
pub struct UpstreamGroup {
    name: Arc<str>,
    balancer: Arc<dyn Balancer>,
    tunnels: Arc<TunnelRegistry>,
}

impl UpstreamGroup {
    /// A group named `name` balanced by `balancer`.
    pub fn new(name: impl Into<Arc<str>>, balancer: impl Balancer + 'static) -> Self {
        Self::from_arc(name, Arc::new(balancer))
    }

    /// A group around a balancer the host application keeps a handle to
    /// (to change its upstream set at run time, for instance).
    pub fn from_arc(name: impl Into<Arc<str>>, balancer: Arc<dyn Balancer>) -> Self {
        Self {
            name: name.into(),
            balancer,
            tunnels: Arc::default(),
        }
    }

    /// The group's name, as logged.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's balancer.
    pub fn balancer(&self) -> &Arc<dyn Balancer> {
        &self.balancer
    }

    /// The tunnels open through this group: list them, close those of one
    /// upstream, or all.
    pub fn tunnels(&self) -> &Arc<TunnelRegistry> {
        &self.tunnels
    }
}

impl fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamGroup")
            .field("name", &self.name)
            .field("balancer", &self.balancer)
            .field("tunnels", &self.tunnels.len())
            .finish()
    }
}

/// What [`ProxyBuilder::on_connection_end`] calls.
type HookFn = dyn Fn(SocketAddr, &ConnectionReport) + Send + Sync;

/// A host's hook for finished connections.
#[derive(Clone)]
pub(crate) struct ConnectionHook(pub(crate) Arc<HookFn>);

impl ConnectionHook {
    pub(crate) fn new<H>(hook: H) -> Self
    where
        H: Fn(SocketAddr, &ConnectionReport) + Send + Sync + 'static,
    {
        Self(Arc::new(hook))
    }
}

impl fmt::Debug for ConnectionHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionHook")
    }
}

/// How long a half-closed tunnel may run by default.
const DEFAULT_LINGER: Duration = Duration::from_secs(5);

/// The proxy's timeouts; defaults mirror nginx except where noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Whole request head, from the first byte awaited to the last
    /// (nginx `client_header_timeout`, 60 s).
    pub handshake: Duration,
    /// TCP connect to one upstream (nginx `proxy_connect_timeout`; 4 s as in
    /// the classic WebSocket configuration rather than nginx's 60 s).
    pub connect: Duration,
    /// Between two reads from the upstream: its answer head, body, and an
    /// established tunnel's upstream side (nginx `proxy_read_timeout`, 60 s).
    pub read: Duration,
    /// A write toward either peer that makes no progress
    /// (nginx `proxy_send_timeout` and `send_timeout`, 60 s).
    pub send: Duration,
    /// An idle keep-alive client connection between requests
    /// (nginx `keepalive_timeout`, 75 s).
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(60),
            connect: Duration::from_secs(4),
            read: Duration::from_secs(60),
            send: Duration::from_secs(60),
            keepalive: Duration::from_secs(75),
        }
    }
}

/// An embeddable WebSocket-aware reverse proxy; cheap to clone (one `Arc`).
///
/// ```
/// use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
/// use wsproxy::forward::{ForwardPolicy, Scheme};
/// use wsproxy::Proxy;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let upstreams = [Upstream::new("127.0.0.1:8010".parse::<std::net::SocketAddr>()?)].into_iter().collect::<UpstreamSet>();
/// let proxy = Proxy::builder()
///     .upstream(RoundRobin::new(upstreams))
///     .policy(ForwardPolicy::nginx())
///     .build()?;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let (stream, peer) = listener.accept().await?;
/// let report = proxy.serve(stream, peer, Scheme::Http).await;
/// println!("{} requests", report.requests);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    routes: Routes<UpstreamGroup>,
    policy: ForwardPolicy,
    limits: Limits,
    timeouts: Timeouts,
    tunnel: TunnelConfig,
    max_tries: usize,
    keepalive_requests: u32,
    tcp_keepalive: Option<TcpKeepalive>,
    /// nginx `client_max_body_size`; 0: no limit.
    client_max_body_size: u64,
    counters: Counters,
    /// Set by [`Proxy::drain`].
    draining: AtomicBool,
    /// Woken when the last open tunnel ends.
    no_tunnels: Notify,
    /// [`ProxyBuilder::on_connection_end`].
    on_end: Option<ConnectionHook>,
}

impl Inner {
    /// Resolves once no tunnel of the proxy is open.
    async fn tunnels_ended(&self) {
        // Bounded by the tunnels: each end wakes this once the count is 0.
        loop {
            let ended = self.no_tunnels.notified();
            if self.counters.snapshot_tunnels_active() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Hands a finished connection's report to the host's hook, if any.
    pub(crate) fn report_end(&self, peer: SocketAddr, report: &ConnectionReport) {
        if let Some(hook) = &self.on_end {
            (hook.0)(peer, report);
        }
    }

    /// Whether a hook wants reports: without one, nothing of a report is
    /// kept while a tunnel runs.
    pub(crate) fn wants_reports(&self) -> bool {
        self.on_end.is_some()
    }

    /// Called by each tunnel as it is counted out.
    pub(crate) fn tunnel_counted_out(&self) {
        if self.counters.snapshot_tunnels_active() == 0 {
            self.no_tunnels.notify_waiters();
        }
    }
}

impl Proxy {
    /// Starts a configuration.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// Serves one accepted client connection until it ends: every request on
    /// it (keep-alive), and the tunnel if one of them upgrades.
    ///
    /// `peer` is the socket peer address; `listener` is the listener's
    /// scheme (`Https` behind TLS termination), or a [`Listener`] with its
    /// port too. Never panics and never waits unbounded: each
    /// step runs under its timeout.
    pub async fn serve<S>(
        &self,
        io: S,
        peer: SocketAddr,
        listener: impl Into<Listener>,
    ) -> ConnectionReport
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.serve_with_shutdown(io, peer, listener, std::future::pending())
            .await
    }

    /// Like [`serve`](Self::serve), but `shutdown` ends the connection early:
    /// an idle keep-alive connection is closed, a request in progress is
    /// finished, and a tunnel is shut down cleanly on both sides.
    pub async fn serve_with_shutdown<S, F>(
        &self,
        io: S,
        peer: SocketAddr,
        listener: impl Into<Listener>,
        shutdown: F,
    ) -> ConnectionReport
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        F: Future<Output = ()> + Send,
    {
        let (tx, rx) = watch::channel(DrainPhase::Running);
        let listener = listener.into();
        let started = tokio::time::Instant::now();
        let tunnel = std::sync::OnceLock::new();
        let serve = async {
            let drain = Drain::new(rx.clone());
            let (mut report, upgraded) = conn::serve(&self.inner, io, peer, listener, drain).await;
            if let Some(upgraded) = upgraded {
                let mut running = upgraded.run(0);
                let handle = tunnel.get_or_init(|| running.handle());
                // Shutdown came while the upgrade completed.
                if *rx.borrow() == DrainPhase::Cut {
                    handle.cut();
                }
                report.tunnel = Some(running.await);
            }
            report.duration = started.elapsed();
            self.inner.report_end(peer, &report);
            report
        };
        tokio::pin!(serve);
        tokio::select! {
            report = &mut serve => report,
            () = shutdown => {
                let _ = tx.send(DrainPhase::Cut);
                if let Some(handle) = tunnel.get() {
                    handle.cut();
                }
                serve.await
            }
        }
    }

    /// Serves until the connection closes or upgrades, handing an upgraded
    /// connection back so that the server runs its tunnel as its own task.
    pub(crate) async fn serve_until_upgrade<S>(
        &self,
        io: S,
        peer: SocketAddr,
        listener: Listener,
        drain: Drain,
    ) -> (ConnectionReport, Option<guard::Upgraded<S>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        conn::serve(&self.inner, io, peer, listener, drain).await
    }

    /// Hands a finished connection's report to the hook of
    /// [`ProxyBuilder::on_connection_end`], if any.
    pub(crate) fn report_end(&self, peer: SocketAddr, report: &ConnectionReport) {
        self.inner.report_end(peer, report);
    }

    /// Whether [`ProxyBuilder::on_connection_end`] set a hook.
    pub(crate) fn wants_reports(&self) -> bool {
        self.inner.wants_reports()
    }

    /// A copy of the live counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.inner.counters.snapshot()
    }

    /// The route table.
    pub fn routes(&self) -> &Routes<UpstreamGroup> {
        &self.inner.routes
    }

    /// The timeouts it runs with.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// The request body limit in bytes, 0 for none (nginx
    /// `client_max_body_size`); see [`ProxyBuilder::client_max_body_size`].
    pub fn client_max_body_size(&self) -> u64 {
        self.inner.client_max_body_size
    }

    /// The TCP keepalive it sets on its sockets, if any.
    pub fn tcp_keepalive(&self) -> Option<TcpKeepalive> {
        self.inner.tcp_keepalive
    }

    /// Every distinct upstream group of the route table, in route order; a
    /// group several routes share (clones of one [`UpstreamGroup`]) comes
    /// once.
    pub fn groups(&self) -> Vec<UpstreamGroup> {
        let mut groups: Vec<UpstreamGroup> = Vec::new();
        for route in self.inner.routes.iter() {
            let group = route.target();
            if !groups
                .iter()
                .any(|g| Arc::ptr_eq(&g.tunnels, &group.tunnels))
            {
                groups.push(group.clone());
            }
        }
        groups
    }

    /// Every tunnel open through the proxy, group after group, oldest first
    /// within a group.
    pub fn tunnels(&self) -> Vec<LiveTunnel> {
        self.groups()
            .iter()
            .flat_map(|g| g.tunnels().list())
            .collect()
    }

    /// Cuts every open tunnel at once; returns how many there were.
    pub fn cut_tunnels(&self) -> usize {
        self.groups().iter().map(|g| g.tunnels().cut_all()).sum()
    }

    /// The open tunnels a server listed as `origin`'s.
    pub(crate) fn tunnels_of(&self, origin: u32) -> Vec<LiveTunnel> {
        let mut tunnels = self.tunnels();
        tunnels.retain(|t| t.origin == origin);
        tunnels
    }

    /// Closes every open tunnel of `origin`'s politely with `close`, in
    /// every group; returns how many were asked.
    pub(crate) fn close_origin(&self, origin: u32, close: &CloseFrame) -> usize {
        self.groups()
            .iter()
            .map(|g| g.tunnels().close_origin(origin, close))
            .sum()
    }

    /// Cuts every open tunnel of `origin`'s, in every group; returns how
    /// many there were.
    pub(crate) fn cut_origin(&self, origin: u32) -> usize {
        self.groups()
            .iter()
            .map(|g| g.tunnels().cut_origin(origin))
            .sum()
    }
}

/// The listener a connection came in on: its scheme (`X-Forwarded-Proto`,
/// redirects) and port (nginx `$server_port`, for
/// [`HostMode::ClientWithListenerPort`](crate::forward::HostMode)).
///
/// A [`Scheme`] converts into a listener on the scheme's default port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listener {
    /// `Http`, or `Https` behind TLS termination.
    pub scheme: Scheme,
    /// The port clients connected to.
    pub port: u16,
}

impl Listener {
    /// A listener with this scheme on this port.
    pub fn new(scheme: Scheme, port: u16) -> Self {
        Self { scheme, port }
    }
}

impl From<Scheme> for Listener {
    fn from(scheme: Scheme) -> Self {
        Self::new(scheme, scheme.default_port())
    }
}

/// What serving one client connection did: the fields of an access log
/// line (nginx `access_log`).
///
/// Route, upstream and status describe the connection's last request.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ConnectionReport {
    /// Request heads read on the connection.
    pub requests: u32,
    /// How the last request ended, if any was read.
    pub outcome: Option<Outcome>,
    /// The tunnel's figures, if the connection was upgraded.
    pub tunnel: Option<TunnelStats>,
    /// Body bytes of plain HTTP requests the client sent upstream, over every
    /// request on the connection (a tunnel's bytes are in `tunnel`).
    pub body_from_client: u64,
    /// Body bytes of plain HTTP answers relayed to the client.
    pub body_from_upstream: u64,
    /// The name of the upstream group the last request was routed to.
    pub route: Option<Arc<str>>,
    /// The upstream that served the last request (nginx `$upstream_addr`).
    pub upstream: Option<UpstreamAddr>,
    /// The status of the last answer the client was sent, the proxy's own
    /// or the upstream's (nginx `$status`; 101 for a tunnel).
    pub status: Option<StatusCode>,
    /// From the start of serving to the end of the connection, tunnel
    /// included (nginx `$request_time` for a WebSocket).
    pub duration: Duration,
}

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

    /// nginx `keepalive_timeout` (default 75 s).
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
    /// `proxy_next_upstream_tries`; default 3).
    #[must_use = "builder methods return the updated builder"]
    pub fn max_tries(mut self, tries: usize) -> Self {
        self.max_tries = tries;
        self
    }

    /// The tunnel's timeouts. By default they follow the proxy's: the
    /// upstream side's read timeout is the read timeout and the send timeout
    /// is the send timeout, as in nginx's upgraded connections; after one
    /// side closes, the other has 5 s to finish (nginx closes both at once;
    /// the linger lets a WebSocket closing handshake complete). WebSocket
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
    /// at all included), zero tries or a zero timeout.
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
            ("keepalive", t.keepalive),
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
        Ok(Proxy {
            inner: Arc::new(Inner {
                routes: self.routes.build()?,
                policy: self.policy,
                limits: self.limits,
                timeouts: t,
                tunnel,
                max_tries: self.max_tries,
                keepalive_requests: self.keepalive_requests.max(1),
                tcp_keepalive: self.tcp_keepalive,
                client_max_body_size: self.client_max_body_size,
                counters: Counters::default(),
                draining: AtomicBool::new(false),
                no_tunnels: Notify::new(),
                on_end: self.on_end,
            }),
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
}

/// Where a server's shutdown stands, as seen by each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainPhase {
    Running,
    /// Stop taking new requests; finish what runs.
    Draining,
    /// End tunnels now.
    Cut,
}

/// A connection's view of its server's shutdown, of the server's reclaim of
/// idle connections, and of when its first request head is due.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    rx: watch::Receiver<DrainPhase>,
    reclaim: Option<Arc<Reclaim>>,
    head_deadline: Option<tokio::time::Instant>,
}

impl Drain {
    pub(crate) fn new(rx: watch::Receiver<DrainPhase>) -> Self {
        Self {
            rx,
            reclaim: None,
            head_deadline: None,
        }
    }

    /// Idle keep-alive waits answer `reclaim`'s requests to close.
    pub(crate) fn with_reclaim(mut self, reclaim: Arc<Reclaim>) -> Self {
        self.reclaim = Some(reclaim);
        self
    }

    /// The first request head is due by `deadline` (set at accept, so that
    /// a TLS handshake and the head share one handshake timeout), instead
    /// of a handshake timeout after the proxy begins to read.
    pub(crate) fn with_head_deadline(mut self, deadline: tokio::time::Instant) -> Self {
        self.head_deadline = Some(deadline);
        self
    }

    /// When the first request head is due, if the server set it.
    pub(crate) fn head_deadline(&self) -> Option<tokio::time::Instant> {
        self.head_deadline
    }

    /// Waits idle for the next request; resolves when the server reclaims
    /// the connection, never without a server that does.
    pub(crate) async fn reclaimed(&self) {
        match &self.reclaim {
            Some(reclaim) => reclaim.idle().await,
            None => std::future::pending().await,
        }
    }

    pub(crate) fn phase(&self) -> DrainPhase {
        *self.rx.borrow()
    }

    /// Resolves once the phase is at least `phase`; never, if the sender is
    /// gone before that.
    pub(crate) async fn reached(mut self, phase: DrainPhase) {
        let at_least = |p: &DrainPhase| match phase {
            DrainPhase::Running => true,
            DrainPhase::Draining => *p != DrainPhase::Running,
            DrainPhase::Cut => *p == DrainPhase::Cut,
        };
        if self.rx.wait_for(at_least).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
