//! The tunnel's deadlines, sans-IO: which timeout, ping or polite-close
//! linger comes next, decided from time stamps alone. The caller passes in
//! what it knows of both directions and gets back a deadline, in
//! nanoseconds since the tunnel started; arming a timer for it is the
//! shell's business (`Tunnel::poll`), as in quinn-proto's `poll_timeout`.

use std::time::Duration;

use super::ping::PingState;
use super::stats::{Side, Timeout};
use super::transfer::{Flow, Nanos, Stamps, NEVER};
use super::TunnelConfig;

/// The timeouts of a [`TunnelConfig`] in nanoseconds, [`NEVER`] when off:
/// half the size of `Option<Duration>`s in every live tunnel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) idle: Nanos,
    pub(super) client_read: Nanos,
    pub(super) upstream_read: Nanos,
    pub(super) send: Nanos,
    pub(super) linger: Nanos,
    pub(super) lifetime: Nanos,
}

/// `d` in nanoseconds, [`NEVER`] when off or too long to represent.
pub(super) fn nanos(d: Option<Duration>) -> Nanos {
    d.map_or(NEVER, |d| u64::try_from(d.as_nanos()).unwrap_or(NEVER))
}

impl Timeouts {
    /// Every timeout off: the timeouts of a tunnel that needs its timer only
    /// for a closing handshake.
    pub(super) const OFF: Timeouts = Timeouts {
        idle: NEVER,
        client_read: NEVER,
        upstream_read: NEVER,
        send: NEVER,
        linger: NEVER,
        lifetime: NEVER,
    };

