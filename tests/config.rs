//! The gateway's configuration file, end to end: `--check-config`, and live
//! reloads (SIGHUP, `--watch-config`) of a gateway process carrying real
//! tokio-tungstenite tunnels to echo upstreams on loopback.

#[path = "support/config_gateway.rs"]
mod config_gateway;
mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use config_gateway::{banner_addr, echoes, named_upstream, open, Gateway, TempDir, Ws};
use support::{bounded, closed_port, gateway_bin, within, WAIT};

fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the gateway to completion: exit status, stdout, stderr.
fn run(args: &[&std::ffi::OsStr]) -> (ExitStatus, String, String) {
    let mut child = Command::new(gateway_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let status = wait_bounded(&mut child);
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway/gateway.toml")
}

#[test]
fn check_config_accepts_the_annotated_example() {
    let path = example_config();
    let (status, out, err) = run(&["--check-config".as_ref(), path.as_os_str()]);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(out.contains("test is successful"), "{out}");
}

#[test]
fn check_config_reports_every_error_with_its_line_and_exits_2() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.toml");
    std::fs::write(
        &path,
        r#"listen = "127.0.0.1:0"
upstream = ["127.0.0.1:9"]
balance = "fastest"
trusted-proxy = ["10.0.0.0/8"]
[timeouts]
read = "forever"
[[route]]
prefix = "/chat"
upstreams = ["127.0.0.1:10,weight=0"]
"#,
    )
    .unwrap();
    let (status, _, err) = run(&["--check-config".as_ref(), path.as_os_str()]);
    assert_eq!(status.code(), Some(2), "{err}");
    let shown = path.display().to_string();
    for (line, what) in [(3, "fastest"), (6, "forever"), (9, "weight")] {
        let found = err
            .lines()
            .any(|l| l.starts_with(&format!("gateway: {shown}:{line}:")) && l.contains(what));
        assert!(found, "no error on line {line} naming {what:?}:\n{err}");
    }
    assert!(err.contains("3 error(s)"), "{err}");

    // A missing certificate is named on its own line too.
    std::fs::write(
        &path,
        "upstream = [\"127.0.0.1:9\"]\n[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let (status, _, err) = run(&["--check-config".as_ref(), path.as_os_str()]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{shown}:3:")) && err.contains(&format!("{shown}:4:")),
        "{err}"
    );
}

/// What the gateway refuses at start, `--check-config` refuses too: DNS
/// TTL bounds the wrong way round, an access log it cannot open.
#[test]
fn check_config_refuses_what_start_would() {
    let dir = TempDir::new();
    let path = dir.0.join("start.toml");
    let log = dir.0.join("missing-dir/access.log");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = [\"dns:backend.test:80\"]\nresolve-min-ttl = \"10m\"\nresolve-max-ttl = \"1m\"\naccess-log = {log:?}\n"
        ),
    )
    .unwrap();
    let (status, out, err) = run(&["--check-config".as_ref(), path.as_os_str()]);
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(err.contains("cannot open"), "{err}");
    if cfg!(feature = "dns") {
        assert!(err.contains("resolve-min-ttl"), "{err}");
    } else {
        assert!(err.contains("--features dns"), "{err}");
    }
}

#[test]
fn config_refuses_other_flags_beside_it() {
    let path = example_config();
    let (status, _, err) = run(&[
        "--config".as_ref(),
        path.as_os_str(),
        "--read-timeout".as_ref(),
        "5s".as_ref(),
    ]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("--read-timeout cannot come with it"), "{err}");
}

