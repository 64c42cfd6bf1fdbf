//! Active health checks (HAProxy `check inter rise fall`): the async driver
//! around the sans-IO [`HealthState`](crate::balance::health::HealthState),
//! as [`Rebalancer`](super::Rebalancer) drives the
//! [`Rebalance`](crate::balance::Rebalance) planner.
//!
//! A [`HealthChecker`] probes every upstream of one [`UpstreamSet`] every
//! interval and marks upstreams down and up with
//! [`UpstreamSet::set_check_down`]: a down upstream gets no new connections
//! from any balancer over the set. Checks never undo the operator's own
//! [`UpstreamSet::set_down`]. A probe is a [`Probe`]: a TCP connect
//! ([`TcpProbe`]), a real WebSocket handshake ([`WebSocketProbe`]), or the
//! host's own.
//!
//! [`HealthChecker::close_on_down`] adds HAProxy's `on-marked-down
//! shutdown-sessions`: the open tunnels of an upstream marked down are closed
//! with WebSocket Close 1001, so their clients reconnect to a live one.
//! [`HealthChecker::on_change`] tells the host of every mark.
//!
//! Probes reach Unix socket upstreams (`unix:/path`) by their path, and,
//! given the group's TLS configuration (`HealthChecker::tls`, feature
//! `rustls`), TLS upstreams through a TLS handshake first.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use http::header::{CONNECTION, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderValue, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::connect::authority_of;
use super::stream::Dial;
use super::{TunnelRegistry, UpstreamGroup};
use crate::balance::health::{
    HealthState, Transition, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_RISE,
};
use crate::balance::{UpstreamAddr, UpstreamId, UpstreamSet};
use crate::frame::{masking_key, CloseFrame};
use crate::handshake::{
    classify_response, parse_request, parse_response, write_request_head, HandshakeError,
    HeadScanner, Limits, ResponseKind, Status, SwitchError,
};

/// Checks running at once, by default: enough for a large group, few
/// enough not to look like a flood to the upstreams.
const DEFAULT_CONCURRENCY: usize = 32;

/// What [`Probe::probe`] returns: resolves to `true` when the upstream is
/// healthy.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// One health check of one upstream, run every interval by a
/// [`HealthChecker`]; implement it for a check of the host's own (an HTTP
/// status page, a protocol ping).
///
/// The checker bounds each probe with the check timeout (a probe that does
/// not finish in time failed) and drops it on shutdown, so a probe need not
/// time itself out. A boxed future keeps the trait object-safe: one
/// allocation per check, not per proxied connection.
///
/// ```
/// use wsproxy::balance::UpstreamAddr;
/// use wsproxy::proxy::{HealthCheck, Probe, ProbeFuture, TcpProbe};
///
/// /// A TCP check that an operator can force to fail.
/// #[derive(Debug, Default)]
/// struct Maintenance {
///     on: std::sync::atomic::AtomicBool,
/// }
///
/// impl Probe for Maintenance {
///     fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
///         Box::pin(async move {
///             !self.on.load(std::sync::atomic::Ordering::Relaxed)
///                 && TcpProbe.probe(upstream).await
///         })
///     }
/// }
///
/// let config = HealthCheck::builder().probe(Maintenance::default()).build()?;
/// # Ok::<(), wsproxy::proxy::HealthConfigError>(())
/// ```
pub trait Probe: fmt::Debug + Send + Sync {
    /// Checks `upstream` once: `true` when it is healthy.
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a>;

    /// Checks `upstream` once over TLS configured by `tls`, as a checker
    /// given [`HealthChecker::tls`] does. [`TcpProbe`] and
    /// [`WebSocketProbe`] complete a TLS handshake first; by default, the
    /// plain [`probe`](Self::probe). Feature `rustls`.
    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        let _ = tls;
        self.probe(upstream)
    }
}

impl<P: Probe + ?Sized> Probe for Arc<P> {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        (**self).probe(upstream)
    }

    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        (**self).probe_tls(upstream, tls)
    }
}

impl<P: Probe + ?Sized> Probe for Box<P> {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        (**self).probe(upstream)
    }

    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        (**self).probe_tls(upstream, tls)
    }
}

