//! The accept loop: serves a `TcpListener` through a [`Proxy`] with a bound
//! on concurrent connections, and shuts down gracefully.
//!
//! ```no_run
//! use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
//! use wsproxy::server::Server;
//! use wsproxy::Proxy;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let upstreams = [Upstream::new("127.0.0.1:8010".parse::<std::net::SocketAddr>()?)].into_iter().collect::<UpstreamSet>();
//! let proxy = Proxy::builder().upstream(RoundRobin::new(upstreams)).build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8020").await?;
//! let report = Server::new(proxy)
//!     .max_connections(10_000)
//!     .serve(listener, async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! println!("{} tunnels cut at the drain deadline", report.cut);
//! # Ok(())
//! # }
//! ```
//!
//! [`Server::serve_with`] serves the same way over any stream the accepted
//! socket is turned into, such as TLS (`wss://`) with tokio-rustls;
//! `Server::serve_negotiated` (feature `h2`) serves HTTP/2 on those whose
//! TLS ALPN picked `h2`, WebSockets over it included (RFC 8441); and
//! [`Server::on_connection_end`] hands each finished connection's
//! [`ConnectionReport`] to the host (an access log).
//!
//! # Connections and shutdown
//!
//! At most [`max_connections`](Server::max_connections) are served at once;
//! beyond that, new ones wait in the listen backlog. Each connection runs
//! in one task, its tunnel included, and its handshake's state is freed
//! when the tunnel starts, so only the tunnel's stays allocated while it
//! idles. When `shutdown` completes, the
//! server stops accepting, lets open connections finish until the
//! [drain timeout](Server::drain_timeout) (nginx `worker_shutdown_timeout`),
//! then ends the tunnels still open and reports how many it cut in the
//! [`DrainReport`]. With a [drain window](Server::drain_window) (HAProxy
//! `close-spread-time`) it first sends every open tunnel Close 1001, the
//! i-th of n at i/n × window, so that clients reconnect elsewhere a few at a
//! time; `cargo test --test lifecycle` checks the spread on 1,000 tunnels.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{sleep, timeout, timeout_at, Instant};

mod connection;
#[cfg(feature = "h2")]
mod h2;
mod inherit;
#[cfg(feature = "h2")]
pub(crate) use h2::Front;
#[cfg(feature = "h2")]
pub use h2::Negotiated;
pub(crate) use inherit::before_listen;

use self::connection::{Connection, Ending, Hooks, Next};
use crate::forward::Scheme;
use crate::proxy::{
    close_spread, ConnectionHook, ConnectionReport, Drain, DrainPhase, Listener, Proxy, Reclaim,
    Sockets, CUT_GRACE,
};

/// Serves a listener through a [`Proxy`].
#[must_use = "a Server does nothing until it serves"]
#[derive(Debug, Clone)]
pub struct Server {
    proxy: Proxy,
    scheme: Scheme,
    pub(crate) max_connections: usize,
    drain_timeout: Duration,
    drain_window: Option<Duration>,
    on_end: Option<ConnectionHook>,
    #[cfg(feature = "proxy-protocol")]
    proxy_protocol: Option<Arc<crate::proxy_protocol::ProxyProtocol>>,
}

impl Server {
    /// A server for `proxy`: plain `http`, at most 10,000 connections, a
    /// 30 s drain.
    pub fn new(proxy: Proxy) -> Self {
        Self {
            proxy,
            scheme: Scheme::Http,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            drain_window: None,
            on_end: None,
            #[cfg(feature = "proxy-protocol")]
            proxy_protocol: None,
        }
    }

    /// Reads a PROXY protocol header (v1 or v2) before anything else on
    /// each connection, from the peers `pp` trusts, and serves the
    /// connection as coming from the client it names (nginx
    /// `listen … proxy_protocol`, HAProxy `accept-proxy`): the
    /// trusted-proxy walk, `X-Real-IP`, `X-Forwarded-For`, `Forwarded`,
    /// `ip_hash` and [`on_connection_end`](Self::on_connection_end) all see
    /// that address. Feature `proxy-protocol`.
    ///
    /// A connection from any other peer, or whose header is missing,
    /// malformed or truncated, is closed without a byte read past the
    /// header or forwarded. The header shares the
    /// [handshake timeout](crate::proxy::Timeouts) from the accept with the
    /// TLS handshake and the first request head. A v2 `LOCAL` header (a
    /// balancer's health check) is served as a direct connection.
    ///
    /// ```no_run
    /// use wsproxy::proxy_protocol::ProxyProtocol;
    /// use wsproxy::{server::Server, Proxy};
    ///
    /// # async fn run(proxy: Proxy) -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// Server::new(proxy)
    ///     .proxy_protocol(ProxyProtocol::from_cidrs(["10.0.0.0/8"])?)
    ///     .serve(listener, async {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "proxy-protocol")]
    #[must_use = "builder methods return the updated builder"]
    pub fn proxy_protocol(mut self, pp: crate::proxy_protocol::ProxyProtocol) -> Self {
        self.proxy_protocol = Some(Arc::new(pp));
        self
    }

