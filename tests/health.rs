//! Active health checks against real loopback sockets, on the paused clock:
//! TCP and WebSocket checks mark upstreams down and up, picks skip them,
//! and the operator's own `down` is never undone.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use wsproxy::balance::UpstreamAddr;
use wsproxy::balance::{Balancer, PickContext, RoundRobin, Upstream, UpstreamId, UpstreamSet};
use wsproxy::proxy::{HealthCheckBuilder, Probe, ProbeFuture, TcpProbe, WebSocketProbe};
use wsproxy::{HealthCheck, HealthChecker};

use support::closed_port;

/// Bound for every wait: virtual time on the paused clock, far above the
/// few intervals each test needs.
const BOUND: Duration = Duration::from_secs(600);
const INTER: Duration = Duration::from_secs(2);

/// Accepts and drops connections on `listener`.
fn accept_and_drop(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    })
}

/// Answers every request with `answer`, after reading its head.
async fn answering(answer: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A tokio-tungstenite server that counts completed handshakes and the
/// Close frames it then receives.
async fn tungstenite_server() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let closes = Arc::new(AtomicUsize::new(0));
    let (h, c) = (Arc::clone(&handshakes), Arc::clone(&closes));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (h, c) = (Arc::clone(&h), Arc::clone(&c));
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (addr, handshakes, closes)
}

/// A tokio-tungstenite server that requires a PROXY v2 header first (nginx
/// `listen ... proxy_protocol`: a connection without one is dropped) and
/// names subprotocol `chat` in every 101, offered or not. Counts the
/// handshakes it completed.
async fn proxy_v2_chat_server() -> (SocketAddr, Arc<AtomicUsize>) {
    const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut header = [0u8; 16];
                if stream.read_exact(&mut header).await.is_err() || !header.starts_with(SIGNATURE) {
                    return;
                }
                let mut rest = vec![0u8; usize::from(u16::from_be_bytes([header[14], header[15]]))];
                if stream.read_exact(&mut rest).await.is_err() {
                    return;
                }
                // tungstenite's handshake callback type.
                #[allow(clippy::result_large_err)]
                let chat = |_: &_, mut response: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", "chat".parse().unwrap());
                    Ok(response)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, chat).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    (addr, handshakes)
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(BOUND, self.task).await.unwrap().unwrap();
    }
}

fn start(set: &UpstreamSet, config: HealthCheckBuilder) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let checker = HealthChecker::new(set.clone(), config.build().unwrap());
    let task = tokio::spawn(checker.run(async move {
        let _ = stopped.await;
    }));
    Running {
        stop: Some(stop),
        task,
    }
}

fn check_down(set: &UpstreamSet, id: UpstreamId) -> bool {
    set.snapshot().get(id).unwrap().is_check_down()
}

/// Waits, in steps of 100 ms of virtual time, until `id`'s check state is
/// `down`.
async fn until_check_down(set: &UpstreamSet, id: UpstreamId, down: bool) {
    let wait = async {
        while check_down(set, id) != down {
            sleep(Duration::from_millis(100)).await;
        }
    };
    timeout(BOUND, wait)
        .await
        .unwrap_or_else(|_| panic!("{id} never became check_down={down}"));
}

