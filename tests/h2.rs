//! The HTTP/2 front door of `Server` (feature `h2`): a real TLS client that
//! negotiated `h2` with ALPN (the `h2` crate over tokio-rustls) opens
//! WebSockets with RFC 8441 extended CONNECT, bridged to tokio-tungstenite
//! upstreams over HTTP/1.1; plain requests over h2; a client that offers
//! only http/1.1 on the same listener.
#![allow(clippy::result_large_err)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use support::*;
use wsproxy::balance::{RoundRobin, Upstream};
use wsproxy::forward::Scheme;
use wsproxy::server::{DrainReport, Negotiated, Server};
use wsproxy::{Proxy, ProxyBuilder};

type Ws = WebSocketStream<H2Stream>;

// ---------------------------------------------------------------------------
// TLS, the server and the h2 client
// ---------------------------------------------------------------------------

/// A self-signed certificate for `localhost`, the server's acceptor offering
/// `h2` and `http/1.1`, and a connector trusting it that offers `alpn`.
struct Tls {
    acceptor: TlsAcceptor,
    roots: RootCertStore,
}

impl Tls {
    fn new() -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            roots,
        }
    }

    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// What the server's `on_connection_end` hook saw: one line per stream.
type Ends = Arc<Mutex<Vec<(SocketAddr, Option<u16>, bool)>>>;

/// A `Server` with TLS, serving h2 or HTTP/1.1 as ALPN picked.
struct Front {
    addr: SocketAddr,
    proxy: Proxy,
    tls: Tls,
    ends: Ends,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<DrainReport>,
}

impl Front {
    async fn start(builder: ProxyBuilder, server: impl FnOnce(Server) -> Server) -> Self {
        let proxy = builder.build().unwrap();
        let tls = Tls::new();
        let acceptor = tls.acceptor.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ends = Ends::default();
        let seen = ends.clone();
        let server = server(Server::new(proxy.clone()))
            .scheme(Scheme::Https)
            .on_connection_end(move |client, report| {
                let status = report.status.map(|s| s.as_u16());
                seen.lock()
                    .unwrap()
                    .push((client, status, report.tunnel.is_some()));
            });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let accept = move |tcp| {
                let accepting = acceptor.accept(tcp);
                async move {
                    let tls = accepting.await?;
                    let protocol = Negotiated::from_alpn(tls.get_ref().1.alpn_protocol());
                    Ok((tls, protocol))
                }
            };
            let stopped = async {
                let _ = stopped.await;
            };
            server
                .serve_negotiated(listener, accept, stopped)
                .await
                .unwrap()
        });
        Self {
            addr,
            proxy,
            tls,
            ends,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) -> DrainReport {
        let _ = self.stop.take().unwrap().send(());
        bounded("server shutdown", self.task).await.unwrap()
    }

    async fn tls(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = bounded("tcp connect", TcpStream::connect(self.addr))
            .await
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        bounded("tls handshake", self.tls.connector(alpn).connect(name, tcp))
            .await
            .unwrap()
    }

    /// An h2 client over TLS (ALPN `h2`), once the server's SETTINGS
    /// allow extended CONNECT, and the task driving its connection.
    async fn h2(&self) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
        let (send, driver) = self.h2_watched().await;
        let driver = tokio::spawn(async move {
            let _ = driver.await;
        });
        (send, driver)
    }

    /// As [`h2`](Self::h2), the driver ending with how the connection did.
    async fn h2_watched(
        &self,
    ) -> (
        h2::client::SendRequest<Bytes>,
        JoinHandle<Result<(), h2::Error>>,
    ) {
        let tls = self.tls(&[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) = bounded("h2 handshake", h2::client::handshake(tls))
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let mut send = bounded("h2 ready", send.ready()).await.unwrap();
        // The server's SETTINGS come right after the handshake.
        for _ in 0..1000 {
            if send.is_extended_connect_protocol_enabled() {
                return (send, driver);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            send = bounded("h2 ready", send.ready()).await.unwrap();
        }
        panic!("server never sent SETTINGS_ENABLE_CONNECT_PROTOCOL");
    }

    fn authority(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }
}

fn proxy_to(addr: SocketAddr) -> ProxyBuilder {
    Proxy::builder().upstream(RoundRobin::new([Upstream::new(addr)].into_iter().collect()))
}

/// An extended CONNECT (`:protocol websocket`) for `path`: the answer and,
/// on a 200, the stream as a WebSocket client.
async fn connect_ws(
    send: &h2::client::SendRequest<Bytes>,
    authority: &str,
    path: &str,
) -> (StatusCode, Option<Ws>) {
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://{authority}{path}"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from("websocket"))
        .body(())
        .unwrap();
    let (status, stream) = send_request(send, request).await;
    let ws = match stream {
        Some((send, recv)) if status == StatusCode::OK => {
            let io = H2Stream::new(send, recv);
            Some(WebSocketStream::from_raw_socket(io, Role::Client, None).await)
        }
        _ => None,
    };
    (status, ws)
}

/// Sends `request` with the stream left open; the status and both halves.
async fn send_request(
    send: &h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
) -> (StatusCode, Option<(h2::SendStream<Bytes>, h2::RecvStream)>) {
    let mut ready = bounded("h2 ready", send.clone().ready()).await.unwrap();
    let (answer, stream) = ready.send_request(request, false).unwrap();
    let answer = bounded("answer", answer).await.unwrap();
    let (parts, recv) = answer.into_parts();
    (parts.status, Some((stream, recv)))
}

async fn echo(ws: &mut Ws, msg: Message) {
    bounded("send", ws.send(msg.clone())).await.unwrap();
    let got = bounded("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, msg);
}

/// A WebSocket echo upstream that closes with 1000 "bye" when told `bye`,
/// and reports each connection's path when it ends.
async fn echo_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let path = Arc::new(Mutex::new(String::new()));
                let seen = path.clone();
                let callback =
                    move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp| {
                        *seen.lock().unwrap() = req.uri().path().to_owned();
                        Ok(resp)
                    };
                if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg == Message::text("bye") {
                            let frame = CloseFrame {
                                code: CloseCode::Normal,
                                reason: "bye".into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                            while let Some(Ok(_)) = ws.next().await {}
                            break;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
                let path = path.lock().unwrap().clone();
                let _ = ended.send(path);
            });
        }
    });
    (addr, ends)
}

