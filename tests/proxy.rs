//! End to end through `Proxy` and `Server` on loopback, with tokio-tungstenite
//! as the real WebSocket client and upstream.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use wsproxy::balance::{
    ConsistentHash, HashKey, IpHash, LeastConn, RoundRobin, Upstream, UpstreamSet,
};
use wsproxy::route::Route;

use wsproxy::{Proxy, ProxyBuilder, UpstreamGroup};

use support::*;

fn set(addrs: &[SocketAddr]) -> UpstreamSet {
    addrs.iter().map(|a| Upstream::new(*a)).collect()
}

fn round_robin(addrs: &[SocketAddr]) -> ProxyBuilder {
    Proxy::builder().upstream(RoundRobin::new(set(addrs)))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(url: &str) -> Ws {
    bounded("websocket connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .0
}

async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let msg = bounded("a message", ws.next()).await.unwrap().unwrap();
        if msg.is_text() || msg.is_binary() || msg.is_close() {
            return msg;
        }
    }
}

/// A raw request to the proxy; returns everything it answered until close.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned()
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_head(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A client frame (masked) with the given opcode.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn echoes_text_binary_large_fragmented_ping_and_close_codes() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let gw = Gateway::start(round_robin(&[up.addr])).await;
    let mut ws = connect(&gw.url("/echo")).await;

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );

    let big: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let Message::Binary(got) = next_data(&mut ws).await else {
        panic!("expected binary");
    };
    assert!(got[..] == big[..], "16 MiB message corrupted");

    // A fragmented message: raw frames through the same tunnel.
    let mut raw = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = upgrade_head("/", "").into_bytes();
    raw.write_all(&bytes).await.unwrap();
    let head = read_until(&mut raw, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    bytes.clear();
    let mut first = masked_frame(0x1, b"frag");
    first[0] &= 0x7f; // FIN off
    bytes.extend(first);
    bytes.extend(masked_frame(0x0, b"mented"));
    raw.write_all(&bytes).await.unwrap();
    let echoed = read_until(&mut raw, b"fragmented").await;
    assert!(echoed.ends_with(b"fragmented"), "{echoed:?}");

    // Ping gets its pong through the tunnel, from the upstream.
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    let pong = loop {
        match bounded("pong", ws.next()).await.unwrap().unwrap() {
            Message::Pong(p) => break p,
            _ => continue,
        }
    };
    assert_eq!(&pong[..], b"p");

    // Close code from the client reaches the upstream, which echoes it back.
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let Message::Close(Some(frame)) = next_data(&mut ws).await else {
        panic!("expected close frame");
    };
    assert_eq!(frame.code, CloseCode::Library(4001));
    assert_eq!(frame.reason.as_str(), "bye");
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_sees_rewritten_headers_and_subprotocol_is_negotiated() {
    let up = ws_upstream(WsUpstreamOptions {
        pick_protocol: true,
        ..Default::default()
    })
    .await;
    let gw = Gateway::start(round_robin(&[up.addr])).await;
    let mut req = gw.url("/chat?room=1").into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("host", "chat.example.com".parse().unwrap());
    h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    h.insert("x-real-ip", "203.0.113.66".parse().unwrap());
    h.insert("x-forwarded-proto", "https".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("x-secret", "1".parse().unwrap());
    h.insert("connection", "Upgrade, X-Secret".parse().unwrap());
    h.insert(
        "sec-websocket-protocol",
        "chat.v2, chat.v1".parse().unwrap(),
    );
    let (mut ws, resp) = bounded("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v2");
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("x"));
    let counters = gw.proxy.counters();
    assert_eq!(counters.tunnels_by_upstream, [(up.addr.to_string(), 1)]);
    assert_eq!((counters.handshakes, counters.tunnels_active), (1, 1));

    let seen = up.seen.lock().unwrap()[0].clone();
    let h = seen.headers();
    assert_eq!(
        seen.uri().path_and_query().unwrap().as_str(),
        "/chat?room=1"
    );
    assert_eq!(h["host"], "chat.example.com");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    assert!(h.get("keep-alive").is_none());
    assert!(
        h.get("x-secret").is_none(),
        "Connection-listed header forwarded"
    );
    assert_eq!(h["sec-websocket-protocol"], "chat.v2, chat.v1");
    gw.shutdown().await;
}

#[tokio::test]
async fn first_frames_sent_with_either_head_arrive() {
    // The upstream writes its 101 and a first frame in one write.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_until(&mut s, b"\r\n\r\n").await;
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(KEY.as_bytes());
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(&[0x81, 5]);
        out.extend_from_slice(b"hello");
        s.write_all(&out).await.unwrap();
        // Whatever the client sent after its head, as the upstream sees it.
        let mut rest = head[head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..].to_vec();
        while rest.len() < 8 {
            let mut b = [0u8; 64];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "upstream saw EOF before the client's first frame");
            rest.extend_from_slice(&b[..n]);
        }
        rest
    });
    let gw = Gateway::start(round_robin(&[up_addr])).await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = upgrade_head("/", "").into_bytes();
    let frame = masked_frame(0x2, b"hi");
    bytes.extend_from_slice(&frame);
    client.write_all(&bytes).await.unwrap();
    let got = read_until(&mut client, b"hello").await;
    assert!(got.starts_with(b"HTTP/1.1 101"));
    assert!(got.ends_with(&[0x81, 5, b'h', b'e', b'l', b'l', b'o']));
    let at_upstream = bounded("upstream", upstream).await.unwrap();
    assert_eq!(at_upstream, frame);
    gw.shutdown().await;
}

/// nginx `proxy_ignore_client_abort off`: a client that leaves while the
/// upstream thinks frees the upstream connection at once, not one read
/// timeout (an hour here) later; bytes it sent while waiting are kept for
/// the tunnel, in order.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_frees_the_upstream_and_early_frames_wait() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let (go, go_rx) = oneshot::channel::<()>();
    let (seen, seen_rx) = oneshot::channel::<()>();
    let upstream = tokio::spawn(async move {
        // First: a request whose client leaves; the proxy must hang up.
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        let mut rest = Vec::new();
        within(
            Duration::from_secs(5),
            "the proxy to hang up",
            s.read_to_end(&mut rest),
        )
        .await
        .unwrap();
        // Then: a client that sends a frame while the answer is pending.
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        let _ = seen.send(());
        let _ = go_rx.await;
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(KEY.as_bytes());
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        let mut frame = [0u8; 8];
        within(
            Duration::from_secs(5),
            "the early frame",
            s.read_exact(&mut frame),
        )
        .await
        .unwrap();
        frame
    });
    let gw = Gateway::start(round_robin(&[up_addr]).read_timeout(Duration::from_secs(3600))).await;
    let mut leaving = TcpStream::connect(gw.addr).await.unwrap();
    leaving
        .write_all(upgrade_head("/", "").as_bytes())
        .await
        .unwrap();
    drop(leaving);

    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(upgrade_head("/", "").as_bytes())
        .await
        .unwrap();
    // After the head went upstream: the frame waits in the proxy.
    bounded("the head upstream", seen_rx).await.unwrap();
    let frame = masked_frame(0x2, b"hi");
    client.write_all(&frame).await.unwrap();
    go.send(()).unwrap();
    let got = read_until(&mut client, b"\r\n\r\n").await;
    assert!(got.starts_with(b"HTTP/1.1 101"));
    assert_eq!(bounded("upstream", upstream).await.unwrap(), &frame[..]);
    assert_eq!(gw.proxy.counters().abandoned, 1);
    gw.shutdown().await;
}

