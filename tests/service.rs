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
    let echo = |body: Body| async move { Body::new(body) };
    let app = Router::new()
        .route("/api/hello", get(|| async { "hello from upstream\n" }))
        .route("/api/echo", post(echo).put(echo));
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

/// `add_header … always` through the tower service: the proxy's own
/// answers carry the configured headers, plain and upgrade alike.
#[tokio::test]
async fn the_policys_response_headers_reach_the_services_own_answers() {
    let dead = closed_port().await;
    let policy = wsproxy::ForwardPolicy::builder()
        .add_response_header("X-Edge", "1")
        .build()
        .unwrap();
    let proxy = Proxy::builder()
        .route(Route::new("/dead/", group("dead", dead)))
        .policy(policy)
        .build()
        .unwrap();
    let addr = host(&proxy, with_health).await;
    let plain = raw_exchange(addr, "GET /dead/x HTTP/1.1\r\nHost: x\r\n\r\n", b"\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 502"), "{plain}");
    assert!(plain.to_ascii_lowercase().contains("x-edge: 1"), "{plain}");
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/dead/ws")).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal: {refused:?}");
    };
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-edge"], "1");
}

/// A plain CONNECT over HTTP/1.1 asks for a forward proxy's TCP tunnel: it
/// never reaches an upstream (it went up as `CONNECT / HTTP/1.1`).
#[tokio::test]
async fn a_plain_http11_connect_is_refused_and_never_forwarded() {
    let (upstream, seen) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let proxy = proxy_to("/", upstream).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let answer = raw_exchange(
        addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    assert!(seen.lock().unwrap().is_empty());
}

/// The upstream's refusal of an upgrade reaches the client through the
/// tower service whole, as through `Server`: status, WWW-Authenticate, body.
#[tokio::test]
async fn an_upgrade_refusal_is_relayed_with_its_headers_and_body() {
    let (upstream, _) = raw_upstream(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 6\r\n\r\nlog in",
    )
    .await;
    let proxy = proxy_to("/", upstream).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/chat")).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal: {refused:?}");
    };
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(response.body().as_deref(), Some(&b"log in"[..]));
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
        assert_eq!(refused_upgrade(addr, path).await, status);
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
async fn plain_connect_over_http2_is_501_and_clientaddr_is_read() {
    use tower_service::Service as _;
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    // A CONNECT without `:protocol` asks for a TCP tunnel, which a reverse
    // proxy does not open.
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

/// nginx `proxy_next_upstream error timeout`, as on `Server`: a GET that
/// an upstream closes unanswered goes to the next one; a PUT with a body,
/// which is not kept to send again, reaches the closing upstream alone and
/// gets the 502.
#[tokio::test]
async fn a_plain_request_is_retried_past_an_upstream_that_closes_unanswered() {
    use std::sync::atomic::Ordering;
    let (dead, heads) = closes_unanswered().await;
    let proxy = two_upstreams(dead, http_upstream().await).build().unwrap();
    let addr = host(&proxy, with_health).await;
    for i in 0..4 {
        let head = "GET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = raw_exchange(addr, head, b"hello from upstream\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
    }
    assert!(
        heads.load(Ordering::SeqCst) >= 1,
        "the closing upstream was never tried"
    );

    let (dead, heads) = closes_unanswered().await;
    let proxy = two_upstreams(dead, http_upstream().await).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let before = heads.load(Ordering::SeqCst);
        let put =
            "PUT /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
        let answer = raw_exchange(addr, put, b"\r\n\r\n").await;
        let to_dead = heads.load(Ordering::SeqCst) - before;
        statuses.push((to_dead, answer.lines().next().unwrap_or("").to_owned()));
    }
    for (to_dead, status) in &statuses {
        let expected = if *to_dead == 1 { " 502 " } else { " 200 " };
        assert!(*to_dead <= 1 && status.contains(expected), "{statuses:?}");
    }
    assert!(
        statuses.iter().any(|(to_dead, _)| *to_dead == 1),
        "{statuses:?}"
    );
}