fn config(listen: &str, upstreams: &[String], routes: &[(&str, &[String])]) -> String {
    let list = |ups: &[String]| {
        ups.iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "listen = {listen:?}\nupstream = [{}]\nmax-connections = 5000\n",
        list(upstreams)
    );
    for (prefix, ups) in routes {
        text.push_str(&format!(
            "[[route]]\nprefix = {prefix:?}\nupstreams = [{}]\n",
            list(ups)
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_old_configuration() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let good = config("127.0.0.1:0", &[a.to_string()], &[]);
    let gateway = Gateway::start(&good, &[]).await;
    let (mut ws, name) = open(gateway.addr, "/").await;
    assert_eq!(name, "a");

    // Upstream b, but on line 3 a balance that does not exist.
    let bad = format!("listen = \"127.0.0.1:0\"\nupstream = [\"{b}\"]\nbalance = \"fastest\"\n");
    gateway.reload(&bad).await;
    let err = gateway.stderr();
    assert!(err.contains("refused, configuration unchanged"), "{err}");
    assert!(err.contains("gateway.toml:3:"), "{err}");
    for _ in 0..5 {
        let (_, name) = open(gateway.addr, "/").await;
        assert_eq!(name, "a", "a refused reload changed the routing");
    }
    echoes(&mut ws, "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_upstream_drains() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let gateway = Gateway::start(&config("127.0.0.1:0", &[a.to_string()], &[]), &[]).await;
    let (mut on_a, name) = open(gateway.addr, "/").await;
    assert_eq!(name, "a");

    gateway
        .reload(&config("127.0.0.1:0", &[b.to_string()], &[]))
        .await;
    assert!(
        gateway.stderr().contains("1 groups kept"),
        "{}",
        gateway.stderr()
    );
    // The open tunnel runs on on the upstream it has; new ones go to b.
    echoes(&mut on_a, "draining, not dropped").await;
    for _ in 0..5 {
        let (_, name) = open(gateway.addr, "/").await;
        assert_eq!(name, "b");
    }
    echoes(&mut on_a, "still on a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_listener_is_rebound_and_its_connections_run_on() {
    let a = named_upstream("a").await;
    let mut gateway = Gateway::start(&config("127.0.0.1:0", &[a.to_string()], &[]), &[]).await;
    let old = gateway.addr;
    let (mut ws, _) = open(old, "/").await;

    let moved = closed_port().await;
    gateway
        .reload(&config(&moved.to_string(), &[a.to_string()], &[]))
        .await;
    let line = gateway.next_line().await.expect("a new banner");
    assert!(line.contains("moved from"), "{line}");
    assert_eq!(banner_addr(&line), moved);

    let (_, name) = open(moved, "/").await;
    assert_eq!(name, "a");
    echoes(&mut ws, "accepted by the old listener").await;
    // The old listener no longer accepts.
    let refused = bounded("connect to the old address", TcpStream::connect(old)).await;
    assert!(refused.is_err(), "the old listener still accepts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_when_the_file_changes() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let gateway = Gateway::start(
        &config("127.0.0.1:0", &[a.to_string()], &[]),
        &["--watch-config"],
    )
    .await;
    let before = gateway.outcomes();
    // A different size and content, so even a coarse mtime sees a change
    // once the next second has begun.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    std::fs::write(
        &gateway.config,
        config("127.0.0.1:0", &[b.to_string()], &[]),
    )
    .unwrap();
    gateway.await_outcomes(before + 1).await;
    assert!(
        gateway.stderr().contains("(file changed)"),
        "{}",
        gateway.stderr()
    );
    let (_, name) = open(gateway.addr, "/").await;
    assert_eq!(name, "b");
}

/// 1,000 open tunnels, new connections arriving all along, and 10 reloads
/// alternating two configurations (weights, an extra upstream, an extra
/// route): no tunnel dropped, no handshake failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_no_tunnel_and_fails_no_handshake() {
    const TUNNELS: usize = 1_000;
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let first = config("127.0.0.1:0", &[a.to_string(), b.to_string()], &[]);
    let second = config(
        "127.0.0.1:0",
        &[format!("{a},weight=3"), b.to_string(), c.to_string()],
        &[("/extra", &[c.to_string()])],
    );
    let gateway = Gateway::start(&first, &[]).await;
    let addr = gateway.addr;

    // 1,000 tunnels, 50 handshakes at a time.
    let mut tunnels: Vec<Ws> = Vec::with_capacity(TUNNELS);
    within(Duration::from_secs(120), "1,000 tunnels", async {
        for _ in 0..TUNNELS / 50 {
            let batch = (0..50).map(|_| open(addr, "/"));
            for (ws, _) in futures_util::future::join_all(batch).await {
                tunnels.push(ws);
            }
        }
    })
    .await;

    // New connections all along: each opens, echoes and closes.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut churn = Vec::new();
    for i in 0..4 {
        let (stop, opened) = (stop.clone(), opened.clone());
        churn.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = if n % 2 == 0 { "/" } else { "/extra/x" };
                let (mut ws, _) = open(addr, path).await;
                echoes(&mut ws, &format!("churn {i} {n}")).await;
                let _ = bounded("close", ws.close(None)).await;
                opened.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for round in 0..10 {
        let next = if round % 2 == 0 { &second } else { &first };
        gateway.reload(next).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in churn {
        // A failed handshake or echo panics the task: it shows here.
        bounded("churn", task)
            .await
            .expect("no churn connection failed");
    }
    let err = gateway.stderr();
    assert_eq!(err.matches("gateway: reloaded ").count(), 10, "{err}");
    assert!(!err.contains("refused"), "{err}");
    let opened = opened.load(Ordering::Relaxed);
    eprintln!("{opened} new connections handshaked and echoed during 10 reloads");
    assert!(opened >= 10, "too few new connections");

    within(Duration::from_secs(120), "1,000 echoes", async {
        for (i, ws) in tunnels.iter_mut().enumerate() {
            echoes(ws, &format!("tunnel {i}")).await;
        }
    })
    .await;
}

/// A WebSocket upstream that announces `name` and echoes, but answers 503
/// to every handshake while `failing` is set: it fails `ws:` health checks
/// (and the clients sent to it) while accepting TCP connections all along.
/// `checks` counts the health checks it received.
struct Checked {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    checks: Arc<AtomicUsize>,
}

impl Checked {
    async fn start(name: &'static str) -> Self {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
        use tokio_tungstenite::tungstenite::Message;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let failing = Arc::new(AtomicBool::new(true));
        let checks = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (failing.clone(), checks.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (failing, checks) = (flag.clone(), count.clone());
                tokio::spawn(async move {
                    // tungstenite's callback type, not ours.
                    #[allow(clippy::result_large_err)]
                    let answer = |request: &Request, response: Response| {
                        if request.uri().path() == "/healthz" {
                            checks.fetch_add(1, Ordering::Relaxed);
                        }
                        if !failing.load(Ordering::Relaxed) {
                            return Ok(response);
                        }
                        let mut refused = ErrorResponse::new(Some("failing".into()));
                        *refused.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        Err(refused)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, answer).await
                    else {
                        return;
                    };
                    if ws.send(Message::text(name)).await.is_err() {
                        return;
                    }
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            let _ = ws.flush().await;
                            return;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            failing,
            checks,
        }
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::Relaxed)
    }
}

/// The upstream a new tunnel to `/` reaches, or `None` when its handshake
/// is refused.
async fn reached(addr: SocketAddr) -> Option<String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let stream = bounded("tcp connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let url = format!("ws://{addr}/");
    let (mut ws, _) = bounded("handshake", tokio_tungstenite::client_async(url, stream))
        .await
        .ok()?;
    match bounded("announce", ws.next()).await {
        Some(Ok(Message::Text(name))) => Some(name.to_string()),
        other => panic!("no announce: {other:?}"),
    }
}

/// Waits until `n` new tunnels in a row reach `name`.
async fn only(addr: SocketAddr, name: &str, n: usize) {
    bounded(&format!("{n} tunnels in a row to {name}"), async {
        let mut in_a_row = 0;
        while in_a_row < n {
            in_a_row = match reached(addr).await {
                Some(got) if got == name => in_a_row + 1,
                _ => 0,
            };
        }
    })
    .await;
}

/// Waits until a new tunnel reaches `name`.
async fn back(addr: SocketAddr, name: &str) {
    bounded(&format!("{name} back after passing its checks"), async {
        while reached(addr).await.as_deref() != Some(name) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Waits until `upstream` has been checked `n` times.
async fn checked_times(upstream: &Checked, n: usize) {
    bounded(&format!("{n} checks"), async {
        while upstream.checks() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// `a` (passive accounting off, so that only its checks take it out) and
/// `b` by default, `other` on `/other`, all checked with WebSocket
/// handshakes every `interval` ms; `connect` is a setting the checks do not
/// read.
fn checked(
    a: SocketAddr,
    b: SocketAddr,
    other: Option<SocketAddr>,
    connect: u32,
    interval: u32,
) -> String {
    let route = other.map_or(String::new(), |c| {
        format!("[[route]]\nprefix = \"/other\"\nupstreams = [\"{c}\"]\n")
    });
    format!(
        r#"listen = "127.0.0.1:0"
upstream = ["{a},max_fails=0", "{b}"]
{route}[timeouts]
connect = "{connect}s"
[health]
check = "ws:/healthz"
interval = "{interval}ms"
rise = 2
fall = 2
"#
    )
}

/// A reload that leaves a group's health checks alone keeps them running:
/// no upstream is checked again at once (a new checker would check every
/// one as it starts), the upstream they took out stays out, and comes back
/// once it passes; a group the reload removes is no longer checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_reload_keeps_the_health_checks_running() {
    let a = Checked::start("a").await;
    let b = named_upstream("b").await;
    let other = Checked::start("other").await;
    let gateway = Gateway::start(&checked(a.addr, b, Some(other.addr), 5, 1000), &[]).await;
    checked_times(&a, 1).await;
    checked_times(&other, 1).await;

    gateway.reload(&checked(a.addr, b, None, 6, 1000)).await;
    let reloaded = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Unless a second has passed since the first check (a slow machine),
    // a restarted checker would have checked a again by now.
    if reloaded.elapsed() < Duration::from_millis(700) {
        assert_eq!(a.checks(), 1, "the reload restarted the checks");
    }
    // a fails its second check too (fall 2): taken out, every tunnel
    // reaches b.
    only(gateway.addr, "b", 6).await;
    let other_checks = other.checks();
    a.failing.store(false, Ordering::Relaxed);
    back(gateway.addr, "a").await;
    assert_eq!(
        other.checks(),
        other_checks,
        "the removed group is still checked"
    );
}

/// A reload that changes the health checks starts new ones, which take
/// over the old ones' marks: the upstream they took out stays out (a
/// fresh count would take it for up, and never bring it back once it
/// passes), and comes back once it passes the new checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_health_checks_take_over_the_marks_of_the_old_ones() {
    let a = Checked::start("a").await;
    let b = named_upstream("b").await;
    let gateway = Gateway::start(&checked(a.addr, b, None, 5, 500), &[]).await;
    only(gateway.addr, "b", 6).await;
    let before = a.checks();

    gateway.reload(&checked(a.addr, b, None, 5, 400)).await;
    assert!(
        gateway.stderr().contains("new health checks"),
        "{}",
        gateway.stderr()
    );
    for _ in 0..3 {
        assert_eq!(
            reached(gateway.addr).await.as_deref(),
            Some("b"),
            "new checks put an upstream the old ones took out back"
        );
    }
    // The new checker checks at once, and a still fails; it passes from
    // here on.
    checked_times(&a, before + 1).await;
    a.failing.store(false, Ordering::Relaxed);
    back(gateway.addr, "a").await;
}

/// A reload that turns health checks off lifts their marks, as checks
/// that stop do: the upstream they took out serves again (no checker is
/// left to bring it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_health_checks_off_brings_back_what_they_took_out() {
    let a = Checked::start("a").await;
    let b = named_upstream("b").await;
    let gateway = Gateway::start(&checked(a.addr, b, None, 5, 500), &[]).await;
    only(gateway.addr, "b", 6).await;

    let unchecked = format!(
        "listen = \"127.0.0.1:0\"\nupstream = [\"{},max_fails=0\", \"{b}\"]\n[timeouts]\nconnect = \"5s\"\n",
        a.addr
    );
    gateway.reload(&unchecked).await;
    assert!(
        gateway.stderr().contains("gateway: reloaded "),
        "{}",
        gateway.stderr()
    );
    // Healthy only now, with no checker left to see it.
    a.failing.store(false, Ordering::Relaxed);
    back(gateway.addr, "a").await;
}

/// The certificate the gateway presents to a new TLS client.
async fn served_certificate(
    addr: SocketAddr,
    trusted: &[rcgen::CertifiedKey<rcgen::KeyPair>],
) -> Vec<u8> {
    let roots: Vec<_> = trusted.iter().map(|c| c.cert.der().clone()).collect();
    let tls = support::tls_to(addr, &roots, &[]).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// nginx's reload reads the certificate again: a renewed one (certbot
/// overwrote the files) is served after SIGHUP without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_a_renewed_certificate() {
    let a = named_upstream("a").await;
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let issue = || {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        cert
    };
    let old = issue();
    let text = format!(
        "{}[tls]\ncert = {:?}\nkey = {:?}\n",
        config("127.0.0.1:0", &[a.to_string()], &[]),
        cert_path,
        key_path
    );
    let gateway = Gateway::start(&text, &[]).await;
    let both = [old, issue()];
    assert_eq!(
        served_certificate(gateway.addr, &both).await,
        both[0].cert.der().to_vec()
    );
    gateway.reload(&text).await;
    assert!(
        gateway.stderr().contains("gateway: reloaded"),
        "{}",
        gateway.stderr()
    );
    assert_eq!(
        served_certificate(gateway.addr, &both).await,
        both[1].cert.der().to_vec()
    );
    // A key that does not match refuses the reload and keeps serving.
    let stray = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&key_path, stray.signing_key.serialize_pem()).unwrap();
    gateway.reload(&text).await;
    assert!(
        gateway
            .stderr()
            .contains("refused, configuration unchanged"),
        "{}",
        gateway.stderr()
    );
    assert_eq!(
        served_certificate(gateway.addr, &both).await,
        both[1].cert.der().to_vec()
    );
}
