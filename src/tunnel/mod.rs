//! The tunnel: moves bytes both ways between two connected streams after
//! the WebSocket handshake, with nginx/HAProxy-style timeouts, half-close,
//! and no buffer held while idle.
//!
//! The tunnel knows bytes and timers, never HTTP. It knows WebSocket frames
//! only when asked to ([`TunnelConfig::track_frames`]): then a
//! [`FrameTracker`] per direction reads the frame
//! headers of the bytes it forwards, for message counts, the Close frames in
//! [`TunnelStats::frames`], and a [`TunnelError::Framing`] end for a side
//! that breaks the rules.
//!
//! [`tunnel()`] (or [`Tunnel`], to keep a handle or insert frames) moves
//! bytes both ways until both sides sent EOF, a timeout fires, the
//! `shutdown` future completes or an I/O error occurs, then shuts both sides
//! down and returns [`TunnelStats`]: bytes each way, duration, who sent EOF
//! first, and a [`TunnelEnd`] saying why it ended. EOF on one side becomes a
//! write shutdown on the other while the other direction keeps flowing.
//! Bytes read past the handshake go first: wrap that side in
//! [`Prefixed::new`].
//!
//! # Timeouts
//!
//! All off by default, all set on [`TunnelConfig`], each named after the
//! directive it mirrors:
//!
//! | [`TunnelConfig`] | mirrors |
//! |---|---|
//! | [`idle_timeout`](TunnelConfig::idle_timeout) | HAProxy `timeout tunnel`: no bytes either way |
//! | [`client_read_timeout`](TunnelConfig::client_read_timeout), [`upstream_read_timeout`](TunnelConfig::upstream_read_timeout) | nginx `proxy_read_timeout`, per side |
//! | [`send_timeout`](TunnelConfig::send_timeout) | nginx `proxy_send_timeout`: a write that makes no progress |
//! | [`linger_timeout`](TunnelConfig::linger_timeout) | HAProxy `timeout client-fin` / `server-fin`: the other direction's silence after one side's EOF |
//! | [`max_lifetime`](TunnelConfig::max_lifetime) | none: an upper bound on the tunnel's age |
//! | [`close_linger`](TunnelConfig::close_linger) | nginx `lingering_timeout`: waiting for Close replies (5 s) |
//! | [`ping`](TunnelConfig::ping) | HAProxy/Envoy WebSocket keepalive pings |
//!
//! A tunnel with any of them holds one timer in one heap block, created on
//! its first poll and moved lazily: traffic only stamps the time, and the
//! timer is reset when it fires early, so there is no timer work per read.
//!
//! # Layout
//!
//! As in quinn-proto, the decisions are sans-IO and the future only pumps:
//! `transfer` is a plain copier of one direction, with the frame `hook`
//! (tracking, inserting frames, dropping after a Close) called on each
//! chunk; `deadline` says which timeout, ping or linger comes next from
//! time stamps alone; `ping` and `parting` decide the pings and the polite
//! close. `Tunnel::poll` copies, hands over what happened, and arms the one
//! timer the deadlines ask for (`timers`). `config` holds [`TunnelConfig`].
//!
//! # Memory
//!
//! tokio's `copy_bidirectional` keeps two 8 KiB buffers per connection for
//! its whole life. A [`Tunnel`] reads into a buffer on the stack of its
//! `poll` call instead, writes what it read before returning, and copies to
//! the heap only the bytes a slow writer did not accept, freeing them once
//! written. So the future holds no copy buffer (tests pin it under 1 KiB,
//! and the whole spawned tunnel task of a [`Proxy`](crate::Proxy) over TCP at
//! 272 bytes at most). A tunnel that tracks frames allocates one box for both
//! directions' trackers, and a tunnel with any timeout one block for its
//! timer; unit tests keep the two at most 152 and 232 bytes, just under
//! allocator size classes, because each byte past a class costs every idle
//! tunnel the next class's size. An idle tunnel therefore costs little more
//! than its task and its two sockets' tokio registrations: about 1.5–1.6 KiB
//! of RSS against about 18 KiB with `copy_bidirectional`
//! (`cargo run --release --example idle_tunnels -- --mode tunnel|copy`).
//! Most of what remains is tokio's (the task cell and two socket
//! registrations); a host keeps it lowest by spawning the tunnel as its own
//! task once the upstream is connected, so that no handshake or connect
//! state stays alive in the long-lived task.
//!
//! # Reads and writes
//!
//! The stack buffer is 64 KiB, so a 64 KiB WebSocket message moves in one
//! read and one write per direction where `copy_bidirectional` needs eight
//! of each and HAProxy's 16 KiB buffers four: about 2.7× the messages per
//! CPU-second of `copy_bidirectional` at that size, and on par at 1 KiB
//! (`cargo bench --bench tunnel`). Per chunk and direction the tunnel makes
//! one read and one write, plus a readiness wait shared by every socket
//! ready at once: tokio clears readiness on a short read, so it never issues
//! the extra read that fails with `EAGAIN`. Fewer syscalls would need
//! `splice(2)`, which generic streams (TLS, hyper's `Upgraded`) cannot use.
//!
//! # Frames and closing politely
//!
//! With [`TunnelConfig::track_frames`] the tunnel follows frame boundaries
//! without changing a byte (see [`frame`](crate::frame)); this costs about
//! 0.2–1.6 % of the proxy's CPU on 1 KiB messages
//! (`cargo bench --bench tunnel -- --mode frames`). Boundaries let it add
//! frames of its own without cutting one: [`Tunnel::insert_frames`] queues
//! whole frames toward one side and [`Tunnel::insert_close`] a Close toward
//! both (unmasked toward the client, masked with a fresh key toward the
//! upstream, RFC 6455 §5.3). Each goes out at the next frame boundary of its
//! direction; data frames wait for the end of a fragmented message, control
//! frames may go between its fragments; the tunnel keeps relaying, so
//! nothing a peer sent is dropped or reordered.
//!
//! [`TunnelHandle::close`] closes a running tunnel from anywhere, client
//! first, since the client is the one that reconnects:
//!
//! 1. the Close goes to the client at the next frame boundary toward it;
//!    what the upstream sends after that point is dropped;
//! 2. what the client sends until it reads the Close still reaches the
//!    upstream, then the client's own Close reply;
//! 3. if the client hangs up without a reply, the upstream gets the
//!    proxy's Close (masked) before its write side is shut; if the client
//!    stays silent for [`close_linger`](TunnelConfig::close_linger), the
//!    upstream gets it then, and one more linger to answer;
//! 4. the tunnel ends with [`TunnelEnd::Closed`], and [`FrameStats`] has both
//!    peers' Close frames.
//!
//! Once both peers' Close frames have passed (whoever started), RFC 6455
//! §7.1.1 has the server close the TCP connection: the tunnel waits one
//! `close_linger` for the peers' own FIN, then shuts both sides and ends
//! with [`TunnelEnd::PeersClosed`].
//!
//! [`TunnelHandle::cut`] ends a tunnel at once. A handle is one small shared
//! block (atomic state and waker): the tunnel holds no channel or timer for
//! it. [`TunnelConfig::ping`] (with frame tracking on) pings a side that was
//! silent for the interval, at a frame boundary; any byte counts as the
//! answer, the peer's Pong is passed on as an unsolicited Pong (RFC 6455
//! §5.5.3), and no answer within the timeout ends the tunnel with
//! [`Timeout::Ping`].

