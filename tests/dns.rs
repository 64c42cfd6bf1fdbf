//! Upstreams discovered by DNS (feature `dns`), end to end: a real DNS
//! server on loopback UDP (tests/support/dns_server.rs, hickory-proto
//! messages over a tokio socket), a real proxy, real tokio-tungstenite
//! backends that say who they are, and answers changed while tunnels are
//! open.
//!
//! Every test runs on tokio's paused clock: the discovery's waits (TTL,
//! sweeps, deadlines) and hickory's query timeouts are tokio timers, and
//! loopback UDP is delivered before the runtime looks for the next timer,
//! so virtual time jumps straight to the next lookup.

#[path = "support/dns_server.rs"]
mod dns_server;
mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsproxy::balance::{Peer, RoundRobin, Upstream, UpstreamSet};
use wsproxy::dns::{Discovery, DiscoveryHandle, DnsName, TtlBounds};
use wsproxy::{Proxy, Route, UpstreamGroup};

use dns_server::{DnsServer, SrvRecord, Zone};
use support::{bounded, within, Gateway};

const LOCAL4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const LOCAL6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);

/// A WebSocket backend on `listener` answering each text with `"{label}
/// {text}"`.
fn backend_on(listener: TcpListener, label: String) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let label = label.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(text) = msg {
                        let reply = format!("{label} {text}");
                        if ws.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
}

/// A backend on 127.0.0.1; its label is its port.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    backend_on(listener, addr.port().to_string());
    addr
}

