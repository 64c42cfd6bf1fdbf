//! Least connections: a full scan (nginx `least_conn`) and power-of-two
//! random choices (nginx `random two least_conn`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{pick_tiers, Balancer, Lease, Peer, PickContext, SelectError, UpstreamSet};

/// Whether `a` is less loaded than `b` relative to their weights
/// (`a.active / a.weight < b.active / b.weight`, cross-multiplied as nginx
/// does to stay in integers).
#[inline]
fn less_loaded(a: &Peer, b: &Peer) -> bool {
    let (a_active, b_active) = (a.active() as u128, b.active() as u128);
    a_active * u128::from(b.weight) < b_active * u128::from(a.weight)
}

/// The least loaded of `peers` (indexed from `base`) and `best` so far, as
/// (index, active), preferring the earlier on a tie: equal weights, so
/// plain counts compare. Returns true once an idle peer is found: nothing
/// later can beat it, so the scan stops.
#[inline]
fn least_in(
    peers: &[Peer],
    base: usize,
    all_available: bool,
    ctx: &PickContext<'_>,
    best: &mut Option<(usize, usize)>,
) -> bool {
    for (i, peer) in peers.iter().enumerate() {
        if !all_available && !peer.is_available(ctx) {
            continue;
        }
        let active = peer.active();
        if best.map_or(true, |(_, b_active)| active < b_active) {
            *best = Some((base + i, active));
            if active == 0 {
                return true;
            }
        }
    }
    false
}

/// The least loaded available peer of `peers` by open leases per unit of
/// weight (cross-multiplied, as nginx does, to stay in integers). Peers
/// tied for least share the picks in proportion to their weights, as
/// nginx breaks such ties by weighted round-robin: `turn` counts picks,
/// and each walks one step further through the tied peers' weights. With
/// short requests every peer is idle at each pick, so without this a
/// `weight=3` upstream would get no more than a `weight=1` one.
fn weighted_least(
    peers: &[Peer],
    all_available: bool,
    ctx: &PickContext<'_>,
    turn: usize,
) -> Option<usize> {
    let available = |peer: &Peer| all_available || peer.is_available(ctx);
    let load = |peer: &Peer| (peer.active() as u128, u128::from(peer.weight));
    // The least load as (index, active, weight), and the tied peers' weight.
    let mut best: Option<(usize, u128, u128)> = None;
    let mut tied: u128 = 0;
    for (i, peer) in peers.iter().enumerate().filter(|(_, p)| available(p)) {
        let (active, weight) = load(peer);
        match best {
            Some((_, b_active, b_weight)) if active * b_weight > b_active * weight => {}
            Some((_, b_active, b_weight)) if active * b_weight == b_active * weight => {
                tied += weight;
            }
            _ => {
                best = Some((i, active, weight));
                tied = weight;
            }
        }
    }
    let (first, b_active, b_weight) = best?;
    let mut step = turn as u128 % tied.max(1);
    // Other picks may have moved a count since the first pass, so that no
    // peer takes this turn: then the last one still tied, not `first`,
    // which may be the one whose count moved.
    let mut still_tied = None;
    for (i, peer) in peers.iter().enumerate() {
        let (active, weight) = load(peer);
        if !available(peer) || active * b_weight != b_active * weight {
            continue;
        }
        if step < weight {
            return Some(i);
        }
        step -= weight;
        still_tied = Some(i);
    }
    Some(still_tied.unwrap_or(first))
}

/// Weighted least connections (nginx `least_conn`).
///
/// Picks the available peer with the fewest open leases per unit of weight.
/// Ties are broken by weighted round-robin, as nginx does: with equal
/// weights each pick starts its scan one peer further and the first
/// least-loaded peer from there wins; otherwise the tied peers take turns
/// in proportion to their weights.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{Balancer, LeastConn, PickContext, Upstream, UpstreamSet};
///
/// let set: UpstreamSet = (9001..=9002)
///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
///     .collect();
/// let least = LeastConn::new(set);
/// let request = http::Request::get("/").body(())?;
/// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
/// let first = least.pick(&ctx)?;
/// let second = least.pick(&ctx)?; // the other one: it has no connection
/// assert_ne!(first.id(), second.id());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LeastConn {
    set: UpstreamSet,
    next: AtomicUsize,
}

