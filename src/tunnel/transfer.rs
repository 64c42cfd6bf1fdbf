//! One direction of a tunnel: read from one side, write to the other.
//!
//! Unlike tokio's `CopyBuffer`, a `Transfer` owns no buffer while the
//! direction is idle. Each poll reads into a buffer the caller lends for the
//! duration of that poll (on its stack); only the bytes the writer did not
//! accept are copied to the heap, and that copy is freed as soon as it has
//! been written. Every chunk passes through `poll_copy` once, in order, right
//! after it is read: there the optional [`FrameTracker`] sees it, before it
//! is written.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::frame::{Boundary, FrameError, FrameTracker};

/// A time stamp: nanoseconds since the tunnel started. Eight bytes instead
/// of an `Instant`'s sixteen keep the tunnel future small.
pub(crate) type Nanos = u64;

/// No stamp.
pub(crate) const NEVER: Nanos = Nanos::MAX;

/// Nanoseconds from `started` to now.
pub(crate) fn nanos_since(started: Instant) -> Nanos {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(NEVER - 1)
}

/// Chunks one direction may copy in one poll before yielding, so that an
/// always-ready stream cannot starve the other direction, the timers or
/// other tasks (tokio's own streams also stop at the cooperative budget).
const CHUNKS_PER_POLL: u32 = 32;

/// Which half of the copy failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
    /// The bytes read broke WebSocket framing (tracked tunnels only).
    Frame(FrameError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading and writing; `read_done` tells whether EOF was seen.
    Copying,
    /// EOF seen and everything written: flushing then shutting the writer down.
    ShuttingDown,
    /// The writer is shut down.
    Done,
}

/// Bytes the writer did not accept yet. Lives only while the writer is slow.
#[derive(Debug)]
struct Spill {
    buf: Box<[u8]>,
    pos: usize,
}

/// When a direction last read and since when its writer stalls; kept only by
/// tunnels that have a timeout (boxed with their timer).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamps {
    pub(crate) last_read: Nanos,
    pub(crate) stalled_since: Nanos,
    /// Whether a timeout needs `last_read` (idle or this side's read).
    pub(crate) track_reads: bool,
    /// Whether a timeout needs `stalled_since` (send).
    pub(crate) track_stalls: bool,
}

impl Stamps {
    pub(crate) fn new(track_reads: bool, track_stalls: bool) -> Self {
        Self {
            last_read: 0,
            stalled_since: NEVER,
            track_reads,
            track_stalls,
        }
    }

    /// Since when the writer has refused to make progress, if it has.
    pub(crate) fn stalled_since(&self) -> Option<Nanos> {
        (self.stalled_since != NEVER).then_some(self.stalled_since)
    }
}

/// Where a poll records time stamps: the stamps and the tunnel start.
pub(crate) type Clock<'a> = Option<(&'a mut Stamps, Instant)>;

fn stalled(clock: &mut Clock<'_>) {
    if let Some((stamps, started)) = clock {
        if stamps.track_stalls && stamps.stalled_since == NEVER {
            stamps.stalled_since = nanos_since(*started);
        }
    }
}

fn progressed(clock: &mut Clock<'_>) {
    if let Some((stamps, started)) = clock {
        if stamps.stalled_since != NEVER {
            stamps.stalled_since = NEVER;
            // The reader was not read while the writer stalled: its silence
            // counts again from now, not from before the stall.
            if stamps.track_reads {
                stamps.last_read = stamps.last_read.max(nanos_since(*started));
            }
        }
    }
}

/// The frames of one direction of a tunnel that tracks them: the tracker,
/// and the frames waiting to be inserted at the next boundary.
#[derive(Debug)]
pub(crate) struct Framing {
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
    /// the frame box stays small for every idle tunnel).
    kept_messages: u32,
}

