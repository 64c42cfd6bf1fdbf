//! Figures for dashboards, recorded through the [`metrics`](https://docs.rs/metrics)
//! facade (cargo feature `metrics`): the host installs the exporter it
//! likes (Prometheus, StatsD, ...) and the proxy records into it.
//!
//! Every figure is recorded where the proxy's own
//! [`counters`](crate::Proxy::counters) are bumped, so a connection is
//! measured once whichever way it came in ([`Server`](crate::Server) or
//! [`Proxy::connect_upgrade`](crate::Proxy::connect_upgrade)).
//!
//! # Metrics
//!
//! Names follow the Prometheus conventions (`_total` counters, `_seconds`
//! histograms). Labels are bounded: a route name, an upstream address, a
//! status or close code from a fixed list. Never a client address or a
//! path, which would give every client a series of its own.
//!
//! | Name | Kind | Labels | What |
//! |---|---|---|---|
//! | `wsproxy_connections_total` | counter | | client connections served |
//! | `wsproxy_requests_total` | counter | | request heads read (a keep-alive connection carries several) |
//! | `wsproxy_handshakes_total` | counter | `outcome` | WebSocket upgrade requests by how they ended: `upgraded` (101 sent), `refused` (the upstream answered without 101, relayed), `rejected` (the proxy answered an error itself), `abandoned` (the client went away), `upstream_failed` |
//! | `wsproxy_handshake_seconds` | histogram | | from the start of the upgrade request (a connection's accept, for its first request) to the 101 sent to the client |
//! | `wsproxy_rejects_total` | counter | `status` | answers the proxy made itself: `400`, `403`, `404`, `408`, `413`, `426`, `431`, `500`, `502`, `504`, or `other` |
//! | `wsproxy_retries_total` | counter | | tries on another upstream after one failed a request: no connect, no answer head or none in time (nginx `proxy_next_upstream`) |
//! | `wsproxy_bytes_total` | counter | `direction` = `client_to_upstream` \| `upstream_to_client` | bytes through tunnels and bodies |
//! | `wsproxy_open_tunnels` | gauge | `route`, `upstream` | tunnels open now; `sum by (route)` or `sum by (upstream)` for either view |
//! | `wsproxy_tunnel_seconds` | histogram | | lifetime of each tunnel that ended (from its 101 to its end) |
//! | `wsproxy_close_codes_total` | counter | `side` = `client` \| `upstream` \| `proxy`, `code` | Close frames seen at a tunnel's end: each peer's first Close (when [`TunnelConfig::track_frames`](crate::TunnelConfig::track_frames) is on) and the proxy's own (a drain's 1001). `code` is one of 1000-1003, 1005 (no code), 1007-1014, or `other` |
//! | `wsproxy_dns_lookups_total` | counter | `name`, `outcome` = `ok` \| `empty` \| `failed` | lookups of a `wsproxy::dns::Discovery` (feature `dns`); `empty` and `failed` kept the last good set |
//! | `wsproxy_dns_upstreams` | gauge | `name` | upstreams a discovery holds in its set, draining ones included (feature `dns`) |
//! | `wsproxy_upstreams` | gauge | `group`, `state` = `up` \| `down` | upstreams of a group that take new connections, and those that don't; set by [`record_upstreams`] |
//!
//! # Install the recorder first
//!
//! The proxy registers its handles when it is built, so that counting an
//! event is one atomic add and no lookup or allocation: install the
//! recorder (for example `metrics_exporter_prometheus::PrometheusBuilder`'s
//! `install_recorder`) before [`ProxyBuilder::build`](crate::ProxyBuilder::build).
//! A proxy built before that records nothing.
//!
//! For the same reason, an exporter that forgets idle series
//! (`metrics_exporter_prometheus`'s `idle_timeout`) must not forget these
//! while the proxy holds their handles: a series forgotten then stops being
//! exported, and the proxy's later counts go nowhere. The proxy holds the
//! counters' and histograms' handles for its lifetime. Of
//! `wsproxy_open_tunnels` it holds only the series of (upstream, route)
//! pairs with a tunnel open, or swept since they had one (a sweep runs when
//! its table doubles, from 64 entries); a series of an upstream that left
//! stays at zero in the exporter, which may forget it once swept.
//!
//! ```
//! use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
//! use wsproxy::{Proxy, Route, UpstreamGroup};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! let set: UpstreamSet = [Upstream::new("127.0.0.1:9001".parse::<std::net::SocketAddr>()?)].into_iter().collect();
//! let proxy = Proxy::builder()
//!     .route(Route::new("/", UpstreamGroup::new("chat", RoundRobin::new(set.clone()))))
//!     .build()?;
//! // Before each scrape: the upstreams up and down.
//! wsproxy::metrics::record_upstreams("chat", &set, std::time::Instant::now());
//! # drop(proxy);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, SharedString};
use http::StatusCode;

