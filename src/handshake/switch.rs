//! The upstream's answer to a WebSocket upgrade, read without building a
//! `HeaderMap` when it is the 101 that completes the upgrade.
//!
//! A proxied handshake's 101 is read, checked and written back once, and
//! never looked at again: a `HeaderMap` for it costs two allocations and a
//! hash per field for nothing. [`parse_upgrade_answer`] checks it over
//! httparse's borrowed fields and keeps only the head's bytes and the
//! positions of its fields ([`SwitchingHead`]). Anything else (another
//! status, a 101 that fails a check, framing fields on a 101, bytes the fast
//! check is unsure of) goes through [`parse_response`](super::parse_response)
//! as before, so errors and plain answers are exactly what they were.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};

use super::head;
use super::request::WebSocketUpgrade;
use super::syntax::{check_line_ends, list_has};
use super::upgrade::accept_bytes;
use super::{parse_response, HandshakeError, Limits, Status};

/// Fields a [`SwitchingHead`] holds; a 101 with more (rare: they carry
/// three to six) is read by the full parser instead.
const MAX_FIELDS: usize = 8;

/// Where a field's name and value sit in the head: start and length.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    name: (u16, u16),
    value: (u16, u16),
}

/// A 101 that completes a WebSocket upgrade (RFC 6455 §4.1 checks passed),
/// held as the bytes it arrived in: made by [`parse_upgrade_answer`].
///
/// Its fields come back with [`fields`](Self::fields) as sent (names in
/// the upstream's case); [`to_response`](Self::to_response) builds the
/// `http` form when a caller needs one. Small on purpose, the size of a
/// `Response`: it passes through the connection's future, where a larger
/// field table would cost every connection its size.
///
/// ```
/// use bytes::BytesMut;
/// use wsproxy::handshake::{parse_request, parse_upgrade_answer, Limits, Status, UpgradeAnswer};
///
/// let limits = Limits::default();
/// let mut buf = BytesMut::from(concat!(
///     "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
///     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
/// ));
/// let Status::Complete(request) = parse_request(&mut buf, &limits)? else { unreachable!() };
/// let mut buf = BytesMut::from(concat!(
///     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
///     "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Served-By:  a \r\n\r\n",
/// ));
/// let upgrade = request.websocket().ok_or("not an upgrade")?;
/// let Status::Complete(UpgradeAnswer::Switched(head)) = parse_upgrade_answer(&mut buf, &limits, upgrade)?
/// else { unreachable!() };
/// assert_eq!(head.fields().last(), Some((&b"X-Served-By"[..], &b"a"[..])));
/// assert_eq!(head.version(), http::Version::HTTP_11);
/// let response = head.to_response();
/// assert_eq!(response.status(), 101);
/// assert_eq!(response.headers()["x-served-by"], "a");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SwitchingHead {
    head: Bytes,
    version: Version,
    len: u8,
    spans: [Span; MAX_FIELDS],
}

/// What an upstream answered a WebSocket upgrade request with.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradeAnswer {
    /// The 101 completing the upgrade, without a `HeaderMap`.
    Switched(SwitchingHead),
    /// Any other answer, as [`parse_response`](super::parse_response)
    /// reads it: classify it with
    /// [`classify_response`](super::classify_response) (an invalid 101 is
    /// refused there).
    Other(Response<()>),
}

impl UpgradeAnswer {
    /// The answer as `http` types, whichever it is (a `HeaderMap` is built
    /// for a [`Switched`](Self::Switched) one).
    pub fn into_response(self) -> Response<()> {
        match self {
            Self::Switched(head) => head.to_response(),
            Self::Other(response) => response,
        }
    }
}

impl SwitchingHead {
    /// The head's bytes as the upstream sent them, status line to blank
    /// line.
    pub fn as_bytes(&self) -> &[u8] {
        &self.head
    }

    /// The HTTP version of the status line.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The header fields in arrival order: name as sent, value without
    /// surrounding whitespace.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        let head: &[u8] = &self.head;
        self.spans[..usize::from(self.len).min(MAX_FIELDS)]
            .iter()
            .map(move |span| (slice(head, span.name), slice(head, span.value)))
    }

    /// The answer as `http` types: status 101, the fields in arrival order.
    /// Builds a `HeaderMap`, which the fast path exists to avoid: for
    /// callers that must hand the answer on as a `Response`.
    pub fn to_response(&self) -> Response<()> {
        let mut map = HeaderMap::with_capacity(usize::from(self.len));
        for span in &self.spans[..usize::from(self.len).min(MAX_FIELDS)] {
            // Both were checked by httparse, which takes exactly the bytes
            // `http` takes, so nothing is skipped here.
            let name = HeaderName::from_bytes(slice(&self.head, span.name));
            let (start, len) = (usize::from(span.value.0), usize::from(span.value.1));
            let value = self
                .head
                .get(start..start + len)
                .map(|_| HeaderValue::from_maybe_shared(self.head.slice(start..start + len)));
            if let (Ok(name), Some(Ok(value))) = (name, value) {
                map.append(name, value);
            }
        }
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.version_mut() = self.version;
        *response.headers_mut() = map;
        response
    }
}

fn slice(head: &[u8], (start, len): (u16, u16)) -> &[u8] {
    let start = usize::from(start);
    head.get(start..start + usize::from(len))
        .unwrap_or_default()
}

/// The position of `part`, a sub-slice httparse returned, within `head`.
fn span(head: &[u8], part: &[u8]) -> Option<(u16, u16)> {
    let range = head::offset(head, part).ok()?;
    Some((
        u16::try_from(range.start).ok()?,
        u16::try_from(range.len()).ok()?,
    ))
}

