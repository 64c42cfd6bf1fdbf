//! The proxy out of file descriptors: its own lack is no upstream's failure.
//! A request whose upstream socket cannot be opened gets 500 (nginx's answer
//! to a failed `socket()`), no other upstream is tried, none is marked
//! failed, and health checks that fail meanwhile count for nothing.
//!
//! Alone in its binary: it exhausts the descriptors of the whole process.
#![cfg(target_os = "linux")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wsproxy::balance::{PickContext, RoundRobin, Upstream, UpstreamAddr, UpstreamSet};
use wsproxy::proxy::{Probe, ProbeFuture, TcpProbe};
use wsproxy::{HealthCheck, HealthChecker, Proxy};

use support::*;

/// Lowers the soft descriptor limit to at most 4096, so that running out
/// takes few files whatever the machine allows.
fn lower_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls take a pointer to a valid `rlimit` and only read
    // or write it.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(4096);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Opens `/dev/null` until the process has no descriptor left.
fn hog_every_descriptor() -> Vec<std::fs::File> {
    let mut hog = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hog.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return hog,
            Err(e) => panic!("{e}"),
        }
        assert!(hog.len() < 1 << 20, "no descriptor limit");
    }
}

/// A TCP probe that counts the checks it finished.
#[derive(Debug, Default)]
struct Counted(Arc<AtomicUsize>);

impl Probe for Counted {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        Box::pin(async move {
            let ok = TcpProbe.probe(upstream).await;
            self.0.fetch_add(1, Ordering::SeqCst);
            ok
        })
    }
}

#[tokio::test]
async fn out_of_descriptors_is_a_500_and_no_upstreams_failure() {
    lower_descriptor_limit();
    let a = ws_upstream(WsUpstreamOptions::default()).await;
    let b = ws_upstream(WsUpstreamOptions::default()).await;
    let set = UpstreamSet::new();
    let ids = [
        set.add(Upstream::new(a.addr)),
        set.add(Upstream::new(b.addr)),
    ];
    let gw = Gateway::start(Proxy::builder().upstream(RoundRobin::new(set.clone()))).await;
    let checks = Arc::new(AtomicUsize::new(0));
    let config = HealthCheck::builder()
        .probe(Counted(Arc::clone(&checks)))
        .interval(Duration::from_millis(20))
        .fall(1)
        .build()
        .unwrap();

    // Accepted before the descriptors run out: only the upstream's socket
    // cannot be had.
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    bounded("the accept", async {
        while gw.proxy.counters().connections == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let hog = hog_every_descriptor();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(&mut client, b"\r\n\r\n").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 500"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Checks of fall 1 that fail for want of sockets mark nothing down.
    let checker = tokio::spawn(HealthChecker::new(set.clone(), config).run(std::future::pending()));
    bounded("three checks", async {
        while checks.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    checker.abort();
    drop(hog);

    let counters = gw.proxy.counters();
    assert_eq!(
        counters.rejected_with(http::StatusCode::INTERNAL_SERVER_ERROR),
        1
    );
    let request = http::Request::get("/").body(()).unwrap();
    let ctx = PickContext::new(
        "127.0.0.1".parse().unwrap(),
        &request,
        std::time::Instant::now(),
    );
    let snapshot = set.snapshot();
    for id in ids {
        let peer = snapshot.get(id).unwrap();
        assert!(peer.is_available(&ctx), "{id} marked failed");
        assert!(!peer.is_check_down(), "{id} checked down");
    }
    // And with descriptors again, the proxy serves.
    let mut ws = client_to(gw.addr, "/").await;
    echo(&mut ws, "back".to_owned()).await;
    gw.shutdown().await;
}