use crate::balance::{UpstreamAddr, UpstreamSet};
use crate::proxy::Outcome;
use crate::tunnel::{TunnelEnd, TunnelStats};

/// Client connections served.
pub const CONNECTIONS: &str = "wsproxy_connections_total";
/// Request heads read.
pub const REQUESTS: &str = "wsproxy_requests_total";
/// WebSocket upgrade requests by `outcome`.
pub const HANDSHAKES: &str = "wsproxy_handshakes_total";
/// Time from an upgrade request's start to its 101.
pub const HANDSHAKE_SECONDS: &str = "wsproxy_handshake_seconds";
/// Answers the proxy made itself, by `status`.
pub const REJECTS: &str = "wsproxy_rejects_total";
/// Connects retried on another upstream.
pub const RETRIES: &str = "wsproxy_retries_total";
/// Bytes by `direction`.
pub const BYTES: &str = "wsproxy_bytes_total";
/// Tunnels open now, by `route` and `upstream`.
pub const OPEN_TUNNELS: &str = "wsproxy_open_tunnels";
/// Lifetime of the tunnels that ended.
pub const TUNNEL_SECONDS: &str = "wsproxy_tunnel_seconds";
/// Close frames by `side` and `code`.
pub const CLOSE_CODES: &str = "wsproxy_close_codes_total";
/// Upstreams of a `group` by `state`.
pub const UPSTREAMS: &str = "wsproxy_upstreams";

/// The statuses counted one by one; the rest are `other`. The same list as
/// [`CountersSnapshot::rejected`](crate::proxy::CountersSnapshot::rejected).
const REJECT_STATUSES: [&str; 10] = [
    "400", "403", "404", "408", "413", "426", "431", "500", "502", "504",
];

/// Handshake outcomes, in the order of [`handshake_slot`].
const HANDSHAKE_OUTCOMES: [&str; 5] = [
    "upgraded",
    "refused",
    "rejected",
    "abandoned",
    "upstream_failed",
];

/// Close codes with a series of their own: those RFC 6455 §7.4.1 defines
/// (1005 stands for a Close without a code), the rest are `other`, so an
/// application's 4000-4999 codes cannot grow the series without bound.
const CLOSE_CODE_NAMES: [&str; 14] = [
    "1000", "1001", "1002", "1003", "1005", "1007", "1008", "1009", "1010", "1011", "1012", "1013",
    "1014", "other",
];
const CLOSE_CODE_NUMBERS: [u16; CLOSE_CODE_NAMES.len() - 1] = [
    1000, 1001, 1002, 1003, 1005, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
];
const CLOSE_SIDES: [&str; 3] = ["client", "upstream", "proxy"];

/// The recorder's handles for one proxy, registered when the proxy is
/// built, so that counting is one call on a handle: no key to build, no
/// lookup, no allocation.
pub(crate) struct Handles {
    connections: Counter,
    requests: Counter,
    handshakes: [Counter; HANDSHAKE_OUTCOMES.len()],
    handshake_seconds: Histogram,
    rejects: [Counter; REJECT_STATUSES.len() + 1],
    retries: Counter,
    bytes_from_client: Counter,
    bytes_from_upstream: Counter,
    tunnel_seconds: Histogram,
    // Registered on first use: most of these series never see a frame, and
    // an exporter would print each registered one at zero.
    close_codes: [[OnceLock<Counter>; CLOSE_CODE_NAMES.len()]; CLOSE_SIDES.len()],
    /// Open-tunnel gauges, by upstream and route.
    open: Mutex<OpenGauges>,
}

