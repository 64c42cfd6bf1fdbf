//! One direction of a tunnel: read from one side, write to the other.
//!
//! Unlike tokio's `CopyBuffer`, a `Transfer` owns no buffer while the
//! direction is idle. Each poll reads into a buffer the caller lends for the
//! duration of that poll (on its stack); only the bytes the writer did not
//! accept are copied to the heap, and that copy is freed as soon as it has
//! been written. Every chunk passes through `poll_copy` once, in order, right
//! after it is read: there the optional [`FrameHook`] sees it, before it is
//! written, and says whether to write it as read, drop it, or write it with
//! frames spliced in. The copier itself knows nothing of frames.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::hook::{Chunk, FrameHook};
use super::last_write::LastWrite;
use crate::frame::FrameError;

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

/// How a direction's writer ends once its reader sent EOF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Shut down (`shutdown(SHUT_WR)`): the peer sees EOF now, whatever the
    /// caller does with the stream afterwards.
    Shutdown,
    /// As `Shutdown` until told to skip: the tunnel closes its streams when
    /// it ends.
    ClosedOnEnd,
    /// Not shut down: the other direction is done, so the tunnel ends with
    /// this one and closing the socket sends the FIN (both reads reached
    /// EOF, so the close sends no RST).
    Skip,
}

/// Bytes the writer did not accept yet. Lives only while the writer is slow.
#[derive(Debug)]
struct Spill {
    buf: Box<[u8]>,
    pos: usize,
    /// The reader's error that came right after these bytes: reported once
    /// they are written.
    then: Option<io::Error>,
}

impl Spill {
    fn new(buf: Box<[u8]>, then: Option<io::Error>) -> Box<Self> {
        Box::new(Self { buf, pos: 0, then })
    }
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

/// What the tunnel's sans-IO decisions (deadlines, parting) need to know of
/// one direction, taken from its [`Transfer`]: tests build it by hand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flow {
    /// The reader sent EOF.
    pub(crate) read_done: bool,
    /// The writer was shut down after EOF.
    pub(crate) done: bool,
    /// Bytes read wait for the writer.
    pub(crate) has_spill: bool,
}

/// The state of one direction: 24 bytes and no buffer while idle.
#[derive(Debug)]
pub(crate) struct Transfer {
    // Boxed together with its position: one pointer while idle.
    spill: Option<Box<Spill>>,
    state: State,
    read_done: bool,
    need_flush: bool,
    /// How the writer ends after EOF; one byte, in what was padding.
    ending: Ending,
    /// The low 32 bits of `bytes` when a host last took the progress
    /// (`Tunnel::take_progress`): in the padding, so the direction stays
    /// 24 bytes. A poll moves at most `CHUNKS_PER_POLL` reads, far below
    /// 4 GiB, so the wrapping difference is exact when taken every poll.
    taken: u32,
    bytes: u64,
}

