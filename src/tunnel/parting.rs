//! Parting, sans-IO: the polite close the host asks for
//! (`TunnelHandle::close`) and the end of a closing handshake the peers ran
//! themselves. Decides where the Close frames go and when the handshake is
//! over; the shell only copies and keeps the linger's timer.

use super::transfer::{Flow, Nanos};
use super::{mask_toward, Frames, Side, TunnelConfig};
use crate::frame::CloseFrame;

/// The polite-close part of the frame state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parting {
    /// [`TunnelConfig::close_linger`] in milliseconds: four bytes here
    /// instead of eight keep the box in a smaller allocation class.
    close_linger_ms: u32,
    /// A polite close stopped waiting for the client's reply.
    gave_up: bool,
    /// The proxy queued Close frames of its own (a polite close that found
    /// the peers already closing queues none, and lets them finish).
    pub(super) proxy_closing: bool,
}

impl Parting {
    pub(super) fn new(config: &TunnelConfig) -> Self {
        Self {
            close_linger_ms: u32::try_from(config.close_linger.as_millis()).unwrap_or(u32::MAX),
            gave_up: false,
            proxy_closing: false,
        }
    }

    /// The close linger in nanoseconds.
    pub(super) fn linger(&self) -> Nanos {
        u64::from(self.close_linger_ms).saturating_mul(1_000_000)
    }
}

impl Frames {
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
    pub(super) fn part(&mut self, close: &CloseFrame) {
        if self.closing() {
            return;
        }
        self.u2c
            .insert_then_discard(&close.encode(mask_toward(Side::Client)));
        self.c2u
            .insert_at_eof(&close.encode(mask_toward(Side::Upstream)));
        self.parting.proxy_closing = true;
    }

    /// After a linger without the client's reply: sends the upstream its
    /// Close at the next boundary and waits for the upstream alone. False
    /// when that was done already, or the upstream has its Close.
    pub(super) fn give_up_on_client(&mut self) -> bool {
        // A client that sent its Close had it forwarded: the upstream has a
        // Close and must not get the proxy's too.
        if self.parting.gave_up || !self.c2u.is_deferred() || self.c2u.tracker.close_seen() {
            return false;
        }
        self.parting.gave_up = true;
        self.c2u.release();
        true
    }

    /// Whether the peers answered a polite close: with a Close frame, or by
    /// ending their stream (the client's answer is no longer awaited once
    /// given up on).
    pub(super) fn parted(&self, c2u: Flow, u2c: Flow) -> bool {
        let client = self.c2u.tracker.close_seen() || c2u.read_done;
        let upstream = self.u2c.tracker.close_seen() || u2c.read_done;
        // What was read is also written: the replies and whatever preceded
        // them are not dropped with the sockets.
        let written = !c2u.has_spill && !u2c.has_spill;
        (client || self.parting.gave_up) && upstream && written
    }

    /// Whether either peer sent a Close: no pings then (RFC 6455 §5.5.1:
    /// nothing after a Close).
    pub(super) fn closing(&self) -> bool {
        self.c2u.tracker.close_seen() || self.u2c.tracker.close_seen()
    }
    /// Whether the peers' own closing handshake is over: each sent a Close,
    /// and both went through, with everything before them (RFC 6455
    /// §7.1.1: the server may close the TCP connection then). The tunnel
    /// waits one close linger more for the peers' own FIN, then ends.
    pub(super) fn closes_exchanged(&self, c2u: Flow, u2c: Flow) -> bool {
        self.c2u.tracker.close_seen()
            && self.u2c.tracker.close_seen()
            && !c2u.has_spill
            && !u2c.has_spill
    }
}

#[cfg(test)]
mod tests {
    //! Polite-close decisions on a frame state fed by hand: no sockets.

    use super::*;
    use std::time::Duration;

    use crate::frame::{FrameTracker, Role};
    use crate::tunnel::hook::FrameHook;
    use crate::tunnel::ping::Pings;

    fn frames(config: &TunnelConfig) -> Frames {
        Frames {
            c2u: FrameHook::new(FrameTracker::new(Role::Client)),
            u2c: FrameHook::new(FrameTracker::new(Role::Server)),
            parting: Parting::new(config),
            pings: Pings::new(config),
        }
    }

    const CLIENT_CLOSE: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
    const UPSTREAM_CLOSE: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

    #[test]
    fn a_polite_close_goes_to_the_client_now_and_waits_for_it_toward_the_upstream() {
        let config = TunnelConfig::new().track_frames(true);
        let mut f = frames(&config);
        assert_eq!(f.parting.linger(), 5_000_000_000);
        f.part(&CloseFrame::new(1001, "bye").unwrap());
        assert!(f.parting.proxy_closing);
        assert!(f.u2c.has_insert() && !f.u2c.is_deferred());
        assert!(
            f.c2u.is_deferred(),
            "the upstream's Close waits for the client"
        );
        let open = Flow::default();
        assert!(!f.parted(open, open));
        // The client never answers: after the linger the upstream gets the
        // proxy's Close, once.
        assert!(f.give_up_on_client());
        assert!(!f.give_up_on_client());
        assert!(!f.parted(open, open), "the upstream still owes its reply");
        f.u2c.tracker.observe(&UPSTREAM_CLOSE).unwrap();
        assert!(f.parted(open, open));
        let spilling = Flow {
            has_spill: true,
            ..open
        };
        assert!(!f.parted(spilling, open), "what was read goes out first");
    }

    #[test]
    fn a_client_that_replied_is_not_given_up_on() {
        let config = TunnelConfig::new().track_frames(true);
        let mut f = frames(&config);
        f.part(&CloseFrame::new(1001, "").unwrap());
        f.c2u.tracker.observe(&CLIENT_CLOSE).unwrap();
        assert!(!f.give_up_on_client());
        let open = Flow::default();
        assert!(!f.parted(open, open));
        let upstream_eof = Flow {
            read_done: true,
            ..open
        };
        assert!(f.parted(open, upstream_eof));
    }

    #[test]
    fn peers_already_closing_get_no_close_from_the_proxy() {
        let config = TunnelConfig::new()
            .track_frames(true)
            .close_linger(Duration::from_millis(250));
        let mut f = frames(&config);
        f.c2u.tracker.observe(&CLIENT_CLOSE).unwrap();
        assert!(f.closing());
        f.part(&CloseFrame::new(1001, "").unwrap());
        assert!(!f.parting.proxy_closing);
        assert!(!f.c2u.has_insert() && !f.u2c.has_insert());
        assert_eq!(f.parting.linger(), 250_000_000);
    }

    #[test]
    fn the_peers_handshake_is_over_once_both_closes_went_through() {
        let config = TunnelConfig::new().track_frames(true);
        let mut f = frames(&config);
        let open = Flow::default();
        f.c2u.tracker.observe(&CLIENT_CLOSE).unwrap();
        assert!(!f.closes_exchanged(open, open), "the reply is still due");
        f.u2c.tracker.observe(&UPSTREAM_CLOSE).unwrap();
        let spilling = Flow {
            has_spill: true,
            ..open
        };
        assert!(
            !f.closes_exchanged(open, spilling),
            "the reply is not out yet"
        );
        assert!(f.closes_exchanged(open, open));
        assert!(
            !f.parting.proxy_closing,
            "the peers' doing, not the proxy's"
        );
    }
}
