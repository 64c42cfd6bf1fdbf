//! WebSockets over HTTP/2 (RFC 8441) against WebSockets over HTTP/1.1, both
//! over TLS, through one `Server` (`serve_negotiated`), in one run
//! (feature `h2`): handshakes and 1 KiB echoes per proxy CPU-second.
//! wsbench speaks no HTTP/2, hence this load of the crate's own.
//!
//! Layout as in `benches/proxy.rs`: the proxy on its own thread with a
//! `current_thread` runtime, its CPU time read from
//! `/proc/thread-self/schedstat`; the clients (the `h2` crate with
//! tokio-tungstenite on the stream, or tokio-tungstenite over tokio-rustls)
//! and the echo backend on a second thread. The targets:
//!
//! - `h1-tls`: one TCP + TLS connection and HTTP/1.1 upgrade per WebSocket;
//! - `h2`: extended CONNECT streams on `--conns` held h2 connections (a
//!   browser's case: the page's connection carries its WebSockets);
//! - `h2-fresh` (handshakes only): a new TCP + TLS + h2 connection for each
//!   extended CONNECT, the same work per WebSocket as `h1-tls` plus h2's.
//!
//! A handshake is: open the WebSocket, one 64 B echo, close. The echo load
//! keeps `--window` 1 KiB messages in flight on each of `--clients`
//! WebSockets.
//!
//! ```sh
//! cargo bench --features h2 --bench h2 -- --secs 3 --rounds 3
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "support/echo.rs"]
mod echo;

use echo::{start_echo_backend, thread_cpu_ns};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsproxy::forward::Scheme;
use wsproxy::server::{Negotiated, Server};

use support::H2Stream;

#[derive(Debug, Parser)]
struct Args {
    /// Measurement window per run, seconds.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Runs per target and load, alternating; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent WebSockets (handshake loops, or echo streams).
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// h2 connections the `h2` target's streams share.
    #[arg(long, default_value_t = 5)]
    conns: usize,
    /// Messages in flight per WebSocket in the echo load.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Measure for real (`cargo bench` passes it); without it, a short
    /// smoke run, as under `cargo test --all-targets`.
    #[arg(long)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    Handshakes,
    Messages,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    H1Tls,
    H2,
    H2Fresh,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    per_s: f64,
    per_proxy_cpu_s: Option<f64>,
}

/// What the client side needs to reach the proxy.
#[derive(Clone)]
struct Dial {
    addr: SocketAddr,
    h2: TlsConnector,
    h1: TlsConnector,
}

