//! Attacks by one client on everyone else, end to end on loopback: each case
//! is a regression test for a reported abuse, grouped by attack family
//! under a header per family. Add new families at the end, with a header
//! and their count in the tally below.
//!
//! Cases here (18):
//! - passive-health poisoning: 5
//! - header spoofing toward CGI/WSGI backends: 3
//! - connection slots: 3
//! - chunked bodies: 7
//!
//! Two families live beside the helpers they need, and count in the suite:
//! - request heads (junk bytes 400 at once, `%00` in the path 400, an
//!   overlong request line 414): 3 in `tests/proxy.rs`
//!   (`junk_that_cannot_start_a_request_gets_400_at_once`,
//!   `an_encoded_nul_in_the_path_is_400_and_never_reaches_the_upstream`,
//!   `an_overlong_request_line_is_414`);
//! - WebSockets that outlive their Close handshake: 1 in `tests/frames.rs`
//!   (`peers_that_exchange_close_and_keep_tcp_open_end_the_tunnel_after_the_linger`).

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
use wsproxy::forward::ForwardPolicy;
use wsproxy::server::Server;
use wsproxy::{Proxy, ProxyBuilder};

use support::*;

fn set(addrs: &[SocketAddr]) -> UpstreamSet {
    addrs.iter().map(|a| Upstream::new(*a)).collect()
}

fn round_robin(addrs: &[SocketAddr]) -> ProxyBuilder {
    Proxy::builder().upstream(RoundRobin::new(set(addrs)))
}

/// A plain request that closes the connection after its answer.
fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n{extra}\r\n")
}

fn upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Sends `request` on a fresh connection and returns the whole answer.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned()
}

/// The status line's code of an answer.
fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

/// What a [`scripted_upstream`] does with one request head: wait, then send.
struct Reply {
    delay: Duration,
    bytes: Vec<u8>,
}

/// The usual upstream of these tests: `/slow` answers after 3 s, `/bad`
/// upgrades with a 101 lacking `Sec-WebSocket-Accept`, other upgrades
/// complete, and anything else gets `200 ok`.
fn script(head: &str) -> Reply {
    let path = head.split(' ').nth(1).unwrap_or("/");
    let key = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    });
    let bytes = match (path, key) {
        ("/bad", Some(_)) => {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_vec()
        }
        (_, Some(key)) => format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    };
    let delay = if path == "/slow" {
        Duration::from_secs(3)
    } else {
        Duration::ZERO
    };
    Reply { delay, bytes }
}