/// Two upstreams in one round-robin group under `/api/`.
fn two_upstreams(a: SocketAddr, b: SocketAddr) -> ProxyBuilder {
    let set = [Upstream::new(a), Upstream::new(b)].into_iter().collect();
    Proxy::builder().route(Route::new(
        "/api/",
        UpstreamGroup::new("up", RoundRobin::new(set)),
    ))
}

/// An invalid answer head is answered 502 and goes to no other upstream,
/// as on `Server` (nginx passes it on only with `invalid_header`).
#[tokio::test]
async fn an_invalid_answer_head_goes_to_no_other_upstream() {
    use std::sync::atomic::Ordering;
    let (bad, bad_heads) = counting_upstream(INVALID_HEAD).await;
    let (good, good_heads) =
        counting_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            .await;
    let heads = || {
        (
            bad_heads.load(Ordering::SeqCst),
            good_heads.load(Ordering::SeqCst),
        )
    };
    let proxy = two_upstreams(bad, good).build().unwrap();
    let addr = host(&proxy, with_health).await;
    let mut broken = 0;
    for i in 0..4 {
        let before = heads();
        let head = "GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = raw_exchange(addr, head, b"\n\r\n").await;
        let (b, g) = heads();
        let (to_bad, to_good) = (b - before.0, g - before.1);
        assert_eq!(
            to_bad + to_good,
            1,
            "request {i}: {to_bad} bad, {to_good} good"
        );
        let expected = if to_bad == 1 {
            "HTTP/1.1 502"
        } else {
            "HTTP/1.1 200"
        };
        assert!(answer.starts_with(expected), "request {i}: {answer}");
        broken += to_bad;
    }
    assert!(broken >= 1, "the broken upstream was never picked");
}

/// nginx `proxy_next_upstream_timeout` on the service: three upstreams
/// that never answer, a 2 s read timeout and a 3 s bound: the second try
/// begins at 2 s, a third would at 4 s.
#[tokio::test(start_paused = true)]
async fn the_next_upstream_timeout_bounds_the_services_tries() {
    use std::sync::atomic::Ordering;
    let (silent, heads) = counting_upstream(b"").await;
    let (second, heads2) = counting_upstream(b"").await;
    let (third, heads3) = counting_upstream(b"").await;
    let set = [silent, second, third]
        .into_iter()
        .map(Upstream::new)
        .collect();
    let proxy = Proxy::builder()
        .route(Route::new(
            "/api/",
            UpstreamGroup::new("up", RoundRobin::new(set)),
        ))
        .read_timeout(Duration::from_secs(2))
        .next_upstream_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let addr = host(&proxy, with_health).await;
    let answer = raw_exchange(addr, "GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n", b"\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let tried: usize = [heads, heads2, heads3]
        .iter()
        .map(|h| h.load(Ordering::SeqCst))
        .sum();
    assert_eq!(tried, 2);
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

// WebSocket over HTTP/2 (RFC 8441 extended CONNECT), bridged to HTTP/1.1
// upstreams.

/// A hyper-util `auto` host (HTTP/1.1 and HTTP/2 with
/// `enable_connect_protocol`) serving the service, the client's address
/// given per connection.
async fn h2_host(proxy: &Proxy) -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = proxy.service().listener(addr, Scheme::Http);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let service = service.clone().client_addr(move |_| Some(peer));
            tokio::spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http2().enable_connect_protocol();
                let _ = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service),
                    )
                    .await;
            });
        }
    });
    addr
}

/// An HTTP/2 client connection to `addr` (prior knowledge), once the
/// server's SETTINGS allow extended CONNECT.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    let (send, conn) = bounded("h2 handshake", h2::client::handshake(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = bounded("h2 ready", send.ready()).await.unwrap();
    // The server's SETTINGS come with the handshake; bounded wait for them.
    for _ in 0..1000 {
        if send.is_extended_connect_protocol_enabled() {
            return send;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        send = bounded("h2 ready", send.ready()).await.unwrap();
    }
    panic!("server never enabled extended connect");
}

