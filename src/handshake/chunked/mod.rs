//! Re-framing a chunked request body toward the upstream, sans-IO.
//!
//! Relaying a client's chunk framing as it was written lets the client
//! speak to the upstream's chunk parser directly: a size that a lax
//! backend overflows or truncates (`ffffffffffffffff`, `100000005`), or an
//! extension full of control bytes, makes the backend see a request the
//! proxy never saw (request smuggling). So, as HAProxy does, the proxy
//! parses the framing and writes its own: size lines in lowercase hex with
//! no extensions, the data slices of the client's input untouched (never
//! copied), and a final `0\r\n\r\n`.
//!
//! Trailer fields are checked (CRLF lines, bounded, then httparse) and
//! dropped: RFC 9112 §7.1.2 lets a recipient that removes the chunked
//! coding discard them, nginx does not forward them either, and a backend
//! that merges trailers into the header section (RFC 9110 §6.5.1 forbids
//! it, not all obey) would otherwise take fields the forwarding policy
//! rewrote (`X-Forwarded-For`, `X-Real-IP`, `Host`) from the client.
//!
//! ```
//! use wsproxy::handshake::ChunkedReframer;
//!
//! # fn main() -> Result<(), wsproxy::handshake::RequestBodyError> {
//! let mut reframer = ChunkedReframer::new(1024 * 1024);
//! let mut wire: &[u8] = b"05;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next HTTP/1.1\r\n";
//! let mut upstream = Vec::new();
//! while !reframer.is_done() {
//!     let step = reframer.reframe(wire)?;
//!     upstream.extend_from_slice(step.framing);
//!     upstream.extend_from_slice(&wire[step.data]);
//!     wire = &wire[step.consumed..];
//! }
//! assert_eq!(upstream, b"5\r\nhello\r\n0\r\n\r\n");
//! assert_eq!(wire, b"GET /next HTTP/1.1\r\n"); // the next request
//! # Ok(())
//! # }
//! ```

mod batch;

use std::ops::Range;

use http::StatusCode;

pub(crate) use batch::Batch;

/// A chunk-size line, extensions included, is bounded so that a client
/// cannot make the proxy read forever without data.
const MAX_CHUNK_LINE: usize = 4096;
/// The trailer section is buffered whole to check it: bounded.
const MAX_TRAILERS: usize = 16 * 1024;
/// Trailer fields checked at once (httparse's caller-owned slots).
const MAX_TRAILER_FIELDS: usize = 64;
/// HAProxy refuses chunk sizes of 2^52 and more "to never feed possibly
/// bogus values from languages that use floats for their integers"; so does
/// the proxy, whatever its body limit.
const MAX_CHUNK_SIZE: u64 = (1 << 52) - 1;
/// The largest chunk the proxy writes: a bigger declared chunk goes out as
/// several of this size, so that a backend that keeps a size in 32 bits
/// never sees one it would truncate, even without a body limit. The pieces
/// fall where the declared sizes put them, not where reads end, so the
/// output does not depend on how the input arrived.
const MAX_PIECE: u64 = 1 << 24;
/// Room for the framing of one step: at most `\r\n` + a piece's size line.
pub(super) const OUT: usize = 32;
/// Steps gathered into one [`Batch`]: two segments each stay within the 64
/// slices the shell passes to one vectored write.
pub(super) const BATCH_STEPS: usize = 32;

