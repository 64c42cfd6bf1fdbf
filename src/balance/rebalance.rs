//! Rebalancing long-lived connections: which open tunnels to close so that
//! no upstream holds more than `factor ×` its share of them.
//!
//! WebSocket connections outlive the balance they were placed in: when an
//! upstream joins a group, every open connection stays where it is, and the
//! newcomer gets only new ones, for hours. A [`Rebalance`] decides which
//! tunnels to close (with WebSocket Close 1012 or 1013, so that clients
//! reconnect through the balancer) until the most loaded upstream holds at
//! most `factor ×` its weighted share (HAProxy `hash-balance-factor`,
//! default 1.25 like [`BoundedLoad`](super::BoundedLoad)).
//!
//! Sans-IO: the planner reads a [`Snapshot`] and a list of [`Placed`]
//! tunnels and returns a [`Plan`]; the host owns the tunnels, closes the
//! ones the plan names, a few at a time, and plans again once the moved
//! clients have landed.
//!
//! Affinity is kept: for a hash strategy the host gives each tunnel its
//! [`home`](super::Balancer::home), and only tunnels whose key now maps to
//! another upstream with room are closed, so a reconnecting client lands
//! where its key lives and nobody else moves.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{net::SocketAddr, time::Instant};
//! use wsproxy::balance::{
//!     Balancer, ConsistentHash, HashKey, LoadSpread, PickContext, Placed, Rebalance, Upstream,
//!     UpstreamSet,
//! };
//!
//! let upstream = |port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port)));
//! let set: UpstreamSet = [upstream(9001), upstream(9002)].into_iter().collect();
//! let ring = ConsistentHash::new(set.clone(), HashKey::Query("user".into()));
//! let now = Instant::now();
//!
//! // 1,000 clients connect over two upstreams; the host keeps each lease
//! // and affinity beside its tunnel.
//! let mut tunnels = Vec::new();
//! for user in 0..1000 {
//!     let request = http::Request::get(format!("/ws?user={user}")).body(())?;
//!     let ctx = PickContext::new("127.0.0.1".parse()?, &request, now);
//!     tunnels.push((ring.pick(&ctx)?, ring.affinity(&ctx)));
//! }
//!
//! // A third upstream joins: ask each tunnel's home, then plan.
//! let joined = set.add(upstream(9003));
//! let placed: Vec<Placed> = tunnels
//!     .iter()
//!     .map(|(lease, affinity)| Placed {
//!         upstream: lease.id(),
//!         home: affinity.and_then(|a| ring.home(a, now)),
//!     })
//!     .collect();
//! let plan = Rebalance::default().plan(&set.snapshot(), &placed, usize::MAX);
//! assert!(plan.spread.ratio() > 1.25);
//! assert_eq!(plan.close.len(), plan.needed);
//! // Every tunnel to close belongs on the newcomer now.
//! assert!(plan.close.iter().all(|&i| placed[i].home == Some(joined)));
//!
//! // Once they have reconnected there, the spread is within the factor.
//! let mut after = placed.clone();
//! for &i in &plan.close {
//!     after[i].upstream = joined;
//! }
//! assert!(LoadSpread::of(&set.snapshot(), &after).ratio() <= 1.25);
//! # Ok(())
//! # }
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use http::StatusCode;

use super::{Snapshot, UpstreamId};

/// One open tunnel as the planner sees it: where it runs, and where its key
/// would go now ([`Balancer::home`](super::Balancer::home)).
///
/// `home: None` means the strategy has no affinity (round-robin, least-conn),
/// so the tunnel may move anywhere.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use wsproxy::balance::{Placed, Upstream, UpstreamSet};
///
/// let set = UpstreamSet::new();
/// let a = set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
/// let b = set.add(Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?));
/// let stays = Placed::new(a, Some(a)); // its key still maps to `a`
/// let movable = Placed::new(a, Some(b));
/// assert_ne!(stays, movable);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The upstream the tunnel runs on.
    pub upstream: UpstreamId,
    /// Where its key would be placed now, `None` without affinity.
    pub home: Option<UpstreamId>,
}

impl Placed {
    /// A tunnel on `upstream` whose key's home is `home`.
    #[inline]
    pub const fn new(upstream: UpstreamId, home: Option<UpstreamId>) -> Self {
        Self { upstream, home }
    }
}

/// The rebalancing policy: how far above its share an upstream may be
/// before tunnels are moved off it.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use wsproxy::balance::Rebalance;
///
/// assert_eq!(Rebalance::default().factor(), 1.25); // hash-balance-factor 125
/// assert_eq!(Rebalance::new(1.5)?.factor(), 1.5);
/// assert!(Rebalance::new(0.9).is_err());
/// assert!(Rebalance::new(f64::NAN).is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Rebalance {
    factor: f64,
}

