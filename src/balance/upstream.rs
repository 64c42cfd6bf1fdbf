//! One upstream: its address, its settings, its passive health, and the
//! [`Lease`] a connection to it holds.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::clock::capped;
/// Where an upstream listens: a socket address, a host name and port that
/// the caller resolves when it connects, or a Unix socket path (nginx
/// `server unix:/run/app.sock`).
///
/// It parses from and prints as `ip:port`, `[ipv6]:port`, `host:port` or
/// `unix:/path`; the printed form is also what a consistent hash ring
/// places the upstream by.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use wsproxy::balance::UpstreamAddr;
///
/// let ip = UpstreamAddr::from("127.0.0.1:8080".parse::<SocketAddr>()?);
/// assert_eq!(ip.to_string(), "127.0.0.1:8080");
/// let name = UpstreamAddr::name("localhost", 8080);
/// assert_eq!((&*name.host(), name.port()), ("localhost", 8080));
/// let unix: UpstreamAddr = "unix:/run/app.sock".parse()?;
/// assert_eq!(unix.as_unix_path(), Some(std::path::Path::new("/run/app.sock")));
/// assert_eq!(unix.to_string(), "unix:/run/app.sock");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamAddr {
    /// A resolved address: connect to it directly.
    Socket(SocketAddr),
    /// A host name and port, resolved by the caller at connect time
    /// (`TcpStream::connect((host, port))` borrows it without allocating).
    Name {
        /// Host name.
        host: Arc<str>,
        /// TCP port.
        port: u16,
    },
    /// A Unix domain socket path (nginx `unix:/path`). The shell connects
    /// to it on Unix targets only; elsewhere the connect fails with
    /// [`io::ErrorKind::Unsupported`](std::io::ErrorKind::Unsupported).
    Unix(Arc<Path>),
}

impl UpstreamAddr {
    /// A host name and port.
    pub fn name(host: impl Into<Arc<str>>, port: u16) -> Self {
        Self::Name {
            host: host.into(),
            port,
        }
    }

    /// A Unix domain socket path (nginx `server unix:/run/app.sock`).
    pub fn unix(path: impl AsRef<Path>) -> Self {
        Self::Unix(Arc::from(path.as_ref()))
    }

    /// The socket address, when this is one.
    pub fn as_socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Socket(addr) => Some(*addr),
            Self::Name { .. } | Self::Unix(_) => None,
        }
    }

    /// The Unix socket path, when this is one.
    pub fn as_unix_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(path) => Some(path),
            Self::Socket(_) | Self::Name { .. } => None,
        }
    }

    /// The TCP port; 0 for a Unix socket, which has none.
    pub fn port(&self) -> u16 {
        match self {
            Self::Socket(addr) => addr.port(),
            Self::Name { port, .. } => *port,
            Self::Unix(_) => 0,
        }
    }

    /// The host part without the port (an IP literal for a socket address
    /// is not bracketed); `localhost` for a Unix socket, the Host nginx
    /// sends for `proxy_pass http://unix:/path:`. Allocates only for a
    /// socket address; use [`as_socket_addr`](Self::as_socket_addr) on the
    /// hot path.
    pub fn host(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Socket(addr) => addr.ip().to_string().into(),
            Self::Name { host, .. } => std::borrow::Cow::Borrowed(host),
            Self::Unix(_) => std::borrow::Cow::Borrowed("localhost"),
        }
    }
}

/// Why a text is not an [`UpstreamAddr`].
///
/// ```
/// use wsproxy::balance::UpstreamAddr;
///
/// let err = "no-port".parse::<UpstreamAddr>().unwrap_err();
/// assert!(err.to_string().contains("no-port"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an upstream address (ip:port, [ipv6]:port, host:port or unix:/path)")]
pub struct AddrParseError(String);

impl FromStr for UpstreamAddr {
    type Err = AddrParseError;

    /// `ip:port`, `[ipv6]:port`, `host:port` (letters, digits, `-` and `.`)
    /// or `unix:PATH` with a non-empty path.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || AddrParseError(text.to_owned());
        if let Some(path) = text.strip_prefix("unix:") {
            return if path.is_empty() {
                Err(bad())
            } else {
                Ok(Self::unix(path))
            };
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !host_ok {
            return Err(bad());
        }
        Ok(Self::name(host, port))
    }
}

