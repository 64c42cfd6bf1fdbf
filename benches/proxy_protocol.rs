//! The per-connection cost of reading a PROXY protocol header (feature
//! `proxy-protocol`): `proxy_protocol::parse` on the headers an L4 balancer
//! sends, each followed by the request as it arrives in the same segment.
//!
//! `cargo bench --features proxy-protocol --bench proxy_protocol`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use wsproxy::handshake::Status;
use wsproxy::proxy_protocol::{encode_v2, parse};

const REQUEST: &[u8] =
    b"GET /chat HTTP/1.1\r\nHost: chat.example:8443\r\nUpgrade: websocket\r\n\r\n";

fn with_request(header: &[u8]) -> Vec<u8> {
    [header, REQUEST].concat()
}

fn bench(c: &mut Criterion) {
    let v1_tcp4 = with_request(b"PROXY TCP4 198.51.100.7 10.0.0.1 50123 443\r\n");
    let v1_tcp6 = with_request(b"PROXY TCP6 2001:db8::7 2001:db8::1 50123 443\r\n");
    let v2_ipv4 = with_request(&encode_v2(
        "198.51.100.7:50123".parse().unwrap(),
        "10.0.0.1:443".parse().unwrap(),
    ));
    let v2_ipv6 = with_request(&encode_v2(
        "[2001:db8::7]:50123".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    ));
    let mut group = c.benchmark_group("proxy_protocol");
    for (name, buf) in [
        ("v1_tcp4", &v1_tcp4),
        ("v1_tcp6", &v1_tcp6),
        ("v2_ipv4", &v2_ipv4),
        ("v2_ipv6", &v2_ipv6),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| match parse(black_box(buf)) {
                Ok(Status::Complete(h)) => h.len(),
                _ => unreachable!("the benchmark input is a whole header"),
            })
        });
    }
    // A header in two reads: the first parse says Partial, the second
    // completes (the reader's worst common case).
    group.bench_function("v1_tcp4_split", |b| {
        b.iter(|| {
            let partial = parse(black_box(&v1_tcp4[..30]));
            let whole = parse(black_box(&v1_tcp4));
            (partial.is_ok(), whole.is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
