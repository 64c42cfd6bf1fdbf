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
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::balance::UpstreamId;
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
    /// Closes or cuts the tunnel.
    pub handle: TunnelHandle,
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
}

#[derive(Debug, Default)]
struct Entries {
    live: HashMap<u64, LiveTunnel>,
    next_id: u64,
}

impl TunnelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // A panic elsewhere while holding the lock leaves the map whole
        // (every change is one insert or remove): keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a tunnel; the returned id removes it.
    pub(crate) fn insert(&self, upstream: UpstreamId, client: IpAddr, handle: TunnelHandle) -> u64 {
        let mut entries = self.lock();
        let id = entries.next_id;
        entries.next_id += 1;
        entries.live.insert(
            id,
            LiveTunnel {
                id,
                upstream,
                client,
                started: Instant::now(),
                handle,
            },
        );
        id
    }

    pub(crate) fn remove(&self, id: u64) {
        let mut entries = self.lock();
        entries.live.remove(&id);
        // Give memory back after a burst (a drain, a rebalance) instead of
        // keeping the peak's table for good.
        let (len, capacity) = (entries.live.len(), entries.live.capacity());
        if capacity > 64 && len < capacity / 4 {
            entries.live.shrink_to(len * 2);
        }
    }

    /// Open tunnels.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// Whether no tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every open tunnel, oldest first.
    pub fn list(&self) -> Vec<LiveTunnel> {
        let mut list: Vec<LiveTunnel> = self.lock().live.values().cloned().collect();
        list.sort_unstable_by_key(|t| t.id);
        list
    }

    /// Open tunnels per upstream (upstreams with none are absent).
    pub fn count_by_upstream(&self) -> HashMap<UpstreamId, usize> {
        let mut counts = HashMap::new();
        for tunnel in self.lock().live.values() {
            *counts.entry(tunnel.upstream).or_insert(0) += 1;
        }
        counts
    }

    /// Closes every tunnel to `upstream` politely with `close` (HAProxy
    /// `on-marked-down shutdown-sessions`, but with a WebSocket Close
    /// frame); returns how many were asked.
    pub fn close_upstream(&self, upstream: UpstreamId, close: &CloseFrame) -> usize {
        self.close_where(close, |t| t.upstream == upstream)
    }

    /// Closes every open tunnel politely with `close`; returns how many were
    /// asked.
    pub fn close_all(&self, close: &CloseFrame) -> usize {
        self.close_where(close, |_| true)
    }

    /// Cuts every open tunnel at once (see [`TunnelHandle::cut`]); returns
    /// how many there were.
    pub fn cut_all(&self) -> usize {
        let handles: Vec<TunnelHandle> = self
            .lock()
            .live
            .values()
            .map(|t| t.handle.clone())
            .collect();
        handles.iter().for_each(TunnelHandle::cut);
        handles.len()
    }

    fn close_where(&self, close: &CloseFrame, matches: impl Fn(&LiveTunnel) -> bool) -> usize {
        // Handles are copied out first: a close wakes a tunnel, which may
        // end and remove itself, and must not wait for this lock meanwhile.
        let handles: Vec<TunnelHandle> = self
            .lock()
            .live
            .values()
            .filter(|t| matches(t))
            .map(|t| t.handle.clone())
            .collect();
        handles.iter().filter(|h| h.close(close.clone())).count()
    }
}

/// A tunnel's entry, removed when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    registry: Arc<TunnelRegistry>,
    id: u64,
}

impl Registered {
    pub(crate) fn new(
        registry: Arc<TunnelRegistry>,
        upstream: UpstreamId,
        client: IpAddr,
        handle: TunnelHandle,
    ) -> Self {
        let id = registry.insert(upstream, client, handle);
        Self { registry, id }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}
