//! The tunnel over `tokio::io::duplex` and loopback TCP: ordering, half-close,
//! every timeout on the paused clock, shutdown, errors and cleanup.

use std::future::{pending, Future};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use wsproxy::tunnel::{tunnel, Prefixed, Side, Timeout, TunnelConfig, TunnelEnd, TunnelStats};

/// Bound for every wait. On the paused clock it is virtual time, so it is
/// far above any tunnel timeout in these tests.
const BOUND: Duration = Duration::from_secs(3600);
/// Bound for waits on real sockets (no paused clock there).
const REAL_BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    timeout(BOUND, fut).await.expect("wait exceeded its bound")
}

/// Two duplex pairs with a tunnel between them: (browser, backend, tunnel).
fn duplex_tunnel(
    capacity: usize,
    config: TunnelConfig,
) -> (DuplexStream, DuplexStream, JoinHandle<TunnelStats>) {
    duplex_tunnel_with(capacity, capacity, config, pending())
}

fn duplex_tunnel_with(
    client_capacity: usize,
    upstream_capacity: usize,
    config: TunnelConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (DuplexStream, DuplexStream, JoinHandle<TunnelStats>) {
    let (client, browser) = duplex(client_capacity);
    let (upstream, backend) = duplex(upstream_capacity);
    let task = tokio::spawn(async move { tunnel(client, upstream, &config, shutdown).await });
    (browser, backend, task)
}

async fn read_exact_bounded(stream: &mut (impl AsyncReadExt + Unpin), n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    bounded(stream.read_exact(&mut buf)).await.unwrap();
    buf
}

/// Asserts the peer sees the stream closed: EOF or a reset, never data.
async fn assert_closed(stream: &mut (impl AsyncReadExt + Unpin)) {
    let mut buf = [0u8; 64];
    match bounded(stream.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected closure, read {n} bytes"),
    }
}

/// Random-ish bytes (xorshift), different per seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

#[tokio::test]
async fn prefix_bytes_arrive_first_on_both_sides() {
    let (client, mut browser) = duplex(64);
    let (upstream, mut backend) = duplex(64);
    let client = Prefixed::new(Bytes::from_static(b"hello "), client);
    let upstream = Prefixed::new(Bytes::from_static(b"welcome "), upstream);
    let task =
        tokio::spawn(
            async move { tunnel(client, upstream, &TunnelConfig::default(), pending()).await },
        );

    browser.write_all(b"world").await.unwrap();
    browser.shutdown().await.unwrap();
    let mut got = Vec::new();
    bounded(backend.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hello world");

    backend.write_all(b"back").await.unwrap();
    backend.shutdown().await.unwrap();
    let mut got = Vec::new();
    bounded(browser.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"welcome back");

    let stats = bounded(task).await.unwrap();
    assert!(matches!(stats.end, TunnelEnd::ClientEof), "{:?}", stats.end);
    assert_eq!(stats.first_eof, Some(Side::Client));
    assert_eq!(stats.client_to_upstream, 11);
    assert_eq!(stats.upstream_to_client, 12);
}

#[tokio::test]
async fn sixteen_mib_each_way_arrive_byte_exact_over_tcp() {
    const LEN: usize = 16 << 20;
    let (mut browser, client) = tcp_pair().await;
    let (upstream, mut backend) = tcp_pair().await;
    let task =
        tokio::spawn(
            async move { tunnel(client, upstream, &TunnelConfig::default(), pending()).await },
        );
    let up = pattern(1, LEN);
    let down = pattern(2, LEN);

    let (mut b_read, mut b_write) = browser.split();
    let (mut k_read, mut k_write) = backend.split();
    let browser_side = async {
        let write = async {
            // Uneven chunk sizes, so reads and writes never line up.
            for chunk in up.chunks(65_521) {
                b_write.write_all(chunk).await.unwrap();
            }
            b_write.shutdown().await.unwrap();
        };
        let read = async {
            let mut got = Vec::with_capacity(LEN);
            b_read.read_to_end(&mut got).await.unwrap();
            got
        };
        tokio::join!(write, read).1
    };
    let backend_side = async {
        let write = async {
            for chunk in down.chunks(1_031) {
                k_write.write_all(chunk).await.unwrap();
            }
            k_write.shutdown().await.unwrap();
        };
        let read = async {
            let mut got = Vec::with_capacity(LEN);
            k_read.read_to_end(&mut got).await.unwrap();
            got
        };
        tokio::join!(write, read).1
    };
    let (at_browser, at_backend) = timeout(REAL_BOUND, async {
        tokio::join!(browser_side, backend_side)
    })
    .await
    .unwrap();
    assert!(at_backend == up, "client to upstream bytes differ");
    assert!(at_browser == down, "upstream to client bytes differ");

    let stats = timeout(REAL_BOUND, task).await.unwrap().unwrap();
    assert!(stats.end.is_clean(), "{:?}", stats.end);
    assert_eq!(stats.client_to_upstream, LEN as u64);
    assert_eq!(stats.upstream_to_client, LEN as u64);
}

#[tokio::test]
async fn tiny_pipes_force_partial_writes_without_loss() {
    // A 7-byte duplex accepts only part of each chunk: nearly every read
    // leaves a remainder that must be kept and written later, in order.
    let (browser, backend, task) = duplex_tunnel(7, TunnelConfig::default());
    let up = pattern(3, 200_000);
    let down = pattern(4, 150_000);
    let (mut br, mut bw) = tokio::io::split(browser);
    let (mut kr, mut kw) = tokio::io::split(backend);
    let (_, _, at_backend, at_browser) = bounded(async {
        tokio::join!(
            async {
                bw.write_all(&up).await.unwrap();
                bw.shutdown().await.unwrap();
            },
            async {
                kw.write_all(&down).await.unwrap();
                kw.shutdown().await.unwrap();
            },
            async {
                let mut v = Vec::new();
                kr.read_to_end(&mut v).await.unwrap();
                v
            },
            async {
                let mut v = Vec::new();
                br.read_to_end(&mut v).await.unwrap();
                v
            },
        )
    })
    .await;
    assert!(at_backend == up, "client to upstream bytes differ");
    assert!(at_browser == down, "upstream to client bytes differ");
    let stats = bounded(task).await.unwrap();
    assert!(stats.end.is_clean(), "{:?}", stats.end);
    assert_eq!(stats.client_to_upstream, up.len() as u64);
    assert_eq!(stats.upstream_to_client, down.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_pushes_back_on_the_sender() {
    // The tunnel must stop reading while it cannot write, instead of
    // buffering without bound: the sender's writes block.
    let (browser, mut backend, task) = duplex_tunnel(1024, TunnelConfig::default());
    let data = pattern(5, 1 << 20);
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        let mut browser = browser;
        browser.write_all(&data).await.unwrap();
        browser
    });
    still_running_after(Duration::from_secs(60), &task).await;
    assert!(
        !writer.is_finished(),
        "1 MiB went into a tunnel nobody reads"
    );
    let got = read_exact_bounded(&mut backend, expected.len()).await;
    assert!(got == expected);
    let _browser = bounded(writer).await.unwrap();
    assert!(!task.is_finished());
}

/// One side sends and half-closes; the other direction must keep flowing.
async fn half_close_case(client_first: bool) {
    let (browser, backend, task) = duplex_tunnel(1024, TunnelConfig::default());
    let (mut first, mut second) = if client_first {
        (browser, backend)
    } else {
        (backend, browser)
    };
    first.write_all(b"bye").await.unwrap();
    first.shutdown().await.unwrap();
    // The EOF reached the other peer...
    let mut got = Vec::new();
    bounded(second.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"bye");
    // ...and the other direction still works, repeatedly.
    for _ in 0..3 {
        second.write_all(b"late reply").await.unwrap();
        assert_eq!(read_exact_bounded(&mut first, 10).await, b"late reply");
    }
    assert!(!task.is_finished());
    second.shutdown().await.unwrap();
    assert_closed(&mut first).await;

    let stats = bounded(task).await.unwrap();
    let (sent_first, sent_second) = if client_first {
        assert!(matches!(stats.end, TunnelEnd::ClientEof), "{:?}", stats.end);
        assert_eq!(stats.first_eof, Some(Side::Client));
        (stats.client_to_upstream, stats.upstream_to_client)
    } else {
        assert!(
            matches!(stats.end, TunnelEnd::UpstreamEof),
            "{:?}",
            stats.end
        );
        assert_eq!(stats.first_eof, Some(Side::Upstream));
        (stats.upstream_to_client, stats.client_to_upstream)
    };
    assert_eq!((sent_first, sent_second), (3, 30));
}

#[tokio::test]
async fn client_half_close_lets_upstream_keep_sending() {
    half_close_case(true).await;
}

#[tokio::test]
async fn upstream_half_close_lets_client_keep_sending() {
    half_close_case(false).await;
}

/// Waits on the paused clock for `d`, then asserts the tunnel still runs.
async fn still_running_after(d: Duration, task: &JoinHandle<TunnelStats>) {
    sleep(d).await;
    assert!(!task.is_finished(), "the tunnel ended too early");
}

fn ended_by(stats: &TunnelStats, timeout: Timeout) {
    assert!(
        matches!(stats.end, TunnelEnd::Timeout(t) if t == timeout),
        "expected {timeout:?}, got {:?}",
        stats.end
    );
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_both_directions() {
    let config = TunnelConfig::new().idle_timeout(Duration::from_secs(10));
    let (mut browser, mut backend, task) = duplex_tunnel(64, config);
    still_running_after(Duration::from_millis(9_990), &task).await;
    let stats = bounded(task).await.unwrap();
    ended_by(&stats, Timeout::Idle);
    assert!(stats.duration >= Duration::from_secs(10));
    assert!(stats.duration < Duration::from_secs(11));
    assert_closed(&mut browser).await;
    assert_closed(&mut backend).await;
}

#[tokio::test(start_paused = true)]
async fn traffic_either_way_postpones_the_idle_timeout() {
    let config = TunnelConfig::new().idle_timeout(Duration::from_secs(10));
    let (mut browser, mut backend, task) = duplex_tunnel(64, config);
    let start = Instant::now();
    sleep(Duration::from_secs(6)).await;
    browser.write_all(b"ping").await.unwrap();
    assert_eq!(read_exact_bounded(&mut backend, 4).await, b"ping");
    sleep(Duration::from_secs(6)).await;
    backend.write_all(b"pong").await.unwrap();
    assert_eq!(read_exact_bounded(&mut browser, 4).await, b"pong");
    // Last byte at 12 s: the timeout is due at 22 s, not at 10 s or 16 s.
    still_running_after(Duration::from_millis(9_990), &task).await;
    let stats = bounded(task).await.unwrap();
    ended_by(&stats, Timeout::Idle);
    assert!(start.elapsed() >= Duration::from_secs(22));
    assert_eq!((stats.client_to_upstream, stats.upstream_to_client), (4, 4));
    assert_closed(&mut browser).await;
    assert_closed(&mut backend).await;
}

/// The read timeout of `silent` fires although the other side keeps
/// talking, and traffic from `silent` postpones it.
async fn read_timeout_case(silent: Side) {
    let limit = Duration::from_secs(10);
    let config = match silent {
        Side::Client => TunnelConfig::new().client_read_timeout(limit),
        _ => TunnelConfig::new().upstream_read_timeout(limit),
    };
    let (browser, backend, task) = duplex_tunnel(1024, config);
    let (mut quiet, mut chatty) = match silent {
        Side::Client => (browser, backend),
        _ => (backend, browser),
    };
    let start = Instant::now();
    // The quiet side speaks once at 4 s: its deadline moves to 14 s.
    sleep(Duration::from_secs(4)).await;
    quiet.write_all(b"q").await.unwrap();
    assert_eq!(read_exact_bounded(&mut chatty, 1).await, b"q");
    // The other side talks every 3 s; that must not postpone it.
    for _ in 0..3 {
        sleep(Duration::from_secs(3)).await;
        chatty.write_all(b"c").await.unwrap();
        assert_eq!(read_exact_bounded(&mut quiet, 1).await, b"c");
    }
    assert!(!task.is_finished(), "fired before 14 s");
    let stats = bounded(task).await.unwrap();
    ended_by(&stats, Timeout::Read(silent));
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(14) && elapsed < Duration::from_secs(15));
    assert_closed(&mut quiet).await;
    assert_closed(&mut chatty).await;
}

#[tokio::test(start_paused = true)]
async fn client_read_timeout_fires_despite_upstream_traffic() {
    read_timeout_case(Side::Client).await;
}

#[tokio::test(start_paused = true)]
async fn upstream_read_timeout_fires_despite_client_traffic() {
    read_timeout_case(Side::Upstream).await;
}

#[tokio::test(start_paused = true)]
async fn read_timeout_waits_while_the_other_side_is_not_reading() {
    // The client's bytes cannot be written for 20 s (the backend does not
    // read), so the client is not read either: its silence must not count.
    let config = TunnelConfig::new().client_read_timeout(Duration::from_secs(10));
    let (mut browser, mut backend, task) = duplex_tunnel_with(4096, 64, config, pending());
    browser.write_all(&[3u8; 1000]).await.unwrap();
    still_running_after(Duration::from_secs(20), &task).await;
    assert_eq!(read_exact_bounded(&mut backend, 1000).await, [3u8; 1000]);
    let resumed = Instant::now();
    still_running_after(Duration::from_millis(9_900), &task).await;
    let stats = bounded(task).await.unwrap();
    ended_by(&stats, Timeout::Read(Side::Client));
    assert!(resumed.elapsed() < Duration::from_secs(11));
    assert_eq!(stats.client_to_upstream, 1000);
    assert_closed(&mut browser).await;
}

#[tokio::test(start_paused = true)]
async fn send_timeout_fires_when_the_upstream_stops_reading() {
    let config = TunnelConfig::new().send_timeout(Duration::from_secs(5));
    let (mut browser, mut backend, task) = duplex_tunnel_with(4096, 64, config, pending());
    // The backend reads slowly but steadily: progress every 3 s postpones it.
    browser.write_all(&[7u8; 640]).await.unwrap();
    for _ in 0..10 {
        sleep(Duration::from_secs(3)).await;
        assert_eq!(read_exact_bounded(&mut backend, 64).await, [7u8; 64]);
    }
    assert!(!task.is_finished(), "fired while the peer was reading");
    // Now the backend stops reading with a write pending.
    browser.write_all(&[8u8; 640]).await.unwrap();
    let start = Instant::now();
    let stats = bounded(task).await.unwrap();
    ended_by(&stats, Timeout::Send(Side::Upstream));
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(6));
    assert_eq!(stats.client_to_upstream, 640 + 64);
    assert_closed(&mut browser).await;
}

/// A buffering writer (TLS, `BufWriter`) takes bytes it cannot send yet and
/// makes the flush wait instead: once that flush is through, nothing is
/// stalled, and traffic the other way must not meet a send timeout.
#[tokio::test(start_paused = true)]
async fn a_flush_that_waited_once_is_not_a_stall() {
    let config = TunnelConfig::new().send_timeout(Duration::from_secs(1));
    let (client, mut browser) = duplex(4096);
    let (upstream, mut backend) = duplex(64);
    let upstream = tokio::io::BufWriter::new(upstream);
    let task = tokio::spawn(async move { tunnel(client, upstream, &config, pending()).await });
    // 100 bytes fit the writer's buffer, not the pipe: the flush waits
    // until the backend reads.
    browser.write_all(&[5u8; 100]).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    assert_eq!(read_exact_bounded(&mut backend, 100).await, [5u8; 100]);
    // Now only the backend talks, for three send timeouts.
    for i in 0..15u8 {
        backend.write_all(&[i; 10]).await.unwrap();
        assert_eq!(read_exact_bounded(&mut browser, 10).await, [i; 10]);
        sleep(Duration::from_millis(200)).await;
    }
    assert!(!task.is_finished(), "ended: {:?}", task.await.unwrap().end);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn send_timeout_fires_when_the_client_stops_reading() {
    let config = TunnelConfig::new().send_timeout(Duration::from_secs(5));
    let (_browser, mut backend, task) = duplex_tunnel_with(64, 4096, config, pending());
    let start = Instant::now();
    backend.write_all(&[1u8; 1000]).await.unwrap();
    still_running_after(Duration::from_millis(4_990), &task).await;
    let stats = bounded(task).await.unwrap();
    ended_by(&stats, Timeout::Send(Side::Client));
    assert!(start.elapsed() < Duration::from_secs(6));
    assert_eq!(stats.upstream_to_client, 64);
    assert_closed(&mut backend).await;
}

#[tokio::test(start_paused = true)]
async fn linger_timeout_ends_the_direction_left_after_half_close_once_silent() {
    let config = TunnelConfig::new()
        .linger_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(60));
    let (mut browser, mut backend, task) = duplex_tunnel(1024, config);
    browser.shutdown().await.unwrap();
    assert_closed(&mut backend).await;
    // Traffic in the remaining direction postpones the linger, as HAProxy's
    // `client-fin` is an inactivity timeout: 24 s of it, past two lingers.
    for _ in 0..4 {
        sleep(Duration::from_secs(6)).await;
        backend.write_all(b"x").await.unwrap();
        assert_eq!(read_exact_bounded(&mut browser, 1).await, b"x");
    }
    let silent = Instant::now();
    still_running_after(Duration::from_millis(9_900), &task).await;
    let stats = bounded(task).await.unwrap();
    ended_by(&stats, Timeout::Linger);
    assert_eq!(stats.first_eof, Some(Side::Client));
    let elapsed = silent.elapsed();
    assert!(elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(11));
    assert_eq!(stats.upstream_to_client, 4);
    assert_closed(&mut browser).await;
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_ends_a_busy_tunnel() {
    let config = TunnelConfig::new()
        .max_lifetime(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(10));
    let (mut browser, mut backend, task) = duplex_tunnel(1024, config);
    let start = Instant::now();
    for _ in 0..5 {
        sleep(Duration::from_secs(5)).await;
        browser.write_all(b"k").await.unwrap();
        assert_eq!(read_exact_bounded(&mut backend, 1).await, b"k");
    }
    still_running_after(Duration::from_millis(4_900), &task).await;
    let stats = bounded(task).await.unwrap();
    ended_by(&stats, Timeout::Lifetime);
    assert!(start.elapsed() < Duration::from_secs(31));
    assert_closed(&mut browser).await;
    assert_closed(&mut backend).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_future_ends_the_tunnel_and_closes_both_sides() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = TunnelConfig::new().idle_timeout(Duration::from_secs(3600));
    let (mut browser, mut backend, task) = duplex_tunnel_with(64, 64, config, async {
        let _ = rx.await;
    });
    browser.write_all(b"hi").await.unwrap();
    assert_eq!(read_exact_bounded(&mut backend, 2).await, b"hi");
    still_running_after(Duration::from_secs(5), &task).await;
    tx.send(()).unwrap();
    let stats = bounded(task).await.unwrap();
    assert!(matches!(stats.end, TunnelEnd::Shutdown), "{:?}", stats.end);
    assert_eq!(stats.client_to_upstream, 2);
    assert_closed(&mut browser).await;
    assert_closed(&mut backend).await;
}

/// A peer that resets its connection: the tunnel reports the error on that
/// side and closes the other side cleanly.
async fn reset_case(reset: Side) {
    let (browser, client) = tcp_pair().await;
    let (upstream, backend) = tcp_pair().await;
    let task =
        tokio::spawn(
            async move { tunnel(client, upstream, &TunnelConfig::default(), pending()).await },
        );
    let (doomed, mut survivor) = match reset {
        Side::Client => (browser, backend),
        _ => (backend, browser),
    };
    doomed.set_zero_linger().unwrap();
    drop(doomed);
    let mut buf = [0u8; 16];
    let n = timeout(REAL_BOUND, survivor.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the survivor must see EOF");
    let stats = timeout(REAL_BOUND, task).await.unwrap().unwrap();
    match &stats.end {
        TunnelEnd::Error(e) => assert_eq!(e.side(), Some(reset), "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let status = stats.end.into_error().map(|e| e.status());
    let expected = match reset {
        Side::Client => http::StatusCode::BAD_REQUEST,
        _ => http::StatusCode::BAD_GATEWAY,
    };
    assert_eq!(status, Some(expected));
}

#[tokio::test]
async fn client_reset_ends_the_tunnel_and_closes_the_upstream() {
    reset_case(Side::Client).await;
}

#[tokio::test]
async fn upstream_reset_ends_the_tunnel_and_closes_the_client() {
    reset_case(Side::Upstream).await;
}

#[tokio::test]
async fn tunnel_future_holds_no_copy_buffer() {
    let (a, _b) = duplex(64);
    let (c, _d) = duplex(64);
    let fut = tunnel(a, c, &TunnelConfig::default(), pending::<()>());
    // Two 8 KiB buffers would make it > 16 KiB; the state is a few hundred bytes.
    let size = std::mem::size_of_val(&fut);
    assert!(size < 1024, "tunnel future is {size} bytes");
}

/// The upstream writes 64 KiB at once into a tunnel whose client reads
/// 512 bytes every 2 s for 30 s (after half-closing first, if
/// `half_close`), then stops reading. How the tunnel ended, and when
/// (from the upstream's write), or `None` if it still ran at 30 s.
async fn slow_reader(config: TunnelConfig, half_close: bool) -> (Option<Duration>, TunnelStats) {
    let (mut browser, mut backend, task) = duplex_tunnel_with(1024, 128 * 1024, config, pending());
    if half_close {
        browser.shutdown().await.unwrap();
    }
    backend.write_all(&vec![7u8; 64 * 1024]).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let mut ended = None;
    for _ in 0..15 {
        sleep(Duration::from_secs(2)).await;
        if task.is_finished() {
            ended = Some(start.elapsed());
            break;
        }
        let n = bounded(browser.read(&mut buf)).await.unwrap();
        assert!(n > 0, "the tunnel ended the client's stream early");
    }
    // Now nothing moves: the timeout must still end the tunnel.
    let stats = bounded(task).await.unwrap();
    (ended, stats)
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_counts_writes_to_a_slow_reader_as_activity() {
    // No send or read timeout: only the idle one (HAProxy `timeout tunnel`
    // counts both directions' activity, writes included).
    let config = TunnelConfig::new().idle_timeout(Duration::from_secs(10));
    let (ended, stats) = slow_reader(config, false).await;
    assert_eq!(ended, None, "bytes moved every 2 s, yet the tunnel ended");
    assert!(
        matches!(stats.end, TunnelEnd::Timeout(Timeout::Idle)),
        "{:?}",
        stats.end
    );
}

#[tokio::test(start_paused = true)]
async fn linger_timeout_counts_writes_to_a_slow_reader_as_activity() {
    let config = TunnelConfig::new().linger_timeout(Duration::from_secs(5));
    let (ended, stats) = slow_reader(config, true).await;
    assert_eq!(ended, None, "bytes moved every 2 s, yet the tunnel ended");
    assert!(
        matches!(stats.end, TunnelEnd::Timeout(Timeout::Linger)),
        "{:?}",
        stats.end
    );
}
