//! The discovery task: look up, apply the plan to the set, wait for the
//! TTL while sweeping drained upstreams out.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, Record};
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use super::{reconcile, Answer, Discovery, DiscoveryStats, DnsName, Member, Plan, Target};
use crate::balance::{UpstreamAddr, UpstreamId};
use crate::frame::CloseFrame;

/// How often draining upstreams are checked for their last tunnel's end:
/// nothing notifies a lease's release, and a second's delay in removing a
/// drained upstream costs nothing.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Targets of one SRV answer resolved at most: bounds the lookups an
/// answer can cause.
const MAX_SRV_TARGETS: usize = 64;

/// An address this discovery added to the set.
#[derive(Debug)]
struct Tracked {
    id: UpstreamId,
    weight: u32,
    /// When it left the answers, if it did.
    draining_since: Option<Instant>,
    /// Whether its leftover tunnels were sent Close 1001.
    closed: bool,
}

pub(super) struct Task {
    config: Discovery,
    resolver: TokioResolver,
    stats: watch::Sender<DiscoveryStats>,
    members: HashMap<SocketAddr, Tracked>,
    /// Each SRV target's addresses as its last lookup that answered gave
    /// them.
    srv_addrs: HashMap<Name, Vec<IpAddr>>,
    rebalancing: Option<JoinHandle<()>>,
    /// Lookups in a row that failed, came back empty, or (SRV) left a
    /// target unresolved: the retry backs off with it.
    failing: u32,
}

impl Task {
    pub(super) fn new(
        config: Discovery,
        resolver: TokioResolver,
        stats: watch::Sender<DiscoveryStats>,
    ) -> Self {
        Self {
            config,
            resolver,
            stats,
            members: HashMap::new(),
            srv_addrs: HashMap::new(),
            rebalancing: None,
            failing: 0,
        }
    }

