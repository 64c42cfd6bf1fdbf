//! Rebalancing long-lived tunnels: the async driver around the sans-IO
//! [`Rebalance`] planner.
//!
//! A balancer spreads new connections, but WebSocket connections live for
//! hours: after an upstream joins, or loads drift, the old upstreams keep
//! their tunnels and the new one idles. A [`Rebalancer`] closes tunnels on
//! the overloaded upstreams with a WebSocket Close (1012, service restart,
//! by default), a few at a time, and their clients reconnect through the
//! balancer, which places them on the least loaded upstreams. For hash
//! strategies only tunnels whose key now maps to another upstream move.

use std::time::Duration;

use tokio::time::{sleep, Instant, MissedTickBehavior};

use super::{LiveTunnel, UpstreamGroup};
use crate::balance::{LoadSpread, Placed, Rebalance, Snapshot, UpstreamSet};
use crate::frame::CloseFrame;
use crate::tunnel::TunnelHandle;

/// Rounds of closing and settling before a run gives up: a round falls
/// short only when clients reconnect unevenly or loads change meanwhile.
const MAX_ROUNDS: u32 = 8;

/// Extra passes one run makes for runs asked for while it went.
const MAX_PASSES: u32 = 2;

/// Moves tunnels off the most loaded upstreams of one [`UpstreamGroup`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use wsproxy::balance::{LeastConn, Upstream, UpstreamSet};
/// use wsproxy::proxy::{Rebalancer, UpstreamGroup};
///
/// let set = UpstreamSet::new();
/// set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
/// let group = UpstreamGroup::new("chat", LeastConn::new(set.clone()));
/// // Scale-out: a second backend joins...
/// set.add(Upstream::new("127.0.0.1:9002".parse::<SocketAddr>()?));
/// // ...and takes its share of the open tunnels, 50 closes a second.
/// let report = Rebalancer::new(group, set).rate(50).run().await;
/// assert_eq!(report.moved, 0); // nothing open in this example
/// # Ok(())
/// # }
/// ```
#[must_use = "a Rebalancer does nothing until run"]
#[derive(Debug, Clone)]
pub struct Rebalancer {
    group: UpstreamGroup,
    set: UpstreamSet,
    planner: Rebalance,
    rate: u32,
    close: CloseFrame,
    settle: Duration,
}

/// What a [`Rebalancer::run`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RebalanceReport {
    /// Loads when the run began.
    pub before: LoadSpread,
    /// Loads when it ended, reconnected clients included.
    pub after: LoadSpread,
    /// Tunnels it closed.
    pub moved: usize,
    /// The fewest closes that reach the target from `before`, as planned
    /// then.
    pub needed: usize,
    /// Rounds of closing and settling.
    pub rounds: u32,
}

impl Rebalancer {
    /// A rebalancer for `group`, whose balancer places connections on `set`:
    /// factor 1.25 (HAProxy's `hash-balance-factor 125`), 10 closes a
    /// second, Close 1012 "rebalance", and one second for closed clients to
    /// reconnect before loads are measured again.
    pub fn new(group: UpstreamGroup, set: UpstreamSet) -> Self {
        Self {
            group,
            set,
            planner: Rebalance::default(),
            rate: 10,
            close: CloseFrame::new(1012, "rebalance").unwrap_or_else(|_| CloseFrame::empty()),
            settle: Duration::from_secs(1),
        }
    }

    /// The target: no upstream above `factor × mean` (see [`Rebalance`]).
    #[must_use = "builder methods return the updated builder"]
    pub fn planner(mut self, planner: Rebalance) -> Self {
        self.planner = planner;
        self
    }

    /// At most this many closes a second (at least one), so that clients
    /// come back a few at a time.
    #[must_use = "builder methods return the updated builder"]
    pub fn rate(mut self, per_second: u32) -> Self {
        self.rate = per_second.max(1);
        self
    }

    /// The Close frame sent: 1012 (service restart) by default; 1013 (try
    /// again later) suits clients that back off before reconnecting.
    #[must_use = "builder methods return the updated builder"]
    pub fn close_frame(mut self, close: CloseFrame) -> Self {
        self.close = close;
        self
    }

