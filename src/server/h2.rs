//! HTTP/2 on a [`Server`]'s connections (feature `h2`): the front door for
//! browsers that negotiated `h2` over TLS, which then open their WebSockets
//! on that connection too (RFC 8441), as HAProxy (since 2.4) and Envoy
//! accept them. See [`Server::serve_negotiated`].

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::{sleep, timeout_at, Instant};

use super::{DrainReport, Server};
use crate::proxy::{ConnectionHook, Drain, DrainPhase, Listener, PendingUpgrade, Proxy};
use crate::tunnel::Prefixed;

/// The client connection preface (RFC 9113 §3.4), read under the handshake
/// timeout before hyper takes the connection.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Receive window of one stream (hyper's default is 1 MiB, its whole
/// connection's): what a tunnel whose upstream stopped reading may leave
/// unread. A sixteenth of the connection's window, so that a stalled
/// WebSocket (up to fifteen of them) cannot freeze the others sharing its
/// connection until the send timeout, as nginx and HAProxy keep a
/// connection's window well above a stream's. Sixteen stalled at once do
/// fill it: the connection's window bounds what one client may leave
/// buffered here, and is not raised to cover every stream.
const STREAM_WINDOW: u32 = 128 * 1024;

/// Receive window of a connection: the most one client's streams may leave
/// unread in all, about what one TCP socket's buffer holds.
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// Streams one connection may have open at once (nginx
/// `http2_max_concurrent_streams 128`; hyper's own default is 200): each
/// WebSocket among them holds an upstream connection, so this and
/// [`Server::max_connections`] bound the tunnels together.
const MAX_CONCURRENT_STREAMS: u32 = 128;

/// The protocol a connection's TLS handshake settled on (ALPN, RFC 7301):
/// what [`Server::serve_negotiated`]'s accept returns with the stream.
///
/// ```
/// use wsproxy::server::Negotiated;
///
/// // tokio-rustls: `tls.get_ref().1.alpn_protocol()`
/// assert_eq!(Negotiated::from_alpn(Some(b"h2")), Negotiated::H2);
/// assert_eq!(Negotiated::from_alpn(Some(b"http/1.1")), Negotiated::Http1);
/// assert_eq!(Negotiated::from_alpn(None), Negotiated::Http1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Negotiated {
    /// HTTP/1.1 (ALPN `http/1.1`, or none): the HTTP/1.1 path of
    /// [`Server::serve_with`].
    Http1,
    /// HTTP/2 (ALPN `h2`).
    H2,
}

impl Negotiated {
    /// The protocol for the ALPN identifier a TLS library reports; anything
    /// but `h2` is HTTP/1.1, as a client that offered no ALPN speaks it.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Self::H2,
            _ => Self::Http1,
        }
    }
}

