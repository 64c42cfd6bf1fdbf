//! The forwarding policy on a typical browser WebSocket handshake
//! (about 500 bytes, 12 headers), against httparse parsing the same bytes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};

const HEAD: &[u8] = b"GET /chat?room=lobby HTTP/1.1\r\n\
Host: chat.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Sec-WebSocket-Version: 13\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Connection: keep-alive, Upgrade\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n\
Upgrade: websocket\r\n\r\n";

/// The head as an `http::Request`, built once outside the measurement
/// (parsing is the handshake module's job).
fn request() -> http::Request<()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let _ = parsed.parse(HEAD);
    let mut b = http::Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"));
    for h in parsed.headers.iter() {
        b = b.header(h.name, h.value);
    }
    b.body(()).unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let policy = ForwardPolicy::builder()
        .trusted_proxy("10.0.0.0/8")
        .allow_origin("https://chat.example.com")
        .build()
        .unwrap_or_default();
    let peer = "127.0.0.1:50000"
        .parse()
        .unwrap_or(([127, 0, 0, 1], 50000).into());
    let upstream: http::uri::Authority =
        "127.0.0.1:9000".parse().unwrap_or_else(|_| unreachable!());
    let ctx = ForwardContext::new(peer, Scheme::Https, 443, upstream).with_websocket(true);
    let req = request();
    assert_eq!(req.headers().len(), 12);

    let mut g = c.benchmark_group("forward");
    g.bench_function("httparse_alone", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Request::new(&mut headers);
            black_box(parsed.parse(black_box(HEAD)).is_ok())
        })
    });
    // The policy rewrites in place, so every iteration needs a fresh head:
    // `clone_alone` is that cost on its own, to subtract from the next one.
    g.bench_function("clone_alone", |b| b.iter(|| black_box(req.clone())));
    g.bench_function("clone_resolve_check_rewrite", |b| {
        b.iter(|| {
            let mut r = req.clone();
            let client = policy.resolve_client(peer, r.headers(), Scheme::Https);
            let ok = policy.check(&r, true).is_ok();
            policy.rewrite_request(&mut r, &client, &ctx);
            black_box((ok, r))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
