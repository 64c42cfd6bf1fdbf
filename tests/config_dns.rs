//! Live reloads of a gateway whose groups come from DNS (feature `dns`):
//! a gateway process started with `--config` naming `dns:NAME:PORT` and
//! `srv:NAME` upstreams, resolved by the in-process DNS server of
//! tests/support/dns_server.rs, reloaded with SIGHUP while real
//! tokio-tungstenite tunnels run and new ones keep arriving.
//!
//! The gateway is a separate process on the real clock, so the DNS TTLs
//! are kept short (`resolve-max-ttl`) and every wait is bounded.

#[path = "support/config_gateway.rs"]
mod config_gateway;
#[path = "support/dns_server.rs"]
mod dns_server;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config_gateway::{echoes, named_upstream, open, Gateway};
use dns_server::{DnsServer, SrvRecord, Zone};
use support::{bounded, within};

const SRV_NAME: &str = "_ws._tcp.chat.test";
const LOCAL4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn srv(port: u16) -> SrvRecord {
    SrvRecord {
        priority: 10,
        weight: 1,
        port,
        target: "chat.test".into(),
    }
}

/// `/` goes to `dns:chat.test:PORT`, `/srv` to `srv:_ws._tcp.chat.test`;
/// `connect` is the harmless setting the reloads change.
fn config(dns: SocketAddr, port: u16, connect: u32) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
upstream = ["dns:chat.test:{port}"]
resolver = "{dns}"
resolve-min-ttl = "100ms"
resolve-max-ttl = "200ms"
[timeouts]
connect = "{connect}s"
[[route]]
prefix = "/srv"
upstreams = ["srv:{SRV_NAME}"]
"#
    )
}

