//! Thread-per-core serving (`Server::per_core`): real loopback sockets and
//! tokio-tungstenite peers against workers on their own threads.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
use wsproxy::server::{DrainReport, Server};
use wsproxy::workers::BoundWorkers;
use wsproxy::Proxy;

use support::*;

/// Which thread each client's connection was accepted on and ended on.
#[derive(Default)]
struct Threads {
    accepted: HashMap<SocketAddr, String>,
    ended: HashMap<SocketAddr, String>,
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// Two workers in front of an echo upstream, recording threads; serving on
/// a task of the test's runtime, which only waits for them.
async fn two_workers(
    server: impl FnOnce(Server) -> Server,
) -> (
    SocketAddr,
    Arc<Mutex<Threads>>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<DrainReport>,
) {
    workers(2, false, server).await
}

/// `n` workers, as [`two_workers`]; `on_caller` for
/// `Workers::on_caller_thread`.
async fn workers(
    n: usize,
    on_caller: bool,
    server: impl FnOnce(Server) -> Server,
) -> (
    SocketAddr,
    Arc<Mutex<Threads>>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<DrainReport>,
) {
    let up = ws_upstream(WsUpstreamOptions::default()).await;
    let set: UpstreamSet = [Upstream::new(up.addr)].into_iter().collect();
    let proxy = Proxy::builder()
        .upstream(RoundRobin::new(set))
        .build()
        .unwrap();
    let threads = Arc::new(Mutex::new(Threads::default()));
    let ended = threads.clone();
    let workers: BoundWorkers = server(Server::new(proxy))
        .on_connection_end(move |client, _| {
            ended.lock().unwrap().ended.insert(client, thread_name());
        })
        .per_core()
        .threads(n)
        .on_caller_thread(on_caller)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    assert_eq!(workers.threads(), n);
    #[cfg(target_os = "linux")]
    assert!(workers.reuse_port(), "Linux has SO_REUSEPORT");
    let addr = workers.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let accepted = threads.clone();
    let serving = tokio::spawn(async move {
        workers
            .serve_with(
                move |tcp: tokio::net::TcpStream| {
                    if let Ok(peer) = tcp.peer_addr() {
                        accepted
                            .lock()
                            .unwrap()
                            .accepted
                            .insert(peer, thread_name());
                    }
                    std::future::ready(Ok(tcp))
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap()
    });
    (addr, threads, stop, serving)
}

#[tokio::test]
async fn several_workers_serve_connections_on_one_port_each_on_the_thread_that_accepted_it() {
    const CLIENTS: usize = 64;
    let (addr, threads, stop, serving) = two_workers(|s| s).await;
    let used = serve_clients(addr, CLIENTS, &threads, stop, serving).await;
    let threads = threads.lock().unwrap();
    for (client, ended) in &threads.ended {
        // Accept, connect, handshake and tunnel: all on one thread.
        assert_eq!(threads.accepted.get(client), Some(ended), "{client}");
    }
    // The kernel hashes each connection to one listener: 64 connections all
    // on one of two workers would be a 1 in 2^63 chance.
    assert_eq!(used, ["wsproxy-worker-0", "wsproxy-worker-1"]);
}

/// Echoes through `addr` from `clients` clients one after another, then
/// stops the serve and returns the names of the threads their connections
/// ended on.
async fn serve_clients(
    addr: SocketAddr,
    clients: usize,
    threads: &Mutex<Threads>,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<DrainReport>,
) -> Vec<String> {
    for c in 0..clients {
        let mut ws = client(addr).await;
        echo(&mut ws, format!("hello {c}")).await;
        bounded("close", ws.close(None)).await.unwrap();
        // Reading on sees the proxy's end of the closing handshake.
        while let Some(Ok(_)) = bounded("end", futures_util::StreamExt::next(&mut ws)).await {}
    }
    let _ = stop.send(());
    let report = bounded("workers to stop", serving).await.unwrap();
    assert_eq!(report.accepted, clients as u64, "{report:?}");
    assert_eq!(report.cut, 0, "{report:?}");
    let mut used: Vec<String> = threads.lock().unwrap().ended.values().cloned().collect();
    assert_eq!(used.len(), clients);
    used.sort();
    used.dedup();
    used
}

#[tokio::test]
async fn one_worker_on_the_callers_thread_serves_there() {
    let (addr, threads, stop, serving) = workers(1, true, |s| s).await;
    let used = serve_clients(addr, 8, &threads, stop, serving).await;
    // No thread was started: the test's own thread served every connection.
    assert_eq!(used, [thread_name()]);
}

#[tokio::test]
async fn one_worker_gets_its_own_thread_unless_asked() {
    let (addr, threads, stop, serving) = workers(1, false, |s| s).await;
    let used = serve_clients(addr, 8, &threads, stop, serving).await;
    assert_eq!(used, ["wsproxy-worker-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_on_the_callers_thread_needs_a_current_thread_runtime() {
    let (addr, threads, stop, serving) = workers(1, true, |s| s).await;
    let used = serve_clients(addr, 8, &threads, stop, serving).await;
    assert_eq!(used, ["wsproxy-worker-0"]);
}

#[tokio::test]
async fn a_drain_sends_1001_to_the_tunnels_of_every_worker() {
    const CLIENTS: usize = 32;
    let (addr, threads, stop, serving) = two_workers(|s| {
        s.drain_window(Duration::from_millis(200))
            .drain_timeout(Duration::from_secs(5))
    })
    .await;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut ws = client(addr).await;
        echo(&mut ws, format!("hello {c}")).await;
        clients.push(ws);
    }
    let _ = stop.send(());
    for ws in &mut clients {
        let (code, _) = await_close(ws).await;
        assert_eq!(code, Some(1001));
    }
    let report = bounded("workers to stop", serving).await.unwrap();
    assert_eq!(report.open_at_shutdown, CLIENTS, "{report:?}");
    assert_eq!(report.closed, CLIENTS, "{report:?}");
    assert_eq!(report.cut, 0, "{report:?}");

    let threads = threads.lock().unwrap();
    let mut used: Vec<&String> = threads.ended.values().collect();
    used.sort();
    used.dedup();
    assert_eq!(used, ["wsproxy-worker-0", "wsproxy-worker-1"]);
}

#[tokio::test]
async fn dropping_the_serve_future_stops_the_workers_accepting() {
    let (addr, _threads, stop, serving) =
        two_workers(|s| s.drain_timeout(Duration::from_millis(500))).await;
    let mut ws = client(addr).await;
    echo(&mut ws, "before".into()).await;
    // The serve future is dropped: the workers take that as the shutdown
    // (the oneshot sender is kept, so only the drop can stop them).
    serving.abort();
    let _ = serving.await;
    bounded("both listeners to close", async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    drop(stop);
    let _ = ws.send(Message::text("after")).await;
}