fn main() {
    let mut args = Args::parse();
    if !args.bench {
        args.secs = 0.2;
        args.rounds = 1;
        args.clients = 4;
        args.conns = 2;
    }
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let (addrs, cpu) = start_proxy_thread(acceptor(der.clone(), key));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async {
        let backend = start_echo_backend().await;
        addrs.0.send(backend).expect("proxy thread alive");
        let dial = Dial {
            addr: addrs.1.recv().expect("proxy address"),
            h2: connector(&der, b"h2"),
            h1: connector(&der, b"http/1.1"),
        };
        println!(
            "{:<10} {:<9} {:>12} {:>16}",
            "load", "target", "per second", "per proxy-CPU-s"
        );
        for load in [Load::Handshakes, Load::Messages] {
            let targets: &[Target] = match load {
                Load::Handshakes => &[Target::H1Tls, Target::H2, Target::H2Fresh],
                Load::Messages => &[Target::H1Tls, Target::H2],
            };
            let mut samples = vec![Vec::new(); targets.len()];
            for _ in 0..args.rounds {
                for (i, &target) in targets.iter().enumerate() {
                    samples[i].push(run(load, target, &dial, &args, &cpu).await);
                }
            }
            for (target, runs) in targets.iter().zip(&samples) {
                println!(
                    "{:<10} {:<9} {:>12.0} {:>16.0}",
                    match load {
                        Load::Handshakes => "handshake",
                        Load::Messages => "1k-echo",
                    },
                    match target {
                        Target::H1Tls => "h1-tls",
                        Target::H2 => "h2",
                        Target::H2Fresh => "h2-fresh",
                    },
                    median(runs.iter().map(|s| s.per_s)),
                    median(runs.iter().filter_map(|s| s.per_proxy_cpu_s)),
                );
            }
        }
    });
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn acceptor(der: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("tls config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

fn connector(der: &CertificateDer<'static>, alpn: &[u8]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

type AddrChannel = (mpsc::Sender<SocketAddr>, mpsc::Receiver<SocketAddr>);

/// The proxy on its own thread, serving h2 and HTTP/1.1 over TLS; the
/// address channel and the thread's CPU clock.
fn start_proxy_thread(acceptor: TlsAcceptor) -> (AddrChannel, Arc<AtomicU64>) {
    let (to_proxy, from_client) = mpsc::channel::<SocketAddr>();
    let (to_client, from_proxy) = mpsc::channel::<SocketAddr>();
    let cpu = Arc::new(AtomicU64::new(0));
    let cpu_out = cpu.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("proxy runtime");
        rt.block_on(async move {
            let backend = from_client.recv().expect("backend address");
            let (proxy, listener) = echo::proxy_to(backend).await;
            to_client
                .send(listener.local_addr().expect("addr"))
                .expect("client thread alive");
            tokio::spawn(async move {
                loop {
                    cpu_out.store(thread_cpu_ns(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            let accept = move |tcp| {
                let accepting = acceptor.accept(tcp);
                async move {
                    let tls = accepting.await?;
                    let protocol = Negotiated::from_alpn(tls.get_ref().1.alpn_protocol());
                    Ok((tls, protocol))
                }
            };
            let _ = Server::new(proxy)
                .scheme(Scheme::Https)
                .serve_negotiated(listener, accept, std::future::pending())
                .await;
        });
    });
    ((to_proxy, from_proxy), cpu)
}

/// A fresh h2 connection over TLS, once extended CONNECT is allowed.
async fn h2_connection(dial: &Dial) -> Option<h2::client::SendRequest<Bytes>> {
    let tcp = TcpStream::connect(dial.addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").ok()?;
    let tls = dial.h2.connect(name, tcp).await.ok()?;
    let (send, conn) = h2::client::handshake(tls).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.ok()?;
    // The server's SETTINGS follow its preface at once; bounded.
    for _ in 0..200 {
        if send.is_extended_connect_protocol_enabled() {
            return Some(send);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        send = send.ready().await.ok()?;
    }
    None
}

async fn h2_websocket(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
) -> Option<WebSocketStream<H2Stream>> {
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost:{}/", addr.port()))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from("websocket"))
        .body(())
        .ok()?;
    let (answer, stream) = send
        .clone()
        .ready()
        .await
        .ok()?
        .send_request(request, false)
        .ok()?;
    let answer = answer.await.ok()?;
    if answer.status() != http::StatusCode::OK {
        return None;
    }
    let io = H2Stream::new(stream, answer.into_body());
    Some(WebSocketStream::from_raw_socket(io, Role::Client, None).await)
}

async fn h1_websocket(dial: &Dial) -> Option<WebSocketStream<impl AsyncRead + AsyncWrite + Unpin>> {
    let tcp = TcpStream::connect(dial.addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").ok()?;
    let tls = dial.h1.connect(name, tcp).await.ok()?;
    let url = format!("wss://localhost:{}/", dial.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.ok()?;
    Some(ws)
}

async fn run(load: Load, target: Target, dial: &Dial, args: &Args, cpu: &AtomicU64) -> Sample {
    let done = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs_f64(args.secs);
    // Connections (and the echo load's WebSockets) open before the window.
    let start_at = Instant::now() + Duration::from_millis(500);
    let mut shared = Vec::new();
    if target == Target::H2 {
        for _ in 0..args.conns.max(1) {
            if let Some(send) = h2_connection(dial).await {
                shared.push(send);
            }
        }
    }
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let (dial, done) = (dial.clone(), done.clone());
        let send = shared.get(i % shared.len().max(1)).cloned();
        let in_flight = args.window;
        clients.push(tokio::spawn(async move {
            match (load, target, send) {
                (Load::Handshakes, Target::H1Tls, _) => {
                    loop_handshakes(&done, start_at, window, || h1_websocket(&dial)).await
                }
                (Load::Handshakes, Target::H2, Some(send)) => {
                    let addr = dial.addr;
                    loop_handshakes(&done, start_at, window, || h2_websocket(&send, addr)).await
                }
                (Load::Handshakes, Target::H2Fresh, _) => {
                    loop_handshakes(&done, start_at, window, || async {
                        let send = h2_connection(&dial).await?;
                        h2_websocket(&send, dial.addr).await
                    })
                    .await
                }
                (Load::Messages, Target::H2, Some(send)) => {
                    if let Some(ws) = h2_websocket(&send, dial.addr).await {
                        echoes(ws, &done, start_at, window, in_flight).await;
                    }
                }
                (Load::Messages, _, _) => {
                    if let Some(ws) = h1_websocket(&dial).await {
                        echoes(ws, &done, start_at, window, in_flight).await;
                    }
                }
                _ => {}
            }
        }));
    }
    tokio::time::sleep_until(start_at.into()).await;
    let cpu_before = cpu.load(Ordering::Relaxed);
    let before = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let count = done.load(Ordering::Relaxed) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cpu_s = cpu.load(Ordering::Relaxed).saturating_sub(cpu_before) as f64 / 1e9;
    for c in clients {
        // Bounded: a client still in a handshake at the end finishes it.
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
    }
    drop(shared);
    Sample {
        per_s: count as f64 / elapsed,
        per_proxy_cpu_s: (cpu_s > 0.0).then(|| count as f64 / cpu_s),
    }
}

/// Opens a WebSocket with `open`, echoes 64 B once and closes, in a loop
/// for the window.
async fn loop_handshakes<F, Fut, S>(done: &AtomicU64, start_at: Instant, window: Duration, open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<WebSocketStream<S>>>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::sleep_until(start_at.into()).await;
    let end = Instant::now() + window;
    let payload = Bytes::from(vec![7_u8; 64]);
    while Instant::now() < end {
        let Some(mut ws) = open().await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let ok = ws.send(Message::binary(payload.clone())).await.is_ok()
            && matches!(ws.next().await, Some(Ok(Message::Binary(b))) if b.len() == 64);
        let _ = ws.close(None).await;
        // Read the Close reply: the stream ends cleanly on both sides.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        if ok {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn echoes<S>(
    ws: WebSocketStream<S>,
    done: &AtomicU64,
    start_at: Instant,
    window: Duration,
    in_flight: usize,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    tokio::time::sleep_until(start_at.into()).await;
    let end = Instant::now() + window;
    let payload = Bytes::from(vec![1_u8; 1024]);
    for _ in 0..in_flight {
        if tx.send(Message::binary(payload.clone())).await.is_err() {
            return;
        }
    }
    while let Some(Ok(msg)) = rx.next().await {
        if msg.len() != 1024 {
            continue;
        }
        done.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= end {
            break;
        }
        if tx.send(Message::binary(payload.clone())).await.is_err() {
            break;
        }
    }
    let _ = tx.close().await;
}