/// A frame of `len` bytes of `seed`'s pattern: masked (a client's) or not.
fn big_frame(opcode: u8, len: usize, seed: u8, masked: bool) -> Vec<u8> {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let mut f = vec![0x80 | opcode, if masked { 0x80 | 127 } else { 127 }];
    f.extend_from_slice(&(len as u64).to_be_bytes());
    if !masked {
        f.extend_from_slice(&payload);
        return f;
    }
    let mask = [0x5a, 0x17, 0xc3, 0x08];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Each peer sends a large message and its Close, and shuts its socket
/// down right behind them, so that the proxy reads the last bytes and the
/// EOF together and sends them on as one (`MSG_MORE`, then the shutdown):
/// every byte arrives, in order, and then the EOF, both ways, also when
/// the receiver is slow to read and the last write cannot go out whole.
#[tokio::test]
async fn last_bytes_that_come_with_the_eof_arrive_whole_both_ways() {
    const LEN: usize = 600 * 1024;
    let down = [big_frame(0x2, LEN, 1, false), vec![0x88, 2, 0x03, 0xe8]].concat();
    let up = [
        big_frame(0x2, LEN, 2, true),
        masked_frame(0x8, &[0x03, 0xe8]),
    ]
    .concat();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let sent_down = down.clone();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_until(&mut s, b"\r\n\r\n").await;
        assert!(
            head.ends_with(b"\r\n\r\n"),
            "the client's first bytes came early"
        );
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(KEY.as_bytes());
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        s.write_all(&[answer.as_bytes(), &sent_down].concat())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        read_to_end(&mut s).await
    });
    let gw = Gateway::start(round_robin(&[up_addr])).await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(upgrade_head("/", "").as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut client, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let (mut from_proxy, mut to_proxy) = client.into_split();
    let sending = tokio::spawn(async move {
        to_proxy.write_all(&up).await.unwrap();
        to_proxy.shutdown().await.unwrap();
        to_proxy
    });
    // Read only once the upstream's bytes are all on their way: the
    // proxy's last write toward the client finds its buffers full.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut got = head[head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..].to_vec();
    bounded("EOF from the proxy", from_proxy.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(
        got == down,
        "the client got {} of {} bytes, or others",
        got.len(),
        down.len()
    );
    let at_upstream = bounded("upstream", upstream).await.unwrap();
    let up = [
        big_frame(0x2, LEN, 2, true),
        masked_frame(0x8, &[0x03, 0xe8]),
    ]
    .concat();
    assert!(
        at_upstream == up,
        "the upstream got {} of {} bytes, or others",
        at_upstream.len(),
        up.len()
    );
    drop(bounded("client sent", sending).await.unwrap());
    gw.shutdown().await;
}

#[tokio::test]
async fn routes_by_host_and_prefix_with_stripping() {
    let a = ws_upstream(WsUpstreamOptions::default()).await;
    let b = ws_upstream(WsUpstreamOptions::default()).await;
    let builder = Proxy::builder()
        .route(Route::new(
            "/",
            UpstreamGroup::new("a", RoundRobin::new(set(&[a.addr]))),
        ))
        .route(
            Route::new(
                "/live/",
                UpstreamGroup::new("b", RoundRobin::new(set(&[b.addr]))),
            )
            .strip_prefix(),
        )
        .route(
            Route::new(
                "/",
                UpstreamGroup::new("b-host", RoundRobin::new(set(&[b.addr]))),
            )
            .host("*.b.test"),
        );
    let gw = Gateway::start(builder).await;
    connect(&gw.url("/live/feed?x=1")).await;
    connect(&gw.url("/other")).await;
    let mut req = gw.url("/host-routed").into_client_request().unwrap();
    req.headers_mut()
        .insert("host", "x.b.test".parse().unwrap());
    bounded("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();

    let paths = |u: &WsUpstream| -> Vec<String> {
        u.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.uri().to_string())
            .collect()
    };
    assert_eq!(paths(&a), ["/other"]);
    assert_eq!(paths(&b), ["/feed?x=1", "/host-routed"]);

    // No route for this host's server: 404.
    let t = Gateway::start(
        Proxy::builder().route(
            Route::new(
                "/only",
                UpstreamGroup::new("a", RoundRobin::new(set(&[a.addr]))),
            )
            .host("a.test"),
        ),
    )
    .await;
    let answer = raw_exchange(t.addr, upgrade_head("/", "").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("connection: close") || answer.contains("Connection: close"));
    gw.shutdown().await;
    t.shutdown().await;
}

/// Opens `n` connections (each with the same client address, 127.0.0.1) and
/// returns how many each upstream saw.
async fn spread(gw: &Gateway, ups: &[&WsUpstream], n: usize, path: &str) -> Vec<usize> {
    let mut open = Vec::new();
    for _ in 0..n {
        open.push(connect(&gw.url(path)).await);
    }
    ups.iter().map(|u| u.seen.lock().unwrap().len()).collect()
}

#[tokio::test]
async fn strategies_are_observable_through_the_proxy() {
    let ups = [
        ws_upstream(WsUpstreamOptions::default()).await,
        ws_upstream(WsUpstreamOptions::default()).await,
        ws_upstream(WsUpstreamOptions::default()).await,
    ];
    let refs: Vec<&WsUpstream> = ups.iter().collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();

    // Round-robin: even.
    let gw = Gateway::start(round_robin(&addrs)).await;
    assert_eq!(spread(&gw, &refs, 6, "/").await, [2, 2, 2]);
    gw.shutdown().await;

    // Weighted 3:1:1 over 5 picks.
    let weighted: UpstreamSet = UpstreamSet::from_iter([
        Upstream::new(addrs[0]).weight(3),
        Upstream::new(addrs[1]),
        Upstream::new(addrs[2]),
    ]);
    let gw = Gateway::start(Proxy::builder().upstream(RoundRobin::new(weighted))).await;
    assert_eq!(spread(&gw, &refs, 5, "/").await, [2 + 3, 2 + 1, 2 + 1]);
    gw.shutdown().await;

    // IP hash: one client address, always the same upstream.
    let before: Vec<usize> = refs.iter().map(|u| u.seen.lock().unwrap().len()).collect();
    let gw = Gateway::start(Proxy::builder().upstream(IpHash::new(set(&addrs)))).await;
    let after = spread(&gw, &refs, 6, "/").await;
    let grew: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(grew.iter().filter(|g| **g == 6).count(), 1, "{grew:?}");
    gw.shutdown().await;

    // Consistent hash on ?room=: one room, one upstream.
    let before: Vec<usize> = refs.iter().map(|u| u.seen.lock().unwrap().len()).collect();
    let ring = ConsistentHash::new(set(&addrs), HashKey::Query("room".into()));
    let gw = Gateway::start(Proxy::builder().upstream(ring)).await;
    let after = spread(&gw, &refs, 5, "/chat?room=42").await;
    let grew: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(grew.iter().filter(|g| **g == 5).count(), 1, "{grew:?}");
    gw.shutdown().await;

    // Least-conn: with connections held open, new ones go to the least
    // loaded, so three held connections land on three upstreams (round-robin
    // would too: `least_conn_sends_new_connections_where_leases_were_released`
    // is the test that tells them apart).
    let before: Vec<usize> = refs.iter().map(|u| u.seen.lock().unwrap().len()).collect();
    let gw = Gateway::start(Proxy::builder().upstream(LeastConn::new(set(&addrs)))).await;
    let after = spread(&gw, &refs, 3, "/").await;
    let grew: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(grew, [1, 1, 1]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_down_upstream_is_skipped_and_all_down_is_502() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let dead = closed_port().await;
    let gw = Gateway::start(round_robin(&[dead, up.addr])).await;
    for _ in 0..4 {
        let mut ws = connect(&gw.url("/")).await;
        ws.send(Message::text("ok")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("ok"));
    }
    gw.shutdown().await;

    let gw = Gateway::start(round_robin(&[closed_port().await, closed_port().await])).await;
    let answer = raw_exchange(gw.addr, upgrade_head("/", "").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(
        gw.proxy
            .counters()
            .rejected_with(http::StatusCode::BAD_GATEWAY),
        1
    );
    gw.shutdown().await;
}

/// nginx `max_fails=2`: an upstream that accepts connections and drops them
/// unanswered is out after its second failure. A connect that succeeds is no
/// success for passive health; only an answer is. Each of its failures is
/// retried on the other upstream (`proxy_next_upstream error`), so no
/// client sees one.
#[tokio::test]
async fn an_upstream_that_accepts_but_never_answers_trips_max_fails() {
    use std::sync::atomic::Ordering;
    let good = ws_upstream(WsUpstreamOptions::default()).await;
    let (bad, accepted) = closes_unanswered().await;
    let set: UpstreamSet = [bad, good.addr]
        .into_iter()
        .map(|a| {
            Upstream::new(a)
                .max_fails(2)
                .fail_timeout(Duration::from_secs(600))
        })
        .collect();
    let gw = Gateway::start(Proxy::builder().upstream(RoundRobin::new(set))).await;
    for _ in 0..10 {
        let (mut ws, _) = bounded("an upgrade", tokio_tungstenite::connect_async(gw.url("/")))
            .await
            .unwrap();
        ws.send(Message::text("ok")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("ok"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the bad upstream kept its turn"
    );
    gw.shutdown().await;
}

/// An interim answer (103 Early Hints) reaches the client before the final
/// one, without its hop-by-hop fields.
#[tokio::test]
async fn an_interim_answer_is_relayed_without_hop_by_hop_fields() {
    let (upstream, _) = raw_upstream(
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\nConnection: x-secret\r\n\
          X-Secret: s\r\nKeep-Alive: timeout=5\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let gw = Gateway::start(round_robin(&[upstream])).await;
    let reply = raw_exchange(
        gw.addr,
        b"GET /page HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (interim, rest) = reply.split_once("\r\n\r\n").expect("an interim head");
    assert!(interim.starts_with("HTTP/1.1 103"), "{reply}");
    let interim = interim.to_ascii_lowercase();
    assert!(
        interim.contains("link: </app.css>; rel=preload"),
        "{interim}"
    );
    for gone in ["x-secret", "keep-alive", "connection"] {
        assert!(!interim.contains(gone), "{gone} relayed: {interim}");
    }
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.ends_with("ok"),
        "{rest}"
    );
    gw.shutdown().await;
}

/// A client that resets while the upstream sends interim answers (103):
/// that is the client's doing, not the upstream's, which stays available
/// (nginx never counts a client's error against a peer). The proxy sees it
/// through its watch on the client or through the failed write of a 103,
/// whichever comes first; both end the request as the client's.
#[tokio::test]
async fn a_client_gone_during_an_interim_answer_does_not_fail_the_upstream() {
    let good = ws_upstream(WsUpstreamOptions::default()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hinting = listener.local_addr().unwrap();
    let (go, go_rx) = oneshot::channel::<()>();
    let (ended, ended_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        let _ = go_rx.await;
        for _ in 0..2 {
            let hint = b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>\r\n\r\n";
            if s.write_all(hint).await.is_err() {
                break;
            }
        }
        // The proxy closes its side once it gave up on the client.
        let _ = read_to_end(&mut s).await;
        let _ = ended.send(());
    });
    let set = UpstreamSet::new();
    let id = set.add(Upstream::new(hinting));
    set.add(Upstream::new(good.addr));
    let gw = Gateway::start(Proxy::builder().upstream(RoundRobin::new(set.clone()))).await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(upgrade_head("/", "").as_bytes())
        .await
        .unwrap();
    // The upstream has the request: the client resets.
    bounded("the request upstream", async {
        while set.snapshot().get(id).unwrap().active() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    client.set_zero_linger().unwrap();
    drop(client);
    go.send(()).unwrap();
    bounded("the proxy to let go of the upstream", ended_rx)
        .await
        .unwrap();
    let request = http::Request::get("/").body(()).unwrap();
    let ctx = wsproxy::balance::PickContext::new(
        "127.0.0.1".parse().unwrap(),
        &request,
        std::time::Instant::now(),
    );
    assert!(set.snapshot().get(id).unwrap().is_available(&ctx));
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn silent_upstream_gets_504_at_the_read_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        // Holds the connection open and never answers.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(s);
    });
    let gw = Gateway::start(round_robin(&[addr]).read_timeout(Duration::from_secs(30))).await;
    let started = tokio::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(upgrade_head("/", "").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within(
        Duration::from_secs(120),
        "the 504",
        s.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
}

#[tokio::test]
async fn upstream_death_closes_client_and_client_death_closes_upstream() {
    // Upstream dies mid-tunnel.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (kill, killed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(s).await.unwrap();
        let _ = killed.await;
        drop(ws);
    });
    let gw = Gateway::start(round_robin(&[addr])).await;
    let mut ws = connect(&gw.url("/")).await;
    kill.send(()).unwrap();
    let end = bounded("client sees the close", async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    let () = end;

    // Client vanishes: the upstream sees EOF.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        // Ends with None or an error once the proxy closes its side.
        while let Some(Ok(_)) = ws.next().await {}
    });
    let gw2 = Gateway::start(round_robin(&[addr])).await;
    let ws = connect(&gw2.url("/")).await;
    drop(ws);
    bounded("upstream sees the client go", upstream)
        .await
        .unwrap();
    gw.shutdown().await;
    gw2.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_tunnel_closes_at_read_timeout_and_traffic_keeps_it_alive() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let gw = Gateway::start(round_robin(&[up.addr]).read_timeout(Duration::from_secs(60))).await;
    let mut ws = connect(&gw.url("/")).await;
    // Traffic every 40 s for 200 s: never 60 s of upstream silence.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(40)).await;
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(format!("{i}")));
    }
    let quiet = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "idle tunnel not closed");
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_secs(60) && after < Duration::from_secs(62),
        "{after:?}"
    );
    assert_eq!(gw.proxy.counters().tunnels_active, 0);
}

#[tokio::test(start_paused = true)]
async fn read_timeout_counts_upstream_silence_even_while_the_client_talks() {
    let up = ws_upstream(WsUpstreamOptions {
        silent: true,
        ..Default::default()
    })
    .await;
    let gw = Gateway::start(round_robin(&[up.addr]).read_timeout(Duration::from_secs(60))).await;
    let mut ws = connect(&gw.url("/")).await;
    let opened = tokio::time::Instant::now();
    // The client talks every 20 s; the upstream never answers. nginx's
    // proxy_read_timeout is about the upstream, so the tunnel still ends
    // 60 s after the upgrade.
    let ended = within(Duration::from_secs(300), "tunnel end", async {
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                },
                () = tokio::time::sleep(Duration::from_secs(20)) => {
                    if ws.send(Message::text("ping")).await.is_err() {
                        break;
                    }
                }
            }
        }
        opened.elapsed()
    })
    .await;
    assert!(
        ended >= Duration::from_secs(60) && ended < Duration::from_secs(62),
        "{ended:?}"
    );
}