impl UpstreamAddr {
    /// The address as a URI authority; a name no authority can hold
    /// becomes `upstream`, a Unix socket `localhost` (nginx's `Host` for
    /// `proxy_pass http://unix:/path:`).
    pub(crate) fn authority(&self) -> Authority {
        if self.as_unix_path().is_some() {
            return Authority::from_static("localhost");
        }
        // The address prints as `ip:port`, `[ipv6]:port` or `host:port`.
        self.to_string()
            .parse()
            .unwrap_or_else(|_| Authority::from_static("upstream"))
    }
}

impl From<SocketAddr> for UpstreamAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::Socket(addr)
    }
}

impl fmt::Display for UpstreamAddr {
    /// `ip:port`, `[ipv6]:port`, `host:port` or `unix:/path`: also the
    /// name a consistent hash ring places the upstream by, so every gateway
    /// agrees.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(addr) => addr.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Identifies an upstream for its whole life; never reused, and unique
/// across every [`UpstreamSet`](super::UpstreamSet) of the process, so that
/// a tunnel registry kept across a reconfigure that brought a new set
/// never mistakes one set's upstream for another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(pub(crate) u64);

impl UpstreamId {
    /// An id no upstream had before.
    pub(crate) fn fresh() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl fmt::Display for UpstreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream#{}", self.0)
    }
}

/// An upstream server and its settings, as one `server` line of an nginx
/// `upstream` block.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Duration};
/// use wsproxy::balance::{Upstream, UpstreamSet};
///
/// // server 127.0.0.1:9001 weight=5 max_fails=3 fail_timeout=30s;
/// let upstream = Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?)
///     .weight(5)
///     .max_fails(3)
///     .fail_timeout(Duration::from_secs(30));
/// let set = UpstreamSet::new();
/// let id = set.add(upstream);
/// assert_eq!(set.snapshot().get(id).map(|p| p.weight()), Some(5));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upstream {
    pub(crate) addr: UpstreamAddr,
    pub(crate) weight: u32,
    pub(crate) max_fails: u32,
    pub(crate) fail_timeout: Duration,
    pub(crate) backup: bool,
    pub(crate) down: bool,
}

impl Upstream {
    /// An upstream with nginx's defaults: `weight=1 max_fails=1
    /// fail_timeout=10s`, primary, up.
    pub fn new(addr: impl Into<UpstreamAddr>) -> Self {
        Self {
            addr: addr.into(),
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            backup: false,
            down: false,
        }
    }

    /// nginx `weight=N`. Zero is raised to one, because nginx rejects
    /// `weight=0`: stop traffic with [`down`](Self::down) or a drain.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// nginx `max_fails=N`: failures within `fail_timeout` that make the
    /// upstream unavailable for `fail_timeout`. Zero disables the accounting.
    #[must_use]
    pub fn max_fails(mut self, max_fails: u32) -> Self {
        self.max_fails = max_fails;
        self
    }

    /// nginx `fail_timeout=T`: both the window that counts failures and how
    /// long an upstream that reached `max_fails` is skipped.
    #[must_use]
    pub fn fail_timeout(mut self, fail_timeout: Duration) -> Self {
        self.fail_timeout = fail_timeout;
        self
    }

    /// nginx `backup`: used only when no primary is available.
    #[must_use]
    pub fn backup(mut self, backup: bool) -> Self {
        self.backup = backup;
        self
    }

    /// nginx `down`: never picked.
    #[must_use]
    pub fn down(mut self, down: bool) -> Self {
        self.down = down;
        self
    }

    /// The address.
    #[inline]
    pub fn addr(&self) -> &UpstreamAddr {
        &self.addr
    }
}

/// Passive health as nginx keeps it (`ngx_http_upstream_free_round_robin_peer`).
#[derive(Debug, Default)]
struct Health {
    fails: u32,
    window_start: Option<Instant>,
    down_until: Option<Instant>,
}

/// Set-wide counts, shared by every upstream of a set and their leases.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Open leases on the whole set (HAProxy `tot_used`), for bounded loads.
    pub(crate) total: AtomicUsize,
    /// Upstreams that reached `max_fails` and have not succeeded since.
    /// While zero, strategies skip the per-peer health check.
    pub(crate) tripped: AtomicUsize,
    /// Upstreams of the set neither down nor draining, both tiers, as of the
    /// last published snapshot: what passive health may not trip them all of.
    pub(crate) routable: AtomicUsize,
}