/// An upstream answering each request head by `script`; counts the heads
/// it answered without delay.
async fn scripted_upstream(script: fn(&str) -> Reply) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = script(&String::from_utf8_lossy(&head));
                if reply.delay.is_zero() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(reply.delay).await;
                let _ = stream.write_all(&reply.bytes).await;
                // Hold the connection (a tunnel) until the proxy closes it.
                let _ = tokio::time::timeout(WAIT, async {
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    (addr, served)
}

// ---------------------------------------------------------------------------
// Passive-health poisoning: one client's failing requests must not mark
// the upstreams failed for everyone (issue 13 §1).
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_slow_path_on_a_lone_upstream_does_not_lock_out_other_clients() {
    let (up, _) = scripted_upstream(script).await;
    let gw = Gateway::start(round_robin(&[up]).read_timeout(Duration::from_secs(1))).await;
    for _ in 0..3 {
        let answer = exchange(gw.addr, &get("/slow", "")).await;
        assert_eq!(status(&answer), "504", "{answer}");
    }
    for i in 0..40 {
        let answer = exchange(gw.addr, &get("/", "")).await;
        assert_eq!(status(&answer), "200", "request {i}: {answer}");
    }
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn slow_paths_on_each_of_three_upstreams_in_turn_do_not_lock_out_other_clients() {
    let mut addrs = Vec::new();
    for _ in 0..3 {
        addrs.push(scripted_upstream(script).await.0);
    }
    let gw = Gateway::start(round_robin(&addrs).read_timeout(Duration::from_secs(1))).await;
    // A burst, meant to reach every upstream in turn, interleaved with
    // other clients' requests.
    for i in 0..6 {
        let answer = exchange(gw.addr, &get("/slow", "")).await;
        assert_eq!(status(&answer), "504", "{answer}");
        let answer = exchange(gw.addr, &get("/", "")).await;
        assert_eq!(status(&answer), "200", "after poison {i}: {answer}");
    }
    for i in 0..40 {
        let answer = exchange(gw.addr, &get("/", "")).await;
        assert_eq!(status(&answer), "200", "request {i}: {answer}");
    }
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_invalid_101_provoked_on_a_lone_upstream_does_not_lock_out_other_clients() {
    let (up, _) = scripted_upstream(script).await;
    let gw = Gateway::start(round_robin(&[up])).await;
    let answer = exchange(gw.addr, &upgrade("/bad")).await;
    assert_eq!(status(&answer), "502", "{answer}");
    for i in 0..10 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(upgrade("/").as_bytes()).await.unwrap();
        let head = read_until(&mut s, b"\r\n\r\n").await;
        let head = String::from_utf8_lossy(&head);
        assert_eq!(status(&head), "101", "upgrade {i}: {head}");
    }
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn invalid_101s_do_not_count_as_upstream_failures() {
    let mut ups = Vec::new();
    for _ in 0..3 {
        ups.push(scripted_upstream(script).await);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|(a, _)| *a).collect();
    let gw = Gateway::start(round_robin(&addrs)).await;
    for _ in 0..3 {
        let answer = exchange(gw.addr, &upgrade("/bad")).await;
        assert_eq!(status(&answer), "502", "{answer}");
    }
    let before: Vec<usize> = ups.iter().map(|(_, n)| n.load(Ordering::Relaxed)).collect();
    for _ in 0..6 {
        let answer = exchange(gw.addr, &get("/", "")).await;
        assert_eq!(status(&answer), "200", "{answer}");
    }
    // Every upstream still takes its turn: none was marked failed.
    let grew: Vec<usize> = ups
        .iter()
        .zip(&before)
        .map(|((_, n), b)| n.load(Ordering::Relaxed) - b)
        .collect();
    assert_eq!(grew, [2, 2, 2]);
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn when_every_available_upstream_is_marked_failed_one_is_still_tried() {
    let (up, _) = scripted_upstream(script).await;
    let other = closed_port().await;
    let set = set(&[up, other]);
    let gw = Gateway::start(Proxy::builder().upstream(RoundRobin::new(set.clone()))).await;
    let snapshot = set.snapshot();
    let (working, spare) = (&snapshot.primaries()[0], &snapshot.primaries()[1]);
    // A passing failure marks the working upstream (the spare still
    // stood), then the operator takes the spare out.
    working
        .lease()
        .report_failure(tokio::time::Instant::now().into_std());
    set.set_down(spare.id(), true);
    let answer = exchange(gw.addr, &get("/", "")).await;
    assert_eq!(status(&answer), "200", "{answer}");
    gw.shutdown().await;
}

/// nginx `proxy_next_upstream_timeout`: a request no upstream answers goes
/// to the next one only while the first try began less than the bound
/// ago, on `Server` and on the embedded path alike; without it, every
/// upstream is tried.
#[tokio::test(start_paused = true)]
async fn the_next_upstream_timeout_bounds_how_long_a_request_is_passed_on() {
    let mut addrs = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let (addr, heads) = counting_upstream(b"").await;
        addrs.push(addr);
        counts.push(heads);
    }
    let all = || {
        counts
            .iter()
            .map(|h| h.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let tried = |before: usize| all() - before;
    let read_2s = || round_robin(&addrs).read_timeout(Duration::from_secs(2));

    // No bound: all three tries, 6 s.
    let gw = Gateway::start(read_2s()).await;
    let answer = exchange(gw.addr, &upgrade("/")).await;
    assert_eq!(status(&answer), "504", "{answer}");
    assert_eq!(tried(0), 3);
    gw.shutdown().await;

    // 3 s: the second try begins at 2 s, a third would at 4 s.
    let bounded_3s = || read_2s().next_upstream_timeout(Duration::from_secs(3));
    let gw = Gateway::start(bounded_3s()).await;
    let before = all();
    let answer = exchange(gw.addr, &upgrade("/")).await;
    assert_eq!(status(&answer), "504", "{answer}");
    assert_eq!(tried(before), 2);
    gw.shutdown().await;

    let proxy = bounded_3s().build().unwrap();
    let request = parsed_upgrade("/");
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let before = all();
    let upgrade = proxy.connect_upgrade(request, peer, wsproxy::Scheme::Http);
    let err = bounded("the embedded upgrade", upgrade).await.unwrap_err();
    assert_eq!(err.status(), http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(tried(before), 2);
}

// ---------------------------------------------------------------------------
// Header spoofing toward CGI/WSGI backends: underscore twins of the
// forwarding headers (issue 13 §3).
// ---------------------------------------------------------------------------

const TWINS: &str = "X_Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\n\
                     X_Forwarded_Proto: https\r\nX_Custom: kept-if-allowed\r\n";

/// The request head the upstream received, lowercased.
async fn received_head(gw: SocketAddr, seen: &Mutex<Vec<Vec<u8>>>) -> String {
    let answer = exchange(gw, &get("/", TWINS)).await;
    assert_eq!(status(&answer), "200", "{answer}");
    await_records(seen, 1).await;
    let head = seen.lock().unwrap().pop().unwrap();
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[tokio::test]
async fn underscored_headers_are_dropped_by_default() {
    let (up, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start(round_robin(&[up])).await;
    let head = received_head(gw.addr, &seen).await;
    assert!(!head.contains('_'), "{head}");
    assert!(head.contains("x-real-ip: 127.0.0.1\r\n"), "{head}");
    gw.shutdown().await;
}

#[tokio::test]
async fn allowed_underscores_still_never_twin_a_header_the_proxy_sets() {
    let (up, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let policy = ForwardPolicy::builder()
        .underscores_in_headers(true)
        .build()
        .unwrap();
    let gw = Gateway::start(round_robin(&[up]).policy(policy)).await;
    let head = received_head(gw.addr, &seen).await;
    assert!(head.contains("x_custom: kept-if-allowed\r\n"), "{head}");
    for twin in ["x_real_ip", "x_forwarded_for", "x_forwarded_proto"] {
        assert!(!head.contains(twin), "{twin} reached the upstream: {head}");
    }
    gw.shutdown().await;
}

/// A gateway process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the gateway binary with `args`; returns it and its address.
async fn start_binary(args: &[&str]) -> (Process, SocketAddr) {
    let mut child = Command::new(gateway_bin())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let process = Process(child);
    let banner = bounded(
        "the listening line",
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            line
        }),
    )
    .await
    .unwrap();
    let addr = banner
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .parse()
        .unwrap();
    (process, addr)
}

#[tokio::test]
async fn the_gateway_flag_allows_underscores_but_not_twins() {
    let (up, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let up = up.to_string();
    let (_off, addr) = start_binary(&["--upstream", &up]).await;
    let head = received_head(addr, &seen).await;
    assert!(!head.contains('_'), "{head}");

    let (_on, addr) = start_binary(&["--upstream", &up, "--underscores-in-headers", "on"]).await;
    let head = received_head(addr, &seen).await;
    assert!(head.contains("x_custom: kept-if-allowed\r\n"), "{head}");
    assert!(!head.contains("x_real_ip"), "{head}");
}

// ---------------------------------------------------------------------------
// Connection slots: idle or refused clients must not hold slots that new
// clients need (issue 13 §4).
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn idle_keepalive_connections_give_their_slots_to_new_clients() {
    let (up, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start_with(round_robin(&[up]), |s| s.max_connections(10)).await;
    let keep_alive = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(keep_alive.as_bytes()).await.unwrap();
        read_until(&mut s, b"\r\n\r\nok").await;
        idle.push(s);
    }
    // Every slot holds an idle keep-alive connection (75 s timeout): a new
    // client is served now, not when one of them times out.
    let mut late = TcpStream::connect(gw.addr).await.unwrap();
    late.write_all(keep_alive.as_bytes()).await.unwrap();
    let answer = within(
        Duration::from_secs(5),
        "an answer while every slot idles",
        read_until(&mut late, b"\r\n\r\nok"),
    )
    .await;
    assert!(
        answer.ends_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The longest idle one made room.
    let mut rest = Vec::new();
    within(
        Duration::from_secs(1),
        "the oldest idle connection to close",
        idle[0].read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(rest.is_empty());
    drop(idle);
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_slowloris_answered_408_gives_its_slot_back_at_once() {
    let (up, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let builder = round_robin(&[up]).handshake_timeout(Duration::from_secs(10));
    let gw = Gateway::start_with(builder, |s| s.max_connections(1)).await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // Not `read_until`: its own bound is as long as the handshake timeout.
    let mut answer = [0u8; 12];
    within(
        Duration::from_secs(30),
        "the 408",
        slow.read_exact(&mut answer),
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status(&answer), "408", "{answer}");
    // The slow client keeps its socket open and silent; the next client
    // does not wait for a linger on it.
    let mut next = TcpStream::connect(gw.addr).await.unwrap();
    next.write_all(get("/", "").as_bytes()).await.unwrap();
    let answer = within(
        Duration::from_secs(2),
        "the next client's answer",
        read_until(&mut next, b"\r\n\r\nok"),
    )
    .await;
    assert!(
        answer.ends_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(slow);
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_tls_handshake_and_the_request_head_share_one_deadline() {
    let (up, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = round_robin(&[up])
        .handshake_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // A TLS handshake that takes 8 s of the 10.
    let slow_tls = |tcp: TcpStream| async move {
        tokio::time::sleep(Duration::from_secs(8)).await;
        Ok(tcp)
    };
    let server = tokio::spawn(Server::new(proxy).serve_with(listener, slow_tls, async {
        let _ = stopped.await;
    }));
    let started = tokio::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut answer = Vec::new();
    within(
        Duration::from_secs(30),
        "the 408",
        s.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || status(&answer) == "408", "{answer}");
    // Virtual time: ten seconds from accept, not ten after the handshake.
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(11), "{waited:?}");
    let _ = stop.send(());
    within(Duration::from_secs(120), "server stop", server)
        .await
        .unwrap()
        .unwrap();
}

// Family: chunked bodies
//
// Request smuggling through chunk framing (issue 13 §2): sizes a lax backend
// overflows or truncates, transfer codings proxies disagree on, extensions
// with control bytes. The proxy re-frames chunked bodies, refuses what it
// cannot re-frame and holds bodies to `client_max_body_size`.
mod chunked_bodies {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use wsproxy::balance::{RoundRobin, Upstream};
    use wsproxy::server::Server;
    use wsproxy::{Proxy, ProxyBuilder};

    /// Every wait here is bounded by this.
    const WAIT: Duration = Duration::from_secs(10);

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

    /// A raw upstream: answers 200 once it has read the end of a chunked
    /// body (or the peer closes), then records every byte it was sent until
    /// the proxy closes.
    struct Recorder {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Recorder {
        async fn start(until: &'static [u8]) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (count, record) = (accepted.clone(), seen.clone());
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let record = record.clone();
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        let mut buf = [0u8; 4096];
                        let mut answered = false;
                        let _ = tokio::time::timeout(WAIT, async {
                            loop {
                                if !answered && got.windows(until.len()).any(|w| w == until) {
                                    answered = true;
                                    let _ = s.write_all(OK).await;
                                }
                                match s.read(&mut buf).await {
                                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                                    _ => break,
                                }
                            }
                        })
                        .await;
                        record.lock().unwrap().push(got);
                    });
                }
            });
            Self {
                addr,
                accepted,
                seen,
            }
        }

        /// What the upstream received on its only connection, once the
        /// proxy closed it.
        async fn only_request(&self) -> String {
            tokio::time::timeout(WAIT, async {
                while self.seen.lock().unwrap().is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the upstream's connection ends");
            let seen = self.seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(self.accepted.load(Ordering::SeqCst), 1);
            String::from_utf8_lossy(&seen[0]).into_owned()
        }

        fn connections(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    fn proxy_to(upstream: &Recorder) -> ProxyBuilder {
        let set = [Upstream::new(upstream.addr)].into_iter().collect();
        Proxy::builder().upstream(RoundRobin::new(set))
    }

    /// Serves `builder` on a loopback listener; returns its address.
    async fn start(builder: ProxyBuilder) -> SocketAddr {
        let proxy = builder.build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(Server::new(proxy).serve(listener, std::future::pending()));
        addr
    }

    /// Sends `request` and reads the answer until the proxy closes.
    async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
            .await
            .expect("the proxy answers and closes");
        String::from_utf8_lossy(&got).into_owned()
    }

    const HEAD: &str =
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

    #[tokio::test]
    async fn huge_chunk_sizes_are_400_and_the_smuggled_request_never_reaches_the_upstream() {
        for size in ["ffffffffffffffff", "8000000000000000"] {
            // With nginx's default limit and with none: the size bound holds
            // either way.
            for limit in [1024 * 1024, 0] {
                let upstream = Recorder::start(b"0\r\n\r\n").await;
                let proxy = start(proxy_to(&upstream).client_max_body_size(limit)).await;
                let request = format!("{HEAD}{size}\r\n{SMUGGLED}0\r\n\r\n{SMUGGLED}");
                let answer = exchange(proxy, request.as_bytes()).await;
                assert!(answer.starts_with("HTTP/1.1 400 "), "{size}: {answer}");
                assert!(answer.contains("chunk size too large"), "{answer}");
                let got = upstream.only_request().await;
                assert!(got.ends_with("\r\n\r\n"), "only the head went: {got}");
                assert!(!got.contains("smuggled"), "{size}: {got}");
                assert!(!got.contains(size), "{size}: {got}");
            }
        }
    }

    #[tokio::test]
    async fn a_chunk_of_2_pow_32_plus_5_is_413_before_any_of_it_is_forwarded() {
        let upstream = Recorder::start(b"0\r\n\r\n").await;
        let proxy = start(proxy_to(&upstream)).await;
        let request = format!("{HEAD}100000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
        let answer = exchange(proxy, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(
            answer.contains("request body larger than 1048576 bytes"),
            "{answer}"
        );
        let got = upstream.only_request().await;
        assert!(got.ends_with("\r\n\r\n"), "only the head went: {got}");
        assert!(!got.contains("hello") && !got.contains("smuggled"), "{got}");
    }

    #[tokio::test]
    async fn chunk_sizes_add_up_against_the_limit() {
        let upstream = Recorder::start(b"0\r\n\r\n").await;
        let proxy = start(proxy_to(&upstream).client_max_body_size(8)).await;
        let request = format!("{HEAD}5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n");
        let answer = exchange(proxy, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        let got = upstream.only_request().await;
        // The first chunk fit and went; nothing of the second did (not
        // even the CRLF closing the first: it goes out with the next size).
        assert!(got.ends_with("\r\n\r\n5\r\nhello"), "{got}");
    }

    #[tokio::test]
    async fn transfer_encodings_other_than_one_chunked_are_refused_before_connecting() {
        let cases = [
            ("Transfer-Encoding: identity, chunked\r\n", "501"),
            ("Transfer-Encoding: gzip, chunked\r\n", "501"),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "400",
            ),
            (
                "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
                "400",
            ),
            ("Transfer-Encoding: chunked, identity\r\n", "400"),
        ];
        for (fields, status) in cases {
            let upstream = Recorder::start(b"0\r\n\r\n").await;
            let proxy = start(proxy_to(&upstream)).await;
            let request =
                format!("POST /up HTTP/1.1\r\nHost: a\r\n{fields}\r\n5\r\nhello\r\n0\r\n\r\n");
            let answer = exchange(proxy, request.as_bytes()).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{fields:?}: {answer}"
            );
            assert_eq!(upstream.connections(), 0, "{fields:?}");
        }
    }

    #[tokio::test]
    async fn control_bytes_in_chunk_extensions_are_400_and_not_forwarded() {
        for byte in ["\x00", "\x01", "\x1b", "\x7f"] {
            let upstream = Recorder::start(b"0\r\n\r\n").await;
            let proxy = start(proxy_to(&upstream)).await;
            let request = format!("{HEAD}5;a={byte}b\r\nhello\r\n0\r\n\r\n");
            let answer = exchange(proxy, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 400 "), "{byte:?}: {answer}");
            assert!(answer.contains("in chunk extension"), "{answer}");
            let got = upstream.only_request().await;
            assert!(got.ends_with("\r\n\r\n"), "{byte:?}: {got}");
        }
    }

    #[tokio::test]
    async fn a_valid_chunked_body_arrives_reframed_without_extensions_or_trailers() {
        let upstream = Recorder::start(b"0\r\n\r\n").await;
        let proxy = start(proxy_to(&upstream)).await;
        let request = format!(
            "{HEAD}005;name=\"v\"\r\nhello\r\nB ; x\r\n world, 2nd\r\n0;last\r\nX-Real-IP: 6.6.6.6\r\n\r\n"
        );
        let answer = exchange(proxy, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        let got = upstream.only_request().await;
        assert!(
            got.to_ascii_lowercase()
                .contains("\r\ntransfer-encoding: chunked\r\n"),
            "{got}"
        );
        assert!(
            got.ends_with("\r\n\r\n5\r\nhello\r\nb\r\n world, 2nd\r\n0\r\n\r\n"),
            "{got}"
        );
        assert!(!got.contains("6.6.6.6"), "trailers are dropped: {got}");
    }

    #[tokio::test]
    async fn a_content_length_over_the_limit_is_413_and_nothing_reaches_the_upstream() {
        let upstream = Recorder::start(b"\r\n\r\n").await;
        let proxy = start(proxy_to(&upstream)).await;
        let answer = exchange(
            proxy,
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\nfirst bytes",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        // nginx answers 413 rather than 100 Continue, too.
        let answer = exchange(
            proxy,
            b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert_eq!(upstream.connections(), 0);

        // Exactly the limit goes through; one byte more does not.
        let upstream = Recorder::start(b"hello").await;
        let proxy = start(proxy_to(&upstream).client_max_body_size(5)).await;
        let over = exchange(
            proxy,
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nhello!",
        )
        .await;
        assert!(over.starts_with("HTTP/1.1 413 "), "{over}");
        assert_eq!(upstream.connections(), 0);
        let fits = exchange(
            proxy,
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert!(fits.starts_with("HTTP/1.1 200 "), "{fits}");
        assert!(upstream.only_request().await.ends_with("\r\n\r\nhello"));
    }
}