    /// Resolves until `retire` turns true, then drains what it added and
    /// ends once that has left the set.
    pub(super) async fn run(mut self, mut retire: watch::Receiver<bool>) {
        let retired = async move {
            // A dropped sender is a dropped handle, which aborts this task.
            if retire.wait_for(|r| *r).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(retired);
        loop {
            // Cancelled only at an await: between lookups, or with a lookup
            // in flight, never halfway through applying an answer.
            tokio::select! {
                biased;
                () = &mut retired => break,
                () = self.resolve_and_wait() => {}
            }
        }
        self.drain_all().await;
    }

    /// One lookup, then the wait for the next one, sweeping meanwhile.
    async fn resolve_and_wait(&mut self) {
        let (answer, whole) = self.lookup().await;
        let bounds = &self.config.bounds;
        let wait = if whole {
            self.failing = 0;
            bounds.next_lookup(&answer)
        } else {
            self.failing = self.failing.saturating_add(1);
            // An SRV answer with a target unresolved is asked again
            // sooner than its TTL, but backs off as a failure does.
            let retry = bounds.retry_after(self.failing);
            match answer {
                Answer::Records { .. } => retry.min(bounds.next_lookup(&answer)),
                _ => retry,
            }
        };
        self.apply(&answer, wait);
        let next = Instant::now() + crate::clock::capped(wait);
        // Between lookups, drained upstreams leave and deadlines close.
        loop {
            let sweep = self
                .has_draining()
                .then(|| Instant::now() + SWEEP_EVERY)
                .map_or(next, |at| at.min(next));
            sleep_until(sweep).await;
            self.sweep();
            if Instant::now() >= next {
                break;
            }
        }
    }

    /// Drains every upstream this discovery holds, as an answer naming none
    /// of them would, and sweeps until the last has left the set.
    async fn drain_all(&mut self) {
        let now = Instant::now();
        self.current();
        let mut left = 0u64;
        for (addr, m) in &mut self.members {
            if m.draining_since.is_none() && self.config.set.set_draining(m.id, true) {
                m.draining_since = Some(now);
                left += 1;
                tracing::info!(name = %self.config.name, %addr, "dns: discovery retired; draining");
            }
        }
        self.stats.send_modify(|s| s.left += left);
        self.publish_members();
        loop {
            self.sweep();
            if self.members.is_empty() {
                break;
            }
            sleep(SWEEP_EVERY).await;
        }
    }

    fn has_draining(&self) -> bool {
        self.members.values().any(|m| m.draining_since.is_some())
    }

    /// The set's view of the addresses this discovery added; those removed
    /// by someone else are forgotten.
    fn current(&mut self) -> Vec<Member> {
        let snapshot = self.config.set.snapshot();
        self.members.retain(|_, m| snapshot.get(m.id).is_some());
        self.members
            .iter()
            .map(|(&addr, m)| Member::new(addr, m.weight).draining(m.draining_since.is_some()))
            .collect()
    }

    fn apply(&mut self, answer: &Answer, wait: Duration) {
        let current = self.current();
        let plan = reconcile(&current, answer);
        let name = self.config.name.to_string();
        let outcome = match answer {
            Answer::Records { .. } if !plan.kept_last => "ok",
            Answer::Failed => "failed",
            _ => "empty",
        };
        if plan.kept_last {
            tracing::warn!(
                name,
                outcome,
                kept = current.len(),
                retry = ?wait,
                "dns: no usable answer; keeping the last good upstreams"
            );
        }
        let now = Instant::now();
        let joined = self.join(&plan);
        for addr in &plan.leave {
            if let Some(m) = self.members.get_mut(addr) {
                if self.config.set.set_draining(m.id, true) {
                    m.draining_since = Some(now);
                    tracing::info!(name, %addr, "dns: upstream left the answer; draining");
                }
            }
        }
        for t in &plan.reweight {
            if let Some(m) = self.members.get_mut(&t.addr) {
                if self.config.set.set_weight(m.id, t.weight) {
                    m.weight = t.weight;
                }
            }
        }
        if joined > 0 {
            self.start_rebalance();
        }
        self.stats.send_modify(|s| {
            s.lookups += 1;
            if plan.kept_last {
                s.failures += 1;
            } else {
                s.ttl = Some(wait);
            }
            s.joined += joined;
            s.left += plan.leave.len() as u64;
        });
        self.publish_members();
        #[cfg(feature = "metrics")]
        ::metrics::counter!(super::LOOKUPS, "name" => name, "outcome" => outcome).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }

    /// Adds the plan's new addresses and takes back rejoining ones; how
    /// many.
    fn join(&mut self, plan: &Plan) -> u64 {
        let mut joined = 0;
        for t in &plan.join {
            let mut upstream = self.config.template.clone();
            upstream.addr = UpstreamAddr::Socket(t.addr);
            upstream.weight = t.weight;
            upstream.backup = upstream.backup || t.backup;
            let id = self.config.set.add(upstream);
            self.members.insert(
                t.addr,
                Tracked {
                    id,
                    weight: t.weight,
                    draining_since: None,
                    closed: false,
                },
            );
            tracing::info!(name = %self.config.name, addr = %t.addr, weight = t.weight, "dns: upstream joined");
            joined += 1;
        }
        for addr in &plan.rejoin {
            if let Some(m) = self.members.get_mut(addr) {
                if self.config.set.set_draining(m.id, false) {
                    m.draining_since = None;
                    m.closed = false;
                    joined += 1;
                }
            }
        }
        joined
    }

    fn start_rebalance(&mut self) {
        let Some(rebalancer) = &self.config.rebalance else {
            return;
        };
        if self.rebalancing.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let rebalancer = rebalancer.clone();
        self.rebalancing = Some(tokio::spawn(async move {
            let report = rebalancer.run().await;
            tracing::info!(moved = report.moved, "dns: rebalanced after a join");
        }));
    }

    /// Removes drained upstreams whose last connection ended, and closes
    /// the leftovers of those past the deadline.
    fn sweep(&mut self) {
        let now = Instant::now();
        let snapshot = self.config.set.snapshot();
        let going_away =
            CloseFrame::new(1001, "going away").unwrap_or_else(|_| CloseFrame::empty());
        let mut removed = 0u64;
        let mut closed = 0u64;
        let set = &self.config.set;
        let close_after = &self.config.close_after;
        self.members.retain(|addr, m| {
            let Some(since) = m.draining_since else {
                return true;
            };
            let active = snapshot.get(m.id).map_or(0, |p| p.active());
            if active == 0 {
                set.remove(m.id);
                removed += 1;
                tracing::info!(%addr, "dns: drained upstream removed");
                return false;
            }
            if let Some((group, deadline)) = close_after {
                if !m.closed && now.duration_since(since) >= *deadline {
                    m.closed = true;
                    let n = group.tunnels().close_upstream(m.id, &going_away);
                    closed += n as u64;
                    tracing::info!(%addr, tunnels = n, "dns: drain deadline; sent Close 1001");
                }
            }
            true
        });
        if removed + closed > 0 {
            self.stats.send_modify(|s| {
                s.removed += removed;
                s.closed += closed;
            });
            self.publish_members();
        }
    }

    fn publish_members(&self) {
        let members = self.members.len();
        self.stats.send_modify(|s| s.members = members);
        #[cfg(feature = "metrics")]
        ::metrics::gauge!(super::DISCOVERED, "name" => self.config.name.to_string())
            .set(members as f64);
    }

    /// The answer, and whether it was whole: records, every one of them
    /// resolved.
    async fn lookup(&mut self) -> (Answer, bool) {
        // The resolver keeps no cache (cache_size 0); cleared anyway so
        // that the TTL read is the server's, never a cached remainder.
        self.resolver.clear_cache();
        let weight = self.config.template.weight;
        let mut whole = true;
        let answer = match &self.config.name {
            DnsName::Host { name, port } => match self.resolver.lookup_ip(&**name).await {
                Ok(found) => {
                    let records = found.as_lookup().records();
                    let targets = found
                        .iter()
                        .map(|ip| Target::new(SocketAddr::new(ip, *port), weight))
                        .collect();
                    records_answer(targets, records)
                }
                Err(e) => failed(&self.config.name, &e),
            },
            DnsName::Srv { name } => {
                let (answer, addrs, any_failed) = self.lookup_srv(name).await;
                if let Some(addrs) = addrs {
                    self.srv_addrs = addrs;
                }
                whole = !any_failed;
                answer
            }
        };
        tracing::debug!(name = %self.config.name, ?answer, "dns: answer");
        let whole =
            whole && matches!(&answer, Answer::Records { targets, .. } if !targets.is_empty());
        (answer, whole)
    }

    /// The SRV answer, each target's addresses to remember (`None` when
    /// the SRV lookup itself failed), and whether a target's own lookup
    /// failed.
    async fn lookup_srv(&self, name: &str) -> (Answer, Option<HashMap<Name, Vec<IpAddr>>>, bool) {
        let srv = match self.resolver.srv_lookup(name).await {
            Ok(srv) => srv,
            Err(e) => return (failed(&self.config.name, &e), None, true),
        };
        let mut ttl = min_ttl(srv.as_lookup().records());
        let lowest = srv.iter().map(|r| r.priority()).min().unwrap_or(0);
        let mut targets = Vec::new();
        let mut addrs = HashMap::new();
        let mut any_failed = false;
        for record in first_targets(srv.iter()) {
            let host = record.target();
            // A target's addresses may come in the answer's additional
            // section; the resolver keeps no cache, so ask for them.
            let ips: Vec<IpAddr> = match self.resolver.lookup_ip(host.clone()).await {
                Ok(found) => {
                    ttl = ttl.min(min_ttl(found.as_lookup().records()));
                    found.iter().collect()
                }
                // The server says the name has none (NXDOMAIN, NODATA), so
                // its addresses are really gone.
                Err(e) if is_negative(&e) => {
                    tracing::warn!(target_name = %host, error = %e, "dns: SRV target has no address");
                    continue;
                }
                // No answer says nothing about the target: as for a failed
                // answer, it keeps its last good addresses, so that its
                // tunnels are not drained over a SERVFAIL or a timeout.
                Err(e) => {
                    any_failed = true;
                    let kept = self.srv_addrs.get(host).cloned().unwrap_or_default();
                    tracing::warn!(target_name = %host, error = %e, kept = kept.len(), "dns: SRV target did not resolve; keeping its last addresses");
                    kept
                }
            };
            for &ip in &ips {
                targets.push(
                    Target::new(
                        SocketAddr::new(ip, record.port()),
                        u32::from(record.weight()),
                    )
                    .backup(record.priority() > lowest),
                );
            }
            if !ips.is_empty() {
                addrs.insert(host.clone(), ips);
            }
        }
        // With `any_failed` the kept addresses may be stale: the caller
        // asks again sooner than `ttl`.
        let answer = match (targets.is_empty(), any_failed) {
            (false, _) => Answer::Records { targets, ttl },
            (true, true) => Answer::Failed,
            (true, false) => Answer::Empty,
        };
        (answer, Some(addrs), any_failed)
    }
}

/// The SRV records whose targets are resolved: at most
/// [`MAX_SRV_TARGETS`], sorted before the cut so that with more records
/// the same ones are kept whatever order the server sends them in (servers
/// rotate them), and membership does not flap with it.
fn first_targets<'a>(records: impl Iterator<Item = &'a SRV>) -> Vec<&'a SRV> {
    let mut records: Vec<&SRV> = records.collect();
    records.sort_by(|a, b| {
        (a.priority(), Reverse(a.weight()), a.target(), a.port()).cmp(&(
            b.priority(),
            Reverse(b.weight()),
            b.target(),
            b.port(),
        ))
    });
    records.truncate(MAX_SRV_TARGETS);
    records
}

