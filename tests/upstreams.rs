//! TLS and Unix-socket upstreams, end to end over real sockets: a `wss`
//! backend (tokio-tungstenite over a tokio-rustls server) behind a private
//! CA made with rcgen, plain HTTPS, Unix-socket backends, health checks
//! over both, a drain of a tunnel over TLS, and the gateway's flags.

#![allow(clippy::result_large_err)] // tungstenite's handshake callback type

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use wsproxy::balance::{RoundRobin, Upstream, UpstreamAddr, UpstreamSet};
use wsproxy::forward::{ForwardPolicy, HostMode};
use wsproxy::proxy::{TcpProbe, UpstreamGroup, WebSocketProbe};
use wsproxy::route::Route;
use wsproxy::upstream_tls::UpstreamTls;
use wsproxy::{HealthCheck, HealthChecker, Probe, Proxy, ProxyBuilder};

use support::{bounded, client_to, echo, read_to_end, refused_upgrade, Gateway, WAIT};

// ---------------------------------------------------------------------------
// Certificates and backends
// ---------------------------------------------------------------------------

/// A private CA and a server configuration whose certificate it signed.
struct Pki {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

/// TLS to an upstream verified against `pki`'s CA under the name
/// `backend.test`.
fn trusting_backend_test(pki: &Pki) -> UpstreamTls {
    UpstreamTls::builder()
        .ca_pem(&pki.ca_pem)
        .server_name("backend.test")
        .build()
        .unwrap()
}

/// A fresh CA and a leaf for `names` (DNS names or IP addresses).
fn pki(names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsproxy test ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &*ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

/// What a backend serves on each connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// WebSocket echo (tokio-tungstenite).
    WebSocket,
    /// One HTTP request, answered 200 with its body echoed.
    Http,
}

/// The SNI and ALPN protocol of one completed TLS handshake.
type Names = (Option<String>, Option<Vec<u8>>);

/// What a backend saw.
#[derive(Default)]
struct Seen {
    /// TLS connections: the names of each completed handshake.
    tls: Mutex<Vec<Names>>,
    /// The Host header of each request.
    hosts: Mutex<Vec<String>>,
    /// Connections accepted, handshake or not.
    accepted: AtomicUsize,
}

/// Serves one connection as `serve` says, recording in `seen`.
async fn serve_conn<S>(stream: S, serve: Serve, seen: Arc<Seen>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match serve {
        Serve::WebSocket => {
            let record = seen.clone();
            let callback = move |req: &Request, resp: Response| {
                let host = req.headers().get("host").map(|h| h.to_str().unwrap_or(""));
                record
                    .hosts
                    .lock()
                    .unwrap()
                    .push(host.unwrap_or("").to_owned());
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                let reply = match msg {
                    Message::Text(_) | Message::Binary(_) => msg,
                    Message::Close(_) => {
                        // tungstenite queued the Close reply; send it.
                        let _ = ws.flush().await;
                        return;
                    }
                    _ => continue,
                };
                if ws.send(reply).await.is_err() {
                    return;
                }
            }
        }
        Serve::Http => {
            let mut stream = stream;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Bounded by the test's request, a few hundred bytes.
            let head_end = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            seen.hosts
                .lock()
                .unwrap()
                .push(header("host:").unwrap_or_default());
            let length: usize = header("content-length:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = &buf[head_end..head_end + length];
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.write_all(body).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// A TLS backend on loopback with `server`'s certificate.
async fn tls_backend(server: Arc<ServerConfig>, serve: Serve) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    let acceptor = TlsAcceptor::from(server);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            record.accepted.fetch_add(1, Ordering::Relaxed);
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                let names = (
                    conn.server_name().map(str::to_owned),
                    conn.alpn_protocol().map(<[u8]>::to_vec),
                );
                record.tls.lock().unwrap().push(names);
                serve_conn(tls, serve, record).await;
            });
        }
    });
    (addr, seen)
}

/// A directory under /tmp for Unix sockets, removed on drop.
#[cfg(unix)]
struct SocketDir(std::path::PathBuf);

#[cfg(unix)]
impl SocketDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wsproxy-upstreams-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

#[cfg(unix)]
impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Unix-socket backend at `path`.
#[cfg(unix)]
fn unix_backend(path: &std::path::Path, serve: Serve) -> Arc<Seen> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            record.accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve_conn(stream, serve, record.clone()));
        }
    });
    seen
}

