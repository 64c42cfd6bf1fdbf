//! Reconciling a live [`UpstreamSet`] with a new list of upstreams (a
//! reloaded configuration, a fresh DNS answer) in one published change.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use super::{Peer, UpstreamSet};
use crate::balance::upstream::{Shared, Upstream, UpstreamId};

/// What [`UpstreamSet::reconcile`] did to each upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconciled {
    /// Already in the set: kept, with its open connections, counts and
    /// passive health; weight, `backup` and `down` updated in place.
    pub kept: Vec<UpstreamId>,
    /// New to the set.
    pub added: Vec<UpstreamId>,
    /// No longer listed but still holding connections: draining (no new
    /// picks) until [`UpstreamSet::remove_drained`] finds them idle.
    pub draining: Vec<UpstreamId>,
    /// No longer listed and idle: removed at once.
    pub removed: Vec<UpstreamId>,
}

impl Reconciled {
    /// Whether the set's membership or its upstreams' settings changed.
    pub fn changed_membership(&self) -> bool {
        !(self.added.is_empty() && self.draining.is_empty() && self.removed.is_empty())
    }
}

impl UpstreamSet {
    /// Makes the set hold `desired`, keeping what it can, in one published
    /// snapshot, so that no pick ever sees a half-changed set.
    ///
    /// An upstream of the set is kept for a desired one with the same
    /// address, `max_fails` and `fail_timeout` (which live with its passive
    /// health state); its weight, `backup` and `down` take the new values,
    /// and a kept upstream that was draining stops draining. Desired
    /// upstreams nothing matches are added. Upstreams no longer desired are
    /// removed when no connection holds them, and drained otherwise: their
    /// tunnels run on, they get no new picks, and
    /// [`remove_drained`](Self::remove_drained) removes them once their last
    /// connection ends.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::net::SocketAddr;
    /// use wsproxy::balance::{Upstream, UpstreamSet};
    ///
    /// let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    /// let set: UpstreamSet = [Upstream::new(addr(9001)), Upstream::new(addr(9002))]
    ///     .into_iter()
    ///     .collect();
    /// let held = set.snapshot().primaries()[1].lease(); // an open tunnel on :9002
    ///
    /// let done = set.reconcile(&[Upstream::new(addr(9001)).weight(3), Upstream::new(addr(9003))]);
    /// assert_eq!((done.kept.len(), done.added.len(), done.draining.len()), (1, 1, 1));
    /// assert!(set.snapshot().get(held.id()).ok_or("listed")?.is_draining());
    ///
    /// drop(held); // the tunnel ended
    /// assert_eq!(set.remove_drained(), vec![done.draining[0]]);
    /// assert_eq!(set.snapshot().len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn reconcile(&self, desired: &[Upstream]) -> Reconciled {
        let _write = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut done = Reconciled::default();
        let counters = &self.inner.counters;
        self.update(true, |peers| {
            let mut matched = vec![false; peers.len()];
            let mut added = Vec::new();
            for want in desired {
                // Prefer an upstream still serving over one being drained,
                // so that a listed twin of a draining address stays put.
                let found = (0..peers.len())
                    .filter(|&i| !matched[i] && same_upstream(&peers[i], want))
                    .min_by_key(|&i| peers[i].draining);
                match found {
                    Some(i) => {
                        matched[i] = true;
                        let peer = &mut peers[i];
                        peer.weight = want.weight.max(1);
                        peer.backup = want.backup;
                        peer.down = want.down;
                        peer.draining = false;
                        done.kept.push(peer.id());
                    }
                    None => {
                        let id = UpstreamId::fresh();
                        added.push(Peer {
                            shared: std::sync::Arc::new(Shared::new(
                                id,
                                want,
                                std::sync::Arc::clone(counters),
                            )),
                            weight: want.weight.max(1),
                            backup: want.backup,
                            down: want.down,
                            check_down: false,
                            draining: false,
                        });
                        done.added.push(id);
                    }
                }
            }
            let mut keep = matched.into_iter();
            peers.retain_mut(|peer| {
                if keep.next().unwrap_or(true) {
                    return true;
                }
                if peer.active() == 0 {
                    done.removed.push(peer.id());
                    return false;
                }
                peer.draining = true;
                done.draining.push(peer.id());
                true
            });
            peers.extend(added);
            true
        });
        done
    }

    /// Removes every draining upstream that no connection holds any more
    /// (those [`reconcile`](Self::reconcile) or
    /// [`set_draining`](Self::set_draining) drained) and returns their ids.
    /// Cheap when there are none: one snapshot load.
    pub fn remove_drained(&self) -> Vec<UpstreamId> {
        let idle = |p: &Peer| p.draining && p.shared.active.load(Ordering::Relaxed) == 0;
        if !self.snapshot().iter().any(idle) {
            return Vec::new();
        }
        let _write = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut removed = Vec::new();
        self.update(true, |peers| {
            peers.retain(|p| {
                let gone = idle(p);
                if gone {
                    removed.push(p.id());
                }
                !gone
            });
            !removed.is_empty()
        });
        removed
    }

    /// The upstreams the set serves (draining ones left out), as
    /// [`Upstream`]s to hand to another set's [`reconcile`](Self::reconcile).
    pub fn upstreams(&self) -> Vec<Upstream> {
        self.snapshot()
            .iter()
            .filter(|p| !p.draining)
            .map(|p| {
                Upstream::new(p.shared.addr.clone())
                    .weight(p.weight)
                    .max_fails(p.shared.max_fails)
                    .fail_timeout(p.shared.fail_timeout)
                    .backup(p.backup)
                    .down(p.down)
            })
            .collect()
    }
}

