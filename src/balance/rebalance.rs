//! Which long-lived connections to move so that loads even out again: the
//! sans-IO planner behind [`Rebalancer`](crate::proxy::Rebalancer).
//!
//! Balancers place new connections; WebSocket connections then stay where
//! they were placed for hours. After an upstream joins (or loads drift), a
//! [`Rebalance`] plan names the fewest open connections to close so that,
//! once their clients reconnect through the balancer, no upstream holds more
//! than its share times a factor.

use std::collections::HashMap;

use super::{Snapshot, UpstreamId};

/// One open connection as the planner sees it: where it runs, and where its
/// key would be placed now ([`Balancer::home`](super::Balancer::home)).
/// `home: None` means the strategy keeps no affinity: it may move anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The upstream it runs on.
    pub upstream: UpstreamId,
    /// Where a strategy with affinity would place it now.
    pub home: Option<UpstreamId>,
}

/// How even a placement is: the most loaded upstream against the mean, over
/// the upstreams that may take connections.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LoadSpread {
    /// Connections on the most loaded eligible upstream.
    pub max: usize,
    /// Connections per eligible upstream, on average (weights aside).
    pub mean: f64,
    /// Connections on eligible upstreams.
    pub total: usize,
    /// Eligible upstreams: available primaries.
    pub upstreams: usize,
}

impl LoadSpread {
    /// The spread of `placed` over the eligible upstreams of `snapshot`
    /// (primaries that are not down, check-down or draining); connections on
    /// other upstreams are left out.
    pub fn of(snapshot: &Snapshot, placed: &[Placed]) -> Self {
        let loads = loads(snapshot, placed);
        let total: usize = loads.values().map(|l| l.count).sum();
        let upstreams = loads.len();
        Self {
            max: loads.values().map(|l| l.count).max().unwrap_or(0),
            mean: if upstreams == 0 {
                0.0
            } else {
                total as f64 / upstreams as f64
            },
            total,
            upstreams,
        }
    }

    /// `max / mean`: 1.0 is perfectly even; 1.0 too when nothing is open.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::net::SocketAddr;
    /// use wsproxy::balance::{LoadSpread, Placed, Upstream, UpstreamSet};
    ///
    /// let set = UpstreamSet::new();
    /// let a = set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
    /// set.add(Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?));
    /// let placed = [Placed { upstream: a, home: None }; 4];
    /// // Four connections, all on one of two upstreams: twice the mean.
    /// assert_eq!(LoadSpread::of(&set.snapshot(), &placed).ratio(), 2.0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn ratio(&self) -> f64 {
        if self.total == 0 || self.mean == 0.0 {
            1.0
        } else {
            self.max as f64 / self.mean
        }
    }
}

/// The default factor: HAProxy's `hash-balance-factor 125`, the bound
/// [`BoundedLoad`](super::BoundedLoad) places with.
const DEFAULT_FACTOR: f64 = 1.25;

/// The rebalancing target: no upstream above `factor ×` its share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebalance {
    factor: f64,
}

impl Default for Rebalance {
    fn default() -> Self {
        Self {
            factor: DEFAULT_FACTOR,
        }
    }
}

/// A [`Rebalance`] factor that is not a number of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("rebalance factor {0} is not a number of at least 1")]
pub struct FactorError(pub f64);

/// What to close, and the figures it was planned from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Plan {
    /// Indices into the planned connections, to close in this order.
    pub close: Vec<usize>,
    /// The spread the plan started from.
    pub spread: LoadSpread,
    /// The fewest closes that bring every eligible upstream down to its cap,
    /// were every connection free to move. With affinity, `close` may fall
    /// short of it: connections whose key still maps to their upstream stay.
    pub needed: usize,
}

/// One eligible upstream's load and weight.
#[derive(Debug, Clone, Copy)]
struct Load {
    count: usize,
    weight: u32,
}

