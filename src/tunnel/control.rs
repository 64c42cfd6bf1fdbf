//! The host's hold on a running tunnel: ask it to close politely with a
//! WebSocket Close frame, or cut it.
//!
//! A [`TunnelHandle`] and its tunnel share one small block: the request, as
//! an atomic state plus the Close frame set once, and the tunnel's waker,
//! so that a request reaches an idle tunnel at once without the tunnel
//! holding a channel or a timer for it.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Context;

use atomic_waker::AtomicWaker;

use crate::frame::CloseFrame;

/// Nothing asked yet.
const OPEN: u8 = 0;
/// [`TunnelHandle::close`] was called: the Close frame is set.
const CLOSE: u8 = 1;
/// [`TunnelHandle::cut`] was called (possibly after a close).
const CUT: u8 = 2;
/// The tunnel ended (or its future was dropped): requests do nothing.
const FINISHED: u8 = 3;

/// What the host asked of a tunnel, as its poll sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    None,
    Close,
    Cut,
}

#[derive(Default)]
pub(crate) struct Control {
    state: AtomicU8,
    // Boxed: set only when a close is asked, eight bytes until then.
    close: OnceLock<Box<CloseFrame>>,
    waker: AtomicWaker,
}

impl Control {
    /// Registers the tunnel's waker, then reads the request: in that order,
    /// so that a request made between the two still wakes the next poll.
    pub(crate) fn poll_request(&self, cx: &mut Context<'_>) -> Request {
        self.waker.register(cx.waker());
        match self.state.load(Ordering::Acquire) {
            OPEN | FINISHED => Request::None,
            CLOSE => Request::Close,
            _ => Request::Cut,
        }
    }

    /// Marks the tunnel ended: later requests report that they did nothing.
    pub(crate) fn finish(&self) {
        self.state.store(FINISHED, Ordering::Release);
    }

    /// The Close frame asked for, once [`Request::Close`] was seen.
    pub(crate) fn close_frame(&self) -> Option<&CloseFrame> {
        self.close.get().map(|c| &**c)
    }
}

/// A handle on a running [`Tunnel`](super::Tunnel), from
/// [`Tunnel::handle`](super::Tunnel::handle): the host keeps it (in a
/// registry, say) to end the tunnel later from anywhere, politely or not.
///
/// Cloning it is cheap; every clone acts on the same tunnel. Requests made
/// after the tunnel ended do nothing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use wsproxy::frame::CloseFrame;
/// use wsproxy::tunnel::{tunnel, TunnelConfig, TunnelEnd};
///
/// let (client, mut browser) = tokio::io::duplex(1024);
/// let (upstream, mut backend) = tokio::io::duplex(1024);
/// let config = TunnelConfig::new().track_frames(true);
/// let mut relay = tunnel(client, upstream, &config, std::future::pending());
/// let handle = relay.handle();
/// let task = tokio::spawn(relay);
///
/// assert!(handle.close(CloseFrame::new(1001, "going away")?));
/// // The client gets the Close frame and answers with its own, which goes
/// // on to the upstream; the upstream's reply ends the tunnel.
/// let mut frame = [0u8; 14];
/// browser.read_exact(&mut frame).await?;
/// assert_eq!(&frame[..4], &[0x88, 12, 0x03, 0xe9]);
/// let reply = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9];
/// browser.write_all(&reply).await?;
/// let mut forwarded = [0u8; 8];
/// backend.read_exact(&mut forwarded).await?;
/// assert_eq!(forwarded, reply);
/// backend.write_all(&[0x88, 0x02, 0x03, 0xe9]).await?;
///
/// let stats = task.await?;
/// assert!(matches!(stats.end, TunnelEnd::Closed(ref c) if c.code() == Some(1001)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TunnelHandle {
    pub(crate) control: Arc<Control>,
}

impl TunnelHandle {
    pub(crate) fn new(control: Arc<Control>) -> Self {
        Self { control }
    }

