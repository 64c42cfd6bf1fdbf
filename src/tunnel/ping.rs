//! Pings, sans-IO: when a silent side is due a Ping, and when one that
//! stays silent after it is dead (`TunnelConfig::ping_interval`,
//! `TunnelConfig::ping_timeout`).

use super::deadline::{nanos, Due};
use super::stats::{Side, Timeout};
use super::transfer::{Nanos, NEVER};
use super::{mask_toward, Frames, TunnelConfig};
use crate::frame::ping_frame;

/// Ping settings, in nanoseconds ([`NEVER`] when off). Pings need a
/// tracker, so they live in the frame state rather than in every timed
/// tunnel's timer block, which stays in a smaller allocation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pings {
    interval: Nanos,
    timeout: Nanos,
}

impl Pings {
    pub(super) fn new(config: &TunnelConfig) -> Self {
        Self {
            // Pings go in at frame boundaries: without a tracker there are none.
            interval: if config.track_frames {
                nanos(config.ping_interval)
            } else {
                NEVER
            },
            timeout: nanos(config.ping_timeout),
        }
    }

    /// Whether pings are sent at all.
    pub(super) fn on(&self) -> bool {
        self.interval != NEVER
    }
}

/// What the deadlines need to know of pings: the settings, and when each
/// side was pinged if it has sent nothing since.
#[derive(Debug, Clone, Copy)]
pub(super) struct PingState {
    pub(super) pings: Pings,
    pub(super) client_pinged: Nanos,
    pub(super) upstream_pinged: Nanos,
}

impl PingState {
    /// The deadline of `side`, which last sent a byte at `last_read`, as
    /// (from, limit, what): a Ping after its silence, or the end of the
    /// tunnel once a Ping went unanswered.
    pub(super) fn deadline(&self, side: Side, last_read: Nanos) -> (Nanos, Nanos, Due) {
        let pinged = match side {
            Side::Client => self.client_pinged,
            Side::Upstream => self.upstream_pinged,
        };
        if pinged == NEVER {
            (last_read, self.pings.interval, Due::Ping(side))
        } else {
            (pinged, self.pings.timeout, Due::End(Timeout::Ping(side)))
        }
    }
}

impl Frames {
    /// The ping state for the deadlines; `None` when the tunnel does not
    /// ping or is `quiet`: a closing tunnel waits for Close replies, not
    /// pings (RFC 6455 §5.5.1: nothing after a Close).
    pub(super) fn ping_state(&self, quiet: bool) -> Option<PingState> {
        (!quiet && self.pings.on()).then_some(PingState {
            pings: self.pings,
            client_pinged: self.c2u.ping_sent,
            upstream_pinged: self.u2c.ping_sent,
        })
    }

    /// Queues a Ping toward `side` at `now`: its silence is measured against
    /// the ping timeout from then, until it sends anything.
    pub(super) fn ping(&mut self, side: Side, now: Nanos) {
        self.toward(side).insert(&ping_frame(mask_toward(side)));
        self.from(side).ping_sent = now;
    }

    /// A ping still queued behind a frame toward its side (a long message
    /// streaming there) has not been sent: its timeout starts once it goes
    /// out, not while the peer is busy receiving. Called before the copy, so
    /// that the poll that writes it out stamps it too. `now` is asked only
    /// when a ping waits.
    pub(super) fn ping_waits(&mut self, now: impl FnOnce() -> Nanos) {
        let waits = |from: &super::FrameHook, toward: &super::FrameHook| {
            from.ping_sent != NEVER && toward.has_insert()
        };
        let client = waits(&self.c2u, &self.u2c);
        let upstream = waits(&self.u2c, &self.c2u);
        if client || upstream {
            let now = now();
            if client {
                self.c2u.ping_sent = now;
            }
            if upstream {
                self.u2c.ping_sent = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameTracker, Role};
    use crate::tunnel::hook::FrameHook;
    use crate::tunnel::parting::Parting;
    use std::time::Duration;

    fn frames() -> Frames {
        let config = TunnelConfig::new()
            .track_frames(true)
            .ping(Duration::from_secs(30), Duration::from_secs(10));
        Frames {
            c2u: FrameHook::new(FrameTracker::new(Role::Client)),
            u2c: FrameHook::new(FrameTracker::new(Role::Server)),
            parting: Parting::new(&config),
            pings: Pings::new(&config),
        }
    }

    #[test]
    fn a_ping_is_queued_toward_its_side_and_stamped_on_the_other_direction() {
        let mut f = frames();
        f.ping(Side::Upstream, 7);
        assert!(f.c2u.has_insert(), "toward the upstream");
        assert_eq!(f.u2c.ping_sent, 7, "the upstream's silence counts from 7");
        let state = f.ping_state(false).unwrap();
        assert_eq!(state.upstream_pinged, 7);
        assert_eq!(state.client_pinged, NEVER);
        assert!(
            f.ping_state(true).is_none(),
            "a closing tunnel takes no pings"
        );
    }

    #[test]
    fn a_ping_waiting_behind_a_frame_restarts_its_timeout() {
        let mut f = frames();
        f.ping(Side::Client, 3);
        // Still queued at 9: its timeout counts from then.
        f.ping_waits(|| 9);
        assert_eq!(f.c2u.ping_sent, 9);
        // Nothing queued and nothing pinged: the clock is not even read.
        let mut idle = frames();
        idle.ping_waits(|| unreachable!("no ping waits"));
    }
}
