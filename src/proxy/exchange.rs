//! One request that a host's own server parsed and handed to the proxy
//! ([`Proxy::connect_upgrade`], the tower service): counted, traced and
//! reported exactly as [`Server`](crate::server::Server) counts a client
//! connection that carries one request, so that every way in shows the same
//! figures, the same `conn` span and the same
//! [`ConnectionReport`] hook.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tracing::field;

use super::{ConnectionReport, Inner, Outcome, Proxy, UpstreamGroup};
use crate::balance::UpstreamAddr;
use crate::tunnel::{TunnelEnd, TunnelStats};

/// The `conn` span of one client connection, with the fields every way in
/// fills: route, upstream and outcome as they are known, the tunnel's bytes
/// when it ends.
pub(super) fn conn_span(peer: SocketAddr) -> tracing::Span {
    tracing::info_span!(
        "conn",
        client = %peer,
        route = field::Empty,
        upstream = field::Empty,
        outcome = field::Empty,
        from_client = field::Empty,
        from_upstream = field::Empty,
    )
}

/// The accounting of one request a host's server parsed: what
/// [`Server`](crate::server::Server) counts for a connection that carries
/// one request, in the same [`Counters`](super::counters::Counters)
/// methods, with the same `conn` span and events, and the proxy's
/// [`on_connection_end`](super::ProxyBuilder::on_connection_end) hook
/// called once at the end.
///
/// The host owns its connections, so each request it hands over counts as
/// one connection. The steps, in the order the request loop of `conn.rs`
/// takes them:
///
/// 1. [`begin`](Self::begin) as the request comes in (counts the
///    connection and opens the span);
/// 2. [`request`](Self::request) once the head is known to parse as the
///    proxy would (a head the proxy refuses is answered with
///    [`finish`](Self::finish) `Rejected` without counting a request, as a
///    head read from a socket);
/// 3. [`handshake`](Self::handshake) for a WebSocket upgrade,
///    [`route`](Self::route) and [`upstream`](Self::upstream) as they are
///    chosen, [`body_from_client`](Self::body_from_client) and
///    [`body_from_upstream`](Self::body_from_upstream) for plain HTTP
///    bodies;
/// 4. [`finish`](Self::finish) with the [`Outcome`] and the status the
///    client was sent (an upgrade finishes `Tunneled` at its 101, before
///    the tunnel runs);
/// 5. [`end`](Self::end), or [`end_tunnel`](Self::end_tunnel) after the
///    tunnel, to call the hook. Dropped before `finish` (the host cancelled
///    the request), it counts the request [`Outcome::Abandoned`]; dropped
///    before `end`, it still calls the hook.
///
/// A WebSocket upgrade goes on, right after `begin`, with
/// [`Proxy::connect_upgrade_with`], which takes the steps from 2 on and
/// hands back a [`PendingUpgrade`](super::PendingUpgrade) that ends the
/// exchange when its tunnel does. Run other work under
/// [`span`](Self::span) (`Instrument::instrument`) so that its events land
/// in the connection's span.
#[derive(Debug)]
pub(crate) struct Exchange {
    inner: Arc<Inner>,
    peer: SocketAddr,
    span: tracing::Span,
    started: Instant,
    report: ConnectionReport,
    ended: bool,
    /// The request is a WebSocket upgrade: its outcome is a handshake's too.
    websocket: bool,
    /// A server's own hook, called after the proxy's (an HTTP/2 front door).
    also: Option<super::ConnectionHook>,
}

impl Exchange {
    /// A request from `peer` comes in: counts a connection.
    pub(crate) fn begin(proxy: &Proxy, peer: SocketAddr) -> Self {
        let inner = proxy.inner();
        inner.counters.connection();
        Self {
            inner,
            peer,
            span: conn_span(peer),
            started: Instant::now(),
            report: ConnectionReport::default(),
            ended: false,
            websocket: false,
            also: None,
        }
    }

