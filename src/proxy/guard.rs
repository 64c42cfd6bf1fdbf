//! An upgraded connection's tunnel and the guards that keep it accounted
//! for however it ends: counted open, listed in its group's registry and
//! holding its lease until dropped, even when a host cancels its future.

use std::future::Future;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::registry::{Listed, Registered, TunnelRegistry};
use super::stream::UpstreamStream;
use super::{Inner, UpstreamGroup};
use crate::balance::{Affinity, Lease, PickContext};
use crate::frame::CloseFrame;
use crate::tunnel::{tunnel, LastWrite, Prefixed, Tunnel, TunnelHandle, TunnelStats};

/// One open tunnel, its registry entry and its lease: counted as open and
/// listed until dropped, so that a tunnel whose future is cancelled (a
/// host's timeout, an aborted task) is still counted out, and the lease
/// released after that.
pub(crate) struct OpenTunnel {
    inner: Arc<Inner>,
    // Dropped before the lease: a listed tunnel always holds its lease.
    // It carries the tunnel's open mark too.
    registered: Registered,
    lease: Lease,
}

impl OpenTunnel {
    /// Lists the tunnel `handle` controls where `listing` says, as
    /// `origin`'s, and counts it open.
    pub(crate) fn new(
        inner: Arc<Inner>,
        lease: Lease,
        listing: Listing,
        handle: TunnelHandle,
        origin: u32,
    ) -> Self {
        let mark = inner.counters.tunnel_started(&listing.route, lease.addr());
        // An upgrade that was under way when a drain began: its tunnel is
        // asked to close as it opens, whether or not the drain still runs
        // (one whose open tunnels all ended has returned).
        let late = inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| handle.clone());
        let mut registered = listing.register(&lease, handle, origin);
        registered.mark = mark;
        if let Some(handle) = late {
            let going_away =
                CloseFrame::new(1001, "going away").unwrap_or_else(|_| CloseFrame::empty());
            handle.close(going_away);
        }
        Self {
            inner,
            registered,
            lease,
        }
    }

    /// Accounts for a tunnel that ended with `stats`: its lifetime and
    /// Close frames (its bytes go through [`bytes`](Self::bytes)).
    pub(crate) fn closed(&self, stats: &TunnelStats) {
        self.inner.counters.tunnel_closed(stats);
    }

    /// Adds bytes the tunnel moved to the totals.
    pub(crate) fn bytes(&self, from_client: u64, from_upstream: u64) {
        self.inner.counters.bytes(from_client, from_upstream);
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.inner
            .counters
            .tunnel_ended(self.lease.addr(), &self.registered.mark);
        self.inner.tunnel_counted_out();
    }
}

/// Where an upgraded connection's tunnel is listed, as whose, and with
/// what affinity (for a rebalance to know where its key goes now).
#[derive(Debug)]
pub(crate) struct Listing {
    registry: Arc<TunnelRegistry>,
    /// The group's name: the route label of the tunnel's gauge.
    route: Arc<str>,
    client: IpAddr,
    affinity: Option<Affinity>,
}

impl Listing {
    /// The listing of `request`, placed by `group`'s balancer for `client`.
    pub(crate) fn new(group: &UpstreamGroup, client: IpAddr, request: &Request<()>) -> Self {
        let ctx = PickContext::new(client, request, Instant::now().into_std());
        group.tunnels.upgrade_began();
        Self {
            registry: group.tunnels.clone(),
            route: group.name.clone(),
            client,
            affinity: group.balancer().affinity(&ctx),
        }
    }

    /// Lists the tunnel `handle` controls, running to the lease's upstream.
    pub(crate) fn register(self, lease: &Lease, handle: TunnelHandle, origin: u32) -> Registered {
        // Listed before `self` drops and counts the upgrade out: the
        // registry is never seen unused in between.
        Registered::new(
            Arc::clone(&self.registry),
            Listed {
                upstream: lease.id(),
                client: self.client,
                affinity: self.affinity,
                origin,
            },
            handle,
        )
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        self.registry.upgrade_ended();
    }
}

/// A connection whose upgrade completed, ready to tunnel. It owns only what
/// the tunnel needs, so a server can keep it in place of the connection's
/// larger handshake state and let that go (the idle-memory budget).
pub(crate) struct Upgraded<S> {
    pub(super) inner: Arc<Inner>,
    pub(super) client: Prefixed<S>,
    pub(super) upstream: Prefixed<UpstreamStream>,
    pub(super) lease: Lease,
    pub(super) listing: Listing,
    pub(super) span: tracing::Span,
}

