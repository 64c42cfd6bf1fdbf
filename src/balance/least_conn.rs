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
/// (index, active, weight), preferring the earlier on a tie. Loads compare
/// as `a / wa < b / wb` cross-multiplied, as nginx does. Returns true once
/// an idle peer is found: nothing later can beat it, so the scan stops.
#[inline]
fn least_in(
    peers: &[Peer],
    base: usize,
    all_available: bool,
    uniform: bool,
    ctx: &PickContext<'_>,
    best: &mut Option<(usize, u128, u128)>,
) -> bool {
    if all_available && uniform {
        // Equal weights, all available: plain counts, no multiplication.
        for (i, peer) in peers.iter().enumerate() {
            let active = peer.active() as u128;
            if best.map_or(true, |(_, b_active, _)| active < b_active) {
                *best = Some((base + i, active, u128::from(peer.weight)));
                if active == 0 {
                    return true;
                }
            }
        }
        return false;
    }
    for (i, peer) in peers.iter().enumerate() {
        if !all_available && !peer.is_available(ctx) {
            continue;
        }
        let (active, weight) = (peer.active() as u128, u128::from(peer.weight));
        match *best {
            Some((_, b_active, b_weight)) if active * b_weight >= b_active * weight => {}
            _ => {
                *best = Some((base + i, active, weight));
                if active == 0 {
                    return true;
                }
            }
        }
    }
    false
}

/// Weighted least connections (nginx `least_conn`).
///
/// Picks the available peer with the fewest open leases per unit of weight.
/// Ties are broken round-robin: each pick starts its scan one peer further,
/// and the first least-loaded peer from there wins.
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
            let offset = start % n;
            let (front, back) = peers.split_at(offset);
            let mut best = None;
            let uniform = state.uniform_weight(tier);
            if !least_in(back, offset, all, uniform, ctx, &mut best) {
                least_in(front, 0, all, uniform, ctx, &mut best);
            }
            best.map(|(i, _, _)| i)
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