/// A TCP connect that completes (HAProxy's default `check`); a host name is
/// resolved at each check. A Unix socket upstream is connected to by its
/// path; over TLS (`HealthChecker::tls`, feature `rustls`) the handshake
/// must complete too, certificate verified (HAProxy `check-ssl`).
///
/// ```
/// use wsproxy::proxy::{HealthCheck, TcpProbe};
///
/// let config = HealthCheck::builder().probe(TcpProbe).build()?;
/// # Ok::<(), wsproxy::proxy::HealthConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpProbe;

impl Probe for TcpProbe {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        Box::pin(async move { Dial::default().connect(upstream).await.is_ok() })
    }

    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        Box::pin(async move {
            let dial = Dial {
                tls: Some(tls),
                ..Dial::default()
            };
            dial.connect(upstream).await.is_ok()
        })
    }
}

/// A WebSocket upgrade to a path, answered by a 101 that completes it (RFC
/// 6455 §4.1, with a fresh random key and the crate's own checks of the
/// answer), then a masked Close 1000 so the upstream logs a clean close.
///
/// ```
/// use wsproxy::proxy::{HealthCheck, WebSocketProbe};
///
/// let probe = WebSocketProbe::new("/health")?.with_host("app.example")?;
/// let config = HealthCheck::builder().probe(probe).build()?;
/// # Ok::<(), wsproxy::proxy::HealthConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketProbe {
    path: String,
    host: Option<String>,
    limits: Limits,
    proxy_v2: bool,
}

/// A PROXY protocol v2 header with the LOCAL command: the connection is the
/// proxy's own (a health check), no client addresses follow.
const PROXY_V2_LOCAL: [u8; 16] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00,
];

impl WebSocketProbe {
    /// A handshake to `path` (origin-form, e.g. `/health`), with the
    /// upstream's `host:port` as Host.
    ///
    /// # Errors
    ///
    /// [`HealthConfigError::BadPath`] for a path that is not an absolute
    /// path with an optional query.
    pub fn new(path: impl Into<String>) -> Result<Self, HealthConfigError> {
        let path = path.into();
        let valid = path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok();
        if !valid {
            return Err(HealthConfigError::BadPath(path));
        }
        Ok(Self {
            path,
            host: None,
            limits: Limits::default(),
            proxy_v2: false,
        })
    }

    /// Opens each check with a PROXY protocol v2 header (the LOCAL
    /// command: a connection of the proxy's own), for upstreams that
    /// require one before the request, as a group with
    /// [`send_proxy_v2`](crate::proxy::UpstreamGroup::send_proxy_v2) has
    /// (HAProxy `check-send-proxy`, implied there by `send-proxy-v2`).
    #[must_use]
    pub fn with_proxy_v2(mut self) -> Self {
        self.proxy_v2 = true;
        self
    }

    /// Sends `host` as the Host header instead of the upstream's address.
    ///
    /// # Errors
    ///
    /// [`HealthConfigError::BadHost`] for an empty host or one that is not
    /// a valid header value.
    pub fn with_host(mut self, host: impl Into<String>) -> Result<Self, HealthConfigError> {
        let host = host.into();
        if host.is_empty() || HeaderValue::from_str(&host).is_err() {
            return Err(HealthConfigError::BadHost(host));
        }
        self.host = Some(host);
        Ok(self)
    }

    /// The request target.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The Host header it sends, when not the upstream's address.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
}

impl WebSocketProbe {
    /// Connects as `dial` says and does the handshake.
    async fn check(&self, upstream: &UpstreamAddr, dial: Dial<'_>) -> bool {
        let Ok(stream) = dial.connect(upstream).await else {
            return false;
        };
        let preface: &[u8] = if self.proxy_v2 { &PROXY_V2_LOCAL } else { &[] };
        websocket(
            stream,
            upstream,
            &self.path,
            self.host.as_deref(),
            &self.limits,
            preface,
        )
        .await
        .unwrap_or(false)
    }
}

impl Probe for WebSocketProbe {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        Box::pin(self.check(upstream, Dial::default()))
    }

    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        let dial = Dial {
            tls: Some(tls),
            ..Dial::default()
        };
        Box::pin(self.check(upstream, dial))
    }
}

