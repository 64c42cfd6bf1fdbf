//! Upstream selection: the live upstream set, the [`Balancer`] trait and the
//! strategies of nginx's `upstream` block, plus bounded-load consistent hashing
//! for long-lived WebSocket connections.
//!
//! Sans-IO: nothing here opens a socket or reads a clock. The caller passes
//! the time in through [`PickContext`] and [`Lease::report_failure`], which
//! lets tests drive passive health on fabricated [`Instant`]s.
//!
//! A pick returns a [`Lease`] that lives as long as the proxied connection:
//! dropping it releases the in-flight count that [`LeastConn`],
//! [`RandomTwo`] and [`BoundedLoad`] read, and connect failures and successes
//! are reported on it (nginx `max_fails` / `fail_timeout`).
//!
//! # Strategies
//!
//! | type | mirrors |
//! |---|---|
//! | [`RoundRobin`] | nginx default: smooth weighted round-robin (weights 5, 1, 1 give `a a b a c a a`) |
//! | [`IpHash`] | nginx `ip_hash`: an IPv4 client's /24 or a whole IPv6 address, nginx's constants |
//! | [`ConsistentHash`] | nginx `hash $key consistent` (ketama), keyed by [`HashKey`]: address, header, cookie, path or query parameter |
//! | [`BoundedLoad`] | HAProxy `hash-balance-factor`: consistent hashing that skips an upstream above 1.25 × the average load |
//! | [`LeastConn`] | nginx `least_conn`: fewest open leases per unit of weight, ties broken by weighted round-robin |
//! | [`RandomTwo`] | nginx `random two least_conn` |
//!
//! All of them skip upstreams that are down, draining, removed, sitting out
//! a `fail_timeout`, or already failed for this request
//! ([`PickContext::with_failed`]), and use backups only when no primary is
//! available; none available is [`SelectError::NoneAvailable`] (502).
//!
//! The [`UpstreamSet`] can change while they run (`add`, `remove`,
//! `set_draining`, `set_down`, `set_weight`) without touching open
//! connections: a pick reads one snapshot of it with a single `arc-swap`
//! load. Active health checks mark upstreams with
//! [`UpstreamSet::set_check_down`], kept apart from the operator's
//! [`set_down`](UpstreamSet::set_down) as HAProxy keeps check state apart
//! from `MAINT`, so a passing check never brings back an upstream taken out
//! by hand.
//!
//! # Cost and balance
//!
//! A pick costs tens of nanoseconds, from one snapshot load and one lease
//! (the floor) to a few times that for hashing or a least-loaded scan over
//! 100 upstreams (`cargo bench --bench balance`). Picks do not allocate,
//! except the first after a change of membership or weights, which rebuilds
//! the ring or the round-robin cycle. The ring places 512 points per unit
//! of weight rather than nginx's 160: in simulations of random placements
//! the most loaded of 10 upstreams then carries about 1.07× the mean instead
//! of about 1.1×. A new upstream takes about its share of the keys and no
//! key moves between two old upstreams
//! (`cargo run --release --example balance_report` prints both), except
//! when the join takes the total weight across 4,096 × 2^k, where the ring
//! is scaled down (see [`ConsistentHash`]).
//!
//! Long-lived connections are placed once, so a strategy that can say where
//! a connection's key belongs now ([`Balancer::affinity`],
//! [`Balancer::home`]) lets [`Rebalance`] move only the tunnels whose home
//! changed; [`Rebalance`] is the sans-IO planner behind
//! [`proxy::Rebalancer`](crate::proxy::Rebalancer).
//!
//! # Many gateways, one pool: where agreement ends
//!
//! Instances that share nothing agree on a key's upstream when the pick
//! depends only on the key and the upstream list. [`ConsistentHash`] and
//! [`IpHash`] are such: the ring hashes each upstream's printed address
//! (and places points per unit of weight), `ip_hash` walks the weights in
//! address order, never in the order the upstreams were given or added, so
//! gateways given the same list in any order, started at any time, or fed
//! by the same DNS name (`wsproxy::dns`, feature `dns`) send every key
//! to the same upstream, and after the same join or leave move the same
//! keys (tests/agreement.rs: three gateway processes, 1,000 keys, 100%).
//! Passive health is each instance's own: while one instance sits an
//! upstream out after failures, its keys go to their next ring choice there
//! alone.
//!
//! Agreement ends where a pick reads local state. [`BoundedLoad`] spills a
//! key past an upstream above its bound, and each instance counts only its
//! own connections: with hot keys, instances spill different keys to
//! different places (`examples/agreement_sim.rs`, in benches/README.md:
//! 3 gateways, 2,000 chat rooms of Zipf sizes, 65% agreement against 100%
//! for the plain ring). [`LeastConn`] and [`RandomTwo`] read each
//! instance's own open connections and agree on nothing;
//! [`RoundRobin`] neither. When every member of a key must meet on one
//! upstream, use plain [`ConsistentHash`] (and [`Rebalance`] for the load),
//! or pin each key to one gateway at the L4 balancer (hash on the same key
//! there) so that one instance's counts decide, or keep the key → upstream
//! map in a store the instances share.
//!
//! # Writing your own strategy
//!
//! A strategy reads a [`Snapshot`] of the set and chooses among the peers
//! [`Snapshot::pick_available`] offers it: the available primaries, then
//! the backups only if it chose none. The walk and the availability rules
//! are the built-in strategies' own, so a custom one need not repeat them:
//!
//! ```
//! use std::{net::SocketAddr, sync::Arc, time::Instant};
//! use wsproxy::balance::{
//!     Balancer, Lease, PickContext, SelectError, Upstream, UpstreamSet,
//! };
//!
//! /// Always the available peer with the lowest port: a toy "primary first".
//! #[derive(Debug)]
//! struct LowestPort(UpstreamSet);
//!
//! impl Balancer for LowestPort {
//!     fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
//!         let snapshot = self.0.snapshot();
//!         snapshot.pick_available(ctx, |peers| peers.min_by_key(|peer| peer.addr().port()))
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let set = UpstreamSet::new();
//! set.add(Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?));
//! set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
//! let balancer: Arc<dyn Balancer> = Arc::new(LowestPort(set));
//!
//! let request = http::Request::get("/chat").body(())?;
//! let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
//! let lease = balancer.pick(&ctx)?;
//! assert_eq!(lease.addr().port(), 9001);
//! # Ok(())
//! # }
//! ```

