//! Instances that agree without talking (issue 16 §2): three gateway
//! processes (the example binary, built with `--features dns`), started one
//! after another, given the same upstreams in three different orders (two
//! as `--upstream` lists, one from an SRV name whose in-process DNS server
//! rotates its records on every answer), send each of 1,000 keys to the
//! same upstream, and the very one the library's own balancer predicts.
//! Then an upstream joins through DNS, seen by all three: agreement is
//! still 100%, and under consistent hashing every key that moved went to
//! the newcomer.
//!
//! Keys ride short WebSockets to backends that answer with their port.
//! See tests/gateway.rs for where the binary comes from (`cargo test
//! --all-features`, or `cargo build --example gateway --features dns` before
//! `cargo test --features dns --test agreement`).

#[path = "support/dns_server.rs"]
mod dns_server;
mod support;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wsproxy::balance::{
    Balancer, ConsistentHash, HashKey, IpHash, PickContext, Upstream, UpstreamSet,
};

use dns_server::{DnsServer, SrvRecord, Zone};
use support::{bounded, gateway_bin, within};

const KEYS: usize = 1_000;

/// A gateway process, killed on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn start(args: &[String]) -> Self {
        let mut child = Command::new(gateway_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ws://").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no `listening on` line from the gateway");
        Self { child, addr }
    }
}

/// A WebSocket backend answering each text with its port.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(Message::Text(_))) = ws.next().await {
                    if ws
                        .send(Message::text(addr.port().to_string()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// `--balance consistent-hash --hash-key path`: key i is `/k/i`.
    Ring,
    /// `--balance ip-hash` behind a trusted proxy: key i is the client
    /// `10.(i/256).(i%256).7` in X-Forwarded-For, one /24 each.
    IpHash,
}

impl Strategy {
    fn flags(self) -> Vec<String> {
        let flags: &[&str] = match self {
            Self::Ring => &["--balance", "consistent-hash", "--hash-key", "path"],
            Self::IpHash => &["--balance", "ip-hash", "--trusted-proxy", "127.0.0.1/32"],
        };
        flags.iter().map(|s| s.to_string()).collect()
    }

    fn client(i: usize) -> IpAddr {
        IpAddr::from([10, (i / 256) as u8, (i % 256) as u8, 7])
    }

    /// The port the library's own balancer places key `i` on, over
    /// `backends` (in yet another order).
    fn predict(self, backends: &[SocketAddr]) -> Vec<u16> {
        let set: UpstreamSet = backends.iter().rev().map(|&a| Upstream::new(a)).collect();
        let balancer: Box<dyn Balancer> = match self {
            Self::Ring => Box::new(ConsistentHash::new(set, HashKey::Path)),
            Self::IpHash => Box::new(IpHash::new(set)),
        };
        (0..KEYS)
            .map(|i| {
                let request = http::Request::get(format!("/k/{i}")).body(()).unwrap();
                let ctx = PickContext::new(Self::client(i), &request, std::time::Instant::now());
                balancer.pick(&ctx).unwrap().addr().port()
            })
            .collect()
    }
}

/// The port each key reached through `gw`, eight WebSockets at a time.
async fn sweep(gw: SocketAddr, strategy: Strategy, keys: usize) -> Vec<u16> {
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in (w..keys).step_by(workers) {
                let mut request = format!("ws://{gw}/k/{i}").into_client_request().unwrap();
                if strategy == Strategy::IpHash {
                    let xff = Strategy::client(i).to_string().parse().unwrap();
                    request.headers_mut().insert("x-forwarded-for", xff);
                }
                let (mut ws, _) = bounded("handshake", tokio_tungstenite::connect_async(request))
                    .await
                    .unwrap();
                ws.send(Message::text("who")).await.unwrap();
                let reply = bounded("answer", ws.next()).await.unwrap().unwrap();
                let port: u16 = reply.into_text().unwrap().parse().unwrap();
                let _ = ws.close(None).await;
                got.push((i, port));
            }
            got
        }));
    }
    let mut ports = vec![0u16; keys];
    for task in tasks {
        for (i, port) in task.await.unwrap() {
            ports[i] = port;
        }
    }
    ports
}