/// The Close code `ws` reads next, reading on until the stream ends (so
/// that tungstenite's reply goes out).
async fn close_code(ws: &mut Ws) -> Option<u16> {
    let code = match bounded("close", ws.next()).await {
        Some(Ok(Message::Close(frame))) => frame.map(|f| u16::from(f.code)),
        other => panic!("no close: {other:?}"),
    };
    while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    code
}

// ---------------------------------------------------------------------------
// WebSockets over h2
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_over_h2_echoes_large_messages_and_closes_from_the_client() {
    let (upstream, mut ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s).await;
    let (send, _driver) = front.h2().await;
    let (status, ws) = connect_ws(&send, &front.authority(), "/chat").await;
    assert_eq!(status, 200);
    let mut ws = ws.unwrap();
    echo(&mut ws, Message::text("over h2")).await;
    // Both ways, past every HTTP/2 window (64 KiB stream, 1 MiB default
    // hyper connection window) and the tunnel's buffers.
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    echo(&mut ws, Message::binary(big)).await;
    let text: String = "x".repeat(1 << 20);
    echo(&mut ws, Message::text(text)).await;

    bounded("close", ws.close(None)).await.unwrap();
    match bounded("close reply", ws.next()).await {
        Some(Ok(Message::Close(_))) => {}
        other => panic!("no close from the upstream: {other:?}"),
    }
    assert_eq!(bounded("upstream end", ends.recv()).await.unwrap(), "/chat");
    // Dropped, the stream is reset: the tunnel sees the client's end too.
    drop(ws);
    let counters = front.proxy.counters();
    assert_eq!((counters.handshakes, counters.tunnels_total), (1, 1));
    // The server's hook sees the stream once its tunnel has ended.
    for _ in 0..250 {
        if !front.ends.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ends = front.ends.lock().unwrap().clone();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert!(ends[0].2, "no tunnel in the report: {ends:?}");
    // The status the client was sent: 200 on the stream, not the upstream's 101.
    assert_eq!(ends[0].1, Some(200));
    assert_eq!(ends[0].0.ip(), front.addr.ip());
    let report = front.shutdown().await;
    assert_eq!(report.accepted, 1);
}

#[tokio::test]
async fn the_upstream_s_close_reaches_the_h2_client() {
    let (upstream, mut ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s).await;
    let (send, _driver) = front.h2().await;
    let (_, ws) = connect_ws(&send, &front.authority(), "/bye").await;
    let mut ws = ws.unwrap();
    bounded("send", ws.send(Message::text("bye")))
        .await
        .unwrap();
    match bounded("close", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1000);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("no close from the upstream: {other:?}"),
    }
    while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    assert_eq!(bounded("upstream end", ends.recv()).await.unwrap(), "/bye");
}