impl Transfer {
    pub(crate) fn new() -> Self {
        Self {
            spill: None,
            state: State::Copying,
            read_done: false,
            need_flush: false,
            ending: Ending::Shutdown,
            taken: 0,
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

    /// Bytes written since the last [`take`](Self::take).
    pub(crate) fn untaken(&self) -> u64 {
        u64::from((self.bytes as u32).wrapping_sub(self.taken))
    }

    /// Marks every byte written so far as taken.
    pub(crate) fn take(&mut self) {
        self.taken = self.bytes as u32;
    }

    /// Ends without shutting the writer down once everything is written
    /// and flushed, if the tunnel closes its streams when it ends: called
    /// once the other direction is done.
    pub(crate) fn skip_shutdown(&mut self) {
        if self.ending == Ending::ClosedOnEnd {
            self.ending = Ending::Skip;
        }
    }

    /// Lets [`skip_shutdown`](Self::skip_shutdown) take effect: the
    /// tunnel's streams are closed as soon as it ends.
    pub(crate) fn set_closes_on_end(&mut self) {
        self.ending = Ending::ClosedOnEnd;
    }

    /// Whether the reader sent EOF.
    pub(crate) fn read_done(&self) -> bool {
        self.read_done
    }

    /// Whether the writer has been shut down after EOF.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// What the tunnel's decisions need to know of this direction.
    pub(crate) fn flow(&self) -> Flow {
        Flow {
            read_done: self.read_done,
            done: self.is_done(),
            has_spill: self.has_spill(),
        }
    }

    /// Copies until the reader or the writer is pending, or until the
    /// direction is done (EOF read, everything written, writer shut down).
    ///
    /// `buf` is scratch space for this call only: nothing in it is expected
    /// to survive the call.
    pub(crate) fn poll_copy<R, W, L>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        buf: &mut [MaybeUninit<u8>],
        mut clock: Clock<'_>,
        mut frames: Option<&mut FrameHook>,
    ) -> Poll<Result<(), CopyError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
        L: LastWrite<W>,
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
                    if self.ending == Ending::Skip {
                        self.state = State::Done;
                        progressed(&mut clock);
                        continue;
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
                let then = spill.then.take();
                self.spill = None;
                self.need_flush = true;
                if let Some(e) = then {
                    return Poll::Ready(Err(CopyError::Read(e)));
                }
            }

            // Everything observed is written now, so the tracker's position
            // is the peer's: queued frames that fit go out before more is read.
            if let Some(hook) = frames.as_deref_mut() {
                if let Some(insert) = hook.take_fitting(self.read_done) {
                    self.spill = Some(Spill::new(insert, None));
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
                            Poll::Ready(Ok(())) => {
                                self.need_flush = false;
                                // Ends a stall an earlier pending flush began:
                                // otherwise it would run on until the next
                                // write and fire the send timeout.
                                progressed(&mut clock);
                            }
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(CopyError::Write(e))),
                            Poll::Pending => stalled(&mut clock),
                        }
                    }
                    return Poll::Pending;
                }
            }
            if rb.filled().is_empty() {
                self.read_done = true;
                continue;
            }
            // A short read may have left the EOF behind it: look once more,
            // so that the last bytes go out with the shutdown (`LastWrite`).
            // For a tokio socket this costs no syscall unless the reactor
            // saw the peer's FIN: a short read clears its readiness.
            let mut then = None;
            if rb.remaining() > 0 {
                let read = rb.filled().len();
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().len() == read => self.read_done = true,
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                    // Reported once the bytes before it are written.
                    Poll::Ready(Err(e)) => then = Some(e),
                }
            }
            let data = rb.filled();
            chunks += 1;
            if let Some((stamps, started)) = &mut clock {
                if stamps.track_reads {
                    stamps.last_read = nanos_since(*started);
                }
            }
            if let Some(hook) = frames.as_deref_mut() {
                match hook.on_chunk(data) {
                    Ok(Chunk::Pass) => {}
                    Ok(Chunk::Drop) => match then {
                        Some(e) => return Poll::Ready(Err(CopyError::Read(e))),
                        None => continue,
                    },
                    Ok(Chunk::Replace(buf)) => {
                        self.spill = Some(Spill::new(buf, then));
                        continue;
                    }
                    Err(e) => return Poll::Ready(Err(CopyError::Frame(e))),
                }
            }

            let last = self.read_done;
            let mut off = 0;
            while off < data.len() {
                let rest = &data[off..];
                let written = if last {
                    L::poll_write_last(writer, cx, rest)
                } else {
                    Pin::new(&mut *writer).poll_write(cx, rest)
                };
                match written {
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
                        self.spill = Some(Spill::new(Box::from(&data[off..]), then));
                        stalled(&mut clock);
                        return Poll::Pending;
                    }
                }
            }
            self.need_flush = true;
            if let Some(e) = then {
                return Poll::Ready(Err(CopyError::Read(e)));
            }
        }
    }
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
    use crate::frame::{Boundary, CloseFrame, FrameTracker, Role};
    use crate::tunnel::Plain;

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
        framing: &mut FrameHook,
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
            match transfer.poll_copy::<_, _, Plain>(
                &mut cx,
                reader,
                out,
                &mut buf,
                None,
                Some(framing),
            ) {
                Poll::Pending if !reader.resumed && reader.pos == reader.pause => {
                    return Poll::Pending;
                }
                Poll::Pending => {}
                ready => return ready,
            }
        }
        Poll::Pending
    }

    /// A writer that counts its shutdowns.
    #[derive(Default)]
    struct Counting {
        out: Vec<u8>,
        shutdowns: u32,
        /// What went through `LastWrite`, and whether it was before a shutdown.
        last: Vec<u8>,
        last_before_shutdown: bool,
        /// Writes refused (pending) before any is taken.
        refuse: u32,
    }

    /// Records the last bytes apart, as a socket would send them with the FIN.
    struct Marking;

    impl LastWrite<Counting> for Marking {
        fn poll_write_last(
            writer: &mut Counting,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut *writer).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = written {
                writer.last.extend_from_slice(&buf[..n]);
                writer.last_before_shutdown = writer.shutdowns == 0;
            }
            written
        }
    }

    /// Reads its steps in order: bytes, an error, then EOF.
    struct Script(std::collections::VecDeque<io::Result<&'static [u8]>>);

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.pop_front() {
                Some(Ok(bytes)) => buf.put_slice(bytes),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => {}
            }
            Poll::Ready(Ok(()))
        }
    }

    fn script(steps: Vec<io::Result<&'static [u8]>>) -> Script {
        Script(steps.into_iter().collect())
    }

    /// Polls one copy of `reader` into `writer` to its end (bounded).
    fn run(reader: &mut Script, writer: &mut Counting) -> Result<(), CopyError> {
        let mut transfer = Transfer::new();
        let mut buf = [MaybeUninit::<u8>::uninit(); 64];
        let waker = Arc::new(Noop).into();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..8 {
            let polled =
                transfer.poll_copy::<_, _, Marking>(&mut cx, reader, writer, &mut buf, None, None);
            if let Poll::Ready(done) = polled {
                return done;
            }
        }
        panic!("the copy did not end");
    }

    #[test]
    fn bytes_the_eof_follows_in_one_read_go_out_as_the_last_write() {
        let mut reader = script(vec![Ok(b"close")]);
        let mut writer = Counting::default();
        run(&mut reader, &mut writer).unwrap();
        assert_eq!(writer.out, b"close");
        assert_eq!(writer.last, b"close");
        assert!(writer.last_before_shutdown);
        assert_eq!(writer.shutdowns, 1);

        // The lookahead joins what follows; the EOF after that comes alone.
        let mut reader = script(vec![Ok(b"hello"), Ok(b"close")]);
        let mut writer = Counting::default();
        run(&mut reader, &mut writer).unwrap();
        assert_eq!(writer.out, b"helloclose");
        assert!(writer.last.is_empty());
        assert_eq!(writer.shutdowns, 1);
    }

    #[test]
    fn a_read_error_behind_bytes_is_reported_after_they_are_written() {
        let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
        for refuse in [0, 2] {
            let mut reader = script(vec![Ok(b"hello"), Err(reset())]);
            let mut writer = Counting {
                refuse,
                ..Counting::default()
            };
            let err = run(&mut reader, &mut writer).unwrap_err();
            assert!(
                matches!(&err, CopyError::Read(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "{err:?}"
            );
            assert_eq!(writer.out, b"hello", "refused {refuse} writes first");
            assert!(writer.last.is_empty());
            assert_eq!(writer.shutdowns, 0);
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.refuse > 0 {
                self.refuse -= 1;
                return Poll::Pending;
            }
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shutdowns += 1;
            Poll::Ready(Ok(()))
        }
    }

    /// Copies `hello` then EOF; the writer's shutdown count.
    fn shutdowns_after_eof(setup: impl FnOnce(&mut Transfer)) -> u32 {
        let mut transfer = Transfer::new();
        setup(&mut transfer);
        let mut reader: &[u8] = b"hello";
        let mut writer = Counting::default();
        let mut buf = [MaybeUninit::<u8>::uninit(); 64];
        let waker = Arc::new(Noop).into();
        let mut cx = Context::from_waker(&waker);
        let done = transfer.poll_copy::<_, _, Plain>(
            &mut cx,
            &mut reader,
            &mut writer,
            &mut buf,
            None,
            None,
        );
        assert!(matches!(done, Poll::Ready(Ok(()))));
        assert!(transfer.is_done());
        assert_eq!(writer.out, b"hello");
        writer.shutdowns
    }

    #[test]
    fn the_writer_is_shut_down_after_eof_unless_the_tunnel_closes_it_anyway() {
        assert_eq!(shutdowns_after_eof(|_| {}), 1);
        // Asked to skip, but the streams outlive the tunnel: shut down.
        assert_eq!(shutdowns_after_eof(Transfer::skip_shutdown), 1);
        assert_eq!(shutdowns_after_eof(Transfer::set_closes_on_end), 1);
        // The other direction is done and the tunnel closes its streams.
        let skipped = shutdowns_after_eof(|t| {
            t.set_closes_on_end();
            t.skip_shutdown();
        });
        assert_eq!(skipped, 0);
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
            let mut framing = FrameHook::new(FrameTracker::new(Role::Client));
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
            let mut framing = FrameHook::new(FrameTracker::new(Role::Server));
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
            let mut framing = FrameHook::new(FrameTracker::new(Role::Client));
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
