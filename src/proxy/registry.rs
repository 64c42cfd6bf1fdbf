//! The live tunnels of an upstream group, and what a host can do with them.
//!
//! Each tunnel the proxy opens through a group is entered here when it
//! starts and removed when it ends (however it ends: its entry belongs to
//! the guard that counts it open). An entry is a few dozen bytes: where the
//! tunnel runs, who it serves, since when, and the [`TunnelHandle`] that
//! closes it. Listing copies the entries out under a short lock, so a host
//! can take its time acting on them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::counters::OpenMark;
use crate::balance::{Affinity, UpstreamId};
use crate::frame::CloseFrame;
use crate::tunnel::TunnelHandle;

/// One open tunnel, as listed by [`TunnelRegistry::list`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LiveTunnel {
    /// Unique within its registry, never reused.
    pub id: u64,
    /// The upstream it runs to.
    pub upstream: UpstreamId,
    /// The believed client address (after trusted-proxy resolution).
    pub client: IpAddr,
    /// When the tunnel opened.
    pub started: Instant,
    /// What the group's balancer keeps of the request that placed it, for
    /// strategies with affinity ([`Balancer::affinity`](crate::balance::Balancer::affinity)):
    /// a rebalance moves only tunnels whose key now maps elsewhere.
    pub affinity: Option<Affinity>,
    /// Closes or cuts the tunnel.
    pub handle: TunnelHandle,
    /// The [`Server`](crate::server::Server) that accepted it (0: none), so
    /// that a server's drain touches only its own tunnels.
    pub(crate) origin: u32,
}

impl LiveTunnel {
    /// Closes the tunnel politely with `close` (see [`TunnelHandle::close`]).
    /// False when a close or cut was already asked.
    pub fn close(&self, close: &CloseFrame) -> bool {
        self.handle.close(close.clone())
    }
}

/// The live tunnels of one [`UpstreamGroup`](super::UpstreamGroup).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
/// use wsproxy::frame::CloseFrame;
/// use wsproxy::proxy::UpstreamGroup;
///
/// let set = UpstreamSet::new();
/// let id = set.add(Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?));
/// let group = UpstreamGroup::new("chat", RoundRobin::new(set));
/// // A deploy of that backend: send its clients elsewhere, politely.
/// let closed = group.tunnels().close_upstream(id, &CloseFrame::new(1012, "restart")?);
/// assert_eq!(closed, 0); // nothing open yet
/// assert!(group.tunnels().is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct TunnelRegistry {
    inner: Mutex<Entries>,
    /// A [`Rebalancer`](super::Rebalancer) run is moving these tunnels.
    rebalancing: AtomicBool,
    /// A run was asked for while one went, and skipped: the one under way
    /// plans once more before it ends.
    rebalance_wanted: AtomicBool,
    /// Upgrades routed here whose tunnels are not listed yet: a group a
    /// reconfigure removes is kept reachable until they have opened, or
    /// their tunnels could be neither listed, closed nor cut.
    pending: AtomicUsize,
}

/// A rebalance run under way on a registry's tunnels; dropped when the run
/// ends or its future is dropped (an aborted task), so the next may start.
#[derive(Debug)]
pub(crate) struct RebalanceRun<'r>(&'r AtomicBool);

impl Drop for RebalanceRun<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct Entries {
    /// Fixed-size chunks, so that growing never copies the table nor
    /// leaves half of a doubled one empty: about one entry's 64 bytes per
    /// open tunnel.
    chunks: Vec<Box<[Option<Entry>]>>,
    /// Free slots, reused before new ones: every slot of the chunks that
    /// holds no entry, so the open count is derived from the two.
    free: Vec<u32>,
    next_id: u64,
    /// The registry's start: entries keep their age from it in 4 bytes.
    epoch: Option<Instant>,
}

/// Entries per chunk.
const CHUNK: usize = 256;

/// Where a tunnel runs and whose it is, as it is entered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listed {
    pub(crate) upstream: UpstreamId,
    pub(crate) client: IpAddr,
    pub(crate) affinity: Option<Affinity>,
    /// The server that accepted it, 0 for none.
    pub(crate) origin: u32,
}

