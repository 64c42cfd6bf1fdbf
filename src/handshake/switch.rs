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
use super::syntax::{check_line_ends, list_has, trim_ows};
use super::upgrade::accept_bytes;
use super::{parse_response, HandshakeError, Limits, Status};

/// A 101 that completes a WebSocket upgrade (RFC 6455 §4.1 checks passed),
/// held as the bytes it arrived in: made by [`parse_upgrade_answer`].
///
/// Its fields come back with [`fields`](Self::fields) as sent (names in
/// the upstream's case); [`to_response`](Self::to_response) builds the
/// `http` form when a caller needs one. Small on purpose (the head's
/// `Bytes` and its version): it passes through the connection's future,
/// where a field table would cost every connection its size.
#[derive(Debug, Clone)]
pub struct SwitchingHead {
    head: Bytes,
    version: Version,
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
        FieldLines::after_status_line(&self.head)
    }

    /// The answer as `http` types: status 101, the fields in arrival order.
    /// Builds a `HeaderMap`, which the fast path exists to avoid: for
    /// callers that must hand the answer on as a `Response`.
    pub fn to_response(&self) -> Response<()> {
        let mut map = HeaderMap::with_capacity(self.fields().count());
        for (name, value) in self.fields() {
            // Both were checked as `http` checks them when the head was
            // read, so nothing is skipped here.
            let name = HeaderName::from_bytes(name);
            let value = head::offset(&self.head, value)
                .ok()
                .map(|range| HeaderValue::from_maybe_shared(self.head.slice(range)));
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

/// The fields of a head read line by line: `name: value` up to the blank
/// line. Only used on heads where it was checked to agree with httparse.
#[derive(Debug, Clone)]
struct FieldLines<'h> {
    rest: &'h [u8],
}

impl<'h> FieldLines<'h> {
    fn after_status_line(head: &'h [u8]) -> Self {
        let rest = match head.iter().position(|&b| b == b'\n') {
            Some(end) => head.get(end + 1..).unwrap_or_default(),
            None => &[],
        };
        Self { rest }
    }
}

impl<'h> Iterator for FieldLines<'h> {
    type Item = (&'h [u8], &'h [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let end = self.rest.iter().position(|&b| b == b'\n')?;
        let line = self.rest.get(..end)?;
        self.rest = self.rest.get(end + 1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = line.split_at(colon);
        Some((name, trim_ows(value.get(1..).unwrap_or_default())))
    }
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
/// assert_eq!(&buf[..], b"\x81\x00"); // for the tunnel
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
                let mut checks = SwitchChecks::default();
                // The line reader that gives the fields back later must see
                // exactly what httparse saw, or this head is not for it.
                let mut lines = FieldLines::after_status_line(bytes);
                for header in response.headers.iter() {
                    let name = header.name.as_bytes();
                    let (line_name, line_value) = lines.next()?;
                    let same = std::ptr::eq(line_name, name)
                        && (std::ptr::eq(line_value, header.value)
                            || (line_value.is_empty() && header.value.is_empty()));
                    if !same
                        || !is_field_name(name)
                        || !is_field_value(header.value)
                        || !checks.observe(name, header.value, upgrade)
                    {
                        return None;
                    }
                }
                let complete = lines.next().is_none();
                (complete && checks.passed()).then_some(Some((len, version)))
            }
            Ok(httparse::Status::Partial) => Some(None),
            Err(_) => None,
        }
    });
    match parsed {
        Some(Some((len, version))) => Fast::Switched(SwitchingHead {
            head: buf.split_to(len).freeze(),
            version,
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
    }
}

/// A name `HeaderName::from_bytes` takes: an RFC 9110 token, as httparse
/// also requires, within `http`'s length limit.
fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() < 1 << 16 && name.iter().all(|&b| TCHAR[usize::from(b)])
}

/// RFC 9110 §5.6.2 `tchar`, as a table: one load per byte.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        b += 1;
    }
    table
};

/// A value `HeaderValue::from_maybe_shared` takes: no control bytes but
/// horizontal tab.
fn is_field_value(value: &[u8]) -> bool {
    value.iter().all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

#[cfg(test)]
mod tests;
