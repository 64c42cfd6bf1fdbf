//! The strategies `benches/balance.rs` and `examples/balance_report.rs`
//! measure, and the baseline both compare them with. Included by `#[path]`
//! so that the two measure exactly the same things.

use std::net::SocketAddr;
use std::sync::Arc;

use wsproxy::balance::{
    Balancer, BoundedLoad, ConsistentHash, HashKey, IpHash, Lease, LeastConn, PickContext,
    RandomTwo, RoundRobin, SelectError, Upstream, UpstreamSet,
};

/// The floor: what any strategy pays for the snapshot load and the lease.
#[derive(Debug)]
pub struct FirstAvailable(pub UpstreamSet);

impl Balancer for FirstAvailable {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let snapshot = self.0.snapshot();
        for tier in snapshot.tiers() {
            if let Some(peer) = tier.iter().find(|p| p.is_available(ctx)) {
                return Ok(peer.lease());
            }
        }
        Err(SelectError::NoneAvailable)
    }
}

/// `n` equal upstreams on 127.0.0.1:10000 and up.
pub fn set_of(n: u16) -> UpstreamSet {
    (0..n)
        .map(|i| Upstream::new(SocketAddr::from(([127, 0, 0, 1], 10_000 + i))))
        .collect()
}

/// Every strategy over `set`, the baseline first.
pub fn strategies(set: &UpstreamSet) -> Vec<(&'static str, Arc<dyn Balancer>)> {
    vec![
        ("first-available", Arc::new(FirstAvailable(set.clone()))),
        ("round-robin", Arc::new(RoundRobin::new(set.clone()))),
        ("ip-hash", Arc::new(IpHash::new(set.clone()))),
        (
            "consistent-hash",
            Arc::new(ConsistentHash::new(set.clone(), HashKey::RemoteAddr)),
        ),
        (
            "bounded-hash",
            Arc::new(BoundedLoad::new(set.clone(), HashKey::RemoteAddr)),
        ),
        ("least-conn", Arc::new(LeastConn::new(set.clone()))),
        ("random-two", Arc::new(RandomTwo::with_seed(set.clone(), 1))),
    ]
}
