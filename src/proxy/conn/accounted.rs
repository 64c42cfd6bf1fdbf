//! A connection's report that accounts for itself when the connection's
//! future is dropped before it ends: a host's own timeout around
//! [`Proxy::serve`](crate::Proxy::serve), a server's drain deadline. The
//! request under way counts as abandoned (a WebSocket's handshake too) and
//! the host's hook still gets its line, as an embedded exchange's guard
//! does for the other embedded paths.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use tokio::time::Instant;

use crate::proxy::{ConnectionHook, ConnectionReport, Live, Outcome};

pub(super) struct Accounted<'a> {
    report: ConnectionReport,
    /// The proxy's configuration, loaded only if the connection is dropped
    /// (its counters and hook stay the proxy's across reconfigures): no
    /// snapshot is held meanwhile.
    live: &'a Live,
    peer: SocketAddr,
    /// A server's own hook, called after the proxy's.
    also: Option<ConnectionHook>,
    opened: Instant,
    /// A request was read and has no outcome yet.
    pub(super) in_request: bool,
    /// That request is a WebSocket upgrade, not yet ended.
    pub(super) websocket: bool,
    /// When that request began: the connection's start for its first, the
    /// first byte of a keep-alive request's head for the next.
    pub(super) began: Instant,
    armed: bool,
}

impl<'a> Accounted<'a> {
    pub(super) fn new(live: &'a Live, peer: SocketAddr, also: Option<ConnectionHook>) -> Self {
        let now = Instant::now();
        Self {
            report: ConnectionReport::default(),
            live,
            peer,
            also,
            opened: now,
            in_request: false,
            websocket: false,
            began: now,
            armed: true,
        }
    }

    /// The report, handed to the caller, which reports it: nothing is
    /// accounted for on drop any more.
    pub(super) fn into_report(mut self) -> ConnectionReport {
        self.armed = false;
        std::mem::take(&mut self.report)
    }
}

impl Deref for Accounted<'_> {
    type Target = ConnectionReport;

    fn deref(&self) -> &ConnectionReport {
        &self.report
    }
}

impl DerefMut for Accounted<'_> {
    fn deref_mut(&mut self) -> &mut ConnectionReport {
        &mut self.report
    }
}

impl Drop for Accounted<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inner = self.live.load();
        if self.in_request {
            let outcome = Outcome::Abandoned;
            self.report.outcome = Some(outcome);
            inner.counters.outcome(outcome);
            if self.websocket {
                inner
                    .counters
                    .handshake_ended(outcome, self.began.elapsed());
            }
        }
        self.report.duration = self.opened.elapsed();
        inner.report_end(self.peer, &self.report);
        if let Some(hook) = &self.also {
            (hook.0)(self.peer, &self.report);
        }
    }
}
