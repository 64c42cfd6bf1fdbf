//! Throughput through `wsproxy::tunnel` against `tokio::io::copy_bidirectional`,
//! measured in the same run over loopback TCP.
//!
//! Layout: one thread runs the proxy on a `current_thread` runtime (accept,
//! connect to the echo backend, relay), like `bench/naive-proxy`; another
//! thread runs the clients and the echo backends. Each client keeps
//! `--window` messages in flight and counts the echoed bytes. Besides
//! echoes per second, the proxy thread's own CPU time (from
//! `/proc/thread-self/schedstat`) gives echoes per proxy-CPU-second, the
//! steadier figure on a shared machine.
//!
//! `--mode frames` measures the cost of frame tracking instead: the same
//! tunnel with `TunnelConfig::track_frames` off and on, both carrying real
//! WebSocket frames (clients send masked frames of `--size` payload bytes,
//! backends answer each with an unmasked frame of the same size).
//!
//! ```sh
//! cargo bench --bench tunnel -- --secs 2 --rounds 3
//! cargo bench --bench tunnel -- --mode frames --secs 2 --rounds 5
//! # syscalls of the proxy thread alone, one mode:
//! target/release/deps/tunnel-* --bench --mode tunnel --size 1024 --pairs 50 --rounds 1 --attach-wait 2
//! #   and meanwhile `strace -c -p <proxy tid>`; divide by the total echoes
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use wsproxy::tunnel::{tunnel, TunnelConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Tunnel,
    Copy,
    /// `tunnel` against `copy_bidirectional`.
    Both,
    /// `tunnel` with frame tracking on (WebSocket traffic).
    Tracked,
    /// `tunnel` without and with frame tracking, on WebSocket traffic.
    Frames,
}

#[derive(Debug, Parser)]
struct Args {
    /// Measurement window per run, seconds.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Runs per mode and load; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Which relay to run.
    #[arg(long, value_enum, default_value = "both")]
    mode: Mode,
    /// Message size; with --pairs, replaces the two default loads.
    #[arg(long)]
    size: Option<usize>,
    /// Client/backend pairs; with --size.
    #[arg(long)]
    pairs: Option<usize>,
    /// Messages in flight per connection (as wsbench).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Seconds to wait after printing the proxy thread id, before the clients
    /// connect (time to attach `strace -c -p TID`).
    #[arg(long, default_value_t = 0.0)]
    attach_wait: f64,
    /// Buffer size per direction for `copy` (8 KiB is what
    /// `copy_bidirectional` uses; larger uses `copy_bidirectional_with_sizes`).
    #[arg(long, default_value_t = 8 * 1024)]
    copy_buf: usize,
    /// Measure for real (`cargo bench` passes it); without it, a short
    /// smoke run, as under `cargo test --all-targets`.
    #[arg(long)]
    bench: bool,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    echoes_per_s: f64,
    echoes_per_cpu_s: f64,
    echoes: u64,
}