/// Validated active health check settings; HAProxy's defaults: `check inter
/// 2s rise 2 fall 3`, a TCP connect, and a timeout equal to `inter` (HAProxy
/// uses `inter` when `timeout check` is not set).
///
/// ```
/// use std::time::Duration;
/// use wsproxy::proxy::{HealthCheck, WebSocketProbe};
///
/// // server ... check inter 5s rise 1 fall 2, probing a WebSocket endpoint
/// let config = HealthCheck::builder()
///     .probe(WebSocketProbe::new("/health")?)
///     .interval(Duration::from_secs(5))
///     .timeout(Duration::from_secs(1))
///     .rise(1)
///     .fall(2)
///     .build()?;
/// assert_eq!(config.interval(), Duration::from_secs(5));
/// assert_eq!(HealthCheck::default().timeout(), Duration::from_secs(2));
/// # Ok::<(), wsproxy::proxy::HealthConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HealthCheck {
    probe: Arc<dyn Probe>,
    interval: Duration,
    timeout: Option<Duration>,
    rise: u32,
    fall: u32,
    concurrency: usize,
}

impl Default for HealthCheck {
    /// HAProxy's defaults: TCP, `inter 2s rise 2 fall 3`.
    fn default() -> Self {
        Self {
            probe: Arc::new(TcpProbe),
            interval: DEFAULT_INTERVAL,
            timeout: None,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl HealthCheck {
    /// Starts a configuration from HAProxy's defaults.
    pub fn builder() -> HealthCheckBuilder {
        HealthCheckBuilder {
            config: Self::default(),
        }
    }

    /// The probe each check runs.
    pub fn probe(&self) -> &Arc<dyn Probe> {
        &self.probe
    }

    /// HAProxy `inter`: from the end of one check of an upstream to the
    /// start of the next.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// HAProxy `timeout check`: the interval unless set.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(self.interval)
    }

    /// HAProxy `rise`.
    pub fn rise(&self) -> u32 {
        self.rise
    }

    /// HAProxy `fall`.
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// How many checks may run at once across the set.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

/// Builds a [`HealthCheck`]; [`build`](Self::build) validates.
///
/// ```
/// use std::time::Duration;
/// use wsproxy::proxy::HealthCheck;
///
/// let config = HealthCheck::builder().interval(Duration::from_secs(5)).build()?;
/// assert_eq!(config.timeout(), Duration::from_secs(5));
/// # Ok::<(), wsproxy::proxy::HealthConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a HealthCheckBuilder does nothing until built"]
pub struct HealthCheckBuilder {
    config: HealthCheck,
}

impl HealthCheckBuilder {
    /// What each check does (default: [`TcpProbe`]).
    #[must_use = "builder methods return the updated builder"]
    pub fn probe(mut self, probe: impl Probe + 'static) -> Self {
        self.config.probe = Arc::new(probe);
        self
    }

    /// HAProxy `inter`: time from the end of one check of an upstream to
    /// the start of the next (default 2 s).
    #[must_use = "builder methods return the updated builder"]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// HAProxy `timeout check`: the whole probe (connect and, for
    /// WebSocket, the 101) must finish within it. Defaults to the interval.
    #[must_use = "builder methods return the updated builder"]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// HAProxy `rise`: consecutive successes that mark a down upstream up
    /// (default 2).
    #[must_use = "builder methods return the updated builder"]
    pub fn rise(mut self, rise: u32) -> Self {
        self.config.rise = rise;
        self
    }

    /// HAProxy `fall`: consecutive failures that mark an up upstream down
    /// (default 3).
    #[must_use = "builder methods return the updated builder"]
    pub fn fall(mut self, fall: u32) -> Self {
        self.config.fall = fall;
        self
    }

    /// How many checks may run at once across the set (default 32).
    #[must_use = "builder methods return the updated builder"]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// [`HealthConfigError::Zero`] for a zero interval, timeout, threshold
    /// or concurrency.
    pub fn build(self) -> Result<HealthCheck, HealthConfigError> {
        let c = self.config;
        if c.interval.is_zero() {
            return Err(HealthConfigError::Zero("interval"));
        }
        if c.timeout.is_some_and(|t| t.is_zero()) {
            return Err(HealthConfigError::Zero("timeout"));
        }
        if c.rise == 0 {
            return Err(HealthConfigError::Zero("rise"));
        }
        if c.fall == 0 {
            return Err(HealthConfigError::Zero("fall"));
        }
        if c.concurrency == 0 {
            return Err(HealthConfigError::Zero("concurrency"));
        }
        Ok(c)
    }
}

/// A health check setting that is invalid. A configuration error: it never
/// reaches a client, so it has no HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HealthConfigError {
    /// A setting that must be positive is zero.
    #[error("health check {0} must be greater than zero")]
    Zero(&'static str),
    /// The WebSocket probe path is not an origin-form target.
    #[error("health check path {0:?} is not an absolute path")]
    BadPath(String),
    /// The WebSocket probe Host is not a valid header value.
    #[error("health check host {0:?} is not a valid host header")]
    BadHost(String),
}

/// Runs the active health checks of one [`UpstreamSet`].
///
/// ```
/// use std::time::Duration;
/// use tokio::net::TcpListener;
/// use wsproxy::balance::{Upstream, UpstreamSet};
/// use wsproxy::{HealthCheck, HealthChecker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let set: UpstreamSet = [Upstream::new(listener.local_addr()?)].into_iter().collect();
/// let checker = HealthChecker::new(set.clone(), HealthCheck::builder().build()?);
///
/// // Run until the shutdown future resolves (here: after one round).
/// checker.run(tokio::time::sleep(Duration::from_millis(100))).await;
/// assert!(set.snapshot().iter().all(|p| !p.is_check_down()));
/// # Ok(())
/// # }
/// ```
#[must_use = "a HealthChecker does nothing until run"]
pub struct HealthChecker {
    set: UpstreamSet,
    config: HealthCheck,
    hooks: Vec<Box<ChangeHook>>,
    close_on_down: Vec<Arc<TunnelRegistry>>,
    /// `HealthChecker::tls` (`crate::upstream_tls`).
    #[cfg(feature = "rustls")]
    pub(crate) tls: Option<crate::upstream_tls::UpstreamTls>,
}

/// What [`HealthChecker::on_change`] calls: the upstream and whether it is
/// now up.
type ChangeHook = dyn Fn(UpstreamId, bool) + Send + Sync;

impl fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HealthChecker");
        d.field("set", &self.set)
            .field("config", &self.config)
            .field("hooks", &self.hooks.len())
            .field("close_on_down", &self.close_on_down.len());
        #[cfg(feature = "rustls")]
        d.field("tls", &self.tls);
        d.finish()
    }
}

impl HealthChecker {
    /// Checks `set` with `config`, validated by
    /// [`HealthCheckBuilder::build`].
    pub fn new(set: UpstreamSet, config: HealthCheck) -> Self {
        Self {
            set,
            config,
            hooks: Vec::new(),
            close_on_down: Vec::new(),
            #[cfg(feature = "rustls")]
            tls: None,
        }
    }