async fn agreement_through_a_join(strategy: Strategy) {
    let started = Instant::now();
    let [a, b, c, d] = [
        backend().await,
        backend().await,
        backend().await,
        backend().await,
    ];
    let srv = |addr: SocketAddr| SrvRecord {
        priority: 10,
        weight: 1,
        port: addr.port(),
        target: "backend.test".into(),
    };
    let mut zone = Zone {
        rotate: true,
        ..Zone::with_hosts(&["backend.test"], &[IpAddr::from([127, 0, 0, 1])], 1)
    };
    zone.srv
        .insert("_ws._tcp.pool.test".into(), vec![srv(b), srv(c), srv(a)]);
    let dns = DnsServer::start(zone).await;

    let common = |extra: &[String]| -> Vec<String> {
        let mut args = strategy.flags();
        args.extend([
            "--resolver".to_string(),
            dns.addr.to_string(),
            "--resolve-min-ttl".into(),
            "200ms".into(),
            "--resolve-max-ttl".into(),
            "1s".into(),
            // Every key is a new connection: none may be refused.
            "--max-connections".into(),
            "1000".into(),
        ]);
        args.extend(extra.iter().cloned());
        args
    };
    let list = |addrs: &[SocketAddr]| -> Vec<String> {
        let mut args: Vec<String> = addrs
            .iter()
            .flat_map(|a| ["--upstream".to_string(), a.to_string()])
            .collect();
        // The newcomer arrives through DNS for these two as well.
        args.extend([
            "--upstream".to_string(),
            "srv:_ws._tcp.more.test".to_string(),
        ]);
        args
    };
    let gateways = [
        Gateway::start(&common(&list(&[a, b, c]))),
        Gateway::start(&common(&list(&[c, a, b]))),
        Gateway::start(&common(&[
            "--upstream".into(),
            "srv:_ws._tcp.pool.test".into(),
        ])),
    ];

    let before = strategy.predict(&[a, b, c]);
    let mut seen = Vec::new();
    for gw in &gateways {
        let got = within(
            Duration::from_secs(60),
            "a sweep",
            sweep(gw.addr, strategy, KEYS),
        )
        .await;
        assert_eq!(got, before, "gateway {} disagrees", gw.addr);
        seen.push(got);
    }
    // Every upstream takes keys: agreement is not "all on one".
    for backend in [a, b, c] {
        assert!(before.iter().filter(|&&p| p == backend.port()).count() > 100);
    }

    // d joins: in the pool's SRV answer, and as the other two's SRV name.
    dns.change(|z| {
        z.srv.insert(
            "_ws._tcp.pool.test".into(),
            vec![srv(b), srv(d), srv(c), srv(a)],
        );
        z.srv.insert("_ws._tcp.more.test".into(), vec![srv(d)]);
    });
    let after = strategy.predict(&[a, b, c, d]);
    // Each gateway re-resolves within a second: wait until a sample agrees.
    for gw in &gateways {
        let sample = 64;
        within(Duration::from_secs(20), "the join", async {
            while sweep(gw.addr, strategy, sample).await != after[..sample] {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    }
    for gw in &gateways {
        let got = within(
            Duration::from_secs(60),
            "a sweep",
            sweep(gw.addr, strategy, KEYS),
        )
        .await;
        assert_eq!(got, after, "gateway {} disagrees after the join", gw.addr);
    }
    let moved: Vec<usize> = (0..KEYS).filter(|&i| before[i] != after[i]).collect();
    assert!(!moved.is_empty());
    if strategy == Strategy::Ring {
        // Only keys whose home is now the newcomer moved, about 1/4.
        assert!(moved.iter().all(|&i| after[i] == d.port()));
        assert!((150..350).contains(&moved.len()), "{}", moved.len());
    }
    eprintln!(
        "{}: 3 gateways x {KEYS} keys agreed before and after a join; {} keys moved; {:?}",
        if strategy == Strategy::Ring {
            "consistent-hash"
        } else {
            "ip-hash"
        },
        moved.len(),
        started.elapsed()
    );
    drop(gateways);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_agree_on_every_key_under_consistent_hash_before_and_after_a_join() {
    agreement_through_a_join(Strategy::Ring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_agree_on_every_key_under_ip_hash_before_and_after_a_join() {
    agreement_through_a_join(Strategy::IpHash).await;
}
