use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn parse(head: &str) -> Result<Status<RequestHead>, HandshakeError> {
    parse_request(&mut BytesMut::from(head), &Limits::default())
}

fn complete(head: &str) -> RequestHead {
    match parse(head) {
        Ok(Status::Complete(head)) => head,
        other => panic!("{head:?} gave {other:?}"),
    }
}

fn websocket(extra: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// Asserts the exact status and message of a refused request.
fn refused(head: &str, status: u16, message: &str) {
    match parse(head) {
        Err(e) => {
            assert_eq!(
                (e.status().as_u16(), e.to_string().as_str()),
                (status, message),
                "{head:?}"
            );
        }
        other => panic!("{head:?} gave {other:?}, expected {status} {message:?}"),
    }
}

#[test]
fn websocket_upgrade_is_classified_and_following_bytes_stay_in_the_buffer() {
    let mut buf = BytesMut::from(websocket("Sec-WebSocket-Version: 13\r\n").as_str());
    buf.extend_from_slice(b"\x81\x85frame");
    let Ok(Status::Complete(head)) = parse_request(&mut buf, &Limits::default()) else {
        panic!("incomplete")
    };
    assert_eq!(&buf[..], b"\x81\x85frame");
    assert_eq!(head.request().method(), Method::GET);
    assert_eq!(head.request().uri(), "/chat");
    assert_eq!(head.request().version(), Version::HTTP_11);
    assert_eq!(head.request().headers().len(), 5);
    assert_eq!(head.host(), Some("example.com"));
    assert_eq!(head.body_length(), BodyLength::Fixed(0));
    let upgrade = head.websocket().expect("a websocket upgrade");
    assert_eq!(upgrade.key(), KEY);
    assert_eq!(upgrade.expected_accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn incomplete_head_is_partial_and_leaves_the_buffer_alone() {
    let full = websocket("Sec-WebSocket-Version: 13\r\n");
    for end in 0..full.len() {
        let mut buf = BytesMut::from(&full[..end]);
        let status = parse_request(&mut buf, &Limits::default());
        assert!(matches!(status, Ok(Status::Partial)), "{end}: {status:?}");
        assert_eq!(&buf[..], &full.as_bytes()[..end]);
    }
}

#[test]
fn upgrade_tokens_and_case_are_matched_per_rfc() {
    let head = complete(&format!(
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, WebSocket\r\nConnection: keep-alive, UPGRADE\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ));
    assert!(head.websocket().is_some());
}

#[test]
fn other_upgrades_are_plain_http() {
    for upgrade in ["h2c", "TLS/1.0", "websocketx", "websocket/13"] {
        let head = complete(&format!(
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: {upgrade}\r\nConnection: upgrade\r\n\r\n"
        ));
        assert_eq!(head.kind(), &RequestKind::Http, "{upgrade}");
    }
    let head = complete("POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(head.kind(), &RequestKind::Http);
    assert_eq!(head.body_length(), BodyLength::Fixed(3));
    assert_eq!(head.websocket(), None);
}

#[test]
fn http_10_without_host_and_leading_empty_lines_are_accepted() {
    let head = complete("\r\nGET /old HTTP/1.0\r\n\r\n");
    assert_eq!(head.request().version(), Version::HTTP_10);
    assert_eq!(head.host(), None);
}

#[test]
fn absolute_form_is_accepted_and_its_authority_is_the_host() {
    let head = complete("GET http://upstream.test:8080/a?b HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(head.request().uri(), "http://upstream.test:8080/a?b");
    assert_eq!(head.host(), Some("upstream.test:8080"));
    let (request, kind) = head.into_parts();
    assert_eq!(kind, RequestKind::Http);
    assert_eq!(request.headers()["host"], "other");
}

#[test]
fn heads_over_the_limits_get_431_and_request_lines_414() {
    let small = Limits::default().max_head_bytes(64).max_headers(2);
    let over = |head: &str| parse_request(&mut BytesMut::from(head), &small);
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(70));
    let err = over(&long).unwrap_err();
    assert_eq!(
        (err.status().as_u16(), err.to_string()),
        (414, "request line longer than 64 bytes".into())
    );
    // 64 bytes without an end is already too large, even before it ends.
    let err = over(&long[..64]).unwrap_err();
    assert_eq!(err.status(), 414);
    assert!(matches!(over(&long[..63]), Ok(Status::Partial)));
    let fields = format!("GET / HTTP/1.1\r\nX: {}\r\n", "v".repeat(70));
    let err = over(&fields).unwrap_err();
    assert_eq!(
        (err.status().as_u16(), err.to_string()),
        (431, "head larger than 64 bytes".into())
    );
    let err = over("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n").unwrap_err();
    assert_eq!(
        (err.status().as_u16(), err.to_string()),
        (431, "more than 2 header fields".into())
    );
    assert!(over("GET / HTTP/1.1\r\nHost: a\r\nB: 2\r\n\r\n").is_ok());

    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    refused(
        &format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
        431,
        "more than 100 header fields",
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(16 * 1024)
    );
    refused(&big, 431, "head larger than 16384 bytes");
}

#[test]
fn ambiguous_framing_gets_400_naming_the_header() {
    let h = "GET / HTTP/1.1\r\nHost: a\r\n";
    refused(
        &format!("{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400,
        "content-length together with transfer-encoding",
    );
    refused(
        &format!("{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        400,
        "differing content-length values",
    );
    refused(
        &format!("{h}Content-Length: 5, 6\r\n\r\n"),
        400,
        "differing content-length values",
    );
    refused(
        &format!("{h}Content-Length: -1\r\n\r\n"),
        400,
        "invalid content-length",
    );
    refused(
        &format!("{h}Transfer-Encoding: chunked, gzip\r\n\r\n"),
        400,
        "transfer-encoding does not end with chunked",
    );
    refused(
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "transfer-encoding in an http/1.0 request",
    );
    refused(
        &format!("{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\n"),
        400,
        "duplicate content-length header",
    );
    refused(
        &format!("{h}Content-Length: 5, 5\r\n\r\n"),
        400,
        "duplicate content-length header",
    );
    let head = complete(&format!("{h}Transfer-Encoding: Chunked\r\n\r\n"));
    assert_eq!(head.body_length(), BodyLength::Chunked);
    refused(
        &format!("{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400,
        "duplicate transfer-encoding header",
    );
    refused(
        &format!("{h}Transfer-Encoding: identity, chunked\r\n\r\n"),
        501,
        "transfer-encoding other than chunked is not implemented",
    );
}

#[test]
fn forbidden_bytes_get_400_naming_the_header() {
    let h = "GET / HTTP/1.1\r\nHost: a\r\n";
    refused(
        &format!("{h}X-A: a\0b\r\n\r\n"),
        400,
        "control byte 0x00 in header `x-a`",
    );
    refused(
        &format!("{h}X-A: a\x7fb\r\n\r\n"),
        400,
        "control byte 0x7f in header `x-a`",
    );
    refused(
        &format!("{h}X-A: a\x01b\r\n\r\n"),
        400,
        "control byte 0x01 in header `x-a`",
    );
    refused(
        &format!("{h}X-A: a\rb\r\n\r\n"),
        400,
        "bare cr in header `x-a`",
    );
    refused(
        &format!("{h}X-A: a\nTransfer-Encoding: chunked\r\n\r\n"),
        400,
        "bare lf in header `x-a`",
    );
    refused(&format!("{h}X-A: a\n\n"), 400, "bare lf in header `x-a`");
    refused(
        "GET / HTTP/1.1\nHost: a\r\n\r\n",
        400,
        "bare lf in start line",
    );
    refused(
        &format!("{h}X-A: a\r\n b\r\n\r\n"),
        400,
        "obs-fold continuing header `x-a`",
    );
    refused(
        &format!("{h}X-A: a\r\n\tb\r\n\r\n"),
        400,
        "obs-fold continuing header `x-a`",
    );
    refused(
        "GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        400,
        "obs-fold continuing start line",
    );
    refused(
        &format!("{h}X-A : a\r\n\r\n"),
        400,
        "invalid header name after header `host`",
    );
    refused(
        &format!("{h}: a\r\n\r\n"),
        400,
        "invalid header name after header `host`",
    );
    refused(
        &format!("{h}X(A): a\r\n\r\n"),
        400,
        "invalid header name after header `host`",
    );
}

#[test]
fn host_rules_of_rfc_9112_get_400() {
    refused("GET / HTTP/1.1\r\n\r\n", 400, "missing host header");
    refused(
        "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        400,
        "duplicate host header",
    );
    refused(
        "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
        "duplicate host header",
    );
    for host in [
        "", "a/b", "user@a", "a b", "a:port", ":80", "a:123456", "a:99999", "a:65536", "a:000080",
    ] {
        refused(
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            400,
            "invalid host header",
        );
    }
    for host in [
        "a",
        "a.example:8080",
        "[::1]:80",
        "127.0.0.1",
        "a:65535",
        "a:",
    ] {
        complete(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    }
}

#[test]
fn request_target_must_be_origin_or_absolute_form() {
    for target in [
        "*",
        "example.com:443",
        "/a#frag",
        "ftp://a/b",
        "http://u@a/",
        "http:///a",
        "a/b",
    ] {
        refused(
            &format!("OPTIONS {target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            400,
            "invalid request-target",
        );
    }
    for target in [
        "/",
        "/a/b?c=d",
        "//a",
        "http://a",
        "HTTPS://a:1/b",
        "ws://a/b",
    ] {
        complete(&format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"));
    }
}

#[test]
fn an_encoded_nul_in_the_path_gets_400() {
    for target in ["/api/..%00/admin", "/%00", "http://a/b%00c"] {
        refused(
            &format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            400,
            "encoded nul in request path",
        );
    }
    // The query is the application's: nginx does not decode it either.
    complete("GET /a?x=%00 HTTP/1.1\r\nHost: a\r\n\r\n");
    complete("GET /a%20b HTTP/1.1\r\nHost: a\r\n\r\n");
}

#[test]
fn malformed_request_lines_get_400() {
    refused(
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "malformed request line",
    );
    refused(
        "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "malformed request line",
    );
    refused(
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        400,
        "unsupported http version",
    );
    refused(
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        400,
        "malformed request line",
    );
    refused(
        "G\0T / HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
        "malformed request line",
    );
}

#[test]
fn websocket_requests_breaking_rfc_6455_get_400() {
    let ok = "Sec-WebSocket-Version: 13\r\n";
    refused(
        &websocket(ok).replacen("GET", "POST", 1),
        400,
        "websocket upgrade with method other than get",
    );
    refused(
        &websocket(ok).replacen("HTTP/1.1", "HTTP/1.0", 1),
        400,
        "websocket upgrade over http/1.0",
    );
    refused(
        &websocket(ok).replacen("Connection: Upgrade", "Connection: keep-alive", 1),
        400,
        "websocket upgrade without upgrade in connection header",
    );
    refused(
        &websocket(ok).replacen("Connection: Upgrade", "X-Connection: Upgrade", 1),
        400,
        "websocket upgrade without upgrade in connection header",
    );
    refused(
        &websocket(ok).replacen("Sec-WebSocket-Key", "X-Key", 1),
        400,
        "missing sec-websocket-key header",
    );
    for key in [
        "dGhlIHNhbXBsZSBub25jZQ",      // unpadded
        "dGhlIHNhbXBsZSBub25jZR==",    // non-zero trailing bits
        "dGhlIHNhbXBsZSBub25j",        // 15 bytes
        "dGhlIHNhbXBsZSBub25jZSE=",    // 17 bytes
        "dGhlIHNhbXBsZSBub25jZQ==, x", // a list
        "dGhlIHNhbXBsZSBub25jZQ!=",    // not base64
    ] {
        refused(
            &websocket(ok).replacen(KEY, key, 1),
            400,
            "invalid sec-websocket-key header",
        );
    }
    refused(
        &websocket(&format!("Sec-WebSocket-Key: {KEY}\r\n{ok}")),
        400,
        "invalid sec-websocket-key header",
    );
}

#[test]
fn other_websocket_versions_get_426() {
    for versions in [
        "Sec-WebSocket-Version: 8\r\n",
        "",
        "Sec-WebSocket-Version: 13, 8\r\n",
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n",
    ] {
        refused(
            &websocket(versions),
            426,
            "unsupported sec-websocket-version header",
        );
    }
}

#[test]
fn error_answers_carry_status_message_and_close() {
    let err = parse(&websocket("Sec-WebSocket-Version: 8\r\n")).unwrap_err();
    let answer = err.to_response();
    assert_eq!(answer.status(), 426);
    assert_eq!(answer.headers()["sec-websocket-version"], "13");
    assert_eq!(answer.headers()["connection"], "close");
    assert_eq!(
        &answer.body()[..],
        b"unsupported sec-websocket-version header\n"
    );

    let answer = parse("GET / HTTP/1.1\r\n\r\n").unwrap_err().to_response();
    assert_eq!(answer.status(), 400);
    assert_eq!(answer.headers()["content-length"], "20");
    assert_eq!(&answer.body()[..], b"missing host header\n");
    assert!(answer.headers().get("sec-websocket-version").is_none());
}
