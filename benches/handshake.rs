//! A typical browser WebSocket handshake through the sans-IO pipeline,
//! against httparse parsing the same bytes alone (the baseline).
//!
//! `cargo bench --bench handshake`. Goals (issue 3): under 2 µs per
//! handshake, at most 4× the baseline.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::net::SocketAddr;

use http::uri::Authority;
use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};
use wsproxy::handshake::{
    classify_response, parse_request, parse_response, parse_upgrade_answer, write_request_head,
    write_response_head, HeadScanner, Limits, RequestKind, ResponseKind, Status, UpgradeAnswer,
};

/// Chrome's upgrade request: 12 header fields, about 500 bytes.
const BROWSER_HANDSHAKE: &[u8] = b"GET /chat?room=lobby HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

const UPSTREAM_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// What the proxy knows about the connection besides the head.
struct Conn {
    policy: ForwardPolicy,
    peer: SocketAddr,
    upstream: Authority,
}

/// Parse + classify + rewrite + serialize: what the proxy does with a
/// client's head before it goes upstream.
fn proxy_request_head(
    buf: &mut BytesMut,
    limits: &Limits,
    conn: &Conn,
    out: &mut BytesMut,
) -> usize {
    let Ok(Status::Complete(head)) = parse_request(buf, limits) else {
        unreachable!("the benchmark input is a valid, complete head")
    };
    let (mut request, kind) = head.into_parts();
    let websocket = matches!(kind, RequestKind::WebSocket(_));
    let client = conn
        .policy
        .resolve_client(conn.peer, request.headers(), Scheme::Http);
    let _ = conn.policy.check(&request, websocket);
    let ctx = ForwardContext::new(conn.peer, Scheme::Http, 80, conn.upstream.clone())
        .with_websocket(websocket);
    conn.policy.rewrite_request(&mut request, &client, &ctx);
    out.clear();
    write_request_head(&request, out);
    black_box(&kind);
    out.len()
}

/// [`proxy_request_head`] as the proxy does it now: the rewritten head
/// written straight from the parsed one, with no `HeaderMap` edits.
fn proxy_request_head_direct(
    buf: &mut BytesMut,
    limits: &Limits,
    conn: &Conn,
    out: &mut BytesMut,
) -> usize {
    let Ok(Status::Complete(head)) = parse_request(buf, limits) else {
        unreachable!("the benchmark input is a valid, complete head")
    };
    let websocket = matches!(head.kind(), RequestKind::WebSocket(_));
    let request = head.request();
    let client = conn
        .policy
        .resolve_client(conn.peer, request.headers(), Scheme::Http);
    let _ = conn.policy.check(request, websocket);
    let ctx = ForwardContext::new(conn.peer, Scheme::Http, 80, conn.upstream.clone())
        .with_websocket(websocket);
    out.clear();
    conn.policy.write_request_head(request, &client, &ctx, out);
    black_box(head.kind());
    out.len()
}

fn handshake(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(BROWSER_HANDSHAKE.len() as u64));

    group.bench_function("httparse_alone", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut request = httparse::Request::new(&mut headers);
            black_box(
                request
                    .parse(black_box(BROWSER_HANDSHAKE))
                    .map(|s| s.is_complete()),
            )
        })
    });

    // A second reference: httparse plus the naive conversion into `http`
    // types (copied names and values, no checks). The gap to
    // `parse_classify` is what this crate's validation costs.
    group.bench_function("httparse_to_http_types", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Request::new(&mut headers);
            let _ = parsed.parse(black_box(BROWSER_HANDSHAKE));
            let mut map = http::HeaderMap::with_capacity(parsed.headers.len());
            for h in parsed.headers.iter() {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(h.name.as_bytes()),
                    http::HeaderValue::from_bytes(h.value),
                ) {
                    map.append(name, value);
                }
            }
            let mut request = http::Request::new(());
            *request.uri_mut() =
                http::Uri::try_from(parsed.path.unwrap_or("/")).unwrap_or_default();
            *request.headers_mut() = map;
            request
        })
    });

    // Like a connection, each benchmark reuses one read buffer: the copy
    // stands for the read, and once the head is dropped `BytesMut` reclaims
    // its memory instead of allocating.
    let mut buf = BytesMut::with_capacity(8 * 1024);

    // What the proxy's read loop adds before parsing: one scan for the end
    // of the head (and the request-line check), the whole head in one read.
    group.bench_function("scan_alone", |b| {
        b.iter(|| {
            HeadScanner::request(limits)
                .scan(black_box(BROWSER_HANDSHAKE))
                .map(|s| s.is_complete())
        })
    });

    // The parse alone (with classification), to see where the time goes.
    group.bench_function("parse_classify", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(BROWSER_HANDSHAKE));
            parse_request(&mut buf, &limits).map(|s| s.is_complete())
        })
    });

    let mut out = BytesMut::with_capacity(1024);
    let conn = Conn {
        policy: ForwardPolicy::nginx(),
        peer: SocketAddr::from(([127, 0, 0, 1], 50_000)),
        upstream: Authority::from_static("127.0.0.1:8010"),
    };
    group.bench_function("parse_classify_rewrite_serialize", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(BROWSER_HANDSHAKE));
            proxy_request_head(&mut buf, &limits, &conn, &mut out)
        })
    });
    group.bench_function("parse_classify_write_direct", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(BROWSER_HANDSHAKE));
            proxy_request_head_direct(&mut buf, &limits, &conn, &mut out)
        })
    });

    // The upstream side of the same handshake: parse the 101 and check it.
    let Ok(Status::Complete(request)) =
        parse_request(&mut BytesMut::from(BROWSER_HANDSHAKE), &limits)
    else {
        unreachable!("the benchmark input is a valid, complete head")
    };
    group.bench_function("upstream_101_parse_check", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(UPSTREAM_101));
            let Ok(Status::Complete(response)) = parse_response(&mut buf, &limits) else {
                unreachable!("the benchmark input is a valid, complete head")
            };
            classify_response(request.kind(), &response) == Ok(ResponseKind::Switched)
        })
    });

    // The whole 101 leg: read and check it, then write the client's 101;
    // through a `HeaderMap` (before), and over the borrowed head (now).
    let client = conn
        .policy
        .resolve_client(conn.peer, request.request().headers(), Scheme::Http);
    let ctx = ForwardContext::new(conn.peer, Scheme::Http, 80, conn.upstream.clone())
        .with_websocket(true);
    group.bench_function("upstream_101_parse_check_rewrite_write", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(UPSTREAM_101));
            let Ok(Status::Complete(mut response)) = parse_response(&mut buf, &limits) else {
                unreachable!("the benchmark input is a valid, complete head")
            };
            let _ = classify_response(request.kind(), &response);
            conn.policy.rewrite_response(&mut response, &client, &ctx);
            out.clear();
            write_response_head(&response, &mut out);
            out.len()
        })
    });
    let Some(upgrade) = request.websocket() else {
        unreachable!("the benchmark input is an upgrade")
    };
    group.bench_function("upstream_101_fast_check_write", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(UPSTREAM_101));
            let Ok(Status::Complete(UpgradeAnswer::Switched(head))) =
                parse_upgrade_answer(&mut buf, &limits, upgrade)
            else {
                unreachable!("the benchmark input is a valid 101")
            };
            out.clear();
            conn.policy
                .write_switching_head(&head, &client, &ctx, &mut out);
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
