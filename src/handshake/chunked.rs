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

use std::io::IoSlice;
use std::ops::Range;

use bytes::Buf;
use http::StatusCode;

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
const OUT: usize = 32;
/// Steps gathered into one [`Batch`]: two segments each stay within the 64
/// slices tokio hands to one vectored write.
const BATCH_STEPS: usize = 32;

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
            let Some(rest) = input.get(batch.consumed..).filter(|r| !r.is_empty()) else {
                break;
            };
            match self.reframe(rest) {
                Ok(step) => batch.push(&step),
                Err(e) => {
                    batch.error = Some(e);
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

/// Several steps of [`ChunkedReframer::reframe`] over one input, as one
/// [`Buf`] of the proxy's framing and slices of the input, for one vectored
/// write. A client sending tiny chunks then costs one write per read, not
/// one per chunk, and the data is still never copied.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    input: &'a [u8],
    /// The framing of every step, back to back.
    framing: [u8; OUT * BATCH_STEPS],
    framing_len: usize,
    segments: [Segment; 2 * BATCH_STEPS],
    len: usize,
    /// The segment being written and the offset in it.
    at: usize,
    offset: usize,
    remaining: usize,
    consumed: usize,
    error: Option<RequestBodyError>,
}

/// A run of the batch's framing or of the input.
#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    framing: bool,
    start: usize,
    end: usize,
}

impl<'a> Batch<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            framing: [0; OUT * BATCH_STEPS],
            framing_len: 0,
            segments: [Segment::default(); 2 * BATCH_STEPS],
            len: 0,
            at: 0,
            offset: 0,
            remaining: 0,
            consumed: 0,
            error: None,
        }
    }

    /// Input bytes the batch used: drop them once it is written.
    pub(crate) fn consumed(&self) -> usize {
        self.consumed
    }

    /// The fault that ended the batch, after the steps before it: write
    /// those, then refuse the body.
    pub(crate) fn error(&self) -> Option<RequestBodyError> {
        self.error
    }

    /// Appends one step, made over `input[self.consumed..]`.
    fn push(&mut self, step: &Reframed<'_>) {
        let start = self.framing_len;
        let Some(room) = self.framing.get_mut(start..start + step.framing.len()) else {
            // `BATCH_STEPS` steps of at most `OUT` bytes fit; never reached.
            return;
        };
        room.copy_from_slice(step.framing);
        self.framing_len += step.framing.len();
        self.segment(true, start..self.framing_len);
        let base = self.consumed;
        self.segment(false, base + step.data.start..base + step.data.end);
        self.consumed += step.consumed;
    }

    fn segment(&mut self, framing: bool, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.remaining += range.len();
        // Framing of steps without data is contiguous: one segment.
        if let Some(last) = self
            .len
            .checked_sub(1)
            .and_then(|i| self.segments.get_mut(i))
        {
            if last.framing && framing && last.end == range.start {
                last.end = range.end;
                return;
            }
        }
        if let Some(slot) = self.segments.get_mut(self.len) {
            *slot = Segment {
                framing,
                start: range.start,
                end: range.end,
            };
            self.len += 1;
        }
    }

    fn bytes(&self, segment: &Segment) -> &[u8] {
        let source: &[u8] = if segment.framing {
            &self.framing
        } else {
            self.input
        };
        source.get(segment.start..segment.end).unwrap_or_default()
    }
}