/// HAProxy's documented suggestion, `hash-balance-factor 125`, as
/// [`BoundedLoad`](super::BoundedLoad) uses by default: the two agree, so
/// the bound new connections respect is the one rebalancing restores.
const DEFAULT_FACTOR: f64 = 1.25;

impl Default for Rebalance {
    fn default() -> Self {
        Self {
            factor: DEFAULT_FACTOR,
        }
    }
}

impl Rebalance {
    /// A policy that lets an upstream hold up to `factor ×` its weighted
    /// share of the tunnels (HAProxy `hash-balance-factor`, there in
    /// percent). The factor is kept to a thousandth, as in
    /// [`BoundedLoad::factor`](super::BoundedLoad::factor); infinity never
    /// moves anything.
    ///
    /// # Errors
    ///
    /// [`RebalanceError::Factor`] when `factor` is NaN or below 1.0, a bound
    /// that no placement can meet.
    pub fn new(factor: f64) -> Result<Self, RebalanceError> {
        if factor.is_nan() || factor < 1.0 {
            return Err(RebalanceError::Factor(factor));
        }
        Ok(Self { factor })
    }

    /// The load bound over the weighted mean.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// Which tunnels to close, in the order to close them.
    ///
    /// `snapshot` gives the eligible upstreams: primaries neither down (by
    /// hand or by a check) nor draining; their weights count. `tunnels` is
    /// every open tunnel of the group, in the order the caller prefers to
    /// move them (first = first to move). Tunnels on upstreams that are not
    /// eligible (down, draining, removed, backups) are the host's to close
    /// separately: they count neither in the loads nor in the total, since
    /// they will reconnect to eligible ones anyway.
    ///
    /// With `total` tunnels on eligible upstreams of summed weight `W`, the
    /// cap of an upstream of weight `w` is `floor(factor × total × w / W)`,
    /// but never below `ceil(total × w / W)`, so that the caps always hold
    /// the total and small groups do not churn. Only upstreams above their
    /// cap shed, each down to its cap; [`Plan::needed`] is the sum of those
    /// excesses, the fewest moves that reach the target.
    ///
    /// A tunnel is a candidate when it runs on an upstream above its cap
    /// and either has no affinity (`home: None`) or its home is another
    /// eligible upstream that still has room below its cap once the
    /// tunnels already planned to go there are counted. So a hash strategy
    /// may fall short of `needed`: `close.len() < needed.min(budget)` says
    /// the candidates ran out, and moving more would break affinity.
    ///
    /// At most `budget` tunnels are named. A budget smaller than `needed`
    /// goes to the upstreams with the most excess first, one tunnel at a
    /// time, so equal excesses shed equally (`close` interleaves them).
    ///
    /// The plan is one step: tunnels without affinity land where the
    /// balancer puts them, which may be back on a busy upstream, so the
    /// host plans again after they have reconnected.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::net::SocketAddr;
    /// use wsproxy::balance::{Placed, Rebalance, Upstream, UpstreamSet};
    ///
    /// let set: UpstreamSet = (9001..=9003)
    ///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
    ///     .collect();
    /// let ids: Vec<_> = set.snapshot().iter().map(|p| p.id()).collect();
    /// // 500/500/0 after the third joined; round-robin, so no affinity.
    /// let tunnels: Vec<Placed> = (0..1000)
    ///     .map(|i| Placed::new(ids[i % 2], None))
    ///     .collect();
    ///
    /// let plan = Rebalance::new(1.25)?.plan(&set.snapshot(), &tunnels, usize::MAX);
    /// // Cap floor(1.25 × 1000 / 3) = 416: 84 off each of the two.
    /// assert_eq!((plan.needed, plan.close.len()), (168, 168));
    /// assert_eq!(plan.spread.max, 500);
    ///
    /// // A budget of 10 a round: 5 from each.
    /// let plan = Rebalance::default().plan(&set.snapshot(), &tunnels, 10);
    /// let from_first = plan.close.iter().filter(|&&i| tunnels[i].upstream == ids[0]).count();
    /// assert_eq!((plan.close.len(), from_first), (10, 5));
    /// # Ok(())
    /// # }
    /// ```
    pub fn plan(&self, snapshot: &Snapshot, tunnels: &[Placed], budget: usize) -> Plan {
        let loads = Loads::of(snapshot, tunnels);
        let spread = loads.spread();
        let factor_milli = milli(self.factor);
        let caps: Vec<usize> = (0..loads.len()).map(|i| loads.cap(i, factor_milli)).collect();
        let excess: Vec<usize> = loads
            .count
            .iter()
            .zip(&caps)
            .map(|(&load, &cap)| load.saturating_sub(cap))
            .collect();
        let needed = excess.iter().fold(0usize, |sum, &e| sum.saturating_add(e));
        let mut close = Vec::new();
        if needed == 0 || budget == 0 {
            return Plan {
                close,
                spread,
                needed,
            };
        }

        // Candidates per overloaded upstream, in the caller's order.
        let mut queues: Vec<Vec<usize>> = vec![Vec::new(); loads.len()];
        for (t, placed) in tunnels.iter().enumerate() {
            let Some(i) = loads.index(placed.upstream) else {
                continue;
            };
            if excess[i] > 0 && placed.home != Some(placed.upstream) {
                if let Some(queue) = queues.get_mut(i) {
                    queue.push(t);
                }
            }
        }
        // Room below its cap on each upstream that a moved key may take;
        // it only shrinks, so a candidate refused once is refused for good.
        let mut room: Vec<usize> = loads
            .count
            .iter()
            .zip(&caps)
            .map(|(&load, &cap)| cap.saturating_sub(load))
            .collect();
        let mut next = vec![0usize; loads.len()];
        // Most excess first, then snapshot order: one tunnel per turn, so a
        // short budget levels the excesses from the top.
        let mut heap: BinaryHeap<(usize, Reverse<usize>)> = excess
            .iter()
            .enumerate()
            .filter(|&(_, &e)| e > 0)
            .map(|(i, &e)| (e, Reverse(i)))
            .collect();
        while close.len() < budget {
            let Some((left, Reverse(i))) = heap.pop() else {
                break;
            };
            let (Some(queue), Some(at)) = (queues.get(i), next.get_mut(i)) else {
                continue;
            };
            let mut taken = None;
            while let Some(&t) = queue.get(*at) {
                *at += 1;
                let Some(placed) = tunnels.get(t) else {
                    continue;
                };
                match placed.home {
                    None => {
                        taken = Some(t);
                        break;
                    }
                    Some(home) => {
                        let slot = loads.index(home).and_then(|h| room.get_mut(h));
                        if let Some(slot @ 1..) = slot {
                            *slot -= 1;
                            taken = Some(t);
                            break;
                        }
                    }
                }
            }
            // No candidate left: this upstream stays above its cap.
            let Some(t) = taken else { continue };
            close.push(t);
            if left > 1 {
                heap.push((left - 1, Reverse(i)));
            }
        }
        Plan {
            close,
            spread,
            needed,
        }
    }
}