/// Sends an extended CONNECT for `path` with `headers`; the answer and,
/// on a 200, the stream as a WebSocket client (no HTTP/1.1 handshake runs
/// on it: RFC 8441 §5).
async fn h2_connect(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (
    http::Response<()>,
    Option<tokio_tungstenite::WebSocketStream<H2Stream>>,
) {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from("websocket"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut ready = bounded("h2 ready", send.clone().ready()).await.unwrap();
    let (answer, stream) = ready
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    let answer = bounded("extended connect answer", answer).await.unwrap();
    let (parts, recv) = answer.into_parts();
    let ws = if parts.status == http::StatusCode::OK {
        let io = H2Stream::new(stream, recv);
        Some(tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, None).await)
    } else {
        None
    };
    (http::Response::from_parts(parts, ()), ws)
}

#[tokio::test]
async fn websocket_over_http2_is_bridged_to_an_http1_upstream() {
    let upstream = ws_upstream(WsUpstreamOptions {
        pick_protocol: true,
        ..Default::default()
    })
    .await;
    let proxy = proxy_to("/ws/", upstream.addr).build().unwrap();
    let addr = h2_host(&proxy).await;
    let mut send = h2_client(addr).await;
    let headers = [
        ("sec-websocket-protocol", "chat.v2, chat.v1"),
        ("sec-websocket-extensions", "x-test; a=1"),
        ("origin", "http://app.example"),
        ("cookie", "session=1"),
    ];
    let (answer, ws) = h2_connect(&mut send, addr, "/ws/x?room=1", &headers).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["sec-websocket-protocol"], "chat.v2");
    for name in ["upgrade", "connection", "sec-websocket-accept"] {
        assert!(!answer.headers().contains_key(name), "{name} in the 200");
    }
    let mut ws = ws.unwrap();

    ws.send(Message::text("over h2")).await.unwrap();
    let got = bounded("text echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text("over h2"));
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = bounded("binary echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::binary(big));

    // The client closes; the upstream's Close comes back through the proxy.
    ws.close(None).await.unwrap();
    match bounded("close reply", ws.next()).await {
        Some(Ok(Message::Close(_))) => {}
        other => panic!("no close from the upstream: {other:?}"),
    }

    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let head = &seen[0];
    assert_eq!(head.method(), "GET");
    assert_eq!(head.uri().path(), "/ws/x");
    assert_eq!(head.uri().query(), Some("room=1"));
    let h = head.headers();
    assert_eq!(h["host"], addr.to_string().as_str());
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["sec-websocket-version"], "13");
    assert_eq!(h["sec-websocket-protocol"], "chat.v2, chat.v1");
    assert_eq!(h["sec-websocket-extensions"], "x-test; a=1");
    assert_eq!(h["origin"], "http://app.example");
    assert_eq!(h["cookie"], "session=1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    // The proxy's own key: 16 random bytes in base64.
    assert_eq!(h["sec-websocket-key"].len(), 24);
    let counters = proxy.counters();
    assert_eq!(counters.handshakes, 1);
    assert_eq!(counters.tunnels_total, 1);
}

#[tokio::test]
async fn a_drain_closes_an_http2_websocket_with_1001() {
    // The proxy's own Close reaches the client through the h2 stream.
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    let addr = h2_host(&proxy).await;
    let mut send = h2_client(addr).await;
    let (answer, ws) = h2_connect(&mut send, addr, "/chat", &[]).await;
    assert_eq!(answer.status(), 200);
    let mut ws = ws.unwrap();
    ws.send(Message::text("before the drain")).await.unwrap();
    let got = bounded("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text("before the drain"));
    assert_eq!(proxy.tunnels().len(), 1);
    let drained = proxy.drain(Duration::ZERO, Duration::from_secs(5));
    let close = async {
        match bounded("close", ws.next()).await {
            Some(Ok(Message::Close(frame))) => {
                // Reading on sends tungstenite's reply, which ends the
                // tunnel before the drain's deadline.
                while let Some(Ok(_)) = bounded("end", ws.next()).await {}
                frame.map(|f| u16::from(f.code))
            }
            other => panic!("no close: {other:?}"),
        }
    };
    let (code, report) = tokio::join!(close, bounded("drain", drained));
    assert_eq!(code, Some(1001));
    assert_eq!((report.closed, report.cut), (1, 0));
}

#[tokio::test]
async fn two_websockets_share_one_http2_connection() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    let addr = h2_host(&proxy).await;
    let mut send = h2_client(addr).await;
    let (a, ws_a) = h2_connect(&mut send, addr, "/a", &[]).await;
    let (b, ws_b) = h2_connect(&mut send, addr, "/b", &[]).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let (mut ws_a, mut ws_b) = (ws_a.unwrap(), ws_b.unwrap());
    // Interleaved: each stream gets its own echoes.
    for i in 0..4 {
        ws_a.send(Message::text(format!("a{i}"))).await.unwrap();
        ws_b.send(Message::text(format!("b{i}"))).await.unwrap();
        let got_b = bounded("echo b", ws_b.next()).await.unwrap().unwrap();
        let got_a = bounded("echo a", ws_a.next()).await.unwrap().unwrap();
        assert_eq!(got_a, Message::text(format!("a{i}")));
        assert_eq!(got_b, Message::text(format!("b{i}")));
    }
    // Listed once they carried traffic (the tunnel task starts after the 200).
    assert_eq!(proxy.tunnels().len(), 2);
    let paths: Vec<String> = upstream
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.uri().path().to_owned())
        .collect();
    assert_eq!(paths, ["/a", "/b"]);
    assert_eq!(proxy.counters().tunnels_total, 2);
}

#[tokio::test]
async fn a_bad_101_over_http2_never_opens_the_stream() {
    // The accept a client's key would never produce.
    let (bad, received) = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    .await;
    let proxy = proxy_to("/", bad).build().unwrap();
    let addr = h2_host(&proxy).await;
    let mut send = h2_client(addr).await;
    let (answer, ws) = h2_connect(&mut send, addr, "/ws", &[]).await;
    assert_eq!(answer.status(), 502);
    assert!(ws.is_none());
    // It was the proxy's key the upstream got, and the answer was checked.
    await_records(&received, 1).await;
    let head = String::from_utf8_lossy(&received.lock().unwrap()[0]).into_owned();
    assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("sec-websocket-key: "),
        "{head}"
    );
    assert_eq!(proxy.counters().tunnels_total, 0);
}

