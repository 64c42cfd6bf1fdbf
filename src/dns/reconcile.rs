//! The pure half of discovery: an answer against the members already
//! discovered gives joins, leaves and keeps; a TTL is clamped; a failed or
//! empty answer changes nothing. No sockets and no clock, so every rule is
//! tested on plain values.

use std::net::SocketAddr;
use std::time::Duration;

/// An address an answer names, with the weight it gets (SRV weight, or the
/// template's for A/AAAA) and whether it is a backup (an SRV record of a
/// higher priority than the lowest).
///
/// ```
/// use wsproxy::dns::Target;
///
/// let t = Target::new("127.0.0.1:8080".parse()?, 3);
/// assert_eq!((t.weight, t.backup), (3, false));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its weight, at least one.
    pub weight: u32,
    /// Whether it serves only when no primary can (nginx `backup`).
    pub backup: bool,
}

impl Target {
    /// A primary at `addr` of weight `weight` (zero is raised to one).
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight: weight.max(1),
            backup: false,
        }
    }

    /// The same target as a backup, or not.
    #[must_use]
    pub fn backup(mut self, backup: bool) -> Self {
        self.backup = backup;
        self
    }
}

/// What one lookup gave.
///
/// ```
/// use std::time::Duration;
/// use wsproxy::dns::{Answer, Target};
///
/// let answer = Answer::Records {
///     targets: vec![Target::new("127.0.0.1:8080".parse()?, 1)],
///     ttl: Duration::from_secs(30),
/// };
/// assert!(answer.is_usable());
/// assert!(!Answer::Failed.is_usable());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// Addresses, and the smallest TTL among the records that gave them.
    Records {
        /// The addresses.
        targets: Vec<Target>,
        /// The smallest TTL of the answer's records.
        ttl: Duration,
    },
    /// No record (NXDOMAIN, or NOERROR with no address).
    Empty,
    /// No answer: SERVFAIL, REFUSED, a timeout or a network error.
    Failed,
}

impl Answer {
    /// Whether the answer may replace the current members: it names at
    /// least one address. An empty or failed answer keeps the last good
    /// set, as nginx keeps a resolved name's addresses on resolver errors:
    /// a DNS outage must not empty an upstream group.
    pub fn is_usable(&self) -> bool {
        matches!(self, Self::Records { targets, .. } if !targets.is_empty())
    }
}

/// An address discovered earlier, as the set holds it now.
///
/// ```
/// use wsproxy::dns::Member;
///
/// let m = Member::new("127.0.0.1:8080".parse()?, 1);
/// assert!(!m.draining);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its weight now.
    pub weight: u32,
    /// Whether it left an earlier answer and drains.
    pub draining: bool,
}

impl Member {
    /// A member taking new connections.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight,
            draining: false,
        }
    }

    /// The same member, draining or not.
    #[must_use]
    pub fn draining(mut self, draining: bool) -> Self {
        self.draining = draining;
        self
    }
}

/// What to do to the set after an answer.
///
/// ```
/// use wsproxy::dns::{reconcile, Answer, Member, Target};
///
/// let a = "127.0.0.1:8001".parse()?;
/// let b = "127.0.0.1:8002".parse()?;
/// let answer = Answer::Records { targets: vec![Target::new(b, 1)], ttl: Default::default() };
/// let plan = reconcile(&[Member::new(a, 1)], &answer);
/// assert_eq!(plan.join, vec![Target::new(b, 1)]);
/// assert_eq!(plan.leave, vec![a]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// New addresses: added to the set.
    pub join: Vec<Target>,
    /// Draining members named again: they take new connections again.
    pub rejoin: Vec<SocketAddr>,
    /// Members whose weight the answer changed.
    pub reweight: Vec<Target>,
    /// Members the answer no longer names: drained (no new picks), removed
    /// once their tunnels end.
    pub leave: Vec<SocketAddr>,
    /// Members named again, unchanged.
    pub kept: usize,
    /// The answer was empty or failed: nothing changes.
    pub kept_last: bool,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.join.is_empty()
            && self.rejoin.is_empty()
            && self.reweight.is_empty()
            && self.leave.is_empty()
    }
}