    /// How long closed clients get to reconnect before loads are measured
    /// again for the next round.
    #[must_use = "builder methods return the updated builder"]
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The group's loads now, tunnels being closed left out.
    pub fn spread(&self) -> LoadSpread {
        let (snapshot, _, placed) = self.placement();
        LoadSpread::of(&snapshot, &placed)
    }

    /// Where every open tunnel runs and where its key would go now.
    fn placement(&self) -> (Snapshot, Vec<LiveTunnel>, Vec<Placed>) {
        let snapshot = self.set.snapshot();
        let now = Instant::now().into_std();
        let balancer = self.group.balancer();
        let tunnels: Vec<LiveTunnel> = self
            .group
            .tunnels()
            .list()
            .into_iter()
            .filter(|t| !t.handle.is_ending())
            .collect();
        let placed = tunnels
            .iter()
            .map(|t| Placed {
                upstream: t.upstream,
                home: t.affinity.and_then(|a| balancer.home(a, now)),
            })
            .collect();
        (snapshot, tunnels, placed)
    }

    /// Closes tunnels until no upstream holds more than its share, or until
    /// nothing more may move: each round plans from the current loads,
    /// closes at the configured rate, waits for the closed tunnels to end
    /// (within their close linger) and for their clients to reconnect
    /// (the settle time), then measures again. It stops when the closed
    /// clients have not all come back by then (a next plan would chase the
    /// smaller total), and after 8 rounds at most.
    ///
    /// One run at a time per group: a run that finds another under way on
    /// the same tunnels (a clone of this rebalancer, another one built on
    /// the group or a clone of it, or on the group a
    /// [`Proxy::reconfigure`](crate::Proxy::reconfigure) kept) closes
    /// nothing and returns at once, with no rounds and `needed` 0; the run
    /// under way then plans once more when its rounds are over (at most
    /// twice in all), and its report counts those passes too.
    pub async fn run(&self) -> RebalanceReport {
        // Two runs at once both plan the surplus before the other's closed
        // clients have landed, and together close more than it. The second
        // skips rather than waits: the run under way measures and plans
        // again after every round, so the join or drift that asked for the
        // second is taken in there, from loads its own closes have settled
        // into; one queued behind it would plan again at once, even when
        // the first stopped because closed clients had not come back.
        let registry = self.group.tunnels();
        let Some(running) = registry.start_rebalance() else {
            let spread = self.spread();
            tracing::debug!(
                group = self.group.name(),
                "rebalance skipped: another run is under way, and will plan once more"
            );
            return RebalanceReport {
                before: spread,
                after: spread,
                moved: 0,
                needed: 0,
                rounds: 0,
            };
        };
        let mut report = self.rounds().await;
        // A skipped ask (a join while this ran) gets one more plan from the
        // loads as they are now: this run may have stopped early (clients
        // not back), before it saw what the ask was for. Bounded: each pass
        // answers the asks made before it began.
        for _ in 0..MAX_PASSES {
            if !registry.take_rebalance_wanted() {
                break;
            }
            let again = self.rounds().await;
            report.after = again.after;
            report.moved += again.moved;
            report.needed += again.needed;
            report.rounds += again.rounds;
        }
        drop(running);
        report
    }

    /// The rounds of one [`run`](Self::run), under its guard.
    async fn rounds(&self) -> RebalanceReport {
        let (snapshot, tunnels, placed) = self.placement();
        let before = LoadSpread::of(&snapshot, &placed);
        let first = self.planner.plan(&snapshot, &placed, usize::MAX);
        let needed = first.needed;
        drop((snapshot, placed));
        let mut moved = 0;
        let mut rounds = 0;
        // The plan's indices point into the list it was made from.
        let mut first = Some((tunnels, first.close));
        let mut total = before.total;
        while rounds < MAX_ROUNDS {
            let (tunnels, close) = match first.take() {
                Some(planned) => planned,
                None => {
                    let (snapshot, tunnels, placed) = self.placement();
                    let now = LoadSpread::of(&snapshot, &placed).total;
                    // Clients not back yet (or gone): planning on the smaller
                    // total would chase it, closing tunnels that are fine.
                    if now < total {
                        break;
                    }
                    total = now;
                    let close = self.planner.plan(&snapshot, &placed, usize::MAX).close;
                    (tunnels, close)
                }
            };
            if close.is_empty() {
                break;
            }
            rounds += 1;
            let closed = self.close_paced(&tunnels, &close).await;
            moved += closed.len();
            self.await_ended(closed).await;
            sleep(self.settle).await;
        }
        let (snapshot, _, placed) = self.placement();
        let after = LoadSpread::of(&snapshot, &placed);
        tracing::info!(
            group = self.group.name(),
            before = before.ratio(),
            after = after.ratio(),
            moved,
            needed,
            "rebalanced"
        );
        RebalanceReport {
            before,
            after,
            moved,
            needed,
            rounds,
        }
    }

