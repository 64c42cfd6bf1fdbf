//! Finding the end of a head as it grows, before parsing it.
//!
//! A head can arrive a few bytes per read. Running httparse on every read
//! would parse the same prefix again and again: quadratic in the head size,
//! which a slow client controls. The scanner remembers how far it has looked
//! and reports a complete head only once the blank line ending it is there;
//! only then is the head parsed, once.

use super::{HandshakeError, HeadError, Limits, Status};

/// Which head the scanner looks at: a request line is checked as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// Finds where a head ends in a buffer that grows between calls, looking at
/// each byte once, so that the parser runs once per head instead of once per
/// read.
///
/// Feed it the whole buffered head after each read; [`scan`](Self::scan)
/// answers [`Status::Partial`] until the blank line that ends the head has
/// arrived, then `Complete(n)`: the head, if valid, is the first `n` bytes.
/// Parse it then with [`parse_request`](super::parse_request) or
/// [`parse_response`](super::parse_response), which remain the judges of
/// validity. Use one scanner per head.
///
/// A request scanner also refuses at once what can never start a request
/// line (a TLS ClientHello on a plain port, binary junk): the line must
/// begin with a method token and a space (RFC 9112 §3). nginx answers such
/// bytes with 400 at once rather than waiting for its header timeout.
///
/// ```
/// use bytes::BytesMut;
/// use wsproxy::handshake::{parse_request, HeadScanner, Limits, Status};
///
/// let limits = Limits::default();
/// let mut scanner = HeadScanner::request(limits);
/// let mut buf = BytesMut::new();
/// let mut head = None;
/// // Each chunk stands for one read from a socket.
/// for chunk in ["GET /chat HT", "TP/1.1\r\nHost: a\r", "\n\r\n"] {
///     buf.extend_from_slice(chunk.as_bytes());
///     if scanner.scan(&buf)?.is_complete() {
///         if let Status::Complete(parsed) = parse_request(&mut buf, &limits)? {
///             head = Some(parsed);
///         }
///     }
/// }
/// assert_eq!(head.ok_or("complete")?.request().uri(), "/chat");
///
/// // A TLS ClientHello on the plain port is refused at its first byte.
/// let err = HeadScanner::request(limits).scan(b"\x16\x03\x01\x02\x00").unwrap_err();
/// assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct HeadScanner {
    side: Side,
    limits: Limits,
    /// The next byte to look at.
    scanned: usize,
    /// Where the start line begins, once a byte other than CR or LF came:
    /// empty lines before it are skipped (RFC 9112 §2.2), as httparse does.
    start: Option<usize>,
    /// The request's method token and the space after it have been seen.
    method_done: bool,
    /// The start line has ended (its LF has been seen).
    line_done: bool,
}

impl HeadScanner {
    /// A scanner for a request head, within `limits`.
    pub const fn request(limits: Limits) -> Self {
        Self::new(Side::Request, limits)
    }

    /// A scanner for a response head, within `limits`.
    ///
    /// ```
    /// use wsproxy::handshake::{HeadScanner, Limits, Status};
    ///
    /// let mut scanner = HeadScanner::response(Limits::default());
    /// let wire = b"HTTP/1.1 204 No Content\r\n\r\nrest";
    /// assert_eq!(scanner.scan(&wire[..20])?, Status::Partial);
    /// assert_eq!(scanner.scan(wire)?, Status::Complete(wire.len() - 4));
    /// # Ok::<(), wsproxy::handshake::HandshakeError>(())
    /// ```
    pub const fn response(limits: Limits) -> Self {
        Self::new(Side::Response, limits)
    }

    const fn new(side: Side, limits: Limits) -> Self {
        Self {
            side,
            limits,
            scanned: 0,
            start: None,
            method_done: false,
            line_done: false,
        }
    }

