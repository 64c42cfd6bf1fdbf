//! The gateway's `--metrics` admin listener, scraped during real traffic:
//! open tunnels going up and back down, bytes, a 502, a retry, close codes,
//! `/healthz`, and `/readyz` turning 503 once a drain has begun.
//!
//! Then the embedded way in (a hyper host on `Proxy::connect_upgrade`), read
//! from an in-process recorder: the same series as through the gateway.
//!
//! Only with `--features metrics` (then `cargo test` builds the gateway
//! example with it too). The binary is found as tests/gateway.rs finds it.
#![cfg(feature = "metrics")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use support::{
    bounded, client_to, closed_port, echo, gateway_bin, ws_upstream, WsUpstreamOptions, WAIT,
};

/// A gateway with `--metrics`; killed on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Gateway {
    async fn start(args: &[&str]) -> Self {
        let mut child = Command::new(gateway_bin())
            .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let banner = bounded("listening line", lines.recv())
            .await
            .expect("listening line");
        let admin_line = bounded("metrics line", lines.recv())
            .await
            .expect("metrics line");
        let after = |line: &str, marker: &str| -> SocketAddr {
            let rest = line
                .split(marker)
                .nth(1)
                .unwrap_or_else(|| panic!("{line:?} lacks {marker:?}"));
            rest.split(|c: char| c == '/' || c.is_whitespace())
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        };
        let addr = after(&banner, "listening on ws://");
        let admin = after(&admin_line, "metrics on http://");
        Self { child, addr, admin }
    }

    /// One GET on the admin listener: (status, body).
    async fn get(&self, path: &str) -> (u16, String) {
        let mut tcp = bounded("admin connect", TcpStream::connect(self.admin))
            .await
            .expect("admin connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        bounded("admin answer", tcp.read_to_end(&mut answer))
            .await
            .expect("read");
        let answer = String::from_utf8(answer).expect("utf-8 answer");
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {answer:?}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of the series `name{labels}` (labels as printed, in the
    /// exporter's order), or 0 when it is absent.
    async fn value(&self, series: &str) -> f64 {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        sample(&body, series)
    }

    /// Scrapes until `series` satisfies `ok` (bounded by [`WAIT`]).
    async fn await_value(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.value(series).await;
            if ok(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{series} stuck at {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series in Prometheus text, 0 when absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn scrapes_follow_tunnels_bytes_rejects_and_close_codes() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let (dead_a, dead_b) = (closed_port().await, closed_port().await);
    let gateway = Gateway::start(&[
        "--route",
        &format!("/={}", upstream.addr),
        "--route",
        &format!("/dead={dead_a},{dead_b}"),
    ])
    .await;
    let open = format!(
        "wsproxy_open_tunnels{{route=\"/\",upstream=\"{}\"}}",
        upstream.addr
    );

    assert_eq!(gateway.get("/healthz").await.0, 200);
    assert_eq!(gateway.get("/readyz").await.0, 200);
    assert_eq!(gateway.value(&open).await, 0.0);

    // Two tunnels: the gauge goes to 2.
    let mut first = client_to(gateway.addr, "/").await;
    let mut second = client_to(gateway.addr, "/").await;
    echo(&mut first, "hello".into()).await;
    gateway.await_value(&open, |v| v == 2.0).await;

    // Traffic on a tunnel that stays open: its bytes show while it runs
    // (every 64 KiB or second), and keep growing.
    let up_series = "wsproxy_bytes_total{direction=\"client_to_upstream\"}";
    let down_series = "wsproxy_bytes_total{direction=\"upstream_to_client\"}";
    let payload = "x".repeat(16 * 1024);
    let mut sent = 0.0;
    for round in 1..=2 {
        for _ in 0..4 {
            echo(&mut second, payload.clone()).await;
            sent += payload.len() as f64;
        }
        let up = gateway.await_value(up_series, |v| v >= sent).await;
        let down = gateway.await_value(down_series, |v| v >= sent).await;
        assert_eq!(gateway.value(&open).await, 2.0, "round {round}: still open");
        assert!(up >= sent && down >= sent, "round {round}: {up} {down}");
    }

    // One closes (1000 from the client): the gauge comes down to 1.
    first
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await
        .expect("close");
    while let Some(Ok(_)) = bounded("end", first.next()).await {}
    gateway.await_value(&open, |v| v == 1.0).await;
    gateway
        .await_value(
            "wsproxy_close_codes_total{side=\"client\",code=\"1000\"}",
            |v| v == 1.0,
        )
        .await;
    // The other closes too: down to 0.
    drop(second);
    gateway.await_value(&open, |v| v == 0.0).await;

    // Nothing listens behind /dead: both tried (one retry), then 502.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/dead", gateway.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            assert_eq!(answer.status(), 502)
        }
        other => panic!("expected a 502, got {other:?}"),
    }
    // Counted on the worker thread just after it wrote the 502: a scrape
    // served on the admin's thread may get there first.
    gateway
        .await_value("wsproxy_rejects_total{status=\"502\"}", |v| v == 1.0)
        .await;
    let body = gateway.get("/metrics").await.1;
    assert_eq!(sample(&body, "wsproxy_retries_total"), 1.0);
    assert_eq!(
        sample(&body, "wsproxy_handshakes_total{outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        sample(&body, "wsproxy_handshakes_total{outcome=\"upgraded\"}"),
        2.0
    );
    assert_eq!(sample(&body, "wsproxy_handshake_seconds_count"), 2.0);
    assert_eq!(sample(&body, "wsproxy_tunnel_seconds_count"), 2.0);
    assert_eq!(sample(&body, "wsproxy_connections_total"), 3.0);
    assert_eq!(sample(&body, "wsproxy_requests_total"), 3.0);
    assert_eq!(
        sample(&body, "wsproxy_upstreams{group=\"/\",state=\"up\"}"),
        1.0
    );
    // Bounded labels only: never a client address or a request path.
    for name in label_names(&body) {
        assert!(
            [
                "route",
                "upstream",
                "outcome",
                "status",
                "direction",
                "side",
                "code",
                "group",
                "state",
                "le",
                "quantile"
            ]
            .contains(&name.as_str()),
            "label {name} in {body}"
        );
    }
}

/// Every label name used by a series in Prometheus text.
fn label_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        let labels = labels.split('}').next().unwrap_or_default();
        for pair in labels.split("\",") {
            if let Some((name, _)) = pair.split_once('=') {
                let name = name.trim_start_matches(',').to_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

#[tokio::test]
async fn readyz_turns_503_once_the_drain_begins() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.addr.to_string(),
        // Close 1001 to every tunnel within 200 ms; each has the close
        // linger (5 s) to answer it.
        "--drain-window",
        "200ms",
    ])
    .await;
    assert_eq!(gateway.get("/readyz").await.0, 200);
    // A tunnel that does not read keeps the drain going: its Close 1001
    // waits unanswered.
    let mut ws = client_to(gateway.addr, "/").await;
    echo(&mut ws, "hi".into()).await;
    let open = format!(
        "wsproxy_open_tunnels{{route=\"default\",upstream=\"{}\"}}",
        upstream.addr
    );
    assert_eq!(gateway.value(&open).await, 1.0);

    gateway.terminate();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = gateway.get("/readyz").await;
        if status == 503 {
            assert_eq!(body, "draining\n");
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still alive, still scraped while draining.
    assert_eq!(gateway.get("/healthz").await.0, 200);
    assert_eq!(gateway.get("/metrics").await.0, 200);

    // The client answers the drain's Close 1001: the gateway then exits.
    let frame = bounded("close", ws.next()).await;
    match frame {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    let _ = ws.send(Message::text("late")).await;
}

// ---------------------------------------------------------------------------
// The embedded way in, in-process
// ---------------------------------------------------------------------------

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
use wsproxy::{Proxy, Route, UpstreamGroup};

/// Renders until `series` has the value `want` (bounded by [`WAIT`]).
async fn await_rendered(prometheus: &PrometheusHandle, series: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = sample(&prometheus.render(), series);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stuck at {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connect_upgrade_records_the_same_series_as_server() {
    // The only recorder of this test binary (the gateway tests scrape
    // another process); installed before the proxy is built.
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("first recorder of this binary");

    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let set: UpstreamSet = [Upstream::new(upstream.addr)].into_iter().collect();
    let proxy = Proxy::builder()
        .route(Route::new(
            "/chat",
            UpstreamGroup::new("chat", RoundRobin::new(set)),
        ))
        .build()
        .expect("proxy");
    let host = support::hyper_host(proxy).await;
    let addr = upstream.addr.to_string();
    let open = format!("wsproxy_open_tunnels{{route=\"chat\",upstream=\"{addr}\"}}");

    let mut ws = client_to(host, "/chat").await;
    echo(&mut ws, "through hyper".into()).await;
    await_rendered(&prometheus, &open, 1.0).await;
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    await_rendered(&prometheus, &open, 0.0).await;

    // No route: the host answers the proxy's 404, counted as Server counts it.
    let refused = tokio_tungstenite::connect_async(format!("ws://{host}/elsewhere")).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(a)) if a.status() == 404),
        "{refused:?}"
    );

    let body = prometheus.render();
    for (series, want) in [
        ("wsproxy_connections_total", 2.0),
        ("wsproxy_requests_total", 2.0),
        ("wsproxy_handshakes_total{outcome=\"upgraded\"}", 1.0),
        ("wsproxy_handshakes_total{outcome=\"rejected\"}", 1.0),
        ("wsproxy_rejects_total{status=\"404\"}", 1.0),
        // A Close without a code counts as 1005.
        (
            "wsproxy_close_codes_total{side=\"client\",code=\"1005\"}",
            1.0,
        ),
        ("wsproxy_handshake_seconds_count", 1.0),
        ("wsproxy_tunnel_seconds_count", 1.0),
    ] {
        assert_eq!(sample(&body, series), want, "{series} in {body}");
    }
    let up = sample(
        &body,
        "wsproxy_bytes_total{direction=\"client_to_upstream\"}",
    );
    assert!(up > 0.0, "{body}");
}