#[tokio::test]
async fn twenty_four_websockets_run_at_once_on_one_h2_connection() {
    let (upstream, _ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s).await;
    let (send, _driver) = front.h2().await;
    // nginx's `http2_max_concurrent_streams`, in the server's SETTINGS.
    assert_eq!(send.current_max_send_streams(), 128);
    let authority = front.authority();
    let opened = (0..24).map(|i| {
        let send = send.clone();
        let authority = authority.clone();
        async move {
            let (status, ws) = connect_ws(&send, &authority, &format!("/s{i}")).await;
            assert_eq!(status, 200);
            ws.unwrap()
        }
    });
    let mut all = futures_util::future::join_all(opened).await;
    // Every stream echoes its own messages while the others do too.
    let rounds = all.iter_mut().enumerate().map(|(i, ws)| async move {
        for round in 0..5 {
            echo(ws, Message::text(format!("{i}.{round}"))).await;
        }
    });
    futures_util::future::join_all(rounds).await;
    assert_eq!(front.proxy.tunnels().len(), 24);
    assert_eq!(front.proxy.counters().tunnels_total, 24);
    for ws in &mut all {
        bounded("close", ws.close(None)).await.unwrap();
    }
    for ws in &mut all {
        while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    }
    let report = front.shutdown().await;
    // One TCP connection carried them all.
    assert_eq!(report.accepted, 1);
}

