//! Reading the upstream's response head and deciding what it allows.

use bytes::BytesMut;
use http::{Response, StatusCode, Version};

use super::head;
use super::request::RequestKind;
use super::syntax::check_line_ends;
use super::upgrade::check_switch;
use super::{framing, HandshakeError, HeadError, Limits, Status, SwitchError};

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
    fields: Vec<head::Field>,
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
                check_line_ends(&window[..len])?;
                let (Some(code), Some(version)) = (response.code, response.version) else {
                    return Err(HeadError::StatusLine);
                };
                Ok(Some(Raw {
                    len,
                    status: StatusCode::from_u16(code).map_err(|_| HeadError::StatusLine)?,
                    version: if version == 0 {
                        Version::HTTP_10
                    } else {
                        Version::HTTP_11
                    },
                    fields: head::fields(window, response.headers)?,
                }))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(head::parse_error(window, e, limits, HeadError::StatusLine)),
        }
    })?;
    let Some(raw) = raw else {
        if buf.len() >= limits.max_head_bytes() {
            return Err(HeadError::TooLarge {
                limit: limits.max_head_bytes(),
            });
        }
        return Ok(Status::Partial);
    };
    let head = buf.split_to(raw.len).freeze();
    let mut response = Response::new(());
    *response.status_mut() = raw.status;
    *response.version_mut() = raw.version;
    *response.headers_mut() = head::header_map(&head, raw.fields)?;
    framing::check_response(response.headers())?;
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