/// A proxy with one route to `upstream`, over TLS when `tls` is given.
fn proxy_to(upstream: UpstreamAddr, tls: Option<UpstreamTls>, host: HostMode) -> ProxyBuilder {
    let set: UpstreamSet = [Upstream::new(upstream)].into_iter().collect();
    let mut group = UpstreamGroup::new("backend", RoundRobin::new(set));
    if let Some(tls) = tls {
        group = group.tls(tls);
    }
    Proxy::builder()
        .policy(ForwardPolicy::builder().host(host).build().unwrap())
        .route(Route::new("/", group))
}

/// Sends a POST with `body` through the proxy at `addr`; the whole answer.
async fn post(addr: SocketAddr, body: &str) -> String {
    let mut stream = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8(read_to_end(&mut stream).await).unwrap()
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn wss_backend_behind_a_private_ca_echoes_with_the_configured_sni() {
    let pki = pki(&["backend.test"]);
    let (addr, seen) = tls_backend(pki.server.clone(), Serve::WebSocket).await;
    let tls = trusting_backend_test(&pki);
    // Reached by IP address: the certificate names only backend.test, so
    // it verifies only because the configured name is used.
    let gw = Gateway::start(proxy_to(addr.into(), Some(tls), HostMode::ClientAsSent)).await;
    let mut ws = client_to(gw.addr, "/chat").await;
    echo(&mut ws, "over tls".into()).await;
    // Large messages both ways go through TLS records intact.
    let big = vec![7u8; 300 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = bounded("big echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got.into_data().as_ref(), &big[..]);
    assert_eq!(
        seen.tls.lock().unwrap().as_slice(),
        &[(Some("backend.test".to_owned()), Some(b"http/1.1".to_vec()))]
    );
    // The registry lists the tunnel against the TLS upstream.
    let tunnels = gw.proxy.tunnels();
    assert_eq!(tunnels.len(), 1);
    drop(ws);
    gw.shutdown().await;
}

#[tokio::test]
async fn sni_defaults_to_the_upstream_host_name() {
    let pki = pki(&["localhost"]);
    let (addr, seen) = tls_backend(pki.server.clone(), Serve::WebSocket).await;
    let tls = UpstreamTls::builder().ca_pem(&pki.ca_pem).build().unwrap();
    let upstream = UpstreamAddr::name("localhost", addr.port());
    let gw = Gateway::start(proxy_to(upstream, Some(tls), HostMode::Upstream)).await;
    let mut ws = client_to(gw.addr, "/").await;
    echo(&mut ws, "sni".into()).await;
    assert_eq!(
        seen.tls.lock().unwrap()[0].0.as_deref(),
        Some("localhost"),
        "SNI from the upstream's name"
    );
    // $proxy_host: the upstream's host:port, as nginx sends for https too.
    assert_eq!(
        seen.hosts.lock().unwrap().as_slice(),
        &[format!("localhost:{}", addr.port())]
    );
    drop(ws);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_502_and_nothing_tunneled() {
    let backend = pki(&["backend.test"]);
    let other = pki(&["backend.test"]);
    let (addr, seen) = tls_backend(backend.server.clone(), Serve::WebSocket).await;
    let tls = trusting_backend_test(&other);
    let gw = Gateway::start(proxy_to(addr.into(), Some(tls), HostMode::ClientAsSent)).await;
    assert_eq!(refused_upgrade(gw.addr, "/").await, 502);
    // The TCP connect happened, the TLS handshake did not, and no request
    // (let alone a tunnel) reached the backend.
    assert!(seen.accepted.load(Ordering::Relaxed) >= 1);
    assert!(seen.tls.lock().unwrap().is_empty());
    assert!(seen.hosts.lock().unwrap().is_empty());
    let counters = gw.proxy.counters();
    assert_eq!(counters.tunnels_total, 0, "{counters:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_name_the_certificate_does_not_carry_is_refused() {
    let pki = pki(&["backend.test"]);
    let (addr, seen) = tls_backend(pki.server.clone(), Serve::WebSocket).await;
    // Right CA, but the upstream is reached by IP without a configured name:
    // the certificate has no IP address in it.
    let tls = UpstreamTls::builder().ca_pem(&pki.ca_pem).build().unwrap();
    let gw = Gateway::start(proxy_to(addr.into(), Some(tls), HostMode::ClientAsSent)).await;
    assert_eq!(refused_upgrade(gw.addr, "/").await, 502);
    assert!(seen.tls.lock().unwrap().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn insecure_mode_accepts_any_certificate() {
    let pki = pki(&["somewhere.else"]);
    let (addr, seen) = tls_backend(pki.server.clone(), Serve::WebSocket).await;
    let tls = UpstreamTls::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let gw = Gateway::start(proxy_to(addr.into(), Some(tls), HostMode::ClientAsSent)).await;
    let mut ws = client_to(gw.addr, "/").await;
    echo(&mut ws, "unverified".into()).await;
    // An IP address is never sent as SNI (RFC 6066).
    assert_eq!(seen.tls.lock().unwrap()[0].0, None);
    drop(ws);
    gw.shutdown().await;
}

#[tokio::test]
async fn plain_requests_with_a_body_go_over_tls() {
    let pki = pki(&["backend.test"]);
    let (addr, seen) = tls_backend(pki.server.clone(), Serve::Http).await;
    let tls = trusting_backend_test(&pki);
    let gw = Gateway::start(proxy_to(addr.into(), Some(tls), HostMode::ClientAsSent)).await;
    let answer = post(gw.addr, "hello over https").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello over https"), "{answer}");
    assert_eq!(seen.hosts.lock().unwrap().as_slice(), &["app.test"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_drain_closes_a_tunnel_over_tls_with_1001() {
    let pki = pki(&["backend.test"]);
    let (addr, _) = tls_backend(pki.server.clone(), Serve::WebSocket).await;
    let tls = trusting_backend_test(&pki);
    let builder = proxy_to(addr.into(), Some(tls), HostMode::ClientAsSent);
    let gw = Gateway::start_with(builder, |s| {
        s.drain_window(Duration::from_millis(50))
            .drain_timeout(Duration::from_secs(5))
    })
    .await;
    let mut ws = client_to(gw.addr, "/").await;
    echo(&mut ws, "before the drain".into()).await;
    assert_eq!(gw.proxy.tunnels().len(), 1);
    let (report, (code, _)) = tokio::join!(gw.shutdown(), support::await_close(&mut ws));
    assert_eq!(code, Some(1001));
    assert_eq!((report.closed, report.cut), (1, 0), "{report:?}");
}

#[cfg(feature = "proxy-protocol")]
#[test]
fn a_proxy_header_over_tls_is_refused_when_the_proxy_is_built() {
    let tls = UpstreamTls::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let set: UpstreamSet = [Upstream::new(UpstreamAddr::name("backend.test", 443))]
        .into_iter()
        .collect();
    let group = UpstreamGroup::new("pp", RoundRobin::new(set))
        .tls(tls)
        .send_proxy_v2(true);
    let err = Proxy::builder()
        .route(Route::new("/", group))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, wsproxy::proxy::ProxyConfigError::ProxyHeaderOverTls(name) if name == "pp"),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------
// Health checks over TLS
// ---------------------------------------------------------------------------

/// Runs `probe` over TLS against `set` until every upstream's check-down
/// mark equals `down` (by position), bounded.
async fn checked(set: &UpstreamSet, probe: impl Probe + 'static, tls: UpstreamTls, down: &[bool]) {
    let config = HealthCheck::builder()
        .probe(probe)
        .interval(Duration::from_millis(20))
        // Not the interval (HAProxy's default): an unoptimized TLS handshake
        // can take longer than 20 ms.
        .timeout(Duration::from_secs(2))
        .rise(1)
        .fall(1)
        .build()
        .unwrap();
    let checker = HealthChecker::new(set.clone(), config).tls(tls);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(checker.run(async {
        let _ = stopped.await;
    }));
    let marks = || -> Vec<bool> { set.snapshot().iter().map(|p| p.is_check_down()).collect() };
    bounded("health marks", async {
        // Bounded by WAIT; checks run every 20 ms.
        while marks() != down {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The marks hold over several more rounds.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(marks(), down);
    let _ = stop.send(());
    bounded("checker stop", run).await.unwrap();
}

#[tokio::test]
async fn health_checks_over_tls_mark_a_wrong_certificate_down() {
    let good = pki(&["backend.test"]);
    let bad = pki(&["backend.test"]);
    let (good_addr, _) = tls_backend(good.server.clone(), Serve::WebSocket).await;
    let (bad_addr, _) = tls_backend(bad.server.clone(), Serve::WebSocket).await;
    let set: UpstreamSet = [Upstream::new(good_addr), Upstream::new(bad_addr)]
        .into_iter()
        .collect();
    let tls = trusting_backend_test(&good);
    // Both accept TCP: only the TLS handshake tells them apart.
    checked(&set, TcpProbe, tls.clone(), &[false, true]).await;
    let ws = WebSocketProbe::new("/health").unwrap();
    checked(&set, ws, tls, &[false, true]).await;
}

// ---------------------------------------------------------------------------
// Unix sockets
// ---------------------------------------------------------------------------

#[cfg(unix)]
#[tokio::test]
async fn a_unix_socket_backend_echoes_through_the_proxy() {
    let dir = SocketDir::new();
    let path = dir.path("ws.sock");
    let seen = unix_backend(&path, Serve::WebSocket);
    let gw = Gateway::start(proxy_to(
        UpstreamAddr::unix(&path),
        None,
        HostMode::Upstream,
    ))
    .await;
    let mut ws = client_to(gw.addr, "/").await;
    echo(&mut ws, "over a unix socket".into()).await;
    // nginx sends `localhost` for `proxy_pass http://unix:/path:`.
    assert_eq!(seen.hosts.lock().unwrap().as_slice(), &["localhost"]);
    let tunnels = gw.proxy.tunnels();
    assert_eq!(tunnels.len(), 1);
    drop(ws);
    gw.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn plain_requests_reach_a_unix_socket_backend() {
    let dir = SocketDir::new();
    let path = dir.path("http.sock");
    let seen = unix_backend(&path, Serve::Http);
    let gw = Gateway::start(proxy_to(
        UpstreamAddr::unix(&path),
        None,
        HostMode::ClientAsSent,
    ))
    .await;
    let answer = post(gw.addr, "hello unix").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello unix"), "{answer}");
    // The client's Host as sent (the default mode) still wins.
    assert_eq!(seen.hosts.lock().unwrap().as_slice(), &["app.test"]);
    gw.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_missing_unix_socket_is_a_502() {
    let dir = SocketDir::new();
    let gw = Gateway::start(proxy_to(
        UpstreamAddr::unix(dir.path("nobody.sock")),
        None,
        HostMode::ClientAsSent,
    ))
    .await;
    assert_eq!(refused_upgrade(gw.addr, "/").await, 502);
    gw.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn health_checks_reach_unix_sockets_by_their_path() {
    let dir = SocketDir::new();
    let live = dir.path("live.sock");
    unix_backend(&live, Serve::WebSocket);
    let set: UpstreamSet = [
        Upstream::new(UpstreamAddr::unix(&live)),
        Upstream::new(UpstreamAddr::unix(dir.path("gone.sock"))),
    ]
    .into_iter()
    .collect();
    for probe in [
        Arc::new(TcpProbe) as Arc<dyn Probe>,
        Arc::new(WebSocketProbe::new("/").unwrap()),
    ] {
        let config = HealthCheck::builder()
            .probe(probe)
            .interval(Duration::from_millis(20))
            // Not the interval (HAProxy's default): an unoptimized TLS
            // handshake can take longer than 20 ms.
            .timeout(Duration::from_secs(2))
            .rise(1)
            .fall(1)
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(HealthChecker::new(set.clone(), config).run(async {
            let _ = stopped.await;
        }));
        let marks = || -> Vec<bool> { set.snapshot().iter().map(|p| p.is_check_down()).collect() };
        bounded("unix health marks", async {
            while marks() != [false, true] {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let _ = stop.send(());
        bounded("checker stop", run).await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// The gateway's flags
// ---------------------------------------------------------------------------

/// The gateway with `args`, killed on drop; its address once it listens.
struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
}

impl GatewayProcess {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(support::gateway_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the gateway never blocks on a full pipe.
            for _ in lines {}
        });
        let banner = rx.recv_timeout(WAIT).expect("a `listening on` line");
        let addr = banner
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {banner:?}"));
        Self { child, addr }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_gateway_reaches_tls_upstreams_with_its_ca_and_sni_flags() {
    let pki = pki(&["backend.test"]);
    let (addr, seen) = tls_backend(pki.server.clone(), Serve::WebSocket).await;
    let dir = std::env::temp_dir().join(format!("wsproxy-upstream-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let upstream = format!("tls://{addr}");
    let gw = GatewayProcess::start(&[
        "--upstream",
        &upstream,
        "--upstream-ca",
        ca.to_str().unwrap(),
        "--upstream-sni",
        "backend.test",
    ]);
    let mut ws = client_to(gw.addr, "/").await;
    echo(&mut ws, "gateway over tls".into()).await;
    assert_eq!(
        seen.tls.lock().unwrap()[0].0.as_deref(),
        Some("backend.test")
    );
    drop(ws);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[tokio::test]
async fn the_gateway_reaches_unix_upstreams() {
    let dir = SocketDir::new();
    let path = dir.path("gw.sock");
    unix_backend(&path, Serve::WebSocket);
    let upstream = format!("unix:{}", path.display());
    let gw = GatewayProcess::start(&["--upstream", &upstream]);
    let mut ws = client_to(gw.addr, "/").await;
    echo(&mut ws, "gateway over unix".into()).await;
}