// Builders and setters return a changed copy: dropping it is always a bug.
#![warn(clippy::return_self_not_must_use)]

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use http::StatusCode;

mod affinity;
mod bounded;
pub mod health;
mod ip_hash;
mod least_conn;
pub mod rebalance;
mod ring;
mod round_robin;
mod set;
mod upstream;

pub use affinity::Affinity;
pub use bounded::BoundedLoad;
pub use ip_hash::IpHash;
pub use least_conn::{LeastConn, RandomTwo};
pub use rebalance::{LoadSpread, Placed, Plan, Rebalance, RebalanceConfigError};
pub use ring::{ConsistentHash, HashKey};
pub use round_robin::RoundRobin;
pub use set::{AvailablePeers, Peer, Reconciled, Snapshot, UpstreamSet};
pub use upstream::{AddrParseError, Lease, Upstream, UpstreamAddr, UpstreamId};

/// Chooses the upstream for one proxied connection.
///
/// Object-safe: a proxy holds an `Arc<dyn Balancer>`. Implementations read an
/// [`UpstreamSet`] [`Snapshot`], skip peers for which
/// [`Peer::is_available`] is false, use backups only when no primary is
/// available, and return the chosen peer's [`Peer::lease`]:
/// [`Snapshot::pick_available`] does all of that around the choice itself.
/// See the [module docs](self) for a complete custom strategy.
pub trait Balancer: Send + Sync + fmt::Debug {
    /// Picks an upstream for the request described by `ctx`.
    ///
    /// # Errors
    ///
    /// [`SelectError`] when no upstream, primary or backup, is available.
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError>;

