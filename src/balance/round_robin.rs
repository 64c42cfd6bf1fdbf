//! Smooth weighted round-robin, nginx's default `upstream` strategy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::set::{LayoutCache, State};
use super::{pick_tiers, Balancer, Lease, Peer, PickContext, SelectError, UpstreamSet};

/// Smooth weighted round-robin (nginx `ngx_http_upstream_get_peer`).
///
/// Each pick adds every available peer's weight to its current weight,
/// takes the peer with the highest current weight (the first on a tie) and
/// subtracts the total from it. Weights 5, 1, 1 give `a a b a c a a`, spread
/// out rather than `a a a a a b c`. Unavailable peers sit the round out.
///
/// While every peer of a tier is available, picks follow a precomputed
/// round lock-free; otherwise they run nginx's locked scan (the two keep
/// separate positions, so the order restarts when switching).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{Balancer, PickContext, RoundRobin, Upstream, UpstreamSet};
///
/// let set = UpstreamSet::new();
/// set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?).weight(2));
/// set.add(Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?));
/// let rr = RoundRobin::new(set);
/// let request = http::Request::get("/").body(())?;
/// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
/// let ports: Vec<u16> = (0..3)
///     .map(|_| rr.pick(&ctx).map(|lease| lease.addr().port()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(ports, [9001, 9002, 9001]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RoundRobin {
    set: UpstreamSet,
    state: Mutex<Current>,
    cycles: LayoutCache<[Cycle; 2]>,
}

/// Current weights per tier, valid for one layout of the set; nginx resets
/// them on reload too.
#[derive(Debug, Default)]
struct Current {
    layout: u64,
    weights: [Vec<i64>; 2],
}

/// One full smooth round of a tier with every peer available, precomputed
/// so that the common case is one atomic increment instead of a locked
/// O(n) scan. Empty when the round would be too long to keep.
#[derive(Default)]
struct Cycle {
    order: Vec<u32>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cycle({} picks)", self.order.len())
    }
}

/// Longest precomputed round, and the most work spent building one
/// (round length × peers); beyond either, every pick takes the locked scan.
const CYCLE_MAX: u64 = 8192;
const CYCLE_WORK_MAX: u64 = 1 << 22;

impl Cycle {
    fn new(peers: &[Peer]) -> Self {
        let gcd = peers.iter().fold(0u64, |g, p| gcd(g, u64::from(p.weight)));
        let total: u64 = peers.iter().map(|p| u64::from(p.weight)).sum();
        let len = total.checked_div(gcd).unwrap_or(0);
        if len > CYCLE_MAX || len.saturating_mul(peers.len() as u64) > CYCLE_WORK_MAX {
            return Self::default();
        }
        let mut weights = vec![0i64; peers.len()];
        let order = (0..len)
            .filter_map(|_| smooth_step(peers, &mut weights, |_| true))
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        Self {
            order,
            next: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn next(&self) -> Option<usize> {
        let len = self.order.len();
        if len == 0 {
            return None;
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % len;
        self.order.get(at).map(|&i| i as usize)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One step of nginx's smooth weighted round-robin over the peers that
/// `available` accepts: raise each by its weight, take the highest (the
/// first on a tie), lower it by the total.
fn smooth_step(
    peers: &[Peer],
    weights: &mut [i64],
    available: impl Fn(&Peer) -> bool,
) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<(usize, i64)> = None;
    for ((i, peer), w) in peers.iter().enumerate().zip(weights.iter_mut()) {
        if !available(peer) {
            continue;
        }
        let weight = i64::from(peer.weight);
        *w += weight;
        total += weight;
        if best.map_or(true, |(_, top)| *w > top) {
            best = Some((i, *w));
        }
    }
    let (b, _) = best?;
    if let Some(w) = weights.get_mut(b) {
        *w -= total;
    }
    Some(b)
}

impl RoundRobin {
    /// Round-robin over `set`.
    pub fn new(set: UpstreamSet) -> Self {
        Self {
            set,
            state: Mutex::new(Current::default()),
            cycles: LayoutCache::default(),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let snapshot = self.set.load();
        let cycles = |state: &State| state.tiers().map(Cycle::new);
        self.cycles.with(&snapshot, cycles, |cycles| {
            pick_tiers(&snapshot, |tier, peers| {
                if snapshot.all_available(tier, ctx) {
                    if let Some(i) = cycles.get(tier).and_then(Cycle::next) {
                        return Some(i);
                    }
                }
                self.scan(&snapshot, tier, peers, ctx)
            })
        })
    }
}

impl RoundRobin {
    /// nginx's algorithm as is: O(n) under a short lock, as nginx holds its
    /// peers lock, because the smooth order needs every current weight
    /// updated together.
    fn scan(
        &self,
        snapshot: &State,
        tier: usize,
        peers: &[Peer],
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let mut current = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if current.layout != snapshot.layout
            || current
                .weights
                .iter()
                .zip(snapshot.tiers())
                .any(|(w, p)| w.len() != p.len())
        {
            current.layout = snapshot.layout;
            for (weights, peers) in current.weights.iter_mut().zip(snapshot.tiers()) {
                weights.clear();
                weights.resize(peers.len(), 0);
            }
        }
        let weights = current.weights.get_mut(tier)?;
        smooth_step(peers, weights, |p| p.is_available(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn order(rr: &RoundRobin, n: usize, failed: &[super::super::UpstreamId]) -> String {
        let request = request();
        let now = epoch();
        (0..n)
            .map(|_| {
                let lease = rr.pick(&ctx(&request, now).with_failed(failed)).unwrap();
                char::from(b'a' + port(&lease) as u8)
            })
            .collect()
    }

    #[test]
    fn smooth_weighted_order_is_nginx_order() {
        let (set, _) = set_of(&[5, 1, 1]);
        let rr = RoundRobin::new(set);
        assert_eq!(order(&rr, 14, &[]), "aabacaaaabacaa");
    }

    #[test]
    fn the_locked_scan_gives_the_same_order() {
        let (set, _) = set_of(&[5, 1, 1]);
        let rr = RoundRobin::new(set);
        // A failed id outside the set forces the per-peer scan.
        let other = super::super::UpstreamId(u64::MAX);
        assert_eq!(order(&rr, 14, &[other]), "aabacaaaabacaa");
    }

    #[test]
    fn long_rounds_are_not_precomputed_but_still_smooth() {
        let (set, _) = set_of(&[10_000, 1]);
        let rr = RoundRobin::new(set);
        let s = order(&rr, 10_001, &[]);
        assert_eq!(s.matches('b').count(), 1);
        assert_eq!(s.find('b'), Some(5000));
    }

    #[test]
    fn equal_weights_rotate() {
        let (set, _) = set_of(&[1, 1, 1]);
        assert_eq!(order(&RoundRobin::new(set), 6, &[]), "abcabc");
    }

    #[test]
    fn failed_upstream_sits_out_and_the_others_keep_their_ratio() {
        let (set, ids) = set_of(&[5, 1, 1]);
        let rr = RoundRobin::new(set);
        let s = order(&rr, 12, &[ids[0]]);
        assert_eq!(s, "bcbcbcbcbcbc");
    }

    #[test]
    fn weight_change_restarts_the_cycle() {
        let (set, ids) = set_of(&[1, 1]);
        let rr = RoundRobin::new(set.clone());
        assert_eq!(order(&rr, 3, &[]), "aba");
        set.set_weight(ids[1], 2);
        assert_eq!(order(&rr, 6, &[]), "babbab");
    }
}