mod config;
mod control;
mod deadline;
mod error;
mod hook;
mod last_write;
mod parting;
mod ping;
mod prefixed;
mod stats;
mod timers;
mod transfer;

use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::frame::{masking_key, CloseFrame, FrameTracker, Role};
use control::{Control, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

pub use config::TunnelConfig;
pub use control::TunnelHandle;
pub use error::TunnelError;
pub use prefixed::Prefixed;
pub use stats::{FrameStats, Side, Timeout, TunnelEnd, TunnelStats};

use deadline::{Deadlines, Due, Timeouts};
use hook::FrameHook;
pub(crate) use last_write::{LastWrite, Plain};
use parting::Parting;
use ping::Pings;
use timers::{close_deadline_passed, deadlines_or_off, LazySleep, Timers};
use transfer::{nanos_since, CopyError, Transfer};

/// Size of the read buffer each poll borrows from its own stack. Large
/// enough that a 64 KiB WebSocket message moves in one read and one write
/// per direction when the sockets allow it; it never outlives a poll.
const STACK_BUF: usize = 64 * 1024;

/// How many bytes [`Tunnel::take_progress`] lets build up before it reports
/// them whatever the clock says.
const PROGRESS_BYTES: u64 = 64 * 1024;

/// Copies bytes both ways between `client` and `upstream` until both sides
/// sent EOF, a timeout fires, `shutdown` completes, or an I/O error occurs;
/// then shuts both sides down and reports [`TunnelStats`].
///
/// - EOF from one side shuts down writing toward the other; the other
///   direction keeps flowing until its own EOF (or the linger timeout).
/// - On a timeout, `shutdown`, or an error, both sides are shut down (the
///   final shutdown waits at most the send timeout, if one is set) and the
///   streams are dropped with the returned future. Bytes read but not yet
///   written are discarded then.
/// - Bytes the handshake already read go first: wrap a side in
///   [`Prefixed`].
///
/// The future never fails: errors are reported in [`TunnelStats::end`].
/// It is a named type, [`Tunnel`], so it can be stored or spawned as its own
/// task; spawning it once the upstream is connected keeps the handshake's
/// state out of the long-lived task.
///
/// # Panics
///
/// With a timeout configured, polling the future outside a tokio runtime
/// with the time driver enabled panics, as every tokio timer does.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use wsproxy::tunnel::{tunnel, TunnelConfig, TunnelEnd};
///
/// let (client, mut browser) = tokio::io::duplex(1024);
/// let (upstream, mut backend) = tokio::io::duplex(1024);
/// let task = tokio::spawn(async move {
///     tunnel(client, upstream, &TunnelConfig::default(), std::future::pending()).await
/// });
///
/// browser.write_all(b"ping").await?;
/// browser.shutdown().await?;
/// let mut got = Vec::new();
/// backend.read_to_end(&mut got).await?;
/// assert_eq!(got, b"ping");
/// backend.shutdown().await?;
///
/// let stats = task.await?;
/// assert!(matches!(stats.end, TunnelEnd::ClientEof));
/// assert_eq!(stats.client_to_upstream, 4);
/// # Ok(())
/// # }
/// ```
pub fn tunnel<C, U, F>(
    client: C,
    upstream: U,
    config: &TunnelConfig,
    shutdown: F,
) -> Tunnel<C, U, F>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let timeouts = Timeouts::new(config);
    let pings = Pings::new(config);
    let timed = timeouts.any() || pings.on();
    Tunnel {
        client,
        upstream,
        shutdown,
        c2u: Transfer::new(),
        u2c: Transfer::new(),
        frames: config.track_frames.then(|| Frames {
            c2u: FrameHook::new(FrameTracker::new(Role::Client)),
            u2c: FrameHook::new(FrameTracker::new(Role::Server)),
            parting: Parting::new(config),
            pings,
        }),
        control: None,
        started: Instant::now(),
        timers: timed.then(|| {
            Box::pin(Timers {
                deadlines: Deadlines::new(timeouts, pings.on()),
                sleep: LazySleep::Unarmed,
            })
        }),
        end: None,
        first_eof: None,
        lifecycle: Lifecycle::Running,
        client_open: true,
        upstream_open: true,
        taken_at: 0,
    }
}