    pub(super) fn new(config: &TunnelConfig) -> Self {
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

    pub(super) fn any(&self) -> bool {
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

/// What a deadline of the tunnel's single timer stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// A timeout ends the tunnel.
    End(Timeout),
    /// A side has been silent for the ping interval: ping it.
    Ping(Side),
    /// A closing handshake waited its linger for the peers.
    Parted,
}

/// The time stamps every deadline is measured from, kept (boxed with the
/// timer) only by tunnels that have a timeout, a ping or a closing
/// handshake under way.
#[derive(Debug)]
pub(super) struct Deadlines {
    pub(super) timeouts: Timeouts,
    /// Reads and stalls of the client-to-upstream direction.
    pub(super) c2u: Stamps,
    /// Reads and stalls of the upstream-to-client direction.
    pub(super) u2c: Stamps,
    /// When the first side sent EOF (the linger timeout counts the other
    /// direction's silence from there).
    pub(super) first_eof_at: Nanos,
    /// When a closing handshake stops waiting for the peers.
    pub(super) parted_by: Nanos,
    /// The final shutdown of both sides has its deadline set.
    pub(super) close_bounded: bool,
}

impl Deadlines {
    /// The deadlines of a tunnel with `timeouts`; `pings` tells whether
    /// pings are due after a side's silence, which needs its reads stamped.
    pub(super) fn new(timeouts: Timeouts, pings: bool) -> Self {
        let idle = timeouts.idle != NEVER || pings;
        let send = timeouts.send != NEVER;
        let client_read = timeouts.client_read != NEVER;
        let upstream_read = timeouts.upstream_read != NEVER;
        Self {
            // Stalls matter to the send timeout, and suspend a read timeout
            // or a ping's. And a side is not read while its bytes wait for
            // a slow writer: the writer's progress after a stall counts as
            // activity, or the idle timeout would cut a tunnel whose bytes
            // still move (HAProxy's `timeout tunnel` counts writes too).
            c2u: Stamps::new(idle || client_read, idle || send || client_read || pings),
            u2c: Stamps::new(
                idle || upstream_read,
                idle || send || upstream_read || pings,
            ),
            timeouts,
            first_eof_at: NEVER,
            parted_by: NEVER,
            close_bounded: false,
        }
    }

    /// Deadlines with every timeout off: a tunnel without a timer gets them
    /// when a closing handshake needs its linger.
    pub(super) fn off() -> Self {
        Self::new(Timeouts::OFF, false)
    }

    /// The first side sent EOF at `now`: the linger timeout starts.
    pub(super) fn first_eof(&mut self, now: Nanos) {
        if self.first_eof_at == NEVER {
            self.first_eof_at = now;
            // The linger measures the silence of the direction left, from
            // now on only: no clock read per chunk before an EOF.
            // Its stalls too, as for the idle timeout: writes to a slow
            // reader are the direction moving.
            if self.timeouts.linger != NEVER {
                for stamps in [&mut self.c2u, &mut self.u2c] {
                    stamps.track_reads = true;
                    stamps.track_stalls = true;
                }
            }
        }
    }

    /// A closing handshake waits for the peers until `now + linger`; a wait
    /// already under way keeps its own end.
    pub(super) fn part_by(&mut self, now: Nanos, linger: Nanos) {
        if self.parted_by == NEVER {
            self.parted_by = now.saturating_add(linger);
        }
    }

    /// Extends the closing handshake's wait to `now + linger` (one more
    /// linger, for the upstream's reply).
    pub(super) fn extend_parting(&mut self, now: Nanos, linger: Nanos) {
        self.parted_by = now.saturating_add(linger);
    }

    /// The earliest pending deadline (nanoseconds since the start) and what
    /// it is for, given both directions and, unless the tunnel is closing
    /// or does not ping, the ping state.
    pub(super) fn next(
        &self,
        c2u: Flow,
        u2c: Flow,
        pings: Option<PingState>,
    ) -> Option<(Nanos, Due)> {
        let limits = &self.timeouts;
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
            self.c2u.last_read.max(self.u2c.last_read),
            limits.idle,
            Due::End(Timeout::Idle),
        );
        // A side is not read while the write of its bytes stalls, so its
        // silence proves nothing then: the send timeout covers that case.
        if !c2u.read_done && self.c2u.stalled_since().is_none() {
            consider(
                self.c2u.last_read,
                limits.client_read,
                Due::End(Timeout::Read(Side::Client)),
            );
        }
        if !u2c.read_done && self.u2c.stalled_since().is_none() {
            consider(
                self.u2c.last_read,
                limits.upstream_read,
                Due::End(Timeout::Read(Side::Upstream)),
            );
        }
        if let Some(since) = self.c2u.stalled_since() {
            consider(since, limits.send, Due::End(Timeout::Send(Side::Upstream)));
        }
        if let Some(since) = self.u2c.stalled_since() {
            consider(since, limits.send, Due::End(Timeout::Send(Side::Client)));
        }
        // An inactivity timeout, as HAProxy's `client-fin`/`server-fin`: the
        // direction left may run as long as it moves, and ends once it has
        // been silent for the linger (its silence counting from the first
        // EOF at the earliest).
        // Once both sides sent EOF nothing is left to read: what remains is
        // writing and the shutdowns, bounded by the send timeout.
        if self.first_eof_at != NEVER && !(c2u.read_done && u2c.read_done) {
            let left = if c2u.read_done { &self.u2c } else { &self.c2u };
            consider(
                self.first_eof_at.max(left.last_read),
                limits.linger,
                Due::End(Timeout::Linger),
            );
        }
        consider(self.parted_by, 0, Due::Parted);
        let Some(pings) = pings else {
            return best;
        };
        for (side, from, toward, stamps) in [
            (Side::Client, c2u, u2c, &self.c2u),
            (Side::Upstream, u2c, c2u, &self.u2c),
        ] {
            // As with the read timeouts: a side not read while the write of
            // its bytes stalls may have answered already, unseen; the send
            // timeout ends that tunnel.
            // Without a send timeout nothing else would end such a tunnel:
            // the ping's does.
            let unread = stamps.stalled_since().is_some() && limits.send != NEVER;
            if from.read_done || toward.done || unread {
                continue;
            }
            let (from, limit, due) = pings.deadline(side, stamps.last_read);
            consider(from, limit, due);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    //! The deadlines driven on explicit times (nanoseconds since the tunnel
    //! started), with no socket, runtime or clock.

    use super::*;
    use crate::tunnel::ping::Pings;

    fn secs(s: u64) -> Nanos {
        s * 1_000_000_000
    }

    fn config() -> TunnelConfig {
        TunnelConfig::new()
    }

    fn open() -> Flow {
        Flow::default()
    }

    fn deadlines(config: TunnelConfig) -> Deadlines {
        Deadlines::new(Timeouts::new(&config), Pings::new(&config).on())
    }

    #[test]
    fn no_timeout_means_no_deadline() {
        let d = deadlines(config());
        assert!(!d.timeouts.any());
        assert_eq!(d.next(open(), open(), None), None);
    }

    #[test]
    fn the_idle_deadline_follows_the_last_read_of_either_side() {
        let mut d = deadlines(config().idle_timeout(Duration::from_secs(30)));
        assert_eq!(
            d.next(open(), open(), None),
            Some((secs(30), Due::End(Timeout::Idle)))
        );
        // The upstream spoke at 10 s, the client at 25 s: idle from 25 s.
        d.u2c.last_read = secs(10);
        d.c2u.last_read = secs(25);
        assert_eq!(
            d.next(open(), open(), None),
            Some((secs(55), Due::End(Timeout::Idle)))
        );
    }

    #[test]
    fn a_read_timeout_waits_while_the_write_stalls_and_the_send_timeout_runs() {
        let config = config()
            .client_read_timeout(Duration::from_secs(60))
            .send_timeout(Duration::from_secs(12));
        let mut d = deadlines(config);
        d.c2u.last_read = secs(5);
        assert_eq!(
            d.next(open(), open(), None),
            Some((secs(65), Due::End(Timeout::Read(Side::Client))))
        );
        // The upstream stopped reading at 20 s: the client is not read, so
        // its silence proves nothing; the send timeout counts instead.
        d.c2u.stalled_since = secs(20);
        assert_eq!(
            d.next(open(), open(), None),
            Some((secs(32), Due::End(Timeout::Send(Side::Upstream))))
        );
        // A client that sent EOF has no read timeout.
        d.c2u.stalled_since = NEVER;
        let eof = Flow {
            read_done: true,
            ..open()
        };
        assert_eq!(d.next(eof, open(), None), None);
    }

    #[test]
    fn the_linger_counts_the_silence_after_the_first_eof() {
        let mut d = deadlines(config().linger_timeout(Duration::from_secs(4)));
        assert_eq!(d.next(open(), open(), None), None);
        d.c2u.last_read = secs(6);
        d.first_eof(secs(7));
        d.first_eof(secs(9));
        let client_eof = Flow {
            read_done: true,
            ..open()
        };
        assert_eq!(
            d.next(client_eof, open(), None),
            Some((secs(11), Due::End(Timeout::Linger)))
        );
        // The upstream's direction is left: its reads postpone the end.
        d.u2c.last_read = secs(10);
        assert_eq!(
            d.next(client_eof, open(), None),
            Some((secs(14), Due::End(Timeout::Linger)))
        );
        // Both sent EOF: nothing left to linger for.
        assert_eq!(d.next(client_eof, client_eof, None), None);
    }

    /// The linger's clock reads start at the first EOF, not before.
    #[test]
    fn reads_are_stamped_for_the_linger_only_after_the_first_eof() {
        let mut d = deadlines(config().linger_timeout(Duration::from_secs(4)));
        assert!(!d.c2u.track_reads && !d.u2c.track_reads);
        d.first_eof(secs(1));
        assert!(d.c2u.track_reads && d.u2c.track_reads);
    }

    #[test]
    fn the_earliest_deadline_wins_and_a_lifetime_counts_from_the_start() {
        let config = config()
            .max_lifetime(Duration::from_secs(100))
            .idle_timeout(Duration::from_secs(30));
        let mut d = deadlines(config);
        d.c2u.last_read = secs(80);
        assert_eq!(
            d.next(open(), open(), None),
            Some((secs(100), Due::End(Timeout::Lifetime)))
        );
    }

    #[test]
    fn a_closing_handshake_lingers_then_is_due_once_extended() {
        let mut d = Deadlines::off();
        assert_eq!(d.next(open(), open(), None), None);
        d.extend_parting(secs(3), secs(5));
        assert_eq!(d.next(open(), open(), None), Some((secs(8), Due::Parted)));
        // Given up on the client at 8 s: one more linger for the upstream.
        d.extend_parting(secs(8), secs(5));
        assert_eq!(d.next(open(), open(), None), Some((secs(13), Due::Parted)));
    }

    #[test]
    fn a_silent_side_is_pinged_after_the_interval_then_timed_out() {
        let config = config()
            .track_frames(true)
            .ping(Duration::from_secs(30), Duration::from_secs(10));
        let pings = Pings::new(&config);
        let mut d = deadlines(config);
        let mut state = PingState {
            pings,
            client_pinged: NEVER,
            upstream_pinged: NEVER,
        };
        d.c2u.last_read = secs(12);
        d.u2c.last_read = secs(5);
        // The upstream has been silent longest: it is pinged first.
        assert_eq!(
            d.next(open(), open(), Some(state)),
            Some((secs(35), Due::Ping(Side::Upstream)))
        );
        // Pinged at 35 s: it has 10 s to send anything; the client is next
        // due a ping at 42 s.
        state.upstream_pinged = secs(35);
        assert_eq!(
            d.next(open(), open(), Some(state)),
            Some((secs(42), Due::Ping(Side::Client)))
        );
        state.client_pinged = secs(42);
        assert_eq!(
            d.next(open(), open(), Some(state)),
            Some((secs(45), Due::End(Timeout::Ping(Side::Upstream))))
        );
        // A client that sent EOF is not pinged, and once its stream was
        // shut toward the upstream, neither is the upstream; without the
        // ping state (a closing tunnel) nothing is due.
        let eof = Flow {
            read_done: true,
            ..open()
        };
        assert_eq!(
            d.next(eof, open(), Some(state)),
            Some((secs(45), Due::End(Timeout::Ping(Side::Upstream))))
        );
        let shut = Flow {
            read_done: true,
            done: true,
            ..open()
        };
        assert_eq!(d.next(shut, open(), Some(state)), None);
        assert_eq!(d.next(open(), open(), None), None);
    }

    /// A side not read during a stall is not timed out by pings when a
    /// send timeout will end the tunnel; without one, the ping timeout
    /// still does.
    #[test]
    fn a_stall_suspends_pings_only_under_a_send_timeout() {
        for send in [Some(Duration::from_secs(60)), None] {
            let config = config()
                .track_frames(true)
                .ping(Duration::from_secs(30), Duration::from_secs(10))
                .send_timeout(send);
            let pings = Pings::new(&config);
            let mut d = deadlines(config);
            let state = PingState {
                pings,
                client_pinged: secs(30),
                upstream_pinged: NEVER,
            };
            d.u2c.last_read = secs(100);
            d.c2u.stalled_since = secs(31);
            let next = d.next(open(), open(), Some(state));
            match send {
                Some(_) => assert_eq!(
                    next,
                    Some((secs(91), Due::End(Timeout::Send(Side::Upstream))))
                ),
                None => assert_eq!(
                    next,
                    Some((secs(40), Due::End(Timeout::Ping(Side::Client))))
                ),
            }
        }
    }

    #[test]
    fn pings_without_frame_tracking_are_off() {
        let config = config().ping(Duration::from_secs(30), Duration::from_secs(10));
        assert!(!Pings::new(&config).on());
        assert!(!deadlines(config).timeouts.any());
    }
}
