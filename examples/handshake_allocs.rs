//! Allocator calls per proxied WebSocket handshake, counted on the proxy's
//! thread only.
//!
//! A tokio-tungstenite client connects through `Proxy` + `Server` to a
//! tokio-tungstenite echo backend, upgrades, sends one 64-byte message,
//! reads the echo and closes; `--handshakes` times, one after the other.
//! The proxy runs on its own `current_thread` runtime thread, which alone
//! sets the thread-local flag the counting allocator reads, so the client's
//! and the backend's allocations are not counted. A warm-up round runs first
//! so that one-time growth (the registry's tables, the timer wheel) is not
//! charged to the handshakes.
//!
//! Besides the calls, it prints the sizes the proxy thread allocated, by
//! count per handshake: the connection's task (the per-connection future
//! plus tokio's task header, allocated on spawn) and the tunnel's task are
//! the two largest of the one-per-handshake sizes.
//!
//! ```sh
//! cargo run --release --example handshake_allocs -- --handshakes 2000
//! ```

#[path = "../benches/support/echo.rs"]
mod echo;

use echo::start_echo_backend;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsproxy::server::Server;

#[derive(Debug, Parser)]
struct Args {
    /// Handshakes counted (after as many again, at most 200, to warm up).
    #[arg(long, default_value_t = 2000)]
    handshakes: u64,
    /// Print every allocation size seen on the proxy thread at least this
    /// many times per 100 handshakes.
    #[arg(long, default_value_t = 10)]
    sizes_min: u64,
    /// Also print where each size was first allocated (a backtrace per
    /// size, taken in the counted round; slow, for finding the callers).
    #[arg(long)]
    backtraces: bool,
}

/// Counts the calls made on threads that set [`COUNTING`]; every other
/// thread goes straight to the system allocator.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static DEALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocation sizes by count, recorded while [`SIZES`] is on.
static SIZE_COUNTS: Mutex<BTreeMap<usize, u64>> = Mutex::new(BTreeMap::new());
/// With `--backtraces`: where each size was first seen.
static TRACES: Mutex<BTreeMap<usize, String>> = Mutex::new(BTreeMap::new());
static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Set while recording a size: the map's own allocations must not
    /// recurse into it.
    static SIZES: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

fn record_size(size: usize) {
    if SIZES.try_with(|s| s.replace(true)).unwrap_or(true) {
        return;
    }
    if let Ok(mut map) = SIZE_COUNTS.lock() {
        *map.entry(size).or_default() += 1;
    }
    if TRACING.load(Ordering::Relaxed) {
        if let Ok(mut traces) = TRACES.lock() {
            traces
                .entry(size)
                .or_insert_with(|| std::backtrace::Backtrace::force_capture().to_string());
        }
    }
    let _ = SIZES.try_with(|s| s.set(false));
}

// SAFETY: every call is forwarded to `System` with the caller's arguments;
// the counting touches only atomics and a thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
            record_size(layout.size());
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
            record_size(layout.size());
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(
                new_size.saturating_sub(layout.size()) as u64,
                Ordering::Relaxed,
            );
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            DEALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    allocs: u64,
    reallocs: u64,
    deallocs: u64,
    bytes: u64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        allocs: ALLOCS.load(Ordering::Relaxed),
        reallocs: REALLOCS.load(Ordering::Relaxed),
        deallocs: DEALLOCS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

fn main() {
    let args = Args::parse();
    let (to_proxy, backend_rx) = mpsc::channel::<SocketAddr>();
    let (proxy_tx, from_proxy) = mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("proxy runtime");
        COUNTING.with(|c| c.set(true));
        rt.block_on(async move {
            let backend = backend_rx.recv().expect("backend address");
            let (proxy, listener) = echo::proxy_to(backend).await;
            proxy_tx
                .send(listener.local_addr().expect("addr"))
                .expect("client thread alive");
            let _ = Server::new(proxy)
                .serve(listener, std::future::pending())
                .await;
        });
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async {
        let backend = start_echo_backend().await;
        to_proxy.send(backend).expect("proxy thread alive");
        let proxy = from_proxy.recv().expect("proxy address");
        let url = format!("ws://{proxy}/");
        let warm = args.handshakes.min(200);
        for _ in 0..warm {
            handshake(&url).await;
        }
        // Let the last tunnel's task end before counting starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(mut map) = SIZE_COUNTS.lock() {
            map.clear();
        }
        TRACING.store(args.backtraces, Ordering::Relaxed);
        let before = snapshot();
        let mut ok = 0u64;
        for _ in 0..args.handshakes {
            ok += u64::from(handshake(&url).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = snapshot();
        assert_eq!(ok, args.handshakes, "every handshake echoes");
        let n = args.handshakes as f64;
        let per = |a: u64, b: u64| (a - b) as f64 / n;
        println!("proxied handshakes: {}", args.handshakes);
        println!(
            "proxy thread, per handshake: {:.2} allocator calls ({:.2} alloc + {:.2} realloc), {:.2} dealloc, {:.0} bytes allocated",
            per(after.allocs + after.reallocs, before.allocs + before.reallocs),
            per(after.allocs, before.allocs),
            per(after.reallocs, before.reallocs),
            per(after.deallocs, before.deallocs),
            per(after.bytes, before.bytes),
        );
        println!("allocation sizes (bytes: count per handshake):");
        let sizes = SIZE_COUNTS.lock().map(|m| m.clone()).unwrap_or_default();
        for (size, count) in sizes.iter().rev() {
            if count * 100 >= args.sizes_min * args.handshakes {
                println!("  {size:>6}: {:.2}", *count as f64 / n);
            }
        }
        if args.backtraces {
            let traces = TRACES.lock().map(|m| m.clone()).unwrap_or_default();
            for (size, trace) in traces.iter().rev() {
                let frames: Vec<&str> = trace
                    .lines()
                    .filter(|l| l.contains("wsproxy::") || l.contains("tokio::task::spawn") || l.contains("tokio::net"))
                    .take(6)
                    .collect();
                println!("== {size}\n{}", frames.join("\n"));
            }
        }
    });
}

/// Connect, upgrade, one 64-byte echo, close; true when the echo came back.
async fn handshake(url: &str) -> bool {
    let run = async {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
            return false;
        };
        let ok = ws.send(Message::binary(vec![7u8; 64])).await.is_ok()
            && matches!(ws.next().await, Some(Ok(Message::Binary(b))) if b.len() == 64);
        let _ = ws.close(None).await;
        // Wait for the close to complete, so the tunnel ends inside the count.
        while let Some(Ok(_)) = ws.next().await {}
        ok
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap_or(false)
}
