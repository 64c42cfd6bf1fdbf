//! Cheap counters a host exports: plain atomics bumped once per event.
//!
//! With the `metrics` feature each method also records its figure through
//! the facade ([`crate::metrics`]): one place per figure, so every way into
//! the proxy is measured once and alike.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

use crate::balance::UpstreamAddr;
use crate::tunnel::TunnelStats;

/// How one request or connection ended, as counted in [`CountersSnapshot`] and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// A WebSocket tunnel ran and ended.
    Tunneled,
    /// A plain HTTP request was proxied and answered by the upstream.
    Proxied,
    /// An upgrade was answered without 101 and the answer relayed.
    UpgradeRefused,
    /// The proxy answered a CORS preflight itself (204).
    Preflight,
    /// The proxy answered with an error status itself.
    Rejected(StatusCode),
    /// The client went away: before a full request head, or while its
    /// request or answer was under way.
    Abandoned,
    /// The upstream failed after the connection was made: it broke off its
    /// answer or stopped reading the request.
    UpstreamFailed,
}

/// Live counters of a [`Proxy`](super::Proxy); read them with
/// [`snapshot`](Self::snapshot).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    handshakes: AtomicU64,
    tunnels_active: AtomicU64,
    tunnels_total: AtomicU64,
    proxied: AtomicU64,
    upgrade_refused: AtomicU64,
    abandoned: AtomicU64,
    upstream_failed: AtomicU64,
    bytes_from_client: AtomicU64,
    bytes_from_upstream: AtomicU64,
    rejected: [AtomicU64; REJECT_STATUSES.len()],
    rejected_other: AtomicU64,
    /// Open tunnels by upstream address. Touched twice per tunnel (open and
    /// close) under a short lock, never per byte; keyed by the address
    /// itself, so that only a snapshot formats it.
    tunnels_by_upstream: Mutex<HashMap<UpstreamAddr, u64>>,
    /// The recorder's handles, registered when the proxy is built.
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::Handles,
}

/// What an open tunnel keeps to be counted out: its gauge's slot (four
/// bytes) with the `metrics` feature, nothing (zero bytes) without.
#[derive(Debug, Default)]
pub(crate) struct OpenMark {
    #[cfg(feature = "metrics")]
    gauge: crate::metrics::OpenGauge,
}

/// The statuses the proxy answers with itself, counted one by one.
const REJECT_STATUSES: [u16; 10] = [400, 403, 404, 408, 413, 426, 431, 500, 502, 504];

impl Counters {
    pub(crate) fn connection(&self) {
        self.connections.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.connection();
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.request();
    }

    pub(crate) fn handshake(&self) {
        self.handshakes.fetch_add(1, Relaxed);
    }

    /// An upgrade request ended with `outcome`, `took` after it began:
    /// `Tunneled` once its 101 went to the client.
    pub(crate) fn handshake_ended(&self, outcome: Outcome, took: Duration) {
        #[cfg(feature = "metrics")]
        self.metrics.handshake_ended(outcome, took);
        #[cfg(not(feature = "metrics"))]
        let _ = (outcome, took);
    }

    /// A try failed (no connect, no answer) and another upstream is tried.
    pub(crate) fn retry(&self) {
        #[cfg(feature = "metrics")]
        self.metrics.retry();
    }

    /// A tunnel opened on `route` to `upstream`; hand the mark back to
    /// [`tunnel_ended`](Self::tunnel_ended).
    pub(super) fn tunnel_started(&self, route: &Arc<str>, upstream: &UpstreamAddr) -> OpenMark {
        self.tunnels_active.fetch_add(1, Relaxed);
        self.tunnels_total.fetch_add(1, Relaxed);
        if let Ok(mut map) = self.tunnels_by_upstream.lock() {
            match map.get_mut(upstream) {
                Some(n) => *n += 1,
                None => {
                    map.insert(upstream.clone(), 1);
                }
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = route;
        OpenMark {
            #[cfg(feature = "metrics")]
            gauge: self.metrics.tunnel_started(route, upstream),
        }
    }

    pub(super) fn tunnel_ended(&self, upstream: &UpstreamAddr, mark: &OpenMark) {
        #[cfg(feature = "metrics")]
        self.metrics.tunnel_ended(&mark.gauge);
        #[cfg(not(feature = "metrics"))]
        let _ = mark;
        self.tunnels_active.fetch_sub(1, Relaxed);
        if let Ok(mut map) = self.tunnels_by_upstream.lock() {
            if let Some(n) = map.get_mut(upstream) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(upstream);
                }
            }
        }
    }

    /// Tunnels open now: one load, for a drain's wait.
    pub(crate) fn snapshot_tunnels_active(&self) -> u64 {
        self.tunnels_active.load(Relaxed)
    }

