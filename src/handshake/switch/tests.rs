//! `parse_upgrade_answer` against `parse_response` + `classify_response` on
//! the same bytes: the same decision, fields and leftovers, every time.

use super::*;
use crate::handshake::{classify_response, parse_request, RequestHead, ResponseKind};

const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn upgrade_request() -> RequestHead {
    let mut buf = BytesMut::from(concat!(
        "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n",
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        "Sec-WebSocket-Extensions: x-note; v=\"a,b\"\r\n\r\n",
    ));
    match parse_request(&mut buf, &Limits::default()) {
        Ok(Status::Complete(head)) => head,
        other => panic!("{other:?}"),
    }
}

fn ok101(extra: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
    )
}

/// Heads and whether the fast path must take them (`true`) or hand them to
/// the full parser (`false`).
fn table() -> Vec<(String, bool)> {
    let mut t = vec![
        (ok101(""), true),
        (ok101("Sec-WebSocket-Protocol: chat\r\n"), true),
        (
            ok101("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
            true,
        ),
        (ok101("X-Custom: a\r\nx-custom: b\r\nX-CUSTOM:c\r\n"), true),
        (ok101("Keep-Alive: timeout=5\r\nTE: trailers\r\n"), true),
        (ok101("X-Empty:\r\nX-Spaces:   padded   \r\n"), true),
        (ok101("X-Odd-Name!#$%&'*+.^_`|~: v\r\n"), true),
        (ok101("X-Obs-Text: caf\u{e9}\r\n"), true),
        (ok101("Location: http://127.0.0.1:9000/x\r\n"), true),
        (
            concat!(
                "HTTP/1.1 101 Whatever\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n",
                "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            )
            .to_owned(),
            true,
        ),
        (
            format!("HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"),
            true,
        ),
        (
            // Bare LF line ends: the full parser refuses them (`check_line_ends`).
            format!("HTTP/1.1 101 OK\nUpgrade: websocket\nConnection: upgrade\nSec-WebSocket-Accept: {ACCEPT}\n\n"),
            false,
        ),
        (
            format!("HTTP/1.1 101 OK\r\nConnection: upgrade\r\nConnection: x-a\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {ACCEPT}\r\nX-A: 1\r\n\r\n"),
            true,
        ),
        (ok101("A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n"), true),
        // Over the eight fields a `SwitchingHead` holds: the full parser.
        (ok101("A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\n"), false),
        (ok101("Sec-WebSocket-Protocol: superchat\r\n"), true),
        (ok101("Sec-WebSocket-Extensions: X-Note\r\n"), true),
        // Refused by the checks: the full parser decides and names why.
        (ok101("Sec-WebSocket-Protocol: other\r\n"), false),
        (ok101("Sec-WebSocket-Protocol: chat, superchat\r\n"), false),
        (ok101("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat\r\n"), false),
        (ok101("Sec-WebSocket-Extensions: permessage-deflate, x-other\r\n"), false),
        (ok101("Upgrade: websocket\r\n"), false),
        (ok101(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")), false),
        (ok101("Content-Length: 0\r\n"), false),
        (ok101("Transfer-Encoding: chunked\r\n"), false),
        (ok101("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n"), false),
        (ok101("X-Fold: a\r\n b\r\n"), false),
        (ok101("X-Ctl: a\u{1}b\r\n"), false),
        (ok101("X-Del: a\u{7f}b\r\n"), false),
        (ok101("Bad Name: v\r\n"), false),
        (ok101("X-Bare-CR: a\rb\r\n"), false),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_owned(),
            false,
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_owned(),
            false,
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_owned(),
            false,
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_owned(),
            false,
        ),
        ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned(), false),
        ("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".to_owned(), false),
        ("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n".to_owned(), false),
        ("HTTP/1.1 999 Odd\r\n\r\n".to_owned(), false),
        ("HTTP/2 101 Nope\r\n\r\n".to_owned(), false),
        ("NOT HTTP\r\n\r\n".to_owned(), false),
        ("\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n".to_owned(), false),
    ];
    // The first frames after the head stay for the tunnel either way.
    t.push((format!("{}\u{81}\u{0}", ok101("")), true));
    t
}

fn same_response(a: &Response<()>, b: &Response<()>) -> bool {
    a.status() == b.status() && a.version() == b.version() && a.headers() == b.headers()
}

#[test]
fn fast_and_full_paths_agree_on_every_head() {
    let request = upgrade_request();
    let Some(upgrade) = request.websocket() else {
        panic!("not an upgrade")
    };
    let limits = Limits::default();
    for (head, fast) in table() {
        let mut full_buf = BytesMut::from(head.as_bytes());
        let mut fast_buf = full_buf.clone();
        let full = parse_response(&mut full_buf, &limits);
        let quick = parse_upgrade_answer(&mut fast_buf, &limits, upgrade);
        assert_eq!(full_buf, fast_buf, "leftovers differ for {head:?}");
        match (full, quick) {
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "{head:?}");
                assert_eq!(a.status(), b.status(), "{head:?}");
                assert!(!fast, "{head:?} should have been taken");
            }
            (Ok(Status::Partial), Ok(Status::Partial)) => assert!(!fast, "{head:?}"),
            (Ok(Status::Complete(full)), Ok(Status::Complete(UpgradeAnswer::Switched(h)))) => {
                assert!(fast, "{head:?} took the fast path");
                assert_eq!(
                    classify_response(request.kind(), &full).ok(),
                    Some(ResponseKind::Switched),
                    "{head:?}"
                );
                assert!(same_response(&full, &h.to_response()), "{head:?}");
                let names: Vec<_> = h
                    .fields()
                    .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
                    .collect();
                let mut expected: Vec<_> = full
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect();
                // The map groups values by name; the fields keep arrival order.
                let mut sorted = names.clone();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                expected.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(sorted, expected, "{head:?}");
                assert_eq!(h.version(), full.version());
                assert!(head.as_bytes().starts_with(h.as_bytes()));
            }
            (Ok(Status::Complete(full)), Ok(Status::Complete(UpgradeAnswer::Other(other)))) => {
                assert!(!fast, "{head:?} should have been taken");
                assert!(same_response(&full, &other), "{head:?}");
            }
            (a, b) => panic!("{head:?}: {a:?} against {b:?}"),
        }
    }
}

