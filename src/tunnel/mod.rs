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
//! | [`linger_timeout`](TunnelConfig::linger_timeout) | HAProxy `timeout client-fin` / `server-fin`: after one side's EOF |
//! | [`max_lifetime`](TunnelConfig::max_lifetime) | none: an upper bound on the tunnel's age |
//! | [`close_linger`](TunnelConfig::close_linger) | nginx `lingering_timeout`: waiting for Close replies (5 s) |
//! | [`ping`](TunnelConfig::ping) | HAProxy/Envoy WebSocket keepalive pings |
//!
//! A tunnel with any of them holds one timer in one heap block, created on
//! its first poll and moved lazily: traffic only stamps the time, and the
//! timer is reset when it fires early, so there is no timer work per read.
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
//! [`TunnelHandle::cut`] ends a tunnel at once. A handle is one small shared
//! block (atomic state and waker): the tunnel holds no channel or timer for
//! it. [`TunnelConfig::ping`] (with frame tracking on) pings a side that was
//! silent for the interval, at a frame boundary; any byte counts as the
//! answer, the peer's Pong is passed on as an unsolicited Pong (RFC 6455
//! §5.5.3), and no answer within the timeout ends the tunnel with
//! [`Timeout::Ping`].

mod control;
mod error;
mod prefixed;
mod stats;
mod transfer;

use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::frame::{CloseFrame, FrameTracker, Role};
use control::{Control, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

pub use control::TunnelHandle;
pub use error::TunnelError;
pub use prefixed::Prefixed;
pub use stats::{FrameStats, Side, Timeout, TunnelEnd, TunnelStats};

use transfer::{nanos_since, CopyError, Framing, Nanos, Stamps, Transfer, NEVER};

/// Size of the read buffer each poll borrows from its own stack. Large
/// enough that a 64 KiB WebSocket message moves in one read and one write
/// per direction when the sockets allow it; it never outlives a poll.
const STACK_BUF: usize = 64 * 1024;

/// Timeouts of a tunnel. Every timeout is optional and off by default;
/// traffic resets the ones that measure silence.
///
/// Setters take a [`Duration`] or `None`:
///
/// ```
/// use std::time::Duration;
/// use wsproxy::tunnel::TunnelConfig;
///
/// // nginx's classic WebSocket location: proxy_read_timeout 7200s,
/// // proxy_send_timeout 12s.
/// let config = TunnelConfig::default()
///     .upstream_read_timeout(Duration::from_secs(7200))
///     .send_timeout(Duration::from_secs(12))
///     .linger_timeout(None);
/// assert_eq!(config.send_timeout, Some(Duration::from_secs(12)));
/// ```
///
/// A zero duration fires at the first opportunity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelConfig {
    /// No byte read from either side for this long ends the tunnel
    /// (HAProxy `timeout tunnel`).
    pub idle_timeout: Option<Duration>,
    /// No byte from the client for this long ends the tunnel. Stops
    /// applying once the client sent EOF, and is suspended while a write
    /// toward the upstream cannot progress (the client is not read then).
    pub client_read_timeout: Option<Duration>,
    /// No byte from the upstream for this long ends the tunnel (nginx
    /// `proxy_read_timeout`, 60 s by default there). Stops applying once the
    /// upstream sent EOF, and is suspended while a write toward the client
    /// cannot progress.
    pub upstream_read_timeout: Option<Duration>,
    /// A write, flush or shutdown toward either side that makes no progress
    /// for this long ends the tunnel: the peer stopped reading (nginx
    /// `proxy_send_timeout`). Also bounds the final shutdown of both sides.
    pub send_timeout: Option<Duration>,
    /// Once one side sent EOF, how long the other direction may still run
    /// (HAProxy `timeout client-fin` / `timeout server-fin`).
    pub linger_timeout: Option<Duration>,
    /// The longest a tunnel may live, traffic or not.
    pub max_lifetime: Option<Duration>,
    /// Follow WebSocket frames in both directions (off by default, for
    /// tunnels of other protocols): count messages, capture each side's
    /// Close frame into [`TunnelStats::frames`], and end the tunnel with
    /// [`TunnelError::Framing`] when a side breaks RFC 6455 framing. The
    /// client side must send masked frames and the upstream unmasked ones
    /// (§5.1). Bytes still pass unchanged; the first byte read from each
    /// side (after any [`Prefixed`] bytes, which count) must start a frame.
    pub track_frames: bool,
    /// How long a polite close ([`TunnelHandle::close`]) waits for both
    /// peers' Close replies before shutting the sockets down: 5 s by default,
    /// as nginx's `lingering_timeout`. RFC 6455 §7.1.1 lets the server close
    /// the TCP connection once the Close frames are exchanged.
    pub close_linger: Duration,
    /// Send a WebSocket Ping to a side that sent nothing for this long, at
    /// the next frame boundary toward it (masked toward the upstream): keeps
    /// NAT and firewall state alive and, with
    /// [`ping_timeout`](Self::ping_timeout), finds dead peers. Needs
    /// [`track_frames`](Self::track_frames); ignored without it. The peer's
    /// Pong is forwarded to the other side like any frame: an unsolicited
    /// Pong is a valid heartbeat there (RFC 6455 §5.5.3).
    pub ping_interval: Option<Duration>,
    /// A side that sends nothing for this long after a ping ends the tunnel
    /// with [`Timeout::Ping`]. Any byte counts as an answer, not only a Pong.
    pub ping_timeout: Option<Duration>,
}

