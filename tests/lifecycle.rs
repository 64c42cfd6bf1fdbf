//! The life of tunnels after the 101, end to end on loopback with real
//! WebSocket peers: graceful shutdown that closes every tunnel with 1001
//! spread over a window, and rebalancing after an upstream joins.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use wsproxy::balance::{
    Balancer, ConsistentHash, HashKey, LeastConn, RoundRobin, Upstream, UpstreamSet,
};
use wsproxy::proxy::{RebalanceReport, Rebalancer};
use wsproxy::route::Route;
use wsproxy::{Proxy, UpstreamGroup};

use support::*;

#[tokio::test(start_paused = true)]
async fn shutdown_closes_a_thousand_tunnels_with_1001_spread_over_the_window() {
    const CLIENTS: usize = 1000;
    const WINDOW: Duration = Duration::from_secs(10);
    let (up, seen) = recording_upstream().await;
    let set: UpstreamSet = [Upstream::new(up)].into_iter().collect();
    let gw = Gateway::start_with(Proxy::builder().upstream(RoundRobin::new(set)), |s| {
        s.drain_window(WINDOW)
            .drain_timeout(WINDOW + Duration::from_secs(20))
    })
    .await;

    let (go, mut went) = watch::channel(false);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut ws = client(gw.addr).await;
        echo(&mut ws, format!("hello {c}")).await;
        let mut went = went.clone();
        clients.push(tokio::spawn(async move {
            bounded("shutdown", went.wait_for(|&go| go)).await.unwrap();
            // Sent once shutdown began, before the Close is read: it must
            // reach the upstream whenever this client's turn comes.
            ws.send(Message::text(format!("last {c}"))).await.unwrap();
            await_close(&mut ws).await
        }));
    }
    assert_eq!(gw.proxy.tunnels().len(), CLIENTS);

    let started = Instant::now();
    let stopping = tokio::spawn(gw.shutdown());
    // Let the server begin draining before the clients send.
    tokio::task::yield_now().await;
    go.send(true).unwrap();
    let _ = went.borrow_and_update();

    let mut offsets = Vec::new();
    for c in clients {
        let (code, at) = c.await.unwrap();
        assert_eq!(code, Some(1001));
        offsets.push(at - started);
    }
    let report = stopping.await.unwrap();
    assert_eq!(report.closed, CLIENTS);
    assert_eq!(report.cut, 0, "{report:?}");

    offsets.sort();
    let pct = |p: usize| offsets[(CLIENTS - 1) * p / 100];
    println!(
        "close spread over a {WINDOW:?} window: first {:?}, p25 {:?}, median {:?}, p75 {:?}, last {:?}",
        offsets[0],
        pct(25),
        pct(50),
        pct(75),
        offsets[CLIENTS - 1]
    );
    // Evenly spread: each quarter of the window closed a quarter of them.
    for q in 1..4 {
        let at = WINDOW * q / 4;
        let before = offsets.iter().filter(|&&o| o < at).count();
        let expected = CLIENTS * q as usize / 4;
        assert!(
            before.abs_diff(expected) <= CLIENTS / 50,
            "{before} closed before {at:?}, expected about {expected}"
        );
    }
    assert!(offsets[CLIENTS - 1] < WINDOW);
    // Nothing any client sent was lost.
    let seen = seen.lock().unwrap();
    for c in 0..CLIENTS {
        assert!(
            seen.contains(&format!("last {c}")),
            "lost the message of {c}"
        );
    }
}

/// `n` clients, each with a tunnel open and echoing, run as
/// [`rebalanced_client`]: what each was closed with, if it was.
async fn rebalanced_clients(
    addr: SocketAddr,
    n: usize,
    go: &watch::Receiver<bool>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Option<u16>>> {
    let mut clients = Vec::new();
    for c in 0..n {
        let path = format!("/?id={c}");
        let mut ws = client_to(addr, &path).await;
        echo(&mut ws, format!("hello {c}")).await;
        let task = rebalanced_client(addr, path, c, ws, go.clone(), stop.clone());
        clients.push(tokio::spawn(task));
    }
    clients
}

/// One client of the rebalance test: sends `mid {c}` once `go` is set, then
/// reads until the proxy closes it (reconnects, and proves the new tunnel
/// with an echo) or until `stop`. Returns the Close code it got, if any.
async fn rebalanced_client(
    addr: SocketAddr,
    path: String,
    c: usize,
    mut ws: WebSocketStream<TcpStream>,
    mut go: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Option<u16> {
    bounded("go", until(&mut go)).await;
    ws.send(Message::text(format!("mid {c}"))).await.unwrap();
    // Bounded: the echo of `mid`, then the Close or the stop.
    for _ in 0..4 {
        let closed = tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    while let Some(Ok(_)) = within(Duration::from_secs(60), "end", ws.next()).await {}
                    let mut again = client_to(addr, &path).await;
                    echo(&mut again, format!("again {c}")).await;
                    Some((code, again))
                }
                Some(Ok(_)) => None,
                other => panic!("client {c}: {other:?}"),
            },
            () = until(&mut stop) => return None,
        };
        if let Some((code, again)) = closed {
            // Keep the new tunnel open until the test has measured.
            within(Duration::from_secs(600), "stop", until(&mut stop)).await;
            drop(again);
            return code;
        }
    }
    panic!("client {c}: neither closed nor stopped");
}

