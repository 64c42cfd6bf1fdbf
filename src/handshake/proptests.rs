//! Property tests of the head parsers: split points, random bytes, round
//! trips. `PROPTEST_CASES` raises the number of cases.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A header name in random case, and a value without leading or trailing
/// whitespace (which the parser trims, RFC 9112 §5).
fn field() -> impl Strategy<Value = (String, String)> {
    (
        "[xX]-[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
        prop_oneof!["", "[!-~]", "[!-~][ -~\t\u{80}-\u{ff}]{0,30}[!-~]"],
    )
}

/// The 101 a correct upstream answers to `head`, with the right
/// Sec-WebSocket-Accept when `head` is a WebSocket upgrade.
fn switching(head: &RequestHead) -> http::Response<()> {
    let mut answer = http::Response::new(());
    *answer.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = answer.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Some(upgrade) = head.websocket() {
        let accept = http::HeaderValue::from_str(&upgrade.expected_accept()).unwrap();
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    answer
}

/// What a well-formed 101 from [`switching`] means: it completes exactly
/// the WebSocket upgrades.
fn switch_verdict(head: &RequestHead) -> Result<ResponseKind, HandshakeError> {
    match head.websocket() {
        Some(_) => Ok(ResponseKind::Switched),
        None => Err(HandshakeError::Switch(SwitchError::NotRequested)),
    }
}

/// The text of a valid request head, possibly a WebSocket upgrade.
fn request_head() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PUT"),
            Just("OPTIONS"),
            Just("PURGE")
        ],
        prop_oneof![
            "/[a-zA-Z0-9._~!$&'()*+,;=:@%/-]{0,24}(\\?[a-zA-Z0-9=&/?-]{0,12})?",
            "http://[a-z]{1,8}(:[0-9]{1,4})?/[a-z0-9/]{0,10}",
        ],
        prop_oneof![Just("1.0"), Just("1.1")],
        "[a-z]{1,10}(\\.[a-z]{2,5})?(:[0-9]{1,4}|:[1-5][0-9]{4})?",
        proptest::collection::vec(field(), 0..12),
        any::<bool>(),
        prop_oneof![Just(None), (0u64..100_000).prop_map(Some)],
    )
        .prop_map(
            |(method, target, version, host, fields, websocket, length)| {
                // An encoded NUL in the path is refused (nginx answers 400).
                let target = target.replace("%00", "%20");
                let mut head = format!("{method} {target} HTTP/{version}\r\nHost: {host}\r\n");
                for (name, value) in fields {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                if websocket {
                    head.push_str(&format!(
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
                    ));
                }
                if let Some(length) = length {
                    head.push_str(&format!("Content-Length: {length}\r\n"));
                }
                head.push_str("\r\n");
                // Only GET/1.1 upgrades are valid: make the others plain.
                if websocket && !(method == "GET" && version == "1.1") {
                    head = head.replace("Upgrade: websocket", "Upgrade: h2c");
                }
                head
            },
        )
}

/// The text of a valid response head.
fn response_head() -> impl Strategy<Value = String> {
    (
        100u16..=599,
        prop_oneof![Just("1.0"), Just("1.1")],
        "[a-zA-Z ]{0,20}",
        proptest::collection::vec(field(), 0..12),
    )
        .prop_map(|(code, version, reason, fields)| {
            let mut head = format!("HTTP/{version} {code} {reason}\r\n");
            for (name, value) in fields {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            head
        })
}

/// Bytes biased towards what heads are made of, so random input gets past
/// the request line.
fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => any::<u8>(),
        4 => proptest::sample::select(b"\r\n:/ \tHGETP1.0xX-aA=#@?*chunked,".to_vec()),
    ];
    let prefix = prop_oneof![
        Just(Vec::new()),
        Just(b"GET / HTTP/1.1\r\n".to_vec()),
        Just(b"HTTP/1.1 101 Switching Protocols\r\n".to_vec()),
        Just(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n".to_vec()),
    ];
    (prefix, proptest::collection::vec(byte, 0..400)).prop_map(|(mut prefix, rest)| {
        prefix.extend(rest);
        prefix
    })
}

/// Every CR is followed by LF, every LF preceded by CR, and no NUL.
fn only_crlf_line_ends(head: &[u8]) -> bool {
    head.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => head.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && head[i - 1] == b'\r',
        0 => false,
        _ => true,
    })
}

fn assert_same_request(a: &RequestHead, b: &RequestHead) {
    assert_eq!(a.request().method(), b.request().method());
    assert_eq!(a.request().uri(), b.request().uri());
    assert_eq!(a.request().version(), b.request().version());
    assert_eq!(a.request().headers(), b.request().headers());
    assert_eq!(a.kind(), b.kind());
    assert_eq!(a.body_length(), b.body_length());
}

