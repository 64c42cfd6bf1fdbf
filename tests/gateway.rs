//! The gateway example as a user runs it: cargo's built binary, real
//! loopback sockets, signals and exit codes. Then the two `Server` hooks it
//! stands on (`serve_with`, `on_connection_end`), in-process.
//!
//! # Where the binary comes from
//!
//! Integration tests get `CARGO_BIN_EXE_<name>` only for `[[bin]]` targets,
//! not for examples. But a plain `cargo test` builds every example (to
//! check that they compile) before it runs any test, into
//! `target/<profile>/examples/`, next to the `deps/` directory holding this
//! test's own executable. So the test finds `../examples/gateway` from
//! `current_exe()`. `cargo test --test gateway` alone does not build
//! examples: then the binary may be missing or older than its sources, and
//! the test stops with a message saying to run `cargo test` (or
//! `cargo build --example gateway`) instead of testing a stale gateway.
//! (Setting `test = true` on the example would break this: `cargo test`
//! then builds it only as a test harness.)

mod support;

// The gateway's pure parts, compiled into this test crate so that their
// unit tests run under `cargo test`: an example with `test = true` would be
// built only as a test harness, and then `cargo test` no longer builds the
// binary the tests below start.
#[allow(dead_code)]
#[path = "../examples/gateway/access_log.rs"]
mod access_log;
#[allow(dead_code)]
#[path = "../examples/gateway/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "../examples/gateway/upstream_spec.rs"]
mod upstream_spec;

// The demo page in headless Chromium; a module of this test, not a test
// of its own, so that it starts the gateway the way the tests here do.
#[path = "gateway/browser.rs"]
mod browser;

// The gateway's HTTP/2 front door (feature `h2`).
#[cfg(feature = "h2")]
#[path = "gateway/h2.rs"]
mod h2;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use support::{bounded, child_output, gateway_bin, ws_upstream, WsUpstreamOptions, WAIT};

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