    /// Looks at the bytes of `buf` not seen before; `buf` is the whole
    /// buffered head, the bytes of the previous call plus what arrived since.
    ///
    /// Returns `Complete(n)` once a blank line ends the head at `n`, and
    /// `Partial` before. Call it again only after more bytes arrived: after
    /// `Complete`, it looks for the next blank line.
    ///
    /// # Errors
    ///
    /// - 400 [`HeadError::RequestLine`] for a request whose first bytes are
    ///   not a method token followed by a space;
    /// - 414 [`HeadError::RequestLineTooLong`] for a request line that does
    ///   not end within [`Limits::max_head_bytes`] (nginx answers 414 for a
    ///   request line over its buffer, RFC 9112 §3);
    /// - 431 [`HeadError::TooLarge`] for a head that does not end within
    ///   [`Limits::max_head_bytes`] ([`HandshakeError::Response`], a 502,
    ///   for a response).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Status<usize>, HandshakeError> {
        self.look(buf).map_err(|e| match self.side {
            Side::Request => HandshakeError::Request(e),
            Side::Response => HandshakeError::Response(e),
        })
    }

    fn look(&mut self, buf: &[u8]) -> Result<Status<usize>, HeadError> {
        let max = self.limits.max_head_bytes;
        let window = &buf[..buf.len().min(max)];
        let mut i = self.scanned;
        if self.start.is_none() {
            while window.get(i).is_some_and(|&b| b == b'\r' || b == b'\n') {
                i += 1;
            }
            if i < window.len() {
                self.start = Some(i);
            }
        }
        if let (Some(start), Side::Request, false) = (self.start, self.side, self.method_done) {
            while let Some(&b) = window.get(i) {
                i += 1;
                if b == b' ' && i - 1 > start {
                    self.method_done = true;
                    break;
                }
                // Not `token SP`: no request line starts like this, so waiting
                // for more bytes would only wait for the handshake timeout.
                if !is_tchar(b) {
                    return Err(HeadError::RequestLine);
                }
            }
        }
        // The request line is whole before any line end counts.
        if self.side == Side::Response || self.method_done {
            while let Some(at) = window.get(i..).and_then(memchr_lf) {
                let lf = i + at;
                self.line_done = true;
                // A blank line is LF CRLF, or LF LF (which the parser then
                // refuses as a bare LF, naming the header).
                match (window.get(lf + 1), window.get(lf + 2)) {
                    (Some(&b'\n'), _) => return Ok(self.complete(lf + 2)),
                    (Some(&b'\r'), Some(&b'\n')) => return Ok(self.complete(lf + 3)),
                    // Too early to tell: look at this LF again next time.
                    (None, _) | (Some(&b'\r'), None) => {
                        self.scanned = lf;
                        return self.partial(buf.len());
                    }
                    _ => i = lf + 1,
                }
            }
        }
        self.scanned = window.len();
        self.partial(buf.len())
    }

    fn complete(&mut self, end: usize) -> Status<usize> {
        self.scanned = end;
        Status::Complete(end)
    }

    /// Read more, unless the head is already as large as the limit allows.
    fn partial(&self, buffered: usize) -> Result<Status<usize>, HeadError> {
        let limit = self.limits.max_head_bytes;
        if buffered < limit {
            Ok(Status::Partial)
        } else if self.side == Side::Request && !self.line_done {
            Err(HeadError::RequestLineTooLong { limit })
        } else {
            Err(HeadError::TooLarge { limit })
        }
    }
}

/// The position of the first LF, eight bytes at a time: a byte-by-byte
/// search made the scan cost as much as httparse's whole parse of a
/// 560-byte browser head (`cargo bench --bench handshake -- scan_alone`).
fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LFS: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut words = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        // A zero byte in `word ^ LFS` is an LF: the classic "has zero byte"
        // test, exact about whether there is one, not about where.
        let x = u64::from_ne_bytes(word) ^ LFS;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            return chunk.iter().position(|&b| b == b'\n').map(|p| base + p);
        }
        base += 8;
    }
    let rest = &bytes[base..];
    rest.iter().position(|&b| b == b'\n').map(|p| base + p)
}

