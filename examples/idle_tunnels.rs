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
//! ```sh
//! cargo run --release --example idle_tunnels -- --conns 9900 --mode tunnel
//! cargo run --release --example idle_tunnels -- --conns 9900 --mode copy
//! ```

use std::future::Future;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use wsproxy::tunnel::{tunnel, TunnelConfig};

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
        Some(proxy) => rt.block_on(peer(proxy, args.conns)),
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

async fn proxy(args: &Args) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--peer",
            &addr.to_string(),
            "--conns",
            &args.conns.to_string(),
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

    let before = rss_bytes()?;
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
            }
        }
    });

    match line_rx.recv().await.as_deref() {
        Some("ready") => {}
        other => return Err(io::Error::other(format!("peer failed: {other:?}"))),
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let held = rss_bytes()?;
    let n = live.load(Ordering::Relaxed);
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
    accept.abort();
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
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
async fn peer(proxy: SocketAddr, conns: usize) -> io::Result<()> {
    let backend = TcpListener::bind("127.0.0.2:0").await?;
    println!("backend {}", backend.local_addr()?);
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

    // 100 connects in flight, as wsbench's idle test.
    let gate = Arc::new(Semaphore::new(100));
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
    // Hold until the proxy closes our stdin.
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    drop(held);
    Ok(())
}
