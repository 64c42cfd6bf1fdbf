//! Active health checks (HAProxy `check inter rise fall`): the async shell
//! around [`balance::health::HealthState`](crate::balance::health::HealthState).
//!
//! A [`HealthChecker`] checks every upstream of one [`UpstreamSet`] every
//! interval, with a TCP connect or a real WebSocket handshake, and marks
//! upstreams down and up with [`UpstreamSet::set_check_down`]: a down
//! upstream gets no new connections from any balancer over the set. Checks
//! never undo the operator's own [`UpstreamSet::set_down`].
//!
//! [`HealthChecker::close_on_down`] adds HAProxy's `on-marked-down
//! shutdown-sessions`: the open tunnels of an upstream marked down are closed
//! with WebSocket Close 1001, so their clients reconnect to a live one.
//! [`HealthChecker::on_change`] tells the host of every mark.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use http::header::{CONNECTION, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderValue, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::balance::health::{
    HealthState, Transition, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_RISE,
};
use crate::balance::{UpstreamAddr, UpstreamId, UpstreamSet};
use crate::frame::{masking_key, CloseFrame};
use crate::handshake::{
    classify_response, parse_request, parse_response, write_request_head, Limits, ResponseKind,
    Status,
};
use crate::proxy::{connect_addr, TunnelRegistry, UpstreamGroup};

/// Checks running at once, by default: enough for a large group, few
/// enough not to look like a flood to the upstreams.
const DEFAULT_CONCURRENCY: usize = 32;

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Check {
    /// A TCP connect that completes (HAProxy's default `check`).
    Tcp,
    /// A WebSocket upgrade to `path` answered by a 101 that completes it
    /// (RFC 6455 §4.1, with a fresh random key), then a Close frame.
    WebSocket {
        /// The request target, e.g. `/health`.
        path: String,
        /// The Host header; the upstream's `host:port` when `None`.
        host: Option<String>,
    },
}

impl Check {
    /// A WebSocket handshake to `path`, with the upstream's address as Host.
    pub fn websocket(path: impl Into<String>) -> Self {
        Self::WebSocket {
            path: path.into(),
            host: None,
        }
    }
}

