//! Idle memory per tunnel: opens N live, idle tunnels over loopback and
//! prints this process's RSS growth per tunnel, through `wsproxy::tunnel`
//! or through `tokio::io::copy_bidirectional` (`--mode copy`).
//!
//! The clients and the echo backends run in a second process (this same
//! binary, re-executed with `--peer`), so that the proxy process holds only
//! the proxy's sockets and state: two fds per tunnel, 9,900 tunnels under
//! the 20,000 fd limit. Each tunnel carries one small message each way
//! before it goes idle. The proxy runs on a `current_thread` runtime, like
//! `bench/naive-proxy`.
//!
//! `--mode server` measures the whole proxy instead: `Server` + `Proxy` at
//! their defaults (frames tracked, upstream read and send timeouts, the
//! gateway's tunnel settings), real WebSocket upgrades from
//! tokio-tungstenite clients to a tokio-tungstenite echo backend, on this
//! runtime or on `--workers N` per-core workers as the gateway runs.
//!
//! A counting allocator also reports the heap blocks each idle tunnel
//! holds, by size, and what glibc's malloc adds to each (its 8-byte chunk
//! header and 16-byte rounding, 32 bytes at least).
//!
//! ```sh
//! cargo run --release --example idle_tunnels -- --conns 9900 --mode tunnel
//! cargo run --release --example idle_tunnels -- --conns 9900 --mode copy
//! cargo run --release --example idle_tunnels -- --conns 9900 --mode server --workers 2
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
use wsproxy::server::Server;
use wsproxy::tunnel::{tunnel, TunnelConfig};
use wsproxy::Proxy;

/// Live heap blocks by requested size (the last slot gathers the larger
/// ones), so that the blocks an idle tunnel holds can be read off as the
/// difference between two snapshots.
const SIZE_SLOTS: usize = 16_384;
static LIVE: [AtomicI64; SIZE_SLOTS] = [const { AtomicI64::new(0) }; SIZE_SLOTS];
static LIVE_LARGE_BYTES: AtomicI64 = AtomicI64::new(0);

struct Counting;