impl Counters {
    /// Counts one more tripped upstream, unless that would leave the set
    /// without any: nginx never marks the only server of a group failed
    /// (`peers->single`), and marking the last one turns one client's bad
    /// requests into a 502 for everyone else.
    ///
    /// Conservative: `tripped` also counts upstreams that are down or whose
    /// `fail_timeout` is over, so it may spare an upstream that another
    /// could have stood in for, never the other way round.
    fn try_trip(&self) -> bool {
        let routable = self.routable.load(Ordering::Relaxed);
        self.tripped
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tripped| {
                (routable > tripped.saturating_add(1)).then_some(tripped + 1)
            })
            .is_ok()
    }
}

/// The state of one upstream that outlives set changes: leases hold it, so a
/// removed upstream's connections still release their count.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: UpstreamId,
    pub(crate) addr: UpstreamAddr,
    /// `addr` as the authority rewritten requests name (`$proxy_host`),
    /// made once here rather than formatted and parsed for every request.
    authority: Authority,
    pub(crate) max_fails: u32,
    pub(crate) fail_timeout: Duration,
    /// Open leases on this upstream (nginx `peer->conns`).
    pub(crate) active: AtomicUsize,
    pub(crate) counters: Arc<Counters>,
    /// Mirror of `health.fails`, so a healthy upstream costs one atomic load.
    fails: AtomicU32,
    health: Mutex<Health>,
}

impl Shared {
    pub(crate) fn new(id: UpstreamId, upstream: &Upstream, counters: Arc<Counters>) -> Self {
        Self {
            id,
            addr: upstream.addr.clone(),
            authority: upstream.addr.authority(),
            max_fails: upstream.max_fails,
            fail_timeout: upstream.fail_timeout,
            active: AtomicUsize::new(0),
            counters,
            fails: AtomicU32::new(0),
            health: Mutex::new(Health::default()),
        }
    }

    /// False while the upstream sits out its `fail_timeout` after `max_fails`.
    #[inline]
    pub(crate) fn is_healthy(&self, now: Instant) -> bool {
        self.max_fails == 0
            || self.fails.load(Ordering::Relaxed) < self.max_fails
            || self.is_back(now)
    }

    /// Whether an upstream that reached `max_fails` has sat out its
    /// `fail_timeout`: the rare path, behind the lock.
    #[cold]
    fn is_back(&self, now: Instant) -> bool {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health.down_until.map_or(true, |until| now >= until)
    }

    fn report_failure(&self, now: Instant) {
        if self.max_fails == 0 {
            return;
        }
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let window_over = health.window_start.map_or(true, |start| {
            now.saturating_duration_since(start) > self.fail_timeout
        });
        // Failures count within fail_timeout of the first one. Once max_fails
        // is reached the count stays until a success, so a failed probe after
        // fail_timeout disables the upstream again at once, as in nginx.
        if window_over && health.fails < self.max_fails {
            health.fails = 0;
            health.window_start = Some(now);
        }
        let trips = health.fails < self.max_fails && health.fails + 1 >= self.max_fails;
        if trips && !self.counters.try_trip() {
            // The last available upstream: the failure is not counted, as
            // nginx does not count failures of a lone server.
            return;
        }
        health.fails = health.fails.saturating_add(1);
        if health.fails >= self.max_fails {
            health.down_until = Some(now + capped(self.fail_timeout));
        }
        self.fails.store(health.fails, Ordering::Relaxed);
    }

