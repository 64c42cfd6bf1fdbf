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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_keeps_duplicates_in_order_and_ends_with_crlf() {
        let request = Request::post("/a?b=c")
            .header("host", "example.com")
            .header("x-forwarded-for", "10.0.0.1")
            .header("cookie", "a=1")
            .header("x-forwarded-for", "10.0.0.2")
            .body(())
            .expect("a valid request");
        let mut dst = BytesMut::from("already here|");
        write_request_head(&request, &mut dst);
        assert_eq!(
            &dst[..],
            b"already here|POST /a?b=c HTTP/1.1\r\nhost: example.com\r\n\
              x-forwarded-for: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\ncookie: a=1\r\n\r\n"
        );
    }

    #[test]
    fn request_target_and_version_are_written_as_held() {
        let mut request = Request::get("http://up.test:81/x?y")
            .body(())
            .expect("a valid request");
        *request.version_mut() = Version::HTTP_10;
        let mut dst = BytesMut::new();
        write_request_head(&request, &mut dst);
        assert_eq!(&dst[..], b"GET http://up.test:81/x?y HTTP/1.0\r\n\r\n");

        // HTTP/2 cannot be spoken here; the proxy speaks HTTP/1.1 upstream.
        let mut request = Request::get("/").body(()).expect("a valid request");
        *request.version_mut() = Version::HTTP_2;
        let mut dst = BytesMut::new();
        write_request_head(&request, &mut dst);
        assert_eq!(&dst[..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn response_head_has_the_canonical_reason_or_none() {
        let mut dst = BytesMut::new();
        let response = Response::builder()
            .status(599)
            .header("x", "1")
            .body(())
            .expect("a valid response");
        write_response_head(&response, &mut dst);
        assert_eq!(&dst[..], b"HTTP/1.1 599 \r\nx: 1\r\n\r\n");
        dst.clear();
        let response = Response::builder()
            .status(404)
            .version(Version::HTTP_10)
            .body(())
            .expect("a valid response");
        write_response_head(&response, &mut dst);
        assert_eq!(&dst[..], b"HTTP/1.0 404 Not Found\r\n\r\n");
    }

    #[test]
    fn error_answer_serialises_to_a_complete_closing_response() {
        let response = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported sec-websocket-version header",
        );
        let mut dst = BytesMut::new();
        write_response_head(&response, &mut dst);
        dst.extend_from_slice(response.body());
        assert_eq!(
            &dst[..],
            b"HTTP/1.1 426 Upgrade Required\r\ncontent-type: text/plain; charset=utf-8\r\n\
              content-length: 41\r\nconnection: close\r\nsec-websocket-version: 13\r\n\r\n\
              unsupported sec-websocket-version header\n"
        );
    }
}
