//! Embedding wsproxy in a hyper 1 server: the server answers `/health`
//! itself and hands every other request to the proxy's tower service
//! (`Proxy::service`; a host with no routes of its own can wrap it in
//! `hyper_util::service::TowerToHyperService` instead of `service_fn`): a
//! WebSocket upgrade is checked against the upstream's 101 before the
//! client gets one and tunneled once hyper hands the connection over; a
//! plain request is proxied with its body streamed.
//!
//! ```sh
//! cargo run --features tower --example hyper_embed   # then: wscat -c ws://127.0.0.1:8030/ws
//! ```
//!
//! An embedded echo backend plays the upstream; the example checks both
//! routes once with its own client, prints the results, and serves until
//! Ctrl-C.

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tower_service::Service;
use wsproxy::service::{ProxyBody, ProxyService};
use wsproxy::{Proxy, RoundRobin, Route, Scheme, Upstream, UpstreamGroup};

/// `/health` here, everything else through the proxy's service.
async fn handle(
    mut proxied: ProxyService,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.uri().path() == "/health" {
        return Ok(Response::new(ProxyBody::from(Bytes::from_static(b"ok\n"))));
    }
    // 404 off the proxy's routes, 400/426 for a bad upgrade, 502/504 for
    // the upstream: the proxy answers them itself.
    proxied.call(req).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let backend = echo_backend().await?;
    let proxy = Proxy::builder()
        .route(Route::new(
            "/ws",
            UpstreamGroup::new(
                "echo",
                RoundRobin::new([Upstream::new(backend)].into_iter().collect()),
            ),
        ))
        .build()?;
    // 8030 if free, else any port.
    let listener = match TcpListener::bind("127.0.0.1:8030").await {
        Ok(listener) => listener,
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    // The listener's port and scheme once; the client's address per
    // connection.
    let proxied = proxy.service().listener(addr, Scheme::Http);
    println!("listening on http://{addr} (/health here, /ws proxied)");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let proxied = proxied.clone().client_addr(move |_| Some(peer));
            let service = service_fn(move |req| handle(proxied.clone(), req));
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });

    // Both routes once, as a client would.
    let mut health = TcpStream::connect(addr).await?;
    health
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    health.read_to_string(&mut answer).await?;
    println!("/health -> {}", answer.lines().next().unwrap_or_default());
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
    ws.send(Message::text("through hyper")).await?;
    if let Some(Ok(reply)) = ws.next().await {
        println!("/ws     -> echo {reply}");
    }
    ws.close(None).await?;
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/other")).await;
    if let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused {
        println!("/other  -> {}", response.status());
    }

    println!("serving until Ctrl-C");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// A WebSocket echo upstream on an ephemeral loopback port.
async fn echo_backend() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}
