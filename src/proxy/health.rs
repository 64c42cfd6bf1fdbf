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

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

pub use super::probe::{Probe, ProbeFuture, TcpProbe, WebSocketProbe};
use super::{TunnelRegistry, UpstreamGroup};
use crate::balance::health::{
    HealthState, Transition, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_RISE,
};
use crate::balance::{UpstreamId, UpstreamSet};
use crate::clock::capped;
use crate::frame::CloseFrame;

/// Checks running at once, by default: enough for a large group, few
/// enough not to look like a flood to the upstreams.
const DEFAULT_CONCURRENCY: usize = 32;

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
        // Whose check each task runs: a host's probe may panic, and its
        // upstream must not then stay "being checked" for good.
        let mut checking: HashMap<tokio::task::Id, UpstreamId> = HashMap::new();
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
                let task = running.spawn(async move {
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
                checking.insert(task.id(), id);
            }
            drop(snapshot);
            // Wake for the next due check, but at least once an interval so
            // upstreams added to the set get checked.
            let wake = state
                .poll_timeout()
                .filter(|_| running.len() < config.concurrency)
                .map_or(now + capped(config.interval), |due| {
                    Instant::from_std(due).min(now + capped(config.interval))
                });
            tokio::select! {
                () = &mut shutdown => break,
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                    // A probe that panicked failed its check (nothing aborts
                    // a check task while the checker runs).
                    let (id, ok, local_failure) = match joined {
                        Ok((task, result)) => {
                            checking.remove(&task);
                            result
                        }
                        Err(e) => {
                            let Some(id) = checking.remove(&e.id()) else {
                                continue;
                            };
                            tracing::warn!(upstream = %id, error = %e, "health check panicked");
                            (id, false, false)
                        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::UpstreamAddr;

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
