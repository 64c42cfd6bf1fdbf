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

use super::bounded::{milli, DEFAULT_FACTOR_MILLI};
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

/// [`BoundedLoad`](super::BoundedLoad)'s default (HAProxy's
/// `hash-balance-factor 125`): the two agree, so the bound new connections
/// respect is the one rebalancing restores. Exact: 1250 / 1000 is 1.25.
const DEFAULT_FACTOR: f64 = DEFAULT_FACTOR_MILLI as f64 / 1000.0;

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
    /// [`RebalanceConfigError::Factor`] when `factor` is NaN or below 1.0, a bound
    /// that no placement can meet.
    pub fn new(factor: f64) -> Result<Self, RebalanceConfigError> {
        if factor.is_nan() || factor < 1.0 {
            return Err(RebalanceConfigError::Factor(factor));
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
        let caps: Vec<usize> = (0..loads.len())
            .map(|i| loads.cap(i, factor_milli))
            .collect();
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
            weight_sum: weight.iter().fold(0u64, |sum, &w| sum.saturating_add(w)),
            ids,
            weight,
            total: 0,
        };
        for placed in tunnels {
            if let Some(count) = loads
                .index(placed.upstream)
                .and_then(|i| loads.count.get_mut(i))
            {
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

/// Why a [`Rebalance`] could not be built: a configuration mistake, which
/// never reaches a client, so it has no `status()`.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RebalanceConfigError {
    /// The factor is NaN or below 1.0: no placement can hold every upstream
    /// below its mean.
    #[error("rebalance factor {0} is not a number of at least 1.0")]
    Factor(f64),
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::UpstreamSet;
    use super::*;
    use proptest::prelude::*;

    /// `counts[i]` tunnels on upstream `i`, all with home `home(i, k)`.
    fn tunnels(
        ids: &[UpstreamId],
        counts: &[usize],
        home: impl Fn(usize, usize) -> Option<UpstreamId>,
    ) -> Vec<Placed> {
        counts
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..n).map(move |k| (i, k)))
            .map(|(i, k)| Placed::new(ids[i], home(i, k)))
            .collect()
    }

    /// Closed tunnels per upstream index.
    fn closed_from(ids: &[UpstreamId], tunnels: &[Placed], plan: &Plan) -> Vec<usize> {
        let mut per = vec![0; ids.len()];
        for &t in &plan.close {
            let i = ids
                .iter()
                .position(|&id| id == tunnels[t].upstream)
                .unwrap();
            per[i] += 1;
        }
        per
    }

    #[test]
    fn a_joined_upstream_takes_168_of_500_500() {
        let (set, ids) = set_of(&[1, 1, 1]);
        let t = tunnels(&ids, &[500, 500, 0], |_, _| None);
        let plan = Rebalance::new(1.25)
            .unwrap()
            .plan(&set.snapshot(), &t, usize::MAX);
        assert_eq!(plan.needed, 168);
        assert_eq!(plan.close.len(), 168);
        assert_eq!(closed_from(&ids, &t, &plan), [84, 84, 0]);
        assert_eq!(
            (plan.spread.max, plan.spread.total, plan.spread.upstreams),
            (500, 1000, 3)
        );
        assert!((plan.spread.ratio() - 1.5).abs() < 1e-9);
        // First to move are the first given, per upstream, interleaved.
        assert_eq!(&plan.close[..4], [0, 500, 1, 501]);
    }

    #[test]
    fn a_balanced_group_moves_nothing() {
        let (set, ids) = set_of(&[1, 1, 1]);
        for counts in [
            [334, 333, 333],
            [416, 416, 168],
            [0, 0, 0],
            [1, 0, 0],
            [1, 1, 0],
        ] {
            let t = tunnels(&ids, &counts, |_, _| None);
            let plan = Rebalance::default().plan(&set.snapshot(), &t, usize::MAX);
            assert_eq!((plan.needed, plan.close.len()), (0, 0), "{counts:?}");
        }
        // Small totals: the cap is at least the share rounded up.
        // 2/0/0: cap max(floor(0.83), 1) = 1; 3/0/0: cap max(floor(1.25), 1) = 1.
        for (counts, moves) in [([2, 0, 0], 1), ([3, 0, 0], 2), ([4, 0, 0], 2)] {
            let t = tunnels(&ids, &counts, |_, _| None);
            let plan = Rebalance::default().plan(&set.snapshot(), &t, usize::MAX);
            assert_eq!(
                (plan.needed, plan.close.len()),
                (moves, moves),
                "{counts:?}"
            );
        }
    }

    #[test]
    fn weights_set_the_caps() {
        // Weights 2:1:1 over 800 tunnels: shares 400/200/200, caps 500/250/250.
        let (set, ids) = set_of(&[2, 1, 1]);
        let t = tunnels(&ids, &[500, 300, 0], |_, _| None);
        let plan = Rebalance::default().plan(&set.snapshot(), &t, usize::MAX);
        assert_eq!(plan.needed, 50);
        assert_eq!(closed_from(&ids, &t, &plan), [0, 50, 0]);
        assert!((plan.spread.peak - 1.5).abs() < 1e-9); // 300 / 200
        assert!((plan.spread.ratio() - 500.0 / (800.0 / 3.0)).abs() < 1e-9);
    }

    #[test]
    fn affinity_restricts_the_candidates() {
        let (set, ids) = set_of(&[1, 1, 1]);
        // Every tenth tunnel's key now maps to the newcomer: 50 of each 500.
        let t = tunnels(&ids, &[500, 500, 0], |i, k| {
            Some(if k % 10 == 0 { ids[2] } else { ids[i] })
        });
        let plan = Rebalance::default().plan(&set.snapshot(), &t, usize::MAX);
        assert_eq!(plan.needed, 168);
        assert_eq!(plan.close.len(), 100); // short: the rest would break affinity
        assert!(plan.close.iter().all(|&i| t[i].home == Some(ids[2])));
        // A key whose home is another overloaded upstream does not move.
        let t = tunnels(&ids, &[500, 500, 0], |i, _| Some(ids[1 - i]));
        let plan = Rebalance::default().plan(&set.snapshot(), &t, usize::MAX);
        assert!(plan.close.is_empty());
    }

    #[test]
    fn moved_keys_never_overfill_their_home() {
        let (set, ids) = set_of(&[1, 1, 1]);
        // The third already holds 400 of 1,300 (cap 541); 300 keys from the
        // first would go there, but only 141 fit.
        let t = tunnels(&ids, &[800, 100, 400], |i, k| {
            Some(if i == 0 && k < 300 { ids[2] } else { ids[i] })
        });
        let plan = Rebalance::default().plan(&set.snapshot(), &t, usize::MAX);
        assert_eq!(plan.needed, 800 - 541);
        assert_eq!(plan.close.len(), 141);
    }

    #[test]
    fn the_budget_is_spent_on_the_largest_excess_first_then_evenly() {
        let (set, ids) = set_of(&[1, 1, 1, 1]);
        // 2,000 tunnels: cap 625; excesses 375, 175, 0, 0.
        let t = tunnels(&ids, &[1000, 800, 200, 0], |_, _| None);
        let r = Rebalance::default();
        let plan = r.plan(&set.snapshot(), &t, 100);
        assert_eq!(closed_from(&ids, &t, &plan), [100, 0, 0, 0]);
        assert_eq!(plan.needed, 550);
        // 300: the first levels down to the second's excess, then both evenly.
        let plan = r.plan(&set.snapshot(), &t, 300);
        assert_eq!(closed_from(&ids, &t, &plan), [250, 50, 0, 0]);
        let plan = r.plan(&set.snapshot(), &t, 0);
        assert!(plan.close.is_empty());
        assert_eq!(plan.needed, 550);
    }

    #[test]
    fn tunnels_off_eligible_upstreams_are_left_out() {
        let (set, ids) = set_of(&[1, 1, 1, 1]);
        set.set_down(ids[3], true);
        let gone = UpstreamId(u64::MAX);
        let mut t = tunnels(&ids, &[500, 500, 0, 700], |_, _| None);
        t.extend((0..300).map(|_| Placed::new(gone, None)));
        let plan = Rebalance::default().plan(&set.snapshot(), &t, usize::MAX);
        assert_eq!((plan.spread.total, plan.spread.upstreams), (1000, 3));
        assert_eq!(plan.needed, 168);
        assert!(plan.close.iter().all(|&i| i < 1000));
        // Draining and backups are not eligible either.
        set.set_draining(ids[0], true);
        let backup = set.add(super::super::Upstream::new(addr(9100)).backup(true));
        t.extend((0..50).map(|_| Placed::new(backup, None)));
        let spread = LoadSpread::of(&set.snapshot(), &t);
        assert_eq!((spread.total, spread.upstreams, spread.max), (500, 2, 500));
    }

    #[test]
    fn degenerate_inputs_plan_nothing_and_never_panic() {
        let empty = UpstreamSet::new();
        let plan = Rebalance::default().plan(&empty.snapshot(), &[], usize::MAX);
        assert_eq!((plan.close.len(), plan.needed), (0, 0));
        assert_eq!(plan.spread.ratio(), 1.0);
        let t = vec![Placed::new(UpstreamId(u64::MAX), None); 10];
        let plan = Rebalance::default().plan(&empty.snapshot(), &t, usize::MAX);
        assert_eq!((plan.close.len(), plan.spread.total), (0, 0));
        // A huge factor never moves anything; huge weights do not overflow.
        let (set, ids) = set_of(&[u32::MAX, 1, u32::MAX]);
        let t = tunnels(&ids, &[1000, 1000, 0], |_, _| None);
        for factor in [f64::INFINITY, f64::MAX, 1e300] {
            let plan = Rebalance::new(factor).unwrap().plan(&set.snapshot(), &t, 5);
            assert!(plan.close.is_empty());
        }
        // The middle upstream, weight 1 of ~2^33, is over its cap of one.
        let plan = Rebalance::default().plan(&set.snapshot(), &t, usize::MAX);
        assert_eq!(closed_from(&ids, &t, &plan), [0, 999, 0]);
    }

    #[test]
    fn factors_below_one_or_nan_are_refused() {
        for bad in [0.0, 0.999, -1.0, f64::NAN, f64::NEG_INFINITY] {
            let err = Rebalance::new(bad).unwrap_err();
            assert!(err.to_string().starts_with("rebalance factor"), "{err}");
        }
        assert_eq!(Rebalance::new(1.0).unwrap().factor(), 1.0);
        assert_eq!(Rebalance::default().factor(), 1.25);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any group, any tunnels (some on unknown or ineligible upstreams,
        /// with or without affinity), any budget: `close` names distinct
        /// tunnels of overloaded upstreams, never takes one below its cap,
        /// and afterwards an upstream is above its cap only if the budget
        /// or its candidates ran out.
        #[test]
        fn plans_respect_caps_budget_and_candidates(
            weights in proptest::collection::vec(1u32..4, 1..6),
            down in proptest::collection::vec(any::<bool>(), 6),
            // Skewed towards the first two upstreams, so that some are
            // overloaded, and homes towards the third, so that it fills up.
            raw in proptest::collection::vec(
                (
                    prop_oneof![2 => Just(0usize), 2 => Just(1), 1 => 0usize..7],
                    prop_oneof![1 => Just(None), 2 => Just(Some(2usize)), 2 => (0usize..7).prop_map(Some)],
                ),
                0..400,
            ),
            budget in 0usize..300,
            factor in 1.0f64..2.0,
        ) {
            let (set, ids) = set_of(&weights);
            for (id, &d) in ids.iter().zip(&down) {
                // Keep at least the first eligible, mostly.
                set.set_down(*id, d && *id != ids[0]);
            }
            // Index `n` (and above) is an id the set does not know.
            let id = |i: usize| ids.get(i).copied().unwrap_or(UpstreamId(u64::MAX - i as u64));
            let t: Vec<Placed> = raw.iter().map(|&(u, h)| Placed::new(id(u), h.map(id))).collect();
            let snapshot = set.snapshot();
            let r = Rebalance::new(factor).unwrap();
            let plan = r.plan(&snapshot, &t, budget);

            let loads = Loads::of(&snapshot, &t);
            let fm = milli(factor);
            let caps: Vec<usize> = (0..loads.len()).map(|i| loads.cap(i, fm)).collect();
            prop_assert!(caps.iter().sum::<usize>() >= loads.total);
            prop_assert!(plan.close.len() <= budget.min(plan.needed));
            let mut seen = std::collections::HashSet::new();
            let mut left = loads.count.clone();
            let mut arrive = vec![0usize; loads.len()];
            for &c in &plan.close {
                prop_assert!(c < t.len() && seen.insert(c));
                let i = loads.index(t[c].upstream);
                prop_assert!(i.is_some(), "closed a tunnel off an ineligible upstream");
                let i = i.unwrap();
                prop_assert!(t[c].home != Some(t[c].upstream));
                left[i] -= 1;
                prop_assert!(left[i] >= caps[i], "shed below the cap");
                if let Some(h) = t[c].home {
                    let h = loads.index(h);
                    prop_assert!(h.is_some(), "moved to an ineligible home");
                    arrive[h.unwrap()] += 1;
                }
            }
            let projected: Vec<usize> = left.iter().zip(&arrive).map(|(l, a)| l + a).collect();
            for (i, &h_load) in projected.iter().enumerate() {
                // Moved keys never push their home above its cap.
                if arrive[i] > 0 {
                    prop_assert!(h_load <= caps[i]);
                }
            }
            if plan.close.len() < budget {
                for i in 0..loads.len() {
                    if left[i] <= caps[i] {
                        continue;
                    }
                    // Still above: every remaining tunnel there is pinned.
                    for (k, p) in t.iter().enumerate() {
                        if seen.contains(&k) || loads.index(p.upstream) != Some(i) {
                            continue;
                        }
                        let movable = match p.home {
                            None => true,
                            Some(h) if h == p.upstream => false,
                            Some(h) => loads.index(h).is_some_and(|j| projected[j] < caps[j]),
                        };
                        prop_assert!(!movable, "tunnel {k} could still move");
                    }
                }
            }
            let needed: usize = loads
                .count
                .iter()
                .zip(&caps)
                .map(|(&l, &c)| l.saturating_sub(c))
                .sum();
            prop_assert_eq!(needed, plan.needed);
        }
    }
}