/// [`TunnelConfig::close_linger`] unless set.
const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(5);

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            idle_timeout: None,
            client_read_timeout: None,
            upstream_read_timeout: None,
            send_timeout: None,
            linger_timeout: None,
            max_lifetime: None,
            track_frames: false,
            close_linger: DEFAULT_CLOSE_LINGER,
            ping_interval: None,
            ping_timeout: None,
        }
    }
}

impl TunnelConfig {
    /// A configuration with every timeout and ping off, frames not tracked,
    /// and a 5 s close linger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = timeout.into();
        self
    }

    /// Sets [`client_read_timeout`](Self::client_read_timeout).
    pub fn client_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.client_read_timeout = timeout.into();
        self
    }

    /// Sets [`upstream_read_timeout`](Self::upstream_read_timeout).
    pub fn upstream_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.upstream_read_timeout = timeout.into();
        self
    }

    /// Sets [`send_timeout`](Self::send_timeout).
    pub fn send_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.send_timeout = timeout.into();
        self
    }

    /// Sets [`linger_timeout`](Self::linger_timeout).
    pub fn linger_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.linger_timeout = timeout.into();
        self
    }

    /// Sets [`max_lifetime`](Self::max_lifetime).
    pub fn max_lifetime(mut self, lifetime: impl Into<Option<Duration>>) -> Self {
        self.max_lifetime = lifetime.into();
        self
    }

    /// Sets [`track_frames`](Self::track_frames).
    ///
    /// ```
    /// use wsproxy::tunnel::TunnelConfig;
    /// let websocket = TunnelConfig::new().track_frames(true);
    /// assert!(websocket.track_frames);
    /// assert!(!TunnelConfig::default().track_frames);
    /// ```
    pub fn track_frames(mut self, on: bool) -> Self {
        self.track_frames = on;
        self
    }

    /// Sets [`close_linger`](Self::close_linger).
    pub fn close_linger(mut self, linger: Duration) -> Self {
        self.close_linger = linger;
        self
    }

    /// Sets [`ping_interval`](Self::ping_interval) and
    /// [`ping_timeout`](Self::ping_timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use wsproxy::tunnel::TunnelConfig;
    /// // A ping after 30 s of silence; no answer within 10 s ends the tunnel.
    /// let config = TunnelConfig::new()
    ///     .track_frames(true)
    ///     .ping(Duration::from_secs(30), Duration::from_secs(10));
    /// assert_eq!(config.ping_timeout, Some(Duration::from_secs(10)));
    /// ```
    pub fn ping(
        mut self,
        interval: impl Into<Option<Duration>>,
        timeout: impl Into<Option<Duration>>,
    ) -> Self {
        self.ping_interval = interval.into();
        self.ping_timeout = timeout.into();
        self
    }
}

/// The timeouts of a [`TunnelConfig`] in nanoseconds, [`NEVER`] when off:
/// half the size of `Option<Duration>`s in every live tunnel.
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle: Nanos,
    client_read: Nanos,
    upstream_read: Nanos,
    send: Nanos,
    linger: Nanos,
    lifetime: Nanos,
}