    /// The affinity of the connection `ctx` describes, for strategies that
    /// map a key to an upstream ([`IpHash`], [`ConsistentHash`],
    /// [`BoundedLoad`]); `None` (the default) for strategies without
    /// affinity ([`RoundRobin`], [`LeastConn`], [`RandomTwo`]).
    ///
    /// Keep it beside the open connection: [`home`](Self::home) later says
    /// where that connection would be placed now, which is how a
    /// [`rebalance`] moves only connections whose key maps
    /// elsewhere.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{net::SocketAddr, time::Instant};
    /// use wsproxy::balance::{Balancer, IpHash, PickContext, RoundRobin, Upstream, UpstreamSet};
    ///
    /// let set: UpstreamSet = (9001..=9002)
    ///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
    ///     .collect();
    /// let request = http::Request::get("/chat").body(())?;
    /// let ctx = PickContext::new("192.0.2.1".parse()?, &request, Instant::now());
    /// assert!(IpHash::new(set.clone()).affinity(&ctx).is_some());
    /// assert_eq!(RoundRobin::new(set).affinity(&ctx), None);
    /// # Ok(())
    /// # }
    /// ```
    fn affinity(&self, ctx: &PickContext<'_>) -> Option<Affinity> {
        let _ = ctx;
        None
    }

    /// The upstream a connection with `affinity` would be placed on now,
    /// load aside: the key's home among the upstreams available at `now`
    /// (not down, not draining, not sitting out a `fail_timeout`), backups
    /// only when no primary is. For [`IpHash`] and [`ConsistentHash`] this
    /// is what [`pick`](Self::pick) chooses for that connection when no
    /// upstream failed for it; for [`BoundedLoad`], where the key goes while
    /// nobody is above the load bound.
    ///
    /// `None` when no upstream is available or the strategy has no affinity
    /// (the default).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{net::SocketAddr, time::Instant};
    /// use wsproxy::balance::{Balancer, ConsistentHash, HashKey, PickContext, Upstream, UpstreamSet};
    ///
    /// let set: UpstreamSet = (9001..=9003)
    ///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
    ///     .collect();
    /// let ring = ConsistentHash::new(set.clone(), HashKey::Query("room".into()));
    /// let request = http::Request::get("/chat?room=42").body(())?;
    /// let now = Instant::now();
    /// let ctx = PickContext::new("127.0.0.1".parse()?, &request, now);
    ///
    /// let lease = ring.pick(&ctx)?;
    /// let affinity = ring.affinity(&ctx).ok_or("a ring has affinity")?;
    /// assert_eq!(ring.home(affinity, now), Some(lease.id()));
    ///
    /// // Its upstream goes down: the key's home is now elsewhere.
    /// set.set_down(lease.id(), true);
    /// let moved = ring.home(affinity, now).ok_or("two upstreams left")?;
    /// assert_ne!(moved, lease.id());
    /// assert_eq!(ring.pick(&ctx)?.id(), moved);
    /// # Ok(())
    /// # }
    /// ```
    fn home(&self, affinity: Affinity, now: Instant) -> Option<UpstreamId> {
        let _ = (affinity, now);
        None
    }
}

/// What a [`Balancer`] knows about the request it places.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Instant;
/// use wsproxy::balance::{PickContext, UpstreamId};
///
/// let request = http::Request::get("/chat?room=42").body(())?;
/// let failed: [UpstreamId; 0] = [];
/// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now())
///     .with_failed(&failed);
/// assert_eq!(ctx.request().uri().query(), Some("room=42"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    client: IpAddr,
    request: &'a http::Request<()>,
    failed: &'a [UpstreamId],
    now: Instant,
    passive_health: bool,
}

