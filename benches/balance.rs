//! Pick cost per strategy at 3, 10 and 100 equal upstreams, against the
//! `first-available` baseline (one snapshot load and one lease: the floor
//! every strategy pays). Each pick takes a lease and drops it.
//!
//! ```sh
//! cargo bench --bench balance
//! ```

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

#[path = "support/strategies.rs"]
mod strategies;
use strategies::{set_of, strategies};
use wsproxy::balance::{Balancer, Lease, PickContext};

fn pick(c: &mut Criterion) {
    let request = http::Request::get("/ws").body(()).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let ips: Vec<IpAddr> = (0..4096)
        .map(|_| IpAddr::from(rng.u32(..).to_be_bytes()))
        .collect();
    let now = Instant::now();
    let mut group = c.benchmark_group("pick");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for n in [3u16, 10, 100] {
        let set = set_of(n);
        let mut bench = |name: &str, balancer: &dyn Balancer| {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) % ips.len();
                    let ctx = PickContext::new(ips[i], &request, now);
                    black_box(balancer.pick(&ctx))
                })
            });
        };
        for (name, balancer) in strategies(&set) {
            bench(name, &*balancer);
        }
        // Long-lived connections: every upstream holds 1 to 8 leases, so
        // least-conn cannot stop its scan early at an idle upstream.
        let held: Vec<Lease> = set
            .snapshot()
            .iter()
            .enumerate()
            .flat_map(|(i, p)| (0..=i % 8).map(move |_| p.lease()))
            .collect();
        for (name, balancer) in strategies(&set) {
            if matches!(name, "least-conn" | "random-two" | "bounded-hash") {
                bench(&format!("{name}-loaded"), &*balancer);
            }
        }
        drop(held);
    }
    group.finish();
}

/// What a hash key costs to read from a browser-sized request: the cookie
/// and query readers against `remote-addr`, which reads nothing from the
/// head. Ten upstreams, weight 1, one ring.
fn hash_key(c: &mut Criterion) {
    use wsproxy::balance::{ConsistentHash, HashKey};
    let request = http::Request::get("/ws?v=3&token=abcdef0123456789&room=lobby&lang=en")
        .header(
            "cookie",
            "_ga=GA1.2.1234567890.1234567890; theme=dark; consent=yes; \
             session=0123456789abcdef0123456789abcdef; lang=en",
        )
        .body(())
        .unwrap();
    let client = IpAddr::from([192, 0, 2, 7]);
    let now = Instant::now();
    let set = set_of(10);
    let mut group = c.benchmark_group("hash-key");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for (name, key) in [
        ("remote-addr", HashKey::RemoteAddr),
        ("cookie", HashKey::Cookie("session".into())),
        ("query", HashKey::Query("room".into())),
    ] {
        let ring = ConsistentHash::new(set.clone(), key);
        group.bench_function(name, |b| {
            b.iter(|| {
                let ctx = PickContext::new(client, &request, now);
                black_box(ring.pick(&ctx))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick, hash_key);
criterion_main!(benches);