impl Buf for Batch<'_> {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        match self.segments[..self.len].get(self.at) {
            Some(segment) => self.bytes(segment).get(self.offset..).unwrap_or_default(),
            None => &[],
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        // Bounded by the segment count.
        while cnt > 0 {
            let Some(segment) = self.segments[..self.len].get(self.at) else {
                return;
            };
            let left = segment.end - segment.start - self.offset;
            let step = cnt.min(left);
            self.offset += step;
            self.remaining -= step;
            cnt -= step;
            if self.offset == segment.end - segment.start {
                self.at += 1;
                self.offset = 0;
            }
        }
    }

    fn chunks_vectored<'b>(&'b self, dst: &mut [IoSlice<'b>]) -> usize {
        let mut n = 0;
        for (i, segment) in self.segments[..self.len].iter().enumerate().skip(self.at) {
            let Some(slot) = dst.get_mut(n) else { break };
            let bytes = self.bytes(segment);
            let from = if i == self.at { self.offset } else { 0 };
            *slot = IoSlice::new(bytes.get(from..).unwrap_or_default());
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Re-frames `wire` fed in pieces cut at `cuts`; the output and the
    /// bytes left after the body.
    fn run(
        reframer: &mut ChunkedReframer,
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, Vec<u8>), RequestBodyError> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        let mut from = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
        ends.sort_unstable();
        ends.push(wire.len());
        for end in ends {
            pending.extend_from_slice(&wire[from..end.max(from)]);
            from = end.max(from);
            while !pending.is_empty() && !reframer.is_done() {
                let step = reframer.reframe(&pending)?;
                assert!(step.consumed > 0, "no progress");
                assert_eq!(step.data.end.max(step.consumed), step.consumed);
                out.extend_from_slice(step.framing);
                out.extend_from_slice(&pending[step.data.clone()]);
                let consumed = step.consumed;
                pending.drain(..consumed);
            }
        }
        Ok((out, pending))
    }

    /// Like [`run`], through batches read the way a vectored write reads
    /// them: at most `iov` slices, then `advance`.
    fn run_batched(
        reframer: &mut ChunkedReframer,
        wire: &[u8],
        cut: usize,
        iov: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), RequestBodyError> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for part in [&wire[..cut], &wire[cut..]] {
            pending.extend_from_slice(part);
            while !pending.is_empty() && !reframer.is_done() {
                let mut batch = reframer.reframe_batch(&pending);
                let (consumed, error) = (batch.consumed(), batch.error());
                while batch.has_remaining() {
                    let mut slices = vec![IoSlice::new(&[]); iov];
                    let n = batch.chunks_vectored(&mut slices);
                    assert!(n > 0);
                    // A short write: all but the last byte of what was offered.
                    let offered: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
                    let wrote = offered.len().saturating_sub(1).max(1);
                    out.extend_from_slice(&offered[..wrote]);
                    batch.advance(wrote);
                }
                pending.drain(..consumed);
                if let Some(e) = error {
                    return Err(e);
                }
            }
        }
        Ok((out, pending))
    }

    fn whole(wire: &[u8], limit: u64) -> Result<(Vec<u8>, Vec<u8>), RequestBodyError> {
        run(&mut ChunkedReframer::new(limit), wire, &[])
    }

    #[test]
    fn sizes_are_rewritten_and_extensions_and_trailers_dropped() {
        let wire = b"4;name=value\r\nWiki\r\n5 \r\npedia\r\n00E ; a=\"b\tc\"\r\n in\r\n\r\nchunks.\r\n0;z\r\nExpires: never\r\nX-A: b\r\n\r\nNEXT";
        let (out, rest) = whole(wire, 0).unwrap();
        assert_eq!(
            out,
            b"4\r\nWiki\r\n5\r\npedia\r\ne\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n"
        );
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn an_empty_body_is_the_last_chunk_alone() {
        assert_eq!(
            whole(b"0\r\n\r\n", 1).unwrap(),
            (b"0\r\n\r\n".to_vec(), Vec::new())
        );
        assert_eq!(whole(b"000\r\n\r\nX", 1).unwrap().0, b"0\r\n\r\n");
    }

    #[test]
    fn huge_sizes_are_refused_whatever_the_limit() {
        for wire in [
            &b"ffffffffffffffff\r\n"[..],
            b"8000000000000000\r\n",
            b"10000000000000\r\n",
        ] {
            for limit in [0, 1 << 20] {
                let err = whole(wire, limit).unwrap_err();
                assert_eq!(err, RequestBodyError::ChunkSize, "{wire:?}");
                assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            }
        }
        // The largest size HAProxy takes still parses without a limit.
        let mut r = ChunkedReframer::new(0);
        assert!(r.reframe(b"fffffffffffff\r\n").is_ok());
    }

    #[test]
    fn a_chunk_over_the_limit_is_refused_before_any_of_it_goes_out() {
        let mut r = ChunkedReframer::new(1 << 20);
        let err = r.reframe(b"100000005\r\nhello").unwrap_err();
        assert_eq!(err, RequestBodyError::TooLarge { limit: 1 << 20 });
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // The sum counts, not just one chunk: 4 + 4 > 6.
        let mut r = ChunkedReframer::new(6);
        let step = r.reframe(b"4\r\nabcd\r\n4\r\nefgh\r\n").unwrap();
        assert_eq!((step.framing, step.data), (&b"4\r\n"[..], 3..7));
        let err = r.reframe(b"\r\n4\r\nefgh\r\n").unwrap_err();
        assert_eq!(err, RequestBodyError::TooLarge { limit: 6 });
        // Exactly the limit is fine.
        assert!(whole(b"6\r\nabcdef\r\n0\r\n\r\n", 6).is_ok());
        // Checked when the size ends, before its extension is read.
        let mut r = ChunkedReframer::new(6);
        assert!(matches!(
            r.reframe(b"7;"),
            Err(RequestBodyError::TooLarge { .. })
        ));
    }

    #[test]
    fn control_bytes_in_extensions_are_refused() {
        for byte in [0u8, 1, 0x0b, 0x1b, 0x7f] {
            let wire = [b"1;a=".as_slice(), &[byte], b"\r\nx\r\n0\r\n\r\n"].concat();
            let err = whole(&wire, 0).unwrap_err();
            assert_eq!(err, RequestBodyError::ExtensionControlByte { byte });
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn broken_framing_is_refused() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b";a\r\n",
            b"5\nhello\r\n",
            b"5 x\r\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\n\r\r",
            b"1;a\nb\r\n",
        ] {
            let err = whole(wire, 0).unwrap_err();
            assert_eq!(err, RequestBodyError::Chunk, "{wire:?}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE + 1));
        assert_eq!(whole(&long, 0), Err(RequestBodyError::Chunk));
    }

    #[test]
    fn bad_trailers_are_refused() {
        let mut big = b"0\r\n".to_vec();
        for i in 0..2000 {
            big.extend(format!("X-{i}: {}\r\n", "v".repeat(8)).as_bytes());
        }
        big.extend(b"\r\n");
        let many: Vec<u8> = [
            b"0\r\n".to_vec(),
            (0..65)
                .flat_map(|i| format!("X-{i}: v\r\n").into_bytes())
                .collect(),
            b"\r\n".to_vec(),
        ]
        .concat();
        for wire in [
            &b"0\r\nno colon\r\n\r\n"[..],
            b"0\r\nX: a\x01b\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\nX: a\nY: b\r\n\r\n",
            &big,
            &many,
        ] {
            let err = whole(wire, 0).unwrap_err();
            assert!(
                matches!(err, RequestBodyError::Trailers | RequestBodyError::Chunk),
                "{err:?}"
            );
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_huge_chunk_goes_out_in_pieces_a_32_bit_parser_reads_right() {
        // 2^32 + 5 bytes of data, fed a MiB at a time without copying it.
        let size = (1u64 << 32) + 5;
        let mut r = ChunkedReframer::new(0);
        let step = r.reframe(b"100000005\r\n").unwrap();
        let mut sizes = vec![step.framing.to_vec()];
        let block = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let feed = &block[..left.min(block.len() as u64) as usize];
            let step = r.reframe(feed).unwrap();
            if !step.framing.is_empty() {
                sizes.push(step.framing.to_vec());
            }
            left -= step.consumed as u64;
        }
        let (end, rest) = run(&mut r, b"\r\n0\r\n\r\n", &[]).unwrap();
        assert!(rest.is_empty());
        assert_eq!(end, b"\r\n0\r\n\r\n");
        assert_eq!(sizes.len(), 257);
        assert_eq!(sizes[0], b"1000000\r\n");
        assert_eq!(sizes[1], b"\r\n1000000\r\n");
        assert_eq!(sizes[256], b"\r\n5\r\n");
    }

    #[test]
    fn tiny_chunks_go_out_thirty_two_to_a_write() {
        let mut wire = b"1\r\nx\r\n".repeat(100);
        wire.extend(b"0\r\n\r\n");
        let mut r = ChunkedReframer::new(0);
        let mut input = &wire[..];
        let mut writes = 0;
        while !r.is_done() {
            let batch = r.reframe_batch(input);
            assert_eq!(batch.error(), None);
            input = &input[batch.consumed()..];
            writes += 1;
        }
        assert!(input.is_empty());
        assert_eq!(writes, 4);
    }

    #[test]
    fn a_batch_keeps_what_came_before_a_fault() {
        let mut r = ChunkedReframer::new(8);
        let mut batch = r.reframe_batch(b"5\r\nhello\r\n5\r\nworld\r\n");
        assert_eq!(batch.error(), Some(RequestBodyError::TooLarge { limit: 8 }));
        assert_eq!(batch.copy_to_bytes(batch.remaining()), &b"5\r\nhello"[..]);
    }

    /// A valid chunked body: chunks with optional leading zeros and
    /// extensions, optional trailers; and its canonical re-framing.
    fn body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let chunk = (
            proptest::collection::vec(any::<u8>(), 1..40),
            0..3usize,
            proptest::option::of("[a-z]{1,5}(=[a-z0-9]{0,5})?"),
        );
        (
            proptest::collection::vec(chunk, 0..6),
            proptest::collection::vec("[A-Za-z]{1,8}: [ -~]{0,10}", 0..3),
        )
            .prop_map(|(chunks, trailers)| {
                let (mut wire, mut canon) = (Vec::new(), Vec::new());
                for (data, zeros, ext) in &chunks {
                    let size = format!("{}{:X}", "0".repeat(*zeros), data.len());
                    wire.extend(size.as_bytes());
                    if let Some(ext) = ext {
                        wire.extend(format!(" ;{ext}").as_bytes());
                    }
                    wire.extend(b"\r\n");
                    wire.extend(data);
                    wire.extend(b"\r\n");
                    canon.extend(format!("{:x}\r\n", data.len()).as_bytes());
                    canon.extend(data);
                    canon.extend(b"\r\n");
                }
                wire.extend(b"0\r\n");
                for t in &trailers {
                    wire.extend(t.trim_end().as_bytes());
                    wire.extend(b"\r\n");
                }
                wire.extend(b"\r\n");
                canon.extend(b"0\r\n\r\n");
                (wire, canon)
            })
    }

    proptest! {
        #[test]
        fn a_body_split_anywhere_reframes_like_the_whole(
            (wire, canon) in body(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        ) {
            let mut full = wire.clone();
            full.extend(b"GET / HTTP/1.1\r\n");
            let (whole_out, whole_rest) = whole(&full, 0).unwrap();
            prop_assert_eq!(&whole_out, &canon);
            prop_assert_eq!(&whole_rest[..], &b"GET / HTTP/1.1\r\n"[..]);
            let cuts: Vec<usize> = cuts.iter().map(|c| c.index(full.len())).collect();
            let split = run(&mut ChunkedReframer::new(0), &full, &cuts).unwrap();
            prop_assert_eq!(split, (whole_out, whole_rest));
        }

        #[test]
        fn batches_write_what_the_steps_write(
            (wire, canon) in body(),
            tiny in proptest::collection::vec(0..4usize, 0..40),
            cut in any::<prop::sample::Index>(),
            iov in 1..70usize,
        ) {
            // Many tiny chunks, then the generated body: batches fill up.
            let mut full: Vec<u8> = tiny.iter().flat_map(|&n| {
                let n = n + 1;
                [format!("{n:x};e\r\n").into_bytes(), vec![b'x'; n], b"\r\n".to_vec()].concat()
            }).collect();
            let mut expected: Vec<u8> = tiny.iter().flat_map(|&n| {
                let n = n + 1;
                [format!("{n:x}\r\n").into_bytes(), vec![b'x'; n], b"\r\n".to_vec()].concat()
            }).collect();
            full.extend(&wire);
            expected.extend(&canon);
            full.extend(b"NEXT");
            let cut = cut.index(full.len() + 1);
            let got = run_batched(&mut ChunkedReframer::new(0), &full, cut, iov).unwrap();
            prop_assert_eq!(got, (expected, b"NEXT".to_vec()));
        }

        #[test]
        fn batches_fail_where_the_steps_fail(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(bytes.len() + 1);
            let stepped = run(&mut ChunkedReframer::new(64), &bytes, &[cut]);
            let batched = run_batched(&mut ChunkedReframer::new(64), &bytes, cut, 64);
            prop_assert_eq!(stepped.err(), batched.err());
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(bytes.len() + 1);
            let _ = run(&mut ChunkedReframer::new(64), &bytes, &[cut]);
        }
    }
}
