//! Reading and classifying the client's request head.

use std::borrow::Cow;
use std::ops::Range;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{
    CONNECTION, HOST, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::framing::{BodyLength, Framing};
use super::head;
use super::syntax::{check_line_ends, list_has};
use super::upgrade::accept_key;
use super::{HandshakeError, HeadError, Limits, Status};

/// A complete, validated request head.
///
/// Holds the request as [`http::Request<()>`] and what it asks for: a
/// WebSocket upgrade or plain HTTP. Made by [`parse_request`].
#[derive(Debug, Clone)]
pub struct RequestHead {
    request: Request<()>,
    kind: RequestKind,
    body: BodyLength,
}

/// What a request asks the proxy for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// A valid WebSocket upgrade (RFC 6455 §4.2.1): forward it, and open a
    /// tunnel only if the upstream's answer completes it.
    WebSocket(WebSocketUpgrade),
    /// Anything else, including other upgrades (`h2c`, `TLS/1.0`): relayed as
    /// one plain HTTP exchange, never tunneled. The forwarding policy strips
    /// their Upgrade header.
    Http,
}

/// The checked parts of a WebSocket upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketUpgrade {
    key: HeaderValue,
    /// Sec-WebSocket-Protocol as offered (fields joined), if any: a 101
    /// may pick one of them only.
    protocols: Option<HeaderValue>,
    /// Sec-WebSocket-Extensions as offered (fields joined), if any: a 101
    /// may name only these.
    extensions: Option<HeaderValue>,
}

impl WebSocketUpgrade {
    /// The client's Sec-WebSocket-Key: base64 of 16 bytes.
    pub fn key(&self) -> &HeaderValue {
        &self.key
    }

    /// The subprotocols the client offered (Sec-WebSocket-Protocol, its
    /// fields joined with `, `), if it offered any.
    pub fn protocols(&self) -> Option<&HeaderValue> {
        self.protocols.as_ref()
    }

    /// The extensions the client offered (Sec-WebSocket-Extensions, its
    /// fields joined with `, `), if it offered any.
    pub fn extensions(&self) -> Option<&HeaderValue> {
        self.extensions.as_ref()
    }

    /// The Sec-WebSocket-Accept a completing 101 must carry.
    pub fn expected_accept(&self) -> String {
        accept_key(self.key.as_bytes())
    }
}

impl RequestHead {
    /// The request: method, target, version and headers, in arrival order.
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// What the request asks for.
    pub fn kind(&self) -> &RequestKind {
        &self.kind
    }

    /// The WebSocket upgrade, if this is one.
    pub fn websocket(&self) -> Option<&WebSocketUpgrade> {
        match &self.kind {
            RequestKind::WebSocket(upgrade) => Some(upgrade),
            RequestKind::Http => None,
        }
    }

    /// How the request body that follows the head is delimited.
    pub fn body_length(&self) -> BodyLength {
        self.body
    }

    /// The host the request is for: the absolute-form target's authority if
    /// there is one, else the Host header (RFC 9112 §3.2.2).
    pub fn host(&self) -> Option<&str> {
        request_host(&self.request)
    }

    /// The request without its classification.
    pub fn into_request(self) -> Request<()> {
        self.request
    }

    /// The request and its classification.
    pub fn into_parts(self) -> (Request<()>, RequestKind) {
        (self.request, self.kind)
    }
}

/// The host `req` is for, port included: the absolute-form target's
/// authority if there is one, else the Host header (RFC 9112 §3.2.2). Shared
/// by [`RequestHead::host`], routing and the forwarded `Host`, so all three
/// read the same field.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
    }
}

/// Lowercases a host and drops its port and a trailing dot, as nginx
/// `$host` does; keeps an IPv6 literal's brackets.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Reads a request head from the front of `buf`.
///
/// Returns [`Status::Partial`] while the head is incomplete, leaving `buf`
/// untouched: read more into it and call again. On [`Status::Complete`] the
/// head's bytes have been split off the front of `buf`; whatever followed
/// them (a body, or a first WebSocket frame sent in the same packet) stays in
/// `buf` for the caller.
///
/// The request is checked against RFC 9112 and, if its Upgrade header names
/// `websocket`, RFC 6455 §4.2.1.
///
/// # Errors
///
/// [`HandshakeError::Request`] with the fault; its
/// [`status`](HandshakeError::status) is 431 when the head exceeds `limits`,
/// 426 for an unsupported WebSocket version and 400 otherwise. Answer it
/// and close the connection: what is left in `buf` is unspecified.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use wsproxy::handshake::{parse_request, Limits, RequestKind, Status};
///
/// let mut buf = BytesMut::from("GET /chat HTTP/1.1\r\nHost: example.com\r\n");
/// let limits = Limits::default();
/// assert!(matches!(parse_request(&mut buf, &limits)?, Status::Partial));
///
/// buf.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
/// buf.extend_from_slice(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
/// buf.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x00");
/// let Status::Complete(head) = parse_request(&mut buf, &limits)? else {
///     unreachable!("the head is complete")
/// };
/// assert_eq!(head.request().uri(), "/chat");
/// assert!(matches!(head.kind(), RequestKind::WebSocket(_)));
/// assert_eq!(&buf[..], b"\x81\x00"); // the first frame stays in `buf`
/// # Ok::<(), wsproxy::handshake::HandshakeError>(())
/// ```
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Status<RequestHead>, HandshakeError> {
    read(buf, limits).map_err(HandshakeError::Request)
}