/// The changes that bring `current` (the members discovered so far) in
/// line with `answer`. A target named twice counts once (the first wins);
/// a member already draining that the answer does not name stays as it is;
/// an unusable answer ([`Answer::is_usable`]) gives an empty plan with
/// `kept_last` set. Whether a target is a backup is fixed when it joins.
///
/// ```
/// use wsproxy::dns::{reconcile, Answer, Member};
///
/// let current = [Member::new("127.0.0.1:8001".parse()?, 1)];
/// let plan = reconcile(&current, &Answer::Failed);
/// assert!(plan.kept_last && plan.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn reconcile(current: &[Member], answer: &Answer) -> Plan {
    let targets = match answer {
        Answer::Records { targets, .. } if !targets.is_empty() => targets,
        _ => {
            return Plan {
                kept_last: true,
                ..Plan::default()
            }
        }
    };
    let mut named: Vec<Target> = Vec::with_capacity(targets.len());
    for t in targets {
        if !named.iter().any(|n| n.addr == t.addr) {
            named.push(*t);
        }
    }
    let mut plan = Plan::default();
    for t in &named {
        match current.iter().find(|m| m.addr == t.addr) {
            None => plan.join.push(*t),
            Some(m) => {
                if m.draining {
                    plan.rejoin.push(m.addr);
                }
                if m.weight != t.weight {
                    plan.reweight.push(*t);
                } else if !m.draining {
                    plan.kept += 1;
                }
            }
        }
    }
    plan.leave = current
        .iter()
        .filter(|m| !m.draining && !named.iter().any(|t| t.addr == m.addr))
        .map(|m| m.addr)
        .collect();
    plan
}

/// Bounds on how long an answer is trusted (nginx `resolver … valid=`
/// overrides the TTL; these only clamp it).
///
/// ```
/// use std::time::Duration;
/// use wsproxy::dns::TtlBounds;
///
/// let bounds = TtlBounds::new(Duration::from_secs(5), Duration::from_secs(60));
/// assert_eq!(bounds.clamp(Duration::ZERO), Duration::from_secs(5));
/// assert_eq!(bounds.clamp(Duration::from_secs(86_400)), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    min: Duration,
    max: Duration,
}

/// The shortest wait between two lookups: a TTL of 0 (a common answer from
/// service registries) must not become a busy loop.
pub const MIN_TTL_FLOOR: Duration = Duration::from_millis(100);

/// The longest wait between lookups while they keep failing
/// ([`TtlBounds::retry_after`]).
pub const MAX_RETRY: Duration = Duration::from_secs(30);

impl TtlBounds {
    /// Re-resolve no sooner than `min` and no later than `max` after an
    /// answer. `min` is raised to [`MIN_TTL_FLOOR`], and `max` to `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(MIN_TTL_FLOOR);
        Self {
            min,
            max: max.max(min),
        }
    }

    /// The lower bound.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The upper bound.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// How long to wait before the next lookup after a record TTL of `ttl`.
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min, self.max)
    }

    /// How long to wait after an empty or failed answer: the lower bound,
    /// so that a recovered name server is asked again soon (HAProxy
    /// `timeout retry`), without hammering a failing one.
    pub fn retry(&self) -> Duration {
        self.min
    }

    /// How long to wait after the `failures`-th empty or failed answer in
    /// a row (counting from 1): [`retry`](Self::retry), doubled for each
    /// failure after the first, up to [`MAX_RETRY`] (or the lower bound, if
    /// that is longer). A name server that fails for hours is asked about
    /// twice a minute, not every second by every gateway, and a recovered
    /// one is heard from within half a minute; the last good set serves
    /// meanwhile.
    pub fn retry_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        let cap = MAX_RETRY.min(self.max).max(self.min);
        self.min.saturating_mul(1 << doublings).min(cap)
    }

    /// How long to wait before the next lookup after `answer`.
    pub fn next_lookup(&self, answer: &Answer) -> Duration {
        match answer {
            Answer::Records { targets, ttl } if !targets.is_empty() => self.clamp(*ttl),
            _ => self.retry(),
        }
    }
}

