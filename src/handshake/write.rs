//! Writing heads back to bytes, and the proxy's own error answers.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, SEC_WEBSOCKET_VERSION};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};

use super::HandshakeError;

/// Appends a request head to `dst`: request line, headers, blank line.
///
/// HTTP/1.1 with CRLF line ends (nginx `proxy_http_version 1.1`), unless the
/// request says HTTP/1.0. The target is written as it is held: origin-form,
/// or absolute-form when the URI has a scheme and authority. Headers go out
/// in the map's order: names in first-arrival order, each name's values
/// together and in arrival order, duplicates kept.
///
/// ```
/// use bytes::BytesMut;
/// use wsproxy::handshake::write_request_head;
///
/// let request = http::Request::get("/chat").header("host", "example.com").body(())?;
/// let mut dst = BytesMut::new();
/// write_request_head(&request, &mut dst);
/// assert_eq!(&dst[..], b"GET /chat HTTP/1.1\r\nhost: example.com\r\n\r\n");
/// # Ok::<(), http::Error>(())
/// ```
pub fn write_request_head<B>(request: &Request<B>, dst: &mut BytesMut) {
    let method = request.method().as_str();
    let uri = request.uri();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let absolute = uri.scheme().zip(uri.authority());
    let prefix = absolute.map_or(0, |(s, a)| s.as_str().len() + 3 + a.as_str().len());
    dst.reserve(method.len() + prefix + path.len() + 12 + headers_len(request.headers()) + 2);
    dst.put_slice(method.as_bytes());
    dst.put_u8(b' ');
    if let Some((scheme, authority)) = absolute {
        dst.put_slice(scheme.as_str().as_bytes());
        dst.put_slice(b"://");
        dst.put_slice(authority.as_str().as_bytes());
    }
    dst.put_slice(path.as_bytes());
    dst.put_slice(version(request.version()));
    dst.put_slice(b"\r\n");
    write_headers(request.headers(), dst);
}

/// Appends a response head to `dst`: status line, headers, blank line.
///
/// HTTP/1.1 (unless the response says HTTP/1.0) with the canonical reason
/// phrase, CRLF line ends, headers as in [`write_request_head`].
///
/// ```
/// use bytes::BytesMut;
/// use wsproxy::handshake::write_response_head;
///
/// let response = http::Response::builder().status(101).header("upgrade", "websocket").body(())?;
/// let mut dst = BytesMut::new();
/// write_response_head(&response, &mut dst);
/// assert_eq!(&dst[..], b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n");
/// # Ok::<(), http::Error>(())
/// ```
pub fn write_response_head<B>(response: &Response<B>, dst: &mut BytesMut) {
    let status = response.status();
    let reason = status.canonical_reason().unwrap_or("");
    dst.reserve(9 + 4 + reason.len() + 2 + headers_len(response.headers()) + 2);
    dst.put_slice(&version(response.version())[1..]);
    dst.put_u8(b' ');
    dst.put_slice(status.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(reason.as_bytes());
    dst.put_slice(b"\r\n");
    write_headers(response.headers(), dst);
}

/// Builds a complete error answer: `status`, a one-line text body holding
/// `message`, Content-Length and `Connection: close` (the proxy closes the
/// connection after an error, as nginx does for a bad request head).
///
/// A 426 also carries `Sec-WebSocket-Version: 13` (RFC 6455 §4.4). Write it
/// with [`write_response_head`] followed by the body.
///
/// ```
/// use http::StatusCode;
/// use wsproxy::handshake::error_response;
///
/// let response = error_response(StatusCode::BAD_GATEWAY, "upstream refused");
/// assert_eq!(response.headers()["connection"], "close");
/// assert_eq!(response.headers()["content-length"], "17");
/// assert_eq!(&response.body()[..], b"upstream refused\n");
/// ```
pub fn error_response(status: StatusCode, message: &str) -> Response<Bytes> {
    let mut body = BytesMut::with_capacity(message.len() + 1);
    body.put_slice(message.as_bytes());
    body.put_u8(b'\n');
    let mut response = Response::new(body.freeze());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(message.len() + 1));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::UPGRADE_REQUIRED {
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    response
}

impl HandshakeError {
    /// The answer a proxy sends the client for this error: see
    /// [`error_response`].
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wsproxy::handshake::{parse_request, Limits};
    ///
    /// let mut buf = BytesMut::from(concat!(
    ///     "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n",
    ///     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    /// ));
    /// let err = parse_request(&mut buf, &Limits::default()).unwrap_err();
    /// let answer = err.to_response();
    /// assert_eq!(answer.status(), 426);
    /// assert_eq!(answer.headers()["sec-websocket-version"], "13");
    /// ```
    pub fn to_response(&self) -> Response<Bytes> {
        error_response(self.status(), &self.to_string())
    }
}

fn version(version: Version) -> &'static [u8] {
    if version == Version::HTTP_10 {
        b" HTTP/1.0"
    } else {
        b" HTTP/1.1"
    }
}

fn headers_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

fn write_headers(headers: &HeaderMap, dst: &mut BytesMut) {
    for (name, value) in headers {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
}
