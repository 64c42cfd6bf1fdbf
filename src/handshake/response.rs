//! Reading the upstream's response head and deciding what it allows.

use bytes::BytesMut;
use http::{Response, StatusCode, Version};

use super::framing::Framing;
use super::head;
use super::request::RequestKind;
use super::syntax::check_line_ends;
use super::upgrade::check_switch;
use super::{HandshakeError, HeadError, Limits, Status, SwitchError};

/// Reads a response head from the front of `buf`.
///
/// The same contract as [`parse_request`](super::parse_request): `Partial`
/// leaves `buf` untouched; on `Complete` the head is split off the front and
/// whatever followed it (a body, or the upstream's first WebSocket frame sent
/// right after its 101) stays in `buf`. The reason phrase is not kept: `http`
/// has no place for it, and the writer sends the canonical one.
///
/// # Errors
///
/// [`HandshakeError::Response`] for a head over `limits`, a syntax error,
/// bytes RFC 9112 forbids, or ambiguous framing (Content-Length with
/// Transfer-Encoding, differing Content-Length values). Its status is 502.
///
/// ```
/// use bytes::BytesMut;
/// use wsproxy::handshake::{parse_response, Limits, Status};
///
/// let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00"[..]);
/// let Status::Complete(response) = parse_response(&mut buf, &Limits::default())? else {
///     unreachable!("the head is complete")
/// };
/// assert_eq!(response.status(), 101);
/// assert_eq!(&buf[..], b"\x81\x00");
/// # Ok::<(), wsproxy::handshake::HandshakeError>(())
/// ```
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Status<Response<()>>, HandshakeError> {
    read(buf, limits).map_err(HandshakeError::Response)
}

struct Raw {
    len: usize,
    status: StatusCode,
    version: Version,
    fields: head::Fields,
}

fn read(buf: &mut BytesMut, limits: &Limits) -> Result<Status<Response<()>>, HeadError> {
    let window = head::window(buf, limits);
    let raw = head::with_slots(limits, |slots| {
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            window,
            slots,
        );
        match parsed {
            Ok(httparse::Status::Complete(len)) => {
                // Positions are taken within the head alone, so slicing the
                // split-off head with them cannot go out of bounds.
                let bytes = window.get(..len).ok_or(HeadError::Malformed)?;
                check_line_ends(bytes)?;
                let (Some(code), Some(version)) = (response.code, response.version) else {
                    return Err(HeadError::StatusLine);
                };
                Ok(Some(Raw {
                    len,
                    status: StatusCode::from_u16(code).map_err(|_| HeadError::StatusLine)?,
                    version: head::version(version),
                    fields: head::fields(bytes, response.headers)?,
                }))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(head::parse_error(window, e, limits, HeadError::StatusLine)),
        }
    })?;
    let Some(raw) = raw else {
        return head::incomplete(buf.len(), limits);
    };
    let head = buf.split_to(raw.len).freeze();
    let mut response = Response::new(());
    *response.status_mut() = raw.status;
    *response.version_mut() = raw.version;
    let mut framing = Framing::default();
    for (name, range) in raw.fields.iter() {
        framing.observe(name, &head[range.clone()]);
    }
    framing.check_response()?;
    *response.headers_mut() = head::header_map(&head, raw.fields)?;
    Ok(Status::Complete(response))
}

/// What the proxy does with an upstream's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseKind {
    /// A 101 completing the WebSocket upgrade: relay it, then tunnel.
    Switched,
    /// A 1xx other than 101 (100 Continue, 103 Early Hints): relay it and
    /// read the next response head.
    Informational,
    /// A final answer: relay it as plain HTTP. No tunnel, even if the request
    /// was an upgrade: opening one after a non-101 answer is what WebSocket
    /// smuggling exploits.
    Http,
}