/// Where a tunnel is in its life; `poll` pumps each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Running,
    /// A polite close is under way: Close frames sent or queued, waiting
    /// for the peers' replies.
    Parting,
    /// Shutting both sides down before reporting `end`.
    Closing,
    Finished,
}

/// The frame hooks of both directions, with the polite-close and ping
/// state. Kept in the tunnel, not boxed: every proxied tunnel tracks
/// frames (the proxy's default), and a separate block cost an allocator
/// call per handshake and 32 bytes of malloc chunk per idle tunnel, where
/// the task cell, which tokio rounds up to 128 bytes, had room for it
/// (see `benches/README.md`).
#[derive(Debug)]
struct Frames {
    c2u: FrameHook,
    u2c: FrameHook,
    parting: Parting,
    pings: Pings,
}

impl Frames {
    fn stats(&self) -> FrameStats {
        FrameStats {
            client_messages: self.c2u.messages(),
            upstream_messages: self.u2c.messages(),
            client_close: self.c2u.tracker.close(),
            upstream_close: self.u2c.tracker.close(),
        }
    }

    /// The direction whose bytes come from `side`.
    fn from(&mut self, side: Side) -> &mut FrameHook {
        match side {
            Side::Client => &mut self.c2u,
            Side::Upstream => &mut self.u2c,
        }
    }

    /// The direction whose bytes go toward `side`.
    fn toward(&mut self, side: Side) -> &mut FrameHook {
        match side {
            Side::Upstream => &mut self.c2u,
            Side::Client => &mut self.u2c,
        }
    }
}

/// The masking key of a frame the proxy sends toward `side`: a fresh one
/// toward the upstream (RFC 6455 §5.3), none toward the client (§5.1).
fn mask_toward(side: Side) -> Option<[u8; 4]> {
    match side {
        Side::Upstream => Some(masking_key()),
        Side::Client => None,
    }
}