/// The pieces of a request head, as positions in the buffer.
struct Raw {
    len: usize,
    method: Method,
    target: Range<usize>,
    version: Version,
    fields: head::Fields,
}

fn read(buf: &mut BytesMut, limits: &Limits) -> Result<Status<RequestHead>, HeadError> {
    let window = head::window(buf, limits);
    let raw = head::with_slots(limits, |slots| {
        let mut request = httparse::Request::new(&mut []);
        match request.parse_with_uninit_headers(window, slots) {
            Ok(httparse::Status::Complete(len)) => {
                // Positions are taken within the head alone, so slicing the
                // split-off head with them cannot go out of bounds.
                let bytes = window.get(..len).ok_or(HeadError::Malformed)?;
                check_line_ends(bytes)?;
                let (Some(method), Some(target), Some(version)) =
                    (request.method, request.path, request.version)
                else {
                    return Err(HeadError::RequestLine);
                };
                Ok(Some(Raw {
                    len,
                    method: Method::from_bytes(method.as_bytes())
                        .map_err(|_| HeadError::RequestLine)?,
                    target: head::offset(bytes, target.as_bytes())?,
                    version: head::version(version),
                    fields: head::fields(bytes, request.headers)?,
                }))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(head::parse_error(window, e, limits, HeadError::RequestLine)),
        }
    })?;
    let Some(raw) = raw else {
        let status = head::incomplete(buf.len(), limits);
        // At the limit with the request line still open: 414, not 431.
        if matches!(status, Err(HeadError::TooLarge { .. }))
            && !window
                .iter()
                .skip_while(|&&b| b == b'\r' || b == b'\n')
                .any(|&b| b == b'\n')
        {
            return Err(HeadError::RequestLineTooLong {
                limit: limits.max_head_bytes,
            });
        }
        return status;
    };

    let form = target_form(&buf[raw.target.clone()])?;
    let head = buf.split_to(raw.len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(raw.target)).map_err(|_| HeadError::Target)?;
    if form == Form::Absolute {
        check_absolute(&uri)?;
    }
    let mut request = Request::new(());
    *request.method_mut() = raw.method;
    *request.uri_mut() = uri;
    *request.version_mut() = raw.version;
    // One pass over the fields gathers what the checks need, so that they
    // need no lookups in the map.
    let mut known = Known::default();
    let mut framing = Framing::default();
    for (name, range) in raw.fields.iter() {
        known.observe(name, range, &head[range.clone()]);
        framing.observe(name, &head[range.clone()]);
    }
    check_host(&known, &head, raw.version)?;
    let body = framing.request_body(raw.version)?;
    let kind = classify(&known, &head, &raw.fields, request.method(), raw.version)?;
    *request.headers_mut() = head::header_map(&head, raw.fields)?;
    Ok(Status::Complete(RequestHead {
        request,
        kind,
        body,
    }))
}

#[derive(Debug, PartialEq, Eq)]
enum Form {
    Origin,
    Absolute,
}

/// RFC 9112 §3.2: only origin-form (`/path?query`) and absolute-form
/// (`http://host/path`) reach a reverse proxy; a fragment never does.
fn target_form(target: &[u8]) -> Result<Form, HeadError> {
    if target.contains(&b'#') {
        return Err(HeadError::Target);
    }
    // nginx refuses `%00` in the path when it decodes it; the query is the
    // application's, and left alone as nginx leaves it.
    let path_end = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    if target[..path_end].windows(3).any(|w| w == b"%00") {
        return Err(HeadError::EncodedNul);
    }
    match target.first() {
        Some(b'/') => Ok(Form::Origin),
        _ => Ok(Form::Absolute),
    }
}

fn check_absolute(uri: &Uri) -> Result<(), HeadError> {
    let scheme_ok = uri.scheme_str().is_some_and(|s| {
        ["http", "https", "ws", "wss"]
            .iter()
            .any(|k| s.eq_ignore_ascii_case(k))
    });
    // userinfo is deprecated in http(s) URIs (RFC 9110 §4.2.4) and a classic
    // way to make two parsers see two different hosts.
    let authority_ok = uri.authority().is_some_and(is_host_and_port);
    if scheme_ok && authority_ok {
        Ok(())
    } else {
        Err(HeadError::Target)
    }
}

/// The header fields the request checks read, noted in one pass.
#[derive(Debug, Default)]
struct Known {
    hosts: usize,
    host: Range<usize>,
    keys: usize,
    key: Range<usize>,
    versions: usize,
    version_13: bool,
    upgrade_websocket: bool,
    connection_upgrade: bool,
}

impl Known {
    fn observe(&mut self, name: &HeaderName, range: &Range<usize>, value: &[u8]) {
        if name == HOST {
            self.hosts += 1;
            self.host = range.clone();
        } else if name == UPGRADE {
            self.upgrade_websocket |= list_has(value, "websocket");
        } else if name == CONNECTION {
            self.connection_upgrade |= list_has(value, "upgrade");
        } else if name == SEC_WEBSOCKET_KEY {
            self.keys += 1;
            self.key = range.clone();
        } else if name == SEC_WEBSOCKET_VERSION {
            self.versions += 1;
            self.version_13 = value == b"13";
        }
    }
}

/// RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any
/// request with several Host fields or an invalid one.
fn check_host(known: &Known, head: &Bytes, version: Version) -> Result<(), HeadError> {
    match known.hosts {
        0 if version == Version::HTTP_11 => Err(HeadError::MissingHost),
        0 => Ok(()),
        1 => match Authority::from_maybe_shared(head.slice(known.host.clone())) {
            Ok(a) if is_host_and_port(&a) => Ok(()),
            _ => Err(HeadError::InvalidHost),
        },
        _ => Err(HeadError::DuplicateHost),
    }
}

/// `uri-host [":" port]` (RFC 9110 §7.2): `Authority` also takes userinfo
/// and a non-numeric port.
pub(crate) fn is_host_and_port(authority: &Authority) -> bool {
    let host = authority.host();
    let port = authority.as_str().get(host.len()..).unwrap_or("");
    let port_ok = match port.strip_prefix(':') {
        // An empty port is allowed (RFC 3986 §3.2.3); a number must fit.
        Some(digits) => {
            digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits.is_empty() || digits.parse::<u16>().is_ok())
        }
        None => port.is_empty(),
    };
    !host.is_empty() && port_ok && !authority.as_str().contains('@')
}