/// Bytes behind an upgrade request belong to its tunnel; when the upstream
/// refuses the upgrade they are no request of their own: the answer goes
/// out with `Connection: close` and nothing behind it is proxied.
#[tokio::test]
async fn non_101_answers_are_relayed_and_bytes_behind_them_are_never_proxied() {
    for (status, answer) in [
        (
            426,
            &b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno"[..],
        ),
        (200, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ] {
        let (addr, seen) = raw_upstream(answer).await;
        let gw = Gateway::start(round_robin(&[addr])).await;
        // An upgrade and, in the same write, a second request that must
        // never reach the upstream, as raw tunnel bytes or as a request.
        let mut req = upgrade_head("/", "").into_bytes();
        req.extend_from_slice(
            b"GET /smuggled HTTP/1.1\r\nHost: internal\r\nConnection: close\r\n\r\n",
        );
        let reply = raw_exchange(gw.addr, &req).await;
        let status_line = format!("HTTP/1.1 {status}");
        assert!(reply.starts_with(&status_line), "{reply}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
        let body = if status == 426 { "no" } else { "ok" };
        assert!(reply.ends_with(body), "{reply}");
        await_records(&seen, 1).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let first = String::from_utf8_lossy(&seen[0]).into_owned();
        assert!(first.starts_with("GET / HTTP/1.1"), "{first}");
        assert!(
            !first.contains("/smuggled"),
            "smuggled bytes reached the upstream: {first}"
        );
        gw.shutdown().await;
    }
}

/// An embedding host relays the upstream's refusal as `Server` does: its
/// status, the headers a client acts on, and its body (chunked decoded).
#[tokio::test]
async fn an_embedded_upgrade_relays_the_upstreams_refusal_whole() {
    let refusals: [(&[u8], &str, &str, &str); 2] = [
        (
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"chat\"\r\n\
              Transfer-Encoding: chunked\r\n\r\n6\r\nlog in\r\n4\r\n ok?\r\n0\r\n\r\n",
            "HTTP/1.1 401",
            "www-authenticate: Bearer realm=\"chat\"",
            "log in ok?",
        ),
        (
            b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 5\r\n\r\nmoved",
            "HTTP/1.1 302",
            "location: /login",
            "moved",
        ),
    ];
    for (answer, status, header, body) in refusals {
        let (upstream, _) = raw_upstream(answer).await;
        let host = hyper_host(round_robin(&[upstream]).build().unwrap()).await;
        let mut s = TcpStream::connect(host).await.unwrap();
        s.write_all(upgrade_head("/", "").as_bytes()).await.unwrap();
        // The refusal closes the connection: read it all.
        let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
        let (head, got) = reply.split_once("\r\n\r\n").expect("a whole head");
        assert!(head.starts_with(status), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains(&header.to_ascii_lowercase()), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert_eq!(got, body);
    }
}

/// A refusal whose body stalls is relayed after a short wait without it,
/// not held for the read timeout (an hour here).
#[tokio::test(start_paused = true)]
async fn an_embedded_refusal_whose_body_stalls_goes_out_without_it() {
    let (upstream, _) =
        raw_upstream(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\npartial").await;
    let proxy = round_robin(&[upstream])
        .read_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let host = hyper_host(proxy).await;
    let started = tokio::time::Instant::now();
    let mut s = TcpStream::connect(host).await.unwrap();
    s.write_all(upgrade_head("/", "").as_bytes()).await.unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("content-length: 0"),
        "{reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn h2c_upgrade_is_not_tunneled() {
    let (addr, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[addr])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        .await
        .unwrap();
    let reply = String::from_utf8_lossy(&read_until(&mut s, b"\r\n\r\nok").await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    await_records(&seen, 1).await;
    let got = String::from_utf8_lossy(&seen.lock().unwrap()[0]).to_ascii_lowercase();
    assert!(!got.contains("upgrade: h2c"), "{got}");
    assert!(!got.contains("http2-settings"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_head_is_431() {
    let gw = Gateway::start(round_robin(&[closed_port().await])).await;
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    let reply = raw_exchange(gw.addr, upgrade_head("/", &big).as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    gw.shutdown().await;
}

/// nginx answers bytes that cannot start a request line (a TLS ClientHello
/// on the plain port) with 400 at once; with an hour-long handshake timeout,
/// waiting for the deadline would exceed the test's own bound.
#[tokio::test]
async fn junk_that_cannot_start_a_request_gets_400_at_once() {
    let (addr, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let gw =
        Gateway::start(round_robin(&[addr]).handshake_timeout(Duration::from_secs(3600))).await;
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"\x00\x00\x00\x00",
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let reply = String::from_utf8_lossy(&read_until(&mut s, b"\r\n\r\n").await).into_owned();
        assert!(reply.starts_with("HTTP/1.1 400"), "{junk:?}: {reply}");
    }
    assert!(seen.lock().unwrap().is_empty());
    gw.shutdown().await;
}

/// `GET /api/..%00/admin` must not reach the `/api/` upstream: nginx
/// answers 400 to an encoded NUL in the path.
#[tokio::test]
async fn an_encoded_nul_in_the_path_is_400_and_never_reaches_the_upstream() {
    let (addr, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let gw = Gateway::start(Proxy::builder().route(Route::new(
        "/api/",
        UpstreamGroup::new("api", RoundRobin::new(set(&[addr]))),
    )))
    .await;
    let reply = raw_exchange(
        gw.addr,
        b"GET /api/..%00/admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("encoded nul in request path"), "{reply}");
    assert!(seen.lock().unwrap().is_empty());
    gw.shutdown().await;
}

/// RFC 9112 §3 and nginx: 414 for a request line over the limit, 431 for
/// header fields over it.
#[tokio::test]
async fn an_overlong_request_line_is_414() {
    let gw = Gateway::start(round_robin(&[closed_port().await])).await;
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(20 * 1024));
    let reply = raw_exchange(gw.addr, long.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 414"), "{reply}");
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn slowloris_is_dropped_at_the_handshake_timeout() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let gw =
        Gateway::start(round_robin(&[up.addr]).handshake_timeout(Duration::from_secs(10))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let head = upgrade_head("/", "");
    // One byte a second: each byte arrives well within any per-read timer,
    // but the whole head cannot arrive within 10 s.
    let mut closed_at = None;
    for b in head.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut probe = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            let text = String::from_utf8_lossy(&probe[..n]).into_owned();
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("slow client never dropped");
    assert!(
        closed_at >= Duration::from_secs(10) && closed_at <= Duration::from_secs(12),
        "{closed_at:?}"
    );
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_lose_no_message() {
    let ups = [
        ws_upstream(WsUpstreamOptions::default()).await,
        ws_upstream(WsUpstreamOptions::default()).await,
    ];
    let gw = Gateway::start(round_robin(&[ups[0].addr, ups[1].addr])).await;
    let url = Arc::new(gw.url("/"));
    let mut clients = Vec::new();
    for c in 0..1000 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let (mut ws, _) =
                tokio::time::timeout(WAIT * 3, tokio_tungstenite::connect_async(url.as_str()))
                    .await
                    .expect("connect in time")
                    .expect("connect");
            for m in 0..50 {
                let text = format!("{c}:{m}");
                ws.send(Message::text(text.clone())).await.unwrap();
                let got = tokio::time::timeout(WAIT * 3, ws.next())
                    .await
                    .expect("echo in time")
                    .unwrap()
                    .unwrap();
                assert_eq!(got, Message::text(text));
            }
            ws.close(None).await.unwrap();
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let seen: usize = ups.iter().map(|u| u.seen.lock().unwrap().len()).sum();
    assert_eq!(seen, 1000);
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_drains_and_reports() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let gw = Gateway::start_with(round_robin(&[up.addr]), |s| {
        s.drain_timeout(Duration::from_secs(20))
    })
    .await;
    let addr = gw.addr;
    // One tunnel that ends by itself during the drain, two that outlive it.
    let mut short = connect(&gw.url("/")).await;
    let mut long = [connect(&gw.url("/")).await, connect(&gw.url("/")).await];
    let proxy = gw.proxy.clone();
    let shutdown = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Still serving the open tunnels while draining...
    short.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut short).await, Message::text("still here"));
    short.close(None).await.unwrap();
    assert!(matches!(next_data(&mut short).await, Message::Close(_)));
    drop(short);
    // ...but no longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
    let report = within(Duration::from_secs(120), "drain", shutdown)
        .await
        .unwrap();
    assert_eq!(report.open_at_shutdown, 3);
    assert_eq!(report.finished, 1);
    assert_eq!(report.cut, 2);
    for ws in &mut long {
        let closed = bounded("cut tunnel closes", async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        let () = closed;
    }
    assert_eq!(proxy.counters().tunnels_active, 0);
}

#[tokio::test]
async fn plain_http_is_proxied_with_bodies_and_keep_alive() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // An upstream that answers each request with its body echoed, chunked.
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let got = read_until(&mut s, b"0\r\n\r\n").await;
                let text = String::from_utf8_lossy(&got).into_owned();
                let reply = if text.contains("transfer-encoding: chunked")
                    && text.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                {
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nchnk\r\n0\r\n\r\n"
                } else {
                    "HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n"
                };
                s.write_all(reply.as_bytes()).await.unwrap();
            });
        }
    });
    let gw = Gateway::start(round_robin(&[addr])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req =
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    for _ in 0..2 {
        s.write_all(req).await.unwrap();
        let got = read_until(&mut s, b"0\r\n\r\n").await;
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        assert!(text.ends_with("4\r\nchnk\r\n0\r\n\r\n"), "{text}");
        // The client connection stays open for the next request.
        assert!(!text.contains("connection: close"), "{text}");
    }
    assert_eq!(gw.proxy.counters().proxied, 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn preflight_answers_are_framed_and_never_smuggle_a_body() {
    let (addr, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let policy = wsproxy::ForwardPolicy::builder()
        .cors(wsproxy::forward::Cors::origins(["https://ok.test"]))
        .build()
        .unwrap();
    let gw = Gateway::start(round_robin(&[addr]).policy(policy)).await;

    // A preflight whose "body" is a request: refused, never forwarded.
    let smuggled = "GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n";
    let req = format!(
        "OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: https://ok.test\r\n\
         Access-Control-Request-Method: PUT\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let reply = raw_exchange(gw.addr, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(!reply.contains("HTTP/1.1 200"), "{reply}");

    // A foreign origin's preflight gets a framed 403 and the connection
    // closes at once (no wait for a keep-alive timeout).
    let reply = raw_exchange(
        gw.addr,
        b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: https://evil.test\r\nAccess-Control-Request-Method: PUT\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("content-length:"),
        "{reply}"
    );

    // An allowed preflight: 204, and the connection serves the next request.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: https://ok.test\r\nAccess-Control-Request-Method: PUT\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    assert!(reply.contains("HTTP/1.1 200"), "{reply}");
    await_records(&seen, 1).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "only the GET after the preflight reaches the upstream"
    );
    assert!(String::from_utf8_lossy(&seen[0]).starts_with("GET /after HTTP/1.1"));
    gw.shutdown().await;
}

#[tokio::test]
async fn absolute_form_target_decides_the_host_the_upstream_sees() {
    let (addr, seen) =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let builder = Proxy::builder().route(
        Route::new(
            "/",
            UpstreamGroup::new("public", RoundRobin::new(set(&[addr]))),
        )
        .host("public.example"),
    );
    let gw = Gateway::start(builder).await;
    let reply = raw_exchange(
        gw.addr,
        b"GET http://public.example/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    await_records(&seen, 1).await;
    let got = String::from_utf8_lossy(&seen.lock().unwrap()[0]).to_ascii_lowercase();
    assert!(got.starts_with("get /x http/1.1\r\n"), "{got}");
    assert!(got.contains("host: public.example\r\n"), "{got}");
    assert!(!got.contains("admin.internal"), "{got}");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_answering_before_the_body_is_relayed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig",
        )
        .await
        .unwrap();
        // Stops reading and goes away, as upstreams that refuse a body do.
        drop(s);
    });
    // No body limit: the 413 under test is the upstream's, not the proxy's.
    let gw = Gateway::start(round_robin(&[addr]).client_max_body_size(0)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let size = 32 * 1024 * 1024;
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let upload = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut reply = Vec::new();
    bounded("the early answer", rd.read_to_end(&mut reply))
        .await
        .ok();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.ends_with("big"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    upload.abort();
    gw.shutdown().await;
}

/// An upstream that answers 200 at once and then echoes the body (a
/// streaming handler) gets the whole body, and the client the whole echo,
/// both at once: 32 MiB, far past any socket buffer, so an answer held
/// until the body is through would stall both.
#[tokio::test]
async fn an_early_200_does_not_stop_the_request_body() {
    const SIZE: usize = 32 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (answered_tx, answered) = oneshot::channel();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let got = read_until(&mut s, b"\r\n\r\n").await;
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = got[head_end..].to_vec();
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        answered_tx.send(()).unwrap();
        let mut echoed = 0;
        let mut buf = vec![0; 16 * 1024];
        bounded("the body upstream", async {
            while echoed < SIZE {
                if echoed == body.len() {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&buf[..n]),
                    }
                }
                let chunk = &body[echoed..];
                s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await
                    .unwrap();
                s.write_all(chunk).await.unwrap();
                s.write_all(b"\r\n").await.unwrap();
                echoed = body.len();
            }
        })
        .await;
        s.write_all(b"0\r\n\r\n").await.unwrap();
        body
    });
    let gw = Gateway::start(round_robin(&[addr]).client_max_body_size(0)).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let sent: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    wr.write_all(
        format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // The answer's head is out before any of the body.
    bounded("the upstream's head", answered).await.unwrap();
    let body = sent.clone();
    let upload = tokio::spawn(async move {
        wr.write_all(&body[..SIZE / 2]).await.unwrap();
        wr.write_all(&body[SIZE / 2..]).await.unwrap();
        wr
    });
    let mut reply = Vec::new();
    bounded("the echo", async {
        while !reply.ends_with(b"\r\n0\r\n\r\n") {
            let mut buf = [0; 16 * 1024];
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _wr = bounded("the upload", upload).await.unwrap();
    assert_eq!(bounded("upstream", upstream).await.unwrap(), sent);
    let head_end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    assert_eq!(dechunk(&reply[head_end..]), sent);
    gw.shutdown().await;
}

/// An upstream that answers at once and never reads the body: its answer
/// reaches the client at once, not when the body's write times out, and
/// the rest of the body is given up.
#[tokio::test(start_paused = true)]
async fn an_early_redirect_from_an_upstream_that_never_reads_comes_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        // Holds the connection and reads nothing more.
        std::future::pending::<()>().await;
    });
    let gw = Gateway::start(round_robin(&[addr]).client_max_body_size(0)).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let size = 64 * 1024 * 1024;
    wr.write_all(
        format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let upload = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let answer = within(Duration::from_secs(600), "the redirect", async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 302"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    upload.abort();
}

/// The data of a chunked body (no extensions or trailers).
fn dechunk(mut framed: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    // Bounded: each turn consumes one chunk.
    loop {
        let line = framed.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&framed[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            return data;
        }
        data.extend_from_slice(&framed[line + 2..line + 2 + size]);
        framed = &framed[line + 4 + size..];
    }
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_proxy() {
    let (addr, seen) = raw_upstream_after(
        b"hello",
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(round_robin(&[addr])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // A strict client sends nothing until it sees the 100.
    let interim = read_until(&mut s, b"\r\n\r\n").await;
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{interim:?}"
    );
    s.write_all(b"hello").await.unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    await_records(&seen, 1).await;
    let got = String::from_utf8_lossy(&seen.lock().unwrap()[0]).to_ascii_lowercase();
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
    assert!(!got.contains("expect:"), "{got}");
    gw.shutdown().await;
}

#[tokio::test]
async fn http10_clients_get_http10_upstream_requests_and_close() {
    let (addr, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[addr])).await;
    let reply = raw_exchange(gw.addr, b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    assert!(reply.ends_with("ok"), "{reply}");
    await_records(&seen, 1).await;
    let got = String::from_utf8_lossy(&seen.lock().unwrap()[0]).into_owned();
    // An upstream never answers a 1.0 request chunked.
    assert!(got.starts_with("GET /old HTTP/1.0\r\n"), "{got}");
    gw.shutdown().await;
}

#[tokio::test]
async fn content_length_bodies_and_pipelined_requests_arrive_intact() {
    let (addr, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[addr])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nworld",
    )
    .await
    .unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    await_records(&seen, 2).await;
    let mut got: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    got.sort();
    assert!(
        got[0].starts_with("POST /one ") && got[0].ends_with("\r\n\r\nhello"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("POST /two ") && got[1].ends_with("\r\n\r\nworld"),
        "{got:?}"
    );
    gw.shutdown().await;
}

/// nginx `proxy_redirect default` with `location /chat/ { proxy_pass
/// http://up/; }`: a redirect to the upstream's `/login` comes back as
/// `/chat/login`, on the client's host.
#[tokio::test]
async fn a_redirect_through_a_stripped_prefix_keeps_the_prefix() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer =
        format!("HTTP/1.1 302 Found\r\nLocation: http://{addr}/login\r\nContent-Length: 0\r\n\r\n");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(answer.as_bytes()).await.unwrap();
    });
    let route = Route::new(
        "/chat/",
        UpstreamGroup::new("chat", RoundRobin::new(set(&[addr]))),
    )
    .strip_prefix();
    let gw = Gateway::start(Proxy::builder().route(route)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /chat/x HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).to_ascii_lowercase();
    assert!(
        reply.contains("location: http://app.example/chat/login\r\n"),
        "{reply}"
    );
    gw.shutdown().await;
}

/// An upstream's equal Content-Length repeats reach the client as one
/// value (RFC 9110 §8.6); an HTTP/1.0 answer with Transfer-Encoding is
/// faulty framing (RFC 9112 §6.1) and ends the connection after it.
#[tokio::test]
async fn upstream_framing_is_normalised_or_closes() {
    for (answer, check) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"[..],
            "content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
            "content-length",
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "close",
        ),
    ] {
        let (addr, _) = raw_upstream(answer).await;
        let gw = Gateway::start(round_robin(&[addr])).await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let reply = String::from_utf8_lossy(&read_until(&mut s, b"ok").await).to_ascii_lowercase();
        assert!(reply.starts_with("http/1.1 200"), "{reply}");
        if check == "content-length" {
            assert_eq!(reply.matches("content-length").count(), 1, "{reply}");
            assert!(reply.contains("content-length: 2\r\n"), "{reply}");
        } else {
            assert!(reply.contains("connection: close"), "{reply}");
            // Read to EOF: the gateway closed after the answer.
            let rest = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
            assert!((reply + &rest).ends_with("ok\r\n0\r\n\r\n"));
        }
        gw.shutdown().await;
    }
}

/// Everything the gateway sends until it closes, waited for at most
/// `limit` (virtual time on a paused clock).
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut reply = Vec::new();
    within(limit, "the gateway's close", s.read_to_end(&mut reply))
        .await
        .unwrap();
    reply
}

/// A body that stops coming gets 408 at the read timeout (nginx
/// `client_body_timeout`), not a bare close.
#[tokio::test(start_paused = true)]
async fn a_stalled_request_body_is_408() {
    let (addr, _) =
        raw_upstream_after(b"never", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let gw = Gateway::start(round_robin(&[addr]).handshake_timeout(Duration::from_secs(10))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\nxx")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let reply = until_closed(&mut s, Duration::from_secs(60)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "{:?}",
        started.elapsed()
    );
}

/// A CRLF after a request (RFC 9112 §2.2) is no next request: the idle
/// connection waits out its keep-alive, not the head timeout, and gets no
/// 408 it never asked for.
#[tokio::test(start_paused = true)]
async fn a_blank_line_between_requests_is_ignored() {
    let (addr, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let builder = round_robin(&[addr])
        .handshake_timeout(Duration::from_secs(10))
        .keepalive_timeout(Duration::from_secs(75));
    let gw = Gateway::start(builder).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let reply = until_closed(&mut s, Duration::from_secs(600)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    assert!(
        started.elapsed() >= Duration::from_secs(75),
        "{:?}",
        started.elapsed()
    );

    // The same with the blank line in a read of its own, after the answer.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let answer = read_until(&mut s, b"\r\n\r\nok").await;
    s.write_all(b"\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    let reply = until_closed(&mut s, Duration::from_secs(600)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
    assert!(
        started.elapsed() >= Duration::from_secs(74),
        "{:?}",
        started.elapsed()
    );
}

/// A reconfigure's handshake timeout applies to the next connection of a
/// `Server` already serving (it was read once, when serving began).
#[tokio::test(start_paused = true)]
async fn a_reconfigured_handshake_timeout_applies_to_the_next_connection() {
    let (addr, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[addr]).handshake_timeout(Duration::from_secs(60))).await;
    // Served once, so the server's accept loop runs before the change.
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_end(&mut first).await.starts_with(b"HTTP/1.1 200"));
    let next = round_robin(&[addr])
        .handshake_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    gw.proxy.reconfigure(next);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    let reply = until_closed(&mut s, Duration::from_secs(120)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(6), "{waited:?}");
}

/// A connection that never sends a byte (a browser's preconnect) is closed
/// at the head timeout without a 408.
#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_without_an_answer() {
    let (addr, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[addr]).handshake_timeout(Duration::from_secs(10))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let reply = until_closed(&mut s, Duration::from_secs(60)).await;
    assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
}

/// Frames sent right behind an upgrade the upstream refuses are not read
/// as a next request (which answered a second time, 400).
#[tokio::test]
async fn a_refused_upgrade_with_early_frames_closes_after_its_answer() {
    let (addr, _) = raw_upstream(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno").await;
    let gw = Gateway::start(round_robin(&[addr])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut out = upgrade_head("/", "").into_bytes();
    out.extend(masked_frame(0x1, b"hello"));
    s.write_all(&out).await.unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    gw.shutdown().await;
}

/// HTTP/1.0 has no 1xx: `Expect: 100-continue` from a 1.0 client is
/// ignored (RFC 9110 §10.1.1), not answered with a 100 it cannot parse.
#[tokio::test]
async fn an_http10_expect_gets_no_100() {
    let (addr, _) = raw_upstream_after(
        b"hello",
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(round_robin(&[addr])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    )
    .await
    .unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    assert!(!reply.contains(" 100 "), "{reply}");
    gw.shutdown().await;
}

/// A timeout as long as a caller likes means "never": nothing adds it to
/// the clock and panics (it did, on the first connection).
#[tokio::test]
async fn durations_as_long_as_duration_max_are_never_and_do_not_panic() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let (plain, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let builder = round_robin(&[up.addr])
        .handshake_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .read_timeout(Duration::MAX)
        .send_timeout(Duration::MAX)
        .keepalive_timeout(Duration::MAX);
    let gw = Gateway::start_with(builder, |s| {
        s.drain_timeout(Duration::MAX).drain_window(Duration::MAX)
    })
    .await;
    let mut ws = client(gw.addr).await;
    echo(&mut ws, "through".into()).await;
    drop(ws);
    let report = bounded("a drain", gw.proxy.drain(Duration::MAX, Duration::MAX)).await;
    assert_eq!(report.cut, 0);
    gw.shutdown().await;
    // The server's own drain, with a tunnel open: the first of one close
    // goes out at once, however long the window.
    let gw = Gateway::start_with(round_robin(&[up.addr]), |s| s.drain_window(Duration::MAX)).await;
    let mut ws = client(gw.addr).await;
    echo(&mut ws, "still".into()).await;
    let stopping = tokio::spawn(gw.shutdown());
    let (code, _) = await_close(&mut ws).await;
    assert_eq!(code, Some(1001));
    bounded("the server's drain", stopping).await.unwrap();

    let fails = Upstream::new(closed_port().await).fail_timeout(Duration::MAX);
    let set: UpstreamSet = [fails, Upstream::new(plain)].into_iter().collect();
    let gw = Gateway::start(
        Proxy::builder()
            .upstream(RoundRobin::new(set))
            .handshake_timeout(Duration::MAX)
            .read_timeout(Duration::MAX),
    )
    .await;
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    gw.shutdown().await;
}

/// nginx `keepalive_timeout 0`: keep-alive off, one answer per connection.
#[tokio::test]
async fn a_zero_keepalive_timeout_closes_after_each_answer() {
    let (addr, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[addr]).keepalive_timeout(Duration::ZERO)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    s.write_all(&[&one[..], one].concat()).await.unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).to_ascii_lowercase();
    assert_eq!(reply.matches("http/1.1 200").count(), 1, "{reply}");
    assert_eq!(reply.matches("connection: close").count(), 1, "{reply}");
    gw.shutdown().await;
}

#[tokio::test]
async fn keepalive_requests_caps_a_connection() {
    let (addr, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[addr]).keepalive_requests(2)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    s.write_all(&[&one[..], one, one].concat()).await.unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut s).await).to_ascii_lowercase();
    assert_eq!(reply.matches("http/1.1 200").count(), 2, "{reply}");
    assert_eq!(reply.matches("connection: close").count(), 1, "{reply}");
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn keepalive_timeout_closes_an_idle_client_connection() {
    let (addr, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[addr]).keepalive_timeout(Duration::from_secs(75))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, b"\r\n\r\nok").await;
    let idle = tokio::time::Instant::now();
    let mut rest = Vec::new();
    within(
        Duration::from_secs(600),
        "keep-alive close",
        s.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    let waited = idle.elapsed();
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_secs(75) && waited < Duration::from_secs(77),
        "{waited:?}"
    );
}

/// A listener that never accepts, with its backlog full: further SYNs are
/// dropped and connects hang until the fillers go.
async fn full_backlog() -> (TcpListener, SocketAddr, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(100), socket.connect(addr)).await
        {
            fillers.push(s);
        }
    }
    (full, addr, fillers)
}

#[tokio::test(start_paused = true)]
async fn connect_timeouts_on_every_upstream_give_504() {
    // A listener that never accepts, with its backlog full: further SYNs
    // are dropped and connects hang.
    let (full, addr, _fillers) = full_backlog().await;
    let gw = Gateway::start(round_robin(&[addr]).connect_timeout(Duration::from_secs(4))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(upgrade_head("/", "").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within(
        Duration::from_secs(60),
        "the 504",
        s.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    drop(full);
}

#[tokio::test]
async fn a_cancelled_serve_still_counts_its_tunnel_out() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = round_robin(&[up.addr]).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = proxy.clone();
    let (opened, is_open) = oneshot::channel::<()>();
    let host = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        // The host gives each connection a budget and drops it when it ends.
        let serve = p.serve(stream, peer, wsproxy::Scheme::Http);
        tokio::select! {
            _ = serve => {}
            _ = is_open => {}
        }
    });
    let mut ws = connect(&format!("ws://{addr}/")).await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("x"));
    assert_eq!(proxy.counters().tunnels_active, 1);
    opened.send(()).unwrap();
    bounded("host task", host).await.unwrap();
    let counters = proxy.counters();
    assert_eq!(counters.tunnels_active, 0);
    assert!(counters.tunnels_by_upstream.is_empty());
}

/// A host that lends its stream (`&mut TcpStream`) keeps it after the
/// tunnel: the client must get its FIN from the tunnel's shutdown, not wait
/// for the host to drop the socket.
#[tokio::test]
async fn a_borrowed_client_stream_is_shut_down_when_its_tunnel_ends() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = round_robin(&[up.addr]).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let host = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let report = proxy.serve(&mut stream, peer, wsproxy::Scheme::Http).await;
        // Held long after the call returned.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
        report
    });
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(upgrade_head("/", "").as_bytes()).await.unwrap();
    let head = read_until(&mut c, b"\r\n\r\n").await;
    assert!(head.starts_with(b"HTTP/1.1 101"));
    // The client closes (1000) and half-closes; the upstream answers the
    // Close and closes: the tunnel ends with the upstream's direction last.
    c.write_all(&masked_frame(0x8, &[0x03, 0xe8]))
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(
        Duration::from_secs(5),
        "the FIN while the host holds the stream",
        c.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert_eq!(rest, [0x88, 0x02, 0x03, 0xe8], "the upstream's Close");
    host.abort();
}

#[tokio::test]
async fn the_connection_report_counts_plain_body_bytes() {
    let (addr, _) =
        raw_upstream_after(b"hello", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = round_robin(&[addr]).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        proxy.serve(stream, peer, wsproxy::Scheme::Http).await
    });
    let reply = raw_exchange(
        gw,
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(reply.ends_with("ok"), "{reply}");
    let report = bounded("report", served).await.unwrap();
    assert_eq!((report.body_from_client, report.body_from_upstream), (5, 2));
    assert_eq!(report.status, Some(http::StatusCode::OK));
}

#[tokio::test]
async fn least_conn_sends_new_connections_where_leases_were_released() {
    // Each upstream names itself in its first message, so the test knows
    // where every connection landed.
    let mut ups = Vec::new();
    for name in ["a", "b", "c"] {
        ups.push(
            ws_upstream(WsUpstreamOptions {
                announce: Some(name),
                ..Default::default()
            })
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let gw = Gateway::start(Proxy::builder().upstream(LeastConn::new(set(&addrs)))).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&gw.url("/")).await;
        let Message::Text(name) = next_data(&mut ws).await else {
            panic!("expected the upstream's name");
        };
        open.push((name.to_string(), ws));
    }
    let mut names: Vec<&str> = open.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);

    // Keep only the tunnel to `a`; the other two leases are released.
    open.retain(|(name, _)| name == "a");
    bounded("two tunnels closed", async {
        while gw.proxy.counters().tunnels_active != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Least-conn picks the two idle upstreams; round-robin would pick `a`
    // and `b` next.
    let mut next = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(&gw.url("/")).await;
        let Message::Text(name) = next_data(&mut ws).await else {
            panic!("expected the upstream's name");
        };
        next.push(name.to_string());
        open.push((name.to_string(), ws));
    }
    next.sort();
    assert_eq!(next, ["b", "c"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_refused_connect_is_502_with_the_socket_error_as_its_source() {
    let proxy = round_robin(&[closed_port().await]).build().unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let err = bounded(
        "the refused connect",
        proxy.connect_upgrade(parsed_upgrade("/ws"), peer, wsproxy::Scheme::Http),
    )
    .await
    .unwrap_err();
    assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);
    let wsproxy::UpgradeError::Connect(connect) = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(connect, wsproxy::ConnectError::Io { .. }),
        "{connect:?}"
    );
    // The chain reaches the socket's own error: UpgradeError -> ConnectError
    // -> io::Error.
    let io = std::error::Error::source(&err)
        .and_then(std::error::Error::source)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(start_paused = true)]
async fn connect_timeouts_on_every_upstream_are_504_and_name_the_timeout() {
    // A listener that never accepts, with its backlog full, as in
    // `connect_timeouts_on_every_upstream_give_504`.
    let (full, addr, _fillers) = full_backlog().await;
    let proxy = round_robin(&[addr])
        .connect_timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let err = within(
        Duration::from_secs(60),
        "the connect timeouts",
        proxy.connect_upgrade(parsed_upgrade("/ws"), peer, wsproxy::Scheme::Http),
    )
    .await
    .unwrap_err();
    assert_eq!(err.status(), http::StatusCode::GATEWAY_TIMEOUT);
    let wsproxy::UpgradeError::Connect(connect) = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(connect, wsproxy::ConnectError::TimedOut { timeout, .. } if *timeout == Duration::from_secs(4)),
        "{connect:?}"
    );
    drop(full);
}

/// Runs `pending`'s tunnel and checks that the proxy lists it and can cut
/// it.
async fn tunnel_is_listed_and_cut(proxy: &Proxy, pending: wsproxy::PendingUpgrade) {
    let (client, _far) = tokio::io::duplex(64 * 1024);
    let tunnel = tokio::spawn(pending.tunnel(client));
    bounded("the tunnel listed", async {
        while proxy.counters().tunnels_active == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(proxy.tunnels().len(), 1);
    assert_eq!(proxy.cut_tunnels(), 1);
    bounded("the cut tunnel", tunnel).await.unwrap();
}

/// A reconfigure that takes a group out of the routes while an upgrade to
/// it is under way keeps the group reachable: the tunnel that opens after
/// it is listed and can be cut (it could be neither).
#[tokio::test]
async fn a_tunnel_opening_after_its_group_was_reconfigured_away_stays_listed() {
    let a = ws_upstream(WsUpstreamOptions::default()).await;
    let b = ws_upstream(WsUpstreamOptions::default()).await;
    let group = |name: &str, addr| UpstreamGroup::new(name, RoundRobin::new(set(&[addr])));
    let proxy = Proxy::builder()
        .route(Route::new("/", group("a", a.addr)))
        .build()
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let pending = bounded(
        "the upgrade",
        proxy.connect_upgrade(parsed_upgrade("/ws"), peer, wsproxy::Scheme::Http),
    )
    .await
    .unwrap();
    proxy.reconfigure(
        Proxy::builder()
            .route(Route::new("/", group("b", b.addr)))
            .build()
            .unwrap(),
    );
    tunnel_is_listed_and_cut(&proxy, pending).await;
    // Once it ended, the retired group goes.
    proxy.remove_drained();
    assert_eq!(proxy.groups().len(), 1);
}

/// The same with the reconfigure while the upstream connect is still
/// under way (held by a full accept queue): the group stays reachable.
#[tokio::test]
async fn a_reconfigure_during_the_upstream_connect_keeps_the_tunnel_listed() {
    let (full, addr, fillers) = full_backlog().await;
    let b = ws_upstream(WsUpstreamOptions::default()).await;
    let group = |name: &str, addr| UpstreamGroup::new(name, RoundRobin::new(set(&[addr])));
    let proxy = Proxy::builder()
        .route(Route::new("/", group("a", addr)))
        .connect_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let upgrading = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            proxy
                .connect_upgrade(parsed_upgrade("/ws"), peer, wsproxy::Scheme::Http)
                .await
        }
    });
    // The proxy's SYN is dropped while the queue is full.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!upgrading.is_finished());
    proxy.reconfigure(
        Proxy::builder()
            .route(Route::new("/", group("b", b.addr)))
            .build()
            .unwrap(),
    );
    // Room in the queue: the retransmitted SYN gets through.
    drop(fillers);
    let upstream = tokio::spawn(async move {
        for _ in 0..8 {
            let (tcp, _) = full.accept().await.unwrap();
            let mut first = [0u8; 3];
            if tcp.peek(&mut first).await.unwrap_or(0) == 3 && &first == b"GET" {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
        }
    });
    let pending = within(Duration::from_secs(30), "the held upgrade", upgrading)
        .await
        .unwrap()
        .unwrap();
    tunnel_is_listed_and_cut(&proxy, pending).await;
    upstream.abort();
}

/// A host that drops `Proxy::serve`'s future mid-request (its own timeout)
/// still gets the request counted as abandoned and its hook called, as
/// every other embedded path does.
#[tokio::test]
async fn a_dropped_serve_future_counts_its_request_abandoned_and_reports_it() {
    let (silent, _) = raw_upstream_after(b"never sent", b"").await;
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = calls.clone();
    let proxy = round_robin(&[silent])
        .on_connection_end(move |_, report| record.lock().unwrap().push(report.outcome))
        .build()
        .unwrap();
    let (mut client, io) = tokio::io::duplex(4096);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let served = tokio::time::timeout(
        Duration::from_millis(300),
        proxy.serve(io, peer, wsproxy::Scheme::Http),
    )
    .await;
    assert!(served.is_err(), "the upstream never answers");
    assert_eq!(proxy.counters().abandoned, 1);
    assert_eq!(
        *calls.lock().unwrap(),
        [Some(wsproxy::proxy::Outcome::Abandoned)]
    );
}

/// A tunnel whose future the host drops (its own timeout) still adds the
/// bytes it moved since the last progress report to the counters.
#[tokio::test]
async fn a_cancelled_tunnel_counts_its_last_bytes() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = round_robin(&[up.addr]).build().unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let pending = bounded(
        "the upgrade",
        proxy.connect_upgrade(parsed_upgrade("/ws"), peer, wsproxy::Scheme::Http),
    )
    .await
    .unwrap();
    let (mut client, io) = tokio::io::duplex(64 * 1024);
    let frame = masked_frame(0x1, b"counted");
    client.write_all(&frame).await.unwrap();
    let mut echo = [0u8; 9];
    let ran = tokio::time::timeout(Duration::from_millis(300), async {
        let tunnel = pending.tunnel(io);
        tokio::pin!(tunnel);
        tokio::select! {
            _ = &mut tunnel => panic!("the tunnel ended"),
            read = client.read_exact(&mut echo) => read.unwrap(),
        };
        // Held open until the host's timeout drops it.
        tunnel.await
    })
    .await;
    assert!(ran.is_err());
    assert_eq!(&echo[2..], b"counted");
    let counters = proxy.counters();
    assert_eq!(counters.tunnels_active, 0);
    assert_eq!(counters.bytes_from_client, frame.len() as u64);
    assert_eq!(counters.bytes_from_upstream, echo.len() as u64);
}