impl<C, U, F> Tunnel<C, U, F> {
    /// Queues whole WebSocket frames to send toward `side`, at the next
    /// frame boundary of the bytes flowing there: at once if that direction
    /// is between frames, else right after the frame under way. Control
    /// frames may go between the fragments of a message, data frames wait
    /// for the end of the message (RFC 6455 §5.4). Nothing the peers sent is
    /// dropped or reordered; frames queued earlier go first.
    ///
    /// `frames` must be whole frames as the receiving side expects them:
    /// masked toward the upstream, unmasked toward the client (§5.1). They
    /// are counted in the byte totals, not in the message counts.
    ///
    /// Returns `false`, queuing nothing, when the tunnel does not track
    /// frames ([`TunnelConfig::track_frames`]). Takes effect when the tunnel
    /// is next polled. Frames queued toward a side that was already shut
    /// down (the other side sent EOF and everything was written) are never
    /// sent, and neither are frames waiting behind a frame that never ends.
    pub fn insert_frames(self: Pin<&mut Self>, side: Side, frames: &[u8]) -> bool {
        let this = self.project();
        let Some(tracked) = this.frames.as_mut() else {
            return false;
        };
        tracked.toward(side).insert(frames);
        true
    }

    /// Queues `close` toward both sides, each at the next frame boundary of
    /// its direction: unmasked toward the client, masked with a fresh random
    /// key toward the upstream (RFC 6455 §5.3). The tunnel keeps relaying
    /// afterwards, so the peers' Close replies reach each other.
    ///
    /// Returns `false` when the tunnel does not track frames.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::AsyncReadExt;
    /// use wsproxy::frame::CloseFrame;
    /// use wsproxy::tunnel::{tunnel, TunnelConfig};
    ///
    /// let (client, mut browser) = tokio::io::duplex(1024);
    /// let (upstream, _backend) = tokio::io::duplex(1024);
    /// let config = TunnelConfig::new().track_frames(true);
    /// let mut relay = Box::pin(tunnel(client, upstream, &config, std::future::pending()));
    /// assert!(relay.as_mut().insert_close(&CloseFrame::new(1001, "bye")?));
    /// tokio::spawn(relay);
    ///
    /// let mut close = [0u8; 7];
    /// browser.read_exact(&mut close).await?;
    /// assert_eq!(close, [0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
    /// # Ok(())
    /// # }
    /// ```
    pub fn insert_close(mut self: Pin<&mut Self>, close: &CloseFrame) -> bool {
        let toward_client = close.encode(None);
        let toward_upstream = close.encode(mask_toward(Side::Upstream));
        self.as_mut().insert_frames(Side::Client, &toward_client)
            && self.insert_frames(Side::Upstream, &toward_upstream)
    }

    /// For a tunnel whose streams are dropped as soon as it ends (the
    /// proxy's own): the direction that ends last skips its writer's
    /// shutdown, since closing the socket sends the same FIN. A host that
    /// keeps its streams after the tunnel (`&mut` streams) needs the
    /// shutdown, so [`tunnel`] does not do this by default.
    ///
    /// Only where `L` says dropping the writer closes its connection: a
    /// borrowed stream, TLS or an HTTP/2 stream gets its shutdown.
    pub(crate) fn closes_on_end<L: LastWrite<C> + LastWrite<U>>(&mut self) {
        // Kept in the directions' padding: the tunnel future stays as small.
        if <L as LastWrite<U>>::closes_on_drop(&self.upstream) {
            self.c2u.set_closes_on_end();
        }
        if <L as LastWrite<C>>::closes_on_drop(&self.client) {
            self.u2c.set_closes_on_end();
        }
    }

    /// A handle the host keeps to close this tunnel politely or cut it later,
    /// from anywhere (see [`TunnelHandle`]). Call it before the tunnel is
    /// pinned or spawned; every call returns a handle on the same tunnel.
    pub fn handle(&mut self) -> TunnelHandle {
        TunnelHandle::new(self.control.get_or_insert_with(Arc::default).clone())
    }