/// Decides what an upstream's response to a request of `kind` allows.
///
/// # Errors
///
/// [`HandshakeError::Switch`] (status 502) for a 101 that does not complete
/// the upgrade: to a request that asked for none, or with a wrong Upgrade,
/// Connection or Sec-WebSocket-Accept. Never tunnel then.
///
/// ```
/// use bytes::BytesMut;
/// use wsproxy::handshake::{classify_response, parse_request, parse_response};
/// use wsproxy::handshake::{Limits, ResponseKind, Status};
///
/// let limits = Limits::default();
/// let mut buf = BytesMut::from(concat!(
///     "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n",
///     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
///     "Sec-WebSocket-Version: 13\r\n\r\n",
/// ));
/// let Status::Complete(request) = parse_request(&mut buf, &limits)? else { unreachable!() };
///
/// let mut buf = BytesMut::from(concat!(
///     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
///     "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
/// ));
/// let Status::Complete(response) = parse_response(&mut buf, &limits)? else { unreachable!() };
/// assert_eq!(classify_response(request.kind(), &response)?, ResponseKind::Switched);
/// # Ok::<(), wsproxy::handshake::HandshakeError>(())
/// ```
pub fn classify_response<B>(
    kind: &RequestKind,
    response: &Response<B>,
) -> Result<ResponseKind, HandshakeError> {
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if status.is_informational() {
            return Ok(ResponseKind::Informational);
        }
        return Ok(ResponseKind::Http);
    }
    match kind {
        RequestKind::WebSocket(upgrade) => check_switch(upgrade, response)
            .map(|()| ResponseKind::Switched)
            .map_err(HandshakeError::Switch),
        RequestKind::Http => Err(HandshakeError::Switch(SwitchError::NotRequested)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{parse_request, RequestHead};

    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn parse(head: &str) -> Result<Status<Response<()>>, HandshakeError> {
        parse_response(&mut BytesMut::from(head), &Limits::default())
    }

    fn complete(head: &str) -> Response<()> {
        match parse(head) {
            Ok(Status::Complete(response)) => response,
            other => panic!("{head:?} gave {other:?}"),
        }
    }

    fn refused(head: &str, message: &str) {
        match parse(head) {
            Err(e) => assert_eq!(
                (e.status().as_u16(), e.to_string().as_str()),
                (502, message),
                "{head:?}"
            ),
            other => panic!("{head:?} gave {other:?}"),
        }
    }

    fn websocket_request() -> RequestHead {
        let mut buf = BytesMut::from(concat!(
            "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ));
        match parse_request(&mut buf, &Limits::default()) {
            Ok(Status::Complete(head)) => head,
            other => panic!("{other:?}"),
        }
    }

    fn switch(headers: &str) -> Response<()> {
        complete(&format!(
            "HTTP/1.1 101 Switching Protocols\r\n{headers}\r\n"
        ))
    }

    #[test]
    fn response_head_is_split_off_and_the_first_frame_stays() {
        let full = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        );
        for end in 0..full.len() {
            let mut buf = BytesMut::from(&full[..end]);
            assert!(matches!(
                parse_response(&mut buf, &Limits::default()),
                Ok(Status::Partial)
            ));
            assert_eq!(buf.len(), end);
        }
        let mut buf = BytesMut::from(full.as_str());
        buf.extend_from_slice(b"\x81\x02hi");
        let Ok(Status::Complete(response)) = parse_response(&mut buf, &Limits::default()) else {
            panic!("incomplete")
        };
        assert_eq!(&buf[..], b"\x81\x02hi");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(response.headers()["sec-websocket-accept"], ACCEPT);
        let old = complete("HTTP/1.0 200\r\n\r\n");
        assert_eq!(
            (old.version(), old.status()),
            (Version::HTTP_10, StatusCode::OK)
        );
    }

    #[test]
    fn bad_upstream_heads_get_502_naming_the_fault() {
        refused(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "invalid upstream response: content-length together with transfer-encoding",
        );
        refused(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "invalid upstream response: differing content-length values",
        );
        refused(
            "HTTP/1.1 200 OK\r\nX-A: a\0\r\n\r\n",
            "invalid upstream response: control byte 0x00 in header `x-a`",
        );
        refused(
            "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
            "invalid upstream response: bare cr in header `x-a`",
        );
        refused(
            "HTTP/1.1 200 OK\r\nX-A: a\nB: c\r\n\r\n",
            "invalid upstream response: bare lf in header `x-a`",
        );
        refused(
            "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n",
            "invalid upstream response: obs-fold continuing header `x-a`",
        );
        refused(
            "HTTP/1.1 099 Odd\r\n\r\n",
            "invalid upstream response: malformed status line",
        );
        refused(
            "HTTP/1.1 2000 OK\r\n\r\n",
            "invalid upstream response: malformed status line",
        );
        refused(
            "HTTP/2.0 200 OK\r\n\r\n",
            "invalid upstream response: unsupported http version",
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        refused(
            &format!("HTTP/1.1 200 OK\r\n{many}\r\n"),
            "invalid upstream response: more than 100 header fields",
        );
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(16 * 1024));
        refused(
            &big,
            "invalid upstream response: head larger than 16384 bytes",
        );
        // A response may end a non-chunked coding by closing (RFC 9112 §6.3).
        complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    }

    #[test]
    fn a_valid_101_completes_the_upgrade() {
        let request = websocket_request();
        let ok = switch(&format!("Upgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n"));
        assert_eq!(
            classify_response(request.kind(), &ok),
            Ok(ResponseKind::Switched)
        );
    }

    #[test]
    fn non_101_answers_are_relayed_as_plain_http_never_tunneled() {
        let request = websocket_request();
        for status in [
            "200 OK",
            "400 Bad Request",
            "403 Forbidden",
            "426 Upgrade Required",
            "500 Oops",
        ] {
            let response = complete(&format!(
                "HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
            ));
            assert_eq!(
                classify_response(request.kind(), &response),
                Ok(ResponseKind::Http),
                "{status}"
            );
        }
        for status in ["100 Continue", "103 Early Hints"] {
            let response = complete(&format!("HTTP/1.1 {status}\r\n\r\n"));
            assert_eq!(
                classify_response(request.kind(), &response),
                Ok(ResponseKind::Informational)
            );
        }
    }

    #[test]
    fn invalid_101_answers_get_502() {
        let request = websocket_request();
        let cases = [
            (format!("Connection: upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n"), "upgrade header is not websocket"),
            (format!("Upgrade: h2c\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n"), "upgrade header is not websocket"),
            (
                format!("Upgrade: websocket\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n"),
                "upgrade header is not websocket",
            ),
            (format!("Upgrade: websocket\r\nSec-WebSocket-Accept: {ACCEPT}\r\n"), "connection header does not list upgrade"),
            ("Upgrade: websocket\r\nConnection: upgrade\r\n".to_owned(), "missing sec-websocket-accept header"),
            (
                format!("Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Accept: {ACCEPT}\r\n"),
                "missing sec-websocket-accept header",
            ),
            (
                "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: S3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n".to_owned(),
                "sec-websocket-accept does not match the key",
            ),
        ];
        for (headers, message) in cases {
            let err = classify_response(request.kind(), &switch(&headers)).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(
                err.to_string(),
                format!("invalid upstream 101 response: {message}"),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn a_101_to_a_plain_request_gets_502() {
        let response = switch(&format!(
            "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n"
        ));
        let err = classify_response(&RequestKind::Http, &response).unwrap_err();
        assert_eq!(err, HandshakeError::Switch(SwitchError::NotRequested));
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            err.to_string(),
            "invalid upstream 101 response: no websocket upgrade was requested"
        );
    }
}