/// The factor in thousandths, as [`BoundedLoad`](super::BoundedLoad) keeps
/// it: integer caps, so that 1.1 × 1000 tunnels is exactly 1100, not
/// 1100.0000000000002 or 1099.9999999999998 floored.
fn milli(factor: f64) -> u128 {
    // `as` saturates: infinity is a cap never reached, and NaN (refused by
    // `new`) would be 0, the ceil-share floor.
    (factor * 1000.0).round() as u128
}

/// Which tunnels to close, from [`Rebalance::plan`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use wsproxy::balance::{Placed, Rebalance, Upstream, UpstreamSet};
///
/// let set: UpstreamSet = (9001..=9002)
///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
///     .collect();
/// let ids: Vec<_> = set.snapshot().iter().map(|p| p.id()).collect();
/// // 10/0, but every key's home is where it runs: nothing may move.
/// let pinned = vec![Placed::new(ids[0], Some(ids[0])); 10];
/// let plan = Rebalance::default().plan(&set.snapshot(), &pinned, 100);
/// assert_eq!((plan.needed, plan.close.len()), (4, 0)); // cap floor(1.25 × 5) = 6
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Plan {
    /// Indices into the `tunnels` given to [`Rebalance::plan`], distinct,
    /// in the order to close them; at most the budget, at most `needed`.
    pub close: Vec<usize>,
    /// The spread of the tunnels before the plan.
    pub spread: LoadSpread,
    /// The fewest moves that bring every eligible upstream down to its cap:
    /// more than `close.len()` when the budget or the candidates ran out.
    pub needed: usize,
}

