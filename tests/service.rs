//! The tower service embedded in axum, end to end over loopback: axum
//! servers on 127.0.0.1:0, tokio-tungstenite clients and upstreams, raw TCP
//! clients where the bytes matter.
#![cfg(feature = "axum")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wsproxy::balance::{RoundRobin, Upstream};
use wsproxy::{Proxy, ProxyBuilder, Route, Scheme, UpstreamGroup};

use support::*;

fn group(name: &str, addr: SocketAddr) -> UpstreamGroup {
    UpstreamGroup::new(
        name.to_owned(),
        RoundRobin::new([Upstream::new(addr)].into_iter().collect()),
    )
}

/// A proxy with one route, `prefix` to `addr`.
fn proxy_to(prefix: &str, addr: SocketAddr) -> ProxyBuilder {
    Proxy::builder().route(Route::new(prefix, group("up", addr)))
}

/// Serves `app(service)` with connect info on a fresh loopback port; the
/// service knows the listener's address.
async fn host(
    proxy: &Proxy,
    app: impl FnOnce(wsproxy::service::ProxyService) -> Router,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app(proxy.service().listener(addr, Scheme::Http));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// The usual host: its own `GET /health`, everything else proxied.
fn with_health(service: wsproxy::service::ProxyService) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .fallback_service(service)
}

/// A plain HTTP upstream (axum): `GET /api/hello` and `POST /api/echo`,
/// which streams the request body back as it arrives.
async fn http_upstream() -> SocketAddr {
    let app = Router::new()
        .route("/api/hello", get(|| async { "hello from upstream\n" }))
        .route(
            "/api/echo",
            post(|body: Body| async move { Body::new(body) }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Sends `head` on a new connection and reads the answer until `needle`.
async fn raw_exchange(addr: SocketAddr, head: &str, needle: &[u8]) -> String {
    let mut stream = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&read_until(&mut stream, needle).await).into_owned()
}

#[tokio::test]
async fn echo_through_axum_beside_the_hosts_own_route() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/ws/", upstream.addr).build().unwrap();
    let addr = host(&proxy, with_health).await;

    let health = raw_exchange(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"ok\n").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let mut ws = client_to(addr, "/ws/chat").await;
    echo(&mut ws, "through axum".into()).await;
    ws.close(None).await.unwrap();
    let _ = bounded("close", ws.next()).await;

    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri().path(), "/ws/chat");
    // The policy's forwarding headers, with the client from ConnectInfo.
    assert_eq!(seen[0].headers()["x-forwarded-for"], "127.0.0.1");
    let counters = proxy.counters();
    assert_eq!(counters.handshakes, 1);
    assert_eq!(counters.tunnels_total, 1);
}

#[tokio::test]
async fn plain_get_is_proxied() {
    let upstream = http_upstream().await;
    let proxy = proxy_to("/api/", upstream).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let answer = raw_exchange(
        addr,
        "GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n",
        b"hello from upstream\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The upstream's one-request connection does not close the client's.
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let counters = proxy.counters();
    assert_eq!(counters.requests, 1);
    bounded("proxied counted", async {
        while proxy.counters().proxied != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_chunked_post_streams_both_ways() {
    let upstream = http_upstream().await;
    let proxy = proxy_to("/api/", upstream).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let mut stream = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    stream
        .write_all(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst \r\n")
        .await
        .unwrap();
    // The first chunk comes back before the second is sent: neither body
    // is buffered whole on the way.
    let head = read_until(&mut stream, b"first ").await;
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
    read_until(&mut stream, b"second").await;
    read_until(&mut stream, b"0\r\n\r\n").await;
    bounded("proxied counted", async {
        while proxy.counters().proxied != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let counters = proxy.counters();
    assert_eq!(counters.bytes_from_client, 12);
    assert!(counters.bytes_from_upstream >= 12);
}

#[tokio::test]
async fn a_body_over_client_max_body_size_is_413() {
    let upstream = http_upstream().await;
    let proxy = proxy_to("/api/", upstream)
        .client_max_body_size(8)
        .build()
        .unwrap();
    let addr = host(&proxy, with_health).await;
    let declared = raw_exchange(
        addr,
        "POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n123456789",
        b"\r\n\r\n",
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    let chunked = raw_exchange(
        addr,
        "POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n",
        b"\r\n\r\n",
    )
    .await;
    // The upstream may have answered before the excess passed; else 413.
    assert!(
        chunked.starts_with("HTTP/1.1 413") || chunked.starts_with("HTTP/1.1 200"),
        "{chunked}"
    );
    assert!(proxy.counters().bytes_from_client <= 8);
}

#[tokio::test]
async fn a_nested_service_routes_on_the_original_path() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/v2/", upstream.addr).build().unwrap();
    let addr = host(&proxy, |service| {
        Router::new()
            .route("/health", get(|| async { "ok\n" }))
            .nest_service("/v2", service)
    })
    .await;
    let mut ws = client_to(addr, "/v2/chat?room=1").await;
    echo(&mut ws, "nested".into()).await;
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen[0].uri().to_string(), "/v2/chat?room=1");
}

#[tokio::test]
async fn firefox_connection_header_upgrades() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("connection", "keep-alive, Upgrade".parse().unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) = bounded("handshake", tokio_tungstenite::client_async(request, tcp))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    echo(&mut ws, "firefox".into()).await;
}

#[tokio::test]
async fn subprotocol_and_extensions_pass_through() {
    let upstream = ws_upstream(WsUpstreamOptions {
        pick_protocol: true,
        ..Default::default()
    })
    .await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "chat.v2, chat.v1".parse().unwrap(),
    );
    headers.insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) = bounded("handshake", tokio_tungstenite::client_async(request, tcp))
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    echo(&mut ws, "negotiated".into()).await;
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].headers()["sec-websocket-protocol"],
        "chat.v2, chat.v1"
    );
    assert_eq!(
        seen[0].headers()["sec-websocket-extensions"],
        "permessage-deflate; client_max_window_bits"
    );
}

#[tokio::test]
async fn errors_are_responses_with_their_status() {
    let dead = closed_port().await;
    let proxy = Proxy::builder()
        .route(Route::new("/dead/", group("dead", dead)))
        .build()
        .unwrap();
    let addr = host(&proxy, with_health).await;

    let none = raw_exchange(addr, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", b"\n\r\n").await;
    assert!(none.starts_with("HTTP/1.1 404"), "{none}");
    let plain = raw_exchange(addr, "GET /dead/x HTTP/1.1\r\nHost: x\r\n\r\n", b"\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 502"), "{plain}");

    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/dead/ws")).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal: {refused:?}");
    };
    assert_eq!(response.status(), 502);
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/nowhere")).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal: {refused:?}");
    };
    assert_eq!(response.status(), 404);

    let counters = proxy.counters();
    assert_eq!(counters.rejected_with(http::StatusCode::NOT_FOUND), 2);
    assert_eq!(counters.rejected_with(http::StatusCode::BAD_GATEWAY), 2);
}