/// The open-tunnel gauges: slots looked up by reference (no key built)
/// when a tunnel opens, an address formatted once, for its first tunnel on
/// a route. A tunnel keeps its gauge's slot, four bytes, rather than the
/// gauge: an idle tunnel's task has a memory budget (see `server.rs`).
///
/// Upstreams come and go (DNS discovery, reloads), so slots without an
/// open tunnel are swept for reuse whenever the table has doubled since
/// the last sweep: it stays within twice the pairs with tunnels open (and
/// [`SWEEP_FLOOR`]), where it would otherwise grow with every address an
/// upstream ever had.
#[derive(Default)]
struct OpenGauges {
    slots: HashMap<UpstreamAddr, HashMap<Arc<str>, u32>>,
    gauges: Vec<Slot>,
    free: Vec<u32>,
    /// Table size that triggers the next sweep.
    sweep_at: usize,
}

/// Below this many slots nothing is swept.
const SWEEP_FLOOR: usize = 64;

/// One (upstream, route) pair's gauge and its open tunnels; `None` once
/// swept, until the slot is reused.
#[derive(Default)]
struct Slot {
    gauge: Option<Gauge>,
    open: u32,
}

impl OpenGauges {
    /// Counts a tunnel in on its pair's gauge; `None` if the table is full.
    fn enter(&mut self, route: &Arc<str>, upstream: &UpstreamAddr) -> Option<u32> {
        let found = self
            .slots
            .get(upstream)
            .and_then(|routes| routes.get(&**route).copied());
        let slot = match found {
            Some(slot) => slot,
            None => self.add(route, upstream)?,
        };
        let entry = self.gauges.get_mut(slot as usize)?;
        entry.open += 1;
        if let Some(gauge) = &entry.gauge {
            gauge.increment(1.0);
        }
        Some(slot)
    }

    /// Counts a tunnel out of the slot `enter` gave it.
    fn leave(&mut self, slot: u32) {
        if let Some(entry) = self.gauges.get_mut(slot as usize) {
            entry.open = entry.open.saturating_sub(1);
            if let Some(gauge) = &entry.gauge {
                gauge.decrement(1.0);
            }
        }
    }

    fn add(&mut self, route: &Arc<str>, upstream: &UpstreamAddr) -> Option<u32> {
        if self.free.is_empty() && self.gauges.len() >= self.sweep_at.max(SWEEP_FLOOR) {
            self.sweep();
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.gauges.len())
                    .ok()
                    .filter(|s| *s != NO_SLOT)?;
                self.gauges.push(Slot::default());
                slot
            }
        };
        self.gauges[slot as usize].gauge = Some(gauge!(
            OPEN_TUNNELS,
            "route" => SharedString::from(Arc::clone(route)),
            "upstream" => upstream.to_string(),
        ));
        self.slots
            .entry(upstream.clone())
            .or_default()
            .insert(Arc::clone(route), slot);
        Some(slot)
    }

    /// Frees every slot without an open tunnel. Its series stays with the
    /// recorder at zero; a later tunnel on the pair registers it again.
    fn sweep(&mut self) {
        let Self {
            slots,
            gauges,
            free,
            ..
        } = self;
        slots.retain(|_, routes| {
            routes.retain(|_, slot| {
                let entry = &mut gauges[*slot as usize];
                if entry.open > 0 {
                    return true;
                }
                entry.gauge = None;
                free.push(*slot);
                false
            });
            !routes.is_empty()
        });
        let live = self.gauges.len() - self.free.len();
        self.sweep_at = live.saturating_mul(2);
    }
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").finish_non_exhaustive()
    }
}

/// Tells the recorder what each figure is (Prometheus `# HELP`, units).
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CONNECTIONS, "Client connections served");
    describe_counter!(REQUESTS, "Request heads read");
    describe_counter!(HANDSHAKES, "WebSocket upgrade requests by outcome");
    describe_histogram!(
        HANDSHAKE_SECONDS,
        Unit::Seconds,
        "From an upgrade request's start to the 101 sent to the client"
    );
    describe_counter!(REJECTS, "Answers the proxy made itself, by status");
    describe_counter!(RETRIES, "Connects retried on another upstream");
    describe_counter!(BYTES, Unit::Bytes, "Bytes through tunnels and bodies");
    describe_gauge!(OPEN_TUNNELS, "Tunnels open now, by route and upstream");
    describe_histogram!(
        TUNNEL_SECONDS,
        Unit::Seconds,
        "Lifetime of the tunnels that ended"
    );
    describe_counter!(CLOSE_CODES, "WebSocket Close frames by side and code");
    describe_gauge!(
        UPSTREAMS,
        "Upstreams of a group taking new connections (up) or not (down)"
    );
}