impl Framing {
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
    fn take_fitting(&mut self, eof: bool) -> Option<Box<[u8]>> {
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
        if self.insert_fits() {
            self.take_insert()
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

    /// Marks the queued frames as gone out.
    fn take_insert(&mut self) -> Option<Box<[u8]>> {
        let insert = self.insert.take();
        if insert.is_some() && self.discard_after_insert {
            self.start_discarding();
        }
        insert.map(|frames| frames.into_boxed_slice())
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

    /// Whether the queued frames may go at the tracker's position: control
    /// frames at any boundary, data frames only between messages (RFC 6455
    /// §5.4).
    fn insert_fits(&self) -> bool {
        let Some(insert) = &self.insert else {
            return false;
        };
        let control = insert.first().is_some_and(|b| b & 0x08 != 0);
        match self.tracker.boundary() {
            Some(Boundary::Message) => true,
            Some(Boundary::Frame) => control,
            _ => false,
        }
    }
}

/// The state of one direction: 24 bytes and no buffer while idle.
#[derive(Debug)]
pub(crate) struct Transfer {
    // Boxed together with its position: one pointer while idle.
    spill: Option<Box<Spill>>,
    state: State,
    read_done: bool,
    need_flush: bool,
    bytes: u64,
}

impl Transfer {
    pub(crate) fn new() -> Self {
        Self {
            spill: None,
            state: State::Copying,
            read_done: false,
            need_flush: false,
            bytes: 0,
        }
    }

    /// Whether bytes read wait for the writer.
    pub(crate) fn has_spill(&self) -> bool {
        self.spill.is_some()
    }

    /// Bytes the writer accepted so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the reader sent EOF.
    pub(crate) fn read_done(&self) -> bool {
        self.read_done
    }

    /// Whether the writer has been shut down after EOF.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Copies until the reader or the writer is pending, or until the
    /// direction is done (EOF read, everything written, writer shut down).
    ///
    /// `buf` is scratch space for this call only: nothing in it is expected
    /// to survive the call.
    pub(crate) fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        buf: &mut [MaybeUninit<u8>],
        mut clock: Clock<'_>,
        mut frames: Option<&mut Framing>,
    ) -> Poll<Result<(), CopyError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut chunks = 0;
        loop {
            match self.state {
                State::Copying => {}
                State::ShuttingDown => {
                    if self.need_flush {
                        match Pin::new(&mut *writer).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(CopyError::Write(e))),
                            Poll::Pending => {
                                stalled(&mut clock);
                                return Poll::Pending;
                            }
                        }
                    }
                    match Pin::new(&mut *writer).poll_shutdown(cx) {
                        Poll::Ready(Ok(())) => {
                            self.state = State::Done;
                            progressed(&mut clock);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(CopyError::Write(e))),
                        Poll::Pending => {
                            stalled(&mut clock);
                            return Poll::Pending;
                        }
                    }
                    continue;
                }
                State::Done => return Poll::Ready(Ok(())),
            }

            // Write out what an earlier poll could not, before reading more:
            // reading on while the writer is slow would only grow the spill.
            if let Some(spill) = &mut self.spill {
                while spill.pos < spill.buf.len() {
                    match Pin::new(&mut *writer).poll_write(cx, &spill.buf[spill.pos..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(CopyError::Write(write_zero())));
                        }
                        Poll::Ready(Ok(n)) => {
                            spill.pos += n;
                            self.bytes += n as u64;
                            progressed(&mut clock);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(CopyError::Write(e))),
                        Poll::Pending => {
                            stalled(&mut clock);
                            return Poll::Pending;
                        }
                    }
                }
                // Free it now: an idle direction holds no buffer.
                self.spill = None;
                self.need_flush = true;
            }

            // Everything observed is written now, so the tracker's position
            // is the peer's: queued frames that fit go out before more is read.
            if let Some(framing) = frames.as_deref_mut() {
                if let Some(insert) = framing.take_fitting(self.read_done) {
                    self.spill = Some(Box::new(Spill {
                        buf: insert,
                        pos: 0,
                    }));
                    continue;
                }
            }

            if self.read_done {
                self.state = State::ShuttingDown;
                continue;
            }
            if chunks == CHUNKS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }

            let mut rb = ReadBuf::uninit(&mut *buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(CopyError::Read(e))),
                Poll::Pending => {
                    // Flush when the reader has nothing more, so that a
                    // buffering writer does not sit on bytes the peer waits for.
                    if self.need_flush {
                        match Pin::new(&mut *writer).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(CopyError::Write(e))),
                            Poll::Pending => stalled(&mut clock),
                        }
                    }
                    return Poll::Pending;
                }
            }
            let data = rb.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            chunks += 1;
            if let Some(framing) = frames.as_deref_mut() {
                // Any byte answers a ping.
                framing.ping_sent = NEVER;
            }
            if let Some((stamps, started)) = &mut clock {
                if stamps.track_reads {
                    stamps.last_read = nanos_since(*started);
                }
            }
            // Seen before it is written, so a frame that breaks the rules
            // never reaches the peer; every byte seen is then written.
            if let Some(framing) = frames.as_deref_mut() {
                if framing.discarding || framing.supersede() {
                    // Observed (for the peer's Close reply), never written.
                    if let Err(e) = framing.tracker.observe(data) {
                        return Poll::Ready(Err(CopyError::Frame(e)));
                    }
                    continue;
                }
                if framing.splices() {
                    match insert_in_chunk(framing, data) {
                        Ok(None) => {}
                        Ok(Some(spliced)) => {
                            // Rare (once per insertion): the chunk with the
                            // frames spliced in goes out as a spill.
                            self.spill = Some(Box::new(Spill {
                                buf: spliced,
                                pos: 0,
                            }));
                            continue;
                        }
                        Err(e) => return Poll::Ready(Err(CopyError::Frame(e))),
                    }
                } else if let Err(e) = framing.tracker.observe(data) {
                    return Poll::Ready(Err(CopyError::Frame(e)));
                }
            }

            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *writer).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(CopyError::Write(write_zero()))),
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.bytes += n as u64;
                        progressed(&mut clock);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(CopyError::Write(e))),
                    Poll::Pending => {
                        // The caller's buffer does not outlive this call:
                        // keep the unwritten rest until the writer is ready.
                        self.spill = Some(Box::new(Spill {
                            buf: Box::from(&data[off..]),
                            pos: 0,
                        }));
                        stalled(&mut clock);
                        return Poll::Pending;
                    }
                }
            }
            self.need_flush = true;
        }
    }
}