/// The same upstream: its address and the settings its passive health
/// state was counted under.
fn same_upstream(peer: &Peer, want: &Upstream) -> bool {
    peer.shared.addr == want.addr
        && peer.shared.max_fails == want.max_fails
        && peer.shared.fail_timeout == want.fail_timeout
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;

    fn up(port: u16) -> Upstream {
        Upstream::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn ports(set: &UpstreamSet) -> Vec<(u16, u32, bool)> {
        let mut list: Vec<_> = set
            .snapshot()
            .iter()
            .map(|p| (p.addr().port(), p.weight(), p.is_draining()))
            .collect();
        list.sort_unstable();
        list
    }

    #[test]
    fn reconcile_keeps_adds_drains_and_removes() {
        let set: UpstreamSet = [up(1), up(2), up(3)].into_iter().collect();
        let ids: Vec<UpstreamId> = set.snapshot().iter().map(Peer::id).collect();
        let busy = set.snapshot().get(ids[1]).map(Peer::lease);
        let generation = set.snapshot().generation();

        let done = set.reconcile(&[up(1).weight(5), up(4)]);
        assert_eq!(done.kept, vec![ids[0]]);
        assert_eq!(done.draining, vec![ids[1]]);
        assert_eq!(done.removed, vec![ids[2]]);
        assert_eq!(done.added.len(), 1);
        assert!(done.changed_membership());
        // One published change for the whole reconcile.
        assert_eq!(set.snapshot().generation(), generation + 1);
        assert_eq!(
            ports(&set),
            vec![(1, 5, false), (2, 1, true), (4, 1, false)]
        );

        // Nothing is idle yet: nothing goes.
        assert!(set.remove_drained().is_empty());
        drop(busy);
        assert_eq!(set.remove_drained(), vec![ids[1]]);
        assert_eq!(ports(&set), vec![(1, 5, false), (4, 1, false)]);
    }

    #[test]
    fn a_draining_upstream_listed_again_comes_back_with_its_connections() {
        let set: UpstreamSet = [up(1), up(2)].into_iter().collect();
        let lease = set.snapshot().primaries()[1].lease();
        set.reconcile(&[up(1)]);
        assert_eq!(
            set.snapshot().get(lease.id()).map(Peer::is_draining),
            Some(true)
        );

        let done = set.reconcile(&[up(1), up(2).weight(2)]);
        assert_eq!(done.kept.len(), 2);
        assert!(!done.changed_membership());
        let peer = set.snapshot().get(lease.id()).cloned().unwrap();
        assert!(!peer.is_draining());
        assert_eq!((peer.weight(), peer.active()), (2, 1));
    }

    #[test]
    fn changed_passive_health_settings_replace_the_upstream() {
        let set: UpstreamSet = [up(1)].into_iter().collect();
        let done = set.reconcile(&[up(1).max_fails(5).fail_timeout(Duration::from_secs(3))]);
        assert_eq!(
            (done.kept.len(), done.added.len(), done.removed.len()),
            (0, 1, 1)
        );
        assert_eq!(
            set.upstreams(),
            vec![up(1).max_fails(5).fail_timeout(Duration::from_secs(3))]
        );
    }

    #[test]
    fn upstreams_round_trip_through_reconcile() {
        let list = vec![up(1).weight(3), up(2).backup(true), up(3).down(true)];
        let set: UpstreamSet = list.iter().cloned().collect();
        let mut got = set.upstreams();
        got.sort_by_key(|u| u.addr().port());
        assert_eq!(got, list);
        let done = set.reconcile(&list);
        assert_eq!(done.kept.len(), 3);
    }
}