/// What the registry keeps of a tunnel; [`LiveTunnel`] is its public copy.
#[derive(Debug)]
struct Entry {
    id: u64,
    upstream: UpstreamId,
    handle: TunnelHandle,
    /// Milliseconds from the registry's epoch to the tunnel's start.
    started_ms: u64,
    origin: u32,
    client: IpAddr,
    /// Boxed: 16-byte aligned, it would grow every entry by 32 bytes; only
    /// hash strategies set it.
    affinity: Option<Box<Affinity>>,
}

impl Entries {
    /// Open tunnels: the slots not free.
    fn len(&self) -> usize {
        (self.chunks.len() * CHUNK).saturating_sub(self.free.len())
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }

    fn live(&self, entry: &Entry) -> LiveTunnel {
        let epoch = self.epoch.unwrap_or_else(Instant::now);
        LiveTunnel {
            id: entry.id,
            upstream: entry.upstream,
            client: entry.client,
            started: epoch + Duration::from_millis(entry.started_ms),
            affinity: entry.affinity.as_deref().copied(),
            handle: entry.handle.clone(),
            origin: entry.origin,
        }
    }
}

impl TunnelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // A panic elsewhere while holding the lock leaves the table whole
        // (every change is one slot written): keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a tunnel; returns its slot and id.
    fn insert(&self, listed: Listed, handle: TunnelHandle) -> (u32, u64) {
        let now = Instant::now();
        let mut entries = self.lock();
        let epoch = *entries.epoch.get_or_insert(now);
        let id = entries.next_id;
        entries.next_id += 1;
        let entry = Entry {
            id,
            upstream: listed.upstream,
            handle,
            started_ms: u64::try_from(now.duration_since(epoch).as_millis()).unwrap_or(u64::MAX),
            origin: listed.origin,
            client: listed.client,
            affinity: listed.affinity.map(Box::new),
        };
        let slot = match entries.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = entries.chunks.len() * CHUNK;
                entries
                    .chunks
                    .push(std::iter::repeat_with(|| None).take(CHUNK).collect());
                // The new chunk's other slots go to the free list, lowest
                // last so that it is used first.
                let rest = (slot + 1..slot + CHUNK).rev();
                entries
                    .free
                    .extend(rest.filter_map(|s| u32::try_from(s).ok()));
                u32::try_from(slot).unwrap_or(u32::MAX)
            }
        };
        let at = slot as usize;
        if let Some(cell) = entries
            .chunks
            .get_mut(at / CHUNK)
            .and_then(|c| c.get_mut(at % CHUNK))
        {
            *cell = Some(entry);
        }
        (slot, id)
    }

    fn remove(&self, slot: u32, id: u64) {
        let mut entries = self.lock();
        let at = slot as usize;
        let Some(cell) = entries
            .chunks
            .get_mut(at / CHUNK)
            .and_then(|c| c.get_mut(at % CHUNK))
        else {
            return;
        };
        if cell.as_ref().is_some_and(|e| e.id == id) {
            // Also when the tunnel's future was dropped unfinished: a handle
            // a host still holds must not report a close as done.
            if let Some(entry) = cell.take() {
                entry.handle.control.finish();
            }
            entries.free.push(slot);
        }
    }

    /// Marks a rebalance of these tunnels as under way until the returned
    /// guard drops; `None` when one already is.
    /// When one is, the ask is noted for it ([`take_rebalance_wanted`]).
    ///
    /// [`take_rebalance_wanted`]: Self::take_rebalance_wanted
    pub(crate) fn start_rebalance(&self) -> Option<RebalanceRun<'_>> {
        let started = self
            .rebalancing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        // A run starting now plans from the loads as they are: earlier asks
        // are answered by it.
        self.rebalance_wanted.store(!started, Ordering::Release);
        started.then_some(RebalanceRun(&self.rebalancing))
    }

    /// Whether a run was asked for (and skipped) since the last call.
    pub(crate) fn take_rebalance_wanted(&self) -> bool {
        self.rebalance_wanted.swap(false, Ordering::AcqRel)
    }

    /// Open tunnels.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a tunnel is listed or an upgrade is on its way to one.
    pub(crate) fn in_use(&self) -> bool {
        !self.is_empty() || self.pending.load(Ordering::Acquire) > 0
    }

    /// An upgrade was routed here ([`Listing`](super::guard::Listing)).
    pub(crate) fn upgrade_began(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// That upgrade's tunnel is listed, or it never will be.
    pub(crate) fn upgrade_ended(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// A copy of every open tunnel, oldest first.
    pub fn list(&self) -> Vec<LiveTunnel> {
        let entries = self.lock();
        let mut list: Vec<LiveTunnel> = entries.entries().map(|e| entries.live(e)).collect();
        drop(entries);
        list.sort_unstable_by_key(|t| t.id);
        list
    }

    /// Open tunnels per upstream (upstreams with none are absent).
    pub fn count_by_upstream(&self) -> HashMap<UpstreamId, usize> {
        let mut counts = HashMap::new();
        for entry in self.lock().entries() {
            *counts.entry(entry.upstream).or_insert(0) += 1;
        }
        counts
    }

    /// Closes every tunnel to `upstream` politely with `close` (HAProxy
    /// `on-marked-down shutdown-sessions`, but with a WebSocket Close
    /// frame); returns how many were asked.
    pub fn close_upstream(&self, upstream: UpstreamId, close: &CloseFrame) -> usize {
        self.close_where(close, |e| e.upstream == upstream)
    }

    /// Closes every open tunnel politely with `close`; returns how many were
    /// asked.
    pub fn close_all(&self, close: &CloseFrame) -> usize {
        self.close_where(close, |_| true)
    }

    /// Cuts every open tunnel at once (see [`TunnelHandle::cut`]); returns
    /// how many there were.
    pub fn cut_all(&self) -> usize {
        let handles: Vec<TunnelHandle> = self.lock().entries().map(|e| e.handle.clone()).collect();
        handles.iter().for_each(TunnelHandle::cut);
        handles.len()
    }

    /// Closes every tunnel the server tagged `origin` accepted politely
    /// with `close`; returns how many were asked.
    pub(crate) fn close_origin(&self, origin: u32, close: &CloseFrame) -> usize {
        self.close_where(close, |e| e.origin == origin)
    }

    /// Cuts every tunnel the server tagged `origin` accepted, closing ones
    /// included; returns how many there were.
    pub(crate) fn cut_origin(&self, origin: u32) -> usize {
        let handles: Vec<TunnelHandle> = self
            .lock()
            .entries()
            .filter(|e| e.origin == origin)
            .map(|e| e.handle.clone())
            .collect();
        handles.iter().for_each(TunnelHandle::cut);
        handles.len()
    }

    fn close_where(&self, close: &CloseFrame, matches: impl Fn(&Entry) -> bool) -> usize {
        // Handles are copied out first: a close wakes a tunnel, which may
        // end and remove itself, and must not wait for this lock meanwhile.
        // Tunnels already ending would refuse the close: not copied.
        let handles: Vec<TunnelHandle> = self
            .lock()
            .entries()
            .filter(|e| !e.handle.is_ending() && matches(e))
            .map(|e| e.handle.clone())
            .collect();
        handles.iter().filter(|h| h.close(close.clone())).count()
    }
}

/// A tunnel's entry, removed when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    registry: Arc<TunnelRegistry>,
    slot: u32,
    /// The tunnel's open mark ([`OpenTunnel`](super::guard::OpenTunnel)
    /// keeps it here): with the `metrics` feature four bytes, which this
    /// struct's padding holds, so an idle tunnel's task does not grow.
    pub(super) mark: OpenMark,
    id: u64,
}