    /// The scheme clients used to reach the listener (`Https` behind TLS
    /// termination in front of this server); feeds `X-Forwarded-Proto`.
    #[must_use = "builder methods return the updated builder"]
    pub fn scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// At most this many connections are served at once (nginx
    /// `worker_connections`). At least 1. When all are taken, the one
    /// connection accepted next closes the longest idle keep-alive
    /// connection to take its slot, as nginx reuses idle connections
    /// (`ngx_drain_connections`); an HTTP/2 connection (feature `h2`) is
    /// idle while no stream is open on it, and closes with a GOAWAY. A
    /// connection with a tunnel is never taken. Without an idle one it
    /// waits for a connection to end, and the next ones wait in the listen
    /// backlog. At most [`Semaphore::MAX_PERMITS`] (`usize::MAX` is taken
    /// as that).
    #[must_use = "builder methods return the updated builder"]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How long open connections may run after shutdown starts before their
    /// tunnels are ended.
    #[must_use = "builder methods return the updated builder"]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// On shutdown, close every open tunnel politely with WebSocket Close
    /// 1001 (going away), the closes spread evenly over `window` (HAProxy
    /// `close-spread-time`), so that clients reconnect elsewhere a few at a
    /// time rather than all at once. Without it (the default) tunnels run
    /// on until the drain timeout cuts them.
    ///
    /// Keep the window shorter than the [drain timeout](Self::drain_timeout)
    /// by at least the tunnels' close linger, so that the last Close frames
    /// are answered before the deadline cuts what remains. Tunnels need
    /// frame tracking to be closed politely
    /// ([`TunnelConfig::track_frames`](crate::tunnel::TunnelConfig::track_frames));
    /// those without are cut at their turn.
    #[must_use = "builder methods return the updated builder"]
    pub fn drain_window(mut self, window: Duration) -> Self {
        self.drain_window = Some(window);
        self
    }

    /// Calls `hook` with the client's address and the [`ConnectionReport`]
    /// once each connection has ended, tunnel included: the place for an
    /// access log (nginx `access_log`, written when a request completes).
    /// A hook set on the proxy
    /// ([`ProxyBuilder::on_connection_end`](crate::ProxyBuilder::on_connection_end))
    /// is called too, first.
    ///
    /// The hook runs on the connection's task, so it should be quick (a
    /// buffered write, a channel send). Without a hook, nothing of the
    /// report is kept while a tunnel runs.
    ///
    /// ```no_run
    /// # use wsproxy::{server::Server, Proxy};
    /// # fn run(proxy: Proxy) {
    /// let server = Server::new(proxy).on_connection_end(|client, report| {
    ///     let status = report.status.map_or(0, |s| s.as_u16());
    ///     println!("{client} {status} {:?}", report.duration);
    /// });
    /// # let _ = server;
    /// # }
    /// ```
    #[must_use = "builder methods return the updated builder"]
    pub fn on_connection_end<H>(mut self, hook: H) -> Self
    where
        H: Fn(SocketAddr, &ConnectionReport) + Send + Sync + 'static,
    {
        self.on_end = Some(ConnectionHook::new(hook));
        self
    }

    /// Accepts and serves connections until `shutdown` resolves, then stops
    /// accepting, lets open connections finish until the drain deadline,
    /// ends the tunnels still open, and reports.
    ///
    /// # Errors
    ///
    /// Only when the listener's local address cannot be read; accept errors
    /// (a full fd table, a connection reset before accept) are logged and
    /// retried.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> io::Result<DrainReport>
    where
        F: Future<Output = ()>,
    {
        self.serve_with(listener, |tcp| std::future::ready(Ok(tcp)), shutdown)
            .await
    }

