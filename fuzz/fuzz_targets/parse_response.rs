//! Response heads: never panic; fed in two chunks, the parse must agree with
//! the parse of the whole input; a complete head round-trips through the
//! writer.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsproxy::handshake::{parse_response, write_response_head, Limits, Status};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let split = data.first().map_or(0, |&b| usize::from(b)) % (data.len() + 1);

    let mut whole = BytesMut::from(data);
    let once = parse_response(&mut whole, &limits);

    let mut chunked = BytesMut::from(&data[..split]);
    let first = parse_response(&mut chunked, &limits);
    if first.is_err() {
        // An error seen in a prefix must not vanish with more bytes.
        assert!(once.is_err(), "prefix {first:?} but whole {once:?}");
    }
    if let Ok(Status::Partial) = first {
        chunked.extend_from_slice(&data[split..]);
        let second = parse_response(&mut chunked, &limits);
        match (&once, &second) {
            (Ok(Status::Complete(a)), Ok(Status::Complete(b))) => {
                assert_eq!(a.status(), b.status());
                assert_eq!(a.headers(), b.headers());
                assert_eq!(whole, chunked);
            }
            (Ok(Status::Partial), Ok(Status::Partial)) => {}
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("whole {a:?} but split {b:?}"),
        }
    }

    if let Ok(Status::Complete(head)) = once {
        // The accepted head: every CR followed by LF, every LF preceded by
        // CR, no NUL (RFC 9112 §2.2, §5).
        let consumed = &data[..data.len() - whole.len()];
        for (i, &b) in consumed.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(consumed.get(i + 1), Some(&b'\n'), "bare cr at {i}"),
                b'\n' => assert!(i > 0 && consumed[i - 1] == b'\r', "bare lf at {i}"),
                0 => panic!("nul at {i}"),
                _ => {}
            }
        }
        let mut out = BytesMut::new();
        write_response_head(&head, &mut out);
        match parse_response(&mut out, &limits) {
            Ok(Status::Complete(again)) => {
                assert_eq!(again.status(), head.status());
                assert_eq!(again.version(), head.version());
                assert_eq!(again.headers(), head.headers());
                assert!(out.is_empty());
            }
            // Re-serialised heads may grow past the size limit
            // (`Host:a` becomes `host: a`) but never become invalid.
            Err(e) if e.status() == 431 => {}
            other => panic!("round trip gave {other:?}"),
        }
    }
});
