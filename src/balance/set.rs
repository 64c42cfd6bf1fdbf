//! The live upstream set: changed at runtime, read by every pick with one
//! lock-free load.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use super::upstream::{Counters, Lease, Shared, Upstream, UpstreamAddr, UpstreamId};
use super::{PickContext, SelectError};

mod reconcile;
pub use reconcile::Reconciled;

/// The upstreams a balancer chooses from, shared by cheap clones.
///
/// Changes (add, remove, drain, down, weight) publish a new immutable
/// snapshot: a pick in progress keeps the one it loaded, open leases are
/// never touched, and a removed or draining upstream simply gets no new
/// picks. Reading costs one `arc-swap` load, never a lock; writers are
/// serialised by a mutex that no reader takes.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{Balancer, PickContext, RoundRobin, Upstream, UpstreamSet};
///
/// let set = UpstreamSet::new();
/// let a = set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
/// let b = set.add(Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?));
/// let balancer = RoundRobin::new(set.clone());
/// let request = http::Request::get("/").body(())?;
/// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
///
/// let lease = balancer.pick(&ctx)?;
/// set.set_draining(lease.id(), true); // its open connection carries on
/// let other = if lease.id() == a { b } else { a };
/// assert_eq!(balancer.pick(&ctx)?.id(), other);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct UpstreamSet {
    inner: Arc<Inner>,
}

struct Inner {
    state: ArcSwap<State>,
    /// Serialises writers.
    write: Mutex<()>,
    counters: Arc<Counters>,
}

impl UpstreamSet {
    /// An empty set.
    pub fn new() -> Self {
        let counters = Arc::new(Counters::default());
        Self {
            inner: Arc::new(Inner {
                state: ArcSwap::from_pointee(State::new(0, 0, Vec::new(), Arc::clone(&counters))),
                write: Mutex::new(()),
                counters,
            }),
        }
    }

    /// Adds an upstream and returns its id.
    pub fn add(&self, upstream: Upstream) -> UpstreamId {
        let _write = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let id = UpstreamId::fresh();
        let shared = Arc::new(Shared::new(id, &upstream, Arc::clone(&self.inner.counters)));
        let peer = Peer {
            shared,
            weight: upstream.weight,
            backup: upstream.backup,
            down: upstream.down,
            check_down: false,
            draining: false,
        };
        self.update(true, |peers| {
            peers.push(peer);
            true
        });
        id
    }

    /// Removes an upstream: no new picks; its leases stay valid and release
    /// cleanly. Returns whether it was in the set.
    pub fn remove(&self, id: UpstreamId) -> bool {
        let _write = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.update(true, |peers| {
            let before = peers.len();
            peers.retain(|p| p.id() != id);
            before != peers.len()
        })
    }

    /// Starts (or stops) draining an upstream: it stays in the set, keeps
    /// its open connections and their count, but gets no new picks. Remove
    /// it once [`Peer::active`] reaches zero. Returns whether it was found.
    pub fn set_draining(&self, id: UpstreamId, draining: bool) -> bool {
        self.modify(id, false, |p| p.draining = draining)
    }

    /// Marks an upstream down (nginx `down`) or up again. Returns whether it
    /// was found.
    pub fn set_down(&self, id: UpstreamId, down: bool) -> bool {
        self.modify(id, false, |p| p.down = down)
    }

