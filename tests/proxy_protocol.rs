//! The PROXY protocol end to end (feature `proxy-protocol`): a loopback
//! "balancer" writes the header, a raw upstream records what the proxy sent.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wsproxy::balance::{Balancer, IpHash, PickContext, RoundRobin, Upstream, UpstreamSet};
use wsproxy::handshake::Status;
use wsproxy::proxy_protocol::{encode_v2, parse, ProxyProtocol};
use wsproxy::route::Route;
use wsproxy::{Proxy, ProxyBuilder, UpstreamGroup};

use support::{await_records, bounded, raw_upstream, read_to_end, read_until, Gateway};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: chat.example:8443\r\n\r\n";

fn to(addr: SocketAddr) -> ProxyBuilder {
    let set: UpstreamSet = [Upstream::new(addr)].into_iter().collect();
    Proxy::builder().upstream(RoundRobin::new(set))
}

fn loopback_trusted() -> ProxyProtocol {
    ProxyProtocol::from_cidrs(["127.0.0.0/8", "::1"]).unwrap()
}

/// One header field of a recorded request head.
fn field(record: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(record);
    text.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// Sends `pieces` one write at a time (a pause between, so each is its
/// own read on the proxy's side), then reads the answer head.
async fn send(gw: &Gateway, pieces: &[&[u8]]) -> Vec<u8> {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stream.write_all(piece).await.unwrap();
    }
    read_until(&mut stream, b"\r\n\r\n").await
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_client_for_x_real_ip_and_the_access_log() {
    let v1_4 = b"PROXY TCP4 198.51.100.7 10.0.0.1 50123 443\r\n".to_vec();
    let v1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 50123 443\r\n".to_vec();
    let v2_4 = encode_v2(
        "198.51.100.7:50123".parse().unwrap(),
        "10.0.0.1:443".parse().unwrap(),
    );
    let v2_6 = encode_v2(
        "[2001:db8::7]:50123".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    for (header, client) in [
        (v1_4, "198.51.100.7"),
        (v1_6, "2001:db8::7"),
        (v2_4, "198.51.100.7"),
        (v2_6, "2001:db8::7"),
    ] {
        let (up, seen) = raw_upstream(OK).await;
        let logged = Arc::new(Mutex::new(Vec::new()));
        let log = logged.clone();
        let gw = Gateway::start_with(to(up), move |s| {
            s.proxy_protocol(loopback_trusted())
                .on_connection_end(move |peer, _| log.lock().unwrap().push(peer))
        })
        .await;
        // The header and the request in one write, as balancers send them.
        let answer = send(&gw, &[&[header.as_slice(), REQUEST].concat()]).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        await_records(&seen, 1).await;
        let record = seen.lock().unwrap()[0].clone();
        assert!(record.starts_with(b"GET / HTTP/1.1\r\n"), "{record:?}");
        assert_eq!(field(&record, "x-real-ip").as_deref(), Some(client));
        assert_eq!(field(&record, "x-forwarded-for").as_deref(), Some(client));
        // `$http_host`: the port the client used survives.
        assert_eq!(field(&record, "host").as_deref(), Some("chat.example:8443"));
        gw.shutdown().await;
        let logged = logged.lock().unwrap().clone();
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].ip(), client.parse::<IpAddr>().unwrap());
        assert_eq!(logged[0].port(), 50123);
    }
}

#[tokio::test]
async fn a_header_split_across_reads_is_reassembled() {
    let (up, seen) = raw_upstream(OK).await;
    let gw = Gateway::start_with(to(up), |s| s.proxy_protocol(loopback_trusted())).await;
    let v2 = encode_v2(
        "[2001:db8::7]:1".parse().unwrap(),
        "[::1]:443".parse().unwrap(),
    );
    // Inside the signature, inside the addresses, then the rest with the
    // first bytes of the request.
    let (a, rest) = v2.split_at(5);
    let (b, c) = rest.split_at(20);
    let answer = send(&gw, &[a, b, &[c, &REQUEST[..7]].concat(), &REQUEST[7..]]).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let v1 = b"PROXY TCP4 198.51.100.9 10.0.0.1 50123 ";
    let answer = send(&gw, &[v1, b"443\r", b"\n", REQUEST]).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    await_records(&seen, 2).await;
    let mut ips: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| field(r, "x-real-ip").unwrap())
        .collect();
    ips.sort();
    assert_eq!(ips, ["198.51.100.9", "2001:db8::7"]);
    gw.shutdown().await;
}