/// Backends on 127.0.0.1:P and [::1]:P, labelled `v4` and `v6`: the same
/// port, as every address of an A/AAAA name gets.
async fn backend_pair() -> u16 {
    for _ in 0..50 {
        let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        if let Ok(v6) = TcpListener::bind(SocketAddr::new(LOCAL6, port)).await {
            backend_on(v4, "v4".into());
            backend_on(v6, "v6".into());
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// A proxy routing everything to a round-robin group over `set`.
async fn proxy(set: &UpstreamSet) -> (Gateway, UpstreamGroup) {
    let group = UpstreamGroup::new("dns", RoundRobin::new(set.clone()));
    let gw = Gateway::start(Proxy::builder().route(Route::new("/", group.clone()))).await;
    (gw, group)
}

/// A tunnel through the proxy and the label of the backend it reached.
async fn open(gw: &Gateway) -> (WebSocketStream<TcpStream>, String) {
    let mut ws = support::client(gw.addr).await;
    let label = say(&mut ws, "hi").await;
    (ws, label)
}

/// Sends `text`; returns the label of the backend that echoed it.
async fn say(ws: &mut WebSocketStream<TcpStream>, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    let reply = bounded("echo", ws.next()).await.unwrap().unwrap();
    let reply = reply.into_text().unwrap().to_string();
    let (label, echoed) = reply.split_once(' ').unwrap();
    assert_eq!(echoed, text);
    label.to_owned()
}

/// Labels reached by `n` fresh connections (each closed after).
async fn reached(gw: &Gateway, n: usize) -> Vec<String> {
    let mut labels = Vec::new();
    for _ in 0..n {
        let (mut ws, label) = open(gw).await;
        let _ = ws.close(None).await;
        labels.push(label);
    }
    labels
}

/// Every upstream of the set, primaries then backups.
fn peers(set: &UpstreamSet) -> Vec<Peer> {
    set.snapshot()
        .tiers()
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

fn discovery(dns: &DnsServer, name: DnsName, set: &UpstreamSet) -> Discovery {
    Discovery::new(name, set.clone())
        .nameserver(dns.addr)
        .ttl_bounds(TtlBounds::new(
            Duration::from_secs(1),
            Duration::from_secs(300),
        ))
}

async fn lookups(handle: &DiscoveryHandle, n: u64) {
    bounded("a lookup", handle.wait_for(|s| s.lookups >= n)).await;
}

fn srv(port: u16, weight: u16) -> SrvRecord {
    SrvRecord {
        priority: 10,
        weight,
        port,
        target: "backend.test".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_and_aaaa_answers_join_and_leave_while_tunnels_run() {
    let port = backend_pair().await;
    let dns = DnsServer::start(Zone::with_hosts(&["chat.test"], &[LOCAL4], 1)).await;
    let set = UpstreamSet::new();
    let (gw, _group) = proxy(&set).await;
    let handle = discovery(&dns, DnsName::host("chat.test", port), &set)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    assert_eq!(reached(&gw, 3).await, ["v4", "v4", "v4"]);
    let (mut old, label) = open(&gw).await;
    assert_eq!(label, "v4");

    // ::1 joins: new connections reach it too.
    dns.change(|z| {
        z.hosts.insert("chat.test".into(), vec![LOCAL4, LOCAL6]);
    });
    bounded("the join", handle.wait_for(|s| s.joined >= 2)).await;
    let mut labels = reached(&gw, 4).await;
    labels.sort();
    assert_eq!(labels, ["v4", "v4", "v6", "v6"]);

    // 127.0.0.1 leaves: no new picks, its open tunnel keeps echoing.
    dns.change(|z| {
        z.hosts.insert("chat.test".into(), vec![LOCAL6]);
    });
    bounded("the leave", handle.wait_for(|s| s.left >= 1)).await;
    assert_eq!(reached(&gw, 4).await, ["v6", "v6", "v6", "v6"]);
    for i in 0..3 {
        assert_eq!(say(&mut old, &format!("still {i}")).await, "v4");
    }
    let v4 = SocketAddr::new(LOCAL4, port);
    let draining = peers(&set)
        .iter()
        .any(|p| p.addr().as_socket_addr() == Some(v4) && p.is_draining());
    assert!(draining, "{set:?}");

    // Its last tunnel ends: it leaves the set.
    old.close(None).await.unwrap();
    let stats = bounded("the removal", handle.wait_for(|s| s.removed >= 1)).await;
    assert_eq!(stats.members, 1);
    assert!(peers(&set)
        .iter()
        .all(|p| p.addr().as_socket_addr() != Some(v4)));
    assert_eq!(stats.failures, 0);
}

#[tokio::test(start_paused = true)]
async fn srv_records_bring_their_ports_weights_and_priorities() {
    let (a, b, c) = (backend().await, backend().await, backend().await);
    let mut zone = Zone::with_hosts(&["backend.test"], &[LOCAL4], 30);
    let mut backup = srv(c.port(), 1);
    backup.priority = 20;
    zone.srv.insert(
        "_ws._tcp.chat.test".into(),
        vec![srv(a.port(), 3), srv(b.port(), 1), backup],
    );
    let dns = DnsServer::start(zone).await;
    let set = UpstreamSet::new();
    let (gw, _group) = proxy(&set).await;
    let handle = discovery(&dns, DnsName::srv("_ws._tcp.chat.test"), &set)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    let snapshot = peers(&set);
    let weight_of = |addr: SocketAddr| {
        snapshot
            .iter()
            .find(|p| p.addr().as_socket_addr() == Some(addr))
            .map(|p| (p.weight(), p.is_backup()))
    };
    assert_eq!(weight_of(a), Some((3, false)));
    assert_eq!(weight_of(b), Some((1, false)));
    assert_eq!(weight_of(c), Some((1, true)));
    // Smooth weighted round-robin: 3 to 1 over 8 connections, exactly;
    // the backup only serves when no primary can.
    let labels = reached(&gw, 8).await;
    let count = |addr: SocketAddr| {
        labels
            .iter()
            .filter(|l| **l == addr.port().to_string())
            .count()
    };
    assert_eq!((count(a), count(b), count(c)), (6, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_vanished_srv_target_drains_its_tunnels_untouched_until_they_end() {
    let (a, b) = (backend().await, backend().await);
    let mut zone = Zone::with_hosts(&["backend.test"], &[LOCAL4], 1);
    zone.srv.insert(
        "_ws._tcp.chat.test".into(),
        vec![srv(a.port(), 1), srv(b.port(), 1)],
    );
    let dns = DnsServer::start(zone).await;
    let set = UpstreamSet::new();
    let (gw, _group) = proxy(&set).await;
    let handle = discovery(&dns, DnsName::srv("_ws._tcp.chat.test"), &set)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    let mut tunnels = Vec::new();
    for _ in 0..4 {
        tunnels.push(open(&gw).await);
    }
    let on_b = tunnels
        .iter()
        .filter(|(_, l)| *l == b.port().to_string())
        .count();
    assert_eq!(on_b, 2);

    dns.change(|z| {
        z.srv
            .insert("_ws._tcp.chat.test".into(), vec![srv(a.port(), 1)]);
    });
    bounded("the leave", handle.wait_for(|s| s.left >= 1)).await;
    let a_label = a.port().to_string();
    assert!(reached(&gw, 6).await.iter().all(|l| *l == a_label));
    // Long after (within the 60 s read timeout, which would end idle
    // tunnels anyway): b's tunnels still echo, from b; it is still in the
    // set.
    tokio::time::sleep(Duration::from_secs(50)).await;
    for (ws, label) in &mut tunnels {
        assert_eq!(say(ws, "later").await, *label);
    }
    assert_eq!(handle.stats().removed, 0);
    assert_eq!(peers(&set).len(), 2);
    for (mut ws, _) in tunnels {
        ws.close(None).await.unwrap();
    }
    bounded("the removal", handle.wait_for(|s| s.removed >= 1)).await;
    assert_eq!(peers(&set).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_srv_target_whose_lookup_fails_keeps_its_addresses() {
    let (a, b) = (backend().await, backend().await);
    let mut zone = Zone::with_hosts(&["a.test", "b.test"], &[LOCAL4], 1);
    let on = |port, target: &str| SrvRecord {
        target: target.into(),
        ..srv(port, 1)
    };
    zone.srv.insert(
        "_ws._tcp.chat.test".into(),
        vec![on(a.port(), "a.test"), on(b.port(), "b.test")],
    );
    let dns = DnsServer::start(zone).await;
    let set = UpstreamSet::new();
    let (gw, _group) = proxy(&set).await;
    let handle = discovery(&dns, DnsName::srv("_ws._tcp.chat.test"), &set)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    let b_label = b.port().to_string();
    let mut tunnels = [open(&gw).await, open(&gw).await];
    let (on_b, _) = tunnels.iter_mut().find(|(_, l)| *l == b_label).unwrap();

    // The SRV answer and a.test still resolve; b.test's lookup fails.
    dns.change(|z| {
        z.servfail_for.insert("b.test".into());
    });
    let stats = bounded("lookups", handle.wait_for(|s| s.lookups >= 3)).await;
    assert_eq!((stats.members, stats.left), (2, 0));
    assert!(peers(&set).iter().all(|p| !p.is_draining()));
    let mut labels = reached(&gw, 2).await;
    labels.sort();
    let mut both = [a.port().to_string(), b_label.clone()];
    both.sort();
    assert_eq!(labels, both);
    assert_eq!(say(on_b, "still there").await, b_label);

    // b.test gone for good (NXDOMAIN): now it leaves.
    dns.change(|z| {
        z.servfail_for.clear();
        z.hosts.remove("b.test");
    });
    bounded("the leave", handle.wait_for(|s| s.left >= 1)).await;
    let a_label = a.port().to_string();
    assert!(reached(&gw, 2).await.iter().all(|l| *l == a_label));
}

#[tokio::test(start_paused = true)]
async fn the_drain_deadline_closes_leftover_tunnels_with_1001() {
    let (a, b) = (backend().await, backend().await);
    let mut zone = Zone::with_hosts(&["backend.test"], &[LOCAL4], 1);
    zone.srv
        .insert("_ws._tcp.chat.test".into(), vec![srv(b.port(), 1)]);
    let dns = DnsServer::start(zone).await;
    let set = UpstreamSet::new();
    let (gw, group) = proxy(&set).await;
    let handle = discovery(&dns, DnsName::srv("_ws._tcp.chat.test"), &set)
        .close_after(group, Duration::from_secs(60))
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    let (mut leftover, label) = open(&gw).await;
    assert_eq!(label, b.port().to_string());

    dns.change(|z| {
        z.srv
            .insert("_ws._tcp.chat.test".into(), vec![srv(a.port(), 1)]);
    });
    bounded("the leave", handle.wait_for(|s| s.left >= 1)).await;
    let left_at = Instant::now();
    // Before the deadline it runs on.
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(say(&mut leftover, "before").await, b.port().to_string());
    let (code, at) = support::await_close(&mut leftover).await;
    assert_eq!(code, Some(1001));
    let after = at - left_at;
    assert!(
        after >= Duration::from_secs(60) && after < Duration::from_secs(62),
        "{after:?}"
    );
    let stats = within(
        Duration::from_secs(30),
        "the removal",
        handle.wait_for(|s| s.removed >= 1),
    )
    .await;
    assert_eq!(stats.closed, 1);
    assert_eq!(peers(&set).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_ttl_is_honoured_within_the_bounds() {
    let port = backend_pair().await;
    let dns = DnsServer::start(Zone::with_hosts(&["chat.test"], &[LOCAL4], 30)).await;
    let set = UpstreamSet::new();
    let handle = Discovery::new(DnsName::host("chat.test", port), set.clone())
        .nameserver(dns.addr)
        .ttl_bounds(TtlBounds::new(
            Duration::from_secs(5),
            Duration::from_secs(120),
        ))
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    let first = Instant::now();
    assert_eq!(handle.stats().ttl, Some(Duration::from_secs(30)));
    dns.change(|z| z.ttl = 0);
    // The next lookup waits the 30 s the first answer said, no less.
    within(
        Duration::from_secs(600),
        "lookup 2",
        handle.wait_for(|s| s.lookups >= 2),
    )
    .await;
    let waited = first.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
    // TTL 0 is raised to the 5 s minimum...
    assert_eq!(handle.stats().ttl, Some(Duration::from_secs(5)));
    let second = Instant::now();
    within(
        Duration::from_secs(600),
        "lookup 3",
        handle.wait_for(|s| s.lookups >= 3),
    )
    .await;
    let waited = second.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    // ...and a day is cut to the 120 s maximum.
    dns.change(|z| z.ttl = 86_400);
    within(
        Duration::from_secs(600),
        "lookup 4",
        handle.wait_for(|s| s.lookups >= 4),
    )
    .await;
    let third = Instant::now();
    assert_eq!(handle.stats().ttl, Some(Duration::from_secs(120)));
    within(
        Duration::from_secs(600),
        "lookup 5",
        handle.wait_for(|s| s.lookups >= 5),
    )
    .await;
    let waited = third.elapsed();
    assert!(
        waited >= Duration::from_secs(120) && waited < Duration::from_secs(121),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn servfail_and_empty_answers_keep_the_last_set() {
    let port = backend_pair().await;
    let dns = DnsServer::start(Zone::with_hosts(&["chat.test"], &[LOCAL4, LOCAL6], 1)).await;
    let set = UpstreamSet::new();
    let (gw, _group) = proxy(&set).await;
    let handle = discovery(&dns, DnsName::host("chat.test", port), &set)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    let (mut tunnel, _) = open(&gw).await;

    dns.change(|z| z.servfail = true);
    let stats = bounded("failures", handle.wait_for(|s| s.failures >= 3)).await;
    assert_eq!((stats.members, stats.left), (2, 0));
    let mut labels = reached(&gw, 2).await;
    labels.sort();
    assert_eq!(labels, ["v4", "v6"]);
    assert!(dns.queries() > 0);

    // NXDOMAIN, then NOERROR with no address: kept as well.
    dns.change(|z| {
        z.servfail = false;
        z.hosts.clear();
    });
    let seen = handle.stats().failures;
    // Backed off by now: up to 30 s between lookups.
    within(
        Duration::from_secs(120),
        "an empty answer",
        handle.wait_for(|s| s.failures >= seen + 2),
    )
    .await;
    assert_eq!(peers(&set).iter().filter(|p| !p.is_draining()).count(), 2);
    say(&mut tunnel, "through it all").await;

    // The name comes back with one address: now it changes.
    dns.change(|z| {
        z.hosts.insert("chat.test".into(), vec![LOCAL6]);
    });
    let stats = within(
        Duration::from_secs(60),
        "recovery",
        handle.wait_for(|s| s.left >= 1),
    )
    .await;
    assert!(stats.failures >= 5);
    assert_eq!(reached(&gw, 2).await, ["v6", "v6"]);
}

/// An outage is not polled every second: the retries back off to 30 s,
/// and a recovered server is heard from within that.
#[tokio::test(start_paused = true)]
async fn lookups_that_keep_failing_back_off() {
    let port = backend_pair().await;
    let dns = DnsServer::start(Zone::with_hosts(&["chat.test"], &[LOCAL4], 1)).await;
    let set = UpstreamSet::new();
    let handle = discovery(&dns, DnsName::host("chat.test", port), &set)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    dns.change(|z| z.servfail = true);
    let before = handle.stats().lookups;
    tokio::time::sleep(Duration::from_secs(300)).await;
    // 1, 2, 4, 8, 16, then 30 s apart: about 14 lookups in 300 s, where a
    // fixed 1 s retry makes 300.
    let failed = handle.stats().lookups - before;
    assert!((10..=16).contains(&failed), "{failed} lookups");
    assert_eq!(handle.stats().members, 1);
    dns.change(|z| z.servfail = false);
    let seen = handle.stats().lookups;
    let back = Instant::now();
    within(
        Duration::from_secs(60),
        "the recovered answer",
        handle.wait_for(|s| s.lookups > seen && s.failures == failed),
    )
    .await;
    assert!(
        back.elapsed() <= Duration::from_secs(30),
        "{:?}",
        back.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_discovery_stops_when_its_handle_is_dropped_and_leaves_static_upstreams_alone() {
    let port = backend_pair().await;
    let dns = DnsServer::start(Zone::with_hosts(&["chat.test"], &[LOCAL6], 1)).await;
    let set = UpstreamSet::new();
    let fixed = set.add(Upstream::new(SocketAddr::new(LOCAL4, port)));
    let handle = discovery(&dns, DnsName::host("chat.test", port), &set)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    assert_eq!(peers(&set).len(), 2);
    dns.change(|z| {
        z.hosts.insert("chat.test".into(), vec![LOCAL4]);
    });
    // 127.0.0.1 is named now, but the static upstream is not the
    // discovery's: a second one is added beside it, and ::1 drains.
    bounded("the change", handle.wait_for(|s| s.left >= 1)).await;
    assert!(set.snapshot().get(fixed).is_some_and(|p| !p.is_draining()));
    drop(handle);
    let asked = dns.queries();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(dns.queries(), asked);
}

#[tokio::test(start_paused = true)]
async fn a_join_can_run_a_rebalance_that_moves_tunnels_to_the_newcomer() {
    let (a, b) = (backend().await, backend().await);
    let mut zone = Zone::with_hosts(&["backend.test"], &[LOCAL4], 1);
    zone.srv
        .insert("_ws._tcp.chat.test".into(), vec![srv(a.port(), 1)]);
    let dns = DnsServer::start(zone).await;
    let set = UpstreamSet::new();
    let (gw, group) = proxy(&set).await;
    let rebalancer = wsproxy::proxy::Rebalancer::new(group, set.clone())
        .rate(50)
        .settle(Duration::from_millis(200));
    let handle = discovery(&dns, DnsName::srv("_ws._tcp.chat.test"), &set)
        .rebalance(rebalancer)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    let mut tunnels = Vec::new();
    for _ in 0..4 {
        tunnels.push(open(&gw).await.0);
    }
    dns.change(|z| {
        z.srv.insert(
            "_ws._tcp.chat.test".into(),
            vec![srv(a.port(), 1), srv(b.port(), 1)],
        );
    });
    bounded("the join", handle.wait_for(|s| s.joined >= 2)).await;
    // 4 tunnels on a, none on b: two are asked to reconnect (Close 1012).
    let mut moved = 0;
    for ws in &mut tunnels {
        if let Ok(Some(Ok(Message::Close(Some(frame))))) =
            tokio::time::timeout(Duration::from_secs(20), ws.next()).await
        {
            assert_eq!(u16::from(frame.code), 1012);
            moved += 1;
        }
    }
    assert_eq!(moved, 2);
}

#[tokio::test(start_paused = true)]
async fn a_retired_discovery_stops_resolving_and_drains_what_it_added() {
    let (a, b, fixed) = (backend().await, backend().await, backend().await);
    let mut zone = Zone::with_hosts(&["backend.test"], &[LOCAL4], 1);
    zone.srv.insert(
        "_ws._tcp.chat.test".into(),
        vec![srv(a.port(), 1), srv(b.port(), 1)],
    );
    let dns = DnsServer::start(zone).await;
    let set = UpstreamSet::new();
    set.add(Upstream::new(fixed));
    let (gw, _group) = proxy(&set).await;
    let handle = discovery(&dns, DnsName::srv("_ws._tcp.chat.test"), &set)
        .spawn()
        .unwrap();
    lookups(&handle, 1).await;
    assert_eq!(peers(&set).len(), 3);
    // A tunnel on one of the discovered two.
    let mut found = None;
    for _ in 0..30 {
        let (ws, label) = open(&gw).await;
        if label != fixed.port().to_string() {
            found = Some((ws, label));
            break;
        }
    }
    let (mut held, label) = found.expect("30 tunnels, none on a discovered upstream");

    let asked = dns.queries();
    let drained = handle.retire();
    // The idle one leaves at once, the held one drains.
    bounded("the idle one's removal", async {
        while peers(&set).len() > 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let draining: Vec<u16> = peers(&set)
        .iter()
        .filter(|p| p.is_draining())
        .filter_map(|p| p.addr().as_socket_addr().map(|a| a.port()))
        .collect();
    assert_eq!(draining, [label.parse::<u16>().unwrap()]);
    // New tunnels reach the static upstream only; the held one runs on.
    assert_eq!(reached(&gw, 4).await, vec![fixed.port().to_string(); 4]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(say(&mut held, "still here").await, label);
    assert_eq!(dns.queries(), asked, "a retired discovery looked up again");

    held.close(None).await.unwrap();
    let last = within(Duration::from_secs(10), "the retired task's end", drained).await;
    assert_eq!((last.left, last.removed, last.members), (2, 2, 0));
    let left: Vec<Option<SocketAddr>> = peers(&set)
        .iter()
        .map(|p| p.addr().as_socket_addr())
        .collect();
    assert_eq!(left, [Some(fixed)]);
}