impl Default for Handles {
    fn default() -> Self {
        describe();
        Self {
            connections: counter!(CONNECTIONS),
            requests: counter!(REQUESTS),
            handshakes: HANDSHAKE_OUTCOMES
                .map(|outcome| counter!(HANDSHAKES, "outcome" => outcome)),
            handshake_seconds: histogram!(HANDSHAKE_SECONDS),
            // The listed statuses, then `other`.
            rejects: std::array::from_fn(|i| {
                let status = REJECT_STATUSES.get(i).copied().unwrap_or("other");
                counter!(REJECTS, "status" => status)
            }),
            retries: counter!(RETRIES),
            bytes_from_client: counter!(BYTES, "direction" => "client_to_upstream"),
            bytes_from_upstream: counter!(BYTES, "direction" => "upstream_to_client"),
            tunnel_seconds: histogram!(TUNNEL_SECONDS),
            close_codes: Default::default(),
            open: Mutex::default(),
        }
    }
}

/// What an open tunnel holds to be counted out: its gauge's slot, or
/// [`NO_SLOT`]. Four bytes, no `Option` around them, to fit in padding.
#[derive(Debug)]
pub(crate) struct OpenGauge(u32);

const NO_SLOT: u32 = u32::MAX;

impl Default for OpenGauge {
    fn default() -> Self {
        Self(NO_SLOT)
    }
}

impl Handles {
    pub(crate) fn connection(&self) {
        self.connections.increment(1);
    }

    pub(crate) fn request(&self) {
        self.requests.increment(1);
    }

    pub(crate) fn retry(&self) {
        self.retries.increment(1);
    }

    pub(crate) fn bytes(&self, from_client: u64, from_upstream: u64) {
        if from_client > 0 {
            self.bytes_from_client.increment(from_client);
        }
        if from_upstream > 0 {
            self.bytes_from_upstream.increment(from_upstream);
        }
    }

    pub(crate) fn outcome(&self, outcome: Outcome) {
        if let Outcome::Rejected(status) = outcome {
            self.rejects[reject_slot(status)].increment(1);
        }
    }

    pub(crate) fn handshake_ended(&self, outcome: Outcome, took: Duration) {
        let Some(slot) = handshake_slot(outcome) else {
            return;
        };
        self.handshakes[slot].increment(1);
        if slot == 0 {
            self.handshake_seconds.record(took.as_secs_f64());
        }
    }

    pub(crate) fn tunnel_started(&self, route: &Arc<str>, upstream: &UpstreamAddr) -> OpenGauge {
        let Ok(mut open) = self.open.lock() else {
            return OpenGauge::default();
        };
        open.enter(route, upstream)
            .map_or_else(OpenGauge::default, OpenGauge)
    }

    pub(crate) fn tunnel_ended(&self, open: &OpenGauge) {
        if open.0 == NO_SLOT {
            return;
        }
        if let Ok(mut gauges) = self.open.lock() {
            gauges.leave(open.0);
        }
    }

    pub(crate) fn tunnel_closed(&self, stats: &TunnelStats) {
        self.tunnel_seconds.record(stats.duration.as_secs_f64());
        if let Some(frames) = &stats.frames {
            if let Some(close) = &frames.client_close {
                self.close_code(0, close.code());
            }
            if let Some(close) = &frames.upstream_close {
                self.close_code(1, close.code());
            }
        }
        if let TunnelEnd::Closed(close) = &stats.end {
            self.close_code(2, close.code());
        }
    }

    fn close_code(&self, side: usize, code: Option<u16>) {
        let slot = close_code_slot(code);
        let (Some(sides), Some(&side_name), Some(&code_name)) = (
            self.close_codes.get(side),
            CLOSE_SIDES.get(side),
            CLOSE_CODE_NAMES.get(slot),
        ) else {
            return;
        };
        let Some(cell) = sides.get(slot) else {
            return;
        };
        cell.get_or_init(|| counter!(CLOSE_CODES, "side" => side_name, "code" => code_name))
            .increment(1);
    }
}

fn reject_slot(status: StatusCode) -> usize {
    let code = status.as_str();
    REJECT_STATUSES
        .iter()
        .position(|s| *s == code)
        .unwrap_or(REJECT_STATUSES.len())
}

