//! Many gateways, one upstream pool: N gateway instances × M upstreams × K
//! long-lived connections, simulated with the library's own balancers (each
//! gateway its own `UpstreamSet`, built in its own shuffled order, and its
//! own connection counts), plain consistent hash against bounded load.
//!
//! ```sh
//! cargo run --release --example agreement_sim [N M K]   # default 3 10 60000
//! ```
//!
//! Connections arrive one by one, each through one gateway chosen at
//! random (an L4 balancer in front), and stay open. For each it reports:
//!
//! - agreement: the share of connections for which every gateway, asked at
//!   that moment, picks the same upstream;
//! - moved per join / leave: the share of connections placed elsewhere when
//!   all of them are placed again after an upstream joins (ideal 1/(M+1))
//!   or leaves (ideal 1/M), the same arrivals in the same order;
//! - max/mean: the most loaded upstream's connections, summed over the
//!   gateways, against the mean.
//!
//! Two key mixes: uniform (one key per connection, `/k/i`) and rooms (keys
//! drawn from 2,000 chat rooms with Zipf(1) sizes: a few very hot rooms).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use wsproxy::balance::{
    Balancer, BoundedLoad, ConsistentHash, HashKey, Lease, PickContext, Upstream, UpstreamSet,
};

#[derive(Clone, Copy)]
enum Kind {
    Ring,
    Bounded,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Ring => "consistent-hash",
            Self::Bounded => "bounded-load 1.25",
        }
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080))
}

/// One gateway: its own set (upstreams added in a shuffled order) and
/// balancer.
fn gateway(kind: Kind, upstreams: &[usize], rng: &mut fastrand::Rng) -> Box<dyn Balancer> {
    let mut order = upstreams.to_vec();
    rng.shuffle(&mut order);
    let set: UpstreamSet = order.iter().map(|&i| Upstream::new(addr(i))).collect();
    match kind {
        Kind::Ring => Box::new(ConsistentHash::new(set, HashKey::Path)),
        Kind::Bounded => Box::new(BoundedLoad::new(set, HashKey::Path)),
    }
}

struct Placement {
    /// Upstream address per connection.
    homes: Vec<SocketAddr>,
    agreed: usize,
    /// Open leases, summed over the gateways, per upstream.
    loads: HashMap<SocketAddr, usize>,
}

/// Places every connection (`keys[c]`, through gateway `via[c]`), keeping
/// its lease open; asks every gateway at each arrival for the agreement.
fn place(
    kind: Kind,
    n: usize,
    upstreams: &[usize],
    keys: &[String],
    via: &[usize],
    seed: u64,
) -> Placement {
    let mut rng = fastrand::Rng::with_seed(seed);
    let gateways: Vec<Box<dyn Balancer>> =
        (0..n).map(|_| gateway(kind, upstreams, &mut rng)).collect();
    let client = IpAddr::from([192, 0, 2, 1]);
    let now = Instant::now();
    let mut leases: Vec<Lease> = Vec::with_capacity(keys.len());
    let mut agreed = 0;
    for (key, &g) in keys.iter().zip(via) {
        let request = http::Request::get(key.as_str())
            .body(())
            .unwrap_or_default();
        let ctx = PickContext::new(client, &request, now);
        let Ok(lease) = gateways[g].pick(&ctx) else {
            continue;
        };
        let all_agree = gateways.iter().enumerate().all(|(i, other)| {
            i == g
                || other
                    .pick(&ctx)
                    .map(|l| l.addr() == lease.addr())
                    .unwrap_or(false)
        });
        agreed += usize::from(all_agree);
        leases.push(lease);
    }
    let mut loads = HashMap::new();
    let homes = leases
        .iter()
        .map(|l| {
            let a = l.addr().as_socket_addr().unwrap_or_else(|| addr(0));
            *loads.entry(a).or_insert(0) += 1;
            a
        })
        .collect();
    Placement {
        homes,
        agreed,
        loads,
    }
}

fn moved(a: &[SocketAddr], b: &[SocketAddr]) -> f64 {
    let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
    n as f64 / a.len().max(1) as f64
}

fn max_mean(loads: &HashMap<SocketAddr, usize>, m: usize) -> f64 {
    let total: usize = loads.values().sum();
    let max = loads.values().copied().max().unwrap_or(0);
    max as f64 / (total as f64 / m as f64)
}

/// Zipf(1) over `rooms`, by inverse CDF on the harmonic sums.
fn zipf_keys(k: usize, rooms: usize, rng: &mut fastrand::Rng) -> Vec<String> {
    let mut cdf = Vec::with_capacity(rooms);
    let mut sum = 0.0;
    for r in 1..=rooms {
        sum += 1.0 / r as f64;
        cdf.push(sum);
    }
    (0..k)
        .map(|_| {
            let x = rng.f64() * sum;
            let room = cdf.partition_point(|&c| c < x);
            format!("/room/{room}")
        })
        .collect()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, m, k) = match args[..] {
        [n, m, k] => (n.max(1), m.max(2), k.max(1)),
        _ => (3, 10, 60_000),
    };
    let mut rng = fastrand::Rng::with_seed(16);
    let via: Vec<usize> = (0..k).map(|_| rng.usize(..n)).collect();
    let mixes = [
        (
            "uniform",
            (0..k).map(|i| format!("/k/{i}")).collect::<Vec<_>>(),
        ),
        ("rooms", zipf_keys(k, 2_000, &mut rng)),
    ];
    let pool: Vec<usize> = (0..m).collect();
    let joined: Vec<usize> = (0..=m).collect();
    let left: Vec<usize> = (1..m).collect();
    println!("{n} gateways x {m} upstreams x {k} connections (ideal moved: join 1/(M+1) = {:.1}%, leave 1/M = {:.1}%)\n",
        100.0 / (m + 1) as f64, 100.0 / m as f64);
    println!("| keys | strategy | agreement | moved per join | moved per leave | max/mean load |");
    println!("|---|---|---:|---:|---:|---:|");
    for (mix, keys) in &mixes {
        for kind in [Kind::Ring, Kind::Bounded] {
            let base = place(kind, n, &pool, keys, &via, 1);
            let join = place(kind, n, &joined, keys, &via, 2);
            let leave = place(kind, n, &left, keys, &via, 3);
            println!(
                "| {mix} | {} | {:.2}% | {:.1}% | {:.1}% | {:.2} |",
                kind.name(),
                100.0 * base.agreed as f64 / k as f64,
                100.0 * moved(&base.homes, &join.homes),
                100.0 * moved(&base.homes, &leave.homes),
                max_mean(&base.loads, m),
            );
        }
    }
}