#[tokio::test]
async fn without_a_client_address_the_answer_is_500() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // No connect info: the host forgot to say who the client is.
    let app = Router::new().fallback_service(proxy.service());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let answer = raw_exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(upstream.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_client_addr_closure_and_listener_port_reach_the_upstream() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let policy = wsproxy::ForwardPolicy::builder()
        .host(wsproxy::forward::HostMode::ClientWithListenerPort)
        .build()
        .unwrap();
    let proxy = proxy_to("/", upstream.addr).policy(policy).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = proxy
        .service()
        .listener(addr, Scheme::Http)
        .client_addr(|_| "10.1.2.3:5000".parse().ok());
    let app = Router::new().fallback_service(service);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut ws = client_to(addr, "/ws").await;
    echo(&mut ws, "who".into()).await;
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen[0].headers()["x-forwarded-for"], "10.1.2.3");
    assert_eq!(
        seen[0].headers()["host"],
        format!("127.0.0.1:{}", addr.port()).as_str()
    );
    // The sender is not held against the tunnel: it ended cleanly.
    ws.send(Message::Close(None)).await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_closes_every_tunnel_with_1001_and_loses_nothing() {
    let (upstream, recorded) = recording_upstream().await;
    let proxy = proxy_to("/ws/", upstream).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = with_health(proxy.service().listener(addr, Scheme::Http));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drainer = proxy.clone();
    // The example's shutdown: stop accepting and finish plain requests
    // (axum), then drain the tunnels, which axum no longer tracks.
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        drainer
            .drain(Duration::from_millis(200), Duration::from_secs(5))
            .await
    });

    let mut clients = Vec::new();
    for c in 0..5 {
        let mut ws = client_to(addr, &format!("/ws/{c}")).await;
        for m in 0..3 {
            echo(&mut ws, format!("c{c}-m{m}")).await;
        }
        clients.push(ws);
    }
    assert_eq!(proxy.counters().tunnels_active, 5);
    stop.send(()).unwrap();
    for ws in &mut clients {
        let (code, _) = await_close(ws).await;
        assert_eq!(code, Some(1001));
    }
    let report = bounded("drain", server).await.unwrap();
    assert_eq!(report.closed, 5);
    assert_eq!(report.cut, 0);
    let recorded = recorded.lock().unwrap().clone();
    for c in 0..5 {
        for m in 0..3 {
            assert!(recorded.contains(&format!("c{c}-m{m}")), "c{c}-m{m} lost");
        }
    }
    assert_eq!(proxy.counters().tunnels_active, 0);
}

#[tokio::test]
async fn upgrades_are_refused_503_once_the_proxy_drains() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let _ = proxy.drain(Duration::ZERO, Duration::ZERO).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal: {refused:?}");
    };
    assert_eq!(response.status(), 503);
}

type Ended = std::sync::Arc<std::sync::Mutex<Vec<(Option<u16>, Option<wsproxy::proxy::Outcome>)>>>;