#[tokio::test]
async fn malformed_extended_connects_get_rfc_answers() {
    use tower_service::Service as _;
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    let peer = wsproxy::service::ClientAddr("127.0.0.1:50000".parse().unwrap());
    let call = |uri: &'static str, protocol: &'static str| {
        let mut service = proxy.service();
        let mut request = http::Request::connect(uri)
            .version(http::Version::HTTP_2)
            .extension(hyper::ext::Protocol::from_static(protocol))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        request.extensions_mut().insert(peer);
        async move { service.call(request).await.unwrap().status() }
    };
    // Another protocol over extended CONNECT is not ours to bridge.
    assert_eq!(call("http://127.0.0.1/ws", "webtransport").await, 501);
    // No :path (authority-form, as a plain CONNECT has).
    assert_eq!(call("127.0.0.1:80", "websocket").await, 400);
    assert!(upstream.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn http2_websockets_are_refused_503_once_the_proxy_drains() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let proxy = proxy_to("/", upstream.addr).build().unwrap();
    let addr = h2_host(&proxy).await;
    let mut send = h2_client(addr).await;
    let _ = bounded("drain", proxy.drain(Duration::ZERO, Duration::ZERO)).await;
    let (answer, ws) = h2_connect(&mut send, addr, "/ws", &[]).await;
    assert_eq!(answer.status(), 503);
    assert!(ws.is_none());
}