/// Feeds `wire` to `scanner` in the chunks `cuts` make, and returns the
/// first `Complete` with the length of the prefix that gave it.
fn scan_in_chunks(
    mut scanner: HeadScanner,
    wire: &[u8],
    cuts: &[prop::sample::Index],
) -> Result<Option<(usize, usize)>, TestCaseError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    for cut in cuts {
        match scanner.scan(&wire[..cut]) {
            Ok(Status::Complete(n)) => return Ok(Some((n, cut))),
            Ok(Status::Partial) => {}
            Err(e) => return Err(TestCaseError::fail(format!("{e:?} at {cut}"))),
        }
    }
    Ok(None)
}

/// What the scanner and the parser say about the same bytes must agree: the
/// scanner never holds back a head the parser would take, and never reports
/// one the parser would neither take nor refuse.
fn scanner_agrees<T: std::fmt::Debug>(
    scanned: &Result<Status<usize>, HandshakeError>,
    parsed: &Result<Status<T>, HandshakeError>,
    consumed: usize,
) -> Result<bool, TestCaseError> {
    Ok(match (scanned, parsed) {
        (_, Ok(Status::Complete(_))) => {
            prop_assert_eq!(scanned, &Ok(Status::Complete(consumed)));
            true
        }
        (Ok(Status::Complete(_)), _) => {
            prop_assert!(parsed.is_err(), "scanner complete, parser {:?}", parsed);
            true
        }
        (Err(_), _) | (_, Err(_)) => true,
        (Ok(Status::Partial), Ok(Status::Partial)) => false,
    })
}