/// Active health check settings, HAProxy's defaults: `check inter 2s rise 2
/// fall 3`, a TCP connect, and a timeout equal to `inter` (HAProxy uses
/// `inter` when `timeout check` is not set).
///
/// ```
/// use std::time::Duration;
/// use wsproxy::health::{Check, HealthCheck};
///
/// // server ... check inter 5s rise 1 fall 2, probing a WebSocket endpoint
/// let config = HealthCheck::new()
///     .check(Check::websocket("/health"))
///     .interval(Duration::from_secs(5))
///     .timeout(Duration::from_secs(1))
///     .rise(1)
///     .fall(2)
///     .build()?;
/// assert_eq!(config.interval_duration(), Duration::from_secs(5));
/// # Ok::<(), wsproxy::health::HealthConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthCheck {
    check: Check,
    interval: Duration,
    timeout: Option<Duration>,
    rise: u32,
    fall: u32,
    concurrency: usize,
    limits: Limits,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthCheck {
    /// HAProxy's defaults: TCP, `inter 2s rise 2 fall 3`.
    pub fn new() -> Self {
        Self {
            check: Check::Tcp,
            interval: DEFAULT_INTERVAL,
            timeout: None,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            concurrency: DEFAULT_CONCURRENCY,
            limits: Limits::default(),
        }
    }

    /// What each check does.
    #[must_use]
    pub fn check(mut self, check: Check) -> Self {
        self.check = check;
        self
    }

    /// HAProxy `inter`: time from the end of one check of an upstream to
    /// the start of the next.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// HAProxy `timeout check`: the whole check (connect and, for
    /// WebSocket, the 101) must finish within it. Defaults to the interval.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// HAProxy `rise`: consecutive successes that mark a down upstream up.
    #[must_use]
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise;
        self
    }

    /// HAProxy `fall`: consecutive failures that mark an up upstream down.
    #[must_use]
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall;
        self
    }

    /// How many checks may run at once across the set (default 32).
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The interval between checks of one upstream.
    pub fn interval_duration(&self) -> Duration {
        self.interval
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// [`HealthConfigError`] for a zero interval, timeout, threshold or
    /// concurrency, or a WebSocket path or host that cannot go in a request.
    pub fn build(self) -> Result<Self, HealthConfigError> {
        if self.interval.is_zero() {
            return Err(HealthConfigError::Zero("interval"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(HealthConfigError::Zero("timeout"));
        }
        if self.rise == 0 {
            return Err(HealthConfigError::Zero("rise"));
        }
        if self.fall == 0 {
            return Err(HealthConfigError::Zero("fall"));
        }
        if self.concurrency == 0 {
            return Err(HealthConfigError::Zero("concurrency"));
        }
        if let Check::WebSocket { path, host } = &self.check {
            let valid = path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok();
            if !valid {
                return Err(HealthConfigError::BadPath(path.clone()));
            }
            if let Some(host) = host {
                if HeaderValue::from_str(host).is_err() || host.is_empty() {
                    return Err(HealthConfigError::BadHost(host.clone()));
                }
            }
        }
        Ok(self)
    }

    fn check_timeout(&self) -> Duration {
        self.timeout.unwrap_or(self.interval)
    }
}

/// A [`HealthCheck`] that does not build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HealthConfigError {
    /// A setting that must be positive is zero.
    #[error("health check {0} must be greater than zero")]
    Zero(&'static str),
    /// The WebSocket check path is not an origin-form target.
    #[error("health check path {0:?} is not an absolute path")]
    BadPath(String),
    /// The WebSocket check Host is not a valid header value.
    #[error("health check host {0:?} is not a valid host header")]
    BadHost(String),
}

/// Runs the active health checks of one [`UpstreamSet`].
///
/// ```
/// use std::time::Duration;
/// use tokio::net::TcpListener;
/// use wsproxy::balance::{Upstream, UpstreamSet};
/// use wsproxy::health::{HealthCheck, HealthChecker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let set: UpstreamSet = [Upstream::new(listener.local_addr()?)].into_iter().collect();
/// let checker = HealthChecker::new(set.clone(), HealthCheck::new().build()?);
///
/// // Run until the shutdown future resolves (here: after one round).
/// checker.run(tokio::time::sleep(Duration::from_millis(100))).await;
/// assert!(set.snapshot().iter().all(|p| !p.is_check_down()));
/// # Ok(())
/// # }
/// ```
pub struct HealthChecker {
    set: UpstreamSet,
    config: Arc<HealthCheck>,
    hooks: Vec<Box<ChangeHook>>,
    close_on_down: Vec<Arc<TunnelRegistry>>,
}

/// What [`HealthChecker::on_change`] calls: the upstream and whether it is
/// now up.
type ChangeHook = dyn Fn(UpstreamId, bool) + Send + Sync;

impl fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecker")
            .field("set", &self.set)
            .field("config", &self.config)
            .field("hooks", &self.hooks.len())
            .field("close_on_down", &self.close_on_down.len())
            .finish()
    }
}

impl HealthChecker {
    /// Checks `set` with `config` (built with [`HealthCheck::build`]).
    pub fn new(set: UpstreamSet, config: HealthCheck) -> Self {
        Self {
            set,
            config: Arc::new(config),
            hooks: Vec::new(),
            close_on_down: Vec::new(),
        }
    }

