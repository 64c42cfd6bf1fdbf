//! Runs one step of the proxy's handshake head work `N` times, for an
//! exact instruction count under callgrind (timings on a shared machine
//! move by ±40 %; instruction counts do not move at all):
//!
//! ```sh
//! cargo build --release --example head_rewrite_cost
//! for step in request_map request_direct answer_map answer_direct; do
//!   for n in 0 20000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       target/release/examples/head_rewrite_cost $step $n 2>&1 | grep Collected
//!   done
//! done
//! ```
//!
//! (Ir at 20000 − Ir at 0) / 20000 is the step's cost per handshake. The
//! steps: a browser's upgrade request parsed, checked and rewritten for the
//! upstream through a `HeaderMap` (`request_map`) or written straight from
//! the parsed head (`request_direct`); the upstream's 101 parsed, checked
//! and written for the client through a `HeaderMap` (`answer_map`) or over
//! its borrowed fields (`answer_direct`).

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::BytesMut;
use http::uri::Authority;
use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};
use wsproxy::handshake::{
    classify_response, parse_request, parse_response, parse_upgrade_answer, write_request_head,
    write_response_head, Limits, RequestHead, Status, UpgradeAnswer,
};

/// Chrome's upgrade request (the one `benches/handshake.rs` uses).
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

fn parse(bytes: &[u8], limits: &Limits) -> Result<RequestHead, Box<dyn std::error::Error>> {
    match parse_request(&mut BytesMut::from(bytes), limits)? {
        Status::Complete(head) => Ok(head),
        Status::Partial => Err("partial head".into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let step = args.next().unwrap_or_default();
    let n: u64 = args.next().unwrap_or_default().parse().unwrap_or(0);

    let limits = Limits::default();
    let policy = ForwardPolicy::nginx();
    let peer = SocketAddr::from(([127, 0, 0, 1], 50_000));
    let upstream = Authority::from_static("127.0.0.1:8010");
    let request = parse(BROWSER_HANDSHAKE, &limits)?;
    let upgrade = request.websocket().ok_or("not an upgrade")?;
    let client = policy.resolve_client(peer, request.request().headers(), Scheme::Http);
    let ctx = ForwardContext::new(peer, Scheme::Http, 80, upstream.clone()).with_websocket(true);

    let mut buf = BytesMut::with_capacity(8192);
    let mut out = BytesMut::with_capacity(2048);
    let mut written = 0usize;
    for _ in 0..n {
        buf.clear();
        out.clear();
        match step.as_str() {
            "request_map" | "request_direct" => {
                buf.extend_from_slice(black_box(BROWSER_HANDSHAKE));
                let Ok(Status::Complete(head)) = parse_request(&mut buf, &limits) else {
                    return Err("the request did not parse".into());
                };
                let websocket = head.websocket().is_some();
                let client = policy.resolve_client(peer, head.request().headers(), Scheme::Http);
                policy.check(head.request(), websocket)?;
                let ctx = ForwardContext::new(peer, Scheme::Http, 80, upstream.clone())
                    .with_websocket(websocket);
                if step == "request_map" {
                    let mut request = head.into_request();
                    policy.rewrite_request(&mut request, &client, &ctx);
                    write_request_head(&request, &mut out);
                } else {
                    policy.write_request_head(head.request(), &client, &ctx, &mut out);
                }
            }
            "answer_map" => {
                buf.extend_from_slice(black_box(UPSTREAM_101));
                let Ok(Status::Complete(mut response)) = parse_response(&mut buf, &limits) else {
                    return Err("the 101 did not parse".into());
                };
                classify_response(request.kind(), &response)?;
                policy.rewrite_response(&mut response, &client, &ctx);
                write_response_head(&response, &mut out);
            }
            "answer_direct" => {
                buf.extend_from_slice(black_box(UPSTREAM_101));
                let Ok(Status::Complete(UpgradeAnswer::Switched(head))) =
                    parse_upgrade_answer(&mut buf, &limits, upgrade)
                else {
                    return Err("the 101 was not taken".into());
                };
                policy.write_switching_head(&head, &client, &ctx, &mut out);
            }
            other => return Err(format!("unknown step {other:?}").into()),
        }
        written += black_box(out.len());
    }
    println!("{step}: {n} rounds, {written} bytes written");
    Ok(())
}