    /// Like [`serve`](Self::serve), but each accepted socket first goes
    /// through `accept`, on the connection's own task, and the proxy serves
    /// the stream it returns: TLS termination for `wss://`, for instance.
    ///
    /// `accept` and the first request head share one handshake timeout from
    /// the accept (nginx bounds the TLS handshake by `client_header_timeout`
    /// too), and `accept` is abandoned when
    /// shutdown begins; a connection whose `accept` fails or times out is
    /// closed. Set [`scheme`](Self::scheme) to `Https` so that upstreams see
    /// `X-Forwarded-Proto: https`.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tokio_rustls::{rustls::ServerConfig, TlsAcceptor};
    /// use wsproxy::{forward::Scheme, server::Server, Proxy};
    ///
    /// # async fn run(proxy: Proxy, tls: Arc<ServerConfig>) -> std::io::Result<()> {
    /// let acceptor = TlsAcceptor::from(tls);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    /// Server::new(proxy)
    ///     .scheme(Scheme::Https)
    ///     .serve_with(listener, move |tcp| acceptor.accept(tcp), async {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub async fn serve_with<A, Fut, S, F>(
        self,
        listener: TcpListener,
        accept: A,
        shutdown: F,
    ) -> io::Result<DrainReport>
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Future<Output = ()>,
    {
        self.serve_retiring(listener, accept, std::future::pending(), shutdown)
            .await
    }

    /// Like [`serve_with`](Self::serve_with), but when `retire` resolves
    /// the listener is closed and nothing more is accepted, while the
    /// connections already accepted run on, undisturbed, until `shutdown`
    /// drains them as usual: how a host moves to a new address (bind the
    /// new listener and serve it first, then retire the old one) without
    /// refusing a connection or ending one.
    ///
    /// ```no_run
    /// use wsproxy::{server::Server, Proxy};
    ///
    /// # async fn run(proxy: Proxy) -> std::io::Result<()> {
    /// let (moved, retire) = tokio::sync::oneshot::channel::<()>();
    /// let old = tokio::net::TcpListener::bind("127.0.0.1:8020").await?;
    /// let serving = Server::new(proxy).serve_retiring(
    ///     old,
    ///     |tcp| std::future::ready(Ok(tcp)),
    ///     async { let _ = retire.await; },
    ///     async { let _ = tokio::signal::ctrl_c().await; },
    /// );
    /// # let _ = (moved, serving);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub async fn serve_retiring<A, Fut, S, R, F>(
        self,
        listener: TcpListener,
        accept: A,
        retire: R,
        shutdown: F,
    ) -> io::Result<DrainReport>
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        R: Future<Output = ()>,
        F: Future<Output = ()>,
    {
        let accept = move |tcp| {
            let accepting = accept(tcp);
            async move { Ok((accepting.await?, false)) }
        };
        self.serve_accepted(listener, accept, retire, shutdown)
            .await
    }

    /// The accept loop of [`serve_retiring`](Self::serve_retiring); `accept`
    /// also says whether the stream speaks HTTP/2 (its TLS ALPN picked `h2`).
    pub(crate) async fn serve_accepted<A, Fut, S, R, F>(
        self,
        listener: TcpListener,
        accept: A,
        retire: R,
        shutdown: F,
    ) -> io::Result<DrainReport>
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<(S, bool)>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        R: Future<Output = ()>,
        F: Future<Output = ()>,
    {
        let accept = Arc::new(accept);
        let port = listener.local_addr()?.port();
        let inherited = inherit::prepare(&listener);
        let listener_info = Listener::new(self.scheme, port);
        let (phase, rx) = watch::channel(DrainPhase::Running);
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let tracker = Arc::new(Tracker::default());
        // This serve's tunnels, told apart from other servers' over the
        // same proxy: its drain closes and cuts only its own.
        let origin = next_origin();
        let mut report = DrainReport::default();
        tokio::pin!(shutdown);
        tokio::pin!(retire);
        let mut listener = Some(listener);
        let reclaim = Arc::new(Reclaim::default());
        'accept: loop {
            let Some(open) = &listener else {
                // Retired: the socket is closed, what it accepted runs on.
                (&mut shutdown).await;
                break;
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                () = &mut retire => {
                    tracing::info!(port, "listener retired");
                    listener = None;
                    continue;
                }
                accepted = open.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        // Out of fds: give connections time to end instead
                        // of spinning on the same error.
                        sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // At most one accepted connection waits for a slot; the rest
            // stay in the kernel's backlog.
            let permit = loop {
                if let Ok(permit) = slots.clone().try_acquire_owned() {
                    break permit;
                }
                // Out of slots: close the longest idle keep-alive connection
                // for this one, as nginx reuses idle connections when
                // `worker_connections` runs short (`ngx_drain_connections`),
                // and again whenever one goes idle while this one waits.
                let went_idle = reclaim.went_idle();
                tokio::pin!(went_idle);
                went_idle.as_mut().enable();
                reclaim.close_oldest();
                tokio::select! {
                    () = &mut shutdown => break 'accept,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => break 'accept,
                    },
                    () = went_idle => {}
                }
            };
            // The handshake timeout runs from here for the TLS handshake and
            // the first request head together, as the one deadline nginx's
            // `client_header_timeout` is.
            // Read per connection: a reconfigure changes it for the next.
            let handshake_timeout = self.proxy.timeouts().handshake;
            let head_deadline = Instant::now() + crate::clock::capped(handshake_timeout);
            inherited.apply(&stream);
            if let Some(keepalive) = self.proxy.tcp_keepalive() {
                if let Err(e) = keepalive.apply(&stream) {
                    tracing::debug!(client = %peer, error = %e, "tcp keepalive refused");
                }
            }
            report.accepted += 1;
            let proxy = self.proxy.clone();
            let drain = Drain::new(rx.clone())
                .with_reclaim(reclaim.clone())
                .with_head_deadline(head_deadline)
                .with_end_hook(self.on_end.clone());
            let token = tracker.token();
            let accept = accept.clone();
            // The proxy's hook first, then the server's own.
            let hooks = (self.on_end.is_some() || self.proxy.wants_reports()).then(|| Hooks {
                proxy: self.proxy.clone(),
                server: self.on_end.clone(),
            });
            #[cfg(feature = "proxy-protocol")]
            let proxy_protocol = self.proxy_protocol.clone();
            #[cfg(feature = "h2")]
            let server_hook = self.on_end.clone();
            let handshake = async move {
                let started = Instant::now();
                #[cfg_attr(not(feature = "proxy-protocol"), allow(unused_mut))]
                let mut stream = stream;
                let accepting = async {
                    // The PROXY header comes first on the wire, before TLS.
                    #[cfg(feature = "proxy-protocol")]
                    let peer = match &proxy_protocol {
                        Some(pp) => pp
                            .read_from(&mut stream, peer)
                            .await
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
                        None => peer,
                    };
                    Ok::<_, io::Error>((accept(stream).await?, peer))
                };
                let ((stream, h2), peer) = tokio::select! {
                    accepted = timeout_at(head_deadline, accepting) => match accepted {
                        Ok(Ok(accepted)) => accepted,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "accept handshake failed");
                            return Next::Done;
                        }
                        Err(_) => {
                            tracing::debug!(client = %peer, "accept handshake timed out");
                            return Next::Done;
                        }
                    },
                    // Nothing was requested yet: nothing to drain.
                    () = drain.clone().reached(DrainPhase::Draining) => return Next::Done,
                };
                #[cfg(feature = "h2")]
                if h2 {
                    let front = h2::Front::new(origin, peer, listener_info, drain, server_hook);
                    h2::serve(proxy, stream, front, head_deadline, (permit, token)).await;
                    return Next::Done;
                }
                #[cfg(not(feature = "h2"))]
                let _ = h2;
                // At the drain deadline a connection still in a request is
                // dropped (its sockets close); a tunnel is cut cleanly.
                let cut = drain.clone().reached(DrainPhase::Cut);
                let phase = drain.clone();
                let served = proxy.serve_until_upgrade(stream, peer, listener_info, drain);
                let (report, upgraded) = tokio::select! {
                    // The connection first: a counted connection gets its
                    // outcome even when the cut came before its first poll.
                    biased;
                    served = served => served,
                    () = cut => return Next::Done,
                };
                // The report stays only for a hook.
                match (upgraded, hooks) {
                    (Some(upgraded), None) => {
                        let mut running =
                            upgraded.run_holding::<_, Sockets>((permit, token), origin);
                        cut_if_late(&phase, running.handle());
                        Next::Tunnel(running)
                    }
                    (Some(upgraded), Some(hooks)) => {
                        let mut running = upgraded.run::<Sockets>(origin);
                        cut_if_late(&phase, running.handle());
                        let ending = Ending {
                            report,
                            started,
                            peer,
                            hooks,
                            keep: (permit, token),
                        };
                        Next::Reported(running, Box::new(ending))
                    }
                    (None, Some(hooks)) => {
                        let mut report = report;
                        report.duration = started.elapsed();
                        hooks.call(peer, &report);
                        Next::Done
                    }
                    (None, None) => Next::Done,
                }
            };
            // One task for the whole connection, its tunnel included: no
            // second spawn and no hop, and only the tunnel's state stays
            // allocated while it idles (see `connection`).
            tokio::spawn(Connection::new(handshake));
        }
        drop(listener);

        report.open_at_shutdown = tracker.live();
        let _ = phase.send(DrainPhase::Draining);
        let deadline = Instant::now() + crate::clock::capped(self.drain_timeout);
        let closing = async {
            match self.drain_window {
                Some(window) => {
                    close_spread(&self.proxy, Some(origin), window, &mut report.closed).await
                }
                None => std::future::pending::<()>().await,
            }
        };
        let _ = timeout_at(deadline, async {
            tokio::select! {
                () = tracker.all_done() => {}
                () = closing => {}
            }
        })
        .await;
        report.cut = tracker.live();
        report.finished = report.open_at_shutdown.saturating_sub(report.cut);
        if report.cut > 0 {
            let _ = phase.send(DrainPhase::Cut);
            self.proxy.cut_origin(origin);
            // Cut tunnels shut both sockets down, each within its send
            // timeout; this only bounds how long the report waits for that.
            let _ = timeout(CUT_GRACE, tracker.all_done()).await;
        }
        tracing::info!(?report, "server stopped");
        Ok(report)
    }
}