#[tokio::test(start_paused = true)]
async fn a_third_upstream_takes_its_share_and_closed_clients_lose_nothing() {
    let set = UpstreamSet::new();
    let report =
        third_upstream_joins("least-conn", set.clone(), Arc::new(LeastConn::new(set))).await;
    // The least loaded upstream takes every reconnect: the minimum moves.
    assert_eq!(report.needed, 168);
    assert_eq!(report.moved, 168);
}

#[tokio::test(start_paused = true)]
async fn under_a_hash_only_keys_that_map_to_the_new_upstream_move() {
    let set = UpstreamSet::new();
    let ring = ConsistentHash::new(set.clone(), HashKey::Query("id".into()));
    let report = third_upstream_joins("consistent hash on ?id=", set, Arc::new(ring)).await;
    // Affinity kept: each moved client reconnected to the new upstream
    // (asserted inside), and no more moved than needed.
    assert_eq!(report.moved, report.needed);
}

/// 1,000 clients on two upstreams, a third joins, a rebalance runs: the
/// figures the issue asks for, printed and checked.
async fn third_upstream_joins(
    strategy: &str,
    set: UpstreamSet,
    balancer: Arc<dyn Balancer>,
) -> RebalanceReport {
    const CLIENTS: usize = 1000;
    let upstreams = [
        recording_upstream().await,
        recording_upstream().await,
        recording_upstream().await,
    ];
    set.add(Upstream::new(upstreams[0].0));
    set.add(Upstream::new(upstreams[1].0));
    let group = UpstreamGroup::from_arc("chat", balancer);
    let gw = Gateway::start(Proxy::builder().route(Route::new("/", group.clone()))).await;

    let (go, went) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let clients = rebalanced_clients(gw.addr, CLIENTS, &went, &stopped).await;
    // Scale-out: the third upstream joins.
    let third = set.add(Upstream::new(upstreams[2].0));
    let rebalancer = Rebalancer::new(group.clone(), set.clone()).rate(500);
    let before = rebalancer.spread();

    go.send(true).unwrap();
    let report = within(Duration::from_secs(600), "rebalance", rebalancer.run()).await;
    let counts = group.tunnels().count_by_upstream();
    println!(
        "rebalance 2 -> 3 upstreams, {CLIENTS} clients, {strategy}: max/mean {:.3} -> {:.3}, moved {} (minimum {}), {} rounds, loads after {:?}",
        report.before.ratio(),
        report.after.ratio(),
        report.moved,
        report.needed,
        report.rounds,
        counts.values().collect::<Vec<_>>()
    );
    assert_eq!(report.before, before);
    assert!(report.before.ratio() >= 1.5 - 1e-9, "{report:?}");
    assert!(report.after.ratio() <= 1.25, "{report:?}");
    assert!(
        report.moved as f64 <= 1.2 * report.needed as f64,
        "{report:?}"
    );
    assert_eq!(report.after.total, CLIENTS, "every closed client came back");
    // The closed clients are the new upstream's now.
    assert_eq!(counts.get(&third).copied(), Some(report.moved));

    stop.send(true).unwrap();
    let mut closed = 0;
    for c in clients {
        if let Some(code) = c.await.unwrap() {
            assert_eq!(code, 1012);
            closed += 1;
        }
    }
    assert_eq!(closed, report.moved);
    let seen: HashSet<String> = upstreams
        .iter()
        .flat_map(|(_, seen)| seen.lock().unwrap().clone())
        .collect();
    for c in 0..CLIENTS {
        assert!(
            seen.contains(&format!("mid {c}")),
            "lost the message of {c}"
        );
    }
    gw.shutdown().await;
    report
}