/// Reads the upstream's answer to the WebSocket upgrade `upgrade` from the
/// front of `buf`, with the contract of
/// [`parse_response`](super::parse_response): `Partial` leaves `buf`
/// untouched; on `Complete` the head is split off and what followed it
/// (the upstream's first frames) stays in `buf`.
///
/// A 101 that passes every check [`classify_response`](super::classify_response)
/// makes comes back as [`UpgradeAnswer::Switched`] without a `HeaderMap`;
/// everything else as [`UpgradeAnswer::Other`], read by `parse_response`.
///
/// # Errors
///
/// What `parse_response` refuses, unchanged (502).
///
/// ```
/// use bytes::BytesMut;
/// use wsproxy::handshake::{parse_request, parse_upgrade_answer, Limits, Status, UpgradeAnswer};
///
/// let limits = Limits::default();
/// let mut buf = BytesMut::from(concat!(
///     "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n",
///     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
///     "Sec-WebSocket-Version: 13\r\n\r\n",
/// ));
/// let Status::Complete(request) = parse_request(&mut buf, &limits)? else { unreachable!() };
/// let upgrade = request.websocket().ok_or("not an upgrade")?;
///
/// let mut buf = BytesMut::from(concat!(
///     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
///     "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\u{81}\u{0}",
/// ));
/// let Status::Complete(UpgradeAnswer::Switched(head)) = parse_upgrade_answer(&mut buf, &limits, upgrade)?
/// else { unreachable!() };
/// assert_eq!(head.fields().nth(2), Some((&b"Sec-WebSocket-Accept"[..], &b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..])));
/// assert_eq!(&buf[..], "\u{81}\u{0}".as_bytes()); // for the tunnel
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse_upgrade_answer(
    buf: &mut BytesMut,
    limits: &Limits,
    upgrade: &WebSocketUpgrade,
) -> Result<Status<UpgradeAnswer>, HandshakeError> {
    match switching(buf, limits, upgrade) {
        Fast::Partial => Ok(Status::Partial),
        Fast::Switched(head) => Ok(Status::Complete(UpgradeAnswer::Switched(head))),
        // The whole head again, through the parser that builds the
        // `Response`: it also names whatever was wrong.
        Fast::Other => Ok(match parse_response(buf, limits)? {
            Status::Complete(response) => Status::Complete(UpgradeAnswer::Other(response)),
            Status::Partial => Status::Partial,
        }),
    }
}

enum Fast {
    Partial,
    Switched(SwitchingHead),
    Other,
}

fn switching(buf: &mut BytesMut, limits: &Limits, upgrade: &WebSocketUpgrade) -> Fast {
    let window = head::window(buf, limits);
    let parsed = head::with_slots(limits, |slots| {
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            window,
            slots,
        );
        match parsed {
            Ok(httparse::Status::Complete(len)) => {
                let bytes = window.get(..len)?;
                if response.code != Some(101) || check_line_ends(bytes).is_err() {
                    return None;
                }
                let version = head::version(response.version?);
                // httparse takes exactly the bytes `http` takes (tokens for
                // names; tab, visible ASCII and obs-text for values), so the
                // fields need no second look here.
                if response.headers.len() > MAX_FIELDS {
                    return None;
                }
                let mut spans = [Span::default(); MAX_FIELDS];
                let mut checks = SwitchChecks::default();
                for (slot, header) in spans.iter_mut().zip(response.headers.iter()) {
                    let name = header.name.as_bytes();
                    if !checks.observe(name, header.value, upgrade) {
                        return None;
                    }
                    *slot = Span {
                        name: span(bytes, name)?,
                        value: span(bytes, header.value)?,
                    };
                }
                let fields = u8::try_from(response.headers.len()).ok()?;
                checks
                    .passed()
                    .then_some(Some((len, (fields, version, spans))))
            }
            Ok(httparse::Status::Partial) => Some(None),
            Err(_) => None,
        }
    });
    match parsed {
        Some(Some((len, (fields, version, spans)))) => Fast::Switched(SwitchingHead {
            head: buf.split_to(len).freeze(),
            version,
            len: fields,
            spans,
        }),
        Some(None) if buf.len() < limits.max_head_bytes => Fast::Partial,
        // At the limit (431) or anything refused: the full parser answers.
        _ => Fast::Other,
    }
}

/// What [`check_switch`](super::upgrade::check_switch) reads, noted in one
/// pass over the fields.
#[derive(Debug, Default)]
struct SwitchChecks {
    upgrades: usize,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    accepts: usize,
    accept_matches: bool,
    /// A Sec-WebSocket-Protocol or Sec-WebSocket-Extensions the client did
    /// not offer, or a repeated protocol: the full check names the error.
    not_offered: bool,
    protocols: usize,
}

impl SwitchChecks {
    /// Notes one field; false for a field only the full parser may judge
    /// (body framing on a 101, which it checks for conflicts).
    fn observe(&mut self, name: &[u8], value: &[u8], upgrade: &WebSocketUpgrade) -> bool {
        if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrades += 1;
            self.upgrade_websocket = value.eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection_upgrade |= list_has(value, "upgrade");
        } else if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
            self.accepts += 1;
            self.accept_matches = value == accept_bytes(upgrade.key().as_bytes());
        } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
            self.protocols += 1;
            self.not_offered |= !upgrade.offers_protocol(value);
        } else if name.eq_ignore_ascii_case(b"sec-websocket-extensions") {
            self.not_offered |= !upgrade.offers_extensions(value);
        } else if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            return false;
        }
        true
    }

    fn passed(&self) -> bool {
        self.upgrades == 1
            && self.upgrade_websocket
            && self.connection_upgrade
            && self.accepts == 1
            && self.accept_matches
            && self.protocols <= 1
            && !self.not_offered
    }
}

#[cfg(test)]
mod tests;