impl Server {
    /// Like [`serve_with`](Self::serve_with), but `accept` also says which
    /// protocol the connection speaks: a connection whose TLS ALPN picked
    /// `h2` is served as HTTP/2, WebSockets on it included (RFC 8441); the
    /// others take the HTTP/1.1 path. Feature `h2`.
    ///
    /// Each connection whose accept said [`Negotiated::H2`] is served by hyper's
    /// HTTP/2 server with `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1`, every stream
    /// going to the [`ProxyService`](crate::service::ProxyService) of the same
    /// [`Proxy`]: an extended CONNECT with `:protocol websocket` is bridged to
    /// an HTTP/1.1 upgrade with the proxy's own `Sec-WebSocket-Key` and a
    /// checked `Sec-WebSocket-Accept`, and answered `200`; a plain request is
    /// proxied over HTTP/1.1 (see the [service docs](crate::service) for the
    /// answers to malformed requests).
    ///
    /// What the HTTP/1.1 path gives a connection, an HTTP/2 one gets too:
    ///
    /// - the TLS handshake and the client's connection preface share the
    ///   [handshake timeout](crate::proxy::Timeouts::handshake) from the accept;
    /// - its tunnels run with the proxy's tunnel timeouts and frame tracking,
    ///   listed in the registry as this server's, so that its drain sends them
    ///   Close 1001 over the [drain window](Server::drain_window) and cuts them
    ///   at the deadline;
    /// - when the drain begins the connection gets a GOAWAY (RFC 9113 §6.8:
    ///   no new streams, the open ones run on), and it closes once its streams
    ///   have ended, or at the drain deadline;
    /// - a connection with no stream open for the
    ///   [keep-alive timeout](crate::proxy::Timeouts::keepalive) gets a GOAWAY
    ///   and closes, as an idle HTTP/1.1 keep-alive connection does (nginx
    ///   `keepalive_timeout` covers HTTP/2 connections too);
    /// - it holds one of the [`max_connections`](Server::max_connections)
    ///   slots until it and every tunnel on it have ended, and carries at
    ///   most 128 streams at once (nginx `http2_max_concurrent_streams`);
    ///   while no stream is open on it, it is idle like a keep-alive
    ///   connection between requests, and when the server runs out of slots
    ///   the longest idle one gets a GOAWAY and closes to make room;
    /// - [`on_connection_end`](Server::on_connection_end) and the proxy's hook
    ///   get one report per stream, and the counters count each stream as one
    ///   connection with one request, as for the tower service.
    ///
    /// The TLS configuration offers the protocols (rustls:
    /// `alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()]`), and
    /// the accept reads which one the handshake picked:
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tokio_rustls::{rustls::ServerConfig, TlsAcceptor};
    /// use wsproxy::server::{Negotiated, Server};
    /// use wsproxy::{forward::Scheme, Proxy};
    ///
    /// # async fn run(proxy: Proxy, mut tls: ServerConfig) -> std::io::Result<()> {
    /// tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    /// let acceptor = TlsAcceptor::from(Arc::new(tls));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    /// Server::new(proxy)
    ///     .scheme(Scheme::Https)
    ///     .serve_negotiated(
    ///         listener,
    ///         move |tcp| {
    ///             let accepting = acceptor.accept(tcp);
    ///             async move {
    ///                 let tls = accepting.await?;
    ///                 let protocol = Negotiated::from_alpn(tls.get_ref().1.alpn_protocol());
    ///                 Ok((tls, protocol))
    ///             }
    ///         },
    ///         async {
    ///             let _ = tokio::signal::ctrl_c().await;
    ///         },
    ///     )
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub async fn serve_negotiated<A, Fut, S, F>(
        self,
        listener: TcpListener,
        accept: A,
        shutdown: F,
    ) -> io::Result<DrainReport>
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<(S, Negotiated)>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Future<Output = ()>,
    {
        let accept = move |tcp| {
            let accepting = accept(tcp);
            async move {
                let (stream, protocol) = accepting.await?;
                Ok((stream, protocol == Negotiated::H2))
            }
        };
        self.serve_accepted(listener, accept, std::future::pending(), shutdown)
            .await
    }
}

/// What the streams of one HTTP/2 connection share with the server that
/// accepted it: its tunnels are listed as the server's (`origin`), hold
/// the connection's slot, see its drain, and report to its hook.
#[derive(Clone)]
pub(crate) struct Front {
    origin: u32,
    peer: SocketAddr,
    listener: Listener,
    drain: Drain,
    on_end: Option<ConnectionHook>,
    /// The connection's slot and live-count token, shared by its tunnels:
    /// released when the connection and every tunnel on it have ended.
    keep: Option<Arc<dyn Any + Send + Sync>>,
    /// The connection's open streams, tunnels included.
    streams: Arc<Streams>,
    /// The stream of a WebSocket being handed over to its tunnel (see
    /// [`opening`](Self::opening)).
    opening: Option<Arc<Busy>>,
}

impl Front {
    pub(crate) fn new(
        origin: u32,
        peer: SocketAddr,
        listener: Listener,
        drain: Drain,
        on_end: Option<ConnectionHook>,
    ) -> Self {
        Self {
            origin,
            peer,
            listener,
            drain,
            on_end,
            keep: None,
            streams: Arc::default(),
            opening: None,
        }
    }