/// A periodic rebalancer and one a DNS join starts can run at once on one
/// group: the second must not plan the surplus the first is shedding.
#[tokio::test(start_paused = true)]
async fn two_rebalancers_of_one_group_move_no_more_than_one_run_needs() {
    const CLIENTS: usize = 10;
    let (a, _) = recording_upstream().await;
    let (b, _) = recording_upstream().await;
    let set: UpstreamSet = [Upstream::new(a)].into_iter().collect();
    let group = UpstreamGroup::new("chat", LeastConn::new(set.clone()));
    let gw = Gateway::start(Proxy::builder().route(Route::new("/", group.clone()))).await;

    let (go, went) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let clients = rebalanced_clients(gw.addr, CLIENTS, &went, &stopped).await;
    let joined = set.add(Upstream::new(b));
    let periodic = Rebalancer::new(group.clone(), set.clone()).rate(10);
    let after_join = periodic.clone();

    go.send(true).unwrap();
    let (first, second) = within(Duration::from_secs(600), "both rebalances", async {
        tokio::join!(periodic.run(), after_join.run())
    })
    .await;
    // 10 over 2 at factor 1.25: a cap of 6, so one run closes 4.
    assert_eq!(first.needed, 4, "{first:?}");
    assert_eq!(first.moved + second.moved, 4, "{first:?} {second:?}");
    let counts = group.tunnels().count_by_upstream();
    assert_eq!(counts.get(&joined).copied(), Some(4));

    stop.send(true).unwrap();
    let mut closed = 0;
    for c in clients {
        if let Some(code) = bounded("a client", c).await.unwrap() {
            assert_eq!(code, 1012);
            closed += 1;
        }
    }
    assert_eq!(closed, 4);
    gw.shutdown().await;
}

/// A rebalance asked for while one runs is not lost: the run under way plans
/// once more when its rounds are over, even when it stopped early because
/// the clients it closed did not come back.
#[tokio::test(start_paused = true)]
async fn a_rebalance_asked_for_during_a_run_is_taken_up_when_it_ends() {
    const CLIENTS: usize = 10;
    let (a, _) = recording_upstream().await;
    let (b, _) = recording_upstream().await;
    let (c, _) = recording_upstream().await;
    let set: UpstreamSet = [Upstream::new(a)].into_iter().collect();
    let group = UpstreamGroup::new("chat", LeastConn::new(set.clone()));
    let gw = Gateway::start(Proxy::builder().route(Route::new("/", group.clone()))).await;
    // Clients that answer a Close and never come back.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut ws = client_to(gw.addr, &format!("/?id={i}")).await;
        echo(&mut ws, format!("hello {i}")).await;
        clients.push(tokio::spawn(async move {
            while let Some(Ok(_)) = within(Duration::from_secs(600), "a close", ws.next()).await {}
        }));
    }
    set.add(Upstream::new(b));
    let first = Rebalancer::new(group.clone(), set.clone()).rate(10);
    let second = first.clone();
    let running = tokio::spawn(async move { first.run().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    set.add(Upstream::new(c));
    let skipped = second.run().await;
    assert_eq!(skipped.rounds, 0, "{skipped:?}");
    let report = within(Duration::from_secs(600), "the run", running)
        .await
        .unwrap();
    // 10 over two: 4 closed, who do not return, so the rounds stop; the
    // pass for the join then spreads the 6 left over three.
    assert!(report.rounds >= 2, "{report:?}");
    assert!(report.moved > 4, "{report:?}");
    assert!(
        group.tunnels().len() <= 10 - report.moved,
        "{report:?} {}",
        group.tunnels().len()
    );
    for client in clients {
        client.abort();
    }
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_servers_drain_closes_only_its_own_tunnels() {
    let (up, _) = recording_upstream().await;
    let set: UpstreamSet = [Upstream::new(up)].into_iter().collect();
    let proxy = Proxy::builder()
        .upstream(RoundRobin::new(set))
        .build()
        .unwrap();
    // One proxy behind two listeners (ws:// and, say, a second port).
    let mut servers = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = wsproxy::server::Server::new(proxy.clone())
            .drain_window(Duration::from_secs(1))
            .drain_timeout(Duration::from_secs(10));
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        servers.push((addr, stop, task));
    }
    // The other server's tunnel opens first: a drain that took every
    // tunnel of the proxy would close it first.
    let mut second = client(servers[1].0).await;
    let mut first = client(servers[0].0).await;
    echo(&mut first, "one".into()).await;
    echo(&mut second, "two".into()).await;
    assert_eq!(proxy.tunnels().len(), 2);

    let (_, stop, task) = servers.remove(0);
    stop.send(()).unwrap();
    let (code, _) = await_close(&mut first).await;
    assert_eq!(code, Some(1001));
    let report = within(Duration::from_secs(60), "drain", task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.closed, report.cut), (1, 0));
    // The other listener's tunnel was not touched.
    echo(&mut second, "still here".into()).await;
    assert_eq!(proxy.tunnels().len(), 1);
}