fn handshake_slot(outcome: Outcome) -> Option<usize> {
    Some(match outcome {
        Outcome::Tunneled => 0,
        Outcome::UpgradeRefused => 1,
        Outcome::Rejected(_) => 2,
        Outcome::Abandoned => 3,
        Outcome::UpstreamFailed => 4,
        Outcome::Proxied | Outcome::Preflight => return None,
    })
}

fn close_code_slot(code: Option<u16>) -> usize {
    // RFC 6455 §7.1.5: a Close without a status code counts as 1005.
    let code = code.unwrap_or(1005);
    CLOSE_CODE_NUMBERS
        .iter()
        .position(|n| *n == code)
        .unwrap_or(CLOSE_CODE_NUMBERS.len())
}

/// Sets `wsproxy_upstreams{group, state}` for `set`: how many of its
/// upstreams would take a new connection at `now` (`up`: not marked down,
/// not failing a health check, not draining, not sitting out a passive
/// `fail_timeout`) and how many would not (`down`).
///
/// An upstream set is the host's (balancers don't hand theirs out), so the
/// host calls this where it knows both: before each scrape, or from a
/// [`HealthChecker::on_change`](crate::HealthChecker::on_change) callback.
///
/// ```
/// use std::time::Instant;
/// use wsproxy::balance::{Upstream, UpstreamSet};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let set: UpstreamSet = [Upstream::new("127.0.0.1:9001".parse::<std::net::SocketAddr>()?)].into_iter().collect();
/// wsproxy::metrics::record_upstreams("chat", &set, Instant::now());
/// # Ok(())
/// # }
/// ```
pub fn record_upstreams(group: &str, set: &UpstreamSet, now: Instant) {
    let snapshot = set.snapshot();
    let up = snapshot.iter().filter(|p| p.is_available_at(now)).count();
    let down = snapshot.len().saturating_sub(up);
    let group = SharedString::from_owned(group.to_owned());
    gauge!(UPSTREAMS, "group" => group.clone(), "state" => "up").set(up as f64);
    gauge!(UPSTREAMS, "group" => group, "state" => "down").set(down as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_outside_the_rfc_list_share_one_series() {
        assert_eq!(CLOSE_CODE_NAMES[close_code_slot(Some(1000))], "1000");
        assert_eq!(CLOSE_CODE_NAMES[close_code_slot(Some(1011))], "1011");
        assert_eq!(CLOSE_CODE_NAMES[close_code_slot(None)], "1005");
        assert_eq!(CLOSE_CODE_NAMES[close_code_slot(Some(4000))], "other");
        assert_eq!(CLOSE_CODE_NAMES[close_code_slot(Some(1006))], "other");
        assert_eq!(CLOSE_CODE_NAMES[close_code_slot(Some(1015))], "other");
    }

    #[test]
    fn open_tunnel_slots_of_departed_upstreams_are_reused() {
        let mut open = OpenGauges::default();
        let route: Arc<str> = Arc::from("chat");
        let steady = UpstreamAddr::from(std::net::SocketAddr::from(([127, 0, 0, 1], 9000)));
        let held = open.enter(&route, &steady).unwrap();
        // Ten thousand upstreams, as a DNS name whose addresses churn
        // gives over time, each with one tunnel that ends.
        for port in 1..=10_000_u16 {
            let addr = UpstreamAddr::from(std::net::SocketAddr::from(([127, 0, 0, 2], port)));
            let slot = open.enter(&route, &addr).unwrap();
            open.leave(slot);
        }
        assert!(
            open.gauges.len() <= SWEEP_FLOOR,
            "{} slots",
            open.gauges.len()
        );
        assert!(
            open.slots.len() <= SWEEP_FLOOR,
            "{} upstreams",
            open.slots.len()
        );
        // The pair with a tunnel open kept its slot throughout.
        assert_eq!(open.enter(&route, &steady), Some(held));
        assert_eq!(open.gauges[held as usize].open, 2);
    }

    #[test]
    fn rejects_outside_the_list_are_other() {
        assert_eq!(reject_slot(StatusCode::BAD_GATEWAY), 8);
        assert_eq!(
            reject_slot(StatusCode::NOT_IMPLEMENTED),
            REJECT_STATUSES.len()
        );
    }
}
