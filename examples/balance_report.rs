//! Prints the balancing figures: pick cost per strategy, consistent-hash
//! balance and disruption, and bounded loads.
//!
//! ```sh
//! cargo run --release --example balance_report
//! ```
//!
//! Pick costs are wall-clock medians of several batches on whatever else the
//! machine runs; compare strategies within one run, against the
//! `first-available` baseline (one snapshot load, one lease).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use wsproxy::balance::{
    Balancer, BoundedLoad, ConsistentHash, HashKey, Lease, PickContext, Upstream, UpstreamId,
    UpstreamSet,
};

#[path = "../benches/support/strategies.rs"]
mod strategies;
use strategies::{set_of, strategies};

fn random_ips(count: usize, seed: u64) -> Vec<IpAddr> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|_| IpAddr::from(rng.u32(..).to_be_bytes()))
        .collect()
}

/// Median ns per pick (lease taken and dropped) over 7 batches.
fn pick_cost(balancer: &dyn Balancer, request: &http::Request<()>, ips: &[IpAddr]) -> f64 {
    let now = Instant::now();
    let batch = 200_000usize;
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for i in 0..batch {
                let ip = ips[i & (ips.len() - 1)]; // a power of two: no division
                let lease = balancer.pick(&PickContext::new(ip, request, now));
                std::hint::black_box(&lease);
            }
            start.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Which upstream each client address hashes to.
fn placements(balancer: &dyn Balancer, ips: &[IpAddr]) -> Vec<UpstreamId> {
    let request = http::Request::get("/").body(()).unwrap_or_default();
    let now = Instant::now();
    ips.iter()
        .map(|&ip| {
            balancer
                .pick(&PickContext::new(ip, &request, now))
                .map(|lease| lease.id())
        })
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

fn max_over_mean(ids: &[UpstreamId], upstreams: usize) -> f64 {
    let mut counts: HashMap<UpstreamId, usize> = HashMap::new();
    for &id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let max = counts.values().copied().max().unwrap_or(0) as f64;
    max / (ids.len() as f64 / upstreams as f64)
}

fn main() {
    let request = http::Request::get("/ws").body(()).unwrap_or_default();
    let ips = random_ips(4096, 7);

    println!("## pick cost, ns per pick (median of 7 batches of 200,000)");
    println!(
        "{:<16} {:>8} {:>8} {:>8}",
        "strategy", "n=3", "n=10", "n=100"
    );
    let sets: Vec<UpstreamSet> = [3, 10, 100].into_iter().map(set_of).collect();
    let per_set: Vec<_> = sets.iter().map(strategies).collect();
    for row in 0..per_set[0].len() {
        print!("{:<16}", per_set[0][row].0);
        for strategies in &per_set {
            print!(" {:>8.1}", pick_cost(&*strategies[row].1, &request, &ips));
        }
        println!();
    }
    // Long-lived connections: every upstream holds 1 to 8 leases, so
    // least-conn cannot stop its scan early at an idle upstream.
    let held: Vec<Lease> = sets
        .iter()
        .flat_map(|set| {
            let snapshot = set.snapshot();
            snapshot
                .iter()
                .enumerate()
                .flat_map(|(i, p)| (0..=i % 8).map(move |_| p.lease()))
                .collect::<Vec<_>>()
        })
        .collect();
    for row in 0..per_set[0].len() {
        let name = per_set[0][row].0;
        if !matches!(name, "least-conn" | "random-two" | "bounded-hash") {
            continue;
        }
        print!("{:<16}", format!("{name}*"));
        for strategies in &per_set {
            print!(" {:>8.1}", pick_cost(&*strategies[row].1, &request, &ips));
        }
        println!();
    }
    println!("(* every upstream holding 1 to 8 open leases)");
    drop(held);

    println!();
    println!("## consistent hash: max/mean load over 1,000,000 random client addresses");
    let keys = random_ips(1_000_000, 11);
    for n in [3u16, 10, 100] {
        let set = set_of(n);
        let ring = ConsistentHash::new(set, HashKey::RemoteAddr);
        let ids = placements(&ring, &keys);
        println!(
            "n={n:<4} max/mean = {:.3}",
            max_over_mean(&ids, usize::from(n))
        );
    }

    println!();
    println!("## disruption: an 11th upstream joins 10 (1,000,000 keys)");
    let set = set_of(10);
    let ring = ConsistentHash::new(set.clone(), HashKey::RemoteAddr);
    let before = placements(&ring, &keys);
    let new = set.add(Upstream::new(SocketAddr::from(([127, 0, 0, 1], 10_010)))); // 11th
    let after = placements(&ring, &keys);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let between_old = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && **a != new)
        .count();
    println!(
        "moved = {:.4} (ideal 1/11 = {:.4}); moved between two old upstreams = {between_old}",
        moved as f64 / keys.len() as f64,
        1.0 / 11.0
    );
    assert_eq!(between_old, 0, "a key moved between two old upstreams");

    println!();
    println!("## bounded loads: 10,000 long-lived connections on 10 upstreams");
    for (label, clients) in [
        ("uniform keys", random_ips(10_000, 13)),
        (
            "skewed keys (30% one client)",
            random_ips(10_000, 13)
                .into_iter()
                .enumerate()
                .map(|(i, ip)| {
                    if i % 10 < 3 {
                        IpAddr::from([127, 0, 0, 1])
                    } else {
                        ip
                    }
                })
                .collect(),
        ),
    ] {
        for factor in [1.25, 1.10] {
            let set = set_of(10);
            let bounded = BoundedLoad::new(set.clone(), HashKey::RemoteAddr).factor(factor);
            let plain = ConsistentHash::new(set.clone(), HashKey::RemoteAddr);
            let now = Instant::now();
            let leases: Vec<Lease> = clients
                .iter()
                .filter_map(|&ip| bounded.pick(&PickContext::new(ip, &request, now)).ok())
                .collect();
            let loads: Vec<usize> = set
                .snapshot()
                .primaries()
                .iter()
                .map(|p| p.active())
                .collect();
            let max = loads.iter().copied().max().unwrap_or(0);
            let mean = leases.len() as f64 / 10.0;
            let bound = (factor * mean).ceil() as usize;
            // Where plain consistent hashing would have put the same keys.
            let affine = clients
                .iter()
                .zip(&leases)
                .filter(|(&ip, lease)| {
                    plain
                        .pick(&PickContext::new(ip, &request, now))
                        .is_ok_and(|l| l.id() == lease.id())
                })
                .count();
            let plain_ids = placements(&plain, &clients);
            println!(
                "{label:<30} factor {factor:.2}: max {max} / mean {mean:.0} = {:.3} (bound {bound}); \
                 plain ring max/mean {:.3}; {:.1}% kept ring affinity",
                max as f64 / mean,
                max_over_mean(&plain_ids, 10),
                100.0 * affine as f64 / leases.len() as f64,
            );
            assert!(max <= bound, "bounded load exceeded factor x mean");
        }
    }
}