    /// Calls `hook` too at the end, after the proxy's own: the
    /// [`Server`](crate::server::Server) hook of the connection the request
    /// came on.
    // Only the HTTP/2 front door (feature `h2`) sets one.
    #[allow(dead_code)]
    pub(crate) fn also_report_to(mut self, hook: Option<super::ConnectionHook>) -> Self {
        self.also = hook;
        self
    }

    /// The connection's `conn` span.
    /// The forwarding policy of the proxy the request came in on.
    #[cfg(feature = "tower")]
    pub(crate) fn policy(&self) -> &crate::forward::ForwardPolicy {
        &self.inner.policy
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Counts the request, once its head passed the parser's checks.
    pub(crate) fn request(&mut self) {
        self.inner.counters.request();
        self.report.requests += 1;
    }

    /// Counts a WebSocket upgrade request.
    pub(crate) fn handshake(&mut self) {
        self.inner.counters.handshake();
        self.websocket = true;
    }

    /// The request was routed to `group`.
    pub(crate) fn route(&mut self, group: &UpstreamGroup) {
        self.span.record("route", group.name());
        self.report.route = Some(group.name.clone());
    }

    /// The request went to `upstream`.
    pub(crate) fn upstream(&mut self, upstream: &UpstreamAddr) {
        // The address prints as its authority does, with no copy made.
        self.span.record("upstream", field::display(upstream));
        self.report.upstream = Some(upstream.clone());
    }

    /// `n` bytes of a plain HTTP request body went upstream.
    // For the tower service's plain HTTP path (another branch).
    #[allow(dead_code)]
    pub(crate) fn body_from_client(&mut self, n: u64) {
        self.inner.counters.bytes(n, 0);
        self.report.body_from_client += n;
    }

    /// `n` bytes of a plain HTTP answer body went to the client.
    // For the tower service's plain HTTP path (another branch).
    #[allow(dead_code)]
    pub(crate) fn body_from_upstream(&mut self, n: u64) {
        self.inner.counters.bytes(0, n);
        self.report.body_from_upstream += n;
    }

    /// The request ended with `outcome`, the client sent `status` (none
    /// when it got no answer). Counts the outcome once: a second call only
    /// replaces what the report says.
    pub(crate) fn finish(&mut self, outcome: Outcome, status: Option<StatusCode>) {
        if self.report.outcome.is_none() {
            self.inner.counters.outcome(outcome);
            if self.websocket {
                // `Tunneled` comes once the host sent the 101.
                let took = self.started.elapsed();
                self.inner.counters.handshake_ended(outcome, took);
            }
        }
        if let Outcome::Rejected(status) = outcome {
            self.span.in_scope(|| tracing::debug!(%status, "rejected"));
        }
        self.span.record("outcome", field::debug(outcome));
        self.report.outcome = Some(outcome);
        self.report.status = status.or(self.report.status);
    }

    /// Whether [`finish`](Self::finish) was called.
    // For the tower service's plain HTTP path (another branch).
    #[allow(dead_code)]
    pub(crate) fn is_finished(&self) -> bool {
        self.report.outcome.is_some()
    }

    /// Calls the proxy's hook with the report.
    pub(crate) fn end(mut self) {
        self.report_end();
    }

    /// Calls the proxy's hook with the report and the tunnel's figures,
    /// and hands the figures back.
    pub(crate) fn end_tunnel(mut self, stats: TunnelStats) -> TunnelStats {
        self.report.tunnel = Some(stats);
        self.report_end();
        // The hook only borrows the report: the figures are still there.
        self.report.tunnel.take().unwrap_or(TunnelStats {
            client_to_upstream: 0,
            upstream_to_client: 0,
            duration: Duration::ZERO,
            first_eof: None,
            end: TunnelEnd::Shutdown,
            frames: None,
        })
    }

    fn report_end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if self.report.outcome.is_none() {
            self.finish(Outcome::Abandoned, None);
        }
        self.report.duration = self.started.elapsed();
        self.inner.report_end(self.peer, &self.report);
        if let Some(hook) = &self.also {
            (hook.0)(self.peer, &self.report);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.report_end();
    }
}
