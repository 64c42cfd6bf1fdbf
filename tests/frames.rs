//! Frame tracking in the tunnel: a real tokio-tungstenite client and server
//! over loopback TCP (messages counted, close codes captured both ways,
//! fragmented and large messages), framing violations, and frames inserted
//! at boundaries, over duplex streams.

use std::future::{pending, Future};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame as WsClose, Frame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsproxy::frame::{Boundary, CloseFrame, FrameError, FrameTracker, Role};
use wsproxy::tunnel::{
    tunnel, Prefixed, Side, Timeout, Tunnel, TunnelConfig, TunnelEnd, TunnelError, TunnelHandle,
    TunnelStats,
};

/// Bound for every wait on real sockets.
const BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    timeout(BOUND, fut).await.expect("wait exceeded its bound")
}

/// Reads one HTTP head, byte by byte so that no frame after it is consumed.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "head too long");
        let b = bounded(stream.read_u8()).await.expect("head byte");
        head.push(b);
    }
    head
}

/// A proxy for one connection: relays the handshake heads as they are,
/// then tunnels with frame tracking on.
async fn proxy_once(listener: TcpListener, backend: std::net::SocketAddr) -> TunnelStats {
    let (mut client, _) = bounded(listener.accept()).await.unwrap();
    let mut upstream = bounded(TcpStream::connect(backend)).await.unwrap();
    let request = read_head(&mut client).await;
    upstream.write_all(&request).await.unwrap();
    let response = read_head(&mut upstream).await;
    client.write_all(&response).await.unwrap();
    let config = TunnelConfig::new().track_frames(true);
    tunnel(client, upstream, &config, pending()).await
}

/// Starts a backend that runs `server` on the accepted WebSocket, and a
/// proxy in front of it; returns the proxy's address and the tunnel's stats.
async fn setup<S, F>(
    server: S,
) -> (
    std::net::SocketAddr,
    JoinHandle<TunnelStats>,
    JoinHandle<()>,
)
where
    S: FnOnce(WebSocketStream<TcpStream>) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = bounded(backend.accept()).await.unwrap();
        let ws = bounded(tokio_tungstenite::accept_async(stream))
            .await
            .unwrap();
        server(ws).await;
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = tokio::spawn(proxy_once(listener, backend_addr));
    (addr, stats, server)
}

async fn connect(addr: std::net::SocketAddr) -> WebSocketStream<TcpStream> {
    let tcp = bounded(TcpStream::connect(addr)).await.unwrap();
    let (ws, _) = bounded(tokio_tungstenite::client_async("ws://127.0.0.1/", tcp))
        .await
        .unwrap();
    ws
}

