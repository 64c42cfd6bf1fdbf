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
//!    (`proxy_read_timeout`, 504). An upstream that does not take the head
//!    or gives no answer head in time also passes a request with no body
//!    to the next upstream, within the same tries, unless its method is
//!    POST, LOCK or PATCH or an interim answer already reached the client
//!    (nginx's `proxy_next_upstream error timeout` does the same; an
//!    invalid answer head is answered 502 at once, as nginx passes on
//!    only with `invalid_header` listed);
//!    [`ProxyBuilder::next_upstream_timeout`] bounds how long after the
//!    first try a next one may begin (`proxy_next_upstream_timeout`);
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
//! Hosts that parse requests themselves (hyper, axum) mount the tower
//! service (`Proxy::service`, feature `tower`; `examples/axum_embed.rs`),
//! or call [`Proxy::connect_upgrade`], which connects the upstream and
//! checks its 101 before the client gets one, then
//! [`PendingUpgrade::tunnel`] over the upgraded stream.
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
//! - **Reconfiguring.** [`Proxy::reconfigure`] swaps routes, groups,
//!   policy and timeouts in place (a configuration file's reload): requests
//!   begun after it see the new configuration, open tunnels keep theirs,
//!   and groups of the same name keep their sets (reconciled, removed
//!   upstreams draining) and registries.
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
//! The answer head is the success (a connect alone is not: an upstream can
//! accept connections and never answer), and it lifts a mark only once the
//! upstream has sat out its `fail_timeout`, as nginx's probe does.
//! Nothing that happens after the answer head counts (a slow body, an idle
//! tunnel), nor does a client that fails to take an interim answer, nor an
//! invalid 101: the upstream answered, and the
//! client's own request decides whether a 101 fits it. A timeout reading
//! the answer head counts although a client can pick a slow path, as in
//! nginx; two rules keep one client from locking everyone out that way: the
//! last available upstream of a set is never marked failed, and when every
//! upstream is marked anyway, one is tried rather than answering 502.

mod builder;
mod conn;
mod connect;
mod counters;
mod drain;
mod exchange;
mod guard;
mod head_io;
mod health;
#[cfg(feature = "tower")]
mod hosted;
mod keepalive;
mod last_segment;
mod probe;
pub(crate) use last_segment::Sockets;
mod rebalance;
mod reclaim;
mod registry;
mod relay;
mod reload;
pub(crate) mod stream;
mod target;
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
use crate::route::Routes;
use crate::tunnel::{TunnelConfig, TunnelStats};