/// `d` in nanoseconds, [`NEVER`] when off or too long to represent.
fn nanos(d: Option<Duration>) -> Nanos {
    d.map_or(NEVER, |d| u64::try_from(d.as_nanos()).unwrap_or(NEVER))
}

impl Limits {
    /// Every timeout off: the limits of a tunnel that needs its timer only
    /// for a polite close.
    const OFF: Limits = Limits {
        idle: NEVER,
        client_read: NEVER,
        upstream_read: NEVER,
        send: NEVER,
        linger: NEVER,
        lifetime: NEVER,
    };

    fn new(config: &TunnelConfig) -> Self {
        let ns = nanos;
        Self {
            idle: ns(config.idle_timeout),
            client_read: ns(config.client_read_timeout),
            upstream_read: ns(config.upstream_read_timeout),
            send: ns(config.send_timeout),
            linger: ns(config.linger_timeout),
            lifetime: ns(config.max_lifetime),
        }
    }

    fn any(&self) -> bool {
        [
            self.idle,
            self.client_read,
            self.upstream_read,
            self.send,
            self.linger,
            self.lifetime,
        ]
        .iter()
        .any(|&l| l != NEVER)
    }
}

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
    let limits = Limits::new(config);
    // Pings go in at frame boundaries: without a tracker there are none.
    let ping_interval = if config.track_frames {
        nanos(config.ping_interval)
    } else {
        NEVER
    };
    let ping = ping_interval != NEVER;
    let timed = limits.any() || ping;
    // Pings are due after a side's silence, so they need its reads stamped.
    let idle = limits.idle != NEVER || ping;
    let send = limits.send != NEVER;
    let client_read = limits.client_read != NEVER;
    let upstream_read = limits.upstream_read != NEVER;
    Tunnel {
        client,
        upstream,
        shutdown,
        c2u: Transfer::new(),
        u2c: Transfer::new(),
        frames: config.track_frames.then(|| {
            Box::new(Frames {
                c2u: Framing::new(FrameTracker::new(Role::Client)),
                u2c: Framing::new(FrameTracker::new(Role::Server)),
                close_linger_ms: u32::try_from(config.close_linger.as_millis()).unwrap_or(u32::MAX),
                gave_up: false,
                parting: false,
                ping_interval,
                ping_timeout: nanos(config.ping_timeout),
            })
        }),
        control: None,
        started: Instant::now(),
        timers: timed.then(|| {
            Box::pin(Timers {
                // Stalls matter to the send timeout, and suspend a read timeout.
                c2u: Stamps::new(idle || client_read, send || client_read),
                u2c: Stamps::new(idle || upstream_read, send || upstream_read),
                limits,
                first_eof_at: NEVER,
                parted_by: NEVER,
                close_bounded: false,
                sleep: LazySleep::Unarmed,
            })
        }),
        end: None,
        first_eof: None,
        phase: Phase::Running,
        client_open: true,
        upstream_open: true,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// A polite close is under way: Close frames sent or queued, waiting
    /// for the peers' replies.
    Parting,
    /// Shutting both sides down before reporting `end`.
    Closing,
    Finished,
}

pin_project! {
    /// A timer created on first use, in place: `tokio::time::Sleep` needs
    /// the runtime, which `tunnel` may be called without.
    #[project = LazySleepProj]
    #[derive(Debug)]
    enum LazySleep {
        Unarmed,
        Armed {
            #[pin]
            sleep: Sleep,
        },
    }
}

impl LazySleep {
    /// The armed timer, set to fire no later than `at`.
    fn arm(mut self: Pin<&mut Self>, at: Instant) -> Option<Pin<&mut Sleep>> {
        if let LazySleepProj::Unarmed = self.as_mut().project() {
            self.as_mut().set(LazySleep::Armed {
                sleep: tokio::time::sleep_until(at),
            });
        }
        match self.project() {
            LazySleepProj::Armed { mut sleep } => {
                if sleep.deadline() > at {
                    sleep.as_mut().reset(at);
                }
                Some(sleep)
            }
            // Armed just above; there is no way back to `Unarmed`.
            LazySleepProj::Unarmed => None,
        }
    }
}