impl Registered {
    pub(crate) fn new(registry: Arc<TunnelRegistry>, listed: Listed, handle: TunnelHandle) -> Self {
        let (slot, id) = registry.insert(listed, handle);
        Self {
            registry,
            slot,
            mark: OpenMark::default(),
            id,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.slot, self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::tunnel::{tunnel, TunnelConfig};

    fn handle() -> TunnelHandle {
        let (a, _) = tokio::io::duplex(8);
        let (b, _) = tokio::io::duplex(8);
        let config = TunnelConfig::new().track_frames(true);
        tunnel(a, b, &config, std::future::pending()).handle()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn listed(upstream: UpstreamId, client: IpAddr) -> Listed {
        Listed {
            upstream,
            client,
            affinity: None,
            origin: 0,
        }
    }

    #[tokio::test]
    async fn entries_are_listed_oldest_first_counted_and_removed_by_their_guard() {
        let registry = Arc::new(TunnelRegistry::new());
        let (a, b) = (UpstreamId(1), UpstreamId(2));
        let mut guards: Vec<Registered> = (0..600u32)
            .map(|i| {
                let upstream = if i % 3 == 0 { a } else { b };
                Registered::new(registry.clone(), listed(upstream, ip(i as u8)), handle())
            })
            .collect();
        assert_eq!(registry.len(), 600);
        let counts = registry.count_by_upstream();
        assert_eq!((counts[&a], counts[&b]), (200, 400));
        let list = registry.list();
        assert!(list.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(list[5].client, ip(5));

        // Dropping guards frees their slots, which new entries reuse; ids
        // are never reused.
        guards.truncate(100);
        assert_eq!(registry.len(), 100);
        let chunks = registry.lock().chunks.len();
        let again: Vec<Registered> = (0..500)
            .map(|_| Registered::new(registry.clone(), listed(a, ip(1)), handle()))
            .collect();
        assert_eq!(registry.len(), 600);
        assert_eq!(registry.lock().chunks.len(), chunks);
        let ids: HashSet<u64> = registry.list().iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), 600);
        assert!(ids.iter().all(|&id| id < 1100));
        // A handle kept past its tunnel's entry reports a close as not done.
        let kept = registry.list()[0].handle.clone();
        drop(again);
        drop(guards);
        assert!(registry.is_empty());
        assert!(kept.is_finished());
        assert!(!kept.close(CloseFrame::new(1001, "").unwrap()));
    }

    #[tokio::test]
    async fn close_upstream_asks_only_that_upstreams_tunnels_once() {
        let registry = Arc::new(TunnelRegistry::new());
        let (a, b) = (UpstreamId(1), UpstreamId(2));
        let _guards: Vec<Registered> = (0..10)
            .map(|i| {
                let upstream = if i < 4 { a } else { b };
                Registered::new(registry.clone(), listed(upstream, ip(1)), handle())
            })
            .collect();
        let close = CloseFrame::new(1001, "down").unwrap();
        assert_eq!(registry.close_upstream(a, &close), 4);
        // Already asked: not counted again.
        assert_eq!(registry.close_upstream(a, &close), 0);
        let ending: Vec<bool> = registry
            .list()
            .iter()
            .map(|t| t.handle.is_ending())
            .collect();
        assert_eq!(ending.iter().filter(|&&e| e).count(), 4);
        assert_eq!(registry.close_all(&close), 6);
        assert_eq!(registry.cut_all(), 10);
    }

    #[tokio::test]
    async fn origin_closes_and_cuts_touch_only_that_servers_tunnels() {
        let registry = Arc::new(TunnelRegistry::new());
        let _guards: Vec<Registered> = (0..6u32)
            .map(|i| {
                let listed = Listed {
                    origin: if i < 2 { 7 } else { 8 },
                    ..listed(UpstreamId(1), ip(1))
                };
                Registered::new(registry.clone(), listed, handle())
            })
            .collect();
        let close = CloseFrame::new(1001, "going away").unwrap();
        assert_eq!(registry.close_origin(7, &close), 2);
        // Already closing: skipped, not counted again.
        assert_eq!(registry.close_origin(7, &close), 0);
        let list = registry.list();
        assert!(list.iter().all(|t| t.handle.is_ending() == (t.origin == 7)));
        // A cut reaches closing tunnels too.
        assert_eq!(registry.cut_origin(7), 2);
        assert_eq!(registry.cut_origin(9), 0);
        assert_eq!(
            registry
                .list()
                .iter()
                .filter(|t| t.handle.is_ending())
                .count(),
            2
        );
        assert_eq!(registry.cut_origin(8), 4);
        assert!(registry.list().iter().all(|t| t.handle.is_ending()));
    }
}
