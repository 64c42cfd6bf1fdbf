//! Reading and classifying the client's request head.

use std::ops::Range;

use base64::Engine as _;
use bytes::BytesMut;
use http::header::{CONNECTION, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Uri, Version};

use super::framing::{self, BodyLength};
use super::head::{self, Field};
use super::syntax::{check_line_ends, has_token};
use super::upgrade::accept_key;
use super::{HandshakeError, HeadError, Limits, Status};

/// A complete, validated request head.
///
/// Holds the request as [`http::Request<()>`] and what it asks for: a
/// WebSocket upgrade or plain HTTP. Made by [`parse_request`].
#[derive(Debug)]
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
}

impl WebSocketUpgrade {
    /// The client's Sec-WebSocket-Key: base64 of 16 bytes.
    pub fn key(&self) -> &HeaderValue {
        &self.key
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
        match self.request.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => self
                .request
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok()),
        }
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
/// use bytes::BytesMut;
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
    fields: Vec<Field>,
}

fn read(buf: &mut BytesMut, limits: &Limits) -> Result<Status<RequestHead>, HeadError> {
    let window = head::window(buf, limits);
    let raw = head::with_slots(limits, |slots| {
        let mut request = httparse::Request::new(&mut []);
        match request.parse_with_uninit_headers(window, slots) {
            Ok(httparse::Status::Complete(len)) => {
                check_line_ends(&window[..len])?;
                let (Some(method), Some(target), Some(version)) =
                    (request.method, request.path, request.version)
                else {
                    return Err(HeadError::RequestLine);
                };
                Ok(Some(Raw {
                    len,
                    method: Method::from_bytes(method.as_bytes())
                        .map_err(|_| HeadError::RequestLine)?,
                    target: head::offset(window, target.as_bytes())?,
                    version: if version == 0 {
                        Version::HTTP_10
                    } else {
                        Version::HTTP_11
                    },
                    fields: head::fields(window, request.headers)?,
                }))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(head::parse_error(window, e, limits, HeadError::RequestLine)),
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
    *request.headers_mut() = head::header_map(&head, raw.fields)?;

    check_host(&request)?;
    let body = framing::request_body(request.headers(), raw.version)?;
    let kind = classify(&request)?;
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
    let authority_ok = uri
        .authority()
        .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'));
    if scheme_ok && authority_ok {
        Ok(())
    } else {
        Err(HeadError::Target)
    }
}

/// RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any
/// request with several Host fields or an invalid one.
fn check_host(request: &Request<()>) -> Result<(), HeadError> {
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => Err(HeadError::MissingHost),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(HeadError::DuplicateHost),
        (Some(host), None) => match Authority::try_from(host.as_bytes()) {
            Ok(a) if !a.host().is_empty() && !a.as_str().contains('@') => Ok(()),
            _ => Err(HeadError::InvalidHost),
        },
    }
}

/// RFC 6455 §4.2.1, for a request whose Upgrade header lists `websocket`.
fn classify(request: &Request<()>) -> Result<RequestKind, HeadError> {
    let headers = request.headers();
    if !has_token(headers.get_all(UPGRADE), "websocket") {
        return Ok(RequestKind::Http);
    }
    if request.method() != Method::GET {
        return Err(HeadError::WebSocketMethod);
    }
    if request.version() != Version::HTTP_11 {
        return Err(HeadError::WebSocketHttpVersion);
    }
    if !has_token(headers.get_all(CONNECTION), "upgrade") {
        return Err(HeadError::WebSocketConnection);
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (None, _) => return Err(HeadError::MissingWebSocketKey),
        (Some(key), None) if is_valid_key(key) => key.clone(),
        _ => return Err(HeadError::InvalidWebSocketKey),
    };
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v == "13" => Ok(RequestKind::WebSocket(WebSocketUpgrade { key })),
        _ => Err(HeadError::UnsupportedWebSocketVersion),
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