pin_project! {
    /// Everything only timeouts need, boxed so that an untimed tunnel does
    /// not carry it and a timed one keeps the task small.
    #[project = TimersProj]
    #[derive(Debug)]
    struct Timers {
        limits: Limits,
        c2u: Stamps,
        u2c: Stamps,
        first_eof_at: Nanos,
        // When a polite close stops waiting for the peers' replies.
        parted_by: Nanos,
        close_bounded: bool,
        // One timer for every timeout (see `poll_timers`).
        #[pin]
        sleep: LazySleep,
    }
}

/// The frame trackers of both directions, boxed so that a tunnel that does
/// not track frames carries one null pointer for them.
#[derive(Debug)]
struct Frames {
    c2u: Framing,
    u2c: Framing,
    /// [`TunnelConfig::close_linger`] in milliseconds: four bytes here
    /// instead of eight keep the box in a smaller allocation class.
    close_linger_ms: u32,
    /// A polite close stopped waiting for the client's reply.
    gave_up: bool,
    /// The proxy queued Close frames of its own (a polite close that found
    /// the peers already closing queues none, and lets them finish).
    parting: bool,
    // Pings need a tracker, so their settings live here rather than in
    // every timed tunnel's timer block, which stays in a smaller allocation.
    ping_interval: Nanos,
    ping_timeout: Nanos,
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

    /// Records a ping sent to `side`: its silence is now measured against
    /// the ping timeout, until it sends anything.
    fn pinged(&mut self, side: Side, now: Nanos) {
        self.from(side).ping_sent = now;
    }

    /// A ping still queued behind a frame toward its side (a long message
    /// streaming there) has not been sent: its timeout starts once it goes
    /// out, not while the peer is busy receiving. Called before the copy, so
    /// that the poll that writes it out stamps it too.
    fn ping_waits(&mut self, started: Instant) {
        let waits =
            |from: &Framing, toward: &Framing| from.ping_sent != NEVER && toward.has_insert();
        let client = waits(&self.c2u, &self.u2c);
        let upstream = waits(&self.u2c, &self.c2u);
        if client || upstream {
            let now = nanos_since(started);
            if client {
                self.c2u.ping_sent = now;
            }
            if upstream {
                self.u2c.ping_sent = now;
            }
        }
    }

    /// The direction whose bytes come from `side`.
    fn from(&mut self, side: Side) -> &mut Framing {
        match side {
            Side::Client => &mut self.c2u,
            Side::Upstream => &mut self.u2c,
        }
    }

    /// The close linger in nanoseconds.
    fn close_linger(&self) -> Nanos {
        u64::from(self.close_linger_ms).saturating_mul(1_000_000)
    }

    /// The direction whose bytes go toward `side`.
    fn toward(&mut self, side: Side) -> &mut Framing {
        match side {
            Side::Upstream => &mut self.c2u,
            Side::Client => &mut self.u2c,
        }
    }

    /// Starts a polite close, the client first: `close` goes to the client
    /// at the next boundary toward it, and what the upstream sends after it
    /// is dropped. The client's own Close reply then goes through to the
    /// upstream, so every message the client sent before it read the Close
    /// arrives. Should the client end its stream without one, `close` goes
    /// to the upstream (masked) before its write side is shut; should it stay
    /// silent, [`give_up_on_client`](Self::give_up_on_client) sends it.
    ///
    /// Does nothing once a peer sent a Close of its own: that closing
    /// handshake is already under way, and a second Close would reach a peer
    /// that already closed.
    fn part(&mut self, close: &CloseFrame) {
        if self.c2u.tracker.close_seen() || self.u2c.tracker.close_seen() {
            return;
        }
        self.u2c.insert_then_discard(&close.encode(None));
        self.c2u.insert_at_eof(&close.encode(Some(masking_key())));
        self.parting = true;
    }

    /// After a linger without the client's reply: sends the upstream its
    /// Close at the next boundary and waits for the upstream alone. False
    /// when that was done already, or the upstream has its Close.
    fn give_up_on_client(&mut self) -> bool {
        // A client that sent its Close had it forwarded: the upstream has a
        // Close and must not get the proxy's too.
        if self.gave_up || !self.c2u.is_deferred() || self.c2u.tracker.close_seen() {
            return false;
        }
        self.gave_up = true;
        self.c2u.release();
        true
    }