    /// Marks an upstream down (or up) on behalf of an active health check.
    ///
    /// Kept apart from [`set_down`](Self::set_down), as HAProxy keeps a
    /// server's `MAINT` apart from its check state: an upstream the operator
    /// set down stays down whatever its checks say, and one a check marked
    /// down comes back only when a check marks it up. Returns whether it was
    /// found.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::net::SocketAddr;
    /// use wsproxy::balance::{Upstream, UpstreamSet};
    ///
    /// let set = UpstreamSet::new();
    /// let id = set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
    /// set.set_down(id, true);
    /// set.set_check_down(id, false); // a passing check does not undo `down`
    /// assert_eq!(set.snapshot().get(id).map(|p| p.is_down()), Some(true));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_check_down(&self, id: UpstreamId, down: bool) -> bool {
        self.modify(id, false, |p| p.check_down = down)
    }

    /// Changes an upstream's weight (zero is raised to one, see
    /// [`Upstream::weight`]). Hash rings are rebuilt on the next pick.
    /// Returns whether it was found.
    pub fn set_weight(&self, id: UpstreamId, weight: u32) -> bool {
        self.modify(id, true, |p| p.weight = weight.max(1))
    }

    /// The current snapshot, to read or to write a custom
    /// [`Balancer`](super::Balancer) on.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            guard: self.inner.state.load(),
        }
    }

    /// Open leases on the whole set, removed upstreams included.
    #[inline]
    pub(crate) fn active_total(&self) -> usize {
        self.inner.counters.total.load(Ordering::Relaxed)
    }

    /// The current state, for the strategies in this module.
    #[inline]
    pub(crate) fn load(&self) -> Guard<Arc<State>> {
        self.inner.state.load()
    }

    fn modify(&self, id: UpstreamId, layout: bool, change: impl FnOnce(&mut Peer)) -> bool {
        let _write = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.update(layout, |peers| {
            match peers.iter_mut().find(|p| p.id() == id) {
                Some(peer) => {
                    change(peer);
                    true
                }
                None => false,
            }
        })
    }

    /// Publishes a changed copy, if `change` changed anything. Callers hold
    /// the write lock: one writer at a time; readers never wait for it.
    fn update(&self, layout: bool, change: impl FnOnce(&mut Vec<Peer>) -> bool) -> bool {
        let old = self.inner.state.load_full();
        let mut peers: Vec<Peer> = old.tiers.iter().flat_map(|t| t.iter().cloned()).collect();
        peers.sort_by_key(Peer::id);
        if !change(&mut peers) {
            return false;
        }
        let generation = old.generation + 1;
        let layout = if layout { generation } else { old.layout };
        self.inner.state.store(Arc::new(State::new(
            generation,
            layout,
            peers,
            Arc::clone(&self.inner.counters),
        )));
        true
    }
}

impl Default for UpstreamSet {
    fn default() -> Self {
        Self::new()
    }
}

impl FromIterator<Upstream> for UpstreamSet {
    fn from_iter<I: IntoIterator<Item = Upstream>>(iter: I) -> Self {
        let set = Self::new();
        for upstream in iter {
            set.add(upstream);
        }
        set
    }
}

impl fmt::Debug for UpstreamSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.load();
        f.debug_struct("UpstreamSet")
            .field("generation", &state.generation)
            .field("primaries", &state.tiers[0])
            .field("backups", &state.tiers[1])
            .finish()
    }
}

/// One immutable version of the set.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) generation: u64,
    /// Generation of the last change of membership or weights: what hash
    /// rings and weighted round-robin state depend on.
    pub(crate) layout: u64,
    tiers: [Vec<Peer>; 2],
    /// Running sums of weights per tier, for weighted hashing and sampling.
    cumulative: [Vec<u64>; 2],
    /// Weight per tier of the peers neither down nor draining.
    routable: [u64; 2],
    /// Per tier: no peer is down or draining.
    clear: [bool; 2],
    /// Per tier: every peer has the same weight.
    uniform: [bool; 2],
    counters: Arc<Counters>,
}

