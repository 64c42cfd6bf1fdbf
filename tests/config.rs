//! The gateway's configuration file, end to end: `--check-config`, and live
//! reloads (SIGHUP, `--watch-config`) of a gateway process carrying real
//! tokio-tungstenite tunnels to echo upstreams on loopback.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use support::{bounded, closed_port, gateway_bin, within, ws_upstream, WsUpstreamOptions, WAIT};

type Ws = WebSocketStream<TcpStream>;

/// A gateway process started with `--config`; killed on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    _dir: TempDir,
    config: PathBuf,
}

impl Gateway {
    async fn start(config: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(gateway_bin())
            .arg("--config")
            .arg(&path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
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
        let mut gateway = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            lines,
            stderr,
            _dir: dir,
            config: path,
        };
        let banner = gateway
            .next_line()
            .await
            .unwrap_or_else(|| panic!("no banner; stderr: {}", gateway.stderr.lock().unwrap()));
        gateway.addr = banner_addr(&banner);
        gateway
    }

    async fn next_line(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Writes `config` and sends SIGHUP; waits until the gateway has
    /// logged one more reload (`reloaded`) or refusal (`refused`).
    async fn reload(&self, config: &str) {
        let before = self.outcomes();
        std::fs::write(&self.config, config).unwrap();
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        self.await_outcomes(before + 1).await;
    }

    fn outcomes(&self) -> usize {
        let err = self.stderr();
        err.matches("gateway: reloaded ").count()
            + err.matches(" refused, configuration unchanged").count()
    }

    async fn await_outcomes(&self, n: usize) {
        bounded("the reload's log line", async {
            while self.outcomes() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsproxy-config-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn banner_addr(line: &str) -> SocketAddr {
    line.split("://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

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

/// Opens a tunnel through the gateway; returns it with the name the
/// upstream announced.
async fn open(addr: SocketAddr, path: &str) -> (Ws, String) {
    let stream = bounded("tcp connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let url = format!("ws://{addr}{path}");
    let (mut ws, response) = bounded("handshake", tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake");
    assert_eq!(response.status(), 101);
    let name = match bounded("announce", ws.next()).await {
        Some(Ok(Message::Text(name))) => name.to_string(),
        other => panic!("no announce: {other:?}"),
    };
    (ws, name)
}

async fn echoes(ws: &mut Ws, text: &str) {
    bounded("send", ws.send(Message::text(text))).await.unwrap();
    match bounded("echo", ws.next()).await {
        Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), text),
        other => panic!("no echo of {text:?}: {other:?}"),
    }
}

async fn named_upstream(name: &'static str) -> SocketAddr {
    ws_upstream(WsUpstreamOptions {
        announce: Some(name),
        ..WsUpstreamOptions::default()
    })
    .await
    .addr
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