    /// A copy for the tunnel of a WebSocket stream, counting that stream
    /// open from now on. hyper drops the stream's answer before the tunnel
    /// starts, on another task: without this the connection would look
    /// idle in between, and could be reclaimed with a WebSocket opening.
    pub(crate) fn opening(&self) -> Self {
        Self {
            opening: Some(Arc::new(self.streams.enter())),
            ..self.clone()
        }
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn listener(&self) -> Listener {
        self.listener
    }

    pub(crate) fn on_end(&self) -> Option<ConnectionHook> {
        self.on_end.clone()
    }

    /// Runs the tunnel of an extended CONNECT stream as one of the server's.
    pub(crate) async fn tunnel<C>(self, pending: PendingUpgrade, client: C)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let Self {
            origin,
            drain,
            keep,
            streams,
            opening,
            ..
        } = self;
        let busy = streams.enter();
        drop(opening);
        // The cut at the drain deadline went through the registry without a
        // tunnel that was still opening: it ends at once.
        let started = |handle: crate::tunnel::TunnelHandle| {
            if drain.phase() == DrainPhase::Cut {
                handle.cut();
            }
        };
        pending.tunnel_as(client, origin, started).await;
        drop((busy, keep));
    }
}

impl fmt::Debug for Front {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Front")
            .field("origin", &self.origin)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Serves one accepted HTTP/2 connection until it ends, or until the drain
/// deadline. `keep` (the connection's slot) is held until the connection
/// and its tunnels have ended.
pub(crate) async fn serve<S, K>(
    proxy: Proxy,
    mut stream: S,
    mut front: Front,
    head_deadline: Instant,
    keep: K,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    K: Send + Sync + 'static,
{
    let peer = front.peer;
    let drain = front.drain.clone();
    // hyper's server has no deadline for the preface: without this a
    // client that completed TLS and sent nothing would hold its slot.
    let mut preface = [0_u8; PREFACE.len()];
    let read = tokio::select! {
        read = timeout_at(head_deadline, stream.read_exact(&mut preface)) => read,
        () = drain.clone().reached(DrainPhase::Draining) => return,
    };
    if !matches!(read, Ok(Ok(_))) || preface != *PREFACE {
        tracing::debug!(client = %peer, "no http/2 preface in time");
        return;
    }
    let keep: Arc<dyn Any + Send + Sync> = Arc::new(keep);
    front.keep = Some(keep.clone());
    let streams = front.streams.clone();
    let idle_timeout = proxy.timeouts().keepalive;
    let service = proxy.service().front(front);
    let counted = streams.clone();
    let service = hyper::service::service_fn(move |request| {
        // Open from the request until hyper drops the answer's body: sent,
        // or the stream reset.
        let busy = counted.enter();
        let mut service = service.clone();
        let answer = tower_service::Service::call(&mut service, request);
        async move {
            let answer = answer.await?;
            Ok::<_, std::convert::Infallible>(answer.map(|body| Counted { body, busy }))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 §3): without it
    // clients never send `:protocol`, and browsers keep their WebSockets
    // on HTTP/1.1 connections of their own.
    builder
        .enable_connect_protocol()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .timer(TokioTimer::new());
    let io = TokioIo::new(Prefixed::new(Bytes::from_static(PREFACE), stream));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut reclaimed = false;
    let ended = tokio::select! {
        // The connection first: a stream whose HEADERS it has read is
        // counted open before a reclaim is looked at.
        biased;
        ended = connection.as_mut() => Some(ended),
        () = drain.clone().reached(DrainPhase::Draining) => None,
        () = streams.idle_after_use(idle_timeout, head_deadline) => {
            tracing::debug!(client = %peer, "idle http/2 connection closed");
            None
        }
        () = streams.reclaimed(&drain) => {
            tracing::debug!(client = %peer, "idle http/2 connection reclaimed");
            reclaimed = true;
            None
        }
    };
    if ended.is_none() {
        // GOAWAY: no new streams; the tunnels on the open ones get their
        // Close 1001 from the server's drain, spread over its window.
        connection.as_mut().graceful_shutdown();
        // h2 closes after the PING that follows its first GOAWAY comes
        // back (RFC 9113 §6.8): a client that never answers would keep
        // the slot a reclaim freed it for.
        let linger = proxy.timeouts().send;
        // Streams the client opened before it read the GOAWAY are still
        // served, and a WebSocket among them holds the slot the reclaim
        // was to free for as long as it runs: the request goes on to the
        // next idle connection.
        let (opened, passing) = (streams.clone(), drain.clone());
        let passed_on = async move {
            if reclaimed {
                opened.opened().await;
                passing.pass_on_reclaim();
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = connection.as_mut() => {}
            () = passed_on => {}
            // At the deadline the tunnels are cut through the registry;
            // the connection closes with them.
            () = drain.reached(DrainPhase::Cut) => {}
            () = streams.idle_for(linger) => {
                tracing::debug!(client = %peer, "http/2 client silent after GOAWAY");
            }
        }
    } else if let Some(Err(e)) = ended {
        tracing::debug!(client = %peer, error = %e, "http/2 connection ended");
    }
    drop(keep);
}

/// The streams open on one connection, for its keep-alive timeout and the
/// server's reclaim of idle connections.
#[derive(Debug, Default)]
struct Streams {
    open: AtomicUsize,
    changed: Notify,
}

/// One open stream; dropping it counts it out.
#[derive(Debug)]
struct Busy(Arc<Streams>);

impl Streams {
    fn enter(self: &Arc<Self>) -> Busy {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// Waits until the number of open streams satisfies `ready`; returns
    /// the wait for the next change, taken before the number was read, so
    /// that a change right after the read is not missed.
    async fn until(&self, ready: impl Fn(usize) -> bool) -> Notified<'_> {
        // Bounded: each turn waits for a change of the open streams.
        loop {
            let changed = self.changed.notified();
            if ready(self.open.load(Ordering::Acquire)) {
                return changed;
            }
            changed.await;
        }
    }

    /// Resolves once a stream is open.
    async fn opened(&self) {
        // The wait for the next change is not needed: dropped.
        drop(self.until(|open| open > 0).await);
    }

    /// Resolves once no stream has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        // Bounded: each turn waits for a change or the timeout.
        loop {
            let changed = self.until(|open| open == 0).await;
            tokio::select! {
                () = sleep(timeout) => {
                    if self.open.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }

    /// Resolves once the connection has been idle for `timeout`; with
    /// keep-alive off (zero), once it has no stream open after its first,
    /// which must open by `head_deadline` (nginx: `client_header_timeout`
    /// before the first stream, `keepalive_timeout` between streams).
    async fn idle_after_use(&self, timeout: Duration, head_deadline: Instant) {
        if !timeout.is_zero() {
            return self.idle_for(timeout).await;
        }
        if timeout_at(head_deadline, self.opened()).await.is_ok() {
            self.idle_for(Duration::ZERO).await;
        }
    }

    /// Counts the connection idle with the server's
    /// [`Reclaim`](crate::proxy::Reclaim) exactly while no stream is open,
    /// as an HTTP/1.1 connection is between requests (nginx counts an
    /// HTTP/2 connection reusable while it processes no stream); resolves
    /// when the server reclaims it with none open.
    async fn reclaimed(&self, drain: &Drain) {
        // Bounded: each turn waits for a change of the open streams or for
        // the server's request.
        loop {
            let changed = self.until(|open| open == 0).await;
            tokio::select! {
                biased;
                // A stream opened: dropping the wait counts it out.
                () = changed => {}
                () = drain.reclaimed() => {
                    if self.open.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    // A stream opened as the request came: the request goes
                    // to the next idle connection, or the server would
                    // wait while one idles.
                    drain.pass_on_reclaim();
                }
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        // Any change restarts the idle wait: idle counts from the last end.
        self.0.changed.notify_waiters();
    }
}

pin_project! {
    /// An answer's body that keeps its stream counted open until hyper
    /// drops it.
    struct Counted<B> {
        #[pin]
        body: B,
        busy: Busy,
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