    /// Closes `tunnels[i]` for each `i` of `close`, `rate` a second; returns
    /// the handles of those it closed.
    async fn close_paced(&self, tunnels: &[LiveTunnel], close: &[usize]) -> Vec<TunnelHandle> {
        // Above 10⁹ a second the period would round to zero, which tokio
        // refuses. (Its timer counts milliseconds, so past about 1,000 a
        // second closes come one per tick anyway.)
        let period = (Duration::from_secs(1) / self.rate).max(Duration::from_nanos(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut closed = Vec::with_capacity(close.len());
        for tunnel in close.iter().filter_map(|&i| tunnels.get(i)) {
            ticker.tick().await;
            if tunnel.close(&self.close) {
                closed.push(tunnel.handle.clone());
            }
        }
        closed
    }

    /// Waits until the tunnels of `handles` have ended, for at most two
    /// close lingers of the default 5 s: a tunnel that outlives that is
    /// counted where it is.
    async fn await_ended(&self, handles: Vec<TunnelHandle>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if handles.iter().all(TunnelHandle::is_finished) {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use super::*;
    use crate::balance::{LeastConn, Upstream, UpstreamId};
    use crate::proxy::registry::{Listed, Registered};
    use crate::tunnel::{tunnel, TunnelConfig};

    fn handle() -> TunnelHandle {
        let (a, _) = tokio::io::duplex(8);
        let (b, _) = tokio::io::duplex(8);
        tunnel(
            a,
            b,
            &TunnelConfig::new().track_frames(true),
            std::future::pending(),
        )
        .handle()
    }

    fn enter(group: &UpstreamGroup, upstream: UpstreamId) -> Registered {
        let listed = Listed {
            upstream,
            client: IpAddr::from([127, 0, 0, 1]),
            affinity: None,
            origin: 0,
        };
        Registered::new(Arc::clone(group.tunnels()), listed, handle())
    }

    #[tokio::test(start_paused = true)]
    async fn closes_land_on_the_overloaded_upstream_even_beside_ending_tunnels() {
        let set = UpstreamSet::new();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let a = set.add(Upstream::new(addr(9001)));
        let b = set.add(Upstream::new(addr(9002)));
        set.add(Upstream::new(addr(9003)));
        let group = UpstreamGroup::new("g", LeastConn::new(set.clone()));
        // One tunnel of `a` is already closing, then 5 on `b`, 10 on `a`.
        let mut guards = vec![enter(&group, a)];
        group.tunnels().list()[0].handle.cut();
        guards.extend((0..5).map(|_| enter(&group, b)));
        guards.extend((0..10).map(|_| enter(&group, a)));

        let report = Rebalancer::new(group.clone(), set).rate(1000).run().await;
        // 15 open over 3: cap 6, so `a` sheds 4 and `b` none.
        assert_eq!((report.needed, report.moved), (4, 4));
        let closed: Vec<UpstreamId> = group
            .tunnels()
            .list()
            .iter()
            .skip(1)
            .filter(|t| t.handle.is_ending())
            .map(|t| t.upstream)
            .collect();
        assert_eq!(closed, [a, a, a, a]);
        drop(guards);
    }

    #[tokio::test(start_paused = true)]
    async fn the_highest_rate_closes_without_a_panic() {
        let set = UpstreamSet::new();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let a = set.add(Upstream::new(addr(9001)));
        set.add(Upstream::new(addr(9002)));
        let group = UpstreamGroup::new("g", LeastConn::new(set.clone()));
        let guards: Vec<Registered> = (0..4).map(|_| enter(&group, a)).collect();
        // "As fast as possible": a period of under a nanosecond.
        let report = Rebalancer::new(group.clone(), set)
            .rate(u32::MAX)
            .run()
            .await;
        assert_eq!((report.needed, report.moved), (2, 2));
        drop(guards);
    }
}
