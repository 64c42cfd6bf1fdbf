//! Smooth weighted round-robin, nginx's default `upstream` strategy.

use std::sync::{Mutex, PoisonError};

use super::{pick_tiers, Balancer, Lease, PickContext, SelectError, UpstreamSet};

/// Smooth weighted round-robin (nginx `ngx_http_upstream_get_peer`).
///
/// Each pick adds every available peer's weight to its current weight,
/// takes the peer with the highest current weight (the first on a tie) and
/// subtracts the total from it. Weights 5, 1, 1 give `a a b a c a a`, spread
/// out rather than `a a a a a b c`. Unavailable peers sit the round out.
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
}

/// Current weights per tier, valid for one layout of the set; nginx resets
/// them on reload too.
#[derive(Debug, Default)]
struct Current {
    layout: u64,
    weights: [Vec<i64>; 2],
}

impl RoundRobin {
    /// Round-robin over `set`.
    pub fn new(set: UpstreamSet) -> Self {
        Self {
            set,
            state: Mutex::new(Current::default()),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let snapshot = self.set.load();
        // O(n) under a short lock, as nginx does under its peers lock: the
        // smooth order needs every current weight updated together.
        let mut current = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let tiers = snapshot.tiers();
        if current.layout != snapshot.layout
            || current.weights[0].len() != tiers[0].len()
            || current.weights[1].len() != tiers[1].len()
        {
            current.layout = snapshot.layout;
            for (weights, peers) in current.weights.iter_mut().zip(tiers) {
                weights.clear();
                weights.resize(peers.len(), 0);
            }
        }
        pick_tiers(&snapshot, |tier, peers| {
            let weights = current.weights.get_mut(tier)?;
            let mut total = 0i64;
            let mut best: Option<(usize, i64)> = None;
            for ((i, peer), w) in peers.iter().enumerate().zip(weights.iter_mut()) {
                if !peer.is_available(ctx) {
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
        })
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