impl LeastConn {
    /// Least connections over `set`.
    pub fn new(set: UpstreamSet) -> Self {
        Self {
            set,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for LeastConn {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let state = self.set.load();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        pick_tiers(&state, |tier, peers| {
            // Skipping the per-peer availability check when nothing can be
            // unavailable halves the scan at 100 upstreams.
            let all = state.all_available(tier, ctx);
            let n = peers.len();
            if n == 0 {
                return None;
            }
            if !state.uniform_weight(tier) {
                return weighted_least(peers, all, ctx, start);
            }
            let offset = start % n;
            let (front, back) = peers.split_at(offset);
            let mut best = None;
            if !least_in(back, offset, all, ctx, &mut best) {
                least_in(front, 0, all, ctx, &mut best);
            }
            best.map(|(i, _)| i)
        })
    }
}

/// Power-of-two random choices (nginx `random two least_conn`).
///
/// Draws two distinct available peers at random, weighted, and takes the
/// less loaded (the first on a tie). Nearly as even as [`LeastConn`], with
/// O(log n) work per pick instead of a full scan, and no herd onto one
/// "least" peer when many gateways share upstreams.
///
/// Randomness is wyrand via `fastrand`, seeded per pick from one atomic
/// counter: lock-free, and reproducible with [`RandomTwo::with_seed`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{Balancer, PickContext, RandomTwo, Upstream, UpstreamSet};
///
/// let set: UpstreamSet = (9001..=9003)
///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
///     .collect();
/// let random = RandomTwo::with_seed(set, 7);
/// let request = http::Request::get("/").body(())?;
/// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
/// let leases = (0..3).map(|_| random.pick(&ctx)).collect::<Result<Vec<_>, _>>()?;
/// assert!(leases.iter().all(|l| (9001..=9003).contains(&l.addr().port())));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RandomTwo {
    set: UpstreamSet,
    seed: AtomicU64,
}

/// Draws per choice before giving up on finding an available peer at
/// random, as nginx's `random` tries 20 times, then scans.
const DRAWS: usize = 20;

/// Odd constant stepping the per-pick seed (the wyrand increment).
const STEP: u64 = 0xa076_1d64_78bd_642f;

impl RandomTwo {
    /// Random two over `set`, seeded from std's per-process random keys so
    /// that gateways sharing upstreams do not draw in lockstep.
    pub fn new(set: UpstreamSet) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self::with_seed(set, seed)
    }

    /// Random two over `set` with a fixed seed, for reproducible tests.
    pub fn with_seed(set: UpstreamSet, seed: u64) -> Self {
        Self {
            set,
            seed: AtomicU64::new(seed),
        }
    }
}

