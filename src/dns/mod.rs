//! Upstreams discovered by DNS and kept current (cargo feature `dns`): nginx
//! `server name resolve` with `resolver`, HAProxy `server-template` with
//! `resolvers`.
//!
//! A [`Discovery`] resolves one name for one [`UpstreamSet`] on the host's
//! tokio runtime, with the hickory DNS project's stub resolver:
//!
//! - [`DnsName::Host`]: A and AAAA records, every address with one port and
//!   the [template](Discovery::template)'s weight;
//! - [`DnsName::Srv`] (`_ws._tcp.backend.example`): each record's target,
//!   port and weight (RFC 2782); records of a priority above the lowest
//!   join as backups.
//!
//! It re-resolves on the answer's smallest TTL, clamped to [`TtlBounds`].
//! New addresses join the set. Vanished ones drain: no new picks, their
//! tunnels run on, and they leave the set once their last connection ends,
//! or, after an optional [deadline](Discovery::close_after), their tunnels
//! are sent Close 1001 (going away). A failed, SERVFAIL or empty answer keeps
//! the last good set, logs a warning and counts in
//! [`DiscoveryStats::failures`] (and `wsproxy_dns_lookups_total{outcome}`
//! with feature `metrics`): a DNS outage never empties a group. Likewise an
//! SRV target whose own address lookup fails (SERVFAIL, a timeout) while
//! the rest of the answer resolves keeps the addresses it had in the last
//! good answer, and the next lookup comes as soon as after a failure; a
//! target whose name has no address (NXDOMAIN, NODATA) leaves. Lookups
//! that keep failing back off: the lower bound after the first, doubling
//! up to 30 s ([`TtlBounds::retry_after`]), so that an outage does not
//! have every gateway ask every second. Of more than
//! 64 SRV records, 64 are resolved: the lowest priorities, then the highest
//! weights, then by target name and port, whatever order they came in.
//! Upstreams added to the set by other means are never touched.
//!
//! The rules themselves (what an answer changes, how a TTL is clamped) are
//! the pure [`reconcile`] and [`TtlBounds`], usable without a resolver.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use wsproxy::balance::{ConsistentHash, HashKey, Upstream, UpstreamSet};
//! use wsproxy::dns::{Discovery, DnsName};
//! use wsproxy::{Proxy, UpstreamGroup};
//!
//! let set = UpstreamSet::new();
//! let group = UpstreamGroup::new("chat", ConsistentHash::new(set.clone(), HashKey::Path));
//! let discovery = Discovery::new(DnsName::host("chat.default.svc.cluster.local", 8080), set)
//!     .template(Upstream::new("0.0.0.0:0".parse::<std::net::SocketAddr>()?).max_fails(2))
//!     .close_after(group.clone(), Duration::from_secs(600))
//!     .spawn()?; // stops when dropped
//! let proxy = Proxy::builder().route(wsproxy::Route::new("/", group)).build()?;
//! # drop((proxy, discovery));
//! # Ok(())
//! # }
//! ```

mod reconcile;
mod task;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use reconcile::{reconcile, Answer, Member, Plan, Target, TtlBounds, MAX_RETRY, MIN_TTL_FLOOR};

use crate::balance::{Upstream, UpstreamAddr, UpstreamSet};
use crate::proxy::{Rebalancer, UpstreamGroup};

/// DNS lookups by `name` and `outcome` (`ok`, `empty`, `failed`), with
/// feature `metrics`.
pub const LOOKUPS: &str = "wsproxy_dns_lookups_total";
/// Upstreams a discovery holds in its set now, draining ones included, by
/// `name`, with feature `metrics`.
pub const DISCOVERED: &str = "wsproxy_dns_upstreams";

/// What a [`Discovery`] resolves.
///
/// ```
/// use wsproxy::dns::DnsName;
///
/// let a = DnsName::host("backend.svc", 8080);
/// let srv = DnsName::srv("_ws._tcp.backend.svc");
/// assert_eq!(a.to_string(), "backend.svc:8080");
/// assert_eq!(srv.to_string(), "_ws._tcp.backend.svc (SRV)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsName {
    /// A and AAAA records of `name`, every address with `port`.
    Host {
        /// The name.
        name: Arc<str>,
        /// The port every address gets.
        port: u16,
    },
    /// SRV records of `name` (`_service._proto.domain`): each target's
    /// addresses with the record's port and weight.
    Srv {
        /// The name.
        name: Arc<str>,
    },
}

impl DnsName {
    /// A/AAAA records of `name`, with `port`.
    pub fn host(name: impl Into<Arc<str>>, port: u16) -> Self {
        Self::Host {
            name: name.into(),
            port,
        }
    }