    /// Whether the peers answered a polite close: with a Close frame, or by
    /// ending their stream (the client's answer is no longer awaited once
    /// given up on).
    fn parted(&self, c2u: &Transfer, u2c: &Transfer) -> bool {
        let client = self.c2u.tracker.close_seen() || c2u.read_done();
        let upstream = self.u2c.tracker.close_seen() || u2c.read_done();
        // What was read is also written: the replies and whatever preceded
        // them are not dropped with the sockets.
        let written = !c2u.has_spill() && !u2c.has_spill();
        (client || self.gave_up) && upstream && written
    }

    /// Whether either peer sent a Close: no pings then (RFC 6455 §5.5.1:
    /// nothing after a Close).
    fn closing(&self) -> bool {
        self.c2u.tracker.close_seen() || self.u2c.tracker.close_seen()
    }
}

/// A Ping frame with an empty payload toward `side`: masked toward the
/// upstream (RFC 6455 §5.3), not toward the client.
fn ping_frame(side: Side) -> Vec<u8> {
    match side {
        Side::Client => vec![0x89, 0x00],
        Side::Upstream => {
            let mut frame = vec![0x89, 0x80];
            frame.extend_from_slice(&masking_key());
            frame
        }
    }
}

/// A fresh masking key for a frame the proxy sends to the upstream (RFC 6455
/// §5.3 asks for one per frame, unpredictable). `RandomState` is seeded
/// from the operating system's randomness and keyed per call, so its
/// SipHash output serves without another dependency.
fn masking_key() -> [u8; 4] {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    let bits = hasher.finish();
    [
        bits as u8,
        (bits >> 8) as u8,
        (bits >> 16) as u8,
        (bits >> 24) as u8,
    ]
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
        let Some(tracked) = this.frames.as_deref_mut() else {
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
        let toward_upstream = close.encode(Some(masking_key()));
        self.as_mut().insert_frames(Side::Client, &toward_client)
            && self.insert_frames(Side::Upstream, &toward_upstream)
    }

    /// A handle the host keeps to close this tunnel politely or cut it later,
    /// from anywhere (see [`TunnelHandle`]). Call it before the tunnel is
    /// pinned or spawned; every call returns a handle on the same tunnel.
    pub fn handle(&mut self) -> TunnelHandle {
        TunnelHandle::new(self.control.get_or_insert_with(Arc::default).clone())
    }

    /// Whether frames queued by [`insert_frames`](Self::insert_frames) or
    /// [`insert_close`](Self::insert_close) still wait for a boundary toward
    /// `side`.
    pub fn has_pending_frames(&self, side: Side) -> bool {
        self.frames.as_deref().is_some_and(|f| match side {
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
    pub struct Tunnel<C, U, F> {
        client: C,
        upstream: U,
        #[pin]
        shutdown: F,
        c2u: Transfer,
        u2c: Transfer,
        frames: Option<Box<Frames>>,
        // Shared with the host's `TunnelHandle`s, once one was asked for.
        control: Option<Arc<Control>>,
        started: Instant,
        timers: Option<Pin<Box<Timers>>>,
        // Boxed: only an abnormal end is stored, once, while closing.
        end: Option<Box<TunnelEnd>>,
        first_eof: Option<Side>,
        phase: Phase,
        client_open: bool,
        upstream_open: bool,
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
            .field("phase", &self.phase)
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        let mut this = self.project();
        let started = *this.started;
        loop {
            match *this.phase {
                Phase::Running | Phase::Parting => {
                    let mut end = None;
                    if let Some(control) = this.control.as_deref() {
                        match control.poll_request(cx) {
                            Request::Cut => end = Some(TunnelEnd::Shutdown),
                            Request::Close if *this.phase == Phase::Running => {
                                match (this.frames.as_deref_mut(), control.close_frame()) {
                                    (Some(frames), Some(close)) => {
                                        frames.part(close);
                                        let by = nanos_since(started)
                                            .saturating_add(frames.close_linger());
                                        *timers_or_off(this.timers).as_mut().project().parted_by =
                                            by;
                                        *this.phase = Phase::Parting;
                                    }
                                    // No boundaries to close at: cut.
                                    _ => end = Some(TunnelEnd::Shutdown),
                                }
                            }
                            Request::Close | Request::None => {}
                        }
                    }
                    if end.is_none() && this.shutdown.as_mut().poll(cx).is_ready() {
                        end = Some(TunnelEnd::Shutdown);
                    }
                    if let Some(frames) = this.frames.as_deref_mut() {
                        frames.ping_waits(started);
                    }
                    if end.is_none() {
                        end = run(
                            cx,
                            this.client,
                            this.upstream,
                            this.c2u,
                            this.u2c,
                            this.frames.as_deref_mut(),
                            started,
                            this.first_eof,
                            this.timers.as_mut().map(|t| t.as_mut().project()),
                        );
                    }
                    let parting = *this.phase == Phase::Parting;
                    // Whether the end is the proxy's doing: its own Close
                    // frames went in (else the peers were closing already).
                    let proxy_parting = this.frames.as_deref().is_some_and(|f| f.parting);
                    let closed = || {
                        let close = this.control.as_deref().and_then(Control::close_frame);
                        TunnelEnd::Closed(close.cloned().unwrap_or_else(CloseFrame::empty))
                    };
                    let end = match end {
                        // The peers ending their streams is how a polite
                        // close is meant to end.
                        Some(end) if proxy_parting && end.is_clean() => closed(),
                        Some(end) => end,
                        None if proxy_parting
                            && this
                                .frames
                                .as_deref()
                                .is_some_and(|f| f.parted(this.c2u, this.u2c)) =>
                        {
                            closed()
                        }
                        None => match this.timers.as_mut().and_then(|t| {
                            // A closing handshake, the proxy's or the peers',
                            // takes no pings.
                            let quiet =
                                parting || this.frames.as_deref().is_some_and(Frames::closing);
                            let frames = this.frames.as_deref();
                            poll_timers(cx, t.as_mut(), started, this.c2u, this.u2c, frames, quiet)
                        }) {
                            Some(Due::End(timeout)) => TunnelEnd::Timeout(timeout),
                            Some(Due::Parted) => {
                                let linger = this.frames.as_deref_mut().and_then(|f| {
                                    f.give_up_on_client().then_some(f.close_linger())
                                });
                                if let Some(linger) = linger {
                                    // One more linger, for the upstream's reply.
                                    let by = nanos_since(started).saturating_add(linger);
                                    *timers_or_off(this.timers).as_mut().project().parted_by = by;
                                    continue;
                                }
                                closed()
                            }
                            Some(Due::Ping(side)) => {
                                if let Some(frames) = this.frames.as_deref_mut() {
                                    frames.toward(side).insert(&ping_frame(side));
                                    frames.pinged(side, nanos_since(started));
                                }
                                // Write it at once if the direction allows.
                                continue;
                            }
                            None => return Poll::Pending,
                        },
                    };
                    if end.is_clean() {
                        *this.phase = Phase::Finished;
                        finished(this.control.as_deref());
                        return Poll::Ready(stats(
                            started,
                            this.c2u,
                            this.u2c,
                            this.frames.as_deref(),
                            *this.first_eof,
                            end,
                        ));
                    }
                    *this.end = Some(Box::new(end));
                    *this.client_open = !this.u2c.is_done();
                    *this.upstream_open = !this.c2u.is_done();
                    *this.phase = Phase::Closing;
                }
                Phase::Closing => {
                    // Errors here change nothing: the tunnel is ending anyway
                    // and the streams are dropped right after.
                    if *this.client_open && Pin::new(&mut *this.client).poll_shutdown(cx).is_ready()
                    {
                        *this.client_open = false;
                    }
                    if *this.upstream_open
                        && Pin::new(&mut *this.upstream).poll_shutdown(cx).is_ready()
                    {
                        *this.upstream_open = false;
                    }
                    let done = (!*this.client_open && !*this.upstream_open)
                        || close_deadline_passed(cx, this.timers.as_mut());
                    if !done {
                        return Poll::Pending;
                    }
                    *this.phase = Phase::Finished;
                    finished(this.control.as_deref());
                    *this.timers = None;
                    let end = this.end.take().map_or(TunnelEnd::Shutdown, |end| *end);
                    return Poll::Ready(stats(
                        started,
                        this.c2u,
                        this.u2c,
                        this.frames.as_deref(),
                        *this.first_eof,
                        end,
                    ));
                }
                // Polled after completion: stay pending rather than panic.
                Phase::Finished => return Poll::Pending,
            }
        }
    }
}

/// Tells the tunnel's handles that it ended, so that their requests report
/// doing nothing.
fn finished(control: Option<&Control>) {
    if let Some(control) = control {
        control.finish();
    }
}

/// Whether the final shutdown of both sides should stop waiting: at once
/// without a send timeout (the streams are dropped, hence closed, right
/// after), else once the send timeout has passed, so that a peer that
/// stopped reading cannot hold the tunnel open.
fn close_deadline_passed(cx: &mut Context<'_>, timers: Option<&mut Pin<Box<Timers>>>) -> bool {
    let Some(timers) = timers else { return true };
    let t = timers.as_mut().project();
    if t.limits.send == NEVER {
        return true;
    }
    let limit = Duration::from_nanos(t.limits.send);
    let Some(mut sleep) = Instant::now()
        .checked_add(limit)
        .and_then(|at| t.sleep.arm(at))
    else {
        return true;
    };
    if !*t.close_bounded {
        *t.close_bounded = true;
        if let Some(at) = Instant::now().checked_add(limit) {
            sleep.as_mut().reset(at);
        }
    }
    sleep.poll(cx).is_ready()
}

/// Copies in both directions; returns why the tunnel ended, if it did.
#[allow(clippy::too_many_arguments)]
fn run<C, U>(
    cx: &mut Context<'_>,
    client: &mut C,
    upstream: &mut U,
    c2u: &mut Transfer,
    u2c: &mut Transfer,
    mut frames: Option<&mut Frames>,
    started: Instant,
    first_eof: &mut Option<Side>,
    mut timers: Option<TimersProj<'_>>,
) -> Option<TunnelEnd>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // Lives for this poll only: an idle tunnel holds no copy buffer.
    let mut buf = [MaybeUninit::<u8>::uninit(); STACK_BUF];

    let clock = timers.as_mut().map(|t| (&mut *t.c2u, started));
    let tracker = frames.as_deref_mut().map(|f| &mut f.c2u);
    if let Poll::Ready(Err(e)) = c2u.poll_copy(cx, client, upstream, &mut buf, clock, tracker) {
        return Some(TunnelEnd::Error(blame(e, Side::Client)));
    }
    if c2u.read_done() && first_eof.is_none() {
        *first_eof = Some(Side::Client);
        if let Some(t) = timers.as_mut() {
            *t.first_eof_at = nanos_since(started);
        }
    }
    let clock = timers.as_mut().map(|t| (&mut *t.u2c, started));
    let tracker = frames.map(|f| &mut f.u2c);
    if let Poll::Ready(Err(e)) = u2c.poll_copy(cx, upstream, client, &mut buf, clock, tracker) {
        return Some(TunnelEnd::Error(blame(e, Side::Upstream)));
    }
    if u2c.read_done() && first_eof.is_none() {
        *first_eof = Some(Side::Upstream);
        if let Some(t) = timers.as_mut() {
            *t.first_eof_at = nanos_since(started);
        }
    }
    if c2u.is_done() && u2c.is_done() {
        return Some(match first_eof {
            Some(Side::Upstream) => TunnelEnd::UpstreamEof,
            _ => TunnelEnd::ClientEof,
        });
    }
    None
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

/// What a deadline of the tunnel's single timer stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// A timeout ends the tunnel.
    End(Timeout),
    /// A side has been silent for the ping interval: ping it.
    Ping(Side),
    /// A polite close waited its linger for the peers' replies.
    Parted,
}

/// Timers of a tunnel that had none: a polite close needs one for its linger.
fn timers_or_off(timers: &mut Option<Pin<Box<Timers>>>) -> &mut Pin<Box<Timers>> {
    timers.get_or_insert_with(|| {
        Box::pin(Timers {
            limits: Limits::OFF,
            c2u: Stamps::new(false, false),
            u2c: Stamps::new(false, false),
            first_eof_at: NEVER,
            parted_by: NEVER,
            close_bounded: false,
            sleep: LazySleep::Unarmed,
        })
    })
}

/// The earliest pending deadline (nanoseconds since the start) and what it
/// is for.
fn next_deadline(
    t: &TimersProj<'_>,
    (c2u, c2u_stamps): (&Transfer, &Stamps),
    (u2c, u2c_stamps): (&Transfer, &Stamps),
    frames: Option<&Frames>,
    quiet: bool,
) -> Option<(Nanos, Due)> {
    let limits = &*t.limits;
    let mut best: Option<(Nanos, Due)> = None;
    let mut consider = |from: Nanos, limit: Nanos, kind: Due| {
        if from == NEVER || limit == NEVER {
            return;
        }
        let at = from.saturating_add(limit);
        match best {
            Some((b, _)) if b <= at => {}
            _ => best = Some((at, kind)),
        }
    };
    consider(0, limits.lifetime, Due::End(Timeout::Lifetime));
    consider(
        c2u_stamps.last_read.max(u2c_stamps.last_read),
        limits.idle,
        Due::End(Timeout::Idle),
    );
    // A side is not read while the write of its bytes stalls, so its
    // silence proves nothing then: the send timeout covers that case.
    if !c2u.read_done() && c2u_stamps.stalled_since().is_none() {
        consider(
            c2u_stamps.last_read,
            limits.client_read,
            Due::End(Timeout::Read(Side::Client)),
        );
    }
    if !u2c.read_done() && u2c_stamps.stalled_since().is_none() {
        consider(
            u2c_stamps.last_read,
            limits.upstream_read,
            Due::End(Timeout::Read(Side::Upstream)),
        );
    }
    if let Some(since) = c2u_stamps.stalled_since() {
        consider(since, limits.send, Due::End(Timeout::Send(Side::Upstream)));
    }
    if let Some(since) = u2c_stamps.stalled_since() {
        consider(since, limits.send, Due::End(Timeout::Send(Side::Client)));
    }
    consider(*t.first_eof_at, limits.linger, Due::End(Timeout::Linger));
    consider(*t.parted_by, 0, Due::Parted);
    // A closing tunnel waits for Close replies, not pings.
    let Some(frames) = frames.filter(|f| !quiet && f.ping_interval != NEVER) else {
        return best;
    };
    for (side, from, toward, stamps, framing) in [
        (Side::Client, c2u, u2c, c2u_stamps, &frames.c2u),
        (Side::Upstream, u2c, c2u, u2c_stamps, &frames.u2c),
    ] {
        if from.read_done() || toward.is_done() {
            continue;
        }
        if framing.ping_sent == NEVER {
            consider(stamps.last_read, frames.ping_interval, Due::Ping(side));
        } else {
            consider(
                framing.ping_sent,
                frames.ping_timeout,
                Due::End(Timeout::Ping(side)),
            );
        }
    }
    best
}

/// Arms the single timer for `next` and reports the timeout if it is due.
///
/// Traffic only moves deadlines later, so the timer is not reset on every
/// read: when it fires early, it is pushed to the current deadline then.
/// It is reset eagerly only when a deadline comes earlier (a write stalls,
/// a side sends EOF).
fn poll_timers(
    cx: &mut Context<'_>,
    timers: Pin<&mut Timers>,
    started: Instant,
    c2u: &Transfer,
    u2c: &Transfer,
    frames: Option<&Frames>,
    quiet: bool,
) -> Option<Due> {
    let t = timers.project();
    let (at, kind) = next_deadline(&t, (c2u, &*t.c2u), (u2c, &*t.u2c), frames, quiet)?;
    // A deadline too far to represent never fires.
    let at = started.checked_add(Duration::from_nanos(at))?;
    let mut sleep = t.sleep.arm(at)?;
    // At most twice: a timer that fired early is pushed to `at` once.
    for _ in 0..2 {
        if sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        if sleep.deadline() >= at {
            return Some(kind);
        }
        sleep.as_mut().reset(at);
    }
    None
}

fn stats(
    started: Instant,
    c2u: &Transfer,
    u2c: &Transfer,
    frames: Option<&Frames>,
    first_eof: Option<Side>,
    end: TunnelEnd,
) -> TunnelStats {
    TunnelStats {
        client_to_upstream: c2u.bytes(),
        upstream_to_client: u2c.bytes(),
        duration: started.elapsed(),
        first_eof,
        end,
        frames: frames.map(Frames::stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tunnel that tracks frames (the proxy's default) keeps this box
    /// while it idles, and every timed tunnel the timer block. Both sit just
    /// under an allocation size class: 40 bytes more in the timer block
    /// measured 260 bytes more per idle tunnel (`examples/idle_tunnels`).
    /// Raise these only knowingly.
    #[test]
    fn the_frame_box_and_the_timer_block_stay_small() {
        let frames = std::mem::size_of::<Frames>();
        assert!(frames <= 152, "frame box grew to {frames} bytes");
        let timers = std::mem::size_of::<Timers>();
        assert!(timers <= 232, "timer block grew to {timers} bytes");
    }
}
