//! Real peers on loopback for the end-to-end tests: WebSocket upstreams
//! built on tokio-tungstenite and raw TCP helpers. No network mocks.
#![allow(dead_code, unreachable_pub, clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsproxy::server::{DrainReport, Server};
use wsproxy::{Proxy, ProxyBuilder};

pub mod h2_stream;
#[allow(unused_imports)]
pub use h2_stream::H2Stream;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most [`WAIT`], panicking with `what` otherwise.
pub async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    within(WAIT, what, fut).await
}

/// Awaits `fut` for at most `limit` (on a paused clock, virtual time).
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A loopback port with nothing listening on it: bound, read, released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A WebSocket upstream: echoes every data message, tags the handshake
/// headers it saw, and can answer with a greeting in the same write as its 101.
pub struct WsUpstream {
    pub addr: SocketAddr,
    /// The request heads it received, in order.
    pub seen: Arc<Mutex<Vec<Request>>>,
    pub task: JoinHandle<()>,
}

#[derive(Clone, Copy, Default)]
pub struct WsUpstreamOptions {
    /// Reply `name` as the first text message after the upgrade.
    pub announce: Option<&'static str>,
    /// Accept the first offered subprotocol.
    pub pick_protocol: bool,
    /// Read every message but never answer one.
    pub silent: bool,
}

pub async fn ws_upstream(options: WsUpstreamOptions) -> WsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let callback = |req: &Request, mut resp: Response| {
                    if options.pick_protocol {
                        if let Some(p) = req.headers().get("sec-websocket-protocol") {
                            let first = p.to_str().unwrap().split(',').next().unwrap().trim();
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", first.parse().unwrap());
                        }
                    }
                    seen.lock().unwrap().push(req.clone());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                if let Some(name) = options.announce {
                    if ws.send(Message::text(name)).await.is_err() {
                        return;
                    }
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if options.silent && !msg.is_close() {
                        continue;
                    }
                    let reply = match msg {
                        Message::Text(_) | Message::Binary(_) => msg,
                        Message::Close(_) => {
                            // tungstenite queued the Close reply (echoing
                            // the code) when it read the Close; send it.
                            let _ = ws.flush().await;
                            return;
                        }
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    WsUpstream { addr, seen, task }
}

/// A plain TCP upstream that answers every connection with `answer` once it
/// has read a full request head, and records the bytes it received.
pub async fn raw_upstream(answer: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    raw_upstream_after(b"\r\n\r\n", answer).await
}

/// Like [`raw_upstream`], but answers only once it has received `until`.
pub async fn raw_upstream_after(
    until: &'static [u8],
    answer: &'static [u8],
) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(until.len()).any(|w| w == until) {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
                // Keep reading until the proxy closes, so that anything it
                // forwards after the head is recorded too.
                let rest = tokio::time::timeout(WAIT, async {
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                    }
                });
                let _ = rest.await;
                seen.lock().unwrap().push(got);
            });
        }
    });
    (addr, seen)
}