/// Routes `/echo` (WebSocket), `/api/` (plain HTTP) and `/dead` (nothing
/// listening); records each connection's report.
async fn parity_proxy(echo: SocketAddr, api: SocketAddr) -> (Proxy, Ended) {
    let ended: Ended = Default::default();
    let record = ended.clone();
    let proxy = Proxy::builder()
        .route(Route::new("/echo", group("echo", echo)))
        .route(Route::new("/api/", group("api", api)))
        .route(Route::new("/dead", group("dead", closed_port().await)))
        .on_connection_end(move |_, report| {
            let status = report.status.map(|s| s.as_u16());
            record.lock().unwrap().push((status, report.outcome));
        })
        .build()
        .unwrap();
    (proxy, ended)
}

/// One echo, one plain GET, one 404 and one 502, each on its own
/// connection; returns once every connection has been reported.
async fn scripted_traffic(addr: SocketAddr, ended: &Ended) {
    let mut ws = client_to(addr, "/echo").await;
    echo(&mut ws, "parity".into()).await;
    ws.close(None).await.unwrap();
    let _ = bounded("close", ws.next()).await;
    // Closed TCP: the tunnel ends now rather than after its close linger.
    drop(ws);
    let get = "GET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(addr, get, b"hello from upstream\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (path, status) in [("/nowhere", 404), ("/dead", 502)] {
        let refused = bounded(
            "a refused upgrade",
            tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
        )
        .await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(answer)) = refused else {
            panic!("{path}: {refused:?}");
        };
        assert_eq!(answer.status(), status);
    }
    bounded("four reports", async {
        while ended.lock().unwrap().len() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn server_and_the_axum_service_count_the_same_traffic_alike() {
    let ws = ws_upstream(WsUpstreamOptions::default()).await;
    let api = http_upstream().await;

    let (served, served_ended) = parity_proxy(ws.addr, api).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(wsproxy::Server::new(served.clone()).serve(listener, async {
        let _ = stopped.await;
    }));
    scripted_traffic(addr, &served_ended).await;

    let (embedded, embedded_ended) = parity_proxy(ws.addr, api).await;
    let host = host(&embedded, with_health).await;
    scripted_traffic(host, &embedded_ended).await;

    let (a, b) = (served.counters(), embedded.counters());
    assert_eq!((a.connections, a.requests, a.handshakes), (4, 4, 3));
    assert_eq!(a.rejected_with(http::StatusCode::NOT_FOUND), 1);
    assert_eq!(a.rejected_with(http::StatusCode::BAD_GATEWAY), 1);
    assert_eq!((a.proxied, a.tunnels_total), (1, 1));
    assert_eq!(a, b, "server: {a:?}\nservice: {b:?}");
    let sorted = |ended: &Ended| {
        let mut v = ended.lock().unwrap().clone();
        v.sort_by_key(|e| e.0);
        v
    };
    assert_eq!(sorted(&served_ended), sorted(&embedded_ended));

    let _ = stop.send(());
    bounded("server stop", server).await.unwrap().unwrap();
}

#[tokio::test]
async fn websocket_over_http2_is_501_and_clientaddr_is_read() {
    use tower_service::Service as _;
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    // A hyper http2 server with `enable_connect_protocol` hands over an
    // extended CONNECT (RFC 8441) like this.
    let mut request = http::Request::connect("http://127.0.0.1/ws")
        .version(http::Version::HTTP_2)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    request
        .extensions_mut()
        .insert(wsproxy::service::ClientAddr(peer));
    let answer = proxy.service().call(request).await.unwrap();
    assert_eq!(answer.status(), 501);
    assert!(upstream.seen.lock().unwrap().is_empty());
    // 501 is not among the statuses counted one by one.
    assert_eq!(proxy.counters().rejected_other, 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_upstream_is_504_on_the_read_timeout() {
    // Reads the head, then never answers.
    let (silent, _) = raw_upstream_after(b"never sent", b"").await;
    let proxy = proxy_to("/api/", silent)
        .read_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let addr = host(&proxy, with_health).await;
    let answer = raw_exchange(addr, "GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n", b"\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert_eq!(
        proxy
            .counters()
            .rejected_with(http::StatusCode::GATEWAY_TIMEOUT),
        1
    );
}

#[tokio::test]
async fn a_hyper_server_serves_the_service_through_tower_to_hyper_service() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let ws = ws_upstream(WsUpstreamOptions::default()).await;
    let api = http_upstream().await;
    let proxy = Proxy::builder()
        .route(Route::new("/api/", group("api", api)))
        .route(Route::new("/", group("ws", ws.addr)))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = proxy.service().listener(addr, Scheme::Http);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            // The client's address per connection, the rest set once.
            let service = service.clone().client_addr(move |_| Some(peer));
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service),
                    )
                    .await;
            });
        }
    });
    let answer = raw_exchange(
        addr,
        "GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n",
        b"hello from upstream\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut client = client_to(addr, "/chat").await;
    echo(&mut client, "through hyper".into()).await;
    assert_eq!(
        ws.seen.lock().unwrap()[0].headers()["x-forwarded-for"],
        "127.0.0.1"
    );
}