/// Why a request body is refused.
///
/// Chunk framing faults are the client's (400), as is a body over the
/// configured limit (413, nginx `client_max_body_size`).
///
/// ```
/// use http::StatusCode;
/// use wsproxy::handshake::{ChunkedReframer, RequestBodyError};
///
/// let mut reframer = ChunkedReframer::new(16);
/// let err = reframer.reframe(b"100000005\r\n").unwrap_err();
/// assert_eq!(err, RequestBodyError::TooLarge { limit: 16 });
/// assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestBodyError {
    /// The chunk framing is broken: a size that is not hex, a bare LF, data
    /// not followed by CRLF, an overlong size line, junk after the size.
    #[error("invalid chunked framing")]
    Chunk,
    /// A chunk size of 2^52 or more (HAProxy's bound; nginx refuses sizes
    /// that overflow its `off_t` with 400 too).
    #[error("chunk size too large")]
    ChunkSize,
    /// A control byte other than HTAB in a chunk extension (RFC 9112 §7.1.1
    /// allows tokens and quoted strings only).
    #[error("control byte 0x{byte:02x} in chunk extension")]
    ExtensionControlByte {
        /// The byte.
        byte: u8,
    },
    /// The trailer section is not a valid field section (RFC 9112 §7.1.2),
    /// has more than 64 fields or is larger than 16 KiB.
    #[error("invalid chunked trailer section")]
    Trailers,
    /// The body is larger than the limit: by its Content-Length, or by the
    /// sum of its chunk sizes, refused as soon as the size is read and
    /// before any byte of that chunk is forwarded (nginx
    /// `client_max_body_size`, 413).
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
}

impl RequestBodyError {
    /// The status to answer with: 413 for [`TooLarge`](Self::TooLarge), as
    /// nginx answers, 400 for every framing fault.
    ///
    /// ```
    /// use http::StatusCode;
    /// use wsproxy::handshake::RequestBodyError;
    ///
    /// assert_eq!(RequestBodyError::Chunk.status(), StatusCode::BAD_REQUEST);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Chunk | Self::ChunkSize | Self::ExtensionControlByte { .. } | Self::Trailers => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

/// One step of [`ChunkedReframer::reframe`]: write `framing`, then
/// `input[data]`, then drop `consumed` bytes from the front of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reframed<'a> {
    /// Framing the proxy wrote (CRLF after data, a size line, the last
    /// chunk): send it first.
    pub framing: &'a [u8],
    /// Chunk data within the input, to send as it is after `framing`.
    /// Always at the end of the consumed bytes.
    pub data: Range<usize>,
    /// Input bytes this step used, framing and data: drop them.
    pub consumed: usize,
    /// The body ended within the consumed bytes; what follows is the next
    /// request.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a size; `digits` once there was one.
    Size {
        digits: bool,
        line: usize,
    },
    /// Whitespace after the size (`BWS` before `;`).
    AfterSize {
        line: usize,
    },
    /// A chunk extension, dropped.
    Ext {
        line: usize,
    },
    SizeLf,
    /// Data: `left` of the declared chunk, `piece` of the proxy's chunk.
    Data {
        left: u64,
        piece: u64,
    },
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Parses a chunked request body and writes it again in the proxy's own
/// framing, without copying its data; enforces the body limit.
///
/// Feed it the bytes as they arrive with [`reframe`](Self::reframe);
/// each call returns one step to forward. An input cut anywhere gives the
/// same output as the whole.
#[derive(Debug, Clone)]
pub struct ChunkedReframer {
    state: State,
    /// The size of the chunk being read.
    chunk: u64,
    /// The sum of the chunk sizes so far.
    declared: u64,
    /// 0: no limit, as nginx's `client_max_body_size 0`.
    limit: u64,
    /// The trailer section, kept only while it is read.
    trailers: Vec<u8>,
    out: [u8; OUT],
    out_len: usize,
}

impl ChunkedReframer {
    /// A re-framer refusing bodies whose chunk sizes add up to more than
    /// `limit` bytes; 0 means no limit (nginx `client_max_body_size 0`).
    ///
    /// ```
    /// use wsproxy::handshake::ChunkedReframer;
    ///
    /// let reframer = ChunkedReframer::new(0);
    /// assert!(!reframer.is_done());
    /// ```
    pub fn new(limit: u64) -> Self {
        Self {
            state: State::Size {
                digits: false,
                line: 0,
            },
            chunk: 0,
            declared: 0,
            limit,
            trailers: Vec::new(),
            out: [0; OUT],
            out_len: 0,
        }
    }