/// How evenly tunnels are spread over the eligible upstreams of a group
/// (primaries neither down nor draining): the figures a rebalance prints
/// before and after.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use wsproxy::balance::{LoadSpread, Placed, Upstream, UpstreamSet};
///
/// let set: UpstreamSet = (9001..=9003)
///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
///     .collect();
/// let ids: Vec<_> = set.snapshot().iter().map(|p| p.id()).collect();
/// let tunnels: Vec<Placed> = (0..9).map(|i| Placed::new(ids[i % 2], None)).collect();
/// let spread = LoadSpread::of(&set.snapshot(), &tunnels);
/// assert_eq!((spread.max, spread.total, spread.upstreams), (5, 9, 3));
/// assert_eq!(spread.mean, 3.0);
/// assert_eq!(spread.ratio(), 5.0 / 3.0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LoadSpread {
    /// Tunnels on the most loaded eligible upstream.
    pub max: usize,
    /// Tunnels per eligible upstream, on average.
    pub mean: f64,
    /// Tunnels on eligible upstreams.
    pub total: usize,
    /// Eligible upstreams.
    pub upstreams: usize,
    /// The highest load relative to its weighted share,
    /// `load × Σweights / (total × weight)`: the figure the rebalance
    /// factor bounds. Equals [`ratio`](Self::ratio) when weights are equal;
    /// 1.0 when there are no tunnels.
    pub peak: f64,
}

impl LoadSpread {
    /// The spread of `tunnels` over the eligible upstreams of `snapshot`;
    /// tunnels on other upstreams are left out, as [`Rebalance::plan`]
    /// leaves them out.
    pub fn of(snapshot: &Snapshot, tunnels: &[Placed]) -> Self {
        Loads::of(snapshot, tunnels).spread()
    }

    /// `max / mean`: 1.0 when perfectly even, and when there are no
    /// tunnels or no eligible upstreams (nothing is uneven).
    pub fn ratio(&self) -> f64 {
        if self.total == 0 || self.mean <= 0.0 {
            1.0
        } else {
            self.max as f64 / self.mean
        }
    }
}

/// Tunnels per eligible upstream.
struct Loads {
    /// Eligible upstreams, sorted by id (the snapshot's order).
    ids: Vec<UpstreamId>,
    weight: Vec<u64>,
    count: Vec<usize>,
    total: usize,
    weight_sum: u64,
}

impl Loads {
    fn of(snapshot: &Snapshot, tunnels: &[Placed]) -> Self {
        let mut eligible: Vec<(UpstreamId, u64)> = snapshot
            .primaries()
            .iter()
            .filter(|p| p.routable())
            .map(|p| (p.id(), u64::from(p.weight())))
            .collect();
        eligible.sort_unstable_by_key(|&(id, _)| id);
        let (ids, weight): (Vec<UpstreamId>, Vec<u64>) = eligible.into_iter().unzip();
        let mut loads = Self {
            count: vec![0; ids.len()],
            weight_sum: weight.iter().sum(),
            ids,
            weight,
            total: 0,
        };
        for placed in tunnels {
            if let Some(count) = loads.index(placed.upstream).and_then(|i| loads.count.get_mut(i)) {
                *count += 1;
                loads.total += 1;
            }
        }
        loads
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    #[inline]
    fn index(&self, id: UpstreamId) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    /// `max(floor(factor × total × w / W), ceil(total × w / W))`, in
    /// integers.
    fn cap(&self, i: usize, factor_milli: u128) -> usize {
        let weight = self.weight.get(i).copied().unwrap_or(0);
        let share = (self.total as u128).saturating_mul(u128::from(weight));
        let sum = u128::from(self.weight_sum.max(1));
        let bound = factor_milli.saturating_mul(share) / (sum * 1000);
        let cap = bound.max(share.div_ceil(sum)).max(1);
        usize::try_from(cap).unwrap_or(usize::MAX)
    }

    fn spread(&self) -> LoadSpread {
        let upstreams = self.len();
        let max = self.count.iter().copied().max().unwrap_or(0);
        let mean = if upstreams == 0 {
            0.0
        } else {
            self.total as f64 / upstreams as f64
        };
        let peak = if self.total == 0 || self.weight_sum == 0 {
            1.0
        } else {
            self.count
                .iter()
                .zip(&self.weight)
                .map(|(&load, &w)| {
                    load as f64 * self.weight_sum as f64 / (self.total as f64 * w.max(1) as f64)
                })
                .fold(0.0, f64::max)
        };
        LoadSpread {
            max,
            mean,
            total: self.total,
            upstreams,
            peak,
        }
    }
}

/// Why a [`Rebalance`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RebalanceError {
    /// The factor is NaN or below 1.0: no placement can hold every upstream
    /// below its mean.
    #[error("rebalance factor {0} is not a number of at least 1.0")]
    Factor(f64),
}

impl RebalanceError {
    /// 500 Internal Server Error: a configuration mistake, never the
    /// client's.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Factor(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