/// Reloads keep the addresses DNS discovered: no handshake fails during
/// or after them, open tunnels run on, and the discoveries keep running
/// over the kept sets (a new SRV target gets connections afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_dns_upstreams_and_their_discovery() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let mut zone = Zone::with_hosts(&["chat.test"], &[LOCAL4], 1);
    zone.srv.insert(SRV_NAME.into(), vec![srv(a.port())]);
    let dns = DnsServer::start(zone).await;
    let gateway = Gateway::start(&config(dns.addr, a.port(), 5), &[]).await;
    let addr = gateway.addr;
    // Both names answered before the banner (stderr is read by a thread of
    // its own, so its lines may come a moment later).
    bounded("the first answers' log lines", async {
        while !(gateway.stderr().contains("dns chat.test") && gateway.stderr().contains(SRV_NAME)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        !gateway.stderr().contains("no address yet"),
        "{}",
        gateway.stderr()
    );

    let (mut on_dns, name) = open(addr, "/").await;
    assert_eq!(name, "a");
    echoes(&mut on_dns, "before the reloads").await;
    let (mut on_srv, name) = open(addr, "/srv/x").await;
    assert_eq!(name, "a");

    // New connections all along: each opens, echoes and closes; a failed
    // handshake panics its task.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut churn = Vec::new();
    for i in 0..2 {
        let (stop, opened) = (stop.clone(), opened.clone());
        churn.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = if (n + i) % 2 == 0 { "/" } else { "/srv/x" };
                let (mut ws, name) = open(addr, path).await;
                assert_eq!(name, "a", "{path}");
                echoes(&mut ws, &format!("churn {i} {n}")).await;
                let _ = bounded("close", ws.close(None)).await;
                opened.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    // Reloads spaced out over several re-resolutions (200 ms each).
    for round in 0..6 {
        gateway
            .reload(&config(dns.addr, a.port(), 5 + round % 2))
            .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A while after the last one too: the discoveries' next answers must
    // find the sets they keep current.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    for task in churn {
        bounded("churn", task)
            .await
            .expect("no churn connection failed");
    }
    let opened = opened.load(Ordering::Relaxed);
    eprintln!("{opened} new connections handshaked and echoed during 6 reloads");
    assert!(opened >= 10, "too few new connections: {opened}");
    let err = gateway.stderr();
    assert_eq!(err.matches("gateway: reloaded ").count(), 6, "{err}");
    assert!(!err.contains("take effect after a restart"), "{err}");
    echoes(&mut on_dns, "after the reloads").await;
    echoes(&mut on_srv, "after the reloads").await;

    // The SRV answer gains b's port: the discovery, still running over the
    // kept set, brings b in.
    dns.change(|z| {
        z.srv
            .insert(SRV_NAME.into(), vec![srv(a.port()), srv(b.port())]);
    });
    let queries = dns.queries();
    within(Duration::from_secs(10), "b reached through /srv", async {
        loop {
            let (mut ws, name) = open(addr, "/srv/x").await;
            echoes(&mut ws, "which one").await;
            let _ = bounded("close", ws.close(None)).await;
            if name == "b" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(dns.queries() > queries);
    // `/` is A records on a's port: still a only.
    for _ in 0..4 {
        let (_, name) = open(addr, "/").await;
        assert_eq!(name, "a");
    }
    echoes(&mut on_dns, "after b joined").await;
    echoes(&mut on_srv, "after b joined").await;

    // a's port leaves the SRV answer while `on_srv` is open on it: a
    // drains, and a reload must not bring it back (only the addresses DNS
    // still serves are carried) nor cut its tunnel.
    dns.change(|z| {
        z.srv.insert(SRV_NAME.into(), vec![srv(b.port())]);
    });
    within(Duration::from_secs(10), "a drained from /srv", async {
        let mut in_a_row = 0;
        while in_a_row < 4 {
            let (_, name) = open(addr, "/srv/x").await;
            in_a_row = if name == "b" { in_a_row + 1 } else { 0 };
        }
    })
    .await;
    gateway.reload(&config(dns.addr, a.port(), 7)).await;
    for _ in 0..6 {
        let (_, name) = open(addr, "/srv/x").await;
        assert_eq!(name, "b", "a reload brought back an address DNS dropped");
    }
    echoes(&mut on_srv, "draining, not dropped").await;
    echoes(&mut on_dns, "at the end").await;
}

/// `/` to `a`; `/dns` to `upstreams`, if any; DNS from `dns`, re-resolved
/// every 200 ms at most.
fn with_dns_route(dns: SocketAddr, a: SocketAddr, upstreams: Option<&str>) -> String {
    let route = upstreams.map_or(String::new(), |list| {
        format!("[[route]]\nprefix = \"/dns\"\nupstreams = [\"{list}\"]\n")
    });
    format!(
        r#"listen = "127.0.0.1:0"
upstream = ["{a}"]
resolver = "{dns}"
resolve-min-ttl = "100ms"
resolve-max-ttl = "200ms"
{route}"#
    )
}

/// A reload that adds a `dns:` route starts its discovery before the route
/// is in force (its first tunnel connects), one that renames the DNS
/// upstream starts the new name and drains the old one's addresses (their
/// tunnels run on), and one that drops it stops the lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_start_replace_and_stop_dns_discoveries() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let dns = DnsServer::start(Zone::with_hosts(&["chat.test", "other.test"], &[LOCAL4], 1)).await;
    let gateway = Gateway::start(&with_dns_route(dns.addr, a, None), &[]).await;
    let addr = gateway.addr;
    assert_eq!(dns.queries(), 0);

    let on_chat = format!("dns:chat.test:{}", b.port());
    gateway
        .reload(&with_dns_route(dns.addr, a, Some(&on_chat)))
        .await;
    // At once: no tunnel may meet an empty group.
    let (mut on_b, name) = open(addr, "/dns/x").await;
    assert_eq!(name, "b");
    echoes(&mut on_b, "through the added route").await;

    let on_other = format!("dns:other.test:{}", c.port());
    gateway
        .reload(&with_dns_route(dns.addr, a, Some(&on_other)))
        .await;
    let err = gateway.stderr();
    assert!(
        err.contains(&format!("dns chat.test:{} of /dns stopped", b.port())),
        "{err}"
    );
    let (mut on_c, name) = open(addr, "/dns/x").await;
    assert_eq!(name, "c");
    // Well past several re-resolutions: chat.test's address drains and
    // stays out.
    for _ in 0..6 {
        let (_, name) = open(addr, "/dns/x").await;
        assert_eq!(name, "c", "a renamed DNS upstream still gets tunnels");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    echoes(&mut on_b, "draining, not dropped").await;

    gateway
        .reload(&with_dns_route(dns.addr, a, Some(&a.to_string())))
        .await;
    let (_, name) = open(addr, "/dns/x").await;
    assert_eq!(name, "a");
    // A lookup under way may still land; none may start after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = dns.queries();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        dns.queries(),
        asked,
        "a dropped DNS upstream is still resolved"
    );
    echoes(&mut on_c, "draining, not dropped").await;
    echoes(&mut on_b, "at the end").await;
}

/// `/` to `dns:chat.test:PORT` with `options`; an extra route when
/// `extra`, and `connect` seconds: what the reloads change.
fn steady(
    dns: SocketAddr,
    port: u16,
    options: &str,
    extra: Option<SocketAddr>,
    connect: u32,
) -> String {
    let route = extra.map_or(String::new(), |b| {
        format!("[[route]]\nprefix = \"/extra\"\nupstreams = [\"{b}\"]\n")
    });
    format!(
        r#"listen = "127.0.0.1:0"
upstream = ["dns:chat.test:{port}{options}"]
resolver = "{dns}"
resolve-max-ttl = "60s"
{route}[timeouts]
connect = "{connect}s"
"#
    )
}

/// Reloads that leave a DNS upstream as it was leave its discovery alone:
/// no new lookup, the same upstreams. One that changes its options
/// replaces it, without a moment with no upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_dns_upstream_keeps_its_discovery_through_reloads() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let dns = DnsServer::start(Zone::with_hosts(&["chat.test"], &[LOCAL4], 30)).await;
    let gateway = Gateway::start(&steady(dns.addr, a.port(), "", None, 5), &[]).await;
    let addr = gateway.addr;
    let (mut held, name) = open(addr, "/").await;
    assert_eq!(name, "a");
    let asked = dns.queries();
    assert!(asked > 0);

    for round in 0..4 {
        let extra = (round % 2 == 0).then_some(b);
        gateway
            .reload(&steady(dns.addr, a.port(), "", extra, 6 + round))
            .await;
        let (_, name) = open(addr, "/").await;
        assert_eq!(name, "a");
    }
    assert_eq!(
        dns.queries(),
        asked,
        "a reload looked an unchanged name up again"
    );
    assert!(
        !gateway.stderr().contains("stopped"),
        "{}",
        gateway.stderr()
    );

    gateway
        .reload(&steady(dns.addr, a.port(), ",max_fails=2", None, 5))
        .await;
    let (_, name) = open(addr, "/").await;
    assert_eq!(name, "a");
    assert!(dns.queries() > asked);
    let err = gateway.stderr();
    assert!(
        err.contains(&format!("dns chat.test:{} of default stopped", a.port())),
        "{err}"
    );
    echoes(&mut held, "on the replaced discovery's upstream").await;
}

/// A reload that renames a DNS upstream to a name with no address yet
/// keeps the old name's discovery and addresses, so the group never goes
/// empty; once the new name has addresses, the next reload retires the
/// old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_dns_upstream_drains_only_once_its_successor_has_addresses() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let dns = DnsServer::start(Zone::with_hosts(&["chat.test"], &[LOCAL4], 1)).await;
    let on_chat = format!("dns:chat.test:{}", b.port());
    let gateway = Gateway::start(&with_dns_route(dns.addr, a, Some(&on_chat)), &[]).await;
    let addr = gateway.addr;
    let (_, name) = open(addr, "/dns/x").await;
    assert_eq!(name, "b");

    // other.test has no address yet.
    let renamed = with_dns_route(dns.addr, a, Some(&format!("dns:other.test:{}", c.port())));
    gateway.reload(&renamed).await;
    bounded("the old name kept", async {
        while !gateway
            .stderr()
            .contains("runs on until the names replacing it")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for _ in 0..6 {
        let (_, name) = open(addr, "/dns/x").await;
        assert_eq!(name, "b", "the group lost its old addresses");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    dns.change(|zone| {
        zone.hosts.insert("other.test".into(), vec![LOCAL4]);
    });
    bounded("the new name serving", async {
        while open(addr, "/dns/x").await.1 != "c" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    gateway.reload(&renamed).await;
    bounded("the old name retired", async {
        let stopped = format!("dns chat.test:{} of /dns stopped", b.port());
        while !gateway.stderr().contains(&stopped) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The retired task drains b's address as it runs next.
    bounded("6 tunnels in a row to c", async {
        let mut in_a_row = 0;
        while in_a_row < 6 {
            in_a_row = if open(addr, "/dns/x").await.1 == "c" {
                in_a_row + 1
            } else {
                0
            };
        }
    })
    .await;
}