    /// The bytes moved each way (client to upstream, upstream to client)
    /// since the last call that returned some, once there is something
    /// worth reporting: 64 KiB or more in all, or any amount when the
    /// tunnel's clock has passed a whole second since then. Otherwise
    /// `None`, without reading the clock when nothing moved.
    ///
    /// For counters that move while a long tunnel runs, from the task that
    /// polls it: call it after every poll. No timer and no allocation:
    /// traffic polls the tunnel, and so does its own timer (timeouts,
    /// pings), which brings in the last bytes of a burst.
    pub(crate) fn take_progress(self: Pin<&mut Self>) -> Option<(u64, u64)> {
        let this = self.project();
        let (c2u, u2c) = (this.c2u.untaken(), this.u2c.untaken());
        if c2u == 0 && u2c == 0 {
            return None;
        }
        let secs = u32::try_from(this.started.elapsed().as_secs()).unwrap_or(u32::MAX);
        if c2u + u2c < PROGRESS_BYTES && secs <= *this.taken_at {
            return None;
        }
        *this.taken_at = secs;
        this.c2u.take();
        this.u2c.take();
        Some((c2u, u2c))
    }

    /// What a tunnel dropped before it ended (its future cancelled) reports,
    /// as one cut at that moment ([`TunnelEnd::Shutdown`]); `None` if it had
    /// already ended.
    pub(crate) fn stats_at_drop(self: Pin<&mut Self>) -> Option<TunnelStats> {
        let mut this = self.project();
        (*this.lifecycle != Lifecycle::Finished).then(|| this.finish(TunnelEnd::Shutdown))
    }

    /// The bytes each way not yet returned by
    /// [`take_progress`](Self::take_progress): with what it returned, the
    /// totals of [`TunnelStats`].
    pub(crate) fn untaken(&self) -> (u64, u64) {
        (self.c2u.untaken(), self.u2c.untaken())
    }

    /// Whether frames queued by [`insert_frames`](Self::insert_frames) or
    /// [`insert_close`](Self::insert_close) still wait for a boundary toward
    /// `side`.
    pub fn has_pending_frames(&self, side: Side) -> bool {
        self.frames.as_ref().is_some_and(|f| match side {
            Side::Upstream => f.c2u.has_insert(),
            Side::Client => f.u2c.has_insert(),
        })
    }
}

pin_project! {
    /// The future returned by [`tunnel`]; resolves to [`TunnelStats`].
    ///
    /// It owns both streams and drops them when it is dropped.
    #[must_use = "futures do nothing unless polled"]
    #[project = TunnelProj]
    pub struct Tunnel<C, U, F> {
        client: C,
        upstream: U,
        #[pin]
        shutdown: F,
        c2u: Transfer,
        u2c: Transfer,
        frames: Option<Frames>,
        // Shared with the host's `TunnelHandle`s, once one was asked for.
        control: Option<Arc<Control>>,
        started: Instant,
        timers: Option<Pin<Box<Timers>>>,
        // Boxed: only an abnormal end is stored, once, while closing.
        end: Option<Box<TunnelEnd>>,
        first_eof: Option<Side>,
        lifecycle: Lifecycle,
        client_open: bool,
        upstream_open: bool,
        // Whole seconds from `started` to the last `take_progress` that
        // returned bytes; beside the flags, in what was padding.
        taken_at: u32,
    }
}

impl<C: fmt::Debug, U: fmt::Debug, F> fmt::Debug for Tunnel<C, U, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("client", &self.client)
            .field("upstream", &self.upstream)
            .field("client_to_upstream", &self.c2u)
            .field("upstream_to_client", &self.u2c)
            .field("frames", &self.frames)
            .field("timers", &self.timers)
            .field("lifecycle", &self.lifecycle)
            .finish_non_exhaustive()
    }
}

impl<C, U, F> Future for Tunnel<C, U, F>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    type Output = TunnelStats;

    /// Only pumps: copies, hands what happened to the sans-IO decisions
    /// (`deadline`, `parting`, `ping`), and arms the timer they ask for.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        self.poll_with::<Plain>(cx)
    }
}

impl<C, U, F> Tunnel<C, U, F>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    /// [`poll`](Future::poll), with `L` writing each direction's last bytes
    /// before its shutdown: the proxy's own streams know their sockets.
    pub(crate) fn poll_with<L>(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats>
    where
        L: LastWrite<C> + LastWrite<U>,
    {
        let mut this = self.project();
        // Each `Again` queued a ping (whose deadline is then later) or
        // extended a polite close once: the loop comes to a `Pending` or an
        // end.
        loop {
            match *this.lifecycle {
                Lifecycle::Running | Lifecycle::Parting => {
                    let end = match this.pump::<L>(cx) {
                        Step::End(end) => end,
                        Step::Again => continue,
                        Step::Pending => return Poll::Pending,
                    };
                    // Both sides sent EOF and were shut down: nothing is
                    // left to close.
                    if matches!(end, TunnelEnd::ClientEof | TunnelEnd::UpstreamEof) {
                        return Poll::Ready(this.finish(end));
                    }
                    this.begin_closing(end);
                }
                Lifecycle::Closing => {
                    if !this.poll_shutdown_both(cx) {
                        return Poll::Pending;
                    }
                    *this.timers = None;
                    let end = this.end.take().map_or(TunnelEnd::Shutdown, |end| *end);
                    return Poll::Ready(this.finish(end));
                }
                // Polled after completion: stay pending rather than panic.
                Lifecycle::Finished => return Poll::Pending,
            }
        }
    }
}