#[test]
fn every_prefix_of_a_101_is_partial_as_in_the_full_parser() {
    let request = upgrade_request();
    let Some(upgrade) = request.websocket() else {
        panic!("not an upgrade")
    };
    let head = ok101("Sec-WebSocket-Protocol: chat\r\n");
    for cut in 0..head.len() {
        let mut buf = BytesMut::from(&head.as_bytes()[..cut]);
        let limits = Limits::default();
        assert!(
            matches!(
                parse_upgrade_answer(&mut buf, &limits, upgrade),
                Ok(Status::Partial)
            ),
            "cut at {cut}"
        );
        assert_eq!(buf.len(), cut, "a partial head stays in the buffer");
    }
}

#[test]
fn a_head_at_the_limit_is_refused_as_by_the_full_parser() {
    let request = upgrade_request();
    let Some(upgrade) = request.websocket() else {
        panic!("not an upgrade")
    };
    let limits = Limits::new().max_head_bytes(64);
    let head = ok101("X-Long: 0123456789012345678901234567890123456789\r\n");
    let mut buf = BytesMut::from(head.as_bytes());
    let full = parse_response(&mut buf.clone(), &limits).map_err(|e| e.status());
    let quick = parse_upgrade_answer(&mut buf, &limits, upgrade).map_err(|e| e.status());
    assert_eq!(full.err(), Some(http::StatusCode::BAD_GATEWAY));
    assert_eq!(quick.err(), Some(http::StatusCode::BAD_GATEWAY));
    let limits = Limits::new().max_headers(2);
    let mut buf = BytesMut::from(ok101("").as_bytes());
    let quick = parse_upgrade_answer(&mut buf, &limits, upgrade);
    assert!(quick.is_err(), "three fields over a limit of two");
}