/// What a proxy's `on_connection_end` hook saw: (status, outcome, tunnel
/// bytes up) per connection.
type Ended =
    Arc<std::sync::Mutex<Vec<(Option<u16>, Option<wsproxy::proxy::Outcome>, Option<u64>)>>>;

/// A proxy with `/echo` to `echo` and `/dead` to nothing listening, whose
/// hook records every finished connection.
async fn parity_proxy(echo: SocketAddr) -> (Proxy, Ended) {
    let ended: Ended = Arc::default();
    let record = ended.clone();
    let dead = closed_port().await;
    let proxy = Proxy::builder()
        .route(Route::new(
            "/echo",
            UpstreamGroup::new("echo", RoundRobin::new(set(&[echo]))),
        ))
        .route(Route::new(
            "/dead",
            UpstreamGroup::new("dead", RoundRobin::new(set(&[dead]))),
        ))
        .on_connection_end(move |_, report| {
            record.lock().unwrap().push((
                report.status.map(|s| s.as_u16()),
                report.outcome,
                report.tunnel.as_ref().map(|t| t.client_to_upstream),
            ));
        })
        .build()
        .unwrap();
    (proxy, ended)
}

/// One echo, one 404 and one 502 through `addr`, as tungstenite clients;
/// returns once every connection has been reported.
async fn scripted_traffic(addr: SocketAddr, ended: &Ended) {
    let mut ws = connect(&format!("ws://{addr}/echo")).await;
    ws.send(Message::text("parity")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("parity"));
    ws.close(None).await.unwrap();
    assert!(next_data(&mut ws).await.is_close());
    // Closing TCP too ends the tunnel now, not one close linger later.
    drop(ws);
    for (path, status) in [("/nowhere", 404), ("/dead", 502)] {
        assert_eq!(refused_upgrade(addr, path).await, status);
    }
    // The tunnel's report comes when it has ended on the proxy's side.
    bounded("three reports", async {
        while ended.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn server_and_connect_upgrade_count_and_report_the_same_traffic_alike() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;

    let (served, served_ended) = parity_proxy(up.addr).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(wsproxy::Server::new(served.clone()).serve(listener, async {
        let _ = stopped.await;
    }));
    scripted_traffic(addr, &served_ended).await;

    let (embedded, embedded_ended) = parity_proxy(up.addr).await;
    let host = hyper_host(embedded.clone()).await;
    scripted_traffic(host, &embedded_ended).await;

    let (a, b) = (served.counters(), embedded.counters());
    println!("server: {a:?}\nembedded: {b:?}");
    assert_eq!((a.connections, b.connections), (3, 3));
    assert_eq!((a.requests, b.requests), (3, 3));
    assert_eq!((a.handshakes, b.handshakes), (3, 3));
    assert_eq!(a.rejected, b.rejected);
    assert_eq!(a.rejected_with(http::StatusCode::NOT_FOUND), 1);
    assert_eq!(a.rejected_with(http::StatusCode::BAD_GATEWAY), 1);
    assert_eq!((a.tunnels_total, b.tunnels_total), (1, 1));
    assert_eq!((a.tunnels_active, b.tunnels_active), (0, 0));
    assert_eq!(a.bytes_from_client, b.bytes_from_client);
    assert_eq!(a.bytes_from_upstream, b.bytes_from_upstream);
    assert!(a.bytes_from_client > 0);
    assert_eq!(a, b);

    // The hook fired once per connection, with the same reports.
    let sorted = |ended: &Ended| {
        let mut v = ended.lock().unwrap().clone();
        v.sort_by_key(|e| e.0);
        v
    };
    let (ra, rb) = (sorted(&served_ended), sorted(&embedded_ended));
    assert_eq!(ra, rb);
    use wsproxy::proxy::Outcome;
    assert_eq!(ra[0].0, Some(101));
    assert_eq!(ra[0].1, Some(Outcome::Tunneled));
    assert_eq!(ra[0].2, Some(a.bytes_from_client));
    assert_eq!(
        ra[1].1,
        Some(Outcome::Rejected(http::StatusCode::NOT_FOUND))
    );
    assert_eq!(
        ra[2].1,
        Some(Outcome::Rejected(http::StatusCode::BAD_GATEWAY))
    );

    let _ = stop.send(());
    bounded("server stop", server).await.unwrap().unwrap();
}

/// Waits until `proxy`'s counters show at least `n` bytes each way.
async fn bytes_reach(proxy: &Proxy, n: u64) {
    bounded("bytes in the counters", async {
        loop {
            let c = proxy.counters();
            if c.bytes_from_client >= n && c.bytes_from_upstream >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// An upgrade under way when an embedding host drains completes after the
/// drain returned (no tunnel was open): its tunnel gets Close 1001 as it
/// opens instead of running on unasked.
#[tokio::test]
async fn an_upgrade_in_flight_at_a_drain_gets_1001_as_its_tunnel_opens() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (reached_tx, reached) = oneshot::channel();
    let (release_tx, release) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        reached_tx.send(()).unwrap();
        let _ = release.await;
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // Echo until the proxy's close reaches here.
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
    });
    let proxy = round_robin(&[upstream]).build().unwrap();
    let host = hyper_host(proxy.clone()).await;
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(host).await.unwrap();
        tokio_tungstenite::client_async(format!("ws://{host}/"), tcp).await
    });
    bounded("the upgrade reaches the upstream", reached)
        .await
        .unwrap();
    let report = bounded(
        "the drain",
        proxy.drain(Duration::from_millis(100), Duration::from_secs(2)),
    )
    .await;
    assert_eq!(report.open_at_shutdown, 0);
    release_tx.send(()).unwrap();
    let (mut ws, _) = bounded("the 101", client).await.unwrap().unwrap();
    let (code, _) = await_close(&mut ws).await;
    assert_eq!(code, Some(1001));
}

/// An upgrade request with a body is 400 on both paths, never forwarded: the
/// upstream would read the client's first frames as that body.
#[tokio::test]
async fn an_upgrade_with_a_body_is_400_through_server_and_an_embedding_host() {
    // Answers 500 to whatever reaches it: a 400 is the proxy's own.
    let (upstream, _) = raw_upstream(b"HTTP/1.1 500 Unexpected\r\ncontent-length: 0\r\n\r\n").await;
    let proxy = round_robin(&[upstream]).build().unwrap();
    let gw = Gateway::start(round_robin(&[upstream])).await;
    let host = hyper_host(proxy.clone()).await;
    for addr in [gw.addr, host] {
        let mut request = upgrade_head("/", "Content-Length: 4\r\n").into_bytes();
        request.extend_from_slice(b"abcd");
        // The head only: a host may keep the connection open after it.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request).await.unwrap();
        let answer = read_until(&mut s, b"\r\n\r\n").await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{addr}: {answer}");
    }
    // Counted alike: a handshake, refused.
    for counters in [gw.proxy.counters(), proxy.counters()] {
        assert_eq!(counters.handshakes, 1);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn bytes_reach_the_counters_every_64_kib_while_a_tunnel_runs() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = round_robin(&[up.addr]).build().unwrap();
    let gw_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gw_listener.local_addr().unwrap();
    tokio::spawn(wsproxy::Server::new(proxy.clone()).serve(gw_listener, std::future::pending()));
    let host = hyper_host(proxy.clone()).await;

    let mut server_ws = connect(&format!("ws://{gw}/")).await;
    let mut hosted_ws = connect(&format!("ws://{host}/")).await;
    let big = Message::binary(vec![7u8; 100 * 1024]);
    for (i, ws) in [&mut server_ws, &mut hosted_ws].into_iter().enumerate() {
        ws.send(big.clone()).await.unwrap();
        assert_eq!(next_data(ws).await, big);
        // Both tunnels still open, and the bytes already counted.
        bytes_reach(&proxy, (i as u64 + 1) * 100 * 1024).await;
        assert_eq!(proxy.counters().tunnels_active, 2);
    }
    // Ended, the totals are exact: nothing counted twice.
    for ws in [&mut server_ws, &mut hosted_ws] {
        ws.close(None).await.unwrap();
        assert!(next_data(ws).await.is_close());
    }
    // Closing TCP too ends the tunnels now, not one close linger later.
    drop((server_ws, hosted_ws));
    bounded("tunnels end", async {
        while proxy.counters().tunnels_active > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let c = proxy.counters();
    // Each way: the frame (100 KiB payload, 4-byte extended length, and a
    // mask from the client) twice, and the two Close frames.
    let frame = 100 * 1024 + 2 + 8;
    assert_eq!(c.bytes_from_client, 2 * (frame + 4 + 6));
    assert_eq!(c.bytes_from_upstream, 2 * (frame + 2));
}

#[tokio::test(start_paused = true)]
async fn a_trickle_reaches_the_counters_once_a_second_has_passed() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = round_robin(&[up.addr]).build().unwrap();
    let host = hyper_host(proxy.clone()).await;
    let mut ws = connect(&format!("ws://{host}/")).await;
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("a"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Under 64 KiB, within the first second: not yet.
    assert_eq!(proxy.counters().bytes_from_client, 0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ws.send(Message::text("b")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("b"));
    // The first poll past the second brought in everything until then:
    // both masked one-byte text frames up (the second is what woke it) and
    // the first unmasked echo down. The second echo waits for the next
    // second of traffic, the tunnel's timer or its end.
    bytes_reach(&proxy, 3).await;
    let c = proxy.counters();
    assert_eq!((c.bytes_from_client, c.bytes_from_upstream), (2 * 7, 3));
    assert_eq!(c.tunnels_active, 1);
    ws.close(None).await.unwrap();
    assert!(next_data(&mut ws).await.is_close());
    bounded("the tunnel ends", async {
        while proxy.counters().tunnels_active > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let c = proxy.counters();
    // With the empty Close frames, masked up.
    assert_eq!(
        (c.bytes_from_client, c.bytes_from_upstream),
        (2 * 7 + 6, 2 * 3 + 2)
    );
}

#[tokio::test]
async fn proxy_serve_without_a_server_counts_and_reports_through_the_proxy_hook() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let (proxy, ended) = parity_proxy(up.addr).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = proxy.clone();
    tokio::spawn(async move {
        // Three connections, served by the host's own accept loop.
        for _ in 0..3 {
            let (stream, peer) = listener.accept().await.unwrap();
            let proxy = serving.clone();
            tokio::spawn(async move { proxy.serve(stream, peer, wsproxy::Scheme::Http).await });
        }
    });
    scripted_traffic(addr, &ended).await;
    let c = proxy.counters();
    assert_eq!((c.connections, c.requests, c.handshakes), (3, 3, 3));
    assert_eq!(c.rejected_with(http::StatusCode::NOT_FOUND), 1);
    assert_eq!(c.rejected_with(http::StatusCode::BAD_GATEWAY), 1);
    let mut statuses: Vec<Option<u16>> = ended.lock().unwrap().iter().map(|e| e.0).collect();
    statuses.sort();
    assert_eq!(statuses, [Some(101), Some(404), Some(502)]);
}

#[tokio::test]
async fn a_pending_upgrade_dropped_before_its_tunnel_is_abandoned_and_reported() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let (proxy, ended) = parity_proxy(up.addr).await;
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let request = parsed_upgrade("/echo");
    let pending = bounded(
        "the upstream's 101",
        proxy.connect_upgrade(request, peer, wsproxy::Scheme::Http),
    )
    .await
    .unwrap();
    assert_eq!(proxy.counters().abandoned, 0);
    drop(pending);
    let c = proxy.counters();
    assert_eq!((c.connections, c.requests, c.handshakes), (1, 1, 1));
    assert_eq!((c.abandoned, c.tunnels_total), (1, 0));
    let ended = ended.lock().unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].1, Some(wsproxy::proxy::Outcome::Abandoned));
}

/// A group kept by name across a reconfigure keeps its tunnel registry but
/// may take a new set: closing the new set's upstream must not close the
/// tunnels of the old set's. Upstream ids were numbered per set from 0, so
/// both upstreams were the same id to the registry.
#[tokio::test]
async fn closing_an_upstream_after_a_reconfigure_spares_the_old_sets_tunnels() {
    let a = ws_upstream(WsUpstreamOptions::default()).await;
    let b = ws_upstream(WsUpstreamOptions::default()).await;
    let chat = |set| UpstreamGroup::new("chat", RoundRobin::new(set));
    let gw = Gateway::start(Proxy::builder().route(Route::new("/", chat(set(&[a.addr]))))).await;
    let mut to_a = client(gw.addr).await;
    echo(&mut to_a, "a".into()).await;

    let set_b = UpstreamSet::new();
    let id_b = set_b.add(Upstream::new(b.addr));
    let next = Proxy::builder().route(Route::new("/", chat(set_b))).build();
    gw.proxy.reconfigure(next.unwrap());
    let mut to_b = client(gw.addr).await;
    echo(&mut to_b, "b".into()).await;

    let group = gw.proxy.groups()[0].clone();
    let by_upstream = group.tunnels().count_by_upstream();
    assert_eq!(by_upstream.get(&id_b), Some(&1), "{by_upstream:?}");
    let frame = wsproxy::frame::CloseFrame::new(1012, "restart").unwrap();
    assert_eq!(group.tunnels().close_upstream(id_b, &frame), 1);
    assert_eq!(await_close(&mut to_b).await.0, Some(1012));
    // A's tunnel still carries messages.
    echo(&mut to_a, "still here".into()).await;
    gw.shutdown().await;
}

/// nginx `proxy_next_upstream error timeout`: an upstream that closes
/// before answering a WebSocket upgrade (or a GET) gets the request
/// retried on the next one; a request with a body, which is not kept to
/// send again, gets the 502.
#[tokio::test]
async fn an_upstream_that_closes_unanswered_is_retried_on_the_next() {
    use std::sync::atomic::Ordering;
    let (dead, heads) = closes_unanswered().await;
    let live = ws_upstream(WsUpstreamOptions::default()).await;
    let gw = Gateway::start(round_robin(&[dead, live.addr])).await;
    for i in 0..4 {
        let mut ws = client(gw.addr).await;
        echo(&mut ws, format!("try {i}")).await;
    }
    assert!(
        heads.load(Ordering::SeqCst) >= 1,
        "the closing upstream was never tried"
    );
    gw.shutdown().await;

    let (dead, heads) = closes_unanswered().await;
    let (ok, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[dead, ok])).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let before = heads.load(Ordering::SeqCst);
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        let post = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
        c.write_all(post.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_to_end(&mut c).await).into_owned();
        let hit_dead = heads.load(Ordering::SeqCst) > before;
        statuses.push((hit_dead, answer.lines().next().unwrap_or("").to_owned()));
    }
    for (hit_dead, status) in &statuses {
        let expected = if *hit_dead { " 502 " } else { " 200 " };
        assert!(status.contains(expected), "{statuses:?}");
    }
    gw.shutdown().await;
}

/// An invalid answer head counts against its upstream but goes to no
/// other one (nginx passes it on only with `invalid_header` listed): each
/// request reaches exactly one upstream, and 502 is the answer when that
/// was the broken one; on `Server` and on `connect_upgrade`.
#[tokio::test]
async fn an_invalid_answer_head_goes_to_no_other_upstream() {
    use std::sync::atomic::Ordering;
    let (bad, bad_heads) = counting_upstream(INVALID_HEAD).await;
    let (good, good_heads) =
        counting_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let heads = || {
        (
            bad_heads.load(Ordering::SeqCst),
            good_heads.load(Ordering::SeqCst),
        )
    };
    let gw = Gateway::start(round_robin(&[bad, good])).await;
    let mut broken = 0;
    for i in 0..4 {
        let before = heads();
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        let get = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        c.write_all(get.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_to_end(&mut c).await).into_owned();
        let (b, g) = heads();
        let (to_bad, to_good) = (b - before.0, g - before.1);
        assert_eq!(
            to_bad + to_good,
            1,
            "request {i}: {to_bad} bad, {to_good} good"
        );
        let expected = if to_bad == 1 { " 502 " } else { " 200 " };
        assert!(
            answer.starts_with("HTTP/1.1") && answer.contains(expected),
            "request {i}: {answer}"
        );
        broken += to_bad;
    }
    assert!(broken >= 1, "the broken upstream was never picked");
    gw.shutdown().await;

    let (bad, bad_heads) = counting_upstream(INVALID_HEAD).await;
    let good = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = round_robin(&[bad, good.addr]).build().unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let heads = || {
        (
            bad_heads.load(Ordering::SeqCst),
            good.seen.lock().unwrap().len(),
        )
    };
    let mut broken = 0;
    for i in 0..2 {
        let before = heads();
        let upgrade = proxy.connect_upgrade(parsed_upgrade("/ws"), peer, wsproxy::Scheme::Http);
        let opened = bounded("the upgrade", upgrade).await;
        let (b, g) = heads();
        let (to_bad, to_good) = (b - before.0, g - before.1);
        assert_eq!(
            to_bad + to_good,
            1,
            "upgrade {i}: {to_bad} bad, {to_good} good"
        );
        match opened {
            Ok(_) => assert_eq!(to_good, 1),
            Err(e) => assert_eq!((e.status(), to_bad), (http::StatusCode::BAD_GATEWAY, 1)),
        }
        broken += to_bad;
    }
    assert_eq!(broken, 1, "the broken upstream is picked once, then marked");
}

/// The same on the embedded path: `Proxy::connect_upgrade` opens the
/// upgrade on the next upstream.
#[tokio::test]
async fn an_embedded_upgrade_is_retried_past_an_upstream_that_closes_unanswered() {
    use std::sync::atomic::Ordering;
    let (dead, heads) = closes_unanswered().await;
    let live = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = round_robin(&[dead, live.addr]).build().unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    for _ in 0..2 {
        let upgrade = proxy.connect_upgrade(parsed_upgrade("/ws"), peer, wsproxy::Scheme::Http);
        bounded("the upgrade", upgrade).await.unwrap();
    }
    assert_eq!(heads.load(Ordering::SeqCst), 1);
}