    /// Asks the tunnel to close politely, the client first (it is the one
    /// that reconnects):
    ///
    /// 1. `close` goes to the client at the next frame boundary toward it;
    ///    what the upstream sends after that point is dropped (the client,
    ///    closing, would not take it).
    /// 2. What the client sends until it reads the Close still reaches the
    ///    upstream, followed by the client's own Close reply.
    /// 3. The tunnel waits up to [`TunnelConfig::close_linger`] for that
    ///    reply (or the client's EOF, before which `close` goes to the
    ///    upstream, masked as RFC 6455 §5.3 asks). Without either, `close`
    ///    goes to the upstream then, and the upstream gets one more linger.
    /// 4. Once the upstream answered with its Close (not forwarded: the
    ///    client has one) or EOF, both sockets are shut down and the tunnel
    ///    ends with [`TunnelEnd::Closed`].
    ///
    /// If a peer already sent a Close frame, the closing handshake is under
    /// way and nothing is inserted; the tunnel still ends within the linger.
    /// A tunnel that does not track frames
    /// ([`TunnelConfig::track_frames`]) cannot find a boundary and is cut
    /// instead, as by [`cut`](Self::cut).
    ///
    /// Returns `true` for the first request to a running tunnel; later ones,
    /// a close after a cut, and any request once the tunnel ended change
    /// nothing and return `false`.
    ///
    /// [`TunnelConfig::close_linger`]: super::TunnelConfig::close_linger
    /// [`TunnelConfig::track_frames`]: super::TunnelConfig::track_frames
    /// [`TunnelEnd::Closed`]: super::TunnelEnd::Closed
    pub fn close(&self, close: CloseFrame) -> bool {
        if self.control.close.set(Box::new(close)).is_err() {
            return false;
        }
        let asked = self
            .control
            .state
            .compare_exchange(OPEN, CLOSE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.control.waker.wake();
        asked
    }

    /// Ends the tunnel now, as its shutdown future would: both sides are shut
    /// down (within the send timeout) and bytes not yet written are dropped.
    /// The tunnel ends with [`TunnelEnd::Shutdown`](super::TunnelEnd::Shutdown).
    pub fn cut(&self) {
        let state = &self.control.state;
        // An ended tunnel stays ended; anything else becomes a cut.
        let _ = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            (s != FINISHED).then_some(CUT)
        });
        self.control.waker.wake();
    }

    /// Whether [`close`](Self::close) or [`cut`](Self::cut) was asked, or
    /// the tunnel already ended.
    pub fn is_ending(&self) -> bool {
        self.control.state.load(Ordering::Acquire) != OPEN
    }

    /// Whether the tunnel ended: its future completed, or (for a tunnel the
    /// proxy listed in a registry) was dropped.
    pub fn is_finished(&self) -> bool {
        self.control.state.load(Ordering::Acquire) == FINISHED
    }

    /// Whether `self` and `other` act on the same tunnel.
    pub fn same_tunnel(&self, other: &TunnelHandle) -> bool {
        Arc::ptr_eq(&self.control, &other.control)
    }
}

impl fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelHandle")
            .field("ending", &self.is_ending())
            .field("close", &self.control.close.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_request_wakes_the_registered_tunnel_and_the_first_one_wins() {
        let control = Arc::new(Control::default());
        let handle = TunnelHandle::new(control.clone());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(control.poll_request(&mut cx), Request::None);
        assert!(!handle.is_ending());

        assert!(handle.close(CloseFrame::new(1001, "bye").unwrap()));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(!handle.clone().close(CloseFrame::new(1000, "").unwrap()));
        assert_eq!(control.poll_request(&mut cx), Request::Close);
        assert_eq!(control.close_frame().and_then(|c| c.code()), Some(1001));

        handle.cut();
        assert_eq!(control.poll_request(&mut cx), Request::Cut);
        assert!(handle.is_ending());
        assert!(handle.same_tunnel(&handle.clone()));
    }

    #[test]
    fn requests_to_an_ended_tunnel_do_nothing() {
        let control = Arc::new(Control::default());
        let handle = TunnelHandle::new(control.clone());
        control.finish();
        assert!(handle.is_finished());
        assert!(!handle.close(CloseFrame::new(1001, "").unwrap()));
        handle.cut();
        assert!(handle.is_finished(), "a cut does not revive it");
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(control.poll_request(&mut cx), Request::None);
    }

    #[test]
    fn a_close_after_a_cut_stays_a_cut() {
        let control = Arc::new(Control::default());
        let handle = TunnelHandle::new(control.clone());
        handle.cut();
        assert!(!handle.close(CloseFrame::new(1001, "").unwrap()));
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(control.poll_request(&mut cx), Request::Cut);
    }
}