fn records_answer(targets: Vec<Target>, records: &[Record]) -> Answer {
    if targets.is_empty() {
        return Answer::Empty;
    }
    Answer::Records {
        targets,
        ttl: min_ttl(records),
    }
}

/// The smallest TTL among the address and SRV records (a CNAME's own TTL
/// aside: the addresses are what expire).
fn min_ttl(records: &[Record]) -> Duration {
    records
        .iter()
        .filter(|r| matches!(r.data(), RData::A(_) | RData::AAAA(_) | RData::SRV(_)))
        .map(|r| Duration::from_secs(u64::from(r.ttl())))
        .min()
        .unwrap_or(Duration::ZERO)
}

/// Whether the name server answered that the name has no such record
/// (NXDOMAIN, or NOERROR without one). hickory reports SERVFAIL, REFUSED
/// and the other failure codes as "no records found" too, though they say
/// nothing about the records.
fn is_negative(e: &ResolveError) -> bool {
    matches!(
        e.proto().map(ProtoError::kind),
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        })
    )
}

fn failed(name: &DnsName, e: &ResolveError) -> Answer {
    if is_negative(e) {
        tracing::warn!(%name, error = %e, "dns: no records");
        Answer::Empty
    } else {
        tracing::warn!(%name, error = %e, "dns: lookup failed");
        Answer::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_srv_targets_kept_do_not_depend_on_record_order() {
        let records: Vec<SRV> = (0..80u16)
            .map(|i| {
                let target = Name::from_ascii(format!("t{}.test.", i % 40)).unwrap();
                SRV::new(10 + i % 2, i % 7, 8000 + i, target)
            })
            .collect();
        let kept = |records: &[SRV]| -> Vec<SRV> {
            first_targets(records.iter()).into_iter().cloned().collect()
        };
        let first = kept(&records);
        assert_eq!(first.len(), MAX_SRV_TARGETS);
        // The 40 of priority 10 first, heaviest first.
        assert!(first[..40].iter().all(|r| r.priority() == 10));
        assert!(first[..40]
            .windows(2)
            .all(|w| w[0].weight() >= w[1].weight()));
        let mut rotated = records.clone();
        for _ in 0..5 {
            rotated.rotate_left(17);
            assert_eq!(kept(&rotated), first);
        }
        rotated.reverse();
        assert_eq!(kept(&rotated), first);
    }
}