    /// SRV records of `name`.
    pub fn srv(name: impl Into<Arc<str>>) -> Self {
        Self::Srv { name: name.into() }
    }

    /// The name looked up.
    pub fn name(&self) -> &str {
        match self {
            Self::Host { name, .. } | Self::Srv { name } => name,
        }
    }
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host { name, port } => write!(f, "{name}:{port}"),
            Self::Srv { name } => write!(f, "{name} (SRV)"),
        }
    }
}

/// Why a [`Discovery`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// No name server was given and the system's (`/etc/resolv.conf`)
    /// could not be read.
    #[error("cannot read the system's resolver configuration")]
    SystemConfig(#[source] hickory_resolver::ResolveError),
    /// [`Discovery::spawn`] was called outside a tokio runtime.
    #[error("a discovery runs on a tokio runtime, and none is running")]
    NoRuntime,
}

/// Keeps an [`UpstreamSet`] in line with a DNS name; see the
/// [module docs](self). Built, then [`spawn`](Self::spawn)ed.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use wsproxy::balance::UpstreamSet;
/// use wsproxy::dns::{Discovery, DnsName, TtlBounds};
///
/// let set = UpstreamSet::new();
/// let handle = Discovery::new(DnsName::srv("_ws._tcp.chat.example"), set.clone())
///     .nameserver("127.0.0.53:53".parse()?)
///     .ttl_bounds(TtlBounds::new(Duration::from_secs(5), Duration::from_secs(60)))
///     .spawn()?;
/// // The first answer is in (or failed).
/// let stats = handle.wait_for(|s| s.lookups > 0).await;
/// println!("{} upstreams, {} failures", stats.members, stats.failures);
/// # Ok(())
/// # }
/// ```
#[must_use = "a Discovery does nothing until spawned"]
#[derive(Debug, Clone)]
pub struct Discovery {
    name: DnsName,
    set: UpstreamSet,
    template: Upstream,
    nameserver: Option<SocketAddr>,
    bounds: TtlBounds,
    close_after: Option<(UpstreamGroup, Duration)>,
    rebalance: Option<Rebalancer>,
    timeout: Duration,
}

impl Discovery {
    /// A discovery of `name` into `set`: the system's name servers, the
    /// default [`TtlBounds`] (1 s to 5 min), nginx's upstream defaults for
    /// each address, and drained upstreams kept until their tunnels end.
    pub fn new(name: DnsName, set: UpstreamSet) -> Self {
        Self {
            name,
            set,
            template: Upstream::new(UpstreamAddr::Socket(SocketAddr::from(([0, 0, 0, 0], 0)))),
            nameserver: None,
            bounds: TtlBounds::default(),
            close_after: None,
            rebalance: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// The settings every discovered upstream gets (its address aside):
    /// `max_fails`, `fail_timeout`, `backup`, and for A/AAAA names the
    /// weight (SRV records bring their own).
    pub fn template(mut self, template: Upstream) -> Self {
        self.template = template;
        self
    }

    /// Ask this name server (UDP, then TCP for truncated answers) instead
    /// of the system's (nginx `resolver ADDR`).
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameserver = Some(addr);
        self
    }

    /// Bounds on the records' TTL (see [`TtlBounds`]).
    pub fn ttl_bounds(mut self, bounds: TtlBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// How long one query waits for its answer (nginx `resolver_timeout`,
    /// 30 s there; 5 s here, hickory's default): past it, the lookup failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Once an address has drained for `deadline`, send the tunnels still
    /// open to it through `group` a Close 1001 (going away); the upstream
    /// leaves the set when they end. Without it, tunnels to a vanished
    /// address run until they end by themselves.
    pub fn close_after(mut self, group: UpstreamGroup, deadline: Duration) -> Self {
        self.close_after = Some((group, deadline));
        self
    }

    /// Run `rebalancer` after an answer adds addresses, so that the new
    /// upstreams take their share of the open tunnels (see
    /// [`Rebalancer`]); one run at a time per group, whichever rebalancer
    /// starts it (see [`Rebalancer::run`]).
    pub fn rebalance(mut self, rebalancer: Rebalancer) -> Self {
        self.rebalance = Some(rebalancer);
        self
    }

    /// Starts resolving on the current tokio runtime: the first lookup at
    /// once. The task stops when the handle is dropped (or
    /// [`stop`](DiscoveryHandle::stop)ped), and the upstreams it added stay
    /// in the set; a [`retire`](DiscoveryHandle::retire)d one drains them
    /// first.
    ///
    /// # Errors
    ///
    /// [`DnsError::SystemConfig`] when no name server was given and the
    /// system's configuration cannot be read; [`DnsError::NoRuntime`]
    /// outside a tokio runtime.
    pub fn spawn(self) -> Result<DiscoveryHandle, DnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        let resolver = self.resolver()?;
        let (tx, rx) = watch::channel(DiscoveryStats::default());
        let (retire, retired) = watch::channel(false);
        let task = runtime.spawn(task::Task::new(self, resolver, tx).run(retired));
        Ok(DiscoveryHandle {
            stats: rx,
            task,
            retire,
        })
    }

    fn resolver(&self) -> Result<TokioResolver, DnsError> {
        let mut builder = match self.nameserver {
            Some(addr) => {
                let servers =
                    NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioConnectionProvider::default(),
                )
            }
            None => Resolver::builder_tokio().map_err(DnsError::SystemConfig)?,
        };
        let mut options = ResolverOpts::default();
        // Every lookup asks the server: the TTL is honoured here, not by a
        // cache that would answer with what it holds.
        options.cache_size = 0;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = self.timeout;
        options.attempts = 1;
        *builder.options_mut() = options;
        Ok(builder.build())
    }
}