/// Observes `data` and, if a boundary where the queued frames fit comes
/// within it, returns the chunk with them spliced in there.
fn insert_in_chunk(framing: &mut Framing, data: &[u8]) -> Result<Option<Box<[u8]>>, FrameError> {
    let mut at = 0;
    let mut fits = framing.insert_fits();
    while !fits && at < data.len() {
        at += framing.tracker.observe_to_boundary(&data[at..])?;
        if framing.supersede() {
            // The peer's Close just went by: it goes out, nothing after it.
            framing.tracker.observe(&data[at..])?;
            return Ok(Some(data[..at].into()));
        }
        fits = framing.insert_fits();
    }
    // Taken before the rest is observed, so that a polite close counts only
    // the messages before it as forwarded.
    let insert = if fits { framing.take_insert() } else { None };
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

fn write_zero() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "write zero byte into writer")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use proptest::prelude::*;

    use super::*;
    use crate::frame::proptests::{build, item};
    use crate::frame::{CloseFrame, Role};

    /// Reads `data`, but is pending at `pause` until `resumed`.
    struct Paused {
        data: Vec<u8>,
        pos: usize,
        pause: usize,
        resumed: bool,
    }

    impl AsyncRead for Paused {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let end = if self.resumed {
                self.data.len()
            } else {
                self.pause
            };
            if self.pos == end && !self.resumed {
                return Poll::Pending;
            }
            let n = (end - self.pos).min(buf.remaining());
            buf.put_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    /// Copies `reader` into `out` with `chunk`-byte reads until pending or done.
    fn copy(
        transfer: &mut Transfer,
        framing: &mut Framing,
        reader: &mut Paused,
        out: &mut Vec<u8>,
        chunk: usize,
    ) -> Poll<Result<(), CopyError>> {
        let waker = Arc::new(Noop).into();
        let mut cx = Context::from_waker(&waker);
        let mut buf = vec![MaybeUninit::uninit(); chunk];
        // Bounded: each pending round but the pause copied a full budget of
        // chunks, at least one byte each.
        for _ in 0..=reader.data.len() + 2 {
            match transfer.poll_copy(&mut cx, reader, out, &mut buf, None, Some(framing)) {
                Poll::Pending if !reader.resumed && reader.pos == reader.pause => {
                    return Poll::Pending;
                }
                Poll::Pending => {}
                ready => return ready,
            }
        }
        Poll::Pending
    }

    proptest! {
        #[test]
        fn inserted_frame_lands_on_the_first_fitting_boundary(
            items in proptest::collection::vec(item(), 0..6),
            key in any::<[u8; 4]>(),
            pause in any::<prop::sample::Index>(),
            chunk in 1usize..300,
            control in any::<bool>(),
        ) {
            let stream = build(Role::Client, &items, key);
            let pause = pause.index(stream.wire.len() + 1);
            let insert = if control {
                CloseFrame::new(1001, "bye").unwrap().encode(Some([1, 2, 3, 4]))
            } else {
                vec![0x82, 0x81, 5, 6, 7, 8, 0xaa]
            };
            let mut reader = Paused { data: stream.wire.clone(), pos: 0, pause, resumed: false };
            let mut transfer = Transfer::new();
            let mut framing = Framing::new(FrameTracker::new(Role::Client));
            let mut out = Vec::new();

            let first = copy(&mut transfer, &mut framing, &mut reader, &mut out, chunk);
            prop_assert!(first.is_pending());
            prop_assert_eq!(&out[..], &stream.wire[..pause]);
            framing.insert(&insert);
            reader.resumed = true;
            let done = copy(&mut transfer, &mut framing, &mut reader, &mut out, chunk);
            prop_assert!(matches!(done, Poll::Ready(Ok(()))), "{:?}", done);
            prop_assert!(!framing.has_insert());

            // Where it should land: the first boundary at or after the pause
            // where it may go (the start counts as a message boundary).
            let fits = |b: Boundary| control || b == Boundary::Message;
            let at = std::iter::once((0, Boundary::Message))
                .chain(stream.boundaries.iter().copied())
                .find(|&(at, b)| at >= pause && fits(b))
                .map(|(at, _)| at)
                .unwrap_or(stream.wire.len());
            let mut expected = stream.wire[..at].to_vec();
            expected.extend_from_slice(&insert);
            expected.extend_from_slice(&stream.wire[at..]);
            prop_assert_eq!(&out, &expected);
            prop_assert_eq!(transfer.bytes(), expected.len() as u64);

            // The result is a valid stream, the peer's messages all there.
            let mut check = FrameTracker::new(Role::Client);
            check.observe(&out).unwrap();
            let inserted_data = u64::from(!control);
            prop_assert_eq!(check.messages(), stream.messages + inserted_data);
            prop_assert_eq!(framing.tracker.messages(), stream.messages);
        }

        /// A polite Close toward a peer: it lands on the first boundary at or
        /// after the request, nothing follows it, and when the other peer's
        /// own Close gets there first, that one goes alone: the receiving
        /// peer sees exactly one Close, whatever the chunking.
        #[test]
        fn a_polite_close_is_the_one_close_and_the_last_frame(
            items in proptest::collection::vec(item(), 0..6),
            pause in any::<prop::sample::Index>(),
            chunk in 1usize..300,
        ) {
            let stream = build(Role::Server, &items, [0; 4]);
            let pause = pause.index(stream.wire.len() + 1);
            let ours = CloseFrame::new(1001, "bye").unwrap().encode(None);
            let mut reader = Paused { data: stream.wire.clone(), pos: 0, pause, resumed: false };
            let mut transfer = Transfer::new();
            let mut framing = Framing::new(FrameTracker::new(Role::Server));
            let mut out = Vec::new();
            prop_assert!(copy(&mut transfer, &mut framing, &mut reader, &mut out, chunk).is_pending());
            framing.insert_then_discard(&ours);
            reader.resumed = true;
            let done = copy(&mut transfer, &mut framing, &mut reader, &mut out, chunk);
            prop_assert!(matches!(done, Poll::Ready(Ok(()))), "{:?}", done);

            // Where the peer's first Close ends, if it sent one.
            let mut probe = FrameTracker::new(Role::Server);
            let peer_close = (0..stream.wire.len()).find_map(|i| {
                probe.observe(&stream.wire[i..=i]).ok()?;
                probe.close_seen().then_some(i + 1)
            });
            let boundary = std::iter::once(0)
                .chain(stream.boundaries.iter().map(|&(at, _)| at))
                .find(|&at| at >= pause);
            let expected = match (peer_close, boundary) {
                // The peer's Close went by first: it is the one.
                (Some(end), _) if end <= pause => stream.wire[..pause].to_vec(),
                (Some(end), Some(at)) if end == at => stream.wire[..at].to_vec(),
                (_, Some(at)) => [&stream.wire[..at], &ours[..]].concat(),
                // No boundary after the request (a cut frame): nothing goes.
                (_, None) => stream.wire.clone(),
            };
            prop_assert_eq!(&out, &expected);
        }

        /// The proxy's Close toward the upstream waits for the client's end:
        /// everything the client sends passes, and the proxy's Close goes
        /// last only when the client ended without one of its own.
        #[test]
        fn a_close_deferred_to_eof_follows_all_the_client_sent(
            items in proptest::collection::vec(item(), 0..6),
            key in any::<[u8; 4]>(),
            pause in any::<prop::sample::Index>(),
            chunk in 1usize..300,
        ) {
            let stream = build(Role::Client, &items, key);
            let pause = pause.index(stream.wire.len() + 1);
            let ours = CloseFrame::new(1001, "bye").unwrap().encode(Some([1, 2, 3, 4]));
            let mut reader = Paused { data: stream.wire.clone(), pos: 0, pause, resumed: false };
            let mut transfer = Transfer::new();
            let mut framing = Framing::new(FrameTracker::new(Role::Client));
            let mut out = Vec::new();
            prop_assert!(copy(&mut transfer, &mut framing, &mut reader, &mut out, chunk).is_pending());
            framing.insert_at_eof(&ours);
            reader.resumed = true;
            let done = copy(&mut transfer, &mut framing, &mut reader, &mut out, chunk);
            prop_assert!(matches!(done, Poll::Ready(Ok(()))), "{:?}", done);
            let expected = if stream.close.is_some() {
                stream.wire.clone()
            } else {
                [&stream.wire[..], &ours[..]].concat()
            };
            prop_assert_eq!(&out, &expected);
            prop_assert!(!framing.has_insert());
        }
    }
}