/// The value of the `name` fields, joined with `, ` when there are several
/// (RFC 9110 §5.3); a single field is a slice of the head, no copy.
fn offered(head: &Bytes, fields: &head::Fields, name: &HeaderName) -> Option<HeaderValue> {
    let mut ranges = fields.iter().filter(|(n, _)| n == name).map(|(_, r)| r);
    let first = ranges.next()?.clone();
    let Some(second) = ranges.next() else {
        return HeaderValue::from_maybe_shared(head.slice(first)).ok();
    };
    let mut joined = head[first].to_vec();
    for range in std::iter::once(second).chain(ranges) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(&head[range.clone()]);
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// RFC 6455 §4.2.1, for a request whose Upgrade header lists `websocket`.
fn classify(
    known: &Known,
    head: &Bytes,
    fields: &head::Fields,
    method: &Method,
    version: Version,
) -> Result<RequestKind, HeadError> {
    if !known.upgrade_websocket {
        return Ok(RequestKind::Http);
    }
    if method != Method::GET {
        return Err(HeadError::WebSocketMethod);
    }
    if version != Version::HTTP_11 {
        return Err(HeadError::WebSocketHttpVersion);
    }
    if !known.connection_upgrade {
        return Err(HeadError::WebSocketConnection);
    }
    let key = match known.keys {
        0 => return Err(HeadError::MissingWebSocketKey),
        1 => HeaderValue::from_maybe_shared(head.slice(known.key.clone()))
            .ok()
            .filter(is_valid_key)
            .ok_or(HeadError::InvalidWebSocketKey)?,
        _ => return Err(HeadError::InvalidWebSocketKey),
    };
    if known.versions == 1 && known.version_13 {
        Ok(RequestKind::WebSocket(WebSocketUpgrade {
            key,
            protocols: offered(head, fields, &SEC_WEBSOCKET_PROTOCOL),
            extensions: offered(head, fields, &SEC_WEBSOCKET_EXTENSIONS),
        }))
    } else {
        Err(HeadError::UnsupportedWebSocketVersion)
    }
}

/// Base64 (with canonical padding) of exactly 16 bytes: 24 characters.
fn is_valid_key(key: &HeaderValue) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key.as_bytes(), &mut decoded)
            .is_ok_and(|n| n == 16)
}

#[cfg(test)]
mod tests;
