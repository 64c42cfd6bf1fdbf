//! The writers against the `HeaderMap` path they replace on the proxy's
//! hot path (`rewrite_request` / `rewrite_response`, then the handshake's
//! writers), over a table of heads, policies and peers: the same request
//! or status line and the same fields, each name's values in the same
//! order. Only the order between different names may differ.

use std::net::SocketAddr;

use bytes::BytesMut;
use http::{Request, Version};

use super::*;
use crate::forward::{Cors, HostMode, Scheme};
use crate::handshake::{
    parse_request, parse_upgrade_answer, write_request_head, Limits, RequestHead, Status,
    UpgradeAnswer,
};

/// A head as sent: start line, then `(name, value)` in order.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    start: String,
    fields: Vec<(String, Vec<u8>)>,
}

/// Splits written bytes into the start line and the fields sorted by name
/// (stable, so each name's values keep their order).
fn normalized(bytes: &[u8]) -> Head {
    let text = bytes.strip_suffix(b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no blank line at the end: {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    let mut lines = text.split(|&b| b == b'\n');
    let start = lines.next().unwrap_or_default();
    let mut fields: Vec<(String, Vec<u8>)> = lines
        .map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':').unwrap();
            let name = String::from_utf8(line[..colon].to_vec()).unwrap();
            assert_eq!(name, name.to_ascii_lowercase(), "names go out lowercase");
            assert_eq!(&line[colon..colon + 2], b": ");
            (name, line[colon + 2..].to_vec())
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    Head {
        start: String::from_utf8_lossy(start.strip_suffix(b"\r").unwrap_or(start)).into_owned(),
        fields,
    }
}

fn parsed(head: &str) -> Option<RequestHead> {
    let mut buf = BytesMut::from(head.as_bytes());
    match parse_request(&mut buf, &Limits::default()) {
        Ok(Status::Complete(head)) => Some(head),
        _ => None,
    }
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

fn requests() -> Vec<String> {
    let ws = |extra: &str| {
        format!(
            "GET /chat?room=1 HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\n{KEY}{extra}\r\n"
        )
    };
    vec![
        ws(""),
        ws("Origin: https://chat.example\r\nUser-Agent: test\r\nSec-WebSocket-Protocol: a, b\r\n"),
        // Spoofing attempts and incoming chains.
        ws("X-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"),
        ws("X-Forwarded-For: 203.0.113.9, 10.0.0.7\r\nX-Forwarded-For:  \r\nX-Forwarded-For: 10.0.0.8 \r\n"),
        ws("Forwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Host: evil\r\n"),
        // Duplicates, interleaved, and mixed case names.
        ws("X-Tag: 1\r\nACCEPT: a\r\nx-tag: 2\r\nAccept: b\r\nX-TAG: 3\r\n"),
        // Connection naming other fields (and protected ones, and close).
        format!(
            "GET /chat HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\n\
             Connection: Upgrade, X-Secret, keep-alive, Host, Content-Length, close\r\n\
             Connection: X-Other\r\nX-Secret: s\r\nX-Other: o\r\nClose: c\r\nKeep-Alive: 5\r\n\
             TE: trailers\r\nTrailer: x\r\nProxy-Connection: keep-alive\r\n{KEY}\r\n"
        ),
        ws("Connection: X-Forwarded-For, X-Real-IP\r\nX-Forwarded-For: 198.51.100.1\r\n"),
        // Underscores, twins of proxy-set fields included.
        ws("X_Custom: kept-if-allowed\r\nX_Real_IP: 6.6.6.6\r\nx_forwarded_for: 1.1.1.1\r\nX_Proxy: t\r\n"),
        // Absolute-form target, a Host with a port and upper case.
        format!(
            "GET http://Chat.Example:8443/chat?x=1 HTTP/1.1\r\nHost: Chat.Example:8443\r\n\
             Upgrade: websocket\r\nConnection: upgrade\r\n{KEY}\r\n"
        ),
        ws("Expect: 100-continue\r\n"),
        // Plain HTTP: other upgrades, bodies, HTTP/1.0, no Host.
        "GET / HTTP/1.1\r\nHost: a.example\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAA\r\n\r\n".to_owned(),
        "POST /form HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: keep-alive\r\n\r\n".to_owned(),
        "POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n".to_owned(),
        "GET /old HTTP/1.0\r\n\r\n".to_owned(),
        "GET /old HTTP/1.0\r\nHost: a.example.\r\nConnection: keep-alive\r\n\r\n".to_owned(),
    ]
}

/// Heads the parser refuses (obs-fold, bare LF, control bytes, two Hosts):
/// refused before any rewrite, on either path.
#[test]
fn refused_heads_never_reach_a_writer() {
    for bad in [
        "GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\n\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Ctl: a\x01b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert!(parsed(bad).is_none(), "{bad:?}");
    }
}

fn policies() -> Vec<ForwardPolicy> {
    let b = ForwardPolicy::builder;
    let built = [
        b(),
        b().trusted_proxy("10.0.0.0/8").trusted_proxy("::1"),
        b().trusted_proxy("10.0.0.0/8")
            .x_forwarded_for(XForwardedFor::Replace),
        b().forwarded(true).trusted_proxy("127.0.0.0/8"),
        b().trusted_proxy("127.0.0.0/8"),
        b().host(HostMode::Client),
        b().host(HostMode::ClientWithListenerPort),
        b().host(HostMode::Upstream),
        b().host(HostMode::Fixed("api.internal".into())),
        b().set_request_header("X-Proxy", "wsproxy")
            .set_request_header("X-Forwarded-Proto", "https")
            .remove_request_header("X-Real-IP")
            .remove_request_header("Origin")
            .set_request_header("X-Tag", "set")
            .remove_request_header("x-tag")
            .set_request_header("Expect", "later")
            .set_request_header("x_proxy", "underscored"),
        b().underscores_in_headers(true)
            .set_request_header("X-Proxy", "p"),
        b().underscores_in_headers(true)
            .forwarded(true)
            .set_request_header("Host", "edit.example"),
        b().cors(Cors::any_origin())
            .allow_origin("https://chat.example"),
    ];
    built.into_iter().map(|p| p.build().unwrap()).collect()
}

const PEERS: [&str; 5] = [
    "127.0.0.1:50000",
    "10.1.2.3:4000",
    "192.0.2.44:1",
    "[::1]:9",
    "[::ffff:10.0.0.5]:7",
];

#[test]
fn the_request_writer_sends_what_the_header_map_path_sends() {
    let mut cases = 0;
    for raw in requests() {
        let head = parsed(&raw).unwrap_or_else(|| panic!("refused: {raw:?}"));
        let websocket = head.websocket().is_some();
        let req = head.into_request();
        for policy in policies() {
            for peer in PEERS {
                let peer: SocketAddr = peer.parse().unwrap();
                for scheme in [Scheme::Http, Scheme::Https] {
                    for (http10, expect) in [(false, false), (true, false), (false, true)] {
                        let client = policy.resolve_client(peer, req.headers(), scheme);
                        let ctx = ForwardContext::new(
                            peer,
                            scheme,
                            8443,
                            "10.9.0.1:9000".parse().unwrap(),
                        )
                        .with_websocket(websocket)
                        .with_checked_host()
                        .with_http10(http10)
                        .without_expect(expect);

                        // What the proxy did before: edit a copy, then write it.
                        let mut edited = req.clone();
                        policy.rewrite_request(&mut edited, &client, &ctx);
                        if http10 {
                            *edited.version_mut() = Version::HTTP_10;
                        }
                        if expect {
                            edited.headers_mut().remove(http::header::EXPECT);
                        }
                        let mut old = BytesMut::new();
                        write_request_head(&edited, &mut old);

                        let mut new = BytesMut::new();
                        policy.write_request_head(&req, &client, &ctx, &mut new);
                        assert_eq!(
                            normalized(&new),
                            normalized(&old),
                            "\n{raw:?}\npolicy {policy:?}\npeer {peer} {scheme} http10 {http10} expect {expect}\nold {:?}\nnew {:?}",
                            String::from_utf8_lossy(&old),
                            String::from_utf8_lossy(&new),
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 1000, "{cases}");
}

#[test]
fn the_request_writer_leaves_the_request_as_it_came() {
    let head = parsed(&requests()[2]).unwrap();
    let req = head.into_request();
    let before = req.clone();
    let policy = ForwardPolicy::nginx();
    let peer = "192.0.2.1:1".parse().unwrap();
    let client = policy.resolve_client(peer, req.headers(), Scheme::Http);
    let ctx = ForwardContext::new(peer, Scheme::Http, 80, "10.9.0.1:9000".parse().unwrap());
    let mut out = BytesMut::new();
    policy.write_request_head(&req, &client, &ctx, &mut out);
    assert_eq!(req.headers(), before.headers());
    assert_eq!(req.uri(), before.uri());
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("x-real-ip: 192.0.2.1\r\n"), "{text}");
    assert!(!text.contains("6.6.6.6"), "{text}");
    assert!(
        text.contains("x-forwarded-for: 203.0.113.9, 192.0.2.1\r\n"),
        "{text}"
    );
}

fn switching_heads() -> Vec<String> {
    let ok = |extra: &str| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
    };
    vec![
        ok(""),
        ok("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"),
        ok("Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: y\r\n"),
        ok("Connection: X-Internal, close, Host\r\nX-Internal: secret\r\nClose: c\r\nX-Kept: k\r\n"),
        ok("X-Dup: 1\r\nServer: up\r\nx-dup: 2\r\nX-DUP: 3\r\n"),
        ok("Location: http://10.9.0.1:9000/next\r\nRefresh: 0; url=http://10.9.0.1:9000/r\r\n"),
        ok("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"),
        concat!(
            "HTTP/1.0 101 Switching Protocols\r\nupgrade: WEBSOCKET\r\nCONNECTION: keep-alive,upgrade\r\n",
            "Keep-Alive: 5\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        .to_owned(),
    ]
}

#[test]
fn the_switching_writer_sends_what_the_header_map_path_sends() {
    let request = parsed(&format!(
        "GET /chat HTTP/1.1\r\nHost: chat.example:8443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n{KEY}\r\n"
    ))
    .unwrap();
    let upgrade = request.websocket().unwrap();
    let mut cases = 0;
    for raw in switching_heads() {
        let mut buf = BytesMut::from(raw.as_bytes());
        let Ok(Status::Complete(UpgradeAnswer::Switched(head))) =
            parse_upgrade_answer(&mut buf, &Limits::default(), upgrade)
        else {
            panic!("not taken: {raw:?}")
        };
        for policy in policies()
            .into_iter()
            .chain([ForwardPolicy::builder().redirect(false).build().unwrap()])
        {
            for scheme in [Scheme::Http, Scheme::Https] {
                let peer = "192.0.2.44:1".parse().unwrap();
                let client = policy.resolve_client(peer, request.request().headers(), scheme);
                let ctx = ForwardContext::new(peer, scheme, 8443, "10.9.0.1:9000".parse().unwrap())
                    .with_websocket(true);
                let mut response = head.to_response();
                policy.rewrite_response(&mut response, &client, &ctx);
                let mut old = BytesMut::new();
                crate::handshake::write_response_head(&response, &mut old);
                let mut new = BytesMut::new();
                policy.write_switching_head(&head, &client, &ctx, &mut new);
                assert_eq!(
                    normalized(&new),
                    normalized(&old),
                    "\n{raw:?}\n{policy:?}\nold {:?}\nnew {:?}",
                    String::from_utf8_lossy(&old),
                    String::from_utf8_lossy(&new),
                );
                cases += 1;
            }
        }
    }
    assert!(cases > 100, "{cases}");
}

#[test]
fn a_plain_101_goes_out_byte_for_byte_as_before() {
    let request = parsed(&format!(
        "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Protocol: chat\r\n{KEY}\r\n"
    ))
    .unwrap();
    let raw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
    let mut buf = BytesMut::from(raw.as_bytes());
    let Ok(Status::Complete(UpgradeAnswer::Switched(head))) =
        parse_upgrade_answer(&mut buf, &Limits::default(), request.websocket().unwrap())
    else {
        panic!("not taken")
    };
    let policy = ForwardPolicy::nginx();
    let peer = "192.0.2.44:1".parse().unwrap();
    let client = policy.resolve_client(peer, request.request().headers(), Scheme::Http);
    let ctx = ForwardContext::new(peer, Scheme::Http, 80, "10.9.0.1:9000".parse().unwrap());
    let mut response = head.to_response();
    policy.rewrite_response(&mut response, &client, &ctx);
    let mut old = BytesMut::new();
    crate::handshake::write_response_head(&response, &mut old);
    let mut new = BytesMut::new();
    policy.write_switching_head(&head, &client, &ctx, &mut new);
    assert_eq!(new, old);
    let _: &Request<()> = request.request();
}
