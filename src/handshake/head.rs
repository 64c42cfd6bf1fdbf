//! Turning httparse's borrowed view of a head into owned `http` parts.
//!
//! httparse borrows the caller's buffer; `http` types own their bytes. To
//! avoid copying every value, the head is parsed in place, the offsets of its
//! parts are kept, and once the head is split off the buffer and frozen the
//! values become cheap slices of that one `Bytes`.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Version};

use super::syntax::diagnose;
use super::{HeadError, Limits, Status};

/// Header slots up to this count live on the stack; more are allocated.
const SLOTS_ON_STACK: usize = 128;

/// A header name with the position of its value in the head.
pub(super) type Field = (HeaderName, Range<usize>);

/// The part of `buf` the parser may look at: a head must end within it.
pub(super) fn window<'b>(buf: &'b [u8], limits: &Limits) -> &'b [u8] {
    &buf[..buf.len().min(limits.max_head_bytes)]
}

/// Calls `parse` with `limits.max_headers` uninitialised header slots, so
/// httparse itself refuses one header too many.
pub(super) fn with_slots<'b, R>(
    limits: &Limits,
    parse: impl FnOnce(&mut [MaybeUninit<httparse::Header<'b>>]) -> R,
) -> R {
    let max = limits.max_headers;
    if max <= SLOTS_ON_STACK {
        let mut slots = [const { MaybeUninit::uninit() }; SLOTS_ON_STACK];
        parse(&mut slots[..max])
    } else {
        let mut slots = vec![MaybeUninit::uninit(); max];
        parse(&mut slots)
    }
}

/// The position of `part`, a sub-slice httparse returned, within `head`.
/// httparse's minor version as an `http` version (it only accepts 1.0 and 1.1).
pub(super) fn version(minor: u8) -> Version {
    if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// What an incomplete head means: read more, or 431 once the head is
/// already as large as the limit allows.
pub(super) fn incomplete<T>(buffered: usize, limits: &Limits) -> Result<Status<T>, HeadError> {
    if buffered >= limits.max_head_bytes {
        return Err(HeadError::TooLarge {
            limit: limits.max_head_bytes,
        });
    }
    Ok(Status::Partial)
}

pub(super) fn offset(head: &[u8], part: &[u8]) -> Result<Range<usize>, HeadError> {
    let start = (part.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
    let end = start.wrapping_add(part.len());
    // Always true for httparse's output; checked so a surprise cannot panic.
    if start <= end && end <= head.len() {
        Ok(start..end)
    } else {
        Err(HeadError::Malformed)
    }
}

/// Fields up to this count are kept inline, in the parse's own frame: a
/// browser's handshake has about 15, and a `Vec` for them would be one
/// allocation per head.
const FIELDS_INLINE: usize = 32;

/// The parsed fields in arrival order: the first [`FIELDS_INLINE`] in an
/// array, the rest (rare) in a `Vec`.
pub(super) struct Fields {
    inline: [Field; FIELDS_INLINE],
    len: usize,
    spill: Vec<Field>,
}

impl Fields {
    fn new() -> Self {
        // A placeholder for the unused slots; never read past `len`.
        const EMPTY: Field = (http::header::HOST, 0..0);
        Self {
            inline: [const { EMPTY }; FIELDS_INLINE],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, field: Field) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = field;
                self.len += 1;
            }
            None => self.spill.push(field),
        }
    }

    /// How many fields there are.
    pub(super) fn len(&self) -> usize {
        self.len + self.spill.len()
    }

    /// The fields in arrival order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Field> {
        self.inline[..self.len].iter().chain(&self.spill)
    }

    /// The fields in arrival order, by value.
    fn into_iter(self) -> impl Iterator<Item = Field> {
        let Self { inline, len, spill } = self;
        inline.into_iter().take(len).chain(spill)
    }
}

/// Names and value positions of the parsed headers.
pub(super) fn fields(head: &[u8], headers: &[httparse::Header<'_>]) -> Result<Fields, HeadError> {
    let mut fields = Fields::new();
    let mut last: Option<&str> = None;
    for header in headers {
        let name =
            HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| HeadError::HeaderName {
                // As its `HeaderName` would print: lowercase.
                after: last.map(str::to_ascii_lowercase),
            })?;
        fields.push((name, offset(head, header.value)?));
        last = Some(header.name);
    }
    Ok(fields)
}

/// Builds the header map, each value a slice of the frozen `head`.
pub(super) fn header_map(head: &Bytes, fields: Fields) -> Result<HeaderMap, HeadError> {
    // Room for the headers a proxy adds (Host, X-Real-IP, X-Forwarded-*,
    // Forwarded, Connection, Upgrade) so the rewrite does not regrow it.
    let mut map = HeaderMap::with_capacity(fields.len() + 8);
    for (name, range) in fields.into_iter() {
        let value = HeaderValue::from_maybe_shared(head.slice(range.clone())).map_err(|_| {
            // httparse and `http` accept the same value bytes; this only
            // names the byte should they ever differ.
            let byte = head[range]
                .iter()
                .copied()
                .find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
                .unwrap_or(0);
            HeadError::ControlByte {
                header: name.as_str().to_owned(),
                byte,
            }
        })?;
        map.append(name, value);
    }
    Ok(map)
}

/// Maps an httparse error to what was wrong, naming the header when the
/// fault is one [`diagnose`] recognises. `start_line` is the error for a bad
/// request or status line.
pub(super) fn parse_error(
    window: &[u8],
    error: httparse::Error,
    limits: &Limits,
    start_line: HeadError,
) -> HeadError {
    match error {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders {
            limit: limits.max_headers,
        },
        httparse::Error::Version => diagnose(window).unwrap_or(HeadError::Version),
        httparse::Error::Token | httparse::Error::Status | httparse::Error::NewLine => {
            diagnose(window).unwrap_or(start_line)
        }
        _ => diagnose(window).unwrap_or(HeadError::Malformed),
    }
}