    /// Calls `hook` with the upstream and its new state (`true` for up) each
    /// time a check marks one down or up, after the mark is set: the place
    /// to log, page, or start a rebalance when
    /// an upstream comes (back) up. Hooks run on the checker's task, in the
    /// order they were added, so they should be quick.
    #[must_use = "builder methods return the updated builder"]
    pub fn on_change<H>(mut self, hook: H) -> Self
    where
        H: Fn(UpstreamId, bool) + Send + Sync + 'static,
    {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Closes the tunnels `group` has open to an upstream as soon as a
    /// check marks it down, with WebSocket Close 1001 (going away), at frame
    /// boundaries (HAProxy `on-marked-down shutdown-sessions`, which resets
    /// them instead). `group` must balance over this checker's set.
    ///
    /// Every later failed check of that upstream closes again what opened
    /// meanwhile: a connection whose upgrade was under way when the mark
    /// came lists its tunnel only after it.
    #[must_use = "builder methods return the updated builder"]
    pub fn close_on_down(mut self, group: &UpstreamGroup) -> Self {
        self.close_on_down.push(Arc::clone(group.tunnels()));
        self
    }

    /// Closes the tunnels of `id`, an upstream marked down, in every group
    /// of [`close_on_down`](Self::close_on_down).
    fn close_down(&self, id: UpstreamId) {
        let close = CloseFrame::new(1001, "upstream down").unwrap_or_else(|_| CloseFrame::empty());
        let closed: usize = self
            .close_on_down
            .iter()
            .map(|tunnels| tunnels.close_upstream(id, &close))
            .sum();
        if closed > 0 {
            tracing::info!(upstream = %id, closed, "closed the tunnels of an upstream marked down");
        }
    }

    /// Checks every upstream of the set until `shutdown` resolves, marking
    /// them down and up with [`UpstreamSet::set_check_down`]. Upstreams
    /// added later are checked from the next wake-up (at most one interval
    /// later); removed ones are forgotten. On shutdown the running checks
    /// are cancelled and the marks it made are lifted, so a stopped checker
    /// never leaves an upstream out of rotation for good. Upstreams it finds
    /// already marked down by checks (those of a checker that was aborted,
    /// as a host replacing its checker with one of new settings may do)
    /// start down: they come back after `rise` passing checks.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let config = &self.config;
        let mut state = HealthState::new(config.interval, config.rise, config.fall);
        // A check that failed while the process could not open sockets
        // (`local_failures` moved) says nothing of the upstream.
        let mut running: JoinSet<(UpstreamId, bool, bool)> = JoinSet::new();
        // Every change of the set bumps its generation: an unchanged one
        // holds the same upstreams, and the sync's sort can be skipped.
        let mut synced = None;
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            let snapshot = self.set.snapshot();
            if synced != Some(snapshot.generation()) {
                state.sync(snapshot.iter().map(|p| p.id()), now.into_std());
                // Marks this checker did not make (an earlier checker's,
                // aborted before it could lift them) are taken over: such
                // an upstream comes back after `rise` passes, where a
                // fresh count would see it up and never lift the mark.
                for peer in snapshot.iter().filter(|p| p.is_check_down()) {
                    state.mark_down(peer.id());
                }
                synced = Some(snapshot.generation());
            }
            while running.len() < config.concurrency {
                let Some(id) = state.poll_due(now.into_std()) else {
                    break;
                };
                // `state` was synced with this snapshot's generation, so the
                // peer is there; were it not, the next sync forgets the id.
                let Some(peer) = snapshot.get(id) else {
                    continue;
                };
                let addr = peer.addr().clone();
                let probe = Arc::clone(&config.probe);
                let limit = config.timeout();
                #[cfg(feature = "rustls")]
                let tls = self.tls.clone();
                running.spawn(async move {
                    let before = super::connect::local_failures();
                    #[cfg(feature = "rustls")]
                    let probing = match &tls {
                        Some(tls) => probe.probe_tls(&addr, tls),
                        None => probe.probe(&addr),
                    };
                    #[cfg(not(feature = "rustls"))]
                    let probing = probe.probe(&addr);
                    let ok = tokio::time::timeout(limit, probing).await.unwrap_or(false);
                    (id, ok, super::connect::local_failures() != before)
                });
            }
            drop(snapshot);
            // Wake for the next due check, but at least once an interval so
            // upstreams added to the set get checked.
            let wake = state
                .poll_timeout()
                .filter(|_| running.len() < config.concurrency)
                .map_or(now + config.interval, |due| {
                    Instant::from_std(due).min(now + config.interval)
                });
            tokio::select! {
                () = &mut shutdown => break,
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    // Check tasks neither panic nor get aborted while running;
                    // a JoinError would leave that upstream unchecked.
                    let (id, ok, local_failure) = match joined {
                        Ok(result) => result,
                        Err(_) => continue,
                    };
                    if !ok && local_failure {
                        tracing::warn!(upstream = %id, "health check inconclusive: the proxy is out of sockets");
                        state.handle_inconclusive(id, Instant::now().into_std());
                        continue;
                    }
                    match state.handle_result(id, ok, Instant::now().into_std()) {
                        Some(Transition::Down) => {
                            tracing::warn!(upstream = %id, "health check marked upstream down");
                            self.set.set_check_down(id, true);
                            self.hooks.iter().for_each(|hook| hook(id, false));
                        }
                        Some(Transition::Up) => {
                            tracing::info!(upstream = %id, "health check marked upstream up");
                            self.set.set_check_down(id, false);
                            self.hooks.iter().for_each(|hook| hook(id, true));
                        }
                        _ => {}
                    }
                    if !ok && state.is_up(id) == Some(false) {
                        self.close_down(id);
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        running.abort_all();
        for id in state.down() {
            self.set.set_check_down(id, false);
        }
    }
}

/// A WebSocket upgrade that must be answered by a valid 101, then a Close.
async fn websocket<S>(
    mut stream: S,
    addr: &UpstreamAddr,
    path: &str,
    host: Option<&str>,
    limits: &Limits,
    preface: &[u8],
) -> Option<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    // `localhost` for a Unix socket, whose path is no Host.
    let host = host.map_or_else(|| authority_of(addr).to_string(), str::to_owned);
    let request = Request::get(path)
        .header(HOST, host)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_KEY, key)
        .header(SEC_WEBSOCKET_VERSION, "13")
        .body(())
        .ok()?;
    let mut head = BytesMut::new();
    write_request_head(&request, &mut head);
    // Parsing our own head gives the RequestKind that classify_response
    // checks the 101 against (key, accept), with the crate's own rules.
    let Ok(Status::Complete(sent)) = parse_request(&mut head.clone(), limits) else {
        return None;
    };
    let mut out = BytesMut::from(preface);
    out.extend_from_slice(&head);
    stream.write_all(&out).await.ok()?;
    let mut buf = BytesMut::with_capacity(1024);
    // The scanner looks at each byte once; parsing waits for the blank line,
    // so a head that trickles in is not re-parsed on every read.
    let mut scanner = HeadScanner::response(*limits);
    let response = loop {
        if let Status::Complete(_) = scanner.scan(&buf).ok()? {
            if let Status::Complete(response) = parse_response(&mut buf, limits).ok()? {
                break response;
            }
        }
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return Some(false);
        }
    };
    // A subprotocol or extension the probe did not offer still completes
    // the upgrade (the key, Upgrade and Connection were checked first):
    // such a backend serves its real clients, which offer them.
    let switched = matches!(
        classify_response(sent.kind(), &response),
        Ok(ResponseKind::Switched)
            | Err(HandshakeError::Switch(
                SwitchError::Protocol | SwitchError::Extension
            ))
    );
    if switched {
        // RFC 6455 §5.5.1: a masked Close 1000 (client frames are masked,
        // §5.3), so the upstream logs a clean close rather than an abort.
        if let Ok(close) = CloseFrame::new(1000, "") {
            let _ = stream.write_all(&close.encode(Some(masking_key()))).await;
        }
    }
    let _ = stream.shutdown().await;
    Some(switched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn close_on_down_also_closes_tunnels_listed_after_the_mark() {
        use crate::balance::{RoundRobin, Upstream};
        use crate::proxy::{Listed, Registered};
        use crate::tunnel::{tunnel, TunnelConfig};

        // A port nothing listens on: every check is refused at once.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let set: UpstreamSet = [Upstream::new(dead)].into_iter().collect();
        let id = set.snapshot().iter().next().map(|p| p.id()).unwrap();
        let group = UpstreamGroup::new("g", RoundRobin::new(set.clone()));
        let enter = || {
            let (a, _) = tokio::io::duplex(8);
            let (b, _) = tokio::io::duplex(8);
            let config = TunnelConfig::new().track_frames(true);
            let handle = tunnel(a, b, &config, std::future::pending()).handle();
            let listed = Listed {
                upstream: id,
                client: std::net::IpAddr::from([127, 0, 0, 1]),
                affinity: None,
                origin: 0,
            };
            Registered::new(Arc::clone(group.tunnels()), listed, handle)
        };
        let early = enter();
        let config = HealthCheck::builder()
            .interval(Duration::from_secs(1))
            .fall(1)
            .build()
            .unwrap();
        let checker = HealthChecker::new(set.clone(), config).close_on_down(&group);
        let task = tokio::spawn(checker.run(std::future::pending()));
        for _ in 0..50 {
            if set.snapshot().get(id).is_some_and(|p| p.is_check_down()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let handles = |g: &UpstreamGroup| -> Vec<bool> {
            g.tunnels()
                .list()
                .iter()
                .map(|t| t.handle.is_ending())
                .collect()
        };
        assert_eq!(handles(&group), [true]);
        // An upgrade that was under way lists its tunnel after the mark: the
        // next failed check closes it too.
        let late = enter();
        assert_eq!(handles(&group), [true, false]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(handles(&group), [true, true]);
        task.abort();
        drop((early, late));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_checker_takes_over_the_marks_an_aborted_one_left() {
        use crate::balance::Upstream;
        use std::sync::atomic::{AtomicUsize, Ordering};

        /// Passes every check, counting them.
        #[derive(Debug)]
        struct Passes(Arc<AtomicUsize>);
        impl Probe for Passes {
            fn probe<'a>(&'a self, _: &'a UpstreamAddr) -> ProbeFuture<'a> {
                self.0.fetch_add(1, Ordering::Relaxed);
                Box::pin(std::future::ready(true))
            }
        }

        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let set: UpstreamSet = [Upstream::new(addr)].into_iter().collect();
        let id = set.snapshot().iter().next().map(|p| p.id()).unwrap();
        // As a checker aborted (not stopped) after marking it down left it.
        set.set_check_down(id, true);
        let checks = Arc::new(AtomicUsize::new(0));
        let config = HealthCheck::builder()
            .probe(Passes(Arc::clone(&checks)))
            .interval(Duration::from_secs(1))
            .rise(2)
            .build()
            .unwrap();
        let task =
            tokio::spawn(HealthChecker::new(set.clone(), config).run(std::future::pending()));
        let down = || set.snapshot().get(id).is_some_and(|p| p.is_check_down());
        tokio::time::sleep(Duration::from_millis(500)).await;
        // One pass of `rise` 2: still out.
        assert_eq!(checks.load(Ordering::Relaxed), 1);
        assert!(down());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(checks.load(Ordering::Relaxed), 2);
        assert!(!down(), "the second pass brings it back");
        task.abort();
    }

    #[test]
    fn build_refuses_zero_settings_and_probes_refuse_bad_targets() {
        let zero = |c: HealthCheckBuilder| c.build().unwrap_err();
        let b = HealthCheck::builder;
        assert_eq!(
            zero(b().interval(Duration::ZERO)),
            HealthConfigError::Zero("interval")
        );
        assert_eq!(
            zero(b().timeout(Duration::ZERO)),
            HealthConfigError::Zero("timeout")
        );
        assert_eq!(zero(b().rise(0)), HealthConfigError::Zero("rise"));
        assert_eq!(zero(b().fall(0)), HealthConfigError::Zero("fall"));
        assert_eq!(
            zero(b().concurrency(0)),
            HealthConfigError::Zero("concurrency")
        );
        assert_eq!(
            WebSocketProbe::new("health").unwrap_err(),
            HealthConfigError::BadPath("health".into())
        );
        let bad_host = WebSocketProbe::new("/h").and_then(|p| p.with_host("a\nb"));
        assert_eq!(
            bad_host.unwrap_err().to_string(),
            "health check host \"a\\nb\" is not a valid host header"
        );
        assert_eq!(
            WebSocketProbe::new("/h").and_then(|p| p.with_host("")),
            Err(HealthConfigError::BadHost(String::new()))
        );
        let probe = WebSocketProbe::new("/h?x=1").unwrap();
        assert_eq!((probe.path(), probe.host()), ("/h?x=1", None));
        assert!(b().probe(probe).build().is_ok());
    }

    #[test]
    fn timeout_defaults_to_the_interval_as_in_haproxy() {
        let c = HealthCheck::builder()
            .interval(Duration::from_secs(7))
            .build()
            .unwrap();
        assert_eq!(c.timeout(), Duration::from_secs(7));
        assert_eq!(HealthCheck::default().timeout(), Duration::from_secs(2));
        let c = HealthCheck::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(
            (c.interval(), c.timeout()),
            (Duration::from_secs(2), Duration::from_secs(1))
        );
    }
}
