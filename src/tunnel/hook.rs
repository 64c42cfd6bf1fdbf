//! The frame hook of one direction of a tunnel that tracks frames: what
//! the copier ([`Transfer`](super::transfer::Transfer)) asks at two points,
//! before it reads (may queued frames go out now?) and for each chunk read
//! (observe it; write it, drop it, or write it with frames spliced in).
//! The copier knows bytes; this knows frames.

use crate::frame::{Boundary, FrameError, FrameTracker};

use super::transfer::{Nanos, NEVER};

/// What the copier does with a chunk it read.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// Write it as read.
    Pass,
    /// Drop it: it follows a Close frame that went out (RFC 6455 §5.5.1).
    Drop,
    /// Write this instead: the chunk with queued frames spliced in, or cut
    /// after the peer's Close.
    Replace(Box<[u8]>),
}

/// The frames of one direction of a tunnel that tracks them: the tracker,
/// and the frames waiting to be inserted at the next boundary.
#[derive(Debug)]
pub(crate) struct FrameHook {
    pub(crate) tracker: FrameTracker,
    /// Whole frames to write at the next boundary where they may go.
    // A thin pointer (the bytes are rare, the field is in every tracked
    // tunnel): keeps this struct, and the box of both directions, smaller.
    #[allow(clippy::box_collection)] // on purpose: 8 bytes, not a Vec's 24
    insert: Option<Box<Vec<u8>>>,
    /// Drop what is read once the queued frames are out (a polite close:
    /// nothing may follow a Close frame, RFC 6455 §5.5.1).
    discard_after_insert: bool,
    /// Dropping what is read: the Close frame went out.
    discarding: bool,
    /// The queued frames wait for the reader's EOF, and are dropped if the
    /// reader sent a Close of its own first (see `insert_at_eof`).
    defer_to_eof: bool,
    /// When the proxy pinged the side this direction reads, if that side
    /// has sent nothing since.
    pub(crate) ping_sent: Nanos,
    /// Messages forwarded before the dropping began (32 bits, saturating:
    /// the frame state stays small for every idle tunnel).
    kept_messages: u32,
}

impl FrameHook {
    pub(crate) fn new(tracker: FrameTracker) -> Self {
        Self {
            tracker,
            insert: None,
            discard_after_insert: false,
            discarding: false,
            defer_to_eof: false,
            ping_sent: NEVER,
            kept_messages: 0,
        }
    }

    /// Whole messages forwarded: those the tracker read, less the ones
    /// dropped after a polite close.
    pub(crate) fn messages(&self) -> u64 {
        if self.discarding {
            u64::from(self.kept_messages)
        } else {
            self.tracker.messages()
        }
    }

    /// Queues `frames` like [`insert`](Self::insert), and drops every byte
    /// read after the boundary where they go.
    pub(crate) fn insert_then_discard(&mut self, frames: &[u8]) {
        self.insert(frames);
        self.discard_after_insert = true;
    }

    /// Queues `frames` for the reader's EOF: they go out then, before the
    /// writer is shut down, unless the reader sent a Close frame (which
    /// already went through) or [`release`](Self::release) lets them go
    /// earlier. A polite close toward a side thus waits for the other side's
    /// own Close: whatever that side sends until then still arrives.
    pub(crate) fn insert_at_eof(&mut self, frames: &[u8]) {
        self.insert(frames);
        self.defer_to_eof = true;
    }

    /// Lets frames queued by [`insert_at_eof`](Self::insert_at_eof) go at
    /// the next boundary, dropping what is read after them.
    pub(crate) fn release(&mut self) {
        self.defer_to_eof = false;
        self.discard_after_insert = true;
    }

    /// Whether frames wait for the reader's EOF.
    pub(crate) fn is_deferred(&self) -> bool {
        self.defer_to_eof && self.insert.is_some()
    }

    /// The queued frames, taken, if they may go now (`eof`: the reader
    /// ended).
    pub(crate) fn take_fitting(&mut self, eof: bool) -> Option<Box<[u8]>> {
        if self.supersede() {
            return None;
        }
        if self.defer_to_eof {
            if !eof {
                return None;
            }
            if self.tracker.close_seen() {
                self.defer_to_eof = false;
                self.insert = None;
                return None;
            }
        }
        let fitting = self.fitting();
        if fitting > 0 {
            self.take_insert(fitting)
        } else {
            None
        }
    }

    /// Drops a polite Close still queued toward a peer that a Close already
    /// reached (the other peer's, passing through): a second Close would
    /// follow the first. What comes after that Close is dropped, as after the
    /// proxy's own. True when it did.
    fn supersede(&mut self) -> bool {
        if self.discard_after_insert && self.insert.is_some() && self.tracker.close_seen() {
            self.insert = None;
            self.start_discarding();
            true
        } else {
            false
        }
    }