impl State {
    fn new(generation: u64, layout: u64, peers: Vec<Peer>, counters: Arc<Counters>) -> Self {
        let (backups, primaries): (Vec<Peer>, Vec<Peer>) =
            peers.into_iter().partition(|p| p.backup);
        let tiers = [primaries, backups];
        let cumulative = tiers.clone().map(|tier| {
            tier.iter()
                .scan(0u64, |sum, p| {
                    *sum += u64::from(p.weight);
                    Some(*sum)
                })
                .collect()
        });
        let routable = tiers.each_ref().map(|tier| {
            tier.iter()
                .filter(|p| p.routable())
                .map(|p| u64::from(p.weight))
                .sum()
        });
        let clear = tiers.each_ref().map(|tier| tier.iter().all(Peer::routable));
        // Published with the snapshot: writers are serialised, so the count
        // always matches the snapshot about to be stored.
        let routable_count = tiers.iter().flatten().filter(|p| p.routable()).count();
        counters.routable.store(routable_count, Ordering::Relaxed);
        let uniform = tiers
            .each_ref()
            .map(|tier| tier.windows(2).all(|w| w[0].weight == w[1].weight));
        Self {
            generation,
            layout,
            tiers,
            cumulative,
            routable,
            clear,
            uniform,
            counters,
        }
    }

    /// Primaries, then backups.
    #[inline]
    pub(crate) fn tiers(&self) -> [&[Peer]; 2] {
        [&self.tiers[0], &self.tiers[1]]
    }

    /// Sum of the weights of `tier`, available or not.
    #[inline]
    pub(crate) fn total_weight(&self, tier: usize) -> u64 {
        self.cumulative
            .get(tier)
            .and_then(|c| c.last())
            .copied()
            .unwrap_or(0)
    }

    /// Whether every peer of `tier` is available to `ctx`, known without
    /// looking at each: none down, draining or failed for this request, and
    /// no upstream of the set tripped by passive health.
    #[inline]
    pub(crate) fn all_available(&self, tier: usize, ctx: &PickContext<'_>) -> bool {
        self.clear.get(tier).copied().unwrap_or(false)
            && ctx.failed().is_empty()
            && (!ctx.passive_health() || self.counters.tripped.load(Ordering::Relaxed) == 0)
    }

    /// Whether every peer of `tier` has the same weight.
    #[inline]
    pub(crate) fn uniform_weight(&self, tier: usize) -> bool {
        self.uniform.get(tier).copied().unwrap_or(false)
    }

    /// Sum of the weights of `tier` neither down nor draining.
    #[inline]
    pub(crate) fn routable_weight(&self, tier: usize) -> u64 {
        self.routable.get(tier).copied().unwrap_or(0)
    }

    /// The peer of `tier` that owns weight unit `x` (`x < total_weight`),
    /// as nginx's `w -= peer->weight` walk but by binary search.
    #[inline]
    pub(crate) fn by_weight(&self, tier: usize, x: u64) -> usize {
        self.cumulative
            .get(tier)
            .map_or(0, |c| c.partition_point(|&sum| sum <= x))
    }
}

/// A strategy's data derived from one layout of the set (a hash ring, a
/// round-robin cycle): rebuilt on the first pick after membership or
/// weights change, then read with one lock-free load. Pickers racing a
/// change may both rebuild; the results are identical.
pub(crate) struct LayoutCache<T>(ArcSwapOption<(u64, T)>);

impl<T> Default for LayoutCache<T> {
    fn default() -> Self {
        Self(ArcSwapOption::empty())
    }
}

impl<T> LayoutCache<T> {
    #[inline]
    pub(crate) fn with<R>(
        &self,
        state: &State,
        build: impl FnOnce(&State) -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        let cached = self.0.load();
        if let Some((layout, derived)) = cached.as_deref() {
            if *layout == state.layout {
                return f(derived);
            }
        }
        let fresh = Arc::new((state.layout, build(state)));
        self.0.store(Some(Arc::clone(&fresh)));
        f(&fresh.1)
    }
}

impl<T: fmt::Debug> fmt::Debug for LayoutCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.0.load();
        match cached.as_deref() {
            Some((layout, derived)) => f
                .debug_struct("LayoutCache")
                .field("layout", layout)
                .field("derived", derived)
                .finish(),
            None => f.write_str("LayoutCache(empty)"),
        }
    }
}

/// An upstream as the current snapshot sees it.
#[derive(Clone)]
pub struct Peer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) weight: u32,
    backup: bool,
    down: bool,
    /// Marked down by an active health check, apart from `down` so that a
    /// check never undoes the operator's `down`.
    check_down: bool,
    draining: bool,
}

