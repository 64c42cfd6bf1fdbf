//! What the in-repo load benches share: a tokio-tungstenite echo backend
//! on loopback, the proxy in front of it, and the calling thread's CPU
//! time (benches/proxy.rs, benches/h2.rs, examples/handshake_allocs.rs).

#![allow(dead_code)]

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
use wsproxy::Proxy;

/// CPU time of the calling thread, from schedstat (nanoseconds).
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A WebSocket echo backend on 127.0.0.1 (text and binary messages back).
pub async fn start_echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A `Proxy` at its defaults with `backend` as its one upstream, and a
/// listener on 127.0.0.1 for it.
pub async fn proxy_to(backend: SocketAddr) -> (Proxy, TcpListener) {
    let set: UpstreamSet = [Upstream::new(backend)].into_iter().collect();
    let proxy = Proxy::builder()
        .upstream(RoundRobin::new(set))
        .build()
        .expect("proxy");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    (proxy, listener)
}