/// `n` clients of `addr`, each proven by an echo, each waiting for `go` to
/// send `last {tag}{c}` and then reading until the proxy's Close.
async fn drained_clients(
    addr: SocketAddr,
    tag: &'static str,
    n: usize,
    went: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<(Option<u16>, Instant)>> {
    let mut clients = Vec::new();
    for c in 0..n {
        let mut ws = client(addr).await;
        echo(&mut ws, format!("hello {tag}{c}")).await;
        let mut went = went.clone();
        clients.push(tokio::spawn(async move {
            bounded("drain", went.wait_for(|&go| go)).await.unwrap();
            ws.send(Message::text(format!("last {tag}{c}")))
                .await
                .unwrap();
            await_close(&mut ws).await
        }));
    }
    clients
}

#[tokio::test(start_paused = true)]
async fn proxy_drain_closes_tunnels_of_every_way_in_with_1001_spread_over_the_window() {
    const EACH: usize = 100;
    const WINDOW: Duration = Duration::from_secs(10);
    let (up, seen) = recording_upstream().await;
    let set: UpstreamSet = [Upstream::new(up)].into_iter().collect();
    // One proxy, two ways in: its own Server (which is not shut down) and
    // a hyper host calling connect_upgrade.
    let gw = Gateway::start(Proxy::builder().upstream(RoundRobin::new(set))).await;
    let host = hyper_host(gw.proxy.clone()).await;

    let (go, went) = watch::channel(false);
    let mut clients = drained_clients(gw.addr, "server ", EACH, &went).await;
    clients.extend(drained_clients(host, "hyper ", EACH, &went).await);
    assert_eq!(gw.proxy.tunnels().len(), 2 * EACH);
    assert!(!gw.proxy.is_draining());

    let started = Instant::now();
    let proxy = gw.proxy.clone();
    let draining = tokio::spawn(async move { proxy.drain(WINDOW, WINDOW * 3).await });
    tokio::task::yield_now().await;
    assert!(gw.proxy.is_draining());
    go.send(true).unwrap();

    let mut offsets = Vec::new();
    for c in clients {
        let (code, at) = c.await.unwrap();
        assert_eq!(code, Some(1001));
        offsets.push(at - started);
    }
    let report = within(WINDOW * 4, "drain", draining).await.unwrap();
    assert_eq!(report.open_at_shutdown, 2 * EACH, "{report:?}");
    assert_eq!(report.closed, 2 * EACH, "{report:?}");
    assert_eq!((report.cut, report.finished), (0, 2 * EACH), "{report:?}");
    assert!(gw.proxy.tunnels().is_empty());
    assert_eq!(gw.proxy.counters().tunnels_active, 0);

    offsets.sort();
    for q in 1..4 {
        let at = WINDOW * q / 4;
        let before = offsets.iter().filter(|&&o| o < at).count();
        let expected = 2 * EACH * q as usize / 4;
        assert!(
            before.abs_diff(expected) <= EACH / 10,
            "{before} closed before {at:?}, expected about {expected}"
        );
    }
    assert!(offsets[2 * EACH - 1] < WINDOW);
    let seen = seen.lock().unwrap();
    for tag in ["server ", "hyper "] {
        for c in 0..EACH {
            let last = format!("last {tag}{c}");
            assert!(seen.contains(&last), "lost {last}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn proxy_drain_cuts_what_remains_at_the_deadline() {
    const EACH: usize = 10;
    let (up, _seen) = recording_upstream().await;
    let set: UpstreamSet = [Upstream::new(up)].into_iter().collect();
    let gw = Gateway::start(Proxy::builder().upstream(RoundRobin::new(set))).await;
    let host = hyper_host(gw.proxy.clone()).await;
    // Clients that never read: their Close replies never come, so every
    // tunnel is still open (closing or not yet asked) at the deadline.
    let mut silent = Vec::new();
    for addr in [gw.addr, host] {
        for c in 0..EACH {
            let mut ws = client(addr).await;
            echo(&mut ws, format!("hello {c}")).await;
            silent.push(ws);
        }
    }
    assert_eq!(gw.proxy.tunnels().len(), 2 * EACH);

    let started = Instant::now();
    let report = within(
        Duration::from_secs(60),
        "drain",
        gw.proxy
            .drain(Duration::from_secs(10), Duration::from_secs(3)),
    )
    .await;
    // The deadline, plus at most the cut tunnels' shutdown.
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(report.open_at_shutdown, 2 * EACH);
    assert_eq!((report.cut, report.finished), (2 * EACH, 0), "{report:?}");
    // Closes went out for the first 3 s of the 10 s window only.
    assert!((5..=7).contains(&report.closed), "{report:?}");
    assert!(gw.proxy.tunnels().is_empty());
    assert_eq!(gw.proxy.counters().tunnels_active, 0);
    drop(silent);
}