    /// Calls `hook` with the upstream and its new state (`true` for up) each
    /// time a check marks one down or up, after the mark is set: the place
    /// to log, page, or start a rebalance when
    /// an upstream comes (back) up. Hooks run on the checker's task, in the
    /// order they were added, so they should be quick.
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
    /// never leaves an upstream out of rotation for good.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let config = &self.config;
        let mut state = HealthState::new(config.interval, config.rise, config.fall);
        let mut running: JoinSet<(UpstreamId, bool)> = JoinSet::new();
        // Every change of the set bumps its generation: an unchanged one
        // holds the same upstreams, and the sync's sort can be skipped.
        let mut synced = None;
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            let snapshot = self.set.snapshot();
            if synced != Some(snapshot.generation()) {
                state.sync(snapshot.iter().map(|p| p.id()), now.into_std());
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
                let config = Arc::clone(config);
                running.spawn(async move {
                    let ok = tokio::time::timeout(config.check_timeout(), probe(&config, &addr))
                        .await
                        .unwrap_or(false);
                    (id, ok)
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
                    let (id, ok) = match joined {
                        Ok(result) => result,
                        Err(_) => continue,
                    };
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

/// One check; the caller bounds it with the timeout.
async fn probe(config: &HealthCheck, addr: &UpstreamAddr) -> bool {
    let Ok(stream) = connect_addr(addr).await else {
        return false;
    };
    match &config.check {
        Check::Tcp => true,
        Check::WebSocket { path, host } => {
            websocket(stream, addr, path, host.as_deref(), &config.limits)
                .await
                .unwrap_or(false)
        }
    }
}

/// A WebSocket upgrade that must be answered by a valid 101, then a Close.
async fn websocket(
    mut stream: TcpStream,
    addr: &UpstreamAddr,
    path: &str,
    host: Option<&str>,
    limits: &Limits,
) -> Option<bool> {
    let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let host = host.map_or_else(|| addr.to_string(), str::to_owned);
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
    stream.write_all(&head).await.ok()?;
    let mut buf = BytesMut::with_capacity(1024);
    let response = loop {
        match parse_response(&mut buf, limits).ok()? {
            Status::Complete(response) => break response,
            Status::Partial => {
                if stream.read_buf(&mut buf).await.ok()? == 0 {
                    return Some(false);
                }
            }
        }
    };
    let switched = matches!(
        classify_response(sent.kind(), &response),
        Ok(ResponseKind::Switched)
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
        let config = HealthCheck::new()
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

    #[test]
    fn build_refuses_zero_settings_and_bad_targets() {
        let zero = |c: HealthCheck| c.build().unwrap_err();
        assert_eq!(
            zero(HealthCheck::new().interval(Duration::ZERO)),
            HealthConfigError::Zero("interval")
        );
        assert_eq!(
            zero(HealthCheck::new().timeout(Duration::ZERO)),
            HealthConfigError::Zero("timeout")
        );
        assert_eq!(
            zero(HealthCheck::new().rise(0)),
            HealthConfigError::Zero("rise")
        );
        assert_eq!(
            zero(HealthCheck::new().fall(0)),
            HealthConfigError::Zero("fall")
        );
        assert_eq!(
            zero(HealthCheck::new().concurrency(0)),
            HealthConfigError::Zero("concurrency")
        );
        assert_eq!(
            zero(HealthCheck::new().check(Check::websocket("health"))),
            HealthConfigError::BadPath("health".into())
        );
        let bad_host = Check::WebSocket {
            path: "/h".into(),
            host: Some("a\nb".into()),
        };
        assert_eq!(
            zero(HealthCheck::new().check(bad_host)).to_string(),
            "health check host \"a\\nb\" is not a valid host header"
        );
        assert!(HealthCheck::new()
            .check(Check::websocket("/h?x=1"))
            .build()
            .is_ok());
    }

    #[test]
    fn timeout_defaults_to_the_interval_as_in_haproxy() {
        let c = HealthCheck::new()
            .interval(Duration::from_secs(7))
            .build()
            .unwrap();
        assert_eq!(c.check_timeout(), Duration::from_secs(7));
        assert_eq!(HealthCheck::new().check_timeout(), Duration::from_secs(2));
    }
}
