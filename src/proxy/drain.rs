//! Draining a proxy's tunnels for hosts that do not use
//! [`Server`](crate::server::Server): Close 1001 spread over a window, then
//! a cut at the deadline. [`Server`](crate::server::Server)'s own drain
//! spreads its closes the same way, over its own tunnels only.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};

use super::Proxy;
use crate::clock::capped;
use crate::frame::CloseFrame;
use crate::server::DrainReport;

/// How long [`Proxy::drain`] and a server's drain wait for cut tunnels to
/// close: each shuts its sockets down within its send timeout, so this only
/// bounds how long the report waits for that.
pub(crate) const CUT_GRACE: Duration = Duration::from_secs(5);

/// How often a drain past its window looks for tunnels opened late.
const LATE_CLOSE_EVERY: Duration = Duration::from_millis(250);

impl Proxy {
    /// Drains this proxy for a host that does not use
    /// [`Server`](crate::server::Server) (an axum or hyper app at its
    /// graceful shutdown): sends every open tunnel a WebSocket Close 1001
    /// (going away), the i-th of n at i/n × `window` (HAProxy
    /// `close-spread-time`, as [`Server::drain_window`](crate::server::Server::drain_window)
    /// does), then cuts what is still open `deadline` after the call (nginx
    /// `worker_shutdown_timeout`) and reports.
    ///
    /// Every tunnel of this proxy is drained, whichever way it came in:
    /// [`Proxy::serve`], a [`Server`](crate::server::Server) (whose own
    /// drain may run too: a tunnel is asked to close once),
    /// [`Proxy::connect_upgrade`]. A tunnel that opens once the drain has
    /// begun (its upgrade was under way) is sent its Close 1001 as it
    /// opens, even after the drain has returned.
    /// [`is_draining`](Self::is_draining) is true from the call on; the
    /// proxy keeps serving what it is given (the host stops accepting).
    ///
    /// In the report, `open_at_shutdown` counts the tunnels open at the
    /// call, `closed` those sent Close 1001, `cut` those still open at the
    /// deadline and `finished` the rest; `accepted` is 0. Keep `window`
    /// shorter than `deadline` by the tunnels' close linger (5 s by
    /// default), so that the last closes are answered before the cut.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn stop(proxy: wsproxy::Proxy) {
    /// // The host stopped accepting; now its WebSockets.
    /// let report = proxy.drain(Duration::from_secs(10), Duration::from_secs(30)).await;
    /// println!("{} closed, {} cut", report.closed, report.cut);
    /// assert!(proxy.is_draining());
    /// # }
    /// ```
    pub async fn drain(&self, window: Duration, deadline: Duration) -> DrainReport {
        let (window, deadline) = (capped(window), capped(deadline));
        let deadline = Instant::now() + deadline;
        let inner = self.inner();
        inner.draining.store(true, Ordering::Relaxed);
        let mut report = DrainReport {
            open_at_shutdown: self.tunnels().len(),
            ..DrainReport::default()
        };
        tracing::info!(open = report.open_at_shutdown, ?window, "proxy draining");
        let _ = timeout_at(deadline, async {
            tokio::select! {
                () = inner.tunnels_ended() => {}
                () = close_spread(self, None, window, &mut report.closed) => {}
            }
        })
        .await;
        // From the counters, not the registry: a tunnel that just ended
        // may still be listed for a moment.
        report.cut =
            usize::try_from(inner.counters.snapshot_tunnels_active()).unwrap_or(usize::MAX);
        report.finished = report.open_at_shutdown.saturating_sub(report.cut);
        if report.cut > 0 {
            self.cut_tunnels();
            let _ = timeout(CUT_GRACE, inner.tunnels_ended()).await;
        }
        tracing::info!(?report, "proxy drained");
        report
    }

    /// Whether [`drain`](Self::drain) was called: a host's readiness check
    /// answers 503 from then on. One atomic load.
    ///
    /// ```
    /// # fn check(proxy: &wsproxy::Proxy) {
    /// let status = if proxy.is_draining() { 503 } else { 200 };
    /// # let _ = status;
    /// # }
    /// ```
    pub fn is_draining(&self) -> bool {
        self.inner().draining.load(Ordering::Relaxed)
    }
}

/// Closes every open tunnel of `origin` (every tunnel for `None`) with
/// 1001, spread evenly over `window`: the i-th of n at `i / n × window`.
/// Tunnels that open later (upgrades under way when the drain began) are
/// closed once the window has passed, as they appear; it runs until the
/// caller's deadline drops it. Counts the tunnels asked to close in
/// `closed` as it goes: the drain may end before the window does.
pub(crate) async fn close_spread(
    proxy: &Proxy,
    origin: Option<u32>,
    window: Duration,
    closed: &mut usize,
) {
    // A server's window comes here uncapped (`Proxy::drain` caps its own).
    let window = capped(window);
    let going_away = CloseFrame::new(1001, "going away").unwrap_or_else(|_| CloseFrame::empty());
    let tunnels = match origin {
        Some(origin) => proxy.tunnels_of(origin),
        None => proxy.tunnels(),
    };
    let start = Instant::now();
    let n = tunnels.len();
    let mut next = 0;
    while next < n {
        // Close every tunnel whose turn has come, then sleep until the next
        // turn: timers are millisecond-grained, turns may be closer.
        let elapsed = start.elapsed();
        while next < n && slot(window, next, n) <= elapsed {
            *closed += usize::from(tunnels[next].close(&going_away));
            next += 1;
        }
        if next < n {
            sleep_until(start + slot(window, next, n)).await;
        }
    }
    drop(tunnels);
    sleep_until(start + window).await;
    // Upgrades under way when the drain began complete during it: their
    // tunnels are closed as they appear, until the deadline ends the drain.
    loop {
        *closed += match origin {
            Some(origin) => proxy.close_origin(origin, &going_away),
            None => proxy
                .groups()
                .iter()
                .map(|g| g.tunnels().close_all(&going_away))
                .sum(),
        };
        sleep(LATE_CLOSE_EVERY).await;
    }
}

/// When the `i`-th of `n` closes goes out.
fn slot(window: Duration, i: usize, n: usize) -> Duration {
    // u128 arithmetic: exact, and no overflow for any window and count.
    let nanos = window.as_nanos() * i as u128 / n.max(1) as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}
