//! The gateway's configuration file, end to end: `--check-config`, and live
//! reloads (SIGHUP, `--watch-config`) of a gateway process carrying real
//! tokio-tungstenite tunnels to echo upstreams on loopback.

#[path = "support/config_gateway.rs"]
mod config_gateway;
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

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
