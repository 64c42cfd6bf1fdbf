//! The gateway's HTTP/2 front door (built with feature `h2`): with
//! `--tls-cert` it offers ALPN `h2` and `http/1.1`, serves WebSockets over
//! h2 (RFC 8441) and HTTP/1.1 alike, and `--no-h2` offers only http/1.1
//! (nginx `http2 off`).

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::support::H2Stream;
use super::*;

/// A self-signed certificate for `localhost` in PEM files under a fresh
/// directory: the paths of the certificate and key, and the directory.
pub(super) fn certificate_files(tag: &str) -> (String, String, PathBuf) {
    let (cert, key, dir, _) = certificate(tag);
    (cert, key, dir)
}

fn certificate(tag: &str) -> (String, String, PathBuf, CertificateDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("wsproxy-gateway-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let path = |p: PathBuf| p.to_str().unwrap().to_owned();
    (
        path(cert_path),
        path(key_path),
        dir,
        cert.cert.der().clone(),
    )
}

#[tokio::test]
async fn with_tls_the_gateway_serves_websockets_over_h2() {
    let upstream = ws_upstream(WsUpstreamOptions::default()).await;
    let up = upstream.addr.to_string();
    let (cert, key, dir, der) = certificate("h2");
    let gw = Gateway::start(&["--upstream", &up, "--tls-cert", &cert, "--tls-key", &key]).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(gw.banner.contains("(h2, http/1.1)"), "{}", gw.banner);

    // A client offering both gets h2, as browsers do.
    let stream = support::tls_to(gw.addr, std::slice::from_ref(&der), &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = bounded("h2 handshake", ::h2::client::handshake(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = bounded("h2 ready", send.ready()).await.unwrap();
    for _ in 0..1000 {
        if send.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        send = bounded("h2 ready", send.ready()).await.unwrap();
    }
    assert!(send.is_extended_connect_protocol_enabled());
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost:{}/room", gw.addr.port()))
        .header("sec-websocket-version", "13")
        .extension(::h2::ext::Protocol::from("websocket"))
        .body(())
        .unwrap();
    let (answer, stream) = send.send_request(request, false).unwrap();
    let answer = bounded("the 200", answer).await.unwrap();
    assert_eq!(answer.status(), 200);
    let io = H2Stream::new(stream, answer.into_body());
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("over h2"));
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri().path(), "/room");
    assert_eq!(seen[0].headers()["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn no_h2_offers_only_http11() {
    let (cert, key, dir, der) = certificate("no-h2");
    let gw = Gateway::start(&["--tls-cert", &cert, "--tls-key", &key, "--no-h2"]).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!gw.banner.contains("h2"), "{}", gw.banner);
    let stream = support::tls_to(gw.addr, std::slice::from_ref(&der), &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let url = format!("wss://localhost:{}/", gw.addr.port());
    let (mut ws, response) = bounded("wss upgrade", tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("h1 only")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("h1 only"));
}
