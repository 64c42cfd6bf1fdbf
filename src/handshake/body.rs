//! Message body framing for plain HTTP/1.1 proxying, sans-IO.
//!
//! The proxy streams bodies through without buffering them whole (a
//! chunked request body is re-framed on the way by
//! [`ChunkedReframer`](super::ChunkedReframer), still chunked; everything
//! else passes unchanged). What it must know is where a body *ends*, so that the bytes
//! after it are read as the next request (keep-alive) and never leak into
//! the upstream connection as a smuggled request. [`BodyKind`] decides the
//! framing from the head (RFC 9112 §6.3) and [`BodyScanner`] walks the bytes
//! as they stream past, chunked framing included, without copying them.
//!
//! ```
//! use wsproxy::handshake::body::{BodyKind, BodyScanner};
//!
//! # fn main() -> Result<(), wsproxy::handshake::body::BodyError> {
//! let mut scanner = BodyScanner::new(BodyKind::Chunked);
//! let wire = b"5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\n";
//! let scan = scanner.scan(wire)?;
//! assert!(scan.done);
//! assert_eq!(&wire[..scan.consumed], b"5\r\nhello\r\n0\r\n\r\n");
//! # Ok(())
//! # }
//! ```

use http::{HeaderMap, Method, StatusCode};