/// Eligible upstreams (available primaries) and their connection counts.
fn loads(snapshot: &Snapshot, placed: &[Placed]) -> HashMap<UpstreamId, Load> {
    let mut loads: HashMap<UpstreamId, Load> = snapshot
        .primaries()
        .iter()
        .filter(|p| !p.is_down() && !p.is_check_down() && !p.is_draining())
        .map(|p| {
            (
                p.id(),
                Load {
                    count: 0,
                    weight: p.weight(),
                },
            )
        })
        .collect();
    for p in placed {
        if let Some(load) = loads.get_mut(&p.upstream) {
            load.count += 1;
        }
    }
    loads
}

impl Rebalance {
    /// The cap of each eligible upstream for the total of `loads`.
    fn caps(&self, loads: &HashMap<UpstreamId, Load>) -> HashMap<UpstreamId, usize> {
        let total: usize = loads.values().map(|l| l.count).sum();
        let total_weight: u64 = loads.values().map(|l| u64::from(l.weight)).sum();
        loads
            .iter()
            .map(|(&id, load)| {
                let cap = if total_weight == 0 {
                    usize::MAX
                } else {
                    let share = total as f64 * f64::from(load.weight) / total_weight as f64;
                    ((self.factor * share).floor() as usize).max(share.ceil() as usize)
                };
                (id, cap)
            })
            .collect()
    }

    /// A target of `factor ×` each upstream's share (at least 1.0).
    ///
    /// # Errors
    ///
    /// [`FactorError`] for NaN, infinity or a factor below 1.
    pub fn new(factor: f64) -> Result<Self, FactorError> {
        if factor.is_finite() && factor >= 1.0 {
            Ok(Self { factor })
        } else {
            Err(FactorError(factor))
        }
    }