    /// True once the whole body, last chunk and trailers, has been read.
    ///
    /// ```
    /// use wsproxy::handshake::ChunkedReframer;
    ///
    /// # fn main() -> Result<(), wsproxy::handshake::RequestBodyError> {
    /// let mut reframer = ChunkedReframer::new(0);
    /// reframer.reframe(b"0\r\n\r\n")?;
    /// assert!(reframer.is_done());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads from the front of `input` up to the end of the next data
    /// slice (or of the input, or of the body) and says what to forward.
    ///
    /// With a non-empty `input` and a body not done, each call consumes at
    /// least one byte. Nothing of a chunk is forwarded before its size is
    /// known to fit the limit.
    ///
    /// ```
    /// use wsproxy::handshake::ChunkedReframer;
    ///
    /// # fn main() -> Result<(), wsproxy::handshake::RequestBodyError> {
    /// let mut reframer = ChunkedReframer::new(0);
    /// let step = reframer.reframe(b"00A;x\r\n0123")?;
    /// assert_eq!(step.framing, b"a\r\n");
    /// assert_eq!(step.data, 7..11);
    /// assert_eq!(step.consumed, 11);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`RequestBodyError`] for broken framing (400) or a body over the
    /// limit (413). The connection cannot carry another request after that.
    pub fn reframe(&mut self, input: &[u8]) -> Result<Reframed<'_>, RequestBodyError> {
        self.out_len = 0;
        let mut i = 0;
        let mut data = 0..0;
        while let Some(&b) = input.get(i) {
            match self.state {
                State::Done => break,
                State::Data { left, mut piece } => {
                    if piece == 0 {
                        // The previous piece of this chunk is out: end it
                        // and start the next.
                        piece = left.min(MAX_PIECE);
                        self.push(b"\r\n");
                        self.push_size(piece);
                    }
                    let take = piece.min((input.len() - i) as u64);
                    data = i..i + take as usize;
                    i += take as usize;
                    self.state = match left - take {
                        0 => State::DataCr,
                        left => State::Data {
                            left,
                            piece: piece - take,
                        },
                    };
                    // Data ends a step: the framing before it goes first.
                    break;
                }
                state => {
                    self.state = self.step(state, b)?;
                    i += 1;
                }
            }
        }
        Ok(Reframed {
            framing: &self.out[..self.out_len],
            data,
            consumed: i,
            done: self.state == State::Done,
        })
    }