    fn start_discarding(&mut self) {
        if !self.discarding {
            self.discarding = true;
            self.kept_messages = u32::try_from(self.tracker.messages()).unwrap_or(u32::MAX);
        }
    }

    /// Whether the queued frames may go in the middle of a chunk just read.
    fn splices(&self) -> bool {
        self.insert.is_some() && !self.defer_to_eof
    }

    /// Takes the first `len` queued bytes (whole frames, see
    /// [`fitting`](Self::fitting)) as gone out.
    fn take_insert(&mut self, len: usize) -> Option<Box<[u8]>> {
        let queued = self.insert.as_mut()?;
        let taken = if len < queued.len() {
            let rest = queued.split_off(len);
            std::mem::replace(&mut **queued, rest)
        } else {
            *self.insert.take()?
        };
        // The polite Close goes last: what follows is dropped once it went.
        if self.insert.is_none() && self.discard_after_insert {
            self.start_discarding();
        }
        Some(taken.into_boxed_slice())
    }

    /// Queues whole frames for the next boundary where they may go, after
    /// any frames queued before.
    pub(crate) fn insert(&mut self, frames: &[u8]) {
        match &mut self.insert {
            Some(queued) => queued.extend_from_slice(frames),
            None => self.insert = Some(Box::new(frames.to_vec())),
        }
    }

    /// Whether frames are queued.
    pub(crate) fn has_insert(&self) -> bool {
        self.insert.is_some()
    }

    /// How many queued bytes may go at the tracker's position: all of them
    /// between messages; between the fragments of one, only the control
    /// frames at the head of the queue, since a data frame there would
    /// interleave with the message (RFC 6455 §5.4). 0: none.
    fn fitting(&self) -> usize {
        let Some(insert) = &self.insert else {
            return 0;
        };
        match self.tracker.boundary() {
            Some(Boundary::Message) => insert.len(),
            Some(Boundary::Frame) => leading_control_frames(insert),
            _ => 0,
        }
    }

    /// Observes a chunk just read and says what to write. Seen before it is
    /// written, so a frame that breaks the rules never reaches the peer;
    /// every byte seen is then written, unless it follows a Close that went
    /// out.
    pub(crate) fn on_chunk(&mut self, data: &[u8]) -> Result<Chunk, FrameError> {
        // Any byte answers a ping.
        self.ping_sent = NEVER;
        if self.discarding || self.supersede() {
            // Observed (for the peer's Close reply), never written.
            self.tracker.observe(data)?;
            return Ok(Chunk::Drop);
        }
        if self.splices() {
            // Rare (once per insertion): the chunk with the frames spliced
            // in goes out as a spill.
            return Ok(match insert_in_chunk(self, data)? {
                Some(spliced) => Chunk::Replace(spliced),
                None => Chunk::Pass,
            });
        }
        self.tracker.observe(data)?;
        Ok(Chunk::Pass)
    }
}

/// Observes `data` and, if a boundary where the queued frames fit comes
/// within it, returns the chunk with them spliced in there.
fn insert_in_chunk(framing: &mut FrameHook, data: &[u8]) -> Result<Option<Box<[u8]>>, FrameError> {
    let mut at = 0;
    let mut fits = framing.fitting();
    while fits == 0 && at < data.len() {
        at += framing.tracker.observe_to_boundary(&data[at..])?;
        if framing.supersede() {
            // The peer's Close just went by: it goes out, nothing after it.
            framing.tracker.observe(&data[at..])?;
            return Ok(Some(data[..at].into()));
        }
        fits = framing.fitting();
    }
    // Taken before the rest is observed, so that a polite close counts only
    // the messages before it as forwarded.
    let insert = if fits > 0 {
        framing.take_insert(fits)
    } else {
        None
    };
    // The rest of the chunk, after the boundary, is observed too: the
    // tracker always ends up having seen the whole chunk.
    framing.tracker.observe(&data[at..])?;
    let Some(insert) = insert else {
        return Ok(None);
    };
    let rest = if framing.discarding {
        &[][..]
    } else {
        &data[at..]
    };
    Ok(Some([&data[..at], &insert[..], rest].concat().into()))
}

/// The length of the control frames that open `frames` (whole frames, as
/// queued): what may go between the fragments of a message.
fn leading_control_frames(frames: &[u8]) -> usize {
    let mut at = 0;
    while let Some(&[b0, b1]) = frames.get(at..at + 2) {
        // A control frame's payload is at most 125 bytes (RFC 6455 §5.5), so
        // its length is in the second byte.
        let len = usize::from(b1 & 0x7f);
        if b0 & 0x08 == 0 || len > 125 {
            break;
        }
        let key = if b1 & 0x80 != 0 { 4 } else { 0 };
        let end = at + 2 + key + len;
        if end > frames.len() {
            break;
        }
        at = end;
    }
    at
}