impl<'a> PickContext<'a> {
    /// A context for a first attempt: `client` is the believed client address
    /// (after trusted-proxy resolution), `request` the handshake head, `now`
    /// the caller's clock.
    pub fn new(client: IpAddr, request: &'a http::Request<()>, now: Instant) -> Self {
        Self {
            client,
            request,
            failed: &[],
            now,
            passive_health: true,
        }
    }

    /// The upstreams that already failed for this request, which a retry
    /// skips (nginx `proxy_next_upstream`).
    #[must_use]
    pub fn with_failed(mut self, failed: &'a [UpstreamId]) -> Self {
        self.failed = failed;
        self
    }

    /// Whether upstreams sitting out a `fail_timeout` are skipped (the
    /// default). A proxy whose pick found every upstream tripped picks again
    /// with `false`, and tries one anyway: nginx-style passive health exists
    /// to steer traffic to the upstreams that work, and when none is left
    /// a try may succeed where a 502 surely fails everyone. Down, draining
    /// and already failed upstreams stay skipped.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{net::SocketAddr, time::Instant};
    /// use wsproxy::balance::{Balancer, PickContext, RoundRobin, Upstream, UpstreamSet};
    ///
    /// let set: UpstreamSet = (9001..=9002)
    ///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
    ///     .collect();
    /// let balancer = RoundRobin::new(set);
    /// let request = http::Request::get("/").body(())?;
    /// let now = Instant::now();
    /// let ctx = PickContext::new("127.0.0.1".parse()?, &request, now);
    /// // Both fail: the first is tripped, the last one is never.
    /// balancer.pick(&ctx)?.report_failure(now);
    /// balancer.pick(&ctx)?.report_failure(now);
    /// assert!(balancer.pick(&ctx).is_ok());
    /// assert!(balancer.pick(&ctx.with_passive_health(false)).is_ok());
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_passive_health(mut self, skip_tripped: bool) -> Self {
        self.passive_health = skip_tripped;
        self
    }

    /// Whether upstreams sitting out a `fail_timeout` are skipped.
    #[inline]
    pub fn passive_health(&self) -> bool {
        self.passive_health
    }

    /// The believed client address.
    #[inline]
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The request head.
    pub fn request(&self) -> &'a http::Request<()> {
        self.request
    }

    /// The upstreams already tried and failed for this request.
    #[inline]
    pub fn failed(&self) -> &'a [UpstreamId] {
        self.failed
    }

    /// The caller's clock at the time of the pick.
    #[inline]
    pub fn now(&self) -> Instant {
        self.now
    }
}

/// Why no upstream could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// Every upstream, primary and backup, is down, draining, failed or
    /// removed (nginx logs "no live upstreams" and answers 502).
    #[error("no upstream available")]
    NoneAvailable,
}

impl SelectError {
    /// The HTTP status a proxy answers with: 502 Bad Gateway, as nginx does.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoneAvailable => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Tier order shared by every strategy: primaries, then backups only when no
/// primary was available (nginx `backup`).
#[inline]
fn choose_tiers<'s>(
    snapshot: &'s set::State,
    mut pick: impl FnMut(usize, &'s [Peer]) -> Option<usize>,
) -> Option<&'s Peer> {
    for (tier, peers) in snapshot.tiers().into_iter().enumerate() {
        if let Some(i) = pick(tier, peers) {
            if let Some(peer) = peers.get(i) {
                return Some(peer);
            }
        }
    }
    None
}