/// `tchar` (RFC 9110 §5.6.2): the bytes of a method token.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::parse_request;
    use bytes::BytesMut;
    use http::StatusCode;

    fn scan_all(side: fn(Limits) -> HeadScanner, wire: &[u8]) -> Vec<Status<usize>> {
        let mut scanner = side(Limits::default());
        (0..=wire.len())
            .map(|end| scanner.scan(&wire[..end]).unwrap())
            .collect()
    }

    #[test]
    fn a_head_fed_byte_by_byte_completes_once_its_blank_line_arrives() {
        let wire = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        let statuses = scan_all(HeadScanner::request, wire);
        let end = wire.len() - 4;
        for (n, status) in statuses.iter().enumerate() {
            let want = if n == end {
                Status::Complete(end)
            } else {
                Status::Partial
            };
            // Past the head, the scanner looks for the next blank line.
            if n <= end {
                assert_eq!(*status, want, "{n}");
            }
        }
    }

    #[test]
    fn the_lf_search_finds_the_first_lf_at_any_offset() {
        for len in 0..40 {
            for at in 0..=len {
                let mut bytes = vec![b'a'; len];
                if at < len {
                    bytes[at] = b'\n';
                    if at + 3 < len {
                        bytes[at + 3] = b'\n';
                    }
                }
                let want = (at < len).then_some(at);
                assert_eq!(memchr_lf(&bytes), want, "{len} {at}");
            }
        }
        // Bytes just below and above LF, and 0x80, never match.
        assert_eq!(memchr_lf(&[0x09, 0x0b, 0x80, 0x8a, 0xff, 0, 1, 2, 3]), None);
    }

    #[test]
    fn a_head_without_fields_ends_after_its_start_line() {
        let wire = b"HTTP/1.0 200 OK\r\n\r\n";
        assert_eq!(
            HeadScanner::response(Limits::default()).scan(wire),
            Ok(Status::Complete(wire.len()))
        );
    }

    #[test]
    fn bytes_that_cannot_start_a_request_line_get_400_at_once() {
        for junk in [
            &b"\x16\x03\x01\x00\xa5\x01\x00"[..], // TLS ClientHello
            b"\x00\x01",
            b" GET / HTTP/1.1",
            b"GET\r\n",
            b"G(T / HTTP/1.1",
            b"\r\n\xffGET",
        ] {
            let err = HeadScanner::request(Limits::default())
                .scan(junk)
                .unwrap_err();
            assert_eq!(err, HandshakeError::Request(HeadError::RequestLine));
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{junk:?}");
        }
        // Junk after a valid method is the parser's to judge.
        let mut scanner = HeadScanner::request(Limits::default());
        assert_eq!(scanner.scan(b"GE"), Ok(Status::Partial));
        assert_eq!(scanner.scan(b"GET \x16\x03"), Ok(Status::Partial));
        // A response is not held to the request-line rule.
        let mut scanner = HeadScanner::response(Limits::default());
        assert_eq!(scanner.scan(b"\x16\x03"), Ok(Status::Partial));
    }

    #[test]
    fn an_overlong_request_line_gets_414_and_an_overlong_head_431() {
        let limits = Limits::default().max_head_bytes(64);
        let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(80));
        let err = HeadScanner::request(limits)
            .scan(line.as_bytes())
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::URI_TOO_LONG);
        assert_eq!(err.to_string(), "request line longer than 64 bytes");
        // The same through the parser alone, for callers without a scanner.
        let err = parse_request(&mut BytesMut::from(line.as_str()), &limits).unwrap_err();
        assert_eq!(err.status(), StatusCode::URI_TOO_LONG);

        let fields = format!("GET / HTTP/1.1\r\nX: {}\r\n", "v".repeat(80));
        let err = HeadScanner::request(limits)
            .scan(fields.as_bytes())
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let err = parse_request(&mut BytesMut::from(fields.as_str()), &limits).unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

        let err = HeadScanner::response(limits)
            .scan(line.as_bytes())
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }
}
