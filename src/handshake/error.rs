//! What was wrong with a head, and who is to blame for it.

use http::StatusCode;

/// An error reading or checking a handshake.
///
/// The variant says who is to blame: the client ([`Request`](Self::Request),
/// answered with 400, 426, 431 or 501) or the upstream ([`Response`](Self::Response)
/// and [`Switch`](Self::Switch), answered with 502). Act on it through
/// [`status`](Self::status) and [`to_response`](Self::to_response), never by
/// matching the message.
///
/// ```
/// use bytes::BytesMut;
/// use http::StatusCode;
/// use wsproxy::handshake::{parse_request, HandshakeError, HeadError, Limits};
///
/// let mut buf = BytesMut::from("GET / HTTP/1.1\r\n\r\n");
/// let err = parse_request(&mut buf, &Limits::default()).unwrap_err();
/// assert!(matches!(err, HandshakeError::Request(HeadError::MissingHost)));
/// assert_eq!(err.status(), StatusCode::BAD_REQUEST);
/// assert_eq!(err.to_string(), "missing host header");
/// ```
// The inner errors are shown in the message rather than as `#[source]`:
// there is no underlying error, and reporters would print them twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The client's request head is invalid or too large.
    #[error("{0}")]
    Request(HeadError),
    /// The upstream's response head is invalid or too large.
    #[error("invalid upstream response: {0}")]
    Response(HeadError),
    /// The upstream answered a request with 101 but did not complete the
    /// WebSocket upgrade: the proxy must not open a tunnel.
    #[error("invalid upstream 101 response: {0}")]
    Switch(SwitchError),
}

