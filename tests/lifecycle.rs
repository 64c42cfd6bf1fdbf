//! The life of tunnels after the 101, end to end on loopback with real
//! WebSocket peers: graceful shutdown that closes every tunnel with 1001
//! spread over a window, and rebalancing after an upstream joins.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
use wsproxy::Proxy;

use support::*;

/// An echo upstream that also records every text message it received, from
/// every connection, so a test can tell that nothing a client sent was lost.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<HashSet<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(text) = &msg {
                        record.lock().unwrap().insert(text.to_string());
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
                // The loop ends after tungstenite read the Close and queued
                // its reply; flush it out.
                let _ = ws.flush().await;
            });
        }
    });
    (addr, seen)
}

async fn client(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    let tcp = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    let (ws, _) = bounded(
        "handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp),
    )
    .await
    .unwrap();
    ws
}

/// Sends `text` and waits for its echo.
async fn echo(ws: &mut WebSocketStream<TcpStream>, text: String) {
    ws.send(Message::text(text.clone())).await.unwrap();
    let got = bounded("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text(text));
}

/// Reads until the peer's Close; returns its code and when it came.
async fn await_close(ws: &mut WebSocketStream<TcpStream>) -> (Option<u16>, Instant) {
    // Bounded: at most the echoes of what this client sent come first.
    for _ in 0..16 {
        match within(Duration::from_secs(120), "close", ws.next()).await {
            Some(Ok(Message::Close(frame))) => {
                let at = Instant::now();
                // Reading on sends tungstenite's reply and sees the end.
                while let Some(Ok(_)) = within(Duration::from_secs(120), "end", ws.next()).await {}
                return (frame.map(|f| u16::from(f.code)), at);
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
    panic!("no close frame after 16 messages");
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_a_thousand_tunnels_with_1001_spread_over_the_window() {
    const CLIENTS: usize = 1000;
    const WINDOW: Duration = Duration::from_secs(10);
    let (up, seen) = recording_upstream().await;
    let set: UpstreamSet = [Upstream::new(up)].into_iter().collect();
    let gw = Gateway::start_with(Proxy::builder().upstream(RoundRobin::new(set)), |s| {
        s.drain_window(WINDOW)
            .drain_timeout(WINDOW + Duration::from_secs(20))
    })
    .await;

    let (go, mut went) = watch::channel(false);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut ws = client(gw.addr).await;
        echo(&mut ws, format!("hello {c}")).await;
        let mut went = went.clone();
        clients.push(tokio::spawn(async move {
            bounded("shutdown", went.wait_for(|&go| go)).await.unwrap();
            // Sent once shutdown began, before the Close is read: it must
            // reach the upstream whenever this client's turn comes.
            ws.send(Message::text(format!("last {c}"))).await.unwrap();
            await_close(&mut ws).await
        }));
    }
    assert_eq!(gw.proxy.tunnels().len(), CLIENTS);

    let started = Instant::now();
    let stopping = tokio::spawn(gw.shutdown());
    // Let the server begin draining before the clients send.
    tokio::task::yield_now().await;
    go.send(true).unwrap();
    let _ = went.borrow_and_update();

    let mut offsets = Vec::new();
    for c in clients {
        let (code, at) = c.await.unwrap();
        assert_eq!(code, Some(1001));
        offsets.push(at - started);
    }
    let report = stopping.await.unwrap();
    assert_eq!(report.closed, CLIENTS);
    assert_eq!(report.cut, 0, "{report:?}");

    offsets.sort();
    let pct = |p: usize| offsets[(CLIENTS - 1) * p / 100];
    println!(
        "close spread over a {WINDOW:?} window: first {:?}, p25 {:?}, median {:?}, p75 {:?}, last {:?}",
        offsets[0],
        pct(25),
        pct(50),
        pct(75),
        offsets[CLIENTS - 1]
    );
    // Evenly spread: each quarter of the window closed a quarter of them.
    for q in 1..4 {
        let at = WINDOW * q / 4;
        let before = offsets.iter().filter(|&&o| o < at).count();
        let expected = CLIENTS * q as usize / 4;
        assert!(
            before.abs_diff(expected) <= CLIENTS / 50,
            "{before} closed before {at:?}, expected about {expected}"
        );
    }
    assert!(offsets[CLIENTS - 1] < WINDOW);
    // Nothing any client sent was lost.
    let seen = seen.lock().unwrap();
    for c in 0..CLIENTS {
        assert!(
            seen.contains(&format!("last {c}")),
            "lost the message of {c}"
        );
    }
}
