//! Reconfiguring a running proxy: routes, upstream groups, balancing,
//! forwarding policy and timeouts swapped in one atomic store, while open
//! connections carry on.
//!
//! The proxy's configuration is one immutable snapshot behind an
//! `arc-swap`. Each request loads it once, when it begins (a keep-alive
//! connection's next request sees the new configuration); a tunnel keeps
//! the snapshot and the upstream it opened with until it ends. What must
//! outlive a configuration (the counters, the drain flag, the registries of
//! open tunnels, the upstream sets with their passive health and
//! connection counts) is shared by the old snapshot and the new.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::{Inner, Proxy, TunnelRegistry, UpstreamGroup};
use crate::balance::{Balancer, Reconciled, UpstreamSet};
use crate::route::Routes;

/// What rebuilds a group's balancer over another set.
pub(crate) type Strategy = Arc<dyn Fn(UpstreamSet) -> Arc<dyn Balancer> + Send + Sync>;

/// The configuration in force, and the lock that keeps two
/// reconfigurations from interleaving their reconciles.
pub(crate) struct Live {
    current: ArcSwap<Inner>,
    reconfiguring: Mutex<()>,
}

impl Live {
    pub(crate) fn new(inner: Inner) -> Self {
        Self {
            current: ArcSwap::from_pointee(inner),
            reconfiguring: Mutex::new(()),
        }
    }

    /// The snapshot in force: one lock-free load and a reference count.
    #[inline]
    pub(crate) fn load(&self) -> Arc<Inner> {
        self.current.load_full()
    }
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.current.load(), f)
    }
}

impl UpstreamGroup {
    /// A group over `set` whose balancer is `strategy(set)`, for instance
    /// `|set| LeastConn::new(set)`.
    ///
    /// Unlike [`new`](Self::new), the group knows its set and how to build
    /// its balancer, which is what lets [`Proxy::reconfigure`] keep a group
    /// of the same name: the old set is kept and reconciled in place with
    /// the new group's upstreams, and the new strategy is built over it.
    ///
    /// ```
    /// use wsproxy::balance::{LeastConn, Upstream, UpstreamSet};
    /// use wsproxy::proxy::UpstreamGroup;
    ///
    /// let set: UpstreamSet = [Upstream::new("127.0.0.1:9000".parse::<std::net::SocketAddr>()?)].into_iter().collect();
    /// let group = UpstreamGroup::balanced("chat", set, LeastConn::new);
    /// assert_eq!(group.upstreams().map(|s| s.snapshot().len()), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn balanced<B, F>(name: impl Into<Arc<str>>, set: UpstreamSet, strategy: F) -> Self
    where
        B: Balancer + 'static,
        F: Fn(UpstreamSet) -> B + Send + Sync + 'static,
    {
        Self::balanced_dyn(name, set, move |set| Arc::new(strategy(set)))
    }

    /// [`balanced`](Self::balanced) for a strategy chosen at run time (from
    /// a configuration file, say): `strategy` returns the balancer as an
    /// `Arc<dyn Balancer>`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use wsproxy::balance::{Balancer, LeastConn, RoundRobin, Upstream, UpstreamSet};
    /// use wsproxy::proxy::UpstreamGroup;
    ///
    /// let least = true;
    /// let set: UpstreamSet = [Upstream::new("127.0.0.1:9000".parse::<std::net::SocketAddr>()?)].into_iter().collect();
    /// let group = UpstreamGroup::balanced_dyn("chat", set, move |set| -> Arc<dyn Balancer> {
    ///     if least { Arc::new(LeastConn::new(set)) } else { Arc::new(RoundRobin::new(set)) }
    /// });
    /// assert!(group.upstreams().is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn balanced_dyn<F>(name: impl Into<Arc<str>>, set: UpstreamSet, strategy: F) -> Self
    where
        F: Fn(UpstreamSet) -> Arc<dyn Balancer> + Send + Sync + 'static,
    {
        let strategy: Strategy = Arc::new(strategy);
        let mut group = Self::from_arc(name, strategy(set.clone()));
        group.upstreams = Some(set);
        group.strategy = Some(strategy);
        group
    }