impl<S> Upgraded<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The tunnel, ready to run until it ends and account for it, listed
    /// as `origin`'s (a [`Server`](crate::server::Server)'s own tunnels;
    /// 0 for none).
    pub(crate) fn run<L>(self, origin: u32) -> Running<S, (), L>
    where
        L: LastWrite<Prefixed<S>> + LastWrite<Prefixed<UpstreamStream>>,
    {
        self.run_holding((), origin)
    }

    /// Like [`run`](Self::run), holding `keep` (a server's connection slot)
    /// until the tunnel ends.
    ///
    /// A plain future, not an `async` block: an async block would keep the
    /// streams it moves into the tunnel twice (its captured copy and the
    /// tunnel's), hundreds of bytes more for every idle WebSocket.
    ///
    /// The tunnel ends early through its handle in the group's registry
    /// (a server's drain closes or cuts it there), so it holds no drain
    /// receiver of its own.
    ///
    /// `L` writes each direction's last bytes: `Sockets` where the client
    /// stream's type is `'static` (a server's own), else `Plain`.
    pub(crate) fn run_holding<K, L>(self, keep: K, origin: u32) -> Running<S, K, L>
    where
        L: LastWrite<Prefixed<S>> + LastWrite<Prefixed<UpstreamStream>>,
    {
        let Self {
            inner,
            client,
            upstream,
            lease,
            listing,
            span,
        } = self;
        let mut relay = tunnel(client, upstream, &inner.tunnel, std::future::pending());
        // The Running drops both streams when the tunnel ends: those whose
        // drop closes the socket skip the last shutdown.
        relay.closes_on_end::<L>();
        let handle = relay.handle();
        Running {
            relay,
            open: Some(OpenTunnel::new(inner, lease, listing, handle, origin)),
            // Without a subscriber that wants it, the span is 40 bytes of
            // nothing in every idle tunnel.
            span: (!span.is_disabled()).then(|| Box::new(span)),
            keep: Some(keep),
            last: PhantomData,
        }
    }
}

pin_project! {
    /// A running tunnel; see [`Upgraded::run`].
    pub(crate) struct Running<S, K, L> {
        #[pin]
        relay: Tunnel<Prefixed<S>, Prefixed<UpstreamStream>, std::future::Pending<()>>,
        // Dropped when the tunnel ends, or with the future if it is
        // cancelled: either way the tunnel is counted out.
        open: Option<OpenTunnel>,
        span: Option<Box<tracing::Span>>,
        keep: Option<K>,
        last: PhantomData<fn() -> L>,
    }

    // Cancelled before it ended (a host's timeout, an aborted task): its
    // last bytes and its end are accounted for as a finished tunnel's are,
    // as one cut now.
    impl<S, K, L> PinnedDrop for Running<S, K, L> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let Some(open) = this.open.take() else {
                return;
            };
            if let Some(stats) = this.relay.as_mut().stats_at_drop() {
                let (from_client, from_upstream) = this.relay.untaken();
                open.bytes(from_client, from_upstream);
                open.closed(&stats);
            }
        }
    }
}

impl<S, K, L> Running<S, K, L> {
    /// The handle of the tunnel, before it is polled.
    pub(crate) fn handle(&mut self) -> TunnelHandle {
        self.relay.handle()
    }
}

impl<S, K, L> Future for Running<S, K, L>
where
    S: AsyncRead + AsyncWrite + Unpin,
    L: LastWrite<Prefixed<S>> + LastWrite<Prefixed<UpstreamStream>>,
{
    type Output = TunnelStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        let mut this = self.project();
        let polled = this.relay.as_mut().poll_with::<L>(cx);
        let Poll::Ready(stats) = polled else {
            // Bytes reach the counters while the tunnel runs, every 64 KiB
            // or second of traffic, not only at its end: a dashboard of a
            // busy long-lived tunnel would otherwise show nothing.
            if let (Some(open), Some((from_client, from_upstream))) =
                (this.open.as_ref(), this.relay.take_progress())
            {
                open.bytes(from_client, from_upstream);
            }
            return Poll::Pending;
        };
        if let Some(open) = this.open.take() {
            let (from_client, from_upstream) = this.relay.untaken();
            open.bytes(from_client, from_upstream);
            open.closed(&stats);
        }
        if let Some(span) = this.span.as_deref() {
            span.record("from_client", stats.client_to_upstream);
            span.record("from_upstream", stats.upstream_to_client);
            span.in_scope(|| {
                tracing::info!(end = ?stats.end, duration = ?stats.duration, "tunnel closed");
            });
        }
        drop(this.keep.take());
        Poll::Ready(stats)
    }
}
