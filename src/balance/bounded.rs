//! Consistent hashing with bounded loads.

use std::time::Instant;

use super::ring::{ConsistentHash, HashKey, Rings};
use super::{Affinity, Balancer, Lease, Peer, PickContext, SelectError, UpstreamId, UpstreamSet};

/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
/// 2016; HAProxy `hash-balance-factor`).
///
/// Keys keep their ring affinity, but an upstream holding its share of
/// `factor × mean` open connections is passed over for the next one
/// clockwise. With `n` open connections over upstreams of routable weight
/// `W`, an upstream of weight `w` takes a new one only while it holds fewer
/// than `ceil(factor × (n + 1) × w / W)`: the most loaded never exceeds
/// `ceil(factor × mean)`. Long-lived WebSocket connections make this matter:
/// plain consistent hashing lets one hot key pin a backend for hours.
///
/// The count is the set's open leases, as HAProxy counts the whole backend;
/// leases still open on removed upstreams count until they close.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{Balancer, BoundedLoad, HashKey, PickContext, Upstream, UpstreamSet};
///
/// let set: UpstreamSet = (9001..=9002)
///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
///     .collect();
/// let bounded = BoundedLoad::new(set, HashKey::Query("room".into())).factor(1.25);
/// let request = http::Request::get("/ws?room=hot").body(())?;
/// let ctx = PickContext::new("127.0.0.1".parse()?, &request, Instant::now());
/// // One hot room: 8 connections still split 5/3, never 8/0.
/// let leases = (0..8).map(|_| bounded.pick(&ctx)).collect::<Result<Vec<_>, _>>()?;
/// let on_first = leases.iter().filter(|l| l.id() == leases[0].id()).count();
/// assert_eq!(on_first, 5); // ceil(1.25 × 8 / 2)
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct BoundedLoad {
    /// The ring walk, key and affinity are plain consistent hashing's; only
    /// the load bound is this strategy's own.
    ring: ConsistentHash,
    /// The factor in thousandths: integer capacities, so that a bound such
    /// as 1.1 × 1000 is exactly 1100, not 1100.0000000000002 rounded up.
    factor_milli: u64,
}

/// HAProxy's documented suggestion, `hash-balance-factor 125`; also
/// [`Rebalance`](super::Rebalance)'s default, so that the bound new
/// connections respect is the one rebalancing restores.
pub(super) const DEFAULT_FACTOR_MILLI: u64 = 1250;

/// A load factor in thousandths, as both bounded placement and rebalancing
/// keep it: integer caps, so that 1.1 × 1000 is exactly 1100, not
/// 1100.0000000000002 or 1099.9999999999998 rounded the wrong way.
pub(super) fn milli(factor: f64) -> u128 {
    // `as` saturates: infinity is a cap never reached, and NaN (which the
    // callers keep out) would be 0.
    (factor * 1000.0).round() as u128
}

impl BoundedLoad {
    /// Bounded-load consistent hashing of `key` over `set`, factor 1.25.
    pub fn new(set: UpstreamSet, key: HashKey) -> Self {
        Self {
            ring: ConsistentHash::new(set, key),
            factor_milli: DEFAULT_FACTOR_MILLI,
        }
    }

    /// The load bound over the mean (HAProxy `hash-balance-factor`, there
    /// in percent). Values below 1.0 cannot be met and are raised to 1.0
    /// (perfect balance, least affinity); NaN keeps the default. Kept to
    /// a thousandth.
    #[must_use]
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor_milli = if factor.is_nan() {
            DEFAULT_FACTOR_MILLI
        } else {
            // Saturating: infinity is a bound never reached.
            u64::try_from(milli(factor.max(1.0))).unwrap_or(u64::MAX)
        };
        self
    }
}