    /// The group's upstream set, for a group made by
    /// [`balanced`](Self::balanced).
    pub fn upstreams(&self) -> Option<&UpstreamSet> {
        self.upstreams.as_ref()
    }
}

/// What [`Proxy::reconfigure`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Reconfigured {
    /// Groups of the same name in both configurations: kept, with their
    /// registry of open tunnels and, for [`balanced`](UpstreamGroup::balanced)
    /// groups, their upstream set.
    pub kept: Vec<GroupChange>,
    /// Groups new to the routes.
    pub added: Vec<Arc<str>>,
    /// Groups the new routes leave out: no new request reaches them, and
    /// their open tunnels run on (still listed, drained and closed with the
    /// proxy's) until they end.
    pub removed: Vec<Arc<str>>,
}

/// One kept group in a [`Reconfigured`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupChange {
    /// The group's name.
    pub name: Arc<str>,
    /// How its upstream set was reconciled; `None` when either side is not
    /// a [`balanced`](UpstreamGroup::balanced) group, whose new balancer is
    /// then taken as given.
    pub upstreams: Option<Reconciled>,
}

impl Proxy {
    /// The configuration in force.
    #[inline]
    pub(crate) fn inner(&self) -> Arc<Inner> {
        self.live.load()
    }

    /// Takes `next`'s configuration (routes, groups, balancing, forwarding
    /// policy, limits, timeouts, tunnel settings, TCP keepalive) in one
    /// atomic swap, keeping what runs: connections and tunnels already open
    /// finish on the configuration and upstream they have, and nothing is
    /// refused meanwhile; each request begun after the call is served by
    /// the new configuration.
    ///
    /// Groups are matched by name. A kept group keeps its registry of open
    /// tunnels; when both sides are [`balanced`](UpstreamGroup::balanced),
    /// it also keeps its upstream set, reconciled in place with `next`'s
    /// upstreams by [`UpstreamSet::reconcile`] (kept upstreams keep their
    /// connection counts and passive health, removed ones drain), and gets
    /// `next`'s strategy built over it. A group `next` no longer routes to
    /// gets no new request and stays listed (in [`groups`](Self::groups),
    /// [`tunnels`](Self::tunnels), drains) while its tunnels run. The
    /// counters, the drain state and the
    /// [`on_connection_end`](super::ProxyBuilder::on_connection_end) hook
    /// stay this proxy's. Calls are serialised.
    ///
    /// ```
    /// use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
    /// use wsproxy::proxy::UpstreamGroup;
    /// use wsproxy::route::Route;
    /// use wsproxy::Proxy;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    /// let group = |ports: &[u16]| {
    ///     let set: UpstreamSet = ports.iter().map(|&p| Upstream::new(addr(p))).collect();
    ///     UpstreamGroup::balanced("chat", set, RoundRobin::new)
    /// };
    /// let proxy = Proxy::builder().route(Route::new("/", group(&[9001, 9002]))).build()?;
    /// let set = proxy.groups()[0].upstreams().ok_or("balanced")?.clone();
    ///
    /// let next = Proxy::builder().route(Route::new("/", group(&[9002, 9003]))).build()?;
    /// let done = proxy.reconfigure(next);
    /// let change = done.upstreams_of("chat").ok_or("kept")?;
    /// assert_eq!((change.kept.len(), change.added.len(), change.removed.len()), (1, 1, 1));
    /// // The same set, reconciled in place.
    /// assert_eq!(set.snapshot().len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn reconfigure(&self, next: Proxy) -> Reconfigured {
        let _serial = self
            .live
            .reconfiguring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.inner();
        let new = next.inner();
        let old_groups = self.groups();
        let mut report = Reconfigured::default();
        // New group (by its registry, the identity clones share) -> merged.
        let mut merged: HashMap<*const TunnelRegistry, UpstreamGroup> = HashMap::new();
        let mut matched: Vec<*const TunnelRegistry> = Vec::new();
        for group in next.groups() {
            let merged_group = match old_groups.iter().find(|o| o.name == group.name) {
                Some(old_group) => {
                    matched.push(Arc::as_ptr(&old_group.tunnels));
                    let (kept, upstreams) = keep(old_group, &group);
                    report.kept.push(GroupChange {
                        name: group.name.clone(),
                        upstreams,
                    });
                    kept
                }
                None => {
                    report.added.push(group.name.clone());
                    group.clone()
                }
            };
            merged.insert(Arc::as_ptr(&group.tunnels), merged_group);
        }
        let routes = new.routes.map(|target| {
            merged
                .get(&Arc::as_ptr(&target.tunnels))
                .cloned()
                .unwrap_or_else(|| target.clone())
        });
        let mut retired = Vec::new();
        for group in old_groups {
            if matched.contains(&Arc::as_ptr(&group.tunnels)) {
                continue;
            }
            // Its set is left as it is: no route of the new table leads
            // there, but a request that loaded the old table a moment ago
            // may still pick from it, and must find its upstreams.
            if !old.retired.iter().any(|r| r.name == group.name) {
                report.removed.push(group.name.clone());
            }
            if group.tunnels.in_use() {
                retired.push(group);
            }
        }
        self.live
            .current
            .store(Arc::new(old.with_config(&new, Arc::new(routes), retired)));
        tracing::info!(
            kept = report.kept.len(),
            added = report.added.len(),
            removed = report.removed.len(),
            "proxy reconfigured"
        );
        report
    }

    /// Removes the upstreams that a [`reconfigure`](Self::reconfigure)
    /// drained once their last connection has ended, and forgets removed
    /// groups whose last tunnel has ended; returns how many upstreams went.
    /// Cheap when there is nothing to do: call it every second or so.
    ///
    /// ```
    /// # fn sweep(proxy: &wsproxy::Proxy) {
    /// let removed = proxy.remove_drained();
    /// # let _ = removed;
    /// # }
    /// ```
    pub fn remove_drained(&self) -> usize {
        let removed = self
            .groups()
            .iter()
            .filter_map(|g| g.upstreams.as_ref())
            .map(|set| set.remove_drained().len())
            .sum();
        let current = self.inner();
        if current.retired.iter().any(|g| !g.tunnels.in_use()) {
            let _serial = self
                .live
                .reconfiguring
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let current = self.inner();
            let retired = current
                .retired
                .iter()
                .filter(|g| g.tunnels.in_use())
                .cloned()
                .collect();
            let routes = Arc::clone(&current.routes);
            self.live
                .current
                .store(Arc::new(current.with_config(&current, routes, retired)));
        }
        removed
    }
}