/// A fresh tag for one serve's tunnels (never 0, which is "no server").
fn next_origin() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed).max(1)
}

/// A tunnel whose upgrade completed after the drain deadline is cut at once:
/// the cut already went through the registries without it.
fn cut_if_late(drain: &Drain, handle: crate::tunnel::TunnelHandle) {
    if drain.phase() == DrainPhase::Cut {
        handle.cut();
    }
}

/// Counts live connections (and their tunnels) without keeping their tasks.
#[derive(Debug, Default)]
struct Tracker {
    live: AtomicUsize,
    changed: Notify,
}

/// One live connection; dropping it counts it out.
struct Token(Arc<Tracker>);

impl Tracker {
    fn token(self: &Arc<Self>) -> Token {
        self.live.fetch_add(1, Ordering::Relaxed);
        Token(self.clone())
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    async fn all_done(&self) {
        loop {
            let changed = self.changed.notified();
            if self.live() == 0 {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// What a [`Server`] did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open when shutdown began.
    pub open_at_shutdown: usize,
    /// Of those, the ones that ended by themselves before the drain deadline.
    pub finished: usize,
    /// Of those, the ones still open at the deadline and ended by the server.
    pub cut: usize,
    /// Tunnels sent a WebSocket Close 1001 during the drain window
    /// ([`Server::drain_window`]).
    pub closed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idle-memory budget (README: under 2 KiB per idle WebSocket,
    /// measured by the anchors): every byte of the connection's task stays
    /// allocated while its tunnel idles, the handshake's box aside (freed
    /// when the tunnel starts, whatever its type). tokio rounds a task cell
    /// (this plus its 96 bytes of header and trailer) up to 128 bytes: at
    /// 416 the cell is exactly 512, one byte more makes it 640. Raise this
    /// only knowingly.
    #[test]
    fn an_idle_tunnel_task_stays_within_its_budget() {
        type Task = Connection<TcpStream, std::future::Ready<Next<TcpStream>>>;
        let size = std::mem::size_of::<Task>();
        println!("connection task {size} bytes");
        assert!(size <= 416, "connection task grew to {size} bytes");
    }

    #[tokio::test]
    async fn unlimited_connections_serve() {
        use crate::balance::{RoundRobin, Upstream, UpstreamSet};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Nothing listens there: the request gets the proxy's own 502.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let set: UpstreamSet = [Upstream::new(dead)].into_iter().collect();
        let proxy = Proxy::builder()
            .upstream(RoundRobin::new(set))
            .build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Semaphore::new panics above MAX_PERMITS; each worker's share
        // of usize::MAX is above it too.
        let server = Server::new(proxy).max_connections(usize::MAX);
        let serving = tokio::spawn(server.serve(listener, std::future::pending()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut answer));
        read.await.unwrap().unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 502"), "{answer:?}");
        serving.abort();
    }
}