use super::{BodyLength, Framing};

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`.
    Chunked,
    /// Everything until the sender closes (responses only).
    UntilClose,
}

impl From<BodyLength> for BodyKind {
    /// A request body's framing, as the request parser decided it.
    fn from(length: BodyLength) -> Self {
        match length {
            BodyLength::Fixed(0) => Self::Empty,
            BodyLength::Fixed(n) => Self::Length(n),
            // `BodyLength` is non-exhaustive; chunked is the only other way
            // a request body can be delimited (RFC 9112 §6.3).
            _ => Self::Chunked,
        }
    }
}

impl BodyKind {
    /// The framing of a response to a request with `method` (RFC 9112 §6.3):
    /// HEAD answers, 1xx, 204 and 304 have no body; then chunked; then
    /// `Content-Length`; otherwise the body runs until the upstream closes.
    ///
    /// Uses the same framing rules as
    /// [`parse_response`](crate::handshake::parse_response), which has
    /// already refused ambiguous heads.
    ///
    /// # Errors
    ///
    /// [`BodyError::BadContentLength`] when `Content-Length` is not a number
    /// or its values differ.
    pub fn of_response(
        method: &Method,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<Self, BodyError> {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Self::Empty);
        }
        let framing = Framing::of(headers);
        if framing.has_transfer_encoding() {
            // A transfer coding other than a final chunked can only be
            // delimited by close (RFC 9112 §6.3 rule 4).
            return Ok(if framing.is_chunked() {
                Self::Chunked
            } else {
                Self::UntilClose
            });
        }
        match framing.agreed_content_length() {
            Ok(Some(0)) => Ok(Self::Empty),
            Ok(Some(n)) => Ok(Self::Length(n)),
            Ok(None) => Ok(Self::UntilClose),
            Err(_) => Err(BodyError::BadContentLength),
        }
    }
}

/// How much of the bytes offered to [`BodyScanner::scan`] belong to the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes from the start of the offered slice that are body (framing
    /// included); forward exactly these.
    pub consumed: usize,
    /// The body ended within those bytes; what follows is the next message.
    pub done: bool,
}

// A chunk-size line, extensions included, and the trailer section are
// bounded so that a peer cannot make the proxy scan forever without data.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    Size { digits: u8, size: u64, line: usize },
    Ext { size: u64, line: usize },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart { total: usize },
    Trailer { total: usize },
    TrailerLf { total: usize },
    EndLf,
    Done,
}

/// Walks a streaming body and finds where it ends, without copying it.
#[derive(Debug, Clone)]
pub struct BodyScanner {
    state: State,
}

impl BodyScanner {
    /// A scanner for a body of the given framing.
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::Size {
                digits: 0,
                size: 0,
                line: 0,
            },
            BodyKind::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    /// True once the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when only the peer closing can end this body.
    pub fn ends_at_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Offers the next bytes of the stream; returns how many are body.
    ///
    /// # Errors
    ///
    /// [`BodyError::BadChunk`] when chunked framing is broken (a bad size,
    /// bare LF, missing CRLF after data, an overlong size line or trailer
    /// section). The connection cannot be reused after that.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, BodyError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                State::Done => break,
                State::UntilClose => {
                    i = buf.len();
                    State::UntilClose
                }
                State::Length(left) => {
                    let take = left.min((buf.len() - i) as u64);
                    i += take as usize;
                    match left - take {
                        0 => State::Done,
                        rest => State::Length(rest),
                    }
                }
                State::Data(left) => {
                    let take = left.min((buf.len() - i) as u64);
                    i += take as usize;
                    match left - take {
                        0 => State::DataCr,
                        rest => State::Data(rest),
                    }
                }
                state => {
                    i += 1;
                    step(state, b)?
                }
            };
        }
        Ok(Scan {
            consumed: i,
            done: self.state == State::Done,
        })
    }
}

/// One byte of chunk framing.
///
/// Not `httparse::parse_chunk_size`, for two reasons. It needs the whole
/// size line in one slice, but a line may be split across reads and the
/// scanner forwards bytes as they pass: it would have to buffer the line,
/// a copy this byte-at-a-time state avoids. And it is laxer than a proxy
/// may be: it takes an empty size (`\r\n` as chunk 0) and LF or NUL inside
/// extensions, each a way for two parsers to disagree on where a body ends
/// (request smuggling); `httparse_chunk_size_is_laxer_than_the_scanner`
/// pins both differences.
fn step(state: State, b: u8) -> Result<State, BodyError> {
    let bad = Err(BodyError::BadChunk);
    Ok(match state {
        State::Size { digits, size, line } => {
            if line >= MAX_CHUNK_LINE {
                return bad;
            }
            match (b as char).to_digit(16) {
                // 16 hex digits already fill a u64.
                Some(d) if digits < 16 => State::Size {
                    digits: digits + 1,
                    size: size << 4 | u64::from(d),
                    line: line + 1,
                },
                Some(_) => return bad,
                None if digits == 0 => return bad,
                None => match b {
                    b'\r' => State::SizeLf { size },
                    b';' | b' ' | b'\t' => State::Ext {
                        size,
                        line: line + 1,
                    },
                    _ => return bad,
                },
            }
        }
        State::Ext { size, line } => match b {
            _ if line >= MAX_CHUNK_LINE => return bad,
            b'\r' => State::SizeLf { size },
            b'\n' | 0 => return bad,
            _ => State::Ext {
                size,
                line: line + 1,
            },
        },
        State::SizeLf { size } => match (b, size) {
            (b'\n', 0) => State::TrailerStart { total: 0 },
            (b'\n', n) => State::Data(n),
            _ => return bad,
        },
        State::DataCr if b == b'\r' => State::DataLf,
        State::DataLf if b == b'\n' => State::Size {
            digits: 0,
            size: 0,
            line: 0,
        },
        State::TrailerStart { total } => match b {
            b'\r' => State::EndLf,
            b'\n' => return bad,
            _ => State::Trailer { total: total + 1 },
        },
        State::Trailer { total } => match b {
            _ if total >= MAX_TRAILERS => return bad,
            b'\r' => State::TrailerLf { total },
            b'\n' | 0 => return bad,
            _ => State::Trailer { total: total + 1 },
        },
        State::TrailerLf { total } if b == b'\n' => State::TrailerStart { total },
        State::EndLf if b == b'\n' => State::Done,
        _ => return bad,
    })
}

/// A body whose framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// `Content-Length` is not a number, or members disagree.
    #[error("invalid content-length header")]
    BadContentLength,
    /// Chunked framing is broken.
    #[error("invalid chunked transfer-encoding framing")]
    BadChunk,
}

impl BodyError {
    /// The HTTP status to answer with: the request's framing is the client's
    /// fault (400); a response's is the upstream's, which the proxy reports as
    /// 502 itself.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_framing_comes_from_the_parser() {
        assert_eq!(BodyKind::from(BodyLength::Fixed(0)), BodyKind::Empty);
        assert_eq!(BodyKind::from(BodyLength::Fixed(12)), BodyKind::Length(12));
        assert_eq!(BodyKind::from(BodyLength::Chunked), BodyKind::Chunked);
    }

    #[test]
    fn response_framing() {
        let ok = StatusCode::OK;
        let kind = |m: &Method, s: StatusCode, p: &[(&str, &str)]| {
            BodyKind::of_response(m, s, &headers(p)).unwrap()
        };
        let len = [("content-length", "9")];
        assert_eq!(kind(&Method::HEAD, ok, &len), BodyKind::Empty);
        assert_eq!(
            kind(&Method::GET, StatusCode::NO_CONTENT, &len),
            BodyKind::Empty
        );
        assert_eq!(
            kind(&Method::GET, StatusCode::NOT_MODIFIED, &len),
            BodyKind::Empty
        );
        assert_eq!(kind(&Method::GET, ok, &len), BodyKind::Length(9));
        assert_eq!(kind(&Method::GET, ok, &[]), BodyKind::UntilClose);
        assert_eq!(
            kind(&Method::GET, ok, &[("transfer-encoding", "chunked")]),
            BodyKind::Chunked
        );
        assert_eq!(
            kind(&Method::GET, ok, &[("transfer-encoding", "gzip")]),
            BodyKind::UntilClose
        );
        assert_eq!(
            kind(&Method::GET, ok, &[("content-length", "7, 7")]),
            BodyKind::Length(7)
        );
        let bad = headers(&[("content-length", "5"), ("content-length", "6")]);
        assert_eq!(
            BodyKind::of_response(&Method::GET, ok, &bad),
            Err(BodyError::BadContentLength)
        );
    }

    #[test]
    fn length_body_stops_at_its_end() {
        let mut s = BodyScanner::new(BodyKind::Length(5));
        assert_eq!(
            s.scan(b"abc").unwrap(),
            Scan {
                consumed: 3,
                done: false
            }
        );
        assert_eq!(
            s.scan(b"deGET").unwrap(),
            Scan {
                consumed: 2,
                done: true
            }
        );
        assert_eq!(
            s.scan(b"more").unwrap(),
            Scan {
                consumed: 0,
                done: true
            }
        );
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let wire = b"4;name=value\r\nWiki\r\n5 \r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX-A: b\r\n\r\nNEXT";
        let mut s = BodyScanner::new(BodyKind::Chunked);
        let scan = s.scan(wire).unwrap();
        assert!(scan.done);
        assert_eq!(&wire[scan.consumed..], b"NEXT");
    }

    #[test]
    fn broken_chunked_framing_is_rejected() {
        for wire in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"0\r\nX: a\nY: b\r\n\r\n",
            b"11111111111111111\r\n",
            b"\r\n",
        ] {
            let mut s = BodyScanner::new(BodyKind::Chunked);
            assert_eq!(s.scan(wire), Err(BodyError::BadChunk), "{wire:?}");
            assert_eq!(BodyError::BadChunk.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn httparse_chunk_size_is_laxer_than_the_scanner() {
        for line in [&b"\r\n"[..], b"1;a\nb\r\n", b"1;a\0b\r\n"] {
            assert!(
                matches!(
                    httparse::parse_chunk_size(line),
                    Ok(httparse::Status::Complete(_))
                ),
                "{line:?}"
            );
            let mut s = BodyScanner::new(BodyKind::Chunked);
            assert_eq!(s.scan(line), Err(BodyError::BadChunk), "{line:?}");
        }
    }

    #[test]
    fn overlong_chunk_extension_is_rejected() {
        let mut s = BodyScanner::new(BodyKind::Chunked);
        let mut wire = b"1;".to_vec();
        wire.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE + 1));
        assert_eq!(s.scan(&wire), Err(BodyError::BadChunk));
    }

    #[test]
    fn until_close_takes_everything() {
        let mut s = BodyScanner::new(BodyKind::UntilClose);
        assert_eq!(
            s.scan(b"anything").unwrap(),
            Scan {
                consumed: 8,
                done: false
            }
        );
        assert!(s.ends_at_close());
    }

    proptest! {
        #[test]
        fn chunked_split_anywhere_gives_the_same_end(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                wire.extend(format!("{:x}\r\n", c.len()).as_bytes());
                wire.extend(c);
                wire.extend(b"\r\n");
            }
            wire.extend(b"0\r\n\r\n");
            let body_len = wire.len();
            wire.extend(b"GET / HTTP/1.1\r\n");
            let cut = cut.index(wire.len());
            let mut s = BodyScanner::new(BodyKind::Chunked);
            let a = s.scan(&wire[..cut]).unwrap();
            let b = if a.done { Scan { consumed: 0, done: true } } else { s.scan(&wire[cut..]).unwrap() };
            prop_assert!(b.done);
            prop_assert_eq!(a.consumed + b.consumed, body_len);
        }

        #[test]
        fn scanner_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut s = BodyScanner::new(BodyKind::Chunked);
            let _ = s.scan(&bytes);
        }
    }
}