    fn report_success(&self, picked: Instant) {
        // Failures short of max_fails are not cleared by a success: they
        // expire fail_timeout after the first (`report_failure`), so an
        // upstream that fails every other request still trips, as in nginx.
        if self.max_fails == 0 || self.fails.load(Ordering::Relaxed) < self.max_fails {
            return;
        }
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the answer to a pick made once the sit-out was over (nginx's
        // probe) lifts the mark: a request that was already under way when
        // the upstream tripped proves nothing of it now.
        let sat_out = health.down_until.map_or(true, |until| picked >= until);
        if health.fails < self.max_fails || !sat_out {
            return;
        }
        self.counters.tripped.fetch_sub(1, Ordering::Relaxed);
        *health = Health::default();
        self.fails.store(0, Ordering::Relaxed);
    }
}

impl Drop for Shared {
    /// A removed upstream that was still tripped stops counting, so the
    /// fast path comes back.
    fn drop(&mut self) {
        if self.max_fails > 0 && *self.fails.get_mut() >= self.max_fails {
            self.counters.tripped.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One connection's hold on an upstream.
///
/// Keep it as long as the proxied connection lives: dropping it releases the
/// in-flight count. Report on it for passive health: a failed connect or
/// answer, or the answer that came.
/// Valid even after its upstream was removed from the set.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{Balancer, LeastConn, PickContext, Upstream, UpstreamSet};
///
/// let set = UpstreamSet::new();
/// let id = set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
/// let balancer = LeastConn::new(set.clone());
/// let request = http::Request::get("/").body(())?;
/// let now = Instant::now();
///
/// let lease = balancer.pick(&PickContext::new("127.0.0.1".parse()?, &request, now))?;
/// assert_eq!(lease.addr().as_socket_addr(), Some("127.0.0.1:9001".parse()?));
/// assert_eq!(set.snapshot().get(id).map(|p| p.active()), Some(1));
/// lease.report_failure(now); // the connect failed: max_fails=1 disables it
/// drop(lease);
/// assert_eq!(set.snapshot().get(id).map(|p| p.active()), Some(0));
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a lease at once releases the connection count"]
pub struct Lease {
    shared: Arc<Shared>,
}

impl Lease {
    #[inline]
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.active.fetch_add(1, Ordering::Relaxed);
        shared.counters.total.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: Arc::clone(shared),
        }
    }

    /// The upstream's id.
    #[inline]
    pub fn id(&self) -> UpstreamId {
        self.shared.id
    }

    /// Where to connect.
    #[inline]
    pub fn addr(&self) -> &UpstreamAddr {
        &self.shared.addr
    }

    /// The upstream's address as a URI authority (`ip:port`, `[ipv6]:port`
    /// or `host:port`): the `Host` nginx sends for `proxy_pass
    /// http://$upstream_addr`, made once per upstream, not per request.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{net::SocketAddr, time::Instant};
    /// use wsproxy::balance::{Balancer, PickContext, RoundRobin, Upstream, UpstreamSet};
    ///
    /// let set: UpstreamSet = [Upstream::new("[::1]:9001".parse::<SocketAddr>()?)].into_iter().collect();
    /// let request = http::Request::get("/").body(())?;
    /// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
    /// let lease = RoundRobin::new(set).pick(&ctx)?;
    /// assert_eq!(lease.authority().as_str(), "[::1]:9001");
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn authority(&self) -> &Authority {
        &self.shared.authority
    }

    /// The connect (or the handshake) failed at `now`: counts towards
    /// `max_fails` within `fail_timeout` (nginx `proxy_next_upstream error
    /// timeout`).
    ///
    /// Never takes out the set's last available upstream: nginx does not
    /// count failures of a group's only server, and one client whose
    /// requests fail (a slow path, a bad upgrade) must not lock every other
    /// client out. Such a failure is not counted.
    pub fn report_failure(&self, now: Instant) {
        self.shared.report_failure(now);
    }

    /// The upstream answered (its answer head came and parsed) a request
    /// picked at `picked` (or begun then): lifts a failure mark if the pick
    /// came after the mark's `fail_timeout`, as nginx does when the peer it
    /// lets through to probe answers.
    ///
    /// A success does not clear failures short of `max_fails`: they expire
    /// `fail_timeout` after the first, so an upstream that connects but then
    /// fails every other request still trips. Nor does the answer to a
    /// request picked before or during the sit-out lift the mark, however
    /// late it comes. Report it for the answer, not the connect: an
    /// upstream that accepts connections and never answers is the one
    /// passive health has to catch.
    pub fn report_success(&self, picked: Instant) {
        self.shared.report_success(picked);
    }
}

impl Drop for Lease {
    #[inline]
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        self.shared.counters.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.shared.id)
            .field("addr", &self.shared.addr)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_fails: u32, fail_timeout: Duration) -> Arc<Shared> {
        let upstream = Upstream::new(SocketAddr::from(([127, 0, 0, 1], 9000)))
            .max_fails(max_fails)
            .fail_timeout(fail_timeout);
        // Two more upstreams in the set, so that this one may be tripped.
        let counters = Counters::default();
        counters.routable.store(3, Ordering::Relaxed);
        Arc::new(Shared::new(UpstreamId(0), &upstream, Arc::new(counters)))
    }