/// What one pump of a running tunnel came to.
enum Step {
    /// The tunnel ends so.
    End(TunnelEnd),
    /// A ping was queued or a wait extended: pump again at once, so that it
    /// is written if the direction allows.
    Again,
    /// Nothing to do until a stream, the timer or a handle wakes the task.
    Pending,
}

impl<C, U, F> TunnelProj<'_, C, U, F>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    /// One round of a running tunnel: the host's requests, both copies,
    /// then the decisions.
    fn pump<L: LastWrite<C> + LastWrite<U>>(&mut self, cx: &mut Context<'_>) -> Step {
        let end = self.poll_requests(cx);
        if let Some(frames) = self.frames.as_mut() {
            let started = *self.started;
            frames.ping_waits(|| nanos_since(started));
        }
        let end = end.or_else(|| self.copy::<L>(cx));
        self.decide(cx, end)
    }

    /// A cut or the shutdown future ends the tunnel; a polite close starts
    /// parting (or cuts a tunnel that has no frame boundaries to close at).
    fn poll_requests(&mut self, cx: &mut Context<'_>) -> Option<TunnelEnd> {
        if let Some(control) = self.control.as_deref() {
            match control.poll_request(cx) {
                Request::Cut => return Some(TunnelEnd::Shutdown),
                Request::Close if *self.lifecycle == Lifecycle::Running => {
                    let (Some(frames), Some(close)) = (self.frames.as_mut(), control.close_frame())
                    else {
                        return Some(TunnelEnd::Shutdown);
                    };
                    frames.part(close);
                    let linger = frames.parting.linger();
                    let now = nanos_since(*self.started);
                    deadlines_or_off(self.timers).extend_parting(now, linger);
                    *self.lifecycle = Lifecycle::Parting;
                }
                Request::Close | Request::None => {}
            }
        }
        self.shutdown
            .as_mut()
            .poll(cx)
            .is_ready()
            .then_some(TunnelEnd::Shutdown)
    }

    /// Copies in both directions; returns why the tunnel ended, if it did.
    fn copy<L: LastWrite<C> + LastWrite<U>>(&mut self, cx: &mut Context<'_>) -> Option<TunnelEnd> {
        // Lives for this poll only: an idle tunnel holds no copy buffer.
        let mut buf = [MaybeUninit::<u8>::uninit(); STACK_BUF];
        let started = *self.started;
        let mut deadlines = self.timers.as_mut().map(|t| t.as_mut().project().deadlines);

        let clock = deadlines.as_mut().map(|d| (&mut d.c2u, started));
        // Once one direction is done, the other ends the tunnel when it is:
        // both sockets are then closed, and a close after EOF both ways sends
        // the FIN a shutdown would have (HAProxy shuts down only the first).
        if self.u2c.is_done() {
            self.c2u.skip_shutdown();
        }
        let hook = self.frames.as_mut().map(|f| &mut f.c2u);
        let copied =
            self.c2u
                .poll_copy::<_, _, L>(cx, self.client, self.upstream, &mut buf, clock, hook);
        if let Poll::Ready(Err(e)) = copied {
            return Some(TunnelEnd::Error(blame(e, Side::Client)));
        }
        if self.c2u.read_done() && self.first_eof.is_none() {
            *self.first_eof = Some(Side::Client);
            if let Some(d) = deadlines.as_mut() {
                d.first_eof(nanos_since(started));
            }
        }
        let clock = deadlines.as_mut().map(|d| (&mut d.u2c, started));
        if self.c2u.is_done() {
            self.u2c.skip_shutdown();
        }
        let hook = self.frames.as_mut().map(|f| &mut f.u2c);
        let copied =
            self.u2c
                .poll_copy::<_, _, L>(cx, self.upstream, self.client, &mut buf, clock, hook);
        if let Poll::Ready(Err(e)) = copied {
            return Some(TunnelEnd::Error(blame(e, Side::Upstream)));
        }
        if self.u2c.read_done() && self.first_eof.is_none() {
            *self.first_eof = Some(Side::Upstream);
            if let Some(d) = deadlines.as_mut() {
                d.first_eof(nanos_since(started));
            }
        }
        if self.c2u.is_done() && self.u2c.is_done() {
            return Some(match self.first_eof {
                Some(Side::Upstream) => TunnelEnd::UpstreamEof,
                _ => TunnelEnd::ClientEof,
            });
        }
        None
    }

    /// What the copy's `end` (if any), the polite close and the deadlines
    /// make of this round.
    fn decide(&mut self, cx: &mut Context<'_>, end: Option<TunnelEnd>) -> Step {
        // Whether the end is the proxy's doing: its own Close frames went in
        // (else the peers were closing already).
        let proxy_parting = self
            .frames
            .as_ref()
            .is_some_and(|f| f.parting.proxy_closing);
        match end {
            // The peers ending their streams is how a polite close is meant
            // to end.
            Some(end) if proxy_parting && end.is_clean() => return Step::End(self.closed()),
            Some(end) => return Step::End(end),
            None => {}
        }
        let (c2u, u2c) = (self.c2u.flow(), self.u2c.flow());
        if proxy_parting && self.frames.as_ref().is_some_and(|f| f.parted(c2u, u2c)) {
            return Step::End(self.closed());
        }
        // The peers' own closing handshake is over, but they may keep TCP
        // open: wait one linger for their FIN, then close it (RFC 6455
        // §7.1.1). A wait already under way keeps its end.
        if let Some(frames) = self.frames.as_ref() {
            if frames.closes_exchanged(c2u, u2c) {
                let linger = frames.parting.linger();
                let now = nanos_since(*self.started);
                deadlines_or_off(self.timers).part_by(now, linger);
            }
        }
        match self.poll_timers(cx) {
            Some(due) => self.on_due(due),
            None => Step::Pending,
        }
    }

    /// Acts on a deadline that came.
    fn on_due(&mut self, due: Due) -> Step {
        match due {
            Due::End(timeout) => Step::End(TunnelEnd::Timeout(timeout)),
            Due::Parted => {
                let linger = self
                    .frames
                    .as_mut()
                    .and_then(|f| f.give_up_on_client().then_some(f.parting.linger()));
                let Some(linger) = linger else {
                    // The host's polite close, or the peers' own handshake.
                    return Step::End(match *self.lifecycle {
                        Lifecycle::Parting => self.closed(),
                        _ => TunnelEnd::PeersClosed,
                    });
                };
                // One more linger, for the upstream's reply.
                let now = nanos_since(*self.started);
                deadlines_or_off(self.timers).extend_parting(now, linger);
                Step::Again
            }
            Due::Ping(side) => {
                if let Some(frames) = self.frames.as_mut() {
                    frames.ping(side, nanos_since(*self.started));
                }
                Step::Again
            }
        }
    }

    /// Arms the single timer for the next deadline and reports it if due.
    ///
    /// Traffic only moves deadlines later, so the timer is not reset on
    /// every read: when it fires early, it is pushed to the current deadline
    /// then. It is reset eagerly only when a deadline comes earlier (a write
    /// stalls, a side sends EOF).
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Option<Due> {
        let timers = self.timers.as_mut()?;
        let frames = self.frames.as_ref();
        // A closing handshake, the proxy's or the peers', takes no pings.
        let quiet = *self.lifecycle == Lifecycle::Parting || frames.is_some_and(Frames::closing);
        let pings = frames.and_then(|f| f.ping_state(quiet));
        let t = timers.as_mut().project();
        let (at, due) = t.deadlines.next(self.c2u.flow(), self.u2c.flow(), pings)?;
        // A deadline too far to represent never fires.
        let at = self.started.checked_add(Duration::from_nanos(at))?;
        let mut sleep = t.sleep.arm(at)?;
        // At most twice: a timer that fired early is pushed to `at` once.
        for _ in 0..2 {
            if sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
            if sleep.deadline() >= at {
                return Some(due);
            }
            sleep.as_mut().reset(at);
        }
        None
    }

    /// The end of a polite close: the Close frame the host asked for.
    fn closed(&self) -> TunnelEnd {
        let close = self.control.as_deref().and_then(Control::close_frame);
        TunnelEnd::Closed(close.cloned().unwrap_or_else(CloseFrame::empty))
    }

    /// Keeps an abnormal `end` and starts shutting both sides down.
    fn begin_closing(&mut self, end: TunnelEnd) {
        *self.end = Some(Box::new(end));
        *self.client_open = !self.u2c.is_done();
        *self.upstream_open = !self.c2u.is_done();
        *self.lifecycle = Lifecycle::Closing;
    }

    /// Shuts down the sides still open; true once both are, or once the
    /// wait should stop (see `close_deadline_passed`).
    fn poll_shutdown_both(&mut self, cx: &mut Context<'_>) -> bool {
        // Errors here change nothing: the tunnel is ending anyway and the
        // streams are dropped right after.
        if *self.client_open && Pin::new(&mut *self.client).poll_shutdown(cx).is_ready() {
            *self.client_open = false;
        }
        if *self.upstream_open && Pin::new(&mut *self.upstream).poll_shutdown(cx).is_ready() {
            *self.upstream_open = false;
        }
        (!*self.client_open && !*self.upstream_open)
            || close_deadline_passed(cx, self.timers.as_mut())
    }
}