    /// The factor.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// Plans which of `placed` to close, at most `budget` of them.
    ///
    /// The cap of an eligible upstream is `factor × total × weight / Σ
    /// weights`, rounded down and at least its rounded-up share (so that
    /// small totals do not churn). Only upstreams above their cap shed, each
    /// down to its cap, the most overloaded first when the budget is short;
    /// connections are taken in the order given (put the ones to move first
    /// first). With affinity (`home` set) only connections whose home is
    /// another upstream are candidates. Connections on upstreams that are
    /// not eligible (down, draining, removed) are not counted nor moved:
    /// closing those is the host's call (see
    /// [`HealthChecker::close_on_down`](crate::health::HealthChecker::close_on_down)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::net::SocketAddr;
    /// use wsproxy::balance::{Placed, Rebalance, Upstream, UpstreamSet};
    ///
    /// let set = UpstreamSet::new();
    /// let a = set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
    /// let b = set.add(Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?));
    /// let mut placed = vec![Placed { upstream: a, home: None }; 500];
    /// placed.extend(vec![Placed { upstream: b, home: None }; 500]);
    /// // A third upstream joins: 500/500/0, mean 333, cap 416.
    /// set.add(Upstream::new("127.0.0.1:9003".parse::<SocketAddr>()?));
    /// let plan = Rebalance::default().plan(&set.snapshot(), &placed, usize::MAX);
    /// assert_eq!((plan.close.len(), plan.needed), (168, 168));
    /// assert_eq!(plan.spread.ratio(), 1.5);
    /// # Ok(())
    /// # }
    /// ```
    pub fn plan(&self, snapshot: &Snapshot, placed: &[Placed], budget: usize) -> Plan {
        let spread = LoadSpread::of(snapshot, placed);
        let loads = loads(snapshot, placed);
        let caps = self.caps(&loads);
        // Overloaded upstreams, the largest excess first.
        let mut excess: Vec<(UpstreamId, usize)> = loads
            .iter()
            .filter_map(|(id, load)| Some((*id, load.count.checked_sub(*caps.get(id)?)?)))
            .filter(|&(_, e)| e > 0)
            .collect();
        excess.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let needed = excess.iter().map(|&(_, e)| e).sum();

        // Each overloaded upstream's candidates, in the order given.
        let mut candidates: HashMap<UpstreamId, Vec<usize>> = HashMap::new();
        for (i, p) in placed.iter().enumerate() {
            let movable = p.home != Some(p.upstream);
            if movable && excess.iter().any(|&(id, _)| id == p.upstream) {
                candidates.entry(p.upstream).or_default().push(i);
            }
        }
        // Round-robin over the overloaded upstreams, so that a short budget
        // is shared between them instead of spent on the first.
        let mut taken: Vec<(UpstreamId, usize, std::vec::IntoIter<usize>)> = excess
            .iter()
            .map(|&(id, e)| {
                (
                    id,
                    e,
                    candidates.remove(&id).unwrap_or_default().into_iter(),
                )
            })
            .collect();
        let mut close = Vec::new();
        while close.len() < budget {
            let mut progressed = false;
            for (_, left, iter) in &mut taken {
                if close.len() == budget {
                    break;
                }
                if *left == 0 {
                    continue;
                }
                if let Some(i) = iter.next() {
                    close.push(i);
                    *left -= 1;
                    progressed = true;
                } else {
                    *left = 0;
                }
            }
            if !progressed {
                break;
            }
        }
        Plan {
            close,
            spread,
            needed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testutil::set_of;
    use proptest::prelude::*;

    fn on(upstream: UpstreamId, n: usize) -> Vec<Placed> {
        vec![
            Placed {
                upstream,
                home: None
            };
            n
        ]
    }

    #[test]
    fn a_joining_upstream_gets_the_minimum_moved_to_it() {
        let (set, ids) = set_of(&[1, 1, 1]);
        let mut placed = on(ids[0], 500);
        placed.extend(on(ids[1], 500));
        let plan = Rebalance::default().plan(&set.snapshot(), &placed, usize::MAX);
        assert_eq!(plan.needed, 168);
        assert_eq!(plan.close.len(), 168);
        let from_a = plan.close.iter().filter(|&&i| i < 500).count();
        assert_eq!((from_a, 168 - from_a), (84, 84));
        assert_eq!(plan.spread.max, 500);
        assert!((plan.spread.mean - 1000.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_balanced_group_moves_nothing_and_small_totals_do_not_churn() {
        let (set, ids) = set_of(&[1, 1, 1]);
        let mut placed = on(ids[0], 400);
        placed.extend(on(ids[1], 333));
        placed.extend(on(ids[2], 267));
        let plan = Rebalance::default().plan(&set.snapshot(), &placed, usize::MAX);
        assert!(plan.close.is_empty());
        assert_eq!(plan.needed, 0);
        // One connection alone never moves (its share rounds up to one);
        // two on one of three: one does.
        let plan = Rebalance::default().plan(&set.snapshot(), &on(ids[0], 1), usize::MAX);
        assert!(plan.close.is_empty());
        let plan = Rebalance::default().plan(&set.snapshot(), &on(ids[0], 2), usize::MAX);
        assert_eq!(plan.close.len(), 1);
    }

    #[test]
    fn weights_set_each_share() {
        let (set, ids) = set_of(&[3, 1]);
        // 600 and 400 of 1,000: the weight-1 upstream's cap is 312.
        let mut placed = on(ids[0], 600);
        placed.extend(on(ids[1], 400));
        let plan = Rebalance::default().plan(&set.snapshot(), &placed, usize::MAX);
        assert_eq!(plan.needed, 88);
        assert!(plan.close.iter().all(|&i| i >= 600));
    }

    #[test]
    fn affinity_moves_only_keys_that_map_elsewhere() {
        let (set, ids) = set_of(&[1, 1, 1]);
        let placed: Vec<Placed> = (0..1000)
            .map(|i| Placed {
                upstream: ids[i % 2],
                // A third of the keys now map to the new upstream.
                home: Some(if i % 3 == 0 { ids[2] } else { ids[i % 2] }),
            })
            .collect();
        let plan = Rebalance::default().plan(&set.snapshot(), &placed, usize::MAX);
        assert_eq!(plan.needed, 168);
        assert_eq!(plan.close.len(), 168);
        assert!(plan.close.iter().all(|&i| placed[i].home == Some(ids[2])));
    }

    #[test]
    fn a_short_budget_is_shared_by_the_overloaded_upstreams() {
        let (set, ids) = set_of(&[1, 1, 1]);
        let mut placed = on(ids[0], 500);
        placed.extend(on(ids[1], 500));
        let plan = Rebalance::default().plan(&set.snapshot(), &placed, 10);
        assert_eq!(plan.close.len(), 10);
        assert_eq!(plan.close.iter().filter(|&&i| i < 500).count(), 5);
    }

    #[test]
    fn down_upstreams_neither_count_nor_shed_and_odd_inputs_are_fine() {
        let (set, ids) = set_of(&[1, 1, 1]);
        set.set_down(ids[2], true);
        let mut placed = on(ids[0], 10);
        placed.extend(on(ids[2], 90));
        placed.extend(on(UpstreamId(99), 5));
        let plan = Rebalance::default().plan(&set.snapshot(), &placed, usize::MAX);
        // Eligible: 10 and 0 of 10; share 5, cap 6: 4 move from the first.
        assert_eq!(plan.spread.total, 10);
        assert_eq!(plan.needed, 4);
        assert!(plan.close.iter().all(|&i| i < 10));

        let (empty, _) = set_of(&[]);
        let plan = Rebalance::default().plan(&empty.snapshot(), &placed, usize::MAX);
        assert!(plan.close.is_empty());
        assert_eq!(plan.spread.ratio(), 1.0);
        for bad in [f64::NAN, 0.5, f64::INFINITY] {
            assert!(Rebalance::new(bad).is_err());
        }
        assert_eq!(Rebalance::new(1e300).map(|r| r.factor()), Ok(1e300));
    }

    proptest! {
        #[test]
        fn plans_close_distinct_movable_connections_down_to_the_caps(
            weights in proptest::collection::vec(1u32..4, 1..6),
            spots in proptest::collection::vec((0usize..6, proptest::option::of(0usize..6)), 0..300),
            factor in 1.0f64..2.0,
            budget in 0usize..400,
        ) {
            let (set, ids) = set_of(&weights);
            let pick = |i: usize| ids[i % ids.len()];
            let placed: Vec<Placed> = spots
                .iter()
                .map(|&(u, h)| Placed { upstream: pick(u), home: h.map(pick) })
                .collect();
            let rebalance = Rebalance::new(factor).unwrap();
            let plan = rebalance.plan(&set.snapshot(), &placed, budget);
            let distinct: std::collections::HashSet<_> = plan.close.iter().collect();
            prop_assert_eq!(distinct.len(), plan.close.len());
            prop_assert!(plan.close.len() <= budget);
            prop_assert!(plan.close.len() <= plan.needed);
            for &i in &plan.close {
                prop_assert!(i < placed.len());
                prop_assert!(placed[i].home != Some(placed[i].upstream));
            }
            // Without affinity and with budget to spare: once the closed
            // connections reconnect, each to the least loaded upstream (as
            // least-conn places them), no upstream is above its cap.
            if plan.close.len() < budget && placed.iter().all(|p| p.home.is_none()) {
                let before = loads(&set.snapshot(), &placed);
                let caps = rebalance.caps(&before);
                let mut after = before.clone();
                for &i in &plan.close {
                    if let Some(l) = after.get_mut(&placed[i].upstream) {
                        l.count -= 1;
                    }
                }
                for _ in &plan.close {
                    let least = after
                        .iter_mut()
                        .min_by(|a, b| {
                            let ka = a.1.count as f64 / f64::from(a.1.weight);
                            let kb = b.1.count as f64 / f64::from(b.1.weight);
                            ka.total_cmp(&kb)
                        })
                        .map(|(_, l)| l);
                    if let Some(l) = least {
                        l.count += 1;
                    }
                }
                for (id, l) in &after {
                    prop_assert!(l.count <= caps[id], "{:?} over its cap {}", l, caps[id]);
                }
            }
        }
    }
}