/// Waits until a [`raw_upstream`] has recorded `n` connections, bounded by
/// [`WAIT`]; it records one when the proxy closes it.
pub async fn await_records(seen: &Mutex<Vec<Vec<u8>>>, n: usize) {
    bounded("upstream records", async {
        while seen.lock().unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Reads from `stream` until `needle` has been seen or EOF, bounded by [`WAIT`].
pub async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    bounded("bytes from the proxy", async {
        while !got.windows(needle.len()).any(|w| w == needle) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

/// Reads until EOF, bounded by [`WAIT`].
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    bounded("EOF from the proxy", stream.read_to_end(&mut got))
        .await
        .ok();
    got
}

/// A running gateway: its address, the proxy (for counters) and a handle to
/// stop it.
pub struct Gateway {
    pub addr: SocketAddr,
    pub proxy: Proxy,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<DrainReport>,
}

impl Gateway {
    /// A gateway whose shutdown cuts open tunnels after one second.
    pub async fn start(builder: ProxyBuilder) -> Self {
        Self::start_with(builder, |s| s.drain_timeout(Duration::from_secs(1))).await
    }

    pub async fn start_with(builder: ProxyBuilder, server: impl FnOnce(Server) -> Server) -> Self {
        let proxy = builder.build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = server(Server::new(proxy.clone()));
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
        });
        Self {
            addr,
            proxy,
            stop: Some(stop),
            task,
        }
    }

    pub async fn shutdown(mut self) -> DrainReport {
        let _ = self.stop.take().unwrap().send(());
        // Long enough for any drain window used here, also on a paused clock.
        within(Duration::from_secs(120), "server shutdown", self.task)
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

// Lifecycle peers: shared by tests/lifecycle.rs and benches/lifecycle.rs.

/// An echo upstream that also records every text message it received, from
/// every connection, so a test can tell that nothing a client sent was lost.
pub async fn recording_upstream() -> (SocketAddr, Arc<Mutex<HashSet<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, recording_upstream_on(listener))
}

/// [`recording_upstream`] on a listener of the caller's.
pub fn recording_upstream_on(listener: TcpListener) -> Arc<Mutex<HashSet<String>>> {
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
    seen
}

pub async fn client(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    client_to(addr, "/").await
}

/// A WebSocket client of `ws://addr{path}`.
pub async fn client_to(addr: SocketAddr, path: &str) -> WebSocketStream<TcpStream> {
    let tcp = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    let (ws, _) = bounded(
        "handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp),
    )
    .await
    .unwrap();
    ws
}

/// Sends `text` and waits for its echo.
pub async fn echo(ws: &mut WebSocketStream<TcpStream>, text: String) {
    ws.send(Message::text(text.clone())).await.unwrap();
    let got = bounded("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text(text));
}

/// Reads until the peer's Close; returns its code and when it came.
pub async fn await_close(ws: &mut WebSocketStream<TcpStream>) -> (Option<u16>, Instant) {
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

/// Waits until `flag` is set (forever if its sender is gone).
pub async fn until(flag: &mut watch::Receiver<bool>) {
    let set = flag.wait_for(|&set| set).await.is_ok();
    if !set {
        std::future::pending::<()>().await;
    }
}

// An embedding host: a small hyper 1 server, as in examples/hyper_embed.rs,
// that proxies every request through `Proxy::connect_upgrade` and
// `PendingUpgrade::tunnel`.

/// Starts the host on an ephemeral loopback port; it accepts until dropped
/// with the runtime, and spawns each tunnel as its own task.
pub async fn hyper_host(proxy: Proxy) -> SocketAddr {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let proxy = proxy.clone();
            let service = service_fn(move |req| hyper_handle(proxy.clone(), peer, req));
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
    addr
}

async fn hyper_handle(
    proxy: Proxy,
    peer: SocketAddr,
    mut req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<String>, std::convert::Infallible> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let head = http::Request::from_parts(parts, ());
    match proxy
        .connect_upgrade(head, peer, wsproxy::Scheme::Http)
        .await
    {
        Ok(pending) => {
            let mut switch = http::Response::new(String::new());
            *switch.status_mut() = pending.response().status();
            *switch.headers_mut() = pending.response().headers().clone();
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    pending.tunnel(hyper_util::rt::TokioIo::new(upgraded)).await;
                }
            });
            Ok(switch)
        }
        // The upstream's own refusal, relayed whole.
        Err(wsproxy::UpgradeError::NotSwitched(refusal)) => {
            Ok(refusal.map(|body| String::from_utf8_lossy(&body).into_owned()))
        }
        Err(e) => {
            let mut refused = http::Response::new(format!("{e}\n"));
            *refused.status_mut() = e.status();
            Ok(refused)
        }
    }
}

/// A spawned child's stdout, line by line as it comes, and its stderr,
/// gathered whole (a line can arrive in pieces there), each read by a
/// thread of its own so that neither pipe fills and blocks the child.
///
/// # Panics
///
/// When the child was spawned without both pipes.
pub fn child_output(
    child: &mut std::process::Child,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    Arc<Mutex<String>>,
) {
    use std::io::{BufRead, Read};
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr piped");
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (lines, stderr)
}

/// The gateway example binary next to this test's executable (integration
/// tests cannot depend on an example, so the built binary is run this way);
/// `cargo test` builds it first, with the same features as the tests.
///
/// # Panics
///
/// When the binary is missing or older than its sources, with what to run.
pub fn gateway_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .join("examples")
        .join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    let how = "run `cargo test` (it builds the examples first, with the same \
               features) or `cargo build --example gateway`";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {how}", bin.display()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest = newest_mtime(&root.join("examples/gateway")).max(newest_mtime(&root.join("src")));
    assert!(
        built >= newest,
        "{} is older than its sources: {how}",
        bin.display()
    );
    bin
}

/// The newest modification time of the build's inputs under `dir`.
fn newest_mtime(dir: &std::path::Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    // Bounded by the size of the source tree.
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            // Only what the build reads: a newer screenshot next to the
            // sources does not make the binary stale.
            let built_from = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("rs" | "html")
            );
            if path.is_dir() {
                stack.push(path);
            } else if built_from {
                if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
                    newest = newest.max(t);
                }
            }
        }
    }
    newest
}

/// The status of an upgrade to `path` that the proxy is expected to refuse.
///
/// # Panics
///
/// When the upgrade succeeds or fails other than with an HTTP answer.
pub async fn refused_upgrade(addr: SocketAddr, path: &str) -> u16 {
    let refused = bounded(
        "a refused upgrade",
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(answer)) = refused else {
        panic!("{path}: {refused:?}");
    };
    answer.status().as_u16()
}

/// TLS to `addr` as `localhost`, trusting only `roots`, offering `alpn`.
pub async fn tls_to(
    addr: SocketAddr,
    roots: &[tokio_rustls::rustls::pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
    let mut store = RootCertStore::empty();
    for der in roots {
        store.add(der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = bounded("tcp connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    bounded("tls handshake", connector.connect(name, tcp))
        .await
        .unwrap()
}

/// An upstream that takes each connection, reads its request head and
/// closes without an answer, as a backend going down does; counts the
/// heads it read.
pub async fn closes_unanswered() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    heads_counted(b"", false).await
}

/// A WebSocket upgrade request for `path` as a host's own server (hyper)
/// parsed it.
pub fn parsed_upgrade(path: &str) -> http::Request<()> {
    http::Request::get(path)
        .header("host", "app.test")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap()
}

/// An upstream that answers every request head with `answer`, counting the
/// heads before it answers, and holds each connection until the proxy
/// closes it.
pub async fn counting_upstream(
    answer: &'static [u8],
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    heads_counted(answer, true).await
}

/// Reads each connection's request head, counts it, sends `answer`, then
/// holds the connection until the proxy closes it (`hold`) or closes it.
async fn heads_counted(
    answer: &'static [u8],
    hold: bool,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                read_until(&mut tcp, b"\r\n\r\n").await;
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.write_all(answer).await;
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(WAIT, async {
                    while hold && matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    (addr, heads)
}

/// A malformed answer head (a field line without a colon).
pub const INVALID_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n";