impl Peer {
    /// The upstream's id.
    #[inline]
    pub fn id(&self) -> UpstreamId {
        self.shared.id
    }

    /// Where it listens.
    #[inline]
    pub fn addr(&self) -> &UpstreamAddr {
        &self.shared.addr
    }

    /// Its weight (at least one).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether it is a backup.
    pub fn is_backup(&self) -> bool {
        self.backup
    }

    /// Whether the operator marked it down (nginx `down`,
    /// [`UpstreamSet::set_down`]).
    pub fn is_down(&self) -> bool {
        self.down
    }

    /// Whether an active health check marked it down
    /// ([`UpstreamSet::set_check_down`]).
    pub fn is_check_down(&self) -> bool {
        self.check_down
    }

    /// Neither down (by hand or by a check) nor draining: known from the
    /// snapshot alone, with no clock.
    #[inline]
    pub(crate) fn routable(&self) -> bool {
        !self.down && !self.check_down && !self.draining
    }

    /// Whether it is draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Its open leases (connections), counted across every balancer.
    #[inline]
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Whether it may take this request: not down, not draining, not
    /// already failed for this request, and not sitting out a
    /// `fail_timeout` at `ctx.now()` (unless `ctx` ignores passive health,
    /// [`PickContext::with_passive_health`]).
    #[inline]
    pub fn is_available(&self, ctx: &PickContext<'_>) -> bool {
        self.routable()
            && !ctx.failed().contains(&self.shared.id)
            && (!ctx.passive_health() || self.shared.is_healthy(ctx.now()))
    }

    /// Whether it may take a connection at `now`, no request in view: not
    /// down, not draining, and not sitting out a `fail_timeout`. What
    /// [`is_available`](Self::is_available) says for a first attempt.
    #[inline]
    pub(crate) fn is_available_at(&self, now: std::time::Instant) -> bool {
        self.routable() && self.shared.is_healthy(now)
    }

    /// Leases it for one connection. Balancers call this on the peer they
    /// choose; the count is released when the lease drops.
    #[inline]
    pub fn lease(&self) -> Lease {
        Lease::new(&self.shared)
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.shared.id)
            .field("addr", &self.shared.addr)
            .field("weight", &self.weight)
            .field("backup", &self.backup)
            .field("down", &self.down)
            .field("check_down", &self.check_down)
            .field("draining", &self.draining)
            .field("active", &self.active())
            .finish()
    }
}

/// A consistent view of an [`UpstreamSet`] at one moment.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use wsproxy::balance::{Upstream, UpstreamSet};
///
/// let set: UpstreamSet = [
///     Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?),
///     Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?).backup(true),
/// ]
/// .into_iter()
/// .collect();
/// let snapshot = set.snapshot();
/// assert_eq!((snapshot.primaries().len(), snapshot.backups().len()), (1, 1));
/// # Ok(())
/// # }
/// ```
pub struct Snapshot {
    guard: Guard<Arc<State>>,
}

impl Snapshot {
    /// Primaries, then backups: the order every strategy walks.
    pub fn tiers(&self) -> [&[Peer]; 2] {
        self.guard.tiers()
    }

