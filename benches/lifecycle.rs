//! Figures for the life of tunnels after the 101, on the real clock with
//! real WebSocket peers on loopback:
//!
//! - drain: a `Server` with open tunnels shuts down with a drain window;
//!   when each client received its Close 1001, and whether anything a client
//!   sent was lost;
//! - rebalance: 2 upstreams hold the tunnels, a third joins, a `Rebalancer`
//!   runs; max/mean load before and after, tunnels moved against the fewest
//!   that could do, and lost messages. Least-conn (reconnects go to the
//!   least loaded) and a consistent hash keyed by a query parameter (only
//!   keys that now map to the new upstream may move).
//!
//! `cargo bench --bench lifecycle -- [--clients N] [--window SECS] [--rate N]`

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsproxy::balance::{
    Balancer, ConsistentHash, HashKey, LeastConn, RoundRobin, Upstream, UpstreamSet,
};
use wsproxy::proxy::{RebalanceReport, Rebalancer};
use wsproxy::Proxy;

use support::*;

struct Args {
    clients: usize,
    window: Duration,
    rate: u32,
}

fn args() -> Args {
    let mut args = Args {
        clients: 1000,
        window: Duration::from_secs(2),
        rate: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--clients" => args.clients = it.next().and_then(|v| v.parse().ok()).unwrap_or(1000),
            "--window" => {
                let secs: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(2.0);
                args.window = Duration::from_secs_f64(secs);
            }
            "--rate" => args.rate = it.next().and_then(|v| v.parse().ok()).unwrap_or(1000),
            // `cargo bench` passes `--bench`; ignore what is not ours.
            _ => {}
        }
    }
    args
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        drain(&args).await;
        rebalance(&args, Strategy::LeastConn).await;
        rebalance(&args, Strategy::QueryHash).await;
    });
}

async fn drain(args: &Args) {
    let (up, seen) = recording_upstream().await;
    let set: UpstreamSet = [Upstream::new(up)].into_iter().collect();
    let gw = Gateway::start_with(Proxy::builder().upstream(RoundRobin::new(set)), |s| {
        s.drain_window(args.window)
            .drain_timeout(args.window + Duration::from_secs(10))
    })
    .await;
    let (go, went) = watch::channel(false);
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let mut ws = client(gw.addr).await;
        echo(&mut ws, format!("hello {c}")).await;
        let mut went = went.clone();
        clients.push(tokio::spawn(async move {
            until(&mut went).await;
            ws.send(Message::text(format!("last {c}"))).await.unwrap();
            await_close(&mut ws).await
        }));
    }
    let started = Instant::now();
    let stopping = tokio::spawn(gw.shutdown());
    go.send(true).unwrap();
    let mut offsets = Vec::new();
    let mut wrong_code = 0;
    for c in clients {
        let (code, at) = c.await.unwrap();
        wrong_code += usize::from(code != Some(1001));
        offsets.push((at - started).as_secs_f64());
    }
    let report = stopping.await.unwrap();
    offsets.sort_by(f64::total_cmp);
    let n = offsets.len();
    let pct = |p: usize| offsets[(n - 1) * p / 100];
    let lost = (0..args.clients)
        .filter(|c| !seen.lock().unwrap().contains(&format!("last {c}")))
        .count();
    println!(
        "drain: {n} tunnels, window {:.1}s: Close 1001 received at first {:.3}s, p25 {:.3}s, median {:.3}s, p75 {:.3}s, last {:.3}s; closed {}, cut {}, other codes {wrong_code}, lost messages {lost}",
        args.window.as_secs_f64(),
        offsets[0],
        pct(25),
        pct(50),
        pct(75),
        offsets[n - 1],
        report.closed,
        report.cut,
    );
}

#[derive(Debug, Clone, Copy)]
enum Strategy {
    LeastConn,
    QueryHash,
}

async fn rebalance(args: &Args, strategy: Strategy) {
    let upstreams = [
        recording_upstream().await,
        recording_upstream().await,
        recording_upstream().await,
    ];
    let set = UpstreamSet::new();
    set.add(Upstream::new(upstreams[0].0));
    set.add(Upstream::new(upstreams[1].0));
    let balancer: Arc<dyn Balancer> = match strategy {
        Strategy::LeastConn => Arc::new(LeastConn::new(set.clone())),
        Strategy::QueryHash => Arc::new(ConsistentHash::new(
            set.clone(),
            HashKey::Query("id".into()),
        )),
    };
    let group = wsproxy::UpstreamGroup::from_arc("bench", balancer);
    let gw = Gateway::start(Proxy::builder().route(wsproxy::route::Route::new("/", group.clone())))
        .await;

    let (go, went) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let closed_codes = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let mut ws = client_at(gw.addr, c).await;
        echo(&mut ws, format!("hello {c}")).await;
        let (mut went, mut stopped) = (went.clone(), stopped.clone());
        let closed_codes = closed_codes.clone();
        let addr = gw.addr;
        clients.push(tokio::spawn(async move {
            until(&mut went).await;
            ws.send(Message::text(format!("mid {c}"))).await.unwrap();
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Close(frame))) => {
                            closed_codes.lock().unwrap().push(frame.map(|f| u16::from(f.code)));
                            while let Some(Ok(_)) = ws.next().await {}
                            let mut again = client_at(addr, c).await;
                            echo(&mut again, format!("again {c}")).await;
                            until(&mut stopped).await;
                            return;
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    () = until(&mut stopped) => return,
                }
            }
        }));
    }
    set.add(Upstream::new(upstreams[2].0));
    go.send(true).unwrap();
    let started = Instant::now();
    let report: RebalanceReport = Rebalancer::new(group.clone(), set.clone())
        .rate(args.rate)
        .run()
        .await;
    let took = started.elapsed();
    let loads: Vec<usize> = {
        let counts = group.tunnels().count_by_upstream();
        set.snapshot()
            .iter()
            .map(|p| counts.get(&p.id()).copied().unwrap_or(0))
            .collect()
    };
    stop.send(true).unwrap();
    for c in clients {
        let _ = c.await;
    }
    let seen: HashSet<String> = upstreams
        .iter()
        .flat_map(|(_, seen)| seen.lock().unwrap().clone())
        .collect();
    let lost = (0..args.clients)
        .filter(|c| !seen.contains(&format!("mid {c}")))
        .count();
    let codes = closed_codes.lock().unwrap().clone();
    let not_1012 = codes.iter().filter(|&&c| c != Some(1012)).count();
    println!(
        "rebalance {strategy:?}, {} clients, 2 -> 3 upstreams, {} closes/s: max/mean {:.3} -> {:.3}, moved {} (fewest possible {}, ratio {:.2}), {} rounds in {:.2}s, loads after {loads:?}, closed clients {} (not 1012: {not_1012}), lost messages {lost}",
        args.clients,
        args.rate,
        report.before.ratio(),
        report.after.ratio(),
        report.moved,
        report.needed,
        report.moved as f64 / report.needed.max(1) as f64,
        report.rounds,
        took.as_secs_f64(),
        codes.len(),
    );
    gw.shutdown().await;
}

/// A client whose request carries its own `?id=`, the query hash's key.
async fn client_at(addr: SocketAddr, c: usize) -> WebSocketStream<TcpStream> {
    client_to(addr, &format!("/?id={c}")).await
}