#[tokio::test(start_paused = true)]
async fn tcp_check_marks_a_closed_port_down_after_fall_and_up_after_rise() {
    let addr = closed_port().await;
    let set = UpstreamSet::new();
    let id = set.add(Upstream::new(addr));
    // inter 2s rise 2 fall 3: failures at 0, 2 and 4 s.
    let running = start(&set, HealthCheck::builder().interval(INTER).rise(2).fall(3));
    sleep(Duration::from_millis(3_900)).await;
    assert!(!check_down(&set, id), "down before the third failure");
    until_check_down(&set, id, true).await;

    // A listener appears on the same port: two successes bring it back,
    // not one.
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = accept_and_drop(listener);
    sleep(Duration::from_millis(1_900)).await;
    assert!(check_down(&set, id), "up after a single success");
    until_check_down(&set, id, false).await;
    assert!(!set.snapshot().get(id).unwrap().is_down());
    running.stop().await;
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn websocket_check_marks_a_200_down_and_keeps_a_real_server_up() {
    let plain = answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let (real, handshakes, closes) = tungstenite_server().await;
    let set = UpstreamSet::new();
    let plain_id = set.add(Upstream::new(plain));
    let real_id = set.add(Upstream::new(real));
    let config = HealthCheck::builder()
        .probe(WebSocketProbe::new("/health").unwrap())
        .interval(INTER)
        .timeout(Duration::from_secs(1))
        .rise(2)
        .fall(2);
    let running = start(&set, config);
    until_check_down(&set, plain_id, true).await;
    sleep(INTER * 5).await;
    assert!(!check_down(&set, real_id));
    // Every check was a full handshake, each ended with a Close frame.
    assert!(handshakes.load(Ordering::SeqCst) >= 5);
    let wait_closes = async {
        while closes.load(Ordering::SeqCst) < 5 {
            sleep(Duration::from_millis(100)).await;
        }
    };
    timeout(BOUND, wait_closes).await.unwrap();
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn websocket_check_marks_down_a_101_with_a_wrong_accept_and_a_silent_upstream() {
    let wrong = answering(concat!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    ))
    .await;
    // Accepts but never answers: only the timeout ends the check.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            streams.push(stream);
        }
    });
    let set = UpstreamSet::new();
    let wrong_id = set.add(Upstream::new(wrong));
    let silent_id = set.add(Upstream::new(silent_addr));
    let config = HealthCheck::builder()
        .probe(WebSocketProbe::new("/").unwrap())
        .interval(INTER)
        .timeout(Duration::from_millis(500))
        .fall(1);
    let running = start(&set, config);
    until_check_down(&set, wrong_id, true).await;
    until_check_down(&set, silent_id, true).await;
    running.stop().await;
    held.abort();
}

/// HAProxy `check-send-proxy`: upstreams that require the PROXY protocol
/// are checked with a v2 header first (LOCAL), else every check fails. A
/// 101 naming a subprotocol the probe did not offer still passes: the
/// backend serves its real clients, which offer it.
#[tokio::test(start_paused = true)]
async fn a_websocket_check_can_open_with_proxy_v2_and_takes_an_unoffered_subprotocol() {
    let (addr, handshakes) = proxy_v2_chat_server().await;
    let (with, without) = (UpstreamSet::new(), UpstreamSet::new());
    let with_id = with.add(Upstream::new(addr));
    let without_id = without.add(Upstream::new(addr));
    let config = |probe: WebSocketProbe| {
        HealthCheck::builder()
            .probe(probe)
            .interval(INTER)
            .timeout(Duration::from_secs(1))
            .fall(1)
    };
    let a = start(
        &with,
        config(WebSocketProbe::new("/").unwrap().with_proxy_v2()),
    );
    let b = start(&without, config(WebSocketProbe::new("/").unwrap()));
    until_check_down(&without, without_id, true).await;
    sleep(INTER * 5).await;
    assert!(!check_down(&with, with_id));
    assert!(handshakes.load(Ordering::SeqCst) >= 5);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_upstream_the_operator_set_down_stays_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = accept_and_drop(listener);
    let dead = closed_port().await;
    let set = UpstreamSet::new();
    let id = set.add(Upstream::new(addr).down(true));
    let dead_id = set.add(Upstream::new(dead));
    let running = start(&set, HealthCheck::builder().interval(INTER).fall(1));
    until_check_down(&set, dead_id, true).await;
    sleep(INTER * 5).await;
    let peer = set.snapshot().get(id).unwrap().clone();
    assert!(peer.is_down(), "a passing check undid the operator's down");
    assert!(!peer.is_check_down());
    // The operator brings the dead one back by hand: still out by its check.
    set.set_down(dead_id, false);
    assert!(check_down(&set, dead_id));
    running.stop().await;
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn round_robin_skips_an_upstream_marked_down_and_shutdown_lifts_the_mark() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap();
    let server = accept_and_drop(listener);
    let dead = closed_port().await;
    let set = UpstreamSet::new();
    let live_id = set.add(Upstream::new(live));
    let dead_id = set.add(Upstream::new(dead));
    let balancer = RoundRobin::new(set.clone());
    let request = http::Request::get("/").body(()).unwrap();
    let ctx = PickContext::new([127, 0, 0, 1].into(), &request, StdInstant::now());
    let before: Vec<_> = (0..4).map(|_| balancer.pick(&ctx).unwrap().id()).collect();
    assert!(before.contains(&dead_id));

    let running = start(&set, HealthCheck::builder().interval(INTER));
    until_check_down(&set, dead_id, true).await;
    for _ in 0..10 {
        assert_eq!(balancer.pick(&ctx).unwrap().id(), live_id);
    }
    assert!(!check_down(&set, live_id));

    running.stop().await;
    assert!(
        !check_down(&set, dead_id),
        "a stopped checker left its mark"
    );
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn upstreams_added_while_running_are_checked() {
    let set = UpstreamSet::new();
    let running = start(&set, HealthCheck::builder().interval(INTER).fall(1));
    sleep(INTER * 2).await;
    let id = set.add(Upstream::new(closed_port().await));
    until_check_down(&set, id, true).await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn checks_run_concurrently_up_to_the_bound() {
    // Silent upstreams hold each check for its whole timeout, so the
    // connections open at once show how many checks run together.
    let accepted = Arc::new(AtomicUsize::new(0));
    let set = UpstreamSet::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        set.add(Upstream::new(listener.local_addr().unwrap()));
        let accepted = Arc::clone(&accepted);
        servers.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        }));
    }
    let config = HealthCheck::builder()
        .probe(WebSocketProbe::new("/").unwrap())
        .interval(Duration::from_secs(60))
        .timeout(Duration::from_secs(1))
        .concurrency(2);
    let running = start(&set, config);
    sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    sleep(Duration::from_millis(1_000)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    running.stop().await;
    for server in servers {
        server.abort();
    }
}