/// What a discovery did so far.
///
/// ```
/// let stats = wsproxy::dns::DiscoveryStats::default();
/// assert_eq!((stats.lookups, stats.failures), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStats {
    /// Lookups made, whatever they gave.
    pub lookups: u64,
    /// Lookups that failed (SERVFAIL, timeout, ...) or named no address:
    /// each kept the last good set.
    pub failures: u64,
    /// Addresses added to the set (rejoins of draining ones included).
    pub joined: u64,
    /// Addresses that vanished from an answer and began draining.
    pub left: u64,
    /// Drained addresses removed from the set.
    pub removed: u64,
    /// Tunnels sent Close 1001 at a [deadline](Discovery::close_after).
    pub closed: u64,
    /// Upstreams this discovery holds in the set now, draining ones
    /// included.
    pub members: usize,
    /// The last usable answer's TTL, clamped: the wait before the next
    /// lookup.
    pub ttl: Option<Duration>,
}

/// A running [`Discovery`]: its figures, and the task, stopped when this is
/// dropped (or [retired](Self::retire)).
#[derive(Debug)]
pub struct DiscoveryHandle {
    stats: watch::Receiver<DiscoveryStats>,
    task: JoinHandle<()>,
    /// Set once by `retire`: the task drains and ends by itself.
    retire: watch::Sender<bool>,
}

impl DiscoveryHandle {
    /// The figures now.
    pub fn stats(&self) -> DiscoveryStats {
        *self.stats.borrow()
    }

    /// Waits until `ready` holds for the figures (checked after each
    /// lookup and each removal), and returns them. Returns the last figures
    /// if the task ended. Bound it with `tokio::time::timeout`.
    ///
    /// ```no_run
    /// # async fn f(handle: wsproxy::dns::DiscoveryHandle) {
    /// let first = handle.stats().lookups;
    /// handle.wait_for(|s| s.lookups > first).await; // the next lookup
    /// # }
    /// ```
    pub async fn wait_for(&self, mut ready: impl FnMut(&DiscoveryStats) -> bool) -> DiscoveryStats {
        let mut rx = self.stats.clone();
        let seen = rx.wait_for(|s| ready(s)).await.map(|s| *s);
        seen.unwrap_or_else(|_| *rx.borrow())
    }

    /// Stops the task (as dropping the handle does); the upstreams it
    /// added stay in the set, serving.
    pub fn stop(self) {}

    /// Stops resolving and drains every upstream this discovery added, as
    /// an answer that named none of them would: no new picks, their tunnels
    /// run on, each leaves the set once its last tunnel ends (or, past the
    /// [deadline](Discovery::close_after), its tunnels are sent Close
    /// 1001). For a name the configuration no longer lists, where
    /// [`stop`](Self::stop) would leave its upstreams serving.
    ///
    /// The task runs on until the last of them has left the set, whether or
    /// not the returned future is awaited; it resolves then, with the last
    /// figures (bound it with `tokio::time::timeout`).
    ///
    /// ```no_run
    /// # async fn f(handle: wsproxy::dns::DiscoveryHandle) {
    /// let drained = handle.retire();
    /// let last = tokio::time::timeout(std::time::Duration::from_secs(60), drained).await;
    /// # let _ = last;
    /// # }
    /// ```
    pub fn retire(self) -> impl std::future::Future<Output = DiscoveryStats> + Send + 'static {
        self.retire.send_replace(true);
        let mut stats = self.stats.clone();
        // Dropping `self` now leaves the task running: see `Drop`.
        async move {
            // The task drops its sender when it ends.
            while stats.changed().await.is_ok() {}
            let last = *stats.borrow();
            last
        }
    }
}

impl Drop for DiscoveryHandle {
    fn drop(&mut self) {
        if !*self.retire.borrow() {
            self.task.abort();
        }
    }
}