impl Balancer for RandomTwo {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let state = self.set.load();
        let mut rng = fastrand::Rng::with_seed(self.seed.fetch_add(STEP, Ordering::Relaxed));
        pick_tiers(&state, |tier, peers| {
            let total = state.total_weight(tier);
            if total == 0 {
                return None;
            }
            let mut draw = |not: Option<usize>| {
                (0..DRAWS)
                    .map(|_| state.by_weight(tier, rng.u64(..total)))
                    .find(|&i| Some(i) != not && peers.get(i).is_some_and(|p| p.is_available(ctx)))
            };
            let Some(first) = draw(None) else {
                // Unlucky or mostly unavailable: fall back to a scan.
                return peers.iter().position(|p| p.is_available(ctx));
            };
            let Some(second) = draw(Some(first)) else {
                return Some(first);
            };
            match (peers.get(first), peers.get(second)) {
                (Some(a), Some(b)) if less_loaded(b, a) => Some(second),
                _ => Some(first),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn least_conn_moves_to_the_less_loaded_after_leases_drop() {
        let (set, _) = set_of(&[1, 1, 1]);
        let b = LeastConn::new(set);
        let request = request();
        let now = epoch();
        let pick = || b.pick(&ctx(&request, now)).unwrap();
        // Ties rotate: one lease on each.
        let mut leases: Vec<Lease> = (0..3).map(|_| pick()).collect();
        let mut ports: Vec<u16> = leases.iter().map(port).collect();
        ports.sort_unstable();
        assert_eq!(ports, [0, 1, 2]);
        // Two more on each; then 1 loses all of its: it takes the next two.
        leases.extend((0..6).map(|_| pick()));
        leases.retain(|l| port(l) != 1);
        assert_eq!(port(&pick()), 1);
        let again = pick();
        assert_eq!(port(&again), 1);
        leases.push(again);
    }

    #[test]
    fn least_conn_weighs_connections_by_weight() {
        let (set, _) = set_of(&[3, 1]);
        let b = LeastConn::new(set.clone());
        let request = request();
        let now = epoch();
        let leases: Vec<Lease> = (0..40)
            .map(|_| b.pick(&ctx(&request, now)).unwrap())
            .collect();
        let heavy = leases.iter().filter(|l| port(l) == 0).count();
        assert_eq!(heavy, 30);
    }

    #[test]
    fn least_conn_ties_follow_the_weights() {
        // Short requests: every lease ends before the next pick, so every
        // pick finds all idle (nginx breaks the tie by weight).
        let (set, _) = set_of(&[3, 1, 2]);
        let b = LeastConn::new(set);
        let request = request();
        let now = epoch();
        let mut by_port = [0; 3];
        for _ in 0..600 {
            by_port[port(&b.pick(&ctx(&request, now)).unwrap()) as usize] += 1;
        }
        assert_eq!(by_port, [300, 100, 200]);
    }

    #[test]
    fn least_conn_ties_among_the_least_loaded_only() {
        let (set, ids) = set_of(&[3, 1, 2]);
        let b = LeastConn::new(set.clone());
        let request = request();
        let now = epoch();
        // Upstream 0 holds 3 leases (1 per weight), 1 holds 1 (1 per
        // weight), 2 holds 4 (2 per weight): 0 and 1 tie, 3 to 1.
        let snapshot = set.snapshot();
        let held: Vec<Lease> = [(0, 3), (1, 1), (2, 4)]
            .iter()
            .flat_map(|&(i, n)| (0..n).map(move |_| i))
            .map(|i: usize| snapshot.get(ids[i]).unwrap().lease())
            .collect();
        let mut by_port = [0; 3];
        for _ in 0..400 {
            by_port[port(&b.pick(&ctx(&request, now)).unwrap()) as usize] += 1;
        }
        assert_eq!(by_port, [300, 100, 0]);
        drop(held);
    }

    #[test]
    fn least_conn_ties_rotate_round_robin() {
        let (set, _) = set_of(&[1, 1, 1]);
        let b = LeastConn::new(set);
        let request = request();
        let now = epoch();
        let order: Vec<u16> = (0..6)
            .map(|_| port(&b.pick(&ctx(&request, now)).unwrap()))
            .collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn random_two_is_reproducible_with_a_seed_and_prefers_the_less_loaded() {
        let (set, ids) = set_of(&[1, 1, 1, 1]);
        let request = request();
        let now = epoch();
        let a = RandomTwo::with_seed(set.clone(), 42);
        let b = RandomTwo::with_seed(set.clone(), 42);
        for _ in 0..50 {
            let x = a.pick(&ctx(&request, now)).unwrap().id();
            let y = b.pick(&ctx(&request, now)).unwrap().id();
            assert_eq!(x, y);
        }
        // Load upstream 0 heavily: it is never chosen over an idle one, so
        // it only wins when both draws... cannot be it twice: never.
        let held: Vec<Lease> = (0..100)
            .map(|_| set.snapshot().get(ids[0]).unwrap().lease())
            .collect();
        let mut leases = Vec::new();
        for _ in 0..200 {
            let lease = a.pick(&ctx(&request, now)).unwrap();
            assert_ne!(lease.id(), ids[0]);
            leases.push(lease);
        }
        // Two-choices keeps the others within a few of each other.
        let snapshot = set.snapshot();
        let loads: Vec<usize> = snapshot.primaries()[1..]
            .iter()
            .map(|p| p.active())
            .collect();
        let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
        assert!(spread <= 4, "{loads:?}");
        drop(held);
    }

    #[test]
    fn random_two_skips_failed_and_finds_the_last_one() {
        let (set, ids) = set_of(&[1; 8]);
        let b = RandomTwo::with_seed(set, 1);
        let request = request();
        let now = epoch();
        let failed = &ids[..7];
        for _ in 0..50 {
            let lease = b.pick(&ctx(&request, now).with_failed(failed)).unwrap();
            assert_eq!(lease.id(), ids[7]);
        }
    }
}