proptest! {
    #[test]
    fn scanner_is_partial_until_the_head_then_complete_at_its_end(
        head in request_head(),
        response in response_head(),
        rest in proptest::collection::vec(any::<u8>(), 0..40),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let limits = Limits::default();
        for (wire, scanner, len) in [
            (head.as_bytes(), HeadScanner::request(limits), {
                let mut whole = BytesMut::from(head.as_bytes());
                whole.extend_from_slice(&rest);
                let Ok(Status::Complete(_)) = parse_request(&mut whole, &limits) else {
                    panic!("a valid head was refused: {head:?}");
                };
                head.len() + rest.len() - whole.len()
            }),
            (response.as_bytes(), HeadScanner::response(limits), {
                let mut whole = BytesMut::from(response.as_bytes());
                whole.extend_from_slice(&rest);
                let Ok(Status::Complete(_)) = parse_response(&mut whole, &limits) else {
                    panic!("a valid head was refused: {response:?}");
                };
                response.len() + rest.len() - whole.len()
            }),
        ] {
            let mut bytes = wire.to_vec();
            bytes.extend_from_slice(&rest);
            let (n, at) = scan_in_chunks(scanner, &bytes, &cuts)?
                .ok_or_else(|| TestCaseError::fail("never complete"))?;
            prop_assert_eq!(n, len);
            prop_assert!(at >= len, "complete at {} before the head ended at {}", at, len);
        }
    }

    #[test]
    fn scanner_never_holds_back_a_head_the_parser_takes(
        bytes in head_bytes(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        small in any::<bool>(),
    ) {
        let limits = if small {
            Limits::default().max_head_bytes(64).max_headers(3)
        } else {
            Limits::default()
        };
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let (mut request, mut response) = (HeadScanner::request(limits), HeadScanner::response(limits));
        let (mut request_done, mut response_done) = (false, false);
        for cut in cuts {
            let buf = &bytes[..cut];
            if !request_done {
                let mut copy = BytesMut::from(buf);
                let parsed = parse_request(&mut copy, &limits);
                request_done = scanner_agrees(&request.scan(buf), &parsed, cut - copy.len())?;
            }
            if !response_done {
                let mut copy = BytesMut::from(buf);
                let parsed = parse_response(&mut copy, &limits);
                response_done = scanner_agrees(&response.scan(buf), &parsed, cut - copy.len())?;
            }
        }
    }

    #[test]
    fn request_split_anywhere_is_partial_then_the_same_head(
        head in request_head(),
        rest in proptest::collection::vec(any::<u8>(), 0..40),
        split in any::<prop::sample::Index>(),
    ) {
        let limits = Limits::default();
        let mut whole = BytesMut::from(head.as_bytes());
        whole.extend_from_slice(&rest);
        let Ok(Status::Complete(once)) = parse_request(&mut whole, &limits) else {
            panic!("a valid head was refused: {head:?}");
        };
        prop_assert_eq!(&whole[..], &rest[..]);

        let at = split.index(head.len());
        let mut buf = BytesMut::from(&head.as_bytes()[..at]);
        prop_assert!(matches!(parse_request(&mut buf, &limits), Ok(Status::Partial)));
        prop_assert_eq!(buf.len(), at);
        buf.extend_from_slice(&head.as_bytes()[at..]);
        buf.extend_from_slice(&rest);
        let Ok(Status::Complete(twice)) = parse_request(&mut buf, &limits) else {
            panic!("the split head was refused: {head:?} at {at}");
        };
        prop_assert_eq!(&buf[..], &rest[..]);
        assert_same_request(&once, &twice);
        prop_assert_eq!(
            classify_response(twice.kind(), &switching(&twice)),
            switch_verdict(&twice)
        );
    }

    #[test]
    fn response_split_anywhere_is_partial_then_the_same_head(
        head in response_head(),
        rest in proptest::collection::vec(any::<u8>(), 0..40),
        split in any::<prop::sample::Index>(),
    ) {
        let limits = Limits::default();
        let mut whole = BytesMut::from(head.as_bytes());
        whole.extend_from_slice(&rest);
        let Ok(Status::Complete(once)) = parse_response(&mut whole, &limits) else {
            panic!("a valid head was refused: {head:?}");
        };
        prop_assert_eq!(&whole[..], &rest[..]);

        let at = split.index(head.len());
        let mut buf = BytesMut::from(&head.as_bytes()[..at]);
        prop_assert!(matches!(parse_response(&mut buf, &limits), Ok(Status::Partial)));
        buf.extend_from_slice(&head.as_bytes()[at..]);
        buf.extend_from_slice(&rest);
        let Ok(Status::Complete(twice)) = parse_response(&mut buf, &limits) else {
            panic!("the split head was refused: {head:?} at {at}");
        };
        prop_assert_eq!(&buf[..], &rest[..]);
        prop_assert_eq!(once.status(), twice.status());
        prop_assert_eq!(once.version(), twice.version());
        prop_assert_eq!(once.headers(), twice.headers());
    }

    #[test]
    fn request_round_trips_through_the_writer(head in request_head()) {
        let limits = Limits::default();
        let Ok(Status::Complete(parsed)) = parse_request(&mut BytesMut::from(head.as_bytes()), &limits) else {
            panic!("a valid head was refused: {head:?}");
        };
        let mut written = BytesMut::new();
        write_request_head(parsed.request(), &mut written);
        let Ok(Status::Complete(again)) = parse_request(&mut written, &limits) else {
            panic!("the written head was refused: {head:?}");
        };
        prop_assert!(written.is_empty());
        assert_same_request(&parsed, &again);
    }

    #[test]
    fn response_round_trips_through_the_writer(head in response_head()) {
        let limits = Limits::default();
        let Ok(Status::Complete(parsed)) = parse_response(&mut BytesMut::from(head.as_bytes()), &limits) else {
            panic!("a valid head was refused: {head:?}");
        };
        let mut written = BytesMut::new();
        write_response_head(&parsed, &mut written);
        let Ok(Status::Complete(again)) = parse_response(&mut written, &limits) else {
            panic!("the written head was refused: {head:?}");
        };
        prop_assert!(written.is_empty());
        prop_assert_eq!(parsed.status(), again.status());
        prop_assert_eq!(parsed.version(), again.version());
        prop_assert_eq!(parsed.headers(), again.headers());
    }

    #[test]
    fn random_bytes_in_random_chunks_never_panic(
        bytes in head_bytes(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        small in any::<bool>(),
    ) {
        let limits = if small {
            Limits::default().max_head_bytes(64).max_headers(3)
        } else {
            Limits::default()
        };
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let (mut requests, mut responses) = (BytesMut::new(), BytesMut::new());
        let mut fed = 0;
        for cut in cuts {
            requests.extend_from_slice(&bytes[fed..cut]);
            responses.extend_from_slice(&bytes[fed..cut]);
            fed = cut;
            // Pipelined heads: keep parsing what follows a complete one.
            for _ in 0..8 {
                let before = requests.clone();
                match parse_request(&mut requests, &limits) {
                    Ok(Status::Complete(head)) => {
                        prop_assert!(requests.len() < before.len());
                        let consumed = &before[..before.len() - requests.len()];
                        prop_assert!(only_crlf_line_ends(consumed), "{:?}", consumed);
                        prop_assert_eq!(
                            classify_response(head.kind(), &switching(&head)),
                            switch_verdict(&head)
                        );
                        let mut out = BytesMut::new();
                        write_request_head(head.request(), &mut out);
                    }
                    Ok(Status::Partial) => {
                        prop_assert_eq!(&requests, &before);
                        break;
                    }
                    Err(e) => {
                        prop_assert!(matches!(e.status().as_u16(), 400 | 414 | 426 | 431), "{e:?}");
                        requests.clear();
                        break;
                    }
                }
            }
            for _ in 0..8 {
                let before = responses.clone();
                match parse_response(&mut responses, &limits) {
                    Ok(Status::Complete(head)) => {
                        let consumed = &before[..before.len() - responses.len()];
                        prop_assert!(only_crlf_line_ends(consumed), "{:?}", consumed);
                        let mut out = BytesMut::new();
                        write_response_head(&head, &mut out);
                    }
                    Ok(Status::Partial) => break,
                    Err(e) => {
                        prop_assert_eq!(e.status().as_u16(), 502);
                        responses.clear();
                        break;
                    }
                }
            }
        }
    }
}