/// A running gateway; killed on drop, so a failing test leaves no process.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    /// The `listening on` line.
    banner: String,
    /// Every stdout line after it, as they come.
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Gateway {
    /// Starts the gateway on an ephemeral port and waits for its line.
    async fn start(args: &[&str]) -> Self {
        let mut child = Command::new(gateway_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let (lines, stderr) = child_output(&mut child);
        let mut gateway = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            banner: String::new(),
            lines,
            stderr,
        };
        let banner = gateway.next_line().await.unwrap_or_else(|| {
            panic!(
                "no `listening on` line; stderr: {}",
                gateway.stderr.lock().unwrap()
            )
        });
        let url = banner
            .split("listening on ")
            .nth(1)
            .unwrap_or_else(|| panic!("first line is not the banner: {banner:?}"));
        let authority = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in banner");
        gateway.addr = authority.parse().expect("socket address in banner");
        gateway.banner = banner;
        gateway
    }

    /// The next stdout line; `None` at EOF or after [`WAIT`].
    async fn next_line(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        wait_bounded(&mut self.child)
    }

    /// The remaining stdout lines, once the process has exited.
    async fn rest_of_stdout(&mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Some(line) = self.next_line().await {
            rest.push(line);
        }
        rest
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the gateway with `args` to completion; (status, stderr).
fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(gateway_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let status = wait_bounded(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status, stderr)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(url: &str) -> Ws {
    let (ws, response) = bounded("connect", tokio_tungstenite::connect_async(url))
        .await
        .expect("websocket connect");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text or binary message.
async fn next_data<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = bounded("a message", ws.next())
            .await
            .expect("stream ended")
            .expect("websocket error");
        if msg.is_text() || msg.is_binary() {
            return msg;
        }
    }
}

// ---------------------------------------------------------------------------
// The gateway binary
// ---------------------------------------------------------------------------

#[tokio::test]
async fn demo_backend_echoes_and_exactly_one_listening_line_is_printed() {
    let mut gw = Gateway::start(&[]).await;
    assert!(
        gw.banner
            .contains(&format!("listening on ws://{}", gw.addr)),
        "{}",
        gw.banner
    );

    let mut ws = connect(&gw.url("/")).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    let blob: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(blob));
    ws.close(None).await.unwrap();
    bounded("the close handshake", async {
        while ws.next().await.is_some() {}
    })
    .await;
    drop(ws);

    gw.signal("TERM");
    assert_eq!(gw.wait_exit().code(), Some(0));
    let rest = gw.rest_of_stdout().await;
    assert!(
        !rest.iter().any(|l| l.contains("listening on")),
        "more than one listening line: {rest:?}"
    );
}

/// The next chat event of type `kind`, skipping others (bounded: at most
/// `skip` of them).
async fn next_event(ws: &mut Ws, kind: &str, skip: usize) -> serde_json::Value {
    let mut skipped = Vec::new();
    for _ in 0..=skip {
        let Message::Text(text) = next_data(ws).await else {
            panic!("the chat room sends text");
        };
        let event: serde_json::Value = serde_json::from_str(&text).expect("a JSON event");
        if event["type"] == kind {
            return event;
        }
        skipped.push(event);
    }
    panic!("no {kind} event; heard {skipped:?}");
}

/// Reads presence events until one lists exactly `names` (bounded: a
/// member hears at most one event per join and leave before that).
async fn presence_until(ws: &mut Ws, names: &[&serde_json::Value]) {
    let mut heard = Vec::new();
    for _ in 0..3 {
        let event = next_event(ws, "presence", 0).await;
        if event["members"]
            .as_array()
            .is_some_and(|m| m.iter().eq(names.iter().copied()))
        {
            return;
        }
        heard.push(event);
    }
    panic!("presence never listed {names:?}: {heard:?}");
}

#[tokio::test]
async fn chat_room_names_members_lists_who_is_connected_and_broadcasts() {
    let gw = Gateway::start(&[]).await;
    let mut alice = connect(&gw.url("/chat")).await;
    let alice_name = next_event(&mut alice, "welcome", 0).await["you"].clone();
    // Alice's own join is her first presence event.
    presence_until(&mut alice, &[&alice_name]).await;
    let mut bob = connect(&gw.url("/chat")).await;
    let bob_name = next_event(&mut bob, "welcome", 0).await["you"].clone();
    assert!(
        alice_name.as_str().is_some_and(|n| n.starts_with("guest-")),
        "{alice_name}"
    );
    assert_ne!(alice_name, bob_name);
    // Members are listed in join order.
    presence_until(&mut bob, &[&alice_name, &bob_name]).await;
    presence_until(&mut alice, &[&alice_name, &bob_name]).await;

    let said = |from: &serde_json::Value, text: &str| serde_json::json!({ "type": "message", "from": from, "text": text });
    alice.send(Message::text("hi bob")).await.unwrap();
    assert_eq!(
        next_event(&mut bob, "message", 0).await,
        said(&alice_name, "hi bob")
    );
    bob.send(Message::text("hi alice")).await.unwrap();
    // Everyone hears everything, the sender included, in order.
    assert_eq!(
        next_event(&mut alice, "message", 0).await,
        said(&alice_name, "hi bob")
    );
    assert_eq!(
        next_event(&mut alice, "message", 0).await,
        said(&bob_name, "hi alice")
    );
    assert_eq!(
        next_event(&mut bob, "message", 0).await,
        said(&bob_name, "hi alice")
    );
    // Binary frames have no place on the page: nobody hears them.
    bob.send(Message::binary(vec![1, 2, 3])).await.unwrap();

    bob.close(None).await.unwrap();
    presence_until(&mut alice, &[&alice_name]).await;
}

/// One plain HTTP/1.1 exchange through the gateway: (status line, head, body).
async fn http_get(addr: SocketAddr, method: &str, path: &str) -> (String, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    bounded("the answer", s.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8(answer).expect("a text answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete head");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// nginx `keepalive_timeout`: an idle keep-alive client connection is
/// closed after it (1 s here, against the default 75 s).
#[tokio::test]
async fn keepalive_timeout_closes_an_idle_client_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&["--keepalive-timeout", "1s"]).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("the connection was kept past its keepalive timeout")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn demo_backend_answers_a_plain_get_with_the_chat_page() {
    let gw = Gateway::start(&[]).await;
    assert!(
        gw.banner
            .contains(&format!("open http://{}/ in a browser", gw.addr)),
        "{}",
        gw.banner
    );
    let (status, head, page) = http_get(gw.addr, "GET", "/").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(page.starts_with("<!doctype html>"), "{page}");
    // Self-contained: the room is reached through the gateway that served
    // the page, and nothing is loaded from elsewhere.
    assert!(page.contains(r#"new URL("chat", location.href)"#), "{page}");
    for external in ["http://", "https://", "src=", "@import"] {
        assert!(!page.contains(external), "the page loads {external}");
    }

    let (status, _, body) = http_get(gw.addr, "HEAD", "/").await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    let (status, _, _) = http_get(gw.addr, "GET", "/chat").await;
    assert_eq!(status, "HTTP/1.1 426 Upgrade Required");
    let (status, _, _) = http_get(gw.addr, "GET", "/nowhere").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, head, _) = http_get(gw.addr, "DELETE", "/").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(head.contains("allow: get, head"), "{head}");

    // The page did not take the echo's place.
    let mut ws = connect(&gw.url("/")).await;
    ws.send(Message::text("still an echo")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still an echo"));
}

#[test]
fn bad_flags_exit_2_with_a_message_naming_the_problem() {
    let (status, stderr) = run_to_exit(&["--connect-timeout", "4x"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--connect-timeout") && stderr.contains("not a duration"),
        "{stderr}"
    );

    let (status, stderr) = run_to_exit(&["--balance", "random"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("random"), "{stderr}");

    // Checked after parsing, still a usage error.
    let (status, stderr) = run_to_exit(&["--hash-key", "cookie:sid"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--hash-key needs"), "{stderr}");

    let (status, stderr) = run_to_exit(&[
        "--upstream",
        "127.0.0.1:1",
        "--trusted-proxy",
        "10.0.0.0/33",
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("10.0.0.0/33"), "{stderr}");

    let (status, stderr) = run_to_exit(&["--health-check", "http"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a health check"), "{stderr}");

    let (status, stderr) = run_to_exit(&["--client-max-body-size", "1mb"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a size"), "{stderr}");
}

/// nginx warns when `worker_connections` exceed the open file limit; so does
/// the gateway, naming what would fit, and starts anyway.
#[tokio::test]
async fn max_connections_over_the_open_file_limit_is_warned_about() {
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
        .arg(gateway_bin())
        .args(["--listen", "127.0.0.1:0", "--max-connections", "10000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let (mut lines, stderr) = child_output(&mut child);
    let banner = tokio::time::timeout(WAIT, lines.recv())
        .await
        .ok()
        .flatten();
    assert!(
        banner.is_some_and(|line| line.contains("listening on")),
        "{}",
        stderr.lock().unwrap()
    );
    let expected = "over the open file limit of 1024";
    bounded("the warning", async {
        while !stderr.lock().unwrap().contains(expected) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(stderr
        .lock()
        .unwrap()
        .contains("lower --max-connections to 462"));
    let _ = child.kill();
    let _ = child.wait();
}

/// Without the `metrics` feature the admin listener is not built in:
/// asking for it is a usage error, not a silent no-op. (With the feature,
/// tests/metrics.rs scrapes it.)
#[cfg(not(feature = "metrics"))]
#[test]
fn metrics_flag_without_the_feature_exits_2() {
    let (status, stderr) = run_to_exit(&["--metrics", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--features metrics"), "{stderr}");
}

#[test]
fn proxy_protocol_flags_that_cannot_work_exit_2() {
    // Without the feature the flags exist but say what is missing.
    #[cfg(not(feature = "proxy-protocol"))]
    for flag in ["--proxy-protocol", "--send-proxy-v2"] {
        let (status, stderr) = run_to_exit(&["--upstream", "127.0.0.1:1", flag]);
        assert_eq!(status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains("--features proxy-protocol"), "{stderr}");
    }
    // With it, a listener that would trust every peer, or a bad block.
    #[cfg(feature = "proxy-protocol")]
    {
        let (status, stderr) = run_to_exit(&["--upstream", "127.0.0.1:1", "--proxy-protocol"]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--proxy-protocol-from"), "{stderr}");
        let (status, stderr) = run_to_exit(&[
            "--upstream",
            "127.0.0.1:1",
            "--proxy-protocol",
            "--proxy-protocol-from",
            "10.0.0.0/33",
        ]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("10.0.0.0/33"), "{stderr}");
    }
}

#[test]
fn tunnel_lifecycle_flags_that_cannot_work_exit_2() {
    for (bad, says) in [
        ("30m", "not IDLE:INTVL:CNT"),
        ("500ms::", "whole seconds"),
        ("::0", "number of probes"),
        ("x::10", "not a duration"),
    ] {
        let (status, stderr) = run_to_exit(&["--so-keepalive", bad]);
        assert_eq!(status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--so-keepalive") && stderr.contains(says),
            "{bad}: {stderr}"
        );
    }

    // HAProxy's on-marked-down acts on what checks mark down: none without them.
    let (status, stderr) = run_to_exit(&["--on-marked-down", "close"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--health-check"), "{stderr}");

    let (status, stderr) = run_to_exit(&["--ping-timeout", "5s"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ping-interval"), "{stderr}");

    let (status, stderr) = run_to_exit(&["--ping-interval", "0s"]);
    assert_eq!(status.code(), Some(2), "{stderr}");

    for factor in ["0.5", "NaN", "x"] {
        let (status, stderr) =
            run_to_exit(&["--rebalance-rate", "10", "--rebalance-factor", factor]);
        assert_eq!(status.code(), Some(2), "{factor}: {stderr}");
        assert!(stderr.contains("--rebalance-factor"), "{stderr}");
    }
    let (status, stderr) = run_to_exit(&["--rebalance-rate", "0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");

    // The last closes of the window need their linger before the deadline.
    let (status, stderr) = run_to_exit(&["--drain-window", "10s", "--drain-timeout", "12s"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does not fit in --drain-timeout"),
        "{stderr}"
    );
}

#[tokio::test]
async fn route_flag_replaces_the_prefix_as_proxy_pass_with_a_uri_does() {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let route = format!("/live/>/={}", up.addr);
    let gateway = Gateway::start(&["--route", &route]).await;
    let mut ws = connect(&format!("ws://{}/live/feed?x=1", gateway.addr)).await;
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    let seen = up.seen.lock().unwrap()[0].uri().to_string();
    assert_eq!(seen, "/feed?x=1");
}

/// nginx `proxy_set_header NAME ""` removes the field; `add_header …
/// always` decorates the gateway's own error answers too.
#[tokio::test]
async fn an_empty_set_header_removes_and_add_header_reaches_errors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, seen) = support::raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    let (arg, dead) = (
        upstream.to_string(),
        support::closed_port().await.to_string(),
    );
    let route = format!("/dead/={dead}");
    let gateway = Gateway::start(&[
        "--upstream",
        &arg,
        "--route",
        &route,
        "--set-header",
        "Accept-Encoding:",
        "--add-header",
        "Access-Control-Allow-Origin:*",
    ])
    .await;
    let exchange = |request: &'static [u8]| async move {
        let mut s = TcpStream::connect(gateway.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let _ = bounded("the answer", s.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).to_ascii_lowercase()
    };
    let ok = exchange(
        b"GET / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("http/1.1 200 "), "{ok}");
    assert!(ok.contains("access-control-allow-origin: *\r\n"), "{ok}");
    support::await_records(&seen, 1).await;
    let sent = String::from_utf8_lossy(&seen.lock().unwrap()[0]).to_ascii_lowercase();
    assert!(!sent.contains("accept-encoding"), "{sent}");
    let failed = exchange(b"GET /dead/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(failed.starts_with("http/1.1 502 "), "{failed}");
    assert!(
        failed.contains("access-control-allow-origin: *\r\n"),
        "{failed}"
    );
}

#[tokio::test]
async fn client_max_body_size_refuses_larger_bodies_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, seen) = support::raw_upstream_after(
        b"abcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    let arg = upstream.to_string();
    let gateway = Gateway::start(&["--upstream", &arg, "--client-max-body-size", "4"]).await;
    let exchange = |request: &'static [u8]| async move {
        let mut s = TcpStream::connect(gateway.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let _ = bounded("the answer", s.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    let over = exchange(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde").await;
    assert!(over.starts_with("HTTP/1.1 413 "), "{over}");
    let chunked = exchange(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 413 "), "{chunked}");
    let fits = exchange(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
    )
    .await;
    assert!(fits.starts_with("HTTP/1.1 200 "), "{fits}");
    support::await_records(&seen, 2).await;
}

#[cfg(feature = "proxy-protocol")]
#[tokio::test]
async fn proxy_protocol_flags_carry_the_balancer_s_client_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wsproxy::handshake::Status;
    let (upstream, seen) =
        support::raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
    let arg = upstream.to_string();
    let gateway = Gateway::start(&[
        "--upstream",
        &arg,
        "--proxy-protocol",
        "--proxy-protocol-from",
        "127.0.0.0/8",
        "--send-proxy-v2",
    ])
    .await;
    let mut s = TcpStream::connect(gateway.addr).await.unwrap();
    s.write_all(b"PROXY TCP4 198.51.100.7 10.0.0.1 50123 8443\r\nGET / HTTP/1.1\r\nHost: chat.example:8443\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = bounded("the answer", s.read_to_end(&mut got)).await;
    assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
    support::await_records(&seen, 1).await;
    let record = seen.lock().unwrap()[0].clone();
    let Ok(Status::Complete(header)) = wsproxy::proxy_protocol::parse(&record) else {
        panic!("no v2 header upstream: {record:?}");
    };
    assert_eq!(header.source(), Some("198.51.100.7:50123".parse().unwrap()));
    let head = String::from_utf8_lossy(&record[header.len()..]).to_lowercase();
    assert!(head.contains("x-real-ip: 198.51.100.7\r\n"), "{head}");
    assert!(head.contains("host: chat.example:8443\r\n"), "{head}");
}

#[tokio::test]
async fn health_checks_take_an_upstream_that_refuses_upgrades_out() {
    // One real WebSocket upstream, and one that answers every request with a
    // plain 200: without active checks round-robin sends every other client
    // there, and the 200 is relayed instead of a tunnel.
    let good = ws_upstream(WsUpstreamOptions::default()).await;
    let (bad, _) = support::raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let good_arg = good.addr.to_string();
    let bad_arg = bad.to_string();
    let gateway = Gateway::start(&[
        "--upstream",
        &good_arg,
        "--upstream",
        &bad_arg,
        "--health-check",
        "ws:/",
        "--health-interval",
        "100ms",
        "--health-fall",
        "1",
    ])
    .await;
    let url = format!("ws://{}/", gateway.addr);
    // Once the check has run, every client gets a tunnel: wait for eight in
    // a row (round-robin over both would fail every second one).
    let upgraded_in_a_row = bounded("eight upgrades in a row", async {
        let mut in_a_row = 0;
        while in_a_row < 8 {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok(_) => in_a_row += 1,
                Err(_) => {
                    in_a_row = 0;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        in_a_row
    })
    .await;
    assert_eq!(upgraded_in_a_row, 8);
}

#[test]
fn help_names_the_nginx_directive_of_each_flag() {
    let out = Command::new(gateway_bin())
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for directive in [
        "proxy_connect_timeout",
        "proxy_read_timeout",
        "proxy_send_timeout",
        "client_header_timeout",
        "set_real_ip_from",
        "proxy_set_header",
        "add_header",
        "proxy_redirect",
        "worker_processes",
        "worker_connections",
        "access_log",
        "ssl_certificate",
        "least_conn",
        "ip_hash",
        "close-spread-time",
        "so_keepalive",
        "on-marked-down shutdown-sessions",
        "lingering_timeout",
        "no nginx directive",
        "hash-balance-factor",
        "moves established connections",
        "client_max_body_size",
        "http2 off",
    ] {
        assert!(help.contains(directive), "--help lacks {directive}");
    }
}

#[tokio::test]
async fn sigterm_drains_cuts_the_open_tunnel_at_the_deadline_and_exits_0() {
    let mut gw = Gateway::start(&["--drain-timeout", "200ms"]).await;
    let mut ws = connect(&gw.url("/")).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("before"));

    gw.signal("TERM");
    // The idle tunnel is cut at the drain deadline: the client sees its end.
    let ended = bounded("the tunnel to end", async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    });
    ended.await;
    assert_eq!(gw.wait_exit().code(), Some(0));
    let stderr = gw.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains("1 open at shutdown") && stderr.contains("1 cut"),
        "{stderr}"
    );
}

/// nginx's HUP and USR1 do not end the process: without `--config` HUP is
/// ignored with a note, and USR1 reopens the access log after logrotate
/// moved it away. Both used to kill the gateway and cut every tunnel.
#[tokio::test]
async fn sighup_and_sigusr1_keep_the_gateway_and_usr1_reopens_the_access_log() {
    let dir = std::env::temp_dir().join(format!("wsproxy-gateway-usr1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let up = upstream.addr.to_string();
    let gw = Gateway::start(&["--upstream", &up, "--access-log", log.to_str().unwrap()]).await;
    let mut ws = connect(&gw.url("/")).await;
    gw.signal("HUP");
    gw.signal("USR1");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    // Rotated: the file moves, USR1, and the next line goes to a new one.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    bounded("the reopen", async {
        while !log.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(ws);
    bounded("a line in the new file", async {
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stderr = gw.stderr.lock().unwrap().clone();
    assert!(stderr.contains("SIGHUP ignored"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn access_log_has_one_line_per_connection() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let up = upstream.addr.to_string();
    // TCP keepalive on does not change what flows (nginx `so_keepalive`).
    let mut gw = Gateway::start(&[
        "--upstream",
        &up,
        "--access-log",
        "--so-keepalive",
        "30m::10",
    ])
    .await;
    let mut ws = connect(&gw.url("/")).await;
    ws.send(Message::text("logged")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("logged"));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    // Bounded: the close reply, then the end of the stream.
    bounded("the close handshake", async {
        while ws.next().await.is_some() {}
    })
    .await;
    drop(ws);
    let tunnel_line = gw
        .next_line()
        .await
        .expect("an access log line for the tunnel");

    let refused = TcpStream::connect(gw.addr).await.unwrap();
    let mut refused = refused;
    tokio::io::AsyncWriteExt::write_all(&mut refused, b"BREW / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    bounded(
        "the 400",
        tokio::io::AsyncReadExt::read_to_end(&mut refused, &mut answer),
    )
    .await
    .unwrap();
    let rejected_line = gw
        .next_line()
        .await
        .expect("an access log line for the rejection");

    for field in [
        "client=127.0.0.1:",
        "route=default",
        &format!("upstream={up}"),
        "status=101",
        "outcome=tunneled",
        "requests=1",
        "end=",
    ] {
        assert!(
            tunnel_line.contains(field),
            "{field} missing: {tunnel_line}"
        );
    }
    let from_client: u64 = field(&tunnel_line, "from_client").parse().unwrap();
    let from_upstream: u64 = field(&tunnel_line, "from_upstream").parse().unwrap();
    assert!(
        from_client > "logged".len() as u64 && from_upstream > "logged".len() as u64,
        "{tunnel_line}"
    );
    assert!(
        ["client-closed", "upstream-closed"].contains(&field(&tunnel_line, "end")),
        "{tunnel_line}"
    );
    // The client closed with 1000 and the echo upstream answered with it.
    assert_eq!(
        field(&tunnel_line, "close"),
        "client:1000,upstream:1000",
        "{tunnel_line}"
    );

    assert!(
        rejected_line.contains("upstream=- status=400 outcome=rejected"),
        "{rejected_line}"
    );
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

#[tokio::test]
async fn wss_round_trip_with_a_generated_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("wsproxy-gateway-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let gw = Gateway::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ])
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(gw.banner.contains("listening on wss://"), "{}", gw.banner);

    let tls = support::tls_to(gw.addr, &[cert.cert.der().clone()], &[]).await;
    let url = format!("wss://localhost:{}/", gw.addr.port());
    let (mut ws, response) = bounded("wss upgrade", tokio_tungstenite::client_async(url, tls))
        .await
        .expect("websocket over tls");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("secret")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("secret"));
}

// ---------------------------------------------------------------------------
// Tunnel lifecycle: drain window, pings, on-marked-down
// ---------------------------------------------------------------------------

/// The code of a Close message; 1005 for a Close without one.
fn close_code(msg: &Message) -> Option<u16> {
    match msg {
        Message::Close(Some(frame)) => Some(u16::from(frame.code)),
        Message::Close(None) => Some(1005),
        _ => None,
    }
}

/// Reads on until the gateway ends the connection, so that tungstenite
/// sends its queued Close reply; bounded.
async fn read_to_close_end(ws: &mut Ws) {
    bounded("the end of the connection", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What one client of the drain test saw.
#[derive(Debug)]
struct Drained {
    closed_at: Instant,
    code: Option<u16>,
    sent: u64,
    echoed: u64,
    echoed_after_signal: bool,
}

/// Sends numbered messages one at a time, each after the echo of the one
/// before (and a short pause, reading all the while), until the gateway's
/// Close arrives. Echoes must come back in order, none missing.
async fn chat_until_closed(
    mut ws: Ws,
    id: usize,
    first_echo: Arc<tokio::sync::Barrier>,
    signalled: Arc<std::sync::atomic::AtomicBool>,
) -> Drained {
    use std::sync::atomic::Ordering;
    let (mut sent, mut echoed, mut echoed_after_signal) = (0u64, 0u64, false);
    let mut in_flight: Option<(String, bool)> = None;
    let (closed_at, code) = loop {
        if in_flight.is_none() {
            let text = format!("{id}-{sent}");
            let after_signal = signalled.load(Ordering::SeqCst);
            ws.send(Message::text(text.clone()))
                .await
                .expect("send while the tunnel is open");
            sent += 1;
            in_flight = Some((text, after_signal));
        }
        let msg = bounded("an echo or the Close", ws.next())
            .await
            .expect("the tunnel ended without a Close")
            .expect("websocket error before the Close");
        match msg {
            Message::Text(got) => {
                let (text, after_signal) = in_flight.take().expect("an echo nobody asked for");
                assert_eq!(got.as_str(), text, "echoes out of order");
                echoed += 1;
                echoed_after_signal |= after_signal;
                if echoed == 1 {
                    first_echo.wait().await;
                }
                // Pause, still reading: a Close in the pause is seen at once.
                match tokio::time::timeout(Duration::from_millis(10), ws.next()).await {
                    Err(_) => {}
                    Ok(Some(Ok(msg @ Message::Close(_)))) => {
                        break (Instant::now(), close_code(&msg))
                    }
                    Ok(other) => panic!("unexpected while idle: {other:?}"),
                }
            }
            Message::Close(_) => break (Instant::now(), close_code(&msg)),
            _ => {}
        }
    };
    read_to_close_end(&mut ws).await;
    Drained {
        closed_at,
        code,
        sent,
        echoed,
        echoed_after_signal,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_drain_window_closes_every_tunnel_with_1001_spread_over_it() {
    const CLIENTS: usize = 20;
    const WINDOW: Duration = Duration::from_secs(1);
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let up = upstream.addr.to_string();
    // Two workers, each with its own listener: the drain reaches both.
    let mut gw = Gateway::start(&[
        "--upstream",
        &up,
        "--drain-window",
        "1s",
        "--access-log",
        "--workers",
        "2",
    ])
    .await;

    let first_echo = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let ws = connect(&gw.url("/")).await;
        clients.push(tokio::spawn(chat_until_closed(
            ws,
            id,
            first_echo.clone(),
            signalled.clone(),
        )));
    }
    // Every tunnel carries traffic before the drain starts.
    bounded("a first echo on every tunnel", first_echo.wait()).await;
    gw.signal("TERM");
    let signal_at = Instant::now();
    signalled.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut seen = Vec::new();
    for client in clients {
        seen.push(
            bounded("a client's Close", client)
                .await
                .expect("client task"),
        );
    }
    for (id, d) in seen.iter().enumerate() {
        assert_eq!(d.code, Some(1001), "client {id}: {d:?}");
        // Nothing lost: every message was echoed, in order, except at most
        // the one in flight when the Close crossed it (the gateway drops
        // what follows its Close toward the upstream, RFC 6455 §5.5.1).
        assert!(
            d.echoed >= 1 && d.sent - d.echoed <= 1,
            "client {id}: {d:?}"
        );
    }
    // Tunnels whose turn came late kept carrying messages during the drain.
    let last = seen.iter().max_by_key(|d| d.closed_at).expect("clients");
    assert!(
        last.closed_at < signal_at + Duration::from_millis(200) || last.echoed_after_signal,
        "{last:?}"
    );
    // Spread over the window, not all at once: a lower bound only.
    let first = seen.iter().map(|d| d.closed_at).min().expect("clients");
    let spread = last.closed_at - first;
    eprintln!("{CLIENTS} closes spread over {spread:?} (window {WINDOW:?})");
    assert!(spread >= WINDOW.mul_f64(0.4), "closes {spread:?} apart");

    assert_eq!(gw.wait_exit().code(), Some(0));
    let stderr = gw.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains(&format!("{CLIENTS} open at shutdown"))
            && stderr.contains(&format!("{CLIENTS} sent Close 1001"))
            && stderr.contains("0 cut"),
        "{stderr}"
    );
    let lines = gw.rest_of_stdout().await;
    assert_eq!(lines.len(), CLIENTS, "{lines:?}");
    for line in &lines {
        assert_eq!(field(line, "end"), "proxy-closed", "{line}");
        assert!(field(line, "close").starts_with("proxy:1001"), "{line}");
    }
}

/// A WebSocket upstream that completes the handshake, then never reads or
/// writes again: a hung backend. It holds each connection until the test ends.
async fn hung_ws_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                held.push(ws);
            }
        }
    });
    addr
}

#[tokio::test]
async fn ping_timeout_ends_a_tunnel_whose_upstream_never_answers() {
    let up = hung_ws_upstream().await.to_string();
    let mut gw = Gateway::start(&[
        "--upstream",
        &up,
        "--ping-interval",
        "200ms",
        "--ping-timeout",
        "600ms",
        "--access-log",
    ])
    .await;
    let mut ws = connect(&gw.url("/")).await;
    // Reading is what makes tungstenite answer the gateway's pings.
    let pings = bounded("the tunnel to end", async {
        let mut pings = 0;
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return pings,
                Some(Ok(other)) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(pings >= 1, "the gateway never pinged the client");
    let line = gw.next_line().await.expect("the tunnel's access log line");
    assert_eq!(field(&line, "end"), "ping-timeout:upstream", "{line}");
    assert_eq!(field(&line, "status"), "101", "{line}");
}

#[tokio::test]
async fn on_marked_down_close_sends_1001_to_the_tunnels_of_a_failed_upstream() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let up = upstream.addr.to_string();
    let mut gw = Gateway::start(&[
        "--upstream",
        &up,
        "--health-check",
        "tcp",
        "--health-interval",
        "200ms",
        "--health-fall",
        "1",
        "--on-marked-down",
        "close",
        "--access-log",
    ])
    .await;
    let mut ws = connect(&gw.url("/")).await;
    ws.send(Message::text("alive")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("alive"));

    // The backend stops listening; the open connection lives on, so only
    // the failing checks can end this tunnel.
    upstream.task.abort();
    let _ = bounded("the listener to close", upstream.task).await;
    let code = bounded("the Close", async {
        loop {
            match ws.next().await {
                Some(Ok(msg @ Message::Close(_))) => return close_code(&msg),
                Some(Ok(_)) => {}
                other => panic!("the tunnel ended without a Close: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(code, Some(1001));
    read_to_close_end(&mut ws).await;
    let line = gw.next_line().await.expect("the tunnel's access log line");
    assert_eq!(field(&line, "end"), "proxy-closed", "{line}");
    assert!(field(&line, "close").starts_with("proxy:1001"), "{line}");
}

#[tokio::test]
async fn an_upstream_coming_up_takes_its_share_of_open_tunnels() {
    let a = ws_upstream(WsUpstreamOptions::default())
        .await
        .addr
        .to_string();
    let b = ws_upstream(WsUpstreamOptions::default())
        .await
        .addr
        .to_string();
    // The third upstream's port, not listening yet: checks mark it down.
    let c: SocketAddr = {
        let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        reserved.local_addr().unwrap()
    };
    // max_fails=0: a client sent there before the first check marked it
    // down does not sit it out for fail_timeout once it comes up.
    let c_arg = format!("{c},max_fails=0");
    let gw = Gateway::start(&[
        "--upstream",
        &a,
        "--upstream",
        &b,
        "--upstream",
        &c_arg,
        "--balance",
        "least-conn",
        "--health-check",
        "tcp",
        "--health-interval",
        "100ms",
        "--health-rise",
        "1",
        "--health-fall",
        "1",
        "--rebalance-rate",
        "100",
    ])
    .await;
    // Real time (a separate process): ten check rounds, so that the third
    // upstream is marked down before any client connects.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut clients = Vec::new();
    for i in 0..12 {
        let mut ws = connect(&gw.url("/")).await;
        ws.send(Message::text(format!("hi {i}"))).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(format!("hi {i}")));
        clients.push(ws);
    }
    // The third comes up: 6/6/0 is 1.5 times the mean, above 1.25, so one
    // tunnel of each loaded upstream is closed with 1012 and reconnects.
    let listener = tokio::net::TcpListener::bind(c).await.unwrap();
    let third = support::recording_upstream_on(listener);
    let mut codes = Vec::new();
    let mut reconnected = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for mut ws in clients {
        readers.spawn(async move {
            loop {
                match ws.next().await {
                    Some(Ok(msg @ Message::Close(_))) => return (close_code(&msg), ws),
                    Some(Ok(_)) => {}
                    other => panic!("tunnel ended without a Close: {other:?}"),
                }
            }
        });
    }
    while codes.len() < 2 {
        let (code, mut ws) = bounded("a rebalance close", readers.join_next())
            .await
            .expect("a reader")
            .unwrap();
        read_to_close_end(&mut ws).await;
        codes.push(code);
        let mut again = connect(&gw.url("/")).await;
        let back = format!("back {}", codes.len());
        again.send(Message::text(back.clone())).await.unwrap();
        assert_eq!(next_data(&mut again).await, Message::text(back));
        // Kept open: the rebalancer measures after its settle time.
        reconnected.push(again);
    }
    assert_eq!(codes, [Some(1012), Some(1012)]);
    // Both came back through the least loaded upstream, the new one, and
    // nothing else went there.
    let seen = third.lock().unwrap().clone();
    assert_eq!(seen, ["back 1", "back 2"].map(String::from).into());
    let log = bounded("the rebalance line", async {
        loop {
            let err = gw.stderr.lock().unwrap().clone();
            if err.contains("rebalanced") {
                return err;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        log.contains("max/mean 1.50 -> 1.25, 2 tunnels moved"),
        "{log}"
    );
    readers.abort_all();
}

// ---------------------------------------------------------------------------
// The Server hooks the gateway stands on, in-process
// ---------------------------------------------------------------------------

mod server_hooks {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use wsproxy::balance::{RoundRobin, Upstream, UpstreamAddr};
    use wsproxy::proxy::{ConnectionReport, Outcome};
    use wsproxy::route::Route;
    use wsproxy::server::Server;
    use wsproxy::{Proxy, UpstreamGroup};

    use super::*;

    fn proxy_to(addr: SocketAddr) -> Proxy {
        let set = [Upstream::new(addr)].into_iter().collect();
        Proxy::builder()
            .route(Route::new(
                "/ws",
                UpstreamGroup::new("sockets", RoundRobin::new(set)),
            ))
            .handshake_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    /// Serves `server` on an ephemeral port through `serve_with(accept)`
    /// until the returned sender fires.
    async fn spawn_with<A, Fut, S>(server: Server, accept: A) -> (SocketAddr, oneshot::Sender<()>)
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = io::Result<S>> + Send + 'static,
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve_with(listener, accept, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    #[tokio::test]
    async fn serve_with_proxies_the_stream_accept_returns() {
        let up = ws_upstream(WsUpstreamOptions::default()).await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let (addr, _stop) = spawn_with(Server::new(proxy_to(up.addr)), move |tcp| {
            count.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(tcp))
        })
        .await;
        let mut ws = connect(&format!("ws://{addr}/ws")).await;
        ws.send(Message::text("through accept")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("through accept"));
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_failed_accept_closes_the_connection_unserved() {
        let up = ws_upstream(WsUpstreamOptions::default()).await;
        let (addr, _stop) = spawn_with(Server::new(proxy_to(up.addr)), |_tcp| {
            std::future::ready(Err::<TcpStream, _>(io::Error::other("bad client hello")))
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut got = Vec::new();
        let _ = bounded("the close", s.read_to_end(&mut got)).await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        assert!(up.seen.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_accept_that_never_finishes_is_dropped_at_the_handshake_timeout() {
        let up = ws_upstream(WsUpstreamOptions::default()).await;
        let (addr, _stop) = spawn_with(Server::new(proxy_to(up.addr)), |tcp| async move {
            // Holds the socket, as a stalled TLS handshake would.
            let _held = tcp;
            std::future::pending::<io::Result<TcpStream>>().await
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut got = Vec::new();
        let _ = bounded("the close", s.read_to_end(&mut got)).await;
        assert!(got.is_empty());
        // Virtual time: the proxy's 5 s handshake timeout, not WAIT.
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    type Seen = (
        SocketAddr,
        Option<String>,
        Option<UpstreamAddr>,
        Option<StatusCode>,
        Option<Outcome>,
        Option<(u64, u64)>,
    );

    fn summary(client: SocketAddr, r: &ConnectionReport) -> Seen {
        (
            client,
            r.route.as_deref().map(str::to_owned),
            r.upstream.clone(),
            r.status,
            r.outcome,
            r.tunnel
                .as_ref()
                .map(|t| (t.client_to_upstream, t.upstream_to_client)),
        )
    }

    #[tokio::test]
    async fn on_connection_end_reports_each_connection_once_it_ends() {
        let up = ws_upstream(WsUpstreamOptions::default()).await;
        let (tx, mut reports) = mpsc::unbounded_channel();
        let server = Server::new(proxy_to(up.addr)).on_connection_end(move |client, report| {
            let _ = tx.send(summary(client, report));
        });
        let (addr, _stop) = spawn_with(server, |tcp| std::future::ready(Ok(tcp))).await;

        // A tunnel: reported only after it ends, with its bytes.
        let mut ws = connect(&format!("ws://{addr}/ws")).await;
        ws.send(Message::text("count me")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("count me"));
        assert!(
            reports.try_recv().is_err(),
            "reported while the tunnel is open"
        );
        ws.close(None).await.unwrap();
        bounded("the close handshake", async {
            while ws.next().await.is_some() {}
        })
        .await;
        drop(ws);
        let (client, route, upstream, status, outcome, bytes) =
            bounded("the tunnel's report", reports.recv())
                .await
                .unwrap();
        assert_eq!(client.ip(), addr.ip());
        assert_eq!(route.as_deref(), Some("sockets"));
        assert_eq!(upstream, Some(UpstreamAddr::from(up.addr)));
        assert_eq!(status, Some(StatusCode::SWITCHING_PROTOCOLS));
        assert_eq!(outcome, Some(Outcome::Tunneled));
        let (from_client, from_upstream) = bytes.expect("tunnel stats");
        assert!(
            from_client > 8 && from_upstream > 8,
            "{from_client} {from_upstream}"
        );

        // No route: the proxy's own 404, no upstream, no tunnel.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        bounded("the 404", s.read_to_end(&mut answer))
            .await
            .unwrap();
        let seen = bounded("the 404's report", reports.recv()).await.unwrap();
        assert_eq!(
            (seen.1, seen.2, seen.3, seen.4, seen.5),
            (
                None,
                None,
                Some(StatusCode::NOT_FOUND),
                Some(Outcome::Rejected(StatusCode::NOT_FOUND)),
                None
            )
        );
    }
}