impl Balancer for BoundedLoad {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let ConsistentHash { set, key, rings } = &self.ring;
        let state = set.load();
        let hash = key.hash_or_addr(ctx);
        // The mean counts the connection being placed (the paper's `m + 1`).
        let placed = set.active_total() as u128 + 1;
        let scaled = u128::from(self.factor_milli).saturating_mul(placed);
        // ceil(factor × placed × w / W) in integers, W the tier's routable
        // weight. When every available peer is full (only when some are
        // unhealthy, so W overstates capacity) the walk keeps affinity.
        let below_bound = |tier: usize| {
            let routable = u128::from(state.routable_weight(tier).max(1)) * 1000;
            move |peer: &Peer| {
                let capacity = scaled
                    .saturating_mul(u128::from(peer.weight))
                    .div_ceil(routable);
                (peer.active() as u128) < capacity
            }
        };
        rings.with(&state, Rings::new, |rings| {
            rings
                .place(&state, hash, |peer| peer.is_available(ctx), below_bound)
                .map(Peer::lease)
                .ok_or(SelectError::NoneAvailable)
        })
    }

    /// The key's hash, as [`ConsistentHash`](super::ConsistentHash) gives it.
    fn affinity(&self, ctx: &PickContext<'_>) -> Option<Affinity> {
        self.ring.affinity(ctx)
    }

    /// The ring owner, load bounds aside: where the key goes while nobody
    /// is above the bound, and so where a rebalance may send it back.
    fn home(&self, affinity: Affinity, now: Instant) -> Option<UpstreamId> {
        self.ring.home(affinity, now)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Lease;
    use super::*;
    use std::net::IpAddr;

    fn loads(set: &UpstreamSet, n: usize) -> Vec<usize> {
        let snapshot = set.snapshot();
        let mut loads: Vec<usize> = snapshot.primaries().iter().map(|p| p.active()).collect();
        loads.resize(n, 0);
        loads
    }

    #[test]
    fn never_more_than_factor_times_mean() {
        let (set, _) = set_of(&[1; 10]);
        let b = BoundedLoad::new(set.clone(), HashKey::RemoteAddr);
        let request = request();
        let now = epoch();
        let mut leases: Vec<Lease> = Vec::new();
        for i in 0..2000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            leases.push(b.pick(&PickContext::new(ip, &request, now)).unwrap());
            // ceil(1.25 × n / 10), exactly.
            let bound = (125 * leases.len()).div_ceil(1000);
            assert!(loads(&set, 10).iter().all(|&l| l <= bound), "{i}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Any mix of opens (few distinct keys, so hot ones) and closes: the
        /// upstream a connection lands on holds at most ceil(1.25 × mean).
        #[test]
        fn a_new_connection_never_lands_above_the_bound(
            ops in proptest::collection::vec((proptest::bool::weighted(0.7), 0u8..6), 1..300),
        ) {
            let (set, _) = set_of(&[1, 2, 1, 1]);
            let b = BoundedLoad::new(set.clone(), HashKey::Path);
            let mut leases: Vec<Lease> = Vec::new();
            for (open, key) in ops {
                if open {
                    let request = http::Request::get(format!("/{key}")).body(()).unwrap();
                    let lease = b.pick(&ctx(&request, epoch())).unwrap();
                    leases.push(lease);
                    let snapshot = set.snapshot();
                    let peer = snapshot.get(leases[leases.len() - 1].id()).unwrap();
                    // ceil(1.25 × n × w / W) with W = 5.
                    let bound = (125 * leases.len() * peer.weight() as usize).div_ceil(500);
                    proptest::prop_assert!(peer.active() <= bound);
                } else if !leases.is_empty() {
                    drop(leases.swap_remove(usize::from(key) % leases.len()));
                }
            }
        }
    }

    #[test]
    fn one_hot_key_spills_over_in_ring_order() {
        let (set, _) = set_of(&[1; 4]);
        let b = BoundedLoad::new(set.clone(), HashKey::Path);
        let request = http::Request::get("/hot").body(()).unwrap();
        let now = epoch();
        let leases: Vec<Lease> = (0..40)
            .map(|_| b.pick(&ctx(&request, now)).unwrap())
            .collect();
        // The ring order plain consistent hashing walks for the key.
        let plain = ConsistentHash::new(set.clone(), HashKey::Path);
        let home = plain.pick(&ctx(&request, now)).unwrap().id();
        let next = plain
            .pick(&ctx(&request, now).with_failed(&[home]))
            .unwrap()
            .id();
        let third = plain
            .pick(&ctx(&request, now).with_failed(&[home, next]))
            .unwrap()
            .id();
        // The first goes home; with one open the cap is ceil(1.25 × 2 / 4)
        // = 1, so the second spills to the next upstream clockwise, and the
        // third (cap still 1) to the one after it.
        let first: Vec<UpstreamId> = leases.iter().take(3).map(Lease::id).collect();
        assert_eq!(first, [home, next, third]);
        let mut l = loads(&set, 4);
        l.sort_unstable();
        // ceil(1.25 × 40 / 4) = 13 at most anywhere; 40 fit.
        assert!(l.iter().all(|&x| x <= 13), "{l:?}");
        assert_eq!(l.iter().sum::<usize>(), 40);
        drop(leases);
        assert_eq!(loads(&set, 4), [0; 4]);
    }

    #[test]
    fn keeps_affinity_while_under_the_bound() {
        let (set, _) = set_of(&[1; 5]);
        let b = BoundedLoad::new(set.clone(), HashKey::Path);
        let plain = super::super::ConsistentHash::new(set, HashKey::Path);
        let now = epoch();
        for i in 0..50 {
            let request = http::Request::get(format!("/{i}")).body(()).unwrap();
            let x = b.pick(&ctx(&request, now)).unwrap().id();
            let y = plain.pick(&ctx(&request, now)).unwrap().id();
            assert_eq!(x, y); // each lease dropped at once: no load
        }
    }

    #[test]
    fn factor_is_clamped() {
        let (set, _) = set_of(&[1]);
        assert_eq!(
            BoundedLoad::new(set.clone(), HashKey::Path)
                .factor(0.5)
                .factor_milli,
            1000
        );
        assert_eq!(
            BoundedLoad::new(set, HashKey::Path)
                .factor(f64::NAN)
                .factor_milli,
            1250
        );
    }
}