/// A host's own probe: a TCP check that fails on demand (a maintenance
/// switch), counting its runs.
#[derive(Debug, Default)]
struct Switchable {
    failing: AtomicBool,
    runs: AtomicUsize,
}

impl Probe for Switchable {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        Box::pin(async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            !self.failing.load(Ordering::SeqCst) && TcpProbe.probe(upstream).await
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_probe_marks_a_live_upstream_down_and_up_on_demand() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = accept_and_drop(listener);
    let set = UpstreamSet::new();
    let id = set.add(Upstream::new(addr));
    let probe = Arc::new(Switchable::default());
    let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let config = HealthCheck::builder()
        .probe(Arc::clone(&probe))
        .interval(INTER)
        .rise(2)
        .fall(2)
        .build()
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let checker = HealthChecker::new(set.clone(), config)
        .on_change(move |id, up| seen.lock().unwrap().push((id, up)));
    let task = tokio::spawn(checker.run(async move {
        let _ = stopped.await;
    }));

    // The listener is up and the probe passes: it stays up.
    sleep(INTER * 3).await;
    assert!(!check_down(&set, id));
    assert!(probe.runs.load(Ordering::SeqCst) >= 3);

    probe.failing.store(true, Ordering::SeqCst);
    until_check_down(&set, id, true).await;
    probe.failing.store(false, Ordering::SeqCst);
    until_check_down(&set, id, false).await;
    assert_eq!(*changes.lock().unwrap(), [(id, false), (id, true)]);

    let _ = stop.send(());
    timeout(BOUND, task).await.unwrap().unwrap();
    server.abort();
}

/// A host's probe that panics on its first `panics` runs, then passes.
#[derive(Debug)]
struct PanicsFirst {
    panics: usize,
    runs: AtomicUsize,
}

impl Probe for PanicsFirst {
    fn probe<'a>(&'a self, _upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        Box::pin(async move {
            let run = self.runs.fetch_add(1, Ordering::SeqCst);
            assert!(run >= self.panics, "a host's probe panicked");
            true
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_fails_its_check_and_checks_go_on() {
    let set = UpstreamSet::new();
    let id = set.add(Upstream::new(SocketAddr::from(([127, 0, 0, 1], 9))));
    let probe = Arc::new(PanicsFirst {
        panics: 2,
        runs: AtomicUsize::new(0),
    });
    let running = start(
        &set,
        HealthCheck::builder()
            .probe(Arc::clone(&probe))
            .interval(INTER)
            .rise(1)
            .fall(2),
    );
    // Two panics are two failed checks: down. Before, the first left the
    // upstream "being checked" and it was never checked again.
    until_check_down(&set, id, true).await;
    // The next check passes and brings it back.
    until_check_down(&set, id, false).await;
    assert!(probe.runs.load(Ordering::SeqCst) >= 3);
    running.stop().await;
}