    /// The tier walk every built-in strategy makes, for a custom one:
    /// `choose` is offered the primaries available to `ctx` (not down, not
    /// draining, not failed for this request, not sitting out a
    /// `fail_timeout`), and the backups only when it chose no primary
    /// (nginx `backup`). The peer it returns is leased.
    ///
    /// # Errors
    ///
    /// [`SelectError::NoneAvailable`] when `choose` returns `None` for both
    /// tiers.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{net::SocketAddr, time::Instant};
    /// use wsproxy::balance::{PickContext, Upstream, UpstreamSet};
    ///
    /// let set: UpstreamSet = [
    ///     Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?).down(true),
    ///     Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?),
    ///     Upstream::new("127.0.0.1:9003".parse::<SocketAddr>()?).backup(true),
    /// ]
    /// .into_iter()
    /// .collect();
    /// let request = http::Request::get("/").body(())?;
    /// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
    ///
    /// // The lowest port that may take the request: 9001 is down.
    /// let lease = set
    ///     .snapshot()
    ///     .pick_available(&ctx, |peers| peers.min_by_key(|p| p.addr().port()))?;
    /// assert_eq!(lease.addr().port(), 9002);
    /// # Ok(())
    /// # }
    /// ```
    pub fn pick_available<'s, 'c>(
        &'s self,
        ctx: &PickContext<'c>,
        mut choose: impl FnMut(AvailablePeers<'s, 'c>) -> Option<&'s Peer>,
    ) -> Result<Lease, SelectError> {
        for tier in self.tiers() {
            let available = AvailablePeers {
                peers: tier.iter(),
                ctx: *ctx,
            };
            if let Some(peer) = choose(available) {
                return Ok(peer.lease());
            }
        }
        Err(SelectError::NoneAvailable)
    }

    /// The primary upstreams, in the order they were added.
    pub fn primaries(&self) -> &[Peer] {
        &self.guard.tiers[0]
    }

    /// The backup upstreams, in the order they were added.
    pub fn backups(&self) -> &[Peer] {
        &self.guard.tiers[1]
    }

    /// Every upstream, primaries first.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.guard.tiers.iter().flatten()
    }

    /// The upstream with this id, if it is still in the set.
    pub fn get(&self, id: UpstreamId) -> Option<&Peer> {
        self.iter().find(|p| p.id() == id)
    }

    /// How many upstreams the set holds.
    pub fn len(&self) -> usize {
        self.guard.tiers.iter().map(Vec::len).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Increases with every change of the set.
    pub fn generation(&self) -> u64 {
        self.guard.generation
    }
}

/// The peers of one tier that may take a request, in the order they were
/// added: what [`Snapshot::pick_available`] offers a custom strategy.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{PickContext, Upstream, UpstreamSet};
///
/// let set: UpstreamSet = [Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?)]
///     .into_iter()
///     .collect();
/// let request = http::Request::get("/").body(())?;
/// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
/// let lease = set.snapshot().pick_available(&ctx, |mut peers| peers.next())?;
/// assert_eq!(lease.addr().port(), 9001);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AvailablePeers<'s, 'c> {
    peers: std::slice::Iter<'s, Peer>,
    ctx: PickContext<'c>,
}