fn main() -> io::Result<()> {
    let mut args = Args::parse();
    if !args.bench {
        // Not run by `cargo bench` (e.g. `cargo test --all-targets`): a
        // short smoke run that only checks the harness works. Pass
        // `--bench` to measure when running the binary directly.
        args.secs = args.secs.min(0.2);
        args.rounds = 1;
    }
    let loads = match (args.size, args.pairs) {
        (Some(s), Some(p)) => vec![(s, p)],
        _ => vec![(1024, 50), (64 * 1024, 10)],
    };
    let modes: &[Mode] = match args.mode {
        Mode::Both => &[Mode::Tunnel, Mode::Copy],
        Mode::Frames => &[Mode::Tunnel, Mode::Tracked],
        Mode::Tunnel => &[Mode::Tunnel],
        Mode::Copy => &[Mode::Copy],
        Mode::Tracked => &[Mode::Tracked],
    };
    // Tracking needs WebSocket frames; compare it on the same traffic.
    let framed = matches!(args.mode, Mode::Frames | Mode::Tracked);
    if framed {
        for &(size, _) in &loads {
            tracker_alone(size, &args);
        }
    }
    for &(size, pairs) in &loads {
        let mut results: Vec<(Mode, Vec<Sample>)> = modes.iter().map(|&m| (m, vec![])).collect();
        for round in 0..args.rounds {
            // Alternate the order so neither mode always runs first.
            let order: Vec<usize> = if round % 2 == 0 {
                (0..results.len()).collect()
            } else {
                (0..results.len()).rev().collect()
            };
            for i in order {
                let mode = results[i].0;
                let s = run(mode, size, pairs, framed, &args)?;
                eprintln!(
                    "{size} B x {pairs} pairs, {mode:?} round {round}: {:.0} echoes/s, {:.0} echoes/proxy-CPU-s ({} echoes)",
                    s.echoes_per_s, s.echoes_per_cpu_s, s.echoes
                );
                results[i].1.push(s);
            }
        }
        let med: Vec<(Mode, f64, f64)> = results
            .iter()
            .map(|(m, v)| {
                (
                    *m,
                    median(v.iter().map(|s| s.echoes_per_s).collect()),
                    median(v.iter().map(|s| s.echoes_per_cpu_s).collect()),
                )
            })
            .collect();
        for (m, rate, eff) in &med {
            println!(
                "{size} B x {pairs} pairs  {m:?}: median {rate:.0} echoes/s ({:.1} MB/s one way), {eff:.0} echoes/proxy-CPU-s",
                rate * size as f64 / 1e6
            );
        }
        if med.len() == 2 {
            let names = if framed {
                "tracked/untracked"
            } else {
                "tunnel/copy"
            };
            // Frames: the second mode is the one measured against the first.
            let (a, b) = if framed { (1, 0) } else { (0, 1) };
            println!(
                "{size} B x {pairs} pairs  ratio {names}: {:.3} echoes/s, {:.3} echoes/proxy-CPU-s",
                med[a].1 / med[b].1,
                med[a].2 / med[b].2
            );
        }
    }
    Ok(())
}