    pub(crate) fn bytes(&self, from_client: u64, from_upstream: u64) {
        self.bytes_from_client.fetch_add(from_client, Relaxed);
        self.bytes_from_upstream.fetch_add(from_upstream, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.bytes(from_client, from_upstream);
    }

    /// A tunnel ended with `stats`: its lifetime and Close frames.
    pub(super) fn tunnel_closed(&self, stats: &TunnelStats) {
        #[cfg(feature = "metrics")]
        self.metrics.tunnel_closed(stats);
        #[cfg(not(feature = "metrics"))]
        let _ = stats;
    }

    pub(crate) fn outcome(&self, outcome: Outcome) {
        #[cfg(feature = "metrics")]
        self.metrics.outcome(outcome);
        let counter = match outcome {
            Outcome::Tunneled | Outcome::Preflight => return,
            Outcome::Proxied => &self.proxied,
            Outcome::UpgradeRefused => &self.upgrade_refused,
            Outcome::Abandoned => &self.abandoned,
            Outcome::UpstreamFailed => &self.upstream_failed,
            Outcome::Rejected(status) => REJECT_STATUSES
                .iter()
                .position(|s| *s == status.as_u16())
                .map_or(&self.rejected_other, |i| &self.rejected[i]),
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            connections: self.connections.load(Relaxed),
            requests: self.requests.load(Relaxed),
            handshakes: self.handshakes.load(Relaxed),
            tunnels_active: self.tunnels_active.load(Relaxed),
            tunnels_total: self.tunnels_total.load(Relaxed),
            proxied: self.proxied.load(Relaxed),
            upgrade_refused: self.upgrade_refused.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            upstream_failed: self.upstream_failed.load(Relaxed),
            bytes_from_client: self.bytes_from_client.load(Relaxed),
            bytes_from_upstream: self.bytes_from_upstream.load(Relaxed),
            rejected: REJECT_STATUSES
                .iter()
                .zip(&self.rejected)
                .filter_map(|(s, c)| {
                    let n = c.load(Relaxed);
                    let status = StatusCode::from_u16(*s).ok()?;
                    (n > 0).then_some((status, n))
                })
                .collect(),
            rejected_other: self.rejected_other.load(Relaxed),
            tunnels_by_upstream: self
                .tunnels_by_upstream
                .lock()
                .map(|map| {
                    // Summed by name: a socket address and a host name that
                    // print alike count as one, as their names did.
                    let mut open = BTreeMap::new();
                    for (addr, n) in map.iter() {
                        *open.entry(addr.to_string()).or_insert(0) += *n;
                    }
                    open.into_iter().collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A point-in-time copy of a proxy's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountersSnapshot {
    /// Client connections served; a request a host hands to
    /// [`Proxy::connect_upgrade`](super::Proxy::connect_upgrade) counts as one.
    pub connections: u64,
    /// Request heads read (a keep-alive connection carries several).
    pub requests: u64,
    /// WebSocket upgrade requests among them.
    pub handshakes: u64,
    /// Tunnels open now.
    pub tunnels_active: u64,
    /// Tunnels opened since start.
    pub tunnels_total: u64,
    /// Plain HTTP requests answered by an upstream.
    pub proxied: u64,
    /// Upgrades the upstream answered without 101 (answer relayed).
    pub upgrade_refused: u64,
    /// Requests the client abandoned (see [`Outcome::Abandoned`]).
    pub abandoned: u64,
    /// Requests the upstream broke off after connecting.
    pub upstream_failed: u64,
    /// Bytes the clients sent through tunnels and bodies; an open tunnel's
    /// are added every 64 KiB or second of traffic while it runs.
    pub bytes_from_client: u64,
    /// Bytes the upstreams sent through tunnels and bodies, counted alike.
    pub bytes_from_upstream: u64,
    /// Answers the proxy made itself, by status (only non-zero ones).
    pub rejected: Vec<(StatusCode, u64)>,
    /// Proxy-made answers with a status outside that list.
    pub rejected_other: u64,
    /// Open tunnels per upstream address, sorted by address (only upstreams
    /// with open tunnels).
    pub tunnels_by_upstream: Vec<(String, u64)>,
}

impl CountersSnapshot {
    /// How many answers with `status` the proxy made itself.
    pub fn rejected_with(&self, status: StatusCode) -> u64 {
        self.rejected
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn tunnels_by_upstream_are_named_sorted_and_dropped_at_zero() {
        let counters = Counters::default();
        let b = UpstreamAddr::from(SocketAddr::from(([127, 0, 0, 1], 9002)));
        let a = UpstreamAddr::name("127.0.0.1", 9001);
        let a_socket = UpstreamAddr::from(SocketAddr::from(([127, 0, 0, 1], 9001)));
        let route: Arc<str> = Arc::from("chat");
        let mark_b = counters.tunnel_started(&route, &b);
        let mark_a = counters.tunnel_started(&route, &a);
        let _mark_a_socket = counters.tunnel_started(&route, &a_socket);
        assert_eq!(
            counters.snapshot().tunnels_by_upstream,
            [
                ("127.0.0.1:9001".to_owned(), 2),
                ("127.0.0.1:9002".to_owned(), 1)
            ]
        );
        counters.tunnel_ended(&b, &mark_b);
        counters.tunnel_ended(&a, &mark_a);
        let snapshot = counters.snapshot();
        assert_eq!(
            snapshot.tunnels_by_upstream,
            [("127.0.0.1:9001".to_owned(), 1)]
        );
        assert_eq!(snapshot.tunnels_active, 1);
    }
}