impl<'s> Iterator for AvailablePeers<'s, '_> {
    type Item = &'s Peer;

    fn next(&mut self) -> Option<&'s Peer> {
        let ctx = &self.ctx;
        self.peers.by_ref().find(|peer| peer.is_available(ctx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, self.peers.size_hint().1)
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Balancer, LeastConn};
    use super::*;

    #[test]
    fn removed_upstreams_lease_releases_cleanly() {
        let (set, ids) = set_of(&[1, 1]);
        let request = request();
        let now = epoch();
        let b = LeastConn::new(set.clone());
        let lease = b.pick(&ctx(&request, now)).unwrap();
        let gone = lease.id();
        let counters = Arc::clone(&set.inner.counters);
        assert!(set.remove(gone));
        assert!(!set.remove(gone));
        assert!(set.snapshot().get(gone).is_none());
        for _ in 0..10 {
            assert_ne!(b.pick(&ctx(&request, now)).unwrap().id(), gone);
        }
        assert_eq!(counters.total.load(Ordering::Relaxed), 1);
        lease.report_failure(now);
        lease.report_success(now);
        drop(lease);
        assert_eq!(counters.total.load(Ordering::Relaxed), 0);
        let kept = ids.iter().find(|&&id| id != gone).copied().unwrap();
        assert_eq!(set.snapshot().get(kept).unwrap().active(), 0);
    }

    #[test]
    fn draining_keeps_the_count_until_leases_drop() {
        let (set, ids) = set_of(&[1]);
        let request = request();
        let now = epoch();
        let b = LeastConn::new(set.clone());
        let lease = b.pick(&ctx(&request, now)).unwrap();
        set.set_draining(ids[0], true);
        assert_eq!(set.snapshot().get(ids[0]).unwrap().active(), 1);
        assert!(b.pick(&ctx(&request, now)).is_err());
        drop(lease);
        assert_eq!(set.snapshot().get(ids[0]).unwrap().active(), 0);
        set.set_draining(ids[0], false);
        assert!(b.pick(&ctx(&request, now)).is_ok());
    }

    #[test]
    fn changes_bump_generation_and_layout_only_on_membership_or_weight() {
        let (set, ids) = set_of(&[1, 1]);
        let g = set.load().generation;
        let l = set.load().layout;
        set.set_down(ids[0], true);
        assert_eq!(set.load().layout, l);
        assert!(set.load().generation > g);
        set.set_weight(ids[0], 3);
        assert!(set.load().layout > l);
        assert_eq!(set.snapshot().get(ids[0]).unwrap().weight(), 3);
        assert!(!set.set_weight(UpstreamId(u64::MAX), 3));
    }

    #[test]
    fn check_down_and_operator_down_are_apart() {
        let (set, ids) = set_of(&[1, 1]);
        let request = request();
        let now = epoch();
        let b = LeastConn::new(set.clone());
        assert!(set.set_check_down(ids[0], true));
        for _ in 0..4 {
            assert_eq!(b.pick(&ctx(&request, now)).unwrap().id(), ids[1]);
        }
        assert_eq!(set.load().routable_weight(0), 1);
        // The operator's down survives a passing check, and the other way round.
        set.set_down(ids[1], true);
        set.set_check_down(ids[1], false);
        assert!(set.snapshot().get(ids[1]).unwrap().is_down());
        assert!(b.pick(&ctx(&request, now)).is_err());
        set.set_down(ids[0], false);
        assert!(b.pick(&ctx(&request, now)).is_err());
        set.set_check_down(ids[0], false);
        assert_eq!(b.pick(&ctx(&request, now)).unwrap().id(), ids[0]);
        assert!(!set.set_check_down(UpstreamId(u64::MAX), true));
    }

    #[test]
    fn pick_available_offers_available_primaries_then_backups() {
        let set = UpstreamSet::new();
        let a = set.add(Upstream::new(addr(9000)));
        let b = set.add(Upstream::new(addr(9001)));
        let backup = set.add(Upstream::new(addr(9002)).backup(true));
        let request = request();
        let now = epoch();
        let first = |ctx: &PickContext<'_>| {
            set.snapshot()
                .pick_available(ctx, |mut peers| peers.next())
                .map(|lease| lease.id())
        };
        assert_eq!(first(&ctx(&request, now)), Ok(a));
        let failed = [a];
        assert_eq!(first(&ctx(&request, now).with_failed(&failed)), Ok(b));
        set.set_draining(b, true);
        assert_eq!(first(&ctx(&request, now).with_failed(&failed)), Ok(backup));
        let failed = [a, backup];
        assert_eq!(
            first(&ctx(&request, now).with_failed(&failed)),
            Err(SelectError::NoneAvailable)
        );
        // A strategy that declines the primaries is offered the backups.
        let mut offered = Vec::new();
        let lease = set.snapshot().pick_available(&ctx(&request, now), |peers| {
            offered.push(peers.map(Peer::id).collect::<Vec<_>>());
            None
        });
        assert_eq!(lease.map(|l| l.id()), Err(SelectError::NoneAvailable));
        assert_eq!(offered, [vec![a], vec![backup]]);
    }

    #[test]
    fn by_weight_finds_the_owner_of_each_unit() {
        let (set, _) = set_of(&[2, 1, 3]);
        let state = set.load();
        assert_eq!(state.total_weight(0), 6);
        let owners: Vec<usize> = (0..6).map(|x| state.by_weight(0, x)).collect();
        assert_eq!(owners, [0, 0, 1, 2, 2, 2]);
    }
}