/// [`choose_tiers`], leasing the chosen peer.
#[inline]
fn pick_tiers(
    snapshot: &set::State,
    pick: impl FnMut(usize, &[Peer]) -> Option<usize>,
) -> Result<Lease, SelectError> {
    choose_tiers(snapshot, pick)
        .map(Peer::lease)
        .ok_or(SelectError::NoneAvailable)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use std::net::SocketAddr;

    /// The one clock read of the tests: a base that durations are added to.
    pub(crate) fn epoch() -> Instant {
        Instant::now()
    }

    pub(crate) fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A set of `weights.len()` primaries on ports 9000, 9001, ...
    pub(crate) fn set_of(weights: &[u32]) -> (UpstreamSet, Vec<UpstreamId>) {
        let set = UpstreamSet::new();
        let ids = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| set.add(Upstream::new(addr(9000 + i as u16)).weight(w)))
            .collect();
        (set, ids)
    }

    pub(crate) fn request() -> http::Request<()> {
        http::Request::get("/").body(()).unwrap()
    }

    pub(crate) fn ctx<'a>(request: &'a http::Request<()>, now: Instant) -> PickContext<'a> {
        PickContext::new(IpAddr::from([127, 0, 0, 1]), request, now)
    }

    /// One of each strategy over `set` (random-two seeded), object-safe.
    pub(crate) fn every_strategy(set: &UpstreamSet) -> Vec<std::sync::Arc<dyn Balancer>> {
        use std::sync::Arc;
        vec![
            Arc::new(RoundRobin::new(set.clone())),
            Arc::new(IpHash::new(set.clone())),
            Arc::new(ConsistentHash::new(set.clone(), HashKey::RemoteAddr)),
            Arc::new(BoundedLoad::new(set.clone(), HashKey::RemoteAddr)),
            Arc::new(LeastConn::new(set.clone())),
            Arc::new(RandomTwo::with_seed(set.clone(), 5)),
        ]
    }

    /// Port offset (0 for 9000) of a lease.
    pub(crate) fn port(lease: &Lease) -> u16 {
        lease.addr().port() - 9000
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn leases_and_balancers_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Lease>();
        send_sync::<UpstreamSet>();
        send_sync::<Arc<dyn Balancer>>();
        send_sync::<RoundRobin>();
        send_sync::<BoundedLoad>();
        send_sync::<SelectError>();
    }

    #[test]
    fn debug_output_stays_short() {
        let (set, _) = set_of(&[1; 100]);
        let rr = RoundRobin::new(set.clone());
        let ring = ConsistentHash::new(set, HashKey::Path);
        let request = request();
        drop(rr.pick(&ctx(&request, epoch())));
        drop(ring.pick(&ctx(&request, epoch())));
        assert!(format!("{rr:?}").len() < 20_000);
        assert!(format!("{ring:?}").len() < 20_000);
    }

    #[test]
    fn none_available_is_a_bad_gateway() {
        assert_eq!(SelectError::NoneAvailable.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            SelectError::NoneAvailable.to_string(),
            "no upstream available"
        );
    }

    #[test]
    fn balancers_are_object_safe_and_shareable() {
        let (set, _) = set_of(&[1, 1]);
        let all = every_strategy(&set);
        let request = request();
        let now = epoch();
        for b in &all {
            assert!(b.pick(&ctx(&request, now)).is_ok(), "{b:?}");
        }
    }

    /// Every strategy: backups only when every primary is unavailable, and
    /// "none available" when everything is.
    #[test]
    fn every_strategy_uses_backups_only_when_no_primary_is_available() {
        let set = UpstreamSet::new();
        let a = set.add(Upstream::new(addr(9000)));
        let b = set.add(Upstream::new(addr(9001)));
        let backup = set.add(Upstream::new(addr(9002)).backup(true));
        let all = every_strategy(&set);
        let request = request();
        let now = epoch();
        for bal in &all {
            for _ in 0..20 {
                let lease = bal.pick(&ctx(&request, now)).unwrap();
                assert_ne!(lease.id(), backup, "{bal:?} used the backup");
            }
            // One primary failed for this request: the other, not the backup.
            let failed = [a];
            for _ in 0..20 {
                let lease = bal.pick(&ctx(&request, now).with_failed(&failed)).unwrap();
                assert_eq!(lease.id(), b, "{bal:?}");
            }
        }
        set.set_down(a, true);
        set.set_draining(b, true);
        for bal in &all {
            let lease = bal.pick(&ctx(&request, now)).unwrap();
            assert_eq!(lease.id(), backup, "{bal:?}");
        }
        let failed = [backup];
        for bal in &all {
            let err = bal
                .pick(&ctx(&request, now).with_failed(&failed))
                .unwrap_err();
            assert_eq!(err, SelectError::NoneAvailable, "{bal:?}");
        }
        set.remove(backup);
        for bal in &all {
            let err = bal.pick(&ctx(&request, now)).unwrap_err();
            assert_eq!(err, SelectError::NoneAvailable, "{bal:?}");
        }
    }

    /// Passive health through the lease, for every strategy: max_fails=1
    /// failure takes the upstream out for fail_timeout (10 s), then it is
    /// back, on a fabricated clock.
    #[test]
    fn every_strategy_skips_a_failed_upstream_until_fail_timeout() {
        let (set, ids) = set_of(&[1, 1, 1]);
        let all = every_strategy(&set);
        let request = request();
        let t0 = epoch();
        for bal in &all {
            // The upstream this strategy prefers for this client.
            let lease = bal.pick(&ctx(&request, t0)).unwrap();
            let bad = lease.id();
            lease.report_failure(t0);
            drop(lease);
            for s in [0, 5, 9] {
                let now = t0 + Duration::from_secs(s);
                for _ in 0..20 {
                    assert_ne!(bal.pick(&ctx(&request, now)).unwrap().id(), bad, "{bal:?}");
                }
            }
            // fail_timeout over: picked again (hash strategies at once,
            // the rest within a round), and a success clears it.
            let later = t0 + Duration::from_secs(10);
            let back = (0..20)
                .map(|_| bal.pick(&ctx(&request, later)).unwrap())
                .find(|l| l.id() == bad)
                .unwrap_or_else(|| panic!("{bal:?} never came back to {bad}"));
            back.report_success(later);
            assert!(ids.contains(&bad));
        }
    }

    /// One client failing on every upstream in turn: each strategy trips
    /// all but the last, which keeps serving everyone.
    #[test]
    fn every_strategy_keeps_the_last_available_upstream() {
        let request = request();
        let t0 = epoch();
        for n in [1usize, 3] {
            let (set, _) = set_of(&vec![1; n]);
            for bal in every_strategy(&set) {
                for _ in 0..2 * n {
                    if let Ok(lease) = bal.pick(&ctx(&request, t0)) {
                        lease.report_failure(t0);
                    }
                }
                assert!(bal.pick(&ctx(&request, t0)).is_ok(), "{bal:?} with {n}");
            }
        }
    }

    /// Every strategy, with passive health set aside, picks among the
    /// upstreams sitting out a `fail_timeout` but never a down one.
    #[test]
    fn every_strategy_picks_a_tripped_upstream_when_told_to_ignore_passive_health() {
        let (set, ids) = set_of(&[1, 1]);
        let request = request();
        let t0 = epoch();
        if let Some(peer) = set.snapshot().get(ids[0]) {
            peer.lease().report_failure(t0);
        }
        set.set_down(ids[1], true);
        for bal in every_strategy(&set) {
            let strict = ctx(&request, t0);
            assert_eq!(bal.pick(&strict).unwrap_err(), SelectError::NoneAvailable);
            let lenient = strict.with_passive_health(false);
            assert_eq!(bal.pick(&lenient).unwrap().id(), ids[0], "{bal:?}");
        }
    }

    #[test]
    fn an_empty_set_has_none_available() {
        let set = UpstreamSet::new();
        let request = request();
        let err = RoundRobin::new(set)
            .pick(&ctx(&request, epoch()))
            .unwrap_err();
        assert_eq!(err, SelectError::NoneAvailable);
    }
}