#[test]
fn random_bytes_never_panic_and_agree_with_the_full_parser() {
    let request = upgrade_request();
    let Some(upgrade) = request.websocket() else {
        panic!("not an upgrade")
    };
    let limits = Limits::default();
    let base = ok101("X-A: b\r\n");
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..4000 {
        let mut bytes = base.as_bytes().to_vec();
        for _ in 0..3 {
            // xorshift: reproducible without a dependency.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % bytes.len() as u64) as usize;
            bytes[at] = (seed >> 32) as u8;
        }
        let mut a = BytesMut::from(&bytes[..]);
        let mut b = a.clone();
        let full = parse_response(&mut a, &limits);
        let quick = parse_upgrade_answer(&mut b, &limits, upgrade);
        assert_eq!(a, b);
        match (full, quick) {
            (Err(x), Err(y)) => assert_eq!(x.to_string(), y.to_string()),
            (Ok(Status::Partial), Ok(Status::Partial)) => {}
            (Ok(Status::Complete(f)), Ok(Status::Complete(UpgradeAnswer::Switched(h)))) => {
                assert_eq!(
                    classify_response(request.kind(), &f).ok(),
                    Some(ResponseKind::Switched)
                );
                assert!(same_response(&f, &h.to_response()), "{bytes:?}");
            }
            (Ok(Status::Complete(f)), Ok(Status::Complete(UpgradeAnswer::Other(o)))) => {
                assert!(same_response(&f, &o));
            }
            (x, y) => panic!("{bytes:?}: {x:?} against {y:?}"),
        }
    }
}

/// RFC 6455 §4.1: a 101 may pick one subprotocol the client offered and
/// name only extensions it offered; anything else the client would fail, so
/// the proxy refuses it (502) before any tunnel opens.
#[test]
fn a_101_may_choose_only_what_the_client_offered() {
    let offered = upgrade_request();
    let mut bare = BytesMut::from(concat!(
        "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n",
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Version: 13\r\n\r\n",
    ));
    let Ok(Status::Complete(bare)) = parse_request(&mut bare, &Limits::default()) else {
        panic!("not a request")
    };
    let check = |request: &RequestHead, extra: &str| {
        let mut buf = BytesMut::from(ok101(extra).as_bytes());
        let Ok(Status::Complete(response)) = parse_response(&mut buf, &Limits::default()) else {
            panic!("{extra:?}")
        };
        classify_response(request.kind(), &response).map_err(|e| e.to_string())
    };
    let protocol = Err(
        "invalid upstream 101 response: sec-websocket-protocol was not offered by the client"
            .to_owned(),
    );
    let extension =
        Err("invalid upstream 101 response: sec-websocket-extensions names an extension the client did not offer".to_owned());
    for (request, extra, expected) in [
        (
            &offered,
            "Sec-WebSocket-Protocol: chat\r\n",
            Ok(ResponseKind::Switched),
        ),
        (
            &offered,
            "Sec-WebSocket-Protocol: Chat\r\n",
            protocol.clone(),
        ),
        (
            &offered,
            "Sec-WebSocket-Protocol: chat, superchat\r\n",
            protocol.clone(),
        ),
        (&bare, "Sec-WebSocket-Protocol: chat\r\n", protocol.clone()),
        (
            &offered,
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n",
            Ok(ResponseKind::Switched),
        ),
        // A comma inside a quoted parameter separates nothing.
        (
            &offered,
            "Sec-WebSocket-Extensions: x-note; v=\"c,d\"\r\n",
            Ok(ResponseKind::Switched),
        ),
        (
            &offered,
            "Sec-WebSocket-Extensions: x-other\r\n",
            extension.clone(),
        ),
        (
            &bare,
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
            extension.clone(),
        ),
        (&bare, "", Ok(ResponseKind::Switched)),
    ] {
        assert_eq!(check(request, extra), expected, "{extra:?}");
    }
    let Some(upgrade) = offered.websocket() else {
        panic!("not an upgrade")
    };
    assert_eq!(upgrade.protocols().unwrap(), "chat, superchat");
    assert_eq!(
        upgrade.extensions().unwrap(),
        "permessage-deflate; client_max_window_bits, x-note; v=\"a,b\""
    );
}