impl HandshakeError {
    /// The HTTP status a proxy answers the client with.
    ///
    /// 414 for a request line longer than the head limit, 431 for a request
    /// head over the [`Limits`](super::Limits), 426 for an unsupported
    /// WebSocket version, 501 for a request transfer coding other than
    /// `chunked` alone, 400 for any other bad request, and 502 for
    /// anything the upstream got wrong.
    pub fn status(&self) -> StatusCode {
        match self {
            // RFC 9112 §3 suggests 414 for a long request-target; nginx sends
            // it for any request line over its buffer.
            Self::Request(HeadError::RequestLineTooLong { .. }) => StatusCode::URI_TOO_LONG,
            Self::Request(HeadError::TooLarge { .. } | HeadError::TooManyHeaders { .. }) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::Request(HeadError::UnsupportedWebSocketVersion) => StatusCode::UPGRADE_REQUIRED,
            Self::Request(HeadError::UnsupportedTransferCoding) => StatusCode::NOT_IMPLEMENTED,
            Self::Request(_) => StatusCode::BAD_REQUEST,
            Self::Response(_) | Self::Switch(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// What was wrong with a request or response head.
///
/// Each message names the header or the part of the head at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The head did not end within the configured number of bytes.
    #[error("head larger than {limit} bytes")]
    TooLarge {
        /// The configured limit, [`Limits::max_head_bytes`](super::Limits::max_head_bytes).
        limit: usize,
    },
    /// The request line alone did not end within the configured number of
    /// bytes.
    #[error("request line longer than {limit} bytes")]
    RequestLineTooLong {
        /// The configured limit, [`Limits::max_head_bytes`](super::Limits::max_head_bytes).
        limit: usize,
    },
    /// The head has more header fields than configured.
    #[error("more than {limit} header fields")]
    TooManyHeaders {
        /// The configured limit, [`Limits::max_headers`](super::Limits::max_headers).
        limit: usize,
    },
    /// A syntax error httparse found that none of the other variants names.
    #[error("malformed head")]
    Malformed,
    /// The request line is not `method SP request-target SP HTTP-version`.
    #[error("malformed request line")]
    RequestLine,
    /// The status line is not `HTTP-version SP status-code SP reason`.
    #[error("malformed status line")]
    StatusLine,
    /// The HTTP version is neither HTTP/1.0 nor HTTP/1.1.
    #[error("unsupported http version")]
    Version,
    /// The request-target is neither origin-form nor absolute-form
    /// (RFC 9112 §3.2): `*`, authority-form, a fragment, userinfo.
    #[error("invalid request-target")]
    Target,
    /// The request-target's path holds `%00`: an encoded NUL ends a string
    /// early in many upstreams, so the path they see is not the one that
    /// was routed. nginx answers 400 too.
    #[error("encoded nul in request path")]
    EncodedNul,
    /// A header field name is empty or holds a byte outside `token`.
    #[error("invalid header name after {}", place(.after))]
    HeaderName {
        /// The last valid header before it (`None`: the start line).
        after: Option<String>,
    },
    /// A header value holds a NUL or another control byte (RFC 9110 §5.5).
    #[error("control byte 0x{byte:02x} in header `{header}`")]
    ControlByte {
        /// The header whose value holds the byte.
        header: String,
        /// The byte.
        byte: u8,
    },
    /// A CR not followed by LF (RFC 9112 §2.2).
    #[error("bare cr in {}", place(.header))]
    BareCr {
        /// The header holding it (`None`: the start line).
        header: Option<String>,
    },
    /// An LF not preceded by CR (RFC 9112 §2.2). Accepting it would let a
    /// value end where another parser sees it continue.
    #[error("bare lf in {}", place(.header))]
    BareLf {
        /// The header holding it (`None`: the start line).
        header: Option<String>,
    },
    /// A line starting with whitespace: obsolete line folding (RFC 9112 §5.2).
    #[error("obs-fold continuing {}", place(.header))]
    ObsFold {
        /// The header it would continue (`None`: the start line).
        header: Option<String>,
    },
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.3): the
    /// classic request smuggling ambiguity.
    #[error("content-length together with transfer-encoding")]
    ContentLengthWithTransferEncoding,
    /// Several Content-Length values that differ (RFC 9112 §6.3).
    #[error("differing content-length values")]
    DifferingContentLength,
    /// A request Content-Length repeated, as a second field or a list
    /// (`5, 5`), even with equal values: refused with 400 as nginx does,
    /// since the value would reach the upstream as the client wrote it and
    /// servers disagree on reading it (request smuggling).
    #[error("duplicate content-length header")]
    DuplicateContentLength,
    /// A Content-Length value that is not a decimal number.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// A request Transfer-Encoding whose last coding is not `chunked`
    /// (RFC 9112 §6.3): its length could not be determined.
    #[error("transfer-encoding does not end with chunked")]
    TransferEncodingNotChunked,
    /// More than one Transfer-Encoding field in a request: refused with 400
    /// as nginx does, since proxies and servers disagree on which counts.
    #[error("duplicate transfer-encoding header")]
    DuplicateTransferEncoding,
    /// A request Transfer-Encoding ending in `chunked` with other codings
    /// before it (`identity, chunked`, `gzip, chunked`): answered with 501,
    /// as RFC 9112 §6.1 advises for a transfer coding the server does not
    /// implement and as nginx answers any value other than `chunked`.
    #[error("transfer-encoding other than chunked is not implemented")]
    UnsupportedTransferCoding,
    /// Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1).
    #[error("transfer-encoding in an http/1.0 request")]
    TransferEncodingInHttp10,
    /// No Host in an HTTP/1.1 request (RFC 9112 §3.2).
    #[error("missing host header")]
    MissingHost,
    /// More than one Host field (RFC 9112 §3.2).
    #[error("duplicate host header")]
    DuplicateHost,
    /// A Host value that is not `uri-host [":" port]`.
    #[error("invalid host header")]
    InvalidHost,
    /// A WebSocket upgrade with a method other than GET (RFC 6455 §4.2.1).
    #[error("websocket upgrade with method other than get")]
    WebSocketMethod,
    /// A WebSocket upgrade over HTTP/1.0 (RFC 6455 §4.2.1).
    #[error("websocket upgrade over http/1.0")]
    WebSocketHttpVersion,
    /// `Upgrade: websocket` whose Connection header does not list `upgrade`
    /// (RFC 6455 §4.2.1).
    #[error("websocket upgrade without upgrade in connection header")]
    WebSocketConnection,
    /// A WebSocket upgrade without Sec-WebSocket-Key.
    #[error("missing sec-websocket-key header")]
    MissingWebSocketKey,
    /// A Sec-WebSocket-Key that is not the base64 of 16 bytes, or several.
    #[error("invalid sec-websocket-key header")]
    InvalidWebSocketKey,
    /// A Sec-WebSocket-Version other than 13, or none (RFC 6455 §4.4):
    /// answered with 426 and `Sec-WebSocket-Version: 13`.
    #[error("unsupported sec-websocket-version header")]
    UnsupportedWebSocketVersion,
}

fn place(header: &Option<String>) -> String {
    match header {
        Some(name) => format!("header `{name}`"),
        None => "start line".to_owned(),
    }
}

/// Why a 101 response does not complete the WebSocket upgrade it answers
/// (RFC 6455 §4.1, the client's checks, made by the proxy on its behalf).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchError {
    /// A 101 to a request that asked for no WebSocket upgrade.
    #[error("no websocket upgrade was requested")]
    NotRequested,
    /// The Upgrade header is missing or is not `websocket`.
    #[error("upgrade header is not websocket")]
    Upgrade,
    /// The Connection header does not list `upgrade`.
    #[error("connection header does not list upgrade")]
    Connection,
    /// No Sec-WebSocket-Accept, or several.
    #[error("missing sec-websocket-accept header")]
    MissingAccept,
    /// Sec-WebSocket-Accept is not base64(SHA-1(key + GUID)).
    #[error("sec-websocket-accept does not match the key")]
    AcceptMismatch,
    /// Sec-WebSocket-Protocol is not one of the subprotocols the client
    /// offered, is a list, or is repeated (RFC 6455 §4.1: the client fails
    /// the connection).
    #[error("sec-websocket-protocol was not offered by the client")]
    Protocol,
    /// Sec-WebSocket-Extensions names an extension the client did not
    /// offer (RFC 6455 §4.1: the client fails the connection).
    #[error("sec-websocket-extensions names an extension the client did not offer")]
    Extension,
}