impl Default for TtlBounds {
    /// 1 s to 5 min: TTLs of a few seconds (Kubernetes headless Services
    /// answer with 5 s to 30 s) are honoured, and a day-long TTL still lets
    /// a moved backend be found within minutes.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn records(targets: &[(u16, u32)]) -> Answer {
        Answer::Records {
            targets: targets
                .iter()
                .map(|&(p, w)| Target::new(addr(p), w))
                .collect(),
            ttl: Duration::from_secs(30),
        }
    }

    #[test]
    fn new_addresses_join_vanished_ones_leave_and_the_rest_are_kept() {
        let current = [Member::new(addr(1), 1), Member::new(addr(2), 1)];
        let plan = reconcile(&current, &records(&[(2, 1), (3, 1)]));
        assert_eq!(plan.join, vec![Target::new(addr(3), 1)]);
        assert_eq!(plan.leave, vec![addr(1)]);
        assert_eq!(plan.kept, 1);
        assert!(plan.rejoin.is_empty() && plan.reweight.is_empty() && !plan.kept_last);
    }

    #[test]
    fn failed_and_empty_answers_keep_the_last_set() {
        let current = [Member::new(addr(1), 1)];
        for answer in [Answer::Failed, Answer::Empty, records(&[])] {
            let plan = reconcile(&current, &answer);
            assert!(plan.is_empty() && plan.kept_last, "{answer:?}");
        }
    }

    #[test]
    fn a_draining_member_named_again_rejoins_and_an_unnamed_one_stays_draining() {
        let current = [
            Member::new(addr(1), 1).draining(true),
            Member::new(addr(2), 1).draining(true),
            Member::new(addr(3), 1),
        ];
        let plan = reconcile(&current, &records(&[(1, 1), (3, 1)]));
        assert_eq!(plan.rejoin, vec![addr(1)]);
        assert!(plan.leave.is_empty() && plan.join.is_empty());
        assert_eq!(plan.kept, 1);
    }

    #[test]
    fn a_changed_weight_is_a_reweight_and_duplicates_count_once() {
        let current = [Member::new(addr(1), 1)];
        let plan = reconcile(&current, &records(&[(1, 5), (1, 9), (2, 0), (2, 4)]));
        assert_eq!(plan.reweight, vec![Target::new(addr(1), 5)]);
        // Zero weight is raised to one, as Upstream::weight does.
        assert_eq!(plan.join, vec![Target::new(addr(2), 1)]);
    }

    #[test]
    fn ttls_are_clamped_and_failures_retry_at_the_lower_bound() {
        let b = TtlBounds::new(Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(b.next_lookup(&records(&[(1, 1)])), Duration::from_secs(10));
        let short = Answer::Records {
            targets: vec![Target::new(addr(1), 1)],
            ttl: Duration::from_secs(0),
        };
        assert_eq!(b.next_lookup(&short), Duration::from_secs(2));
        assert_eq!(b.next_lookup(&Answer::Failed), Duration::from_secs(2));
        assert_eq!(b.next_lookup(&Answer::Empty), Duration::from_secs(2));
        // Never a busy loop, and max never below min.
        let zero = TtlBounds::new(Duration::ZERO, Duration::ZERO);
        assert_eq!((zero.min(), zero.max()), (MIN_TTL_FLOOR, MIN_TTL_FLOOR));
    }

    #[test]
    fn failures_in_a_row_back_off_to_half_a_minute() {
        let secs = Duration::from_secs;
        let b = TtlBounds::default();
        let waits: Vec<_> = (1..=7).map(|n| b.retry_after(n)).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30].map(secs));
        assert_eq!(b.retry_after(u32::MAX), MAX_RETRY);
        // Never past the upper bound, never below the lower one.
        let tight = TtlBounds::new(secs(1), secs(5));
        assert_eq!(tight.retry_after(9), secs(5));
        let slow = TtlBounds::new(secs(60), secs(300));
        assert_eq!(slow.retry_after(1), secs(60));
        assert_eq!(slow.retry_after(5), secs(60));
    }
}
