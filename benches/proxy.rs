//! Handshakes and messages per second through `Proxy` (via `Server`) against
//! the same client talking to the echo backend directly, in one run.
//!
//! Layout: the proxy runs on its own thread with a `current_thread` runtime
//! (one worker, like the anchors' nginx and HAProxy); the WebSocket clients
//! (tokio-tungstenite) and the echo backend run on a second thread. Besides
//! raw rates, the proxy thread's CPU time (`/proc/thread-self/schedstat`)
//! gives work per proxy-CPU-second, the steadier figure on a shared machine.
//!
//! ```sh
//! cargo bench --bench proxy -- --secs 3 --rounds 3
//! ```

#[path = "support/echo.rs"]
mod echo;

use echo::{start_echo_backend, thread_cpu_ns};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsproxy::server::Server;

#[derive(Debug, Parser)]
struct Args {
    /// Measurement window per run, seconds.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Runs per target and load, alternating; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Messages in flight per connection in the message load.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Measure for real (`cargo bench` passes it); without it, a short
    /// smoke run, as under `cargo test --all-targets`.
    #[arg(long)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// Connect, upgrade, one 64 B echo, close; in a loop per client.
    Handshakes,
    /// 1 KiB binary echoes on open connections, `window` in flight each.
    Messages,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    per_s: f64,
    per_proxy_cpu_s: Option<f64>,
}

fn main() {
    let mut args = Args::parse();
    // With `--features metrics`, a real recorder, so that the figures'
    // cost is measured, not the no-op recorder's.
    #[cfg(feature = "metrics")]
    let _prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("metrics recorder");
    if !args.bench {
        args.secs = 0.2;
        args.rounds = 1;
        args.clients = 4;
    }
    let (proxy_addr, cpu) = start_proxy_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async {
        let backend = start_echo_backend().await;
        proxy_addr.0.send(backend).expect("proxy thread alive");
        let proxy = proxy_addr.1.recv().expect("proxy address");
        println!(
            "{:<10} {:<7} {:>14} {:>16} {:>8}",
            "load", "target", "per second", "per proxy-CPU-s", "ratio"
        );
        for load in [Load::Handshakes, Load::Messages] {
            let mut direct = Vec::new();
            let mut proxied = Vec::new();
            for _ in 0..args.rounds {
                direct.push(run(load, backend, &args, None).await);
                proxied.push(run(load, proxy, &args, Some(&cpu)).await);
            }
            let d = median(direct.iter().map(|s| s.per_s));
            let p = median(proxied.iter().map(|s| s.per_s));
            let p_cpu = median(proxied.iter().filter_map(|s| s.per_proxy_cpu_s));
            println!(
                "{:<10} {:<7} {:>14.0} {:>16} {:>8}",
                name(load),
                "direct",
                d,
                "-",
                "1.00"
            );
            println!(
                "{:<10} {:<7} {:>14.0} {:>16.0} {:>8.2}",
                name(load),
                "proxy",
                p,
                p_cpu,
                p / d
            );
        }
    });
}

fn name(load: Load) -> &'static str {
    match load {
        Load::Handshakes => "handshake",
        Load::Messages => "1k-echo",
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The proxy thread's address channel: the client side sends the backend
/// address, the proxy side answers with its listening address.
type AddrChannel = (mpsc::Sender<SocketAddr>, mpsc::Receiver<SocketAddr>);

/// Starts the proxy on its own thread; returns the address channel and the
/// proxy thread's CPU clock.
fn start_proxy_thread() -> (AddrChannel, Arc<AtomicU64>) {
    let (to_proxy, from_client) = mpsc::channel::<SocketAddr>();
    let (to_client, from_proxy) = mpsc::channel::<SocketAddr>();
    let cpu = Arc::new(AtomicU64::new(0));
    let cpu_out = cpu.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("proxy runtime");
        rt.block_on(async move {
            let backend = from_client.recv().expect("backend address");
            let (proxy, listener) = echo::proxy_to(backend).await;
            to_client
                .send(listener.local_addr().expect("addr"))
                .expect("client thread alive");
            // Publish this thread's CPU time every 10 ms for the client side.
            tokio::spawn(async move {
                loop {
                    cpu_out.store(thread_cpu_ns(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            let _ = Server::new(proxy)
                .serve(listener, std::future::pending())
                .await;
        });
    });
    ((to_proxy, from_proxy), cpu)
}

async fn run(load: Load, target: SocketAddr, args: &Args, cpu: Option<&AtomicU64>) -> Sample {
    let url = Arc::new(format!("ws://{target}/"));
    let done = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs_f64(args.secs);
    let mut clients = Vec::new();
    // Connections for the message load open before the window starts.
    let start_at = Instant::now() + Duration::from_millis(300);
    for _ in 0..args.clients {
        let (url, done) = (url.clone(), done.clone());
        let in_flight = args.window;
        clients.push(tokio::spawn(async move {
            match load {
                Load::Handshakes => handshakes(&url, &done, start_at, window).await,
                Load::Messages => messages(&url, &done, start_at, window, in_flight).await,
            }
        }));
    }
    tokio::time::sleep_until(start_at.into()).await;
    let cpu_before = cpu.map(|c| c.load(Ordering::Relaxed));
    let before = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let count = done.load(Ordering::Relaxed) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    // Let the proxy publish its clock once more after the window.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cpu_s = cpu
        .zip(cpu_before)
        .map(|(c, b)| c.load(Ordering::Relaxed).saturating_sub(b) as f64 / 1e9);
    for c in clients {
        let _ = c.await;
    }
    Sample {
        per_s: count as f64 / elapsed,
        per_proxy_cpu_s: cpu_s.filter(|s| *s > 0.0).map(|s| count as f64 / s),
    }
}

async fn handshakes(url: &str, done: &AtomicU64, start_at: Instant, window: Duration) {
    tokio::time::sleep_until(start_at.into()).await;
    let end = Instant::now() + window;
    let payload = vec![7u8; 64];
    while Instant::now() < end {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
            continue;
        };
        let ok = ws.send(Message::binary(payload.clone())).await.is_ok()
            && matches!(ws.next().await, Some(Ok(Message::Binary(b))) if b.len() == 64);
        let _ = ws.close(None).await;
        if ok {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn messages(
    url: &str,
    done: &AtomicU64,
    start_at: Instant,
    window: Duration,
    in_flight: usize,
) {
    let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    tokio::time::sleep_until(start_at.into()).await;
    let end = Instant::now() + window;
    let payload = vec![1u8; 1024];
    for _ in 0..in_flight {
        if tx.send(Message::binary(payload.clone())).await.is_err() {
            return;
        }
    }
    while let Some(Ok(msg)) = rx.next().await {
        if msg.len() != 1024 {
            continue;
        }
        done.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= end {
            break;
        }
        if tx.send(Message::binary(payload.clone())).await.is_err() {
            break;
        }
    }
    let _ = tx.close().await;
}