    #[test]
    fn passive_health_marks_after_max_fails_and_unmarks_after_fail_timeout() {
        let t0 = super::super::testutil::epoch();
        let s = shared(3, Duration::from_secs(10));
        let lease = Lease::new(&s);
        lease.report_failure(t0);
        lease.report_failure(t0 + Duration::from_secs(1));
        assert!(s.is_healthy(t0 + Duration::from_secs(2)));
        lease.report_failure(t0 + Duration::from_secs(2));
        assert!(!s.is_healthy(t0 + Duration::from_secs(2)));
        assert!(!s.is_healthy(t0 + Duration::from_millis(11_999)));
        assert!(s.is_healthy(t0 + Duration::from_secs(12)));
        // A failed probe disables it again at once; a success clears it.
        lease.report_failure(t0 + Duration::from_secs(13));
        assert!(!s.is_healthy(t0 + Duration::from_secs(13)));
        assert_eq!(s.counters.tripped.load(Ordering::Relaxed), 1);
        // Not while it sits out again; once it did, a success clears it.
        lease.report_success(t0 + Duration::from_secs(14));
        assert!(!s.is_healthy(t0 + Duration::from_secs(14)));
        lease.report_success(t0 + Duration::from_secs(23));
        assert!(s.is_healthy(t0 + Duration::from_secs(13)));
        assert_eq!(s.counters.tripped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn failures_outside_fail_timeout_do_not_add_up() {
        let t0 = super::super::testutil::epoch();
        let s = shared(2, Duration::from_secs(10));
        let lease = Lease::new(&s);
        lease.report_failure(t0);
        lease.report_failure(t0 + Duration::from_secs(11));
        assert!(s.is_healthy(t0 + Duration::from_secs(11)));
        lease.report_failure(t0 + Duration::from_secs(12));
        assert!(!s.is_healthy(t0 + Duration::from_secs(12)));
    }

    /// An upstream that connects and then fails every other request trips:
    /// the successes between do not wipe the count.
    #[test]
    fn successes_do_not_clear_failures_short_of_max_fails() {
        let t0 = super::super::testutil::epoch();
        let s = shared(2, Duration::from_secs(10));
        let lease = Lease::new(&s);
        lease.report_failure(t0);
        lease.report_success(t0 + Duration::from_secs(1));
        lease.report_failure(t0 + Duration::from_secs(2));
        assert!(!s.is_healthy(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn max_fails_zero_never_marks() {
        let t0 = super::super::testutil::epoch();
        let s = shared(0, Duration::from_secs(10));
        let lease = Lease::new(&s);
        for _ in 0..10 {
            lease.report_failure(t0);
        }
        assert!(s.is_healthy(t0));
    }

    #[test]
    fn lease_counts_while_alive() {
        let s = shared(1, Duration::from_secs(10));
        let a = Lease::new(&s);
        let b = Lease::new(&s);
        assert_eq!(s.active.load(Ordering::Relaxed), 2);
        assert_eq!(s.counters.total.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        assert_eq!(s.active.load(Ordering::Relaxed), 0);
        assert_eq!(s.counters.total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn addresses_display_as_host_port() {
        let v6 = UpstreamAddr::from(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 80)));
        assert_eq!(v6.to_string(), "[::1]:80");
        assert_eq!(v6.host(), "::1");
        assert_eq!(
            UpstreamAddr::name("localhost", 81).to_string(),
            "localhost:81"
        );
        assert_eq!(UpstreamAddr::name("localhost", 81).as_socket_addr(), None);
    }

    #[test]
    fn addresses_parse_back_from_their_printed_form() {
        for text in [
            "127.0.0.1:80",
            "[::1]:443",
            "backend.internal:8080",
            "unix:/run/app.sock",
            "unix:relative.sock",
        ] {
            let addr: UpstreamAddr = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
        }
        let unix = UpstreamAddr::unix("/run/app.sock");
        assert_eq!("unix:/run/app.sock".parse(), Ok(unix.clone()));
        assert_eq!((unix.port(), &*unix.host()), (0, "localhost"));
        assert_eq!(unix.as_socket_addr(), None);
        for bad in ["unix:", "no-port", "a b:1", ":80", "host:99999", ""] {
            assert!(bad.parse::<UpstreamAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zero_weight_is_raised_to_one() {
        assert_eq!(
            Upstream::new(UpstreamAddr::name("x", 1)).weight(0).weight,
            1
        );
    }
}