/// The tracker on its own, without sockets: nanoseconds per frame over a
/// 64 KiB-chunked stream of masked `size`-byte frames, median of the rounds.
fn tracker_alone(size: usize, args: &Args) {
    use wsproxy::frame::{FrameTracker, Role};
    let (frame, _) = messages(size, true);
    let per_chunk = (64 * 1024 / frame.len()).max(1);
    let stream = frame.repeat(per_chunk * 64);
    let mut rates = Vec::new();
    for _ in 0..args.rounds {
        let mut tracker = FrameTracker::new(Role::Client);
        let t0 = Instant::now();
        let mut frames = 0u64;
        while t0.elapsed().as_secs_f64() < args.secs.min(0.5) {
            for chunk in stream.chunks(64 * 1024) {
                if tracker.observe(std::hint::black_box(chunk)).is_err() {
                    eprintln!("tracker refused the bench stream");
                    return;
                }
            }
            frames += (per_chunk * 64) as u64;
        }
        rates.push(t0.elapsed().as_nanos() as f64 / frames as f64);
    }
    println!(
        "{size} B frames, tracker alone: median {:.1} ns per frame ({:.2} GB/s)",
        median(rates.clone()),
        frame.len() as f64 / median(rates)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// The proxy thread's CPU time so far (schedstat: nanoseconds on CPU).
fn thread_cpu(tid_path: &str) -> io::Result<Duration> {
    let s = std::fs::read_to_string(format!("{tid_path}/schedstat"))?;
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("bad schedstat"))?;
    Ok(Duration::from_nanos(ns))
}

/// One message on the wire, as the client sends it and as the backend
/// answers it: the raw bytes, or WebSocket frames (masked from the client).
fn messages(size: usize, framed: bool) -> (Vec<u8>, Vec<u8>) {
    if !framed {
        return (vec![0x5a; size], vec![0x5a; size]);
    }
    let frame = |masked: bool| {
        let mut out = vec![0x82];
        let bit = if masked { 0x80 } else { 0 };
        match size {
            0..=125 => out.push(bit | size as u8),
            126..=0xffff => {
                out.push(bit | 126);
                out.extend_from_slice(&(size as u16).to_be_bytes());
            }
            _ => {
                out.push(bit | 127);
                out.extend_from_slice(&(size as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
        }
        out.resize(out.len() + size, 0x5a);
        out
    };
    (frame(true), frame(false))
}

fn run(mode: Mode, size: usize, pairs: usize, framed: bool, args: &Args) -> io::Result<Sample> {
    let (request, reply) = messages(size, framed);
    let (request_len, reply_len) = (request.len(), reply.len());
    let load_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Echo backend.
    let backend = load_rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let backend_addr = backend.local_addr()?;
    // Answers each whole request with one reply (raw traffic: an echo).
    let replies: Arc<[u8]> = reply.repeat(16).into();
    load_rt.spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            let _ = s.set_nodelay(true);
            let replies = replies.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut partial = 0usize;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !framed {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    partial += n;
                    let mut due = partial / request_len;
                    partial %= request_len;
                    while due > 0 {
                        let k = due.min(16);
                        if s.write_all(&replies[..k * reply_len]).await.is_err() {
                            return;
                        }
                        due -= k;
                    }
                }
            });
        }
    });

    // Proxy thread.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<io::Result<(SocketAddr, String)>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let copy_buf = args.copy_buf.max(1);
    let proxy = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = addr_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let listener = match TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => {
                    let _ = addr_tx.send(Err(e));
                    return;
                }
            };
            let tid = std::fs::read_link("/proc/thread-self")
                .map(|p| format!("/proc/{}", p.display()))
                .unwrap_or_default();
            let _ = addr_tx.send(listener.local_addr().map(|a| (a, tid)));
            let accept = async {
                while let Ok((mut client, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let Ok(mut upstream) = TcpStream::connect(backend_addr).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = upstream.set_nodelay(true);
                        match mode {
                            Mode::Copy if copy_buf != 8 * 1024 => {
                                let _ = tokio::io::copy_bidirectional_with_sizes(
                                    &mut client,
                                    &mut upstream,
                                    copy_buf,
                                    copy_buf,
                                )
                                .await;
                            }
                            Mode::Copy => {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            }
                            _ => {
                                let config =
                                    TunnelConfig::default().track_frames(mode == Mode::Tracked);
                                let stats =
                                    tunnel(client, upstream, &config, std::future::pending()).await;
                                // Teardown resets are expected; a framing
                                // error would mean the bench traffic is wrong.
                                if let wsproxy::tunnel::TunnelEnd::Error(
                                    e @ wsproxy::TunnelError::Framing { .. },
                                ) = stats.end
                                {
                                    eprintln!(
                                        "tunnel failed: {e}: {:?}",
                                        std::error::Error::source(&e)
                                    );
                                }
                            }
                        }
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stop_rx => {}
            }
        });
    });
    let (proxy_addr, tid_path) = addr_rx
        .recv()
        .map_err(|_| io::Error::other("proxy thread died"))??;

    let echoed = Arc::new(AtomicU64::new(0));
    let window = args.window;
    load_rt
        .block_on(async {
            let mut conns = Vec::new();
            for _ in 0..pairs {
                let s = TcpStream::connect(proxy_addr).await?;
                s.set_nodelay(true)?;
                conns.push(s);
            }
            for s in conns {
                let echoed = echoed.clone();
                let (mut r, mut w) = s.into_split();
                let permits = Arc::new(Semaphore::new(window));
                let p2 = permits.clone();
                let msg = request.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(permit) = p2.acquire().await else {
                            break;
                        };
                        permit.forget();
                        if w.write_all(&msg).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut partial = 0usize;
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        echoed.fetch_add(n as u64, Ordering::Relaxed);
                        partial += n;
                        let done = partial / reply_len;
                        partial %= reply_len;
                        permits.add_permits(done);
                    }
                });
            }
            if args.attach_wait > 0.0 {
                eprintln!("proxy thread: {tid_path}");
                tokio::time::sleep(Duration::from_secs_f64(args.attach_wait)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let bytes0 = echoed.load(Ordering::Relaxed);
            let cpu0 = thread_cpu(&tid_path)?;
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
            let bytes = echoed.load(Ordering::Relaxed) - bytes0;
            let cpu = thread_cpu(&tid_path)? - cpu0;
            let wall = t0.elapsed().as_secs_f64();
            let echoes = bytes / reply_len as u64;
            let _ = stop_tx.send(());
            if args.attach_wait > 0.0 {
                eprintln!(
                    "total echoes since the clients connected: {}",
                    echoed.load(Ordering::Relaxed) / reply_len as u64
                );
            }
            Ok::<_, io::Error>(Sample {
                echoes_per_s: echoes as f64 / wall,
                echoes_per_cpu_s: echoes as f64 / cpu.as_secs_f64().max(1e-9),
                echoes,
            })
        })
        .and_then(|s| {
            drop(load_rt);
            proxy
                .join()
                .map_err(|_| io::Error::other("proxy thread panicked"))?;
            Ok(s)
        })
}
