//! The handshake's heads as they cross the proxy, end to end on loopback:
//! the request head the upstream receives and the 101 the client receives
//! are written from the parsed heads without `HeaderMap` edits, and must
//! still carry the forwarding policy (hop-by-hop fields and those named in
//! `Connection` gone, the proxy's own fields set, spoofed ones replaced).

mod support;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
use wsproxy::Proxy;

use support::{await_records, raw_upstream, read_until, Gateway};

/// The RFC 6455 §1.3 example key and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A 101 naming a private field in `Connection`, with a hop-by-hop field,
/// a subprotocol, and the upstream's first frame (text "hi") right after it.
const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade, X-Internal\r\n\
X-Internal: secret\r\n\
Keep-Alive: timeout=5\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: chat\r\n\
Server: Upstream\r\n\r\n\
\x81\x02hi";

#[tokio::test]
async fn an_upgrade_crosses_with_the_policy_applied_both_ways() {
    let (up, seen) = raw_upstream(SWITCH).await;
    let set: UpstreamSet = [Upstream::new(up)].into_iter().collect();
    let gw = Gateway::start(Proxy::builder().upstream(RoundRobin::new(set))).await;

    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /chat?room=1 HTTP/1.1\r\nHost: Chat.Example:8443\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade, X-Drop\r\nX-Drop: 1\r\nX-Real-IP: 6.6.6.6\r\n\
         X-Forwarded-For: 203.0.113.9\r\nX-Tag: a\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nX-Tag: b\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let got = read_until(&mut client, b"\x81\x02hi").await;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or_else(|| panic!("no 101 head: {:?}", String::from_utf8_lossy(&got)));
    let answer = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1.1 101 switching protocols\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nupgrade: websocket\r\n"), "{answer}");
    assert!(
        answer.contains("\r\nconnection: upgrade, x-internal\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nsec-websocket-protocol: chat\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nserver: upstream\r\n"), "{answer}");
    assert!(!answer.contains("x-internal: secret"), "{answer}");
    assert!(!answer.contains("keep-alive: timeout"), "{answer}");
    // The upstream's first frame follows the 101, untouched.
    assert_eq!(&got[end..], b"\x81\x02hi");

    drop(client);
    await_records(&seen, 1).await;
    let records = seen.lock().unwrap().clone();
    let head = String::from_utf8_lossy(&records[0]).into_owned();
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(lines[0], "GET /chat?room=1 HTTP/1.1", "{head}");
    let field = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(field("host"), ["Chat.Example:8443"], "{head}");
    assert_eq!(field("upgrade"), ["websocket"], "{head}");
    assert_eq!(field("connection"), ["upgrade"], "{head}");
    assert_eq!(field("x-real-ip"), ["127.0.0.1"], "{head}");
    assert_eq!(
        field("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"],
        "{head}"
    );
    assert_eq!(field("x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(field("x-tag"), ["a", "b"], "{head}");
    assert_eq!(field("sec-websocket-key"), [KEY], "{head}");
    assert_eq!(
        field("sec-websocket-protocol"),
        ["chat, superchat"],
        "{head}"
    );
    assert!(field("x-drop").is_empty(), "{head}");
    assert!(field("keep-alive").is_empty(), "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
}