impl Reconfigured {
    /// How the upstream set of the kept group `name` was reconciled, if it
    /// was.
    pub fn upstreams_of(&self, name: &str) -> Option<&Reconciled> {
        self.kept
            .iter()
            .find(|g| &*g.name == name)
            .and_then(|g| g.upstreams.as_ref())
    }
}

/// The group that carries `old` on under `new`'s settings, and how its set
/// was reconciled.
fn keep(old: &UpstreamGroup, new: &UpstreamGroup) -> (UpstreamGroup, Option<Reconciled>) {
    let mut kept = new.clone();
    kept.tunnels = Arc::clone(&old.tunnels);
    match (&old.upstreams, &new.upstreams, &new.strategy) {
        (Some(old_set), Some(new_set), Some(strategy)) => {
            let done = old_set.reconcile(&new_set.upstreams());
            kept.balancer = strategy(old_set.clone());
            kept.upstreams = Some(old_set.clone());
            (kept, Some(done))
        }
        _ => (kept, None),
    }
}

impl Inner {
    /// This proxy's lasting state (counters, drain flag, hook) with
    /// `config`'s settings and the given routes.
    fn with_config(
        &self,
        config: &Inner,
        routes: Arc<Routes<UpstreamGroup>>,
        retired: Vec<UpstreamGroup>,
    ) -> Inner {
        Inner {
            routes,
            retired,
            policy: config.policy.clone(),
            limits: config.limits,
            timeouts: config.timeouts,
            tunnel: config.tunnel,
            max_tries: config.max_tries,
            keepalive_requests: config.keepalive_requests,
            tcp_keepalive: config.tcp_keepalive,
            client_max_body_size: config.client_max_body_size,
            counters: Arc::clone(&self.counters),
            draining: Arc::clone(&self.draining),
            no_tunnels: Arc::clone(&self.no_tunnels),
            on_end: self.on_end.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::balance::{LeastConn, RoundRobin, Upstream};
    use crate::route::Route;

    fn up(port: u16) -> Upstream {
        Upstream::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn group(name: &str, ports: &[u16]) -> UpstreamGroup {
        let set: UpstreamSet = ports.iter().map(|&p| up(p)).collect();
        UpstreamGroup::balanced(name, set, RoundRobin::new)
    }

    fn proxy(routes: Vec<(&str, UpstreamGroup)>, read: u64) -> Proxy {
        let mut builder = Proxy::builder().read_timeout(Duration::from_secs(read));
        for (prefix, group) in routes {
            builder = builder.route(Route::new(prefix, group));
        }
        builder.build().unwrap()
    }

    fn ports(set: &UpstreamSet) -> Vec<(u16, bool)> {
        let mut list: Vec<_> = set
            .snapshot()
            .iter()
            .map(|p| (p.addr().port(), p.is_draining()))
            .collect();
        list.sort_unstable();
        list
    }

    #[test]
    fn reconfigure_keeps_groups_by_name_adds_and_retires() {
        let chat = group("chat", &[1, 2]);
        let proxy = proxy(
            vec![("/chat", chat.clone()), ("/old", group("old", &[5]))],
            60,
        );
        let chat_set = chat.upstreams().unwrap().clone();
        // An open tunnel on :2, which the new configuration drops.
        let held = chat_set.snapshot().primaries()[1].lease();

        let next = self::proxy(
            vec![
                ("/chat", group("chat", &[1, 3])),
                ("/new", group("new", &[7])),
            ],
            120,
        );
        let done = proxy.reconfigure(next);

        let change = done.upstreams_of("chat").unwrap();
        assert_eq!(
            (change.kept.len(), change.added.len(), change.draining.len()),
            (1, 1, 1)
        );
        assert_eq!(&*done.added, &[Arc::<str>::from("new")]);
        assert_eq!(&*done.removed, &[Arc::<str>::from("old")]);
        // The same set and registry, reconciled in place; :2 drains.
        assert_eq!(ports(&chat_set), vec![(1, false), (2, true), (3, false)]);
        let groups = proxy.groups();
        let names: Vec<&str> = groups.iter().map(UpstreamGroup::name).collect();
        assert_eq!(names, ["chat", "new"]);
        assert!(Arc::ptr_eq(groups[0].tunnels(), chat.tunnels()));
        // The new settings are in force.
        assert_eq!(proxy.timeouts().read, Duration::from_secs(120));
        assert_eq!(proxy.routes().iter().count(), 2);

        // Nothing is removed while the tunnel holds :2.
        assert_eq!(proxy.remove_drained(), 0);
        drop(held);
        assert_eq!(proxy.remove_drained(), 1);
        assert_eq!(ports(&chat_set), vec![(1, false), (3, false)]);
    }

    #[test]
    fn a_changed_strategy_runs_over_the_kept_set() {
        let chat = group("chat", &[1]);
        let proxy = proxy(vec![("/", chat.clone())], 60);
        let set: UpstreamSet = [up(1), up(2)].into_iter().collect();
        let next = Proxy::builder()
            .route(Route::new(
                "/",
                UpstreamGroup::balanced("chat", set, LeastConn::new),
            ))
            .build()
            .unwrap();
        proxy.reconfigure(next);
        let kept = &proxy.groups()[0];
        assert!(format!("{:?}", kept.balancer()).contains("LeastConn"));
        assert_eq!(
            ports(kept.upstreams().unwrap()),
            vec![(1, false), (2, false)]
        );
        assert_eq!(
            ports(chat.upstreams().unwrap()),
            vec![(1, false), (2, false)]
        );
    }

    #[test]
    fn counters_outlive_a_reconfigure() {
        let proxy = proxy(vec![("/", group("a", &[1]))], 60);
        proxy.inner().counters.connection();
        proxy.reconfigure(self::proxy(vec![("/", group("b", &[2]))], 60));
        assert_eq!(proxy.counters().connections, 1);
        let clone = proxy.clone();
        proxy.reconfigure(self::proxy(vec![("/", group("c", &[3]))], 60));
        // Clones share the configuration in force.
        assert_eq!(clone.groups()[0].name(), "c");
    }
}