pub use builder::{ProxyBuilder, ProxyConfigError};
pub use connect::ConnectError;
pub use counters::{CountersSnapshot, Outcome};
pub(crate) use drain::{close_spread, CUT_GRACE};
#[allow(unused_imports)] // for the tower service
pub(crate) use exchange::Exchange;
pub(crate) use guard::Running;
pub use health::{
    HealthCheck, HealthCheckBuilder, HealthChecker, HealthConfigError, Probe, ProbeFuture,
    TcpProbe, WebSocketProbe,
};
#[cfg(feature = "tower")]
pub(crate) use hosted::{refuse, Hosted, HostedTries};
pub use keepalive::TcpKeepalive;
pub use rebalance::{RebalanceReport, Rebalancer};
pub(crate) use reclaim::Reclaim;
#[cfg(test)]
pub(crate) use registry::{Listed, Registered};
pub use registry::{LiveTunnel, TunnelRegistry};
pub(crate) use reload::Live;
pub use reload::{GroupChange, Reconfigured};
pub use upgrade::{PendingUpgrade, UpgradeError, MAX_REFUSAL_BODY};

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
    /// The set and strategy of a [`balanced`](Self::balanced) group.
    upstreams: Option<crate::balance::UpstreamSet>,
    strategy: Option<reload::Strategy>,
    #[cfg(feature = "proxy-protocol")]
    send_proxy_v2: bool,
    /// [`UpstreamGroup::tls`] (`crate::upstream_tls`).
    #[cfg(feature = "rustls")]
    pub(crate) tls: Option<crate::upstream_tls::UpstreamTls>,
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
            upstreams: None,
            strategy: None,
            #[cfg(feature = "proxy-protocol")]
            send_proxy_v2: false,
            #[cfg(feature = "rustls")]
            tls: None,
        }
    }

    /// Starts every upstream connection of this group with a PROXY protocol
    /// v2 header carrying the believed client (HAProxy `send-proxy-v2`),
    /// written with the request head; default off. Feature
    /// `proxy-protocol`.
    ///
    /// The source is the client the [`ForwardPolicy`]
    /// believes, with its port when it is the connection's peer and port 0
    /// when it came from `X-Forwarded-For`; the destination is the
    /// listener's port on the unspecified address of the same family. Only
    /// for upstreams that expect the header (nginx `listen … proxy_protocol`,
    /// HAProxy `accept-proxy`): others take it for a bad request.
    ///
    /// ```
    /// use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
    /// use wsproxy::proxy::UpstreamGroup;
    ///
    /// let set: UpstreamSet = [Upstream::new("127.0.0.1:9000".parse::<std::net::SocketAddr>()?)].into_iter().collect();
    /// let group = UpstreamGroup::new("pp-backends", RoundRobin::new(set)).send_proxy_v2(true);
    /// assert!(group.sends_proxy_v2());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "proxy-protocol")]
    #[must_use = "builder methods return the updated group"]
    pub fn send_proxy_v2(mut self, on: bool) -> Self {
        self.send_proxy_v2 = on;
        self
    }

    /// Whether this group's upstream connections start with a PROXY v2
    /// header ([`send_proxy_v2`](Self::send_proxy_v2)).
    #[cfg(feature = "proxy-protocol")]
    pub fn sends_proxy_v2(&self) -> bool {
        self.send_proxy_v2
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
        let mut d = f.debug_struct("UpstreamGroup");
        d.field("name", &self.name)
            .field("balancer", &self.balancer)
            .field("tunnels", &self.tunnels.len());
        #[cfg(feature = "proxy-protocol")]
        d.field("send_proxy_v2", &self.send_proxy_v2);
        #[cfg(feature = "rustls")]
        d.field("tls", &self.tls);
        d.finish()
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

/// How long the direction left of a half-closed tunnel may stay silent by
/// default.
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
    /// (nginx `keepalive_timeout`, 75 s); zero turns keep-alive off.
    pub keepalive: Duration,
    /// How long after its first try a request may still be passed to the
    /// next upstream (nginx `proxy_next_upstream_timeout`); zero, the
    /// default as in nginx, sets no limit beyond the tries.
    pub next_upstream: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(60),
            connect: Duration::from_secs(4),
            read: Duration::from_secs(60),
            send: Duration::from_secs(60),
            keepalive: Duration::from_secs(75),
            next_upstream: Duration::ZERO,
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
    /// The configuration in force, swapped whole by
    /// [`reconfigure`](Proxy::reconfigure).
    live: Arc<Live>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    routes: Arc<Routes<UpstreamGroup>>,
    /// Groups a reconfiguration took out of the routes while they still
    /// had tunnels open: listed, so that drains and closes reach them.
    retired: Vec<UpstreamGroup>,
    policy: ForwardPolicy,
    limits: Limits,
    timeouts: Timeouts,
    tunnel: TunnelConfig,
    max_tries: usize,
    keepalive_requests: u32,
    tcp_keepalive: Option<TcpKeepalive>,
    /// nginx `client_max_body_size`; 0: no limit.
    client_max_body_size: u64,
    /// Shared by every configuration of the proxy, as are `draining` and
    /// `no_tunnels`: a reconfiguration carries them over.
    counters: Arc<Counters>,
    /// Set by [`Proxy::drain`].
    draining: Arc<AtomicBool>,
    /// Woken when the last open tunnel ends.
    no_tunnels: Arc<Notify>,
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
            let (mut report, upgraded) = conn::serve(&self.live, io, peer, listener, drain).await;
            if let Some(upgraded) = upgraded {
                let mut running = upgraded.run::<crate::tunnel::Plain>(0);
                let handle = tunnel.get_or_init(|| running.handle());
                // Shutdown came while the upgrade completed.
                if *rx.borrow() == DrainPhase::Cut {
                    handle.cut();
                }
                report.tunnel = Some(running.await);
            }
            report.duration = started.elapsed();
            self.report_end(peer, &report);
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
    /// connection back so that the server runs its tunnel in place of the
    /// handshake's state.
    pub(crate) fn serve_until_upgrade<'a, S>(
        &'a self,
        io: S,
        peer: SocketAddr,
        listener: Listener,
        drain: Drain,
    ) -> impl Future<Output = (ConnectionReport, Option<guard::Upgraded<S>>)> + Send + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'a,
    {
        // Not an `async fn`: each layer of one would hold the whole
        // connection's future and copy it once more when first awaited.
        conn::serve(&self.live, io, peer, listener, drain)
    }

    /// Hands a finished connection's report to the hook of
    /// [`ProxyBuilder::on_connection_end`], if any.
    pub(crate) fn report_end(&self, peer: SocketAddr, report: &ConnectionReport) {
        self.inner().report_end(peer, report);
    }

    /// Applies the policy's response headers to an answer the proxy makes
    /// itself ([`ForwardPolicy::edit_own_answer`](crate::forward::ForwardPolicy::edit_own_answer)).
    #[cfg(feature = "tower")]
    pub(crate) fn edit_own_answer(&self, headers: &mut http::HeaderMap) {
        self.inner().policy.edit_own_answer(headers);
    }

    /// Whether [`ProxyBuilder::on_connection_end`] set a hook.
    pub(crate) fn wants_reports(&self) -> bool {
        self.inner().wants_reports()
    }

    /// A copy of the live counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.inner().counters.snapshot()
    }

    /// The route table in force (a [`reconfigure`](Self::reconfigure)
    /// replaces it; a table already handed out stays as it was).
    pub fn routes(&self) -> Arc<Routes<UpstreamGroup>> {
        Arc::clone(&self.inner().routes)
    }

    /// The timeouts it runs with.
    pub fn timeouts(&self) -> Timeouts {
        self.inner().timeouts
    }

    /// The request body limit in bytes, 0 for none (nginx
    /// `client_max_body_size`); see [`ProxyBuilder::client_max_body_size`].
    pub fn client_max_body_size(&self) -> u64 {
        self.inner().client_max_body_size
    }

    /// The TCP keepalive it sets on its sockets, if any.
    pub fn tcp_keepalive(&self) -> Option<TcpKeepalive> {
        self.inner().tcp_keepalive
    }

    /// Every distinct upstream group of the route table, in route order; a
    /// group several routes share (clones of one [`UpstreamGroup`]) comes
    /// once. Then the groups a [`reconfigure`](Self::reconfigure) took out
    /// of the routes that still have tunnels open.
    pub fn groups(&self) -> Vec<UpstreamGroup> {
        let inner = self.inner();
        let mut groups: Vec<UpstreamGroup> = Vec::new();
        let routed = inner.routes.iter().map(|route| route.target());
        for group in routed.chain(inner.retired.iter()) {
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
    /// A server's own end-of-connection hook, for a connection whose future
    /// is dropped before it reports (the proxy's is called too).
    also_report_to: Option<ConnectionHook>,
}

impl Drain {
    pub(crate) fn new(rx: watch::Receiver<DrainPhase>) -> Self {
        Self {
            rx,
            reclaim: None,
            head_deadline: None,
            also_report_to: None,
        }
    }

    /// A connection dropped before it ends reports to `hook` too.
    pub(crate) fn with_end_hook(mut self, hook: Option<ConnectionHook>) -> Self {
        self.also_report_to = hook;
        self
    }

    /// The hook of [`with_end_hook`](Self::with_end_hook).
    pub(crate) fn end_hook(&self) -> Option<ConnectionHook> {
        self.also_report_to.clone()
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

    /// Hands a reclaim this connection took but cannot answer (it is busy
    /// again) on to the longest idle other one.
    #[cfg(feature = "h2")]
    pub(crate) fn pass_on_reclaim(&self) {
        if let Some(reclaim) = &self.reclaim {
            reclaim.close_oldest();
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