/// Echoes every data message until the client's Close, which tungstenite
/// answers; `extra` messages are sent first.
async fn echo_server(mut ws: WebSocketStream<TcpStream>, extra: usize) {
    for i in 0..extra {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
    }
    while let Some(msg) = bounded(ws.next()).await {
        if let m @ (Message::Text(_) | Message::Binary(_)) = msg.unwrap() {
            ws.send(m).await.unwrap();
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn tungstenite_session_counts_messages_and_the_clients_close() {
    let (addr, stats, server) = setup(|ws| echo_server(ws, 2)).await;
    let mut ws = connect(addr).await;

    // The server's two greetings.
    for i in 0..2 {
        let m = bounded(ws.next()).await.unwrap().unwrap();
        assert_eq!(m, Message::text(format!("hello {i}")));
    }
    // Small, large (16-bit and 64-bit lengths), and fragmented messages,
    // with a ping between two fragments.
    ws.send(Message::text("one")).await.unwrap();
    ws.send(Message::binary(pattern(300))).await.unwrap();
    ws.send(Message::binary(pattern(300_000))).await.unwrap();
    let text = |s: &'static str, op, fin| Message::Frame(Frame::message(s, op, fin));
    ws.send(text("frag", OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"mid")))
        .await
        .unwrap();
    ws.send(text("men", OpCode::Data(Data::Continue), false))
        .await
        .unwrap();
    ws.send(text("ted", OpCode::Data(Data::Continue), true))
        .await
        .unwrap();

    let mut echoes = Vec::new();
    while echoes.len() < 4 {
        match bounded(ws.next()).await.unwrap().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"mid"),
            m => echoes.push(m),
        }
    }
    assert_eq!(echoes[0], Message::text("one"));
    assert_eq!(echoes[1], Message::binary(pattern(300)));
    assert_eq!(echoes[2], Message::binary(pattern(300_000)));
    assert_eq!(echoes[3], Message::text("fragmented"));

    ws.close(Some(WsClose {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    // Read to the end: the server's Close reply, then EOF.
    while let Some(Ok(_)) = bounded(ws.next()).await {}
    drop(ws);
    bounded(server).await.unwrap();

    let stats = bounded(stats).await.unwrap();
    assert!(stats.end.is_clean(), "{:?}", stats.end);
    let frames = stats.frames.expect("frames were tracked");
    assert_eq!(frames.client_messages, 4);
    assert_eq!(frames.upstream_messages, 2 + 4);
    let client_close = frames.close(Side::Client).unwrap();
    assert_eq!(client_close.code(), Some(1000));
    assert_eq!(client_close.reason(), "done");
    // tungstenite answers a Close with the same code.
    assert_eq!(frames.close(Side::Upstream).unwrap().code(), Some(1000));
}

#[tokio::test]
async fn upstream_close_code_and_reason_are_captured() {
    let (addr, stats, server) = setup(|mut ws| async move {
        ws.send(Message::binary(pattern(70_000))).await.unwrap();
        ws.close(Some(WsClose {
            code: CloseCode::Error,
            reason: "backend failed".into(),
        }))
        .await
        .unwrap();
        while let Some(Ok(_)) = bounded(ws.next()).await {}
    })
    .await;
    let mut ws = connect(addr).await;
    let m = bounded(ws.next()).await.unwrap().unwrap();
    assert_eq!(m, Message::binary(pattern(70_000)));
    match bounded(ws.next()).await.unwrap().unwrap() {
        Message::Close(Some(close)) => assert_eq!(close.code, CloseCode::Error),
        other => panic!("expected a close, got {other:?}"),
    }
    while let Some(Ok(_)) = bounded(ws.next()).await {}
    drop(ws);
    bounded(server).await.unwrap();

    let stats = bounded(stats).await.unwrap();
    let frames = stats.frames.expect("frames were tracked");
    assert_eq!(frames.upstream_messages, 1);
    assert_eq!(frames.client_messages, 0);
    let upstream_close = frames.upstream_close.as_ref().unwrap();
    assert_eq!(upstream_close.code(), Some(1011));
    assert_eq!(upstream_close.reason(), "backend failed");
    assert_eq!(upstream_close.to_string(), "1011 backend failed");
    assert_eq!(frames.client_close.as_ref().unwrap().code(), Some(1011));
}

/// Runs a tracking tunnel over duplex streams; the browser writes `wire`
/// (or the backend does, for `from = Upstream`).
async fn violation(from: Side, wire: &'static [u8]) -> (TunnelStats, Vec<u8>) {
    let (client, mut browser) = duplex(1024);
    let (upstream, mut backend) = duplex(1024);
    let config = TunnelConfig::new().track_frames(true);
    let task = tokio::spawn(async move { tunnel(client, upstream, &config, pending()).await });
    let (sender, receiver) = match from {
        Side::Client => (&mut browser, &mut backend),
        _ => (&mut backend, &mut browser),
    };
    sender.write_all(wire).await.unwrap();
    let stats = bounded(task).await.unwrap();
    let mut got = Vec::new();
    // The tunnel shut the receiver's side down: EOF after what it forwarded.
    let _ = bounded(receiver.read_to_end(&mut got)).await;
    (stats, got)
}

#[tokio::test]
async fn unmasked_client_frame_ends_the_tunnel_unforwarded() {
    let (stats, got) = violation(Side::Client, b"\x81\x02hi").await;
    match stats.end {
        TunnelEnd::Error(TunnelError::Framing { side, source }) => {
            assert_eq!(side, Side::Client);
            assert_eq!(source, FrameError::UnmaskedClientFrame);
        }
        other => panic!("expected a framing error, got {other:?}"),
    }
    assert!(got.is_empty(), "forwarded {got:?}");
    assert_eq!(stats.client_to_upstream, 0);
}

#[tokio::test]
async fn masked_upstream_frame_ends_the_tunnel_and_blames_the_upstream() {
    let (stats, got) = violation(Side::Upstream, b"\x82\x81abcdx").await;
    let err = stats.end.into_error().expect("an error end");
    assert_eq!(err.side(), Some(Side::Upstream));
    assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);
    assert!(matches!(
        err,
        TunnelError::Framing {
            source: FrameError::MaskedServerFrame,
            ..
        }
    ));
    assert!(got.is_empty());
}

#[tokio::test]
async fn oversized_ping_from_the_upstream_is_a_framing_error() {
    let (stats, _) = violation(Side::Upstream, b"\x89\x7e\x00\x80").await;
    assert!(matches!(
        stats.end,
        TunnelEnd::Error(TunnelError::Framing {
            side: Side::Upstream,
            source: FrameError::ControlTooLong,
        })
    ));
}

#[tokio::test]
async fn prefixed_bytes_are_tracked_as_the_first_frames() {
    let (client, mut browser) = duplex(1024);
    let (upstream, mut backend) = duplex(1024);
    // A masked text frame "hi" that arrived with the handshake, then a
    // masked Close 1000 sent later.
    let leftover = Bytes::from_static(b"\x81\x82\0\0\0\0hi");
    let close = b"\x88\x82\x01\x02\x03\x04\x02\xea";
    let config = TunnelConfig::new().track_frames(true);
    let replayed = leftover.clone();
    let task = tokio::spawn(async move {
        tunnel(
            Prefixed::new(replayed, client),
            upstream,
            &config,
            pending(),
        )
        .await
    });
    browser.write_all(close).await.unwrap();
    browser.shutdown().await.unwrap();
    let mut got = Vec::new();
    bounded(backend.read_to_end(&mut got)).await.unwrap();
    // The replayed bytes first, unchanged, then what the client sent.
    assert_eq!(got, [&leftover[..], &close[..]].concat());
    backend.shutdown().await.unwrap();
    let stats = bounded(task).await.unwrap();
    let frames = stats.frames.unwrap();
    assert_eq!(frames.client_messages, 1);
    assert_eq!(frames.client_close.unwrap().code(), Some(1000));
    assert_eq!(frames.upstream_close, None);
}

#[tokio::test]
async fn untracked_tunnel_passes_any_bytes_and_reports_no_frames() {
    let (client, mut browser) = duplex(1024);
    let (upstream, mut backend) = duplex(1024);
    let task =
        tokio::spawn(
            async move { tunnel(client, upstream, &TunnelConfig::default(), pending()).await },
        );
    // An unmasked client frame: a violation only if frames were tracked.
    browser.write_all(b"\x81\x02hi").await.unwrap();
    browser.shutdown().await.unwrap();
    let mut got = Vec::new();
    bounded(backend.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"\x81\x02hi");
    backend.shutdown().await.unwrap();
    let stats = bounded(task).await.unwrap();
    assert!(stats.end.is_clean());
    assert!(stats.frames.is_none());
}

/// Polls the tunnel once: it relays everything that is ready, then stops.
async fn poll_once<T: Future + Unpin>(relay: &mut T) -> Option<T::Output> {
    let polled =
        std::future::poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut *relay).poll(cx))).await;
    match polled {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// Reads exactly `n` bytes the tunnel already wrote.
async fn take(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    bounded(stream.read_exact(&mut buf)).await.unwrap();
    buf
}

/// Asserts nothing more is readable right now (one poll, no waiting).
async fn nothing_more(stream: &mut DuplexStream) {
    use tokio::io::{AsyncRead, ReadBuf};
    let mut one = [0u8; 1];
    let polled = std::future::poll_fn(|cx| {
        let mut buf = ReadBuf::new(&mut one);
        let r = Pin::new(&mut *stream).poll_read(cx, &mut buf);
        std::task::Poll::Ready(r.map(|r| r.map(|()| buf.filled().len())))
    })
    .await;
    assert!(polled.is_pending(), "unexpected bytes: {polled:?}");
}

/// A masked frame as a client sends it.
fn masked(head: u8, payload: &[u8]) -> Vec<u8> {
    let key = [9, 8, 7, 6];
    let mut out = vec![head, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn unmasked(head: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![head, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

/// A tunnel between two in-memory pairs, spawned: the browser's and the
/// backend's ends, the tunnel's handle and its task.
fn spawned(
    config: &TunnelConfig,
) -> (
    DuplexStream,
    DuplexStream,
    TunnelHandle,
    JoinHandle<TunnelStats>,
) {
    let (client, browser) = duplex(1024);
    let (upstream, backend) = duplex(1024);
    let mut relay = tunnel(client, upstream, config, pending());
    let handle = relay.handle();
    (browser, backend, handle, tokio::spawn(relay))
}

type TrackedTunnel = Pin<Box<Tunnel<DuplexStream, DuplexStream, std::future::Pending<()>>>>;

fn tracked_pair() -> (DuplexStream, DuplexStream, TrackedTunnel) {
    let (client, browser) = duplex(64 * 1024);
    let (upstream, backend) = duplex(64 * 1024);
    let config = TunnelConfig::new().track_frames(true);
    let relay = Box::pin(tunnel(client, upstream, &config, pending()));
    (browser, backend, relay)
}

#[tokio::test]
async fn close_goes_in_at_the_next_frame_boundary_each_way() {
    let (mut browser, mut backend, mut relay) = tracked_pair();
    let from_client = masked(0x82, b"0123456789");
    let from_upstream = unmasked(0x82, b"abcde");
    // Each direction stops in the middle of a frame.
    browser.write_all(&from_client[..8]).await.unwrap();
    backend.write_all(&unmasked(0x81, b"up")).await.unwrap();
    backend.write_all(&from_upstream[..3]).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());

    let close = CloseFrame::new(1001, "going away").unwrap();
    assert!(relay.as_mut().insert_close(&close));
    assert!(poll_once(&mut relay).await.is_none());
    assert!(relay.has_pending_frames(Side::Client));
    assert!(relay.has_pending_frames(Side::Upstream));
    assert_eq!(take(&mut browser, 4 + 3).await[4..], from_upstream[..3]);
    assert_eq!(take(&mut backend, 8).await, from_client[..8]);
    nothing_more(&mut browser).await;
    nothing_more(&mut backend).await;

    // The upstream finishes its frame and sends another: the Close goes
    // between the two, unmasked.
    backend.write_all(&from_upstream[3..]).await.unwrap();
    backend.write_all(&unmasked(0x81, b"zz")).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    assert!(!relay.has_pending_frames(Side::Client));
    assert_eq!(take(&mut browser, 4).await, from_upstream[3..]);
    assert_eq!(take(&mut browser, 14).await, close.encode(None));
    assert_eq!(take(&mut browser, 4).await, unmasked(0x81, b"zz"));

    // Same toward the upstream, masked with a key of the proxy's own.
    browser.write_all(&from_client[8..]).await.unwrap();
    browser.write_all(&masked(0x81, b"next")).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    assert!(!relay.has_pending_frames(Side::Upstream));
    assert_eq!(take(&mut backend, 8).await, from_client[8..]);
    let close_wire = take(&mut backend, 2 + 4 + 12).await;
    assert_eq!(close_wire[..2], [0x88, 0x80 | 12]);
    let mut check = FrameTracker::new(Role::Client);
    check.observe(&close_wire).unwrap();
    assert_eq!(check.close(), Some(close.clone()));
    assert_eq!(take(&mut backend, 10).await, masked(0x81, b"next"));

    browser.shutdown().await.unwrap();
    backend.shutdown().await.unwrap();
    let stats = bounded(relay).await;
    assert!(stats.end.is_clean(), "{:?}", stats.end);
    let frames = stats.frames.unwrap();
    // The inserted Close frames are the proxy's: neither side sent one.
    assert_eq!((frames.client_messages, frames.upstream_messages), (2, 3));
    assert_eq!((frames.client_close, frames.upstream_close), (None, None));
    assert_eq!(stats.upstream_to_client, 4 + 7 + 14 + 4);
}

#[tokio::test]
async fn close_goes_between_fragments_and_a_data_frame_waits_for_the_message_end() {
    let (mut browser, mut backend, mut relay) = tracked_pair();
    let first = masked(0x01, b"frag");
    let last = masked(0x80, b"ment");
    let data = masked(0x82, b"proxy");
    browser.write_all(&first).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    assert_eq!(take(&mut backend, first.len()).await, first);

    // A data frame must not split the fragmented message; a Close may.
    assert!(relay.as_mut().insert_frames(Side::Upstream, &data));
    assert!(poll_once(&mut relay).await.is_none());
    assert!(relay.has_pending_frames(Side::Upstream));
    nothing_more(&mut backend).await;

    browser.write_all(&last).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    assert!(!relay.has_pending_frames(Side::Upstream));
    let mut got = take(&mut backend, last.len() + data.len()).await;
    assert_eq!(got[..last.len()], last);
    assert_eq!(got[last.len()..], data);

    browser.write_all(&first).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    got = take(&mut backend, first.len()).await;
    assert_eq!(got, first);
    let close = CloseFrame::new(1012, "").unwrap();
    assert!(relay.as_mut().insert_close(&close));
    assert!(poll_once(&mut relay).await.is_none());
    assert!(!relay.has_pending_frames(Side::Upstream));
    let close_wire = take(&mut backend, 2 + 4 + 2).await;
    let mut check = FrameTracker::new(Role::Client);
    check.observe(&first).unwrap();
    check.observe(&close_wire).unwrap();
    assert_eq!(check.close().and_then(|c| c.code()), Some(1012));
    assert_eq!(check.boundary(), Some(Boundary::Frame));
}

/// A ping and a data frame queued together inside a fragmented message:
/// the ping goes at the next frame boundary, the data frame only once the
/// message ended (a data frame between fragments breaks RFC 6455 §5.4).
#[tokio::test]
async fn a_data_frame_queued_behind_a_ping_still_waits_for_the_message_end() {
    let (mut browser, mut backend, mut relay) = tracked_pair();
    let first = unmasked(0x01, b"frag");
    let last = unmasked(0x80, b"ment");
    let ping = unmasked(0x89, b"");
    let data = unmasked(0x82, b"proxy");
    backend.write_all(&first).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    assert_eq!(take(&mut browser, first.len()).await, first);

    let queued = [ping.clone(), data.clone()].concat();
    assert!(relay.as_mut().insert_frames(Side::Client, &queued));
    assert!(poll_once(&mut relay).await.is_none());
    assert_eq!(take(&mut browser, ping.len()).await, ping);
    assert!(relay.has_pending_frames(Side::Client));
    nothing_more(&mut browser).await;

    backend.write_all(&last).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    assert!(!relay.has_pending_frames(Side::Client));
    let got = take(&mut browser, last.len() + data.len()).await;
    assert_eq!(got, [last, data].concat());
}

#[tokio::test]
async fn untracked_tunnel_cannot_insert_frames() {
    let (client, _browser) = duplex(64);
    let (upstream, _backend) = duplex(64);
    let mut relay = Box::pin(tunnel(
        client,
        upstream,
        &TunnelConfig::default(),
        pending(),
    ));
    let close = CloseFrame::new(1001, "").unwrap();
    assert!(!relay.as_mut().insert_close(&close));
    assert!(!relay.has_pending_frames(Side::Client));
}

/// One peer of the polite-close test: sends `count` binary messages of
/// `fragments` fragments each (the payload tells its message and fragment
/// apart) while reading what the other peer sends, until the proxy's Close.
/// Returns the whole messages it received and the Close it got.
async fn chatter(
    ws: WebSocketStream<TcpStream>,
    count: usize,
    fragments: usize,
    first_message: Option<tokio::sync::oneshot::Sender<()>>,
) -> (Vec<Vec<u8>>, Option<WsClose>) {
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for m in 0..count {
            for f in 0..fragments {
                let op = if f == 0 {
                    OpCode::Data(Data::Binary)
                } else {
                    OpCode::Data(Data::Continue)
                };
                let frame = Frame::message(fragment(m, f), op, f + 1 == fragments);
                // Fails once the peer's Close arrived: sending stops there.
                if sink.send(Message::Frame(frame)).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut first_message = first_message;
    let mut received = Vec::new();
    let mut close = None;
    while let Some(msg) = bounded(stream.next()).await {
        match msg {
            Ok(Message::Binary(data)) => {
                received.push(data.to_vec());
                if let Some(tx) = first_message.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Message::Close(frame)) => close = frame,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    writer.abort();
    (received, close)
}

/// Fragment `f` of message `m`: 16 KiB, its bytes derived from both.
fn fragment(m: usize, f: usize) -> Vec<u8> {
    (0..16 * 1024).map(|i| (i + 7 * m + 13 * f) as u8).collect()
}

#[tokio::test]
async fn handle_close_lands_between_fragments_both_ways_and_loses_nothing_before_it() {
    // More than ever gets sent: the peers write until the Close stops them.
    const MESSAGES: usize = 5_000;
    const FRAGMENTS: usize = 4;
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (server_first_tx, server_first_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let (stream, _) = bounded(backend.accept()).await.unwrap();
        let ws = bounded(tokio_tungstenite::accept_async(stream))
            .await
            .unwrap();
        chatter(ws, MESSAGES, FRAGMENTS, Some(server_first_tx)).await
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
    let proxy = tokio::spawn(async move {
        let (mut client, _) = bounded(listener.accept()).await.unwrap();
        let mut upstream = bounded(TcpStream::connect(backend_addr)).await.unwrap();
        let request = read_head(&mut client).await;
        upstream.write_all(&request).await.unwrap();
        let response = read_head(&mut upstream).await;
        client.write_all(&response).await.unwrap();
        // An hour's linger: ending within the test's bound proves the
        // tunnel ended on the peers' answers.
        let config = TunnelConfig::new()
            .track_frames(true)
            .close_linger(Duration::from_secs(3600));
        let mut relay = tunnel(client, upstream, &config, pending());
        let _ = handle_tx.send(relay.handle());
        relay.await
    });
    let ws = connect(addr).await;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let client = tokio::spawn(chatter(ws, MESSAGES, FRAGMENTS, Some(first_tx)));

    // Close while both peers are in the middle of their streams.
    let handle = bounded(handle_rx).await.unwrap();
    bounded(first_rx).await.unwrap();
    bounded(server_first_rx).await.unwrap();
    assert!(handle.close(CloseFrame::new(1001, "going away").unwrap()));

    let (client_got, client_close) = bounded(client).await.unwrap();
    let (server_got, server_close) = bounded(server).await.unwrap();
    let stats = bounded(proxy).await.unwrap();

    // Each peer got the proxy's Close, once.
    for close in [&client_close, &server_close] {
        let close = close.as_ref().expect("a close frame");
        assert_eq!(u16::from(close.code), 1001);
        assert_eq!(close.reason, "going away");
    }
    // What arrived is exactly the first messages the other peer sent,
    // whole and in order; the close cut no message in two.
    let expected = |m: usize| -> Vec<u8> { (0..FRAGMENTS).flat_map(|f| fragment(m, f)).collect() };
    assert!(
        !client_got.is_empty(),
        "the close came after the first message"
    );
    assert!(
        !server_got.is_empty(),
        "the close came after the first message"
    );
    assert!(client_got.len() < MESSAGES, "the close came before the end");
    for (m, got) in client_got.iter().enumerate() {
        assert!(got == &expected(m), "message {m} to the client differs");
    }
    for (m, got) in server_got.iter().enumerate() {
        assert!(got == &expected(m), "message {m} to the upstream differs");
    }
    match &stats.end {
        TunnelEnd::Closed(close) => assert_eq!(close.code(), Some(1001)),
        end => panic!("ended by {end:?}"),
    }
    let frames = stats.frames.unwrap();
    // Each peer answered with its Close reply (tungstenite echoes the code)
    // or, when its writer was stuck mid-message, by closing the socket; the
    // tunnel ended on those answers, not on its hour-long linger.
    for reply in [&frames.client_close, &frames.upstream_close] {
        let code = reply.as_ref().and_then(|c| c.code());
        assert!(matches!(code, None | Some(1001)), "{reply:?}");
    }
    // Every message forwarded before the Close was read before it; the
    // counts leave out what was dropped after it.
    assert_eq!(
        (frames.upstream_messages, frames.client_messages),
        (client_got.len() as u64, server_got.len() as u64)
    );
}

#[tokio::test(start_paused = true)]
async fn a_close_the_client_ignores_reaches_the_upstream_after_one_linger() {
    let config = TunnelConfig::new()
        .track_frames(true)
        .close_linger(Duration::from_secs(3));
    let (mut browser, mut backend, handle, task) = spawned(&config);
    let started = tokio::time::Instant::now();
    handle.close(CloseFrame::new(1012, "restart").unwrap());
    let to_client = take(&mut browser, 2 + 9).await;
    assert_eq!(to_client[..4], [0x88, 9, 0x03, 0xf4]);
    // The client has not read the Close yet: what it sends still arrives.
    let late = masked(0x81, b"late");
    browser.write_all(&late).await.unwrap();
    assert_eq!(take(&mut backend, late.len()).await, late);
    // No reply within the linger: the upstream gets the proxy's Close, then
    // one more linger for its reply, which does not come either.
    let close_wire = take(&mut backend, 2 + 4 + 9).await;
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(close_wire[..2], [0x88, 0x80 | 9]);
    let stats = bounded(task).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    assert!(matches!(stats.end, TunnelEnd::Closed(ref c) if c.code() == Some(1012)));
    let frames = stats.frames.unwrap();
    assert_eq!((frames.client_close, frames.upstream_close), (None, None));
    assert_eq!(frames.client_messages, 1);
}

#[tokio::test]
async fn the_clients_close_reply_goes_to_the_upstream_and_its_reply_stops_there() {
    // An hour's linger: ending within the test's bound means it ended on
    // the replies.
    let config = TunnelConfig::new()
        .track_frames(true)
        .close_linger(Duration::from_secs(3600));
    let (mut browser, mut backend, handle, task) = spawned(&config);
    handle.close(CloseFrame::new(1001, "bye").unwrap());
    assert_eq!(take(&mut browser, 2 + 5).await[..2], [0x88, 5]);
    // The client answers with its own code; the upstream gets that Close,
    // not a second one from the proxy, and answers it.
    let reply = masked(0x88, &[0x03, 0xe8]);
    browser.write_all(&reply).await.unwrap();
    assert_eq!(take(&mut backend, reply.len()).await, reply);
    backend
        .write_all(&unmasked(0x88, &[0x03, 0xe8]))
        .await
        .unwrap();
    let stats = bounded(task).await.unwrap();
    assert!(matches!(stats.end, TunnelEnd::Closed(_)), "{:?}", stats.end);
    // The upstream's reply was not forwarded: the client had its Close.
    let mut rest = Vec::new();
    bounded(browser.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let frames = stats.frames.unwrap();
    assert_eq!(frames.client_close.and_then(|c| c.code()), Some(1000));
    assert_eq!(frames.upstream_close.and_then(|c| c.code()), Some(1000));
}

#[tokio::test]
async fn a_client_that_hangs_up_leaves_the_upstream_the_proxys_close() {
    let config = TunnelConfig::new().track_frames(true);
    let (mut browser, mut backend, handle, task) = spawned(&config);
    handle.close(CloseFrame::new(1001, "").unwrap());
    assert_eq!(take(&mut browser, 4).await, [0x88, 2, 0x03, 0xe9]);
    browser.shutdown().await.unwrap();
    // The Close, masked, then EOF.
    let mut got = Vec::new();
    bounded(backend.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got[..2], [0x88, 0x82]);
    assert_eq!(got.len(), 2 + 4 + 2);
    backend
        .write_all(&unmasked(0x88, &[0x03, 0xe9]))
        .await
        .unwrap();
    let stats = bounded(task).await.unwrap();
    assert!(matches!(stats.end, TunnelEnd::Closed(_)), "{:?}", stats.end);
}

#[tokio::test]
async fn cut_ends_at_once_and_close_without_tracking_cuts() {
    for tracked in [true, false] {
        let config = TunnelConfig::new().track_frames(tracked);
        let (mut browser, mut backend, handle, task) = spawned(&config);
        if tracked {
            handle.cut();
        } else {
            assert!(handle.close(CloseFrame::new(1001, "").unwrap()));
        }
        let stats = bounded(task).await.unwrap();
        assert!(matches!(stats.end, TunnelEnd::Shutdown), "{:?}", stats.end);
        // Both sides see EOF and nothing else.
        let mut rest = Vec::new();
        bounded(browser.read_to_end(&mut rest)).await.unwrap();
        bounded(backend.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
        assert!(handle.is_ending());
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_pinged_and_then_timed_out() {
    let config = TunnelConfig::new()
        .track_frames(true)
        .ping(Duration::from_secs(10), Duration::from_secs(5));
    let (mut browser, mut backend, _, task) = spawned(&config);
    let started = tokio::time::Instant::now();

    // After 10 s of silence both sides get a ping: unmasked to the client,
    // masked to the upstream.
    assert_eq!(take(&mut browser, 2).await, [0x89, 0x00]);
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(take(&mut backend, 6).await[..2], [0x89, 0x80]);

    // The client answers with a pong, which reaches the upstream as an
    // unsolicited pong; the upstream stays silent.
    let pong = masked(0x8a, b"");
    browser.write_all(&pong).await.unwrap();
    assert_eq!(take(&mut backend, pong.len()).await, pong);

    let stats = bounded(task).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(15));
    assert!(
        matches!(stats.end, TunnelEnd::Timeout(Timeout::Ping(Side::Upstream))),
        "{:?}",
        stats.end
    );
}

/// The client is not read while the upstream does not read what it sent:
/// its silence, and a pong it may have sent, prove nothing then. The send
/// timeout ends the tunnel, blaming the upstream, not a ping timeout the
/// client.
#[tokio::test(start_paused = true)]
async fn a_side_not_read_during_a_stall_is_not_timed_out_by_pings() {
    let config = TunnelConfig::new()
        .track_frames(true)
        .ping(Duration::from_secs(1), Duration::from_secs(1))
        .send_timeout(Duration::from_secs(10));
    let (mut browser, _backend, _, task) = spawned(&config);
    let started = tokio::time::Instant::now();
    // One masked 60,000-byte message, far more than the pipes hold; the
    // backend never reads.
    let key = [1, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | 126, 0xea, 0x60];
    frame.extend_from_slice(&key);
    frame.extend((0..60_000usize).map(|i| (i as u8) ^ key[i % 4]));
    let writing = tokio::spawn(async move {
        let _ = browser.write_all(&frame).await;
        browser
    });
    let stats = bounded(task).await.unwrap();
    assert!(
        matches!(stats.end, TunnelEnd::Timeout(Timeout::Send(Side::Upstream))),
        "{:?}",
        stats.end
    );
    assert!(started.elapsed() >= Duration::from_secs(10));
    writing.abort();
}

#[tokio::test(start_paused = true)]
async fn peers_that_answer_pings_keep_the_tunnel() {
    let config = TunnelConfig::new()
        .track_frames(true)
        .ping(Duration::from_secs(10), Duration::from_secs(5));
    let (mut browser, mut backend, _, task) = spawned(&config);
    // Five rounds of pings, each answered by both peers.
    for _ in 0..5 {
        assert_eq!(take(&mut browser, 2).await, [0x89, 0x00]);
        assert_eq!(take(&mut backend, 6).await[..2], [0x89, 0x80]);
        let pong = masked(0x8a, b"");
        browser.write_all(&pong).await.unwrap();
        backend.write_all(&unmasked(0x8a, b"")).await.unwrap();
        assert_eq!(take(&mut backend, pong.len()).await, pong);
        assert_eq!(take(&mut browser, 2).await, [0x8a, 0x00]);
    }
    assert!(!task.is_finished());
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_ping_queued_behind_a_long_frame_does_not_time_out_a_busy_peer() {
    let (mut browser, mut backend) = (duplex(1 << 20), duplex(1 << 20));
    let config = TunnelConfig::new()
        .track_frames(true)
        .ping(Duration::from_secs(10), Duration::from_secs(5));
    let task = tokio::spawn(tunnel(browser.0, backend.0, &config, pending()));
    // The upstream streams one 10-byte frame to the silent client, a byte
    // every 2 s: for 20 s, past the 15 s of interval and timeout, no
    // boundary lets a ping in toward the client.
    backend.1.write_all(&[0x82, 10]).await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..10u8 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            backend.1.write_all(&[i]).await.unwrap();
        }
        backend.1
    });
    let frame = take(&mut browser.1, 12).await;
    assert_eq!(frame[..2], [0x82, 10]);
    // Only now, after the frame, does the ping go in; answered, the tunnel
    // lives on.
    assert_eq!(take(&mut browser.1, 2).await, [0x89, 0x00]);
    browser.1.write_all(&masked(0x8a, b"")).await.unwrap();
    let mut backend = bounded(writer).await.unwrap();
    let mut pong = vec![0; 6];
    bounded(backend.read_exact(&mut pong)).await.unwrap();
    assert_eq!(pong[..2], [0x8a, 0x80]);
    assert!(
        !task.is_finished(),
        "ended by {:?}",
        task.await.unwrap().end
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_replied_is_not_followed_by_a_second_close_to_a_slow_upstream() {
    let config = TunnelConfig::new()
        .track_frames(true)
        .close_linger(Duration::from_secs(3));
    let (mut browser, mut backend, handle, task) = spawned(&config);
    handle.close(CloseFrame::new(1001, "").unwrap());
    assert_eq!(take(&mut browser, 4).await, [0x88, 2, 0x03, 0xe9]);
    let reply = masked(0x88, &[0x03, 0xe9]);
    browser.write_all(&reply).await.unwrap();
    // The upstream never answers: after the linger the tunnel ends, and
    // the upstream got exactly one Close, the client's.
    let stats = bounded(task).await.unwrap();
    assert!(matches!(stats.end, TunnelEnd::Closed(_)), "{:?}", stats.end);
    let mut got = Vec::new();
    bounded(backend.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, reply);
}

#[tokio::test]
async fn an_upstream_close_half_read_at_the_request_is_the_only_close_the_client_gets() {
    let (mut browser, mut backend, mut relay) = tracked_pair();
    let handle = relay.as_mut().get_mut().handle();
    let close = unmasked(0x88, &[0x03, 0xe8, b'b', b'y', b'e']);
    backend.write_all(&close[..3]).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    handle.close(CloseFrame::new(1001, "").unwrap());
    backend.write_all(&close[3..]).await.unwrap();
    backend.write_all(&unmasked(0x81, b"late")).await.unwrap();
    assert!(poll_once(&mut relay).await.is_none());
    assert_eq!(take(&mut browser, close.len()).await, close);
    nothing_more(&mut browser).await;
}

#[tokio::test]
async fn a_close_waits_until_what_the_client_sent_is_written() {
    // The upstream reads slowly: 16 bytes of buffer toward it.
    let (client, mut browser) = duplex(64 * 1024);
    let (upstream, mut backend) = duplex(16);
    let config = TunnelConfig::new().track_frames(true);
    let mut relay = tunnel(client, upstream, &config, pending());
    let handle = relay.handle();
    let task = tokio::spawn(relay);
    handle.close(CloseFrame::new(1001, "").unwrap());
    assert_eq!(take(&mut browser, 4).await, [0x88, 2, 0x03, 0xe9]);
    // The upstream had begun closing too; the client sends a last message
    // and its reply, which wait for the slow upstream.
    backend
        .write_all(&unmasked(0x88, &[0x03, 0xe8]))
        .await
        .unwrap();
    let last = masked(0x82, &[7; 100]);
    let reply = masked(0x88, &[0x03, 0xe9]);
    browser.write_all(&last).await.unwrap();
    browser.write_all(&reply).await.unwrap();
    let mut got = Vec::new();
    bounded(backend.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, [last, reply].concat());
    let stats = bounded(task).await.unwrap();
    assert!(matches!(stats.end, TunnelEnd::Closed(_)), "{:?}", stats.end);
}

#[tokio::test(start_paused = true)]
async fn no_ping_follows_a_close() {
    let config = TunnelConfig::new()
        .track_frames(true)
        .ping(Duration::from_secs(10), Duration::from_secs(5));
    let (mut browser, mut backend, _, task) = spawned(&config);
    let close = unmasked(0x88, &[0x03, 0xe8]);
    backend.write_all(&close).await.unwrap();
    assert_eq!(take(&mut browser, close.len()).await, close);
    // The client takes its time to answer: no ping comes meanwhile.
    tokio::time::sleep(Duration::from_secs(25)).await;
    nothing_more(&mut browser).await;
    assert!(!task.is_finished());
    task.abort();
}

#[tokio::test]
async fn a_close_asked_while_the_peers_close_lets_them_finish() {
    let config = TunnelConfig::new().track_frames(true);
    let (mut browser, mut backend, handle, task) = spawned(&config);
    let close = masked(0x88, &[0x03, 0xe8]);
    browser.write_all(&close).await.unwrap();
    assert_eq!(take(&mut backend, close.len()).await, close);
    // The client began closing: the proxy adds no Close of its own, and
    // the upstream's reply reaches the client.
    assert!(handle.close(CloseFrame::new(1001, "").unwrap()));
    let reply = unmasked(0x88, &[0x03, 0xe8]);
    backend.write_all(&reply).await.unwrap();
    assert_eq!(take(&mut browser, reply.len()).await, reply);
    backend.shutdown().await.unwrap();
    browser.shutdown().await.unwrap();
    let stats = bounded(task).await.unwrap();
    assert!(stats.end.is_clean(), "the peers' own end: {:?}", stats.end);
}

#[tokio::test(start_paused = true)]
async fn a_ping_that_waited_gets_its_whole_timeout_once_sent() {
    let config = TunnelConfig::new()
        .track_frames(true)
        .ping(Duration::from_secs(10), Duration::from_secs(5));
    let (mut browser, mut backend, _, task) = spawned(&config);
    // A 10-byte frame toward the silent client: 9 bytes 2 s apart, then a
    // pause of 6.9 s, longer than the ping timeout, before the last one.
    backend.write_all(&[0x82, 10]).await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..9u8 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            backend.write_all(&[i]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(6900)).await;
        backend.write_all(&[9]).await.unwrap();
        backend
    });
    assert_eq!(take(&mut browser, 12).await[..2], [0x82, 10]);
    assert_eq!(take(&mut browser, 2).await, [0x89, 0x00]);
    // The ping only now went out: the client has its full 5 s to answer.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !task.is_finished(),
        "ended by {:?}",
        task.await.unwrap().end
    );
    browser.write_all(&masked(0x8a, b"")).await.unwrap();
    let _backend = bounded(writer).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!task.is_finished());
    task.abort();
}

/// RFC 6455 §7.1.1: once both Close frames have passed, the server closes
/// the TCP connection. Peers that exchange Close frames but both keep TCP
/// open must not hold the tunnel until an idle or read timeout: it ends one
/// close linger after the exchange, as a clean close, with every message
/// sent before the Close frames delivered.
///
/// The peers talk on real time (loopback sockets and a paused clock do not
/// mix: the clock jumps while bytes are between hops); the clock is paused
/// once the handshake is over, so the linger runs on virtual time.
#[tokio::test]
async fn peers_that_exchange_close_and_keep_tcp_open_end_the_tunnel_after_the_linger() {
    const LINGER: Duration = Duration::from_secs(5);
    // The upstream keeps its socket until told: after the closing handshake,
    // it sends what it got and holds the connection open.
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, stats, server) = {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = bounded(backend.accept()).await.unwrap();
            let mut ws = bounded(tokio_tungstenite::accept_async(stream))
                .await
                .unwrap();
            for i in 0..3 {
                ws.send(Message::text(format!("from upstream {i}")))
                    .await
                    .unwrap();
            }
            let mut got = Vec::new();
            // tungstenite answers the client's Close and then ends the
            // stream of messages; the TCP connection stays open.
            while let Some(msg) = bounded(ws.next()).await {
                if let m @ (Message::Text(_) | Message::Binary(_)) = msg.unwrap() {
                    got.push(m);
                }
            }
            let _ = hold_rx.await;
            drop(ws);
            got
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = tokio::spawn(async move {
            let (mut client, _) = bounded(listener.accept()).await.unwrap();
            let mut upstream = bounded(TcpStream::connect(backend_addr)).await.unwrap();
            let request = read_head(&mut client).await;
            upstream.write_all(&request).await.unwrap();
            let response = read_head(&mut upstream).await;
            client.write_all(&response).await.unwrap();
            // No idle or read timeout: only the closing handshake can end it.
            let config = TunnelConfig::new().track_frames(true).close_linger(LINGER);
            let stats = tunnel(client, upstream, &config, pending()).await;
            (stats, tokio::time::Instant::now())
        });
        (addr, stats, server)
    };

    let mut ws = connect(addr).await;
    let sent = vec![
        Message::text("one"),
        Message::binary(pattern(300)),
        Message::binary(pattern(70_000)),
    ];
    for m in &sent {
        ws.send(m.clone()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(bounded(ws.next()).await.unwrap().unwrap());
    }
    ws.close(Some(WsClose {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The upstream's Close reply; the client keeps its socket (`ws` lives
    // on, waiting for the server side to close TCP, RFC 6455 §7.1.1).
    match bounded(ws.next()).await {
        Some(Ok(Message::Close(reply))) => {
            assert_eq!(reply.map(|c| c.code), Some(CloseCode::Normal));
        }
        other => panic!("no Close reply: {other:?}"),
    }
    // The tunnel armed its linger when it forwarded that reply.
    tokio::time::pause();
    let exchanged = tokio::time::Instant::now();

    let (stats, ended) = bounded(stats).await.unwrap();
    // tokio's timers fire on millisecond ticks.
    assert!(
        ended - exchanged <= LINGER + Duration::from_millis(1),
        "ended {:?} after the exchange",
        ended - exchanged
    );
    assert!(
        matches!(stats.end, TunnelEnd::PeersClosed),
        "{:?}",
        stats.end
    );
    assert!(stats.end.is_clean());
    let frames = stats.frames.unwrap();
    assert_eq!(
        frames.close(Side::Client).map(|c| c.code()),
        Some(Some(1000))
    );
    assert_eq!(
        frames.close(Side::Upstream).map(|c| c.code()),
        Some(Some(1000))
    );
    assert_eq!((frames.client_messages, frames.upstream_messages), (3, 3));

    // Every message either peer sent before its Close arrived.
    let expected: Vec<Message> = (0..3)
        .map(|i| Message::text(format!("from upstream {i}")))
        .collect();
    assert_eq!(got, expected);
    hold_tx.send(()).unwrap();
    assert_eq!(bounded(server).await.unwrap(), sent);
    // The proxy closed the client's connection: its stream ends.
    assert!(bounded(ws.next()).await.is_none());
}
