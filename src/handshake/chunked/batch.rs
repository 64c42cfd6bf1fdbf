//! Several re-framing steps as one vectored write.

use std::io::IoSlice;
use std::ops::Range;

use bytes::Buf;

use super::{Reframed, RequestBodyError, BATCH_STEPS, OUT};

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
    pub(super) fn new(input: &'a [u8]) -> Self {
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
    /// Ends the batch with `error`, after the steps already in it.
    pub(super) fn fail(&mut self, error: RequestBodyError) {
        self.error = Some(error);
    }

    pub(super) fn push(&mut self, step: &Reframed<'_>) {
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