/// Connects, sends `bytes`, and expects the proxy to close without a byte.
async fn refused(gw: &Gateway, bytes: &[u8], then_close: bool) {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // The proxy may close before the write ends: its errors are expected.
    let _ = stream.write_all(bytes).await;
    if then_close {
        let _ = stream.shutdown().await;
    }
    let got = read_to_end(&mut stream).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn untrusted_malformed_truncated_and_missing_headers_close_unforwarded() {
    let (up, seen) = raw_upstream(OK).await;
    let header = b"PROXY TCP4 198.51.100.7 10.0.0.1 50123 443\r\n";
    // Loopback is not a trusted balancer here.
    let gw = Gateway::start_with(to(up), |s| {
        s.proxy_protocol(ProxyProtocol::from_cidrs(["10.0.0.0/8"]).unwrap())
    })
    .await;
    refused(&gw, &[header.as_slice(), REQUEST].concat(), false).await;
    gw.shutdown().await;

    let gw = Gateway::start_with(to(up), |s| s.proxy_protocol(loopback_trusted())).await;
    // Malformed: a bad address; missing: a plain request; truncated: the
    // peer ends inside the header.
    refused(
        &gw,
        b"PROXY TCP4 198.51.100.300 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n",
        false,
    )
    .await;
    refused(&gw, REQUEST, false).await;
    refused(&gw, &header[..20], true).await;
    gw.shutdown().await;
    // Give a wrongly forwarded request time to be recorded, then check none was.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_v2_local_header_is_served_as_a_direct_connection() {
    let (up, seen) = raw_upstream(OK).await;
    let gw = Gateway::start_with(to(up), |s| s.proxy_protocol(loopback_trusted())).await;
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let answer = send(&gw, &[&[local.as_slice(), REQUEST].concat()]).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    await_records(&seen, 1).await;
    let record = seen.lock().unwrap()[0].clone();
    assert_eq!(field(&record, "x-real-ip").as_deref(), Some("127.0.0.1"));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_header_s_address_steers_ip_hash() {
    let mut ups = Vec::new();
    for _ in 0..3 {
        ups.push(raw_upstream(OK).await);
    }
    let set: UpstreamSet = ups.iter().map(|(a, _)| Upstream::new(*a)).collect();
    // A second balancer over the same upstreams says where each client
    // would land had it connected directly.
    let reference = IpHash::new(set.clone());
    let hash = IpHash::new(set);
    let gw = Gateway::start_with(Proxy::builder().upstream(hash), |s| {
        s.proxy_protocol(loopback_trusted())
    })
    .await;
    let request = http::Request::get("/").body(()).unwrap();
    let mut expected = vec![0usize; 3];
    for i in 1..=12u8 {
        // nginx ip_hash keys IPv4 by its first three octets.
        let client = IpAddr::from([198, 51, i, 7]);
        let lease = reference
            .pick(&PickContext::new(
                client,
                &request,
                std::time::Instant::now(),
            ))
            .unwrap();
        let at = ups
            .iter()
            .position(|(a, _)| Some(*a) == lease.addr().as_socket_addr())
            .unwrap();
        expected[at] += 1;
        let header = format!("PROXY TCP4 {client} 10.0.0.1 50000 443\r\n");
        let answer = send(&gw, &[&[header.as_bytes(), REQUEST].concat()]).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        await_records(&ups[at].1, expected[at]).await;
        let last = ups[at].1.lock().unwrap().last().cloned().unwrap();
        assert_eq!(field(&last, "x-real-ip"), Some(client.to_string()));
    }
    // Twelve clients behind one balancer address spread over the upstreams,
    // as they would connecting directly.
    assert!(
        expected.iter().filter(|n| **n > 0).count() >= 2,
        "{expected:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn send_proxy_v2_writes_the_believed_client_before_the_request() {
    let (up, seen) = raw_upstream(OK).await;
    let set: UpstreamSet = [Upstream::new(up)].into_iter().collect();
    let group = UpstreamGroup::new("pp", RoundRobin::new(set)).send_proxy_v2(true);
    let builder = Proxy::builder().route(Route::new("/", group));
    let gw = Gateway::start_with(builder, |s| s.proxy_protocol(loopback_trusted())).await;
    let header = b"PROXY TCP4 198.51.100.7 10.0.0.1 50123 443\r\n";
    let answer = send(&gw, &[&[header.as_slice(), REQUEST].concat()]).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    await_records(&seen, 1).await;
    let record = seen.lock().unwrap()[0].clone();
    let Ok(Status::Complete(sent)) = parse(&record) else {
        panic!("no v2 header: {record:?}");
    };
    assert_eq!(sent.source(), Some("198.51.100.7:50123".parse().unwrap()));
    assert_eq!(sent.destination().map(|d| d.port()), Some(gw.addr.port()));
    assert!(record[sent.len()..].starts_with(b"GET / HTTP/1.1\r\n"));
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_trusted_peer_that_sends_nothing_is_closed_at_the_handshake_timeout() {
    let (up, seen) = raw_upstream(OK).await;
    let builder = to(up).handshake_timeout(Duration::from_secs(5));
    let gw = Gateway::start_with(builder, |s| s.proxy_protocol(loopback_trusted())).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let got = bounded("close at the handshake timeout", read_to_end(&mut stream)).await;
    assert!(got.is_empty());
    assert!(seen.lock().unwrap().is_empty());
    gw.shutdown().await;
}