    /// Up to 32 steps of [`reframe`](Self::reframe) over `input`, for one
    /// write; a fault ends the batch after the steps before it.
    pub(crate) fn reframe_batch<'a>(&mut self, input: &'a [u8]) -> Batch<'a> {
        let mut batch = Batch::new(input);
        let mut steps = 0;
        // Bounded: each step consumes at least one byte, and by the count.
        while steps < BATCH_STEPS && !self.is_done() {
            let Some(rest) = input.get(batch.consumed()..).filter(|r| !r.is_empty()) else {
                break;
            };
            match self.reframe(rest) {
                Ok(step) => batch.push(&step),
                Err(e) => {
                    batch.fail(e);
                    break;
                }
            }
            steps += 1;
        }
        batch
    }

    /// One byte of framing.
    fn step(&mut self, state: State, b: u8) -> Result<State, RequestBodyError> {
        let bad = Err(RequestBodyError::Chunk);
        Ok(match state {
            State::Size { digits, line } => {
                if line >= MAX_CHUNK_LINE {
                    return bad;
                }
                if let Some(d) = (b as char).to_digit(16) {
                    // Leading zeros are harmless: the proxy writes its own.
                    self.chunk = self.chunk * 16 + u64::from(d);
                    if self.chunk > MAX_CHUNK_SIZE {
                        return Err(RequestBodyError::ChunkSize);
                    }
                    return Ok(State::Size {
                        digits: true,
                        line: line + 1,
                    });
                }
                if !digits {
                    return bad;
                }
                // The size is complete: check it before anything of the
                // chunk can go out.
                self.declared = self.declared.saturating_add(self.chunk);
                if self.limit != 0 && self.declared > self.limit {
                    return Err(RequestBodyError::TooLarge { limit: self.limit });
                }
                self.after_size(b, line)?
            }
            State::AfterSize { line } => {
                if line >= MAX_CHUNK_LINE {
                    return bad;
                }
                self.after_size(b, line)?
            }
            State::Ext { line } => match b {
                _ if line >= MAX_CHUNK_LINE => return bad,
                b'\r' => State::SizeLf,
                b'\n' => return bad,
                b'\t' => State::Ext { line: line + 1 },
                0..=0x1f | 0x7f => return Err(RequestBodyError::ExtensionControlByte { byte: b }),
                _ => State::Ext { line: line + 1 },
            },
            State::SizeLf if b == b'\n' => match self.chunk {
                0 => State::TrailerStart,
                size => {
                    let piece = size.min(MAX_PIECE);
                    self.push_size(piece);
                    State::Data { left: size, piece }
                }
            },
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => {
                self.push(b"\r\n");
                self.chunk = 0;
                State::Size {
                    digits: false,
                    line: 0,
                }
            }
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => return bad,
                _ => {
                    self.trailer_byte(b)?;
                    State::Trailer
                }
            },
            State::Trailer => match b {
                b'\n' => return bad,
                b'\r' => {
                    self.trailer_byte(b)?;
                    State::TrailerLf
                }
                _ => {
                    self.trailer_byte(b)?;
                    State::Trailer
                }
            },
            State::TrailerLf if b == b'\n' => {
                self.trailer_byte(b)?;
                State::TrailerStart
            }
            State::EndLf if b == b'\n' => {
                self.check_trailers()?;
                self.push(b"0\r\n\r\n");
                State::Done
            }
            _ => return bad,
        })
    }

    /// After the size digits: whitespace, an extension or the line's end.
    fn after_size(&self, b: u8, line: usize) -> Result<State, RequestBodyError> {
        Ok(match b {
            b' ' | b'\t' => State::AfterSize { line: line + 1 },
            b';' => State::Ext { line: line + 1 },
            b'\r' => State::SizeLf,
            _ => return Err(RequestBodyError::Chunk),
        })
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), RequestBodyError> {
        if self.trailers.len() >= MAX_TRAILERS {
            return Err(RequestBodyError::Trailers);
        }
        self.trailers.push(b);
        Ok(())
    }

    /// The whole trailer section must parse as header fields; it is then
    /// dropped (see the module docs).
    fn check_trailers(&mut self) -> Result<(), RequestBodyError> {
        let mut trailers = std::mem::take(&mut self.trailers);
        if trailers.is_empty() {
            return Ok(());
        }
        trailers.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        match httparse::parse_headers(&trailers, &mut fields) {
            Ok(httparse::Status::Complete((n, _))) if n == trailers.len() => Ok(()),
            _ => Err(RequestBodyError::Trailers),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // `OUT` holds the most one step writes; never more.
            if let Some(slot) = self.out.get_mut(self.out_len) {
                *slot = b;
                self.out_len += 1;
            }
        }
    }

    /// `{size:x}\r\n`, without formatting machinery.
    fn push_size(&mut self, size: u64) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digits = (64 - size.leading_zeros()).div_ceil(4).max(1);
        for k in (0..digits).rev() {
            let nibble = (size >> (4 * k)) & 0xf;
            self.push(&[HEX[nibble as usize]]);
        }
        self.push(b"\r\n");
    }
}

#[cfg(test)]
mod tests;