/// An upstream that echoes, except on `/stall`, where it completes the
/// handshake and then never reads.
async fn stalling_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let stall = Arc::new(Mutex::new(false));
                let seen = stall.clone();
                let callback =
                    move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp| {
                        *seen.lock().unwrap() = req.uri().path() == "/stall";
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                if *stall.lock().unwrap() {
                    // Held, never read, until the test ends.
                    std::future::pending::<()>().await;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A WebSocket whose upstream stopped reading takes no more than its own
/// stream's window of the connection: the others on it keep flowing, not
/// frozen until the send timeout (60 s).
#[tokio::test]
async fn a_stalled_websocket_does_not_freeze_the_others_on_its_h2_connection() {
    let front = Front::start(proxy_to(stalling_upstream().await), |s| s).await;
    let (send, _driver) = front.h2().await;
    let authority = front.authority();
    let (status, stalled) = connect_ws(&send, &authority, "/stall").await;
    assert_eq!(status, 200);
    let (status, other) = connect_ws(&send, &authority, "/echo").await;
    assert_eq!(status, 200);
    let (mut stalled, mut other) = (stalled.unwrap(), other.unwrap());
    echo(&mut other, Message::text("before")).await;
    // Far more than the upstream's socket buffers and any window hold.
    let pushing = tokio::spawn(async move {
        let _ = stalled.send(Message::binary(vec![7u8; 16 << 20])).await;
        stalled
    });
    // Time for the push to fill what it can (it never finishes).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!pushing.is_finished(), "the stalled upstream took 16 MiB");
    within(
        Duration::from_secs(5),
        "an echo beside the stalled stream",
        echo(&mut other, Message::text("after")),
    )
    .await;
    pushing.abort();
}

#[tokio::test]
async fn a_reset_stream_closes_its_upstream_and_spares_the_others() {
    let (upstream, mut ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s).await;
    let (send, _driver) = front.h2().await;
    let authority = front.authority();
    let mut kept = connect_ws(&send, &authority, "/kept").await.1.unwrap();
    let mut reset = connect_ws(&send, &authority, "/reset").await.1.unwrap();
    echo(&mut kept, Message::text("one")).await;
    echo(&mut reset, Message::text("one")).await;
    assert_eq!(front.proxy.tunnels().len(), 2);

    // RST_STREAM(CANCEL) from the client on one stream.
    reset.get_mut().send.send_reset(h2::Reason::CANCEL);
    assert_eq!(
        bounded("reset upstream closes", ends.recv()).await.unwrap(),
        "/reset"
    );
    echo(&mut kept, Message::text("still here")).await;
    let big = vec![7_u8; 256 * 1024];
    echo(&mut kept, Message::binary(big)).await;
    for _ in 0..100 {
        if front.proxy.tunnels().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(front.proxy.tunnels().len(), 1);
    // A new stream opens on the same connection after the reset.
    let (status, ws) = connect_ws(&send, &authority, "/after").await;
    assert_eq!(status, 200);
    echo(&mut ws.unwrap(), Message::text("after")).await;
}

#[tokio::test]
async fn the_drain_sends_1001_to_h2_tunnels_and_goaway_to_their_connection() {
    let (upstream, _ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| {
        s.drain_window(Duration::from_millis(600))
            .drain_timeout(Duration::from_secs(8))
    })
    .await;
    let (send, driver) = front.h2().await;
    let authority = front.authority();
    let mut all = Vec::new();
    for i in 0..3 {
        let mut ws = connect_ws(&send, &authority, &format!("/d{i}"))
            .await
            .1
            .unwrap();
        echo(&mut ws, Message::text("before")).await;
        all.push(ws);
    }
    let Front {
        stop, task, proxy, ..
    } = front;
    let _ = stop.unwrap().send(());
    let codes = futures_util::future::join_all(all.iter_mut().map(close_code)).await;
    assert_eq!(codes, [Some(1001); 3]);
    let report = bounded("drain", task).await.unwrap();
    assert_eq!(
        (report.open_at_shutdown, report.closed, report.cut),
        (1, 3, 0)
    );
    assert_eq!(proxy.tunnels().len(), 0);
    // GOAWAY came: no new stream opens, and the connection ends once its
    // streams have.
    let request = http::Request::get(format!("https://{authority}/late"))
        .body(())
        .unwrap();
    let refused = match send.clone().ready().await {
        Ok(mut ready) => match ready.send_request(request, true) {
            Ok((answer, _)) => bounded("late answer", answer).await.is_err(),
            Err(_) => true,
        },
        Err(_) => true,
    };
    assert!(refused, "a stream opened after the drain began");
    bounded("client connection ends", driver).await.unwrap();
}

#[tokio::test]
async fn an_h2_tunnel_still_open_at_the_drain_deadline_is_cut() {
    let (upstream, _ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| {
        s.drain_timeout(Duration::from_millis(300))
    })
    .await;
    let (send, driver) = front.h2().await;
    let mut ws = connect_ws(&send, &front.authority(), "/held")
        .await
        .1
        .unwrap();
    echo(&mut ws, Message::text("held")).await;
    let report = front.shutdown().await;
    assert_eq!((report.open_at_shutdown, report.cut), (1, 1));
    // The connection closes with its tunnel.
    bounded("client connection ends", driver).await.unwrap();
}

#[tokio::test]
async fn malformed_extended_connects_get_the_rfc_answers_over_h2() {
    let (upstream, mut ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s).await;
    let (send, _driver) = front.h2().await;
    let authority = front.authority();
    // Another protocol is not ours to bridge (RFC 8441 §4): 501.
    let foreign = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://{authority}/wt"))
        .extension(h2::ext::Protocol::from("webtransport"))
        .body(())
        .unwrap();
    assert_eq!(send_request(&send, foreign).await.0, 501);
    // A plain CONNECT asks for a TCP tunnel: not a reverse proxy's job.
    let plain = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority.clone())
        .body(())
        .unwrap();
    assert_eq!(send_request(&send, plain).await.0, 501);
    // Without :scheme and :path the extended CONNECT is malformed (RFC 9113
    // §8.1.1, RFC 8441 §4): the stream is reset with PROTOCOL_ERROR.
    let malformed = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority.clone())
        .extension(h2::ext::Protocol::from("websocket"))
        .body(())
        .unwrap();
    let mut ready = bounded("h2 ready", send.clone().ready()).await.unwrap();
    let (answer, _stream) = ready.send_request(malformed, false).unwrap();
    let e = bounded("reset", answer).await.unwrap_err();
    assert_eq!(e.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{e:?}");
    // The connection serves on.
    let (status, ws) = connect_ws(&send, &authority, "/fine").await;
    assert_eq!(status, 200);
    echo(&mut ws.unwrap(), Message::text("fine")).await;
    // Only the well-formed one reached an upstream.
    assert_eq!(front.proxy.counters().tunnels_total, 1);
    assert!(ends.try_recv().is_err());
}

/// An upstream that answers the bridged upgrade with a 200 page does not
/// open a WebSocket: any 2xx to an extended CONNECT would (RFC 8441 §5).
#[tokio::test]
async fn an_upstream_200_to_an_extended_connect_is_502_not_an_open_stream() {
    let (upstream, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
    let front = Front::start(proxy_to(upstream), |s| s).await;
    let (send, _driver) = front.h2().await;
    let (status, ws) = connect_ws(&send, &front.authority(), "/page").await;
    assert_eq!(status, 502);
    assert!(ws.is_none());
    // Counted as the proxy's own 502, not as a relayed 200.
    let counters = front.proxy.counters();
    assert_eq!(counters.rejected_with(http::StatusCode::BAD_GATEWAY), 1);
    assert_eq!(counters.upgrade_refused, 0);
    // A refusal that is no 2xx is relayed as it came.
    let (refusing, _) =
        raw_upstream(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno").await;
    let front = Front::start(proxy_to(refusing), |s| s).await;
    let (send, _driver) = front.h2().await;
    assert_eq!(connect_ws(&send, &front.authority(), "/").await.0, 403);
}

// ---------------------------------------------------------------------------
// Plain requests, HTTP/1.1 clients, timeouts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_plain_get_over_h2_is_proxied_over_http1() {
    let (upstream, received) = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    )
    .await;
    let front = Front::start(proxy_to(upstream), |s| s).await;
    let (send, _driver) = front.h2().await;
    let request = http::Request::get(format!("https://{}/page?x=1", front.authority()))
        .header("cookie", "a=1")
        .body(())
        .unwrap();
    let mut ready = bounded("h2 ready", send.clone().ready()).await.unwrap();
    let (answer, _) = ready.send_request(request, true).unwrap();
    let answer = bounded("answer", answer).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/plain");
    let mut body = answer.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = bounded("body", body.data()).await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"hello");
    await_records(&received, 1).await;
    let head = String::from_utf8_lossy(&received.lock().unwrap()[0]).to_ascii_lowercase();
    assert!(head.starts_with("get /page?x=1 http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("host: {}\r\n", front.authority())),
        "{head}"
    );
    assert!(head.contains("x-forwarded-proto: https\r\n"), "{head}");
    assert!(head.contains("cookie: a=1\r\n"), "{head}");
}

#[tokio::test]
async fn a_client_offering_only_http11_takes_the_http1_path() {
    let (upstream, _ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s).await;
    let tls = front.tls(&[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let url = format!("wss://{}/h1", front.authority());
    let (mut ws, response) = bounded("wss upgrade", tokio_tungstenite::client_async(url, tls))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    bounded("send", ws.send(Message::text("h1"))).await.unwrap();
    let got = bounded("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text("h1"));
    // No ALPN at all is HTTP/1.1 too.
    let tls = front.tls(&[]).await;
    let url = format!("wss://{}/none", front.authority());
    let (_, response) = bounded("wss upgrade", tokio_tungstenite::client_async(url, tls))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
}

#[tokio::test]
async fn an_h2_connection_without_its_preface_closes_at_the_handshake_timeout() {
    let (upstream, _ends) = echo_upstream().await;
    let front = Front::start(
        proxy_to(upstream).handshake_timeout(Duration::from_millis(500)),
        |s| s,
    )
    .await;
    let started = tokio::time::Instant::now();
    let mut tls = front.tls(&[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Nothing sent: the server closes once the handshake timeout is up.
    let mut got = Vec::new();
    let _ = bounded("the close", tls.read_to_end(&mut got)).await;
    assert!(got.is_empty() || !got.starts_with(b"\0\0"), "{got:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(front.proxy.counters().requests, 0);
}

#[tokio::test]
async fn max_connections_counts_an_h2_connection_until_its_tunnels_end() {
    let (upstream, _ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s.max_connections(1)).await;
    let (send, driver) = front.h2().await;
    let mut ws = connect_ws(&send, &front.authority(), "/one")
        .await
        .1
        .unwrap();
    echo(&mut ws, Message::text("one")).await;
    // The only slot is taken: a second connection's TLS handshake waits.
    let tcp = TcpStream::connect(front.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut second = Box::pin(front.tls.connector(&[b"h2"]).connect(name, tcp));
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(waited.is_err(), "a second connection was served");
    // Once the tunnel and its connection end, the slot is free.
    bounded("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    drop((ws, send));
    bounded("first connection ends", driver).await.unwrap();
    bounded("second handshake", second).await.unwrap();
}

#[tokio::test]
async fn an_idle_h2_connection_closes_at_the_keepalive_timeout_but_not_while_a_tunnel_runs() {
    let (upstream, _ends) = echo_upstream().await;
    let keepalive = Duration::from_millis(400);
    let front = Front::start(proxy_to(upstream).keepalive_timeout(keepalive), |s| s).await;
    let (send, driver) = front.h2().await;
    let mut ws = connect_ws(&send, &front.authority(), "/long")
        .await
        .1
        .unwrap();
    // A tunnel quiet for longer than the keep-alive timeout keeps its
    // connection: only a connection without streams is idle.
    tokio::time::sleep(keepalive * 3).await;
    echo(&mut ws, Message::text("still open")).await;
    bounded("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    drop(ws);
    // Now nothing is open: GOAWAY and close, with the client still holding
    // its side (`send`).
    let started = tokio::time::Instant::now();
    bounded("idle close", driver).await.unwrap();
    assert!(
        started.elapsed() >= keepalive / 2,
        "{:?}",
        started.elapsed()
    );
    drop(send);
}

/// `keepalive_timeout 0`: the connection closes once its only stream ends.
#[tokio::test]
async fn with_keepalive_off_an_h2_connection_closes_after_its_last_stream() {
    let (upstream, _ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream).keepalive_timeout(Duration::ZERO), |s| s).await;
    let (send, driver) = front.h2().await;
    let mut ws = connect_ws(&send, &front.authority(), "/once")
        .await
        .1
        .unwrap();
    echo(&mut ws, Message::text("one")).await;
    bounded("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    drop(ws);
    bounded("close at once", driver).await.unwrap();
    drop(send);
}

// ---------------------------------------------------------------------------
// Out of connection slots
// ---------------------------------------------------------------------------

/// How `send`'s connection ended: the GOAWAY's reason, if one came.
async fn goaway_reason(send: h2::client::SendRequest<Bytes>) -> Option<h2::Reason> {
    match bounded("h2 ready", send.ready()).await {
        Ok(_) => panic!("the connection still takes streams"),
        Err(e) => e.is_go_away().then(|| e.reason()).flatten(),
    }
}

#[tokio::test]
async fn out_of_slots_the_longest_idle_h2_connection_makes_room_with_a_goaway() {
    let (upstream, _ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s.max_connections(3)).await;
    let authority = front.authority();
    let mut idle = Vec::new();
    for i in 0..3 {
        let (send, driver) = front.h2_watched().await;
        // One has served a WebSocket already: idle again once it ended.
        if i == 0 {
            let mut ws = connect_ws(&send, &authority, "/done").await.1.unwrap();
            echo(&mut ws, Message::text("before")).await;
            bounded("close", ws.close(None)).await.unwrap();
            while let Some(Ok(_)) = bounded("end", ws.next()).await {}
            // Its stream is counted out as its tunnel leaves the registry:
            // only then is it idle, and it must be the longest idle.
            bounded("tunnel ended", async {
                while !front.proxy.tunnels().is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        }
        idle.push((send, driver));
    }
    // Every slot is held by an idle h2 connection: a fourth client gets
    // the slot of the longest idle one.
    let (send, _driver) = front.h2().await;
    let mut ws = connect_ws(&send, &authority, "/new").await.1.unwrap();
    echo(&mut ws, Message::text("served")).await;
    let (first, driver) = idle.remove(0);
    // A clean close after GOAWAY(NO_ERROR), not a reset.
    bounded("reclaimed connection ends", driver)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(goaway_reason(first).await, Some(h2::Reason::NO_ERROR));
    // Only the one: the others still open streams.
    for (i, (send, driver)) in idle.iter().enumerate() {
        assert!(!driver.is_finished(), "idle connection {i} closed too");
        let (status, ws) = connect_ws(send, &authority, "/still").await;
        assert_eq!(status, 200);
        echo(&mut ws.unwrap(), Message::text("still")).await;
    }
}

#[tokio::test]
async fn out_of_slots_h2_connections_with_open_websockets_are_never_reclaimed() {
    let (upstream, mut ends) = echo_upstream().await;
    let front = Front::start(proxy_to(upstream), |s| s.max_connections(2)).await;
    let authority = front.authority();
    let mut busy = Vec::new();
    for i in 0..2 {
        let (send, driver) = front.h2_watched().await;
        let mut ws = connect_ws(&send, &authority, &format!("/t{i}"))
            .await
            .1
            .unwrap();
        echo(&mut ws, Message::text("open")).await;
        busy.push((send, driver, ws));
    }
    // No connection idles: a third client's TLS handshake waits.
    let tcp = TcpStream::connect(front.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut third = Box::pin(front.tls.connector(&[b"h2"]).connect(name, tcp));
    let waited = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(waited.is_err(), "a third connection was served");
    for (i, (send, driver, ws)) in busy.iter_mut().enumerate() {
        assert!(!driver.is_finished(), "connection {i} was closed");
        echo(ws, Message::text("still open")).await;
        // No GOAWAY came either: the connection still takes streams.
        let (status, more) = connect_ws(send, &authority, "/more").await;
        assert_eq!(status, 200, "connection {i} refused a stream");
        let mut more = more.unwrap();
        echo(&mut more, Message::text("more")).await;
        bounded("close", more.close(None)).await.unwrap();
        while let Some(Ok(_)) = bounded("end", more.next()).await {}
        assert_eq!(
            bounded("upstream ends", ends.recv()).await.as_deref(),
            Some("/more")
        );
    }
    assert!(ends.try_recv().is_err(), "an upstream tunnel ended");
    // Once the first tunnel ends its connection idles, and is the one
    // to make room: GOAWAY, while the second tunnel runs on.
    let (first, driver, mut ws) = busy.remove(0);
    bounded("close", ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = bounded("end", ws.next()).await {}
    drop(ws);
    bounded("third handshake", third).await.unwrap();
    bounded("idle connection ends", driver)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(goaway_reason(first).await, Some(h2::Reason::NO_ERROR));
    let (_, driver, ws) = &mut busy[0];
    assert!(!driver.is_finished());
    echo(ws, Message::text("second still open")).await;
    assert_eq!(
        bounded("first upstream ends", ends.recv()).await.as_deref(),
        Some("/t0")
    );
}