fn count(size: usize, delta: i64) {
    LIVE[size.min(SIZE_SLOTS - 1)].fetch_add(delta, Ordering::Relaxed);
    if size >= SIZE_SLOTS - 1 {
        LIVE_LARGE_BYTES.fetch_add(delta * size as i64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` with the caller's arguments;
// the counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_blocks() -> Vec<i64> {
    LIVE.iter().map(|n| n.load(Ordering::Relaxed)).collect()
}

/// glibc malloc's chunk for a request of `size` on 64-bit: an 8-byte
/// header, rounded up to 16, at least 32.
fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

/// Prints the blocks held per tunnel between two snapshots, by size.
fn print_blocks(before: &[i64], after: &[i64], large_bytes: i64, n: usize) {
    let n = n.max(1) as f64;
    let (mut asked, mut held) = (0.0, 0.0);
    println!("live heap blocks per idle tunnel (bytes asked: blocks, malloc chunk):");
    for size in (0..SIZE_SLOTS).rev() {
        let blocks = (after[size] - before[size]) as f64 / n;
        if size == SIZE_SLOTS - 1 {
            asked += large_bytes as f64 / n;
            held += large_bytes as f64 / n;
            if blocks.abs() >= 0.01 {
                println!("  >= {size}: {blocks:.2} ({:.0} B)", large_bytes as f64 / n);
            }
            continue;
        }
        asked += blocks * size as f64;
        held += blocks * chunk(size) as f64;
        if blocks.abs() >= 0.05 {
            println!("  {size:>6}: {blocks:.2} (chunk {})", chunk(size));
        }
    }
    println!("heap per idle tunnel: {asked:.0} B asked, {held:.0} B in malloc chunks");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `wsproxy::tunnel` with nginx's classic timeouts
    /// (`proxy_read_timeout 7200s`, `proxy_send_timeout 12s`).
    Tunnel,
    /// `tokio::io::copy_bidirectional`, as `bench/naive-proxy`.
    Copy,
    /// No relay: the task just holds both sockets (after relaying the first
    /// message with `tunnel`). The floor any tokio relay pays per connection.
    Hold,
    /// `Server` + `Proxy` at their defaults with real WebSocket upgrades,
    /// the gateway's path.
    Server,
}

#[derive(Debug, Parser)]
struct Args {
    /// Tunnels to open and hold.
    #[arg(long, default_value_t = 9_900)]
    conns: usize,
    /// The relay the proxy uses.
    #[arg(long, value_enum, default_value = "tunnel")]
    mode: Mode,
    /// Spawn the relay as its own task once the upstream is connected, so
    /// the task holds only the relay future (not the connect state too).
    #[arg(long)]
    spawn_relay: bool,
    /// Run the tunnel without any timeout (no timer per tunnel).
    #[arg(long)]
    no_timeouts: bool,
    /// With `--mode server`: serve on this many per-core workers
    /// (`Server::per_core`, the gateway's layout) instead of this runtime.
    #[arg(long)]
    workers: Option<usize>,
    /// Connects in flight at once (100: wsbench's idle test; 1 shows what
    /// is left between the blocks without concurrent handshakes).
    #[arg(long, default_value_t = 100)]
    connecting: usize,
    /// Seconds to hold the idle tunnels before measuring.
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
    /// Internal: run as the client/backend process, connecting to this proxy.
    #[arg(long, hide = true)]
    peer: Option<SocketAddr>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.peer {
        Some(proxy) => rt.block_on(peer(proxy, args.conns, args.connecting, args.mode)),
        None => rt.block_on(proxy(&args)),
    }
}

fn rss_bytes() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/self/status"))
}

/// Resident bytes of the main heap (`[heap]`, where glibc's main arena
/// grows) and of everything else, from `/proc/self/smaps`.
fn rss_split() -> io::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let (mut heap, mut other, mut in_heap) = (0, 0, false);
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if in_heap {
                heap += kb * 1024;
            } else {
                other += kb * 1024;
            }
        } else if !line
            .split_whitespace()
            .next()
            .is_some_and(|k| k.ends_with(':'))
        {
            in_heap = line.ends_with("[heap]");
        }
    }
    Ok((heap, other))
}

async fn proxy(args: &Args) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--peer",
            &addr.to_string(),
            "--conns",
            &args.conns.to_string(),
            "--connecting",
            &args.connecting.to_string(),
            "--mode",
            if args.mode == Mode::Server {
                "server"
            } else {
                "tunnel"
            },
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no child stdout"))?;
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let backend: SocketAddr = line_rx
        .recv()
        .await
        .and_then(|l| l.strip_prefix("backend ").and_then(|a| a.parse().ok()))
        .ok_or_else(|| io::Error::other("peer did not report its backend"))?;

    let served = match args.mode {
        Mode::Server => Some(start_server(backend, args.workers).await?),
        _ => None,
    };
    let listener = match &served {
        // The server accepts on its own listener: tell the peer where.
        Some((addr, _)) => {
            println!("proxy {addr}");
            None
        }
        None => Some(listener),
    };
    let proxy_addr = served.as_ref().map_or(addr, |(a, _)| *a);
    let Some(stdin) = child.stdin.as_mut() else {
        return Err(io::Error::other("no child stdin"));
    };
    std::io::Write::write_all(stdin, format!("{proxy_addr}\n").as_bytes())?;

    let before = rss_bytes()?;
    let split_before = rss_split()?;
    let blocks_before = live_blocks();
    let large_before = LIVE_LARGE_BYTES.load(Ordering::Relaxed);
    let live = Arc::new(AtomicUsize::new(0));
    let mode = args.mode;
    // Shared by every connection, as a host application shares its config.
    let config = Arc::new(if args.no_timeouts {
        TunnelConfig::new()
    } else {
        TunnelConfig::new()
            .upstream_read_timeout(Duration::from_secs(7200))
            .send_timeout(Duration::from_secs(12))
    });
    let spawn_relay = args.spawn_relay;
    let accept_live = live.clone();
    let accept = tokio::spawn(async move {
        let mut printed = false;
        let Some(listener) = listener else {
            return;
        };
        while let Ok((client, _)) = listener.accept().await {
            let live = accept_live.clone();
            match mode {
                Mode::Tunnel => spawn_sized(
                    &mut printed,
                    serve_tunnel(client, backend, config.clone(), spawn_relay, live),
                ),
                Mode::Copy => {
                    spawn_sized(&mut printed, serve_copy(client, backend, spawn_relay, live))
                }
                Mode::Hold => {
                    spawn_sized(&mut printed, serve_hold(client, backend, spawn_relay, live))
                }
                Mode::Server => {}
            }
        }
    });

    match line_rx.recv().await.as_deref() {
        Some("ready") => {}
        other => return Err(io::Error::other(format!("peer failed: {other:?}"))),
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let held = rss_bytes()?;
    let split_held = rss_split()?;
    let blocks_held = live_blocks();
    let large_held = LIVE_LARGE_BYTES.load(Ordering::Relaxed);
    let n = match &served {
        Some((_, proxy)) => proxy.counters().tunnels_active as usize,
        None => live.load(Ordering::Relaxed),
    };
    let growth = held.saturating_sub(before);
    println!(
        "mode {:?}{}{}: {n} idle tunnels, RSS before {:.1} MiB, held {:.1} MiB, growth {} B per tunnel",
        mode,
        if spawn_relay { " (relay task)" } else { "" },
        if args.no_timeouts { " no timeouts" } else { "" },
        before as f64 / 1048576.0,
        held as f64 / 1048576.0,
        growth / n.max(1) as u64
    );
    println!(
        "RSS growth per tunnel: {} B in [heap], {} B elsewhere",
        split_held.0.saturating_sub(split_before.0) / n.max(1) as u64,
        split_held.1.saturating_sub(split_before.1) / n.max(1) as u64,
    );
    print_blocks(&blocks_before, &blocks_held, large_held - large_before, n);
    // What of the growth is whole free pages inside the heap: glibc hands
    // them back on `malloc_trim`, which nothing calls in a running proxy.
    // SAFETY: glibc's `malloc_trim` takes a pad size and touches only the
    // allocator's own state.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        unsafe { malloc_trim(0) };
        let trimmed = rss_split()?;
        println!(
            "after malloc_trim(0): {} B per tunnel in [heap]",
            trimmed.0.saturating_sub(split_before.0) / n.max(1) as u64
        );
    }
    accept.abort();
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}

/// Serves `backend` through a default `Server` + `Proxy`, here or on
/// `workers` per-core threads; the listener's address and the proxy.
async fn start_server(
    backend: SocketAddr,
    workers: Option<usize>,
) -> io::Result<(SocketAddr, Proxy)> {
    let set: UpstreamSet = [Upstream::new(backend)].into_iter().collect();
    let proxy = Proxy::builder()
        .upstream(RoundRobin::new(set))
        .build()
        .map_err(io::Error::other)?;
    let server = Server::new(proxy.clone()).max_connections(20_000);
    let addr = match workers {
        Some(n) => {
            let bound = server
                .per_core()
                .threads(n)
                .bind("127.0.0.1:0".parse().map_err(io::Error::other)?)?;
            let addr = bound.local_addr();
            tokio::spawn(bound.serve(std::future::pending()));
            addr
        }
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(server.serve(listener, std::future::pending()));
            addr
        }
    };
    Ok((addr, proxy))
}

/// Spawns one connection's task, printing the size of the first one.
fn spawn_sized(printed: &mut bool, task: impl Future<Output = ()> + Send + 'static) {
    if !*printed {
        *printed = true;
        println!(
            "per-connection task future: {} bytes",
            std::mem::size_of_val(&task)
        );
    }
    tokio::spawn(task);
}

async fn connect(client: &TcpStream, backend: SocketAddr) -> Option<TcpStream> {
    let upstream = TcpStream::connect(backend).await.ok()?;
    client.set_nodelay(true).ok()?;
    upstream.set_nodelay(true).ok()?;
    Some(upstream)
}

async fn serve_tunnel(
    client: TcpStream,
    backend: SocketAddr,
    config: Arc<TunnelConfig>,
    spawn_relay: bool,
    live: Arc<AtomicUsize>,
) {
    let Some(upstream) = connect(&client, backend).await else {
        return;
    };
    live.fetch_add(1, Ordering::Relaxed);
    let relay = tunnel(client, upstream, &config, std::future::pending());
    if spawn_relay {
        tokio::spawn(relay);
    } else {
        relay.await;
    }
}

// The spawn-or-await choice is spelled out in each `serve_*`: a shared
// `async fn` taking the relay would keep it twice in the connection's task
// (120 bytes more per tunnel measured), skewing the figure this example is for.
async fn serve_copy(
    mut client: TcpStream,
    backend: SocketAddr,
    spawn_relay: bool,
    live: Arc<AtomicUsize>,
) {
    let Some(mut upstream) = connect(&client, backend).await else {
        return;
    };
    live.fetch_add(1, Ordering::Relaxed);
    let relay = async move {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    };
    if spawn_relay {
        tokio::spawn(relay);
    } else {
        relay.await;
    }
}

async fn serve_hold(
    mut client: TcpStream,
    backend: SocketAddr,
    spawn_relay: bool,
    live: Arc<AtomicUsize>,
) {
    let Some(mut upstream) = connect(&client, backend).await else {
        return;
    };
    live.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 64];
    let Ok(n) = client.read(&mut buf).await else {
        return;
    };
    let _ = upstream.write_all(&buf[..n]).await;
    let Ok(n) = upstream.read(&mut buf).await else {
        return;
    };
    let _ = client.write_all(&buf[..n]).await;
    let held = async move {
        let _sockets = (client, upstream);
        std::future::pending::<()>().await;
    };
    if spawn_relay {
        tokio::spawn(held);
    } else {
        held.await;
    }
}

/// The second process: echo backends and clients.
async fn peer(proxy: SocketAddr, conns: usize, connecting: usize, mode: Mode) -> io::Result<()> {
    let backend = TcpListener::bind("127.0.0.2:0").await?;
    println!("backend {}", backend.local_addr()?);
    // The proxy says where to connect once its server listens.
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let proxy: SocketAddr = line.trim().parse().unwrap_or(proxy);
    if mode == Mode::Server {
        return peer_websockets(proxy, backend, conns, connecting).await;
    }
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let gate = Arc::new(Semaphore::new(connecting));
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.ok();
            let mut s = TcpStream::connect(proxy).await?;
            s.set_nodelay(true)?;
            s.write_all(b"hello").await?;
            let mut echo = [0u8; 5];
            s.read_exact(&mut echo).await?;
            if &echo != b"hello" {
                return Err(io::Error::other("bad echo"));
            }
            Ok::<_, io::Error>(s)
        }));
    }
    let mut held = Vec::with_capacity(conns);
    for t in tasks {
        held.push(t.await.map_err(io::Error::other)??);
    }
    println!("ready");
    hold(held).await
}

/// Holds `held` until the proxy closes our stdin.
async fn hold<T>(held: Vec<T>) -> io::Result<()> {
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    drop(held);
    Ok(())
}

/// The peer of `--mode server`: a WebSocket echo backend and WebSocket
/// clients that each upgrade through the proxy, echo one message and idle.
async fn peer_websockets(
    proxy: SocketAddr,
    backend: TcpListener,
    conns: usize,
    connecting: usize,
) -> io::Result<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let url = format!("ws://{proxy}/");
    let gate = Arc::new(Semaphore::new(connecting));
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let gate = gate.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.ok();
            let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .map_err(io::Error::other)?;
            ws.send(Message::text("hello"))
                .await
                .map_err(io::Error::other)?;
            match ws.next().await {
                Some(Ok(m)) if m.is_text() => Ok::<_, io::Error>(ws),
                other => Err(io::Error::other(format!("bad echo {other:?}"))),
            }
        }));
    }
    let mut held = Vec::with_capacity(conns);
    for t in tasks {
        held.push(t.await.map_err(io::Error::other)??);
    }
    println!("ready");
    hold(held).await
}