impl<C, U, F> TunnelProj<'_, C, U, F> {
    /// Marks the tunnel finished, telling its handles that their requests
    /// now do nothing, and reports.
    fn finish(&mut self, end: TunnelEnd) -> TunnelStats {
        *self.lifecycle = Lifecycle::Finished;
        if let Some(control) = self.control.as_deref() {
            control.finish();
        }
        TunnelStats {
            client_to_upstream: self.c2u.bytes(),
            upstream_to_client: self.u2c.bytes(),
            duration: self.started.elapsed(),
            first_eof: *self.first_eof,
            end,
            frames: self.frames.as_ref().map(Frames::stats),
        }
    }
}

/// Names the side of a copy error in the direction reading from `from`.
fn blame(e: CopyError, from: Side) -> TunnelError {
    match e {
        CopyError::Read(source) => TunnelError::Read { side: from, source },
        CopyError::Write(source) => TunnelError::Write {
            side: from.other(),
            source,
        },
        CopyError::Frame(source) => TunnelError::Framing { side: from, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Duplexed =
        Tunnel<tokio::io::DuplexStream, tokio::io::DuplexStream, std::future::Pending<()>>;

    /// Polls the tunnel once, as its task would on a wake-up.
    async fn pump(relay: &mut Pin<Box<Duplexed>>) {
        std::future::poll_fn(|cx| {
            let _ = relay.as_mut().poll(cx);
            Poll::Ready(())
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_taken_at_64_kib_or_once_a_second_passed() {
        use tokio::io::AsyncWriteExt;
        let (client, mut browser) = tokio::io::duplex(256 * 1024);
        let (upstream, mut backend) = tokio::io::duplex(256 * 1024);
        let config = TunnelConfig::new();
        let mut relay = Box::pin(tunnel(client, upstream, &config, std::future::pending()));

        browser.write_all(b"hello").await.unwrap();
        pump(&mut relay).await;
        assert_eq!(relay.as_mut().take_progress(), None);
        browser.write_all(&[1; 70_000]).await.unwrap();
        pump(&mut relay).await;
        assert_eq!(relay.as_mut().take_progress(), Some((70_005, 0)));

        backend.write_all(b"abc").await.unwrap();
        pump(&mut relay).await;
        assert_eq!(relay.as_mut().take_progress(), None);
        assert_eq!(relay.untaken(), (0, 3));
        tokio::time::advance(Duration::from_secs(1)).await;
        // Nothing new moved: the second passing is enough.
        assert_eq!(relay.as_mut().take_progress(), Some((0, 3)));
        assert_eq!(relay.untaken(), (0, 0));
        assert_eq!(relay.as_mut().take_progress(), None);
    }

    /// Every tunnel that tracks frames (the proxy's default) carries the
    /// frame state while it idles, and every timed tunnel the timer block.
    /// Both sit just under a size step: the frame state fills the server's
    /// task cell up to tokio's next 128 bytes (`server::tests`), and 40
    /// bytes more in the timer block measured 260 bytes more per idle
    /// tunnel (`examples/idle_tunnels`). Raise these only knowingly.
    #[test]
    fn the_frame_box_and_the_timer_block_stay_small() {
        let frames = std::mem::size_of::<Frames>();
        assert!(frames <= 152, "frame state grew to {frames} bytes");
        let timers = std::mem::size_of::<Timers>();
        assert!(timers <= 232, "timer block grew to {timers} bytes");
    }
}
