//! Connecting to upstreams: the pick-and-connect loop with retries a request
//! goes through, and the one TCP connect it and the health checks share
//! (the dial around it, Unix sockets and TLS, is in `stream.rs`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::stream::UpstreamStream;
use super::{Inner, UpstreamGroup};
use crate::balance::{Lease, PickContext, SelectError, UpstreamAddr, UpstreamId};
use crate::forward::Client;

/// Why a request got no upstream connection: the last failure, by cause.
///
/// The answer is 502, or 504 when every try timed out (nginx
/// `proxy_connect_timeout`); the socket's own error stays reachable through
/// [`source`](std::error::Error::source).
///
/// ```
/// use wsproxy::proxy::ConnectError;
///
/// let refused = ConnectError::Io {
///     upstream: "127.0.0.1:9".parse::<std::net::SocketAddr>()?.into(),
///     source: std::io::ErrorKind::ConnectionRefused.into(),
/// };
/// assert_eq!(refused.status(), http::StatusCode::BAD_GATEWAY);
/// assert!(std::error::Error::source(&refused).is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No upstream could be picked: none is available, or every available
    /// one was tried (nginx "no live upstreams").
    #[error("no upstream to connect to")]
    Select(#[from] SelectError),
    /// A connect failed (refused, unreachable, a name that does not
    /// resolve, a TLS handshake or certificate check that failed); the
    /// last one when several upstreams were tried.
    #[error("connect to upstream {upstream} failed")]
    Io {
        /// The upstream whose connect failed.
        upstream: UpstreamAddr,
        /// The socket's error.
        #[source]
        source: io::Error,
    },
    /// The proxy itself could not open a socket (out of file descriptors,
    /// buffers or local ports): 500, as nginx answers a failed `socket()`.
    /// Not held against the upstream, and no other one is tried.
    #[error("no socket for a connect to upstream {upstream}")]
    Local {
        /// The upstream the connect was for.
        upstream: UpstreamAddr,
        /// The socket's error.
        #[source]
        source: io::Error,
    },
    /// Every connect tried timed out.
    #[error("connect to upstream {upstream} timed out after {timeout:?}")]
    TimedOut {
        /// The last upstream tried.
        upstream: UpstreamAddr,
        /// The connect timeout each try had.
        timeout: Duration,
    },
}

impl ConnectError {
    /// The status to answer the client with: 504 for a timeout, otherwise
    /// 502, as nginx does.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Select(e) => e.status(),
            Self::Io { .. } => StatusCode::BAD_GATEWAY,
            Self::Local { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// Picks among the upstreams passive health lets through, or, when it has
/// tripped them all, among the tripped ones: when every upstream of a group
/// is marked failed nginx still tries one rather than refusing every client
/// until a `fail_timeout` ends.
fn pick_or_last_resort(group: &UpstreamGroup, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
    group
        .balancer()
        .pick(ctx)
        .or_else(|_| group.balancer().pick(&ctx.with_passive_health(false)))
}

/// Picks and connects, trying the next upstream after a refused or timed out
/// connect (nginx `proxy_next_upstream error timeout`), or one the proxy
/// had no local address or port for.
///
/// # Errors
///
/// The last I/O error when any try failed that way (502), a timeout when
/// every try timed out (504), the proxy's own lack of sockets (500), or the
/// balancer's refusal when it had nothing to try.
///
/// `tries` holds the upstreams this request already failed on, which are
/// not picked again and count against its tries; the ones this call fails
/// on are added. It stops when [`Tries::left`] says so.
pub(super) async fn connect(
    inner: &Inner,
    group: &UpstreamGroup,
    client: &Client,
    request: &Request<()>,
    tries: &mut Tries,
) -> Result<(Lease, UpstreamStream), ConnectError> {
    // Only the failure path pays for these.
    let mut last_io: Option<(UpstreamAddr, io::Error)> = None;
    let mut last_timeout: Option<UpstreamAddr> = None;
    let mut last_local: Option<ConnectError> = None;
    let mut refused = SelectError::NoneAvailable;
    while tries.left(inner) {
        let failed = &tries.failed;
        let now = Instant::now().into_std();
        let ctx = PickContext::new(client.ip(), request, now).with_failed(failed);
        let lease = match pick_or_last_resort(group, &ctx) {
            Ok(lease) => lease,
            Err(e) => {
                refused = e;
                break;
            }
        };
        if !failed.is_empty() {
            // A balancer that picks what failed (a host's own, ignoring
            // `PickContext::failed`) would loop as long as tries are left.
            if failed.contains(&lease.id()) {
                break;
            }
            // nginx `proxy_next_upstream`: this pick follows a failed try.
            inner.counters.retry();
        }
        // The TCP (or Unix) connect, then a TLS group's handshake, under
        // one timeout; TCP_NODELAY and keepalive are set in the dial.
        let connecting = group.dial(inner.tcp_keepalive).connect(lease.addr());
        match timeout(inner.timeouts.connect, connecting).await {
            // Not a success for passive health yet: that takes an answer
            // (an upstream can accept connections and never answer).
            Ok(Ok(stream)) => return Ok((lease, stream)),
            Ok(Err(e)) if is_local(&e) => {
                tracing::error!(upstream = ?lease.addr(), error = %e, "no socket for an upstream connect");
                let per_upstream = local_to_upstream(&e);
                let local = ConnectError::Local {
                    upstream: lease.addr().clone(),
                    source: e,
                };
                if !per_upstream {
                    return Err(local);
                }
                // Not the upstream's failure: no mark against it, but
                // another upstream may well be reachable.
                last_local = Some(local);
                tries.failed(lease.id());
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = ?lease.addr(), error = %e, "connect failed");
                last_io = Some((lease.addr().clone(), e));
            }
            Err(_) => {
                tracing::warn!(upstream = ?lease.addr(), "connect timed out");
                last_timeout = Some(lease.addr().clone());
            }
        }
        lease.report_failure(Instant::now().into_std());
        tries.failed(lease.id());
    }
    // One refused connect among timeouts makes it a 502, as before: the
    // upstreams are not merely slow.
    Err(match (last_io, last_timeout) {
        (Some((upstream, source)), _) => ConnectError::Io { upstream, source },
        (None, Some(upstream)) => ConnectError::TimedOut {
            upstream,
            timeout: inner.timeouts.connect,
        },
        (None, None) => last_local.unwrap_or(ConnectError::Select(refused)),
    })
}

/// Whether a request whose upstream failed after the connect (its head
/// not taken, or no valid answer head in time) may go to the next
/// upstream, as nginx's `proxy_next_upstream error timeout` retries: when
/// it is [`repeatable`] and tries are left ([`Tries::left`]).
pub(super) fn may_retry(
    inner: &Inner,
    method: &http::Method,
    has_body: bool,
    tries: &Tries,
) -> bool {
    repeatable(method, has_body) && tries.left(inner)
}

/// Whether a request could go out again: it has no body (none is kept to
/// send again) and its method is not one nginx holds non-idempotent
/// (POST, LOCK, PATCH).
pub(super) fn repeatable(method: &http::Method, has_body: bool) -> bool {
    !has_body && !matches!(method.as_str(), "POST" | "LOCK" | "PATCH")
}

/// One request's tries: the upstreams it failed on, and when the first
/// began, which bound passing it on to the next (nginx
/// `proxy_next_upstream_tries` and `proxy_next_upstream_timeout`).
#[derive(Debug)]
pub(super) struct Tries {
    failed: Vec<UpstreamId>,
    /// Read only under a next-upstream timeout: no clock read otherwise.
    started: Option<Instant>,
}

impl Tries {
    /// A request's tries, before its first.
    pub(super) fn new(inner: &Inner) -> Self {
        let bounded = !inner.timeouts.next_upstream.is_zero();
        Self {
            failed: Vec::new(),
            started: bounded.then(Instant::now),
        }
    }

    /// Counts a try that failed on `id`, which is not picked again.
    pub(super) fn failed(&mut self, id: UpstreamId) {
        self.failed.push(id);
    }

    /// Whether another try may begin: the first always, a next one while
    /// tries and the next-upstream timeout are left.
    pub(super) fn left(&self, inner: &Inner) -> bool {
        if self.failed.is_empty() {
            return true;
        }
        let in_time = self.started.map_or(true, |started| {
            started.elapsed() < inner.timeouts.next_upstream
        });
        self.failed.len() < inner.max_tries && in_time
    }
}

/// Whether a local connect failure ([`is_local`]) concerns only the
/// upstream tried, so that the next one is worth trying: no local port left
/// toward that address, or no source address for its family (an IPv6
/// upstream on a host with IPv6 disabled), both `EADDRNOTAVAIL`. Out of file
/// descriptors or memory, every try would fail alike.
fn local_to_upstream(e: &io::Error) -> bool {
    #[cfg(unix)]
    return e.raw_os_error() == Some(libc::EADDRNOTAVAIL);
    #[cfg(not(unix))]
    return e.kind() == io::ErrorKind::AddrNotAvailable;
}

/// Connects that failed for want of local resources, since start: a health
/// check that fails while this moves proved nothing of its upstream.
static LOCAL_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many connects have failed for want of local resources so far.
pub(crate) fn local_failures() -> u64 {
    LOCAL_FAILURES.load(Ordering::Relaxed)
}

/// Whether a connect's error is the proxy's own lack of resources (file
/// descriptors, socket buffers, memory, local ports) rather than anything
/// the upstream did.
pub(crate) fn is_local(e: &io::Error) -> bool {
    #[cfg(unix)]
    return matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    );
    #[cfg(not(unix))]
    return e.kind() == io::ErrorKind::OutOfMemory;
}

/// Counts `e` in [`local_failures`] if it [`is_local`]: every dial, a
/// request's or a health check's, goes through here.
pub(crate) fn note_local(e: &io::Error) {
    if is_local(e) {
        LOCAL_FAILURES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects to `addr`, resolving a host name at connect time, with
/// `TCP_NODELAY` set; the caller bounds the wait. Shared by requests and the
/// health checks' probes, through the dial (`stream.rs`), which sends a Unix
/// socket path elsewhere.
///
/// WebSocket messages are latency-sensitive and already batched by their
/// senders, and a TLS handshake's flights would wait on Nagle.
pub(crate) async fn connect_addr(addr: &UpstreamAddr) -> io::Result<TcpStream> {
    match addr.as_socket_addr() {
        Some(sa) => connect_tcp(sa).await,
        None => {
            let stream = TcpStream::connect((addr.host().as_ref(), addr.port())).await?;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// A non-blocking connect that returns as soon as the socket is connected,
/// without waiting for the reactor to report it writable first: on loopback
/// (and to any upstream answering within the connect call) the handshake is
/// complete when `connect` returns, so one `getpeername` replaces a trip
/// through the reactor and `getsockopt(SO_ERROR)`, and the request head can
/// go out at once ([`write_head`]), as HAProxy sends it. Otherwise it waits
/// for writability as tokio's own connect does.
#[cfg(unix)]
async fn connect_tcp(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket};
    let socket = Socket::new(
        Domain::for_address(addr),
        stream_type(),
        Some(Protocol::TCP),
    )?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    socket.set_nonblocking(true)?;
    let _ = socket.set_tcp_nodelay(true);
    delay_first_ack(&socket);
    let in_progress = match socket.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(e),
    };
    // A connect still in progress has no peer yet (ENOTCONN).
    let connected = !in_progress || socket.peer_addr().is_ok();
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if !connected {
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        // Writable without an error can still be a reset during the wait.
        stream.peer_addr()?;
    }
    Ok(stream)
}

/// Elsewhere tokio's connect (a pending connect reports differently there).
#[cfg(not(unix))]
async fn connect_tcp(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Delays the ACKs of a fresh upstream connection (`TCP_QUICKACK` off, as
/// HAProxy's `option tcp-smart-connect`): the ACK of the SYN-ACK then rides
/// on the request head, which follows at once, and the ACK of the 101 on
/// the first frame the client sends, two packets fewer per WebSocket. The
/// kernel leaves this mode by itself once a delayed ACK finds nothing to
/// ride on, so an established tunnel acknowledges as any connection does.
#[cfg(unix)]
fn delay_first_ack(socket: &socket2::Socket) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket.set_tcp_quickack(false);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

/// A stream socket created non-blocking where the platform can, saving a
/// `fcntl`.
#[cfg(unix)]
fn stream_type() -> socket2::Type {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return socket2::Type::STREAM.nonblocking();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    socket2::Type::STREAM
}

/// An upstream that reset must not raise SIGPIPE in a host that did not
/// ignore it: std's and tokio's own writes pass the same flag (Apple
/// platforms set `SO_NOSIGPIPE` on the socket instead).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: std::ffi::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: std::ffi::c_int = 0;

/// Writes the request head to a freshly connected upstream: first straight
/// to the socket, since tokio knows nothing of its readiness yet and would
/// wait a turn of the reactor before its first write; then, for what that
/// did not take (a full send buffer, a connect still in progress), through
/// tokio within `limit` as [`write_all_timeout`](super::head_io) does.
///
/// # Errors
///
/// The socket's error, or `TimedOut` when the rest makes no progress for
/// `limit`.
pub(super) async fn write_head(
    stream: &mut UpstreamStream,
    head: &[u8],
    limit: Duration,
) -> io::Result<()> {
    // A TLS or Unix upstream takes the head through tokio.
    let UpstreamStream::Tcp(tcp) = stream else {
        return super::head_io::write_all_timeout(stream, head, limit).await;
    };
    // Bypassing tokio here is sound: tokio clears a readiness only when its
    // own I/O returns WouldBlock, so it will still wait for or use the
    // writability the reactor reports.
    let sent = match socket2::SockRef::from(&*tcp).send_with_flags(head, SEND_FLAGS) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
        Err(e) => return Err(e),
    };
    match head.get(sent..) {
        Some(rest) if !rest.is_empty() => {
            super::head_io::write_all_timeout(stream, rest, limit).await
        }
        _ => Ok(()),
    }
}

/// Appends the PROXY v2 header `group`'s upstreams expect (HAProxy
/// `send-proxy-v2`) to `out`, ahead of the request head, so that both go
/// in one write.
#[cfg(feature = "proxy-protocol")]
pub(super) fn proxy_header(
    group: &UpstreamGroup,
    client: &Client,
    peer: std::net::SocketAddr,
    listener_port: u16,
    out: &mut bytes::BytesMut,
) {
    use crate::proxy_protocol::{client_source, encode_v2, unspecified_like};
    if group.sends_proxy_v2() {
        let source = client_source(client.ip(), peer);
        let mut destination = unspecified_like(source);
        destination.set_port(listener_port);
        out.extend_from_slice(&encode_v2(source, destination));
    }
}

/// Without feature `proxy-protocol` no group sends a PROXY header.
#[cfg(not(feature = "proxy-protocol"))]
pub(super) fn proxy_header(
    _group: &UpstreamGroup,
    _client: &Client,
    _peer: std::net::SocketAddr,
    _listener_port: u16,
    _out: &mut bytes::BytesMut,
) {
}

/// The authority an upstream is addressed by in rewritten requests (the
/// Host nginx sends for `proxy_pass http://$upstream_addr`); `localhost`
/// for a Unix socket, as nginx sends for `proxy_pass http://unix:/path:`.
/// A lease carries it ready-made ([`Lease::authority`]).
pub(super) fn authority_of(addr: &UpstreamAddr) -> http::uri::Authority {
    addr.authority()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::balance::{RoundRobin, Upstream, UpstreamSet};
    use crate::forward::Scheme;
    use crate::Proxy;

    #[cfg(unix)]
    #[test]
    fn only_an_address_not_available_is_worth_another_upstream() {
        let os = io::Error::from_raw_os_error;
        assert!(is_local(&os(libc::EADDRNOTAVAIL)));
        assert!(local_to_upstream(&os(libc::EADDRNOTAVAIL)));
        for no_resources in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_local(&os(no_resources)));
            assert!(!local_to_upstream(&os(no_resources)));
        }
    }

    #[test]
    fn authority_is_the_upstream_address_as_printed() {
        let v4 = UpstreamAddr::from(SocketAddr::from(([127, 0, 0, 1], 9001)));
        let v6 = UpstreamAddr::from(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9002)));
        let name = UpstreamAddr::name("localhost", 9003);
        assert_eq!(v4.authority().as_str(), "127.0.0.1:9001");
        assert_eq!(v6.authority().as_str(), "[::1]:9002");
        assert_eq!(name.authority().as_str(), "localhost:9003");
        // A name no authority can hold falls back.
        let bad = UpstreamAddr::name("bad host", 1);
        assert_eq!(bad.authority().as_str(), "upstream");
        let unix = UpstreamAddr::unix("/run/app.sock");
        assert_eq!(authority_of(&unix).as_str(), "localhost");
    }

    /// Tries `set` once per upstream for a plain request from loopback.
    async fn connect_to(set: UpstreamSet) -> Result<(Lease, UpstreamStream), ConnectError> {
        let proxy = Proxy::builder()
            .upstream(RoundRobin::new(set))
            .build()
            .unwrap();
        let group = proxy.groups().remove(0);
        let request = Request::get("/").body(()).unwrap();
        let peer = SocketAddr::from(([127, 0, 0, 1], 50000));
        let client = proxy
            .inner()
            .policy
            .resolve_client(peer, request.headers(), Scheme::Http);
        let inner = proxy.inner();
        connect(&inner, &group, &client, &request, &mut Tries::new(&inner)).await
    }

    /// `proxy_next_upstream_tries` and `proxy_next_upstream_timeout`: the
    /// first try always, a next one while both allow.
    #[tokio::test(start_paused = true)]
    async fn tries_end_at_the_count_or_the_next_upstream_timeout() {
        let proxy = |tries, bound| {
            let set: UpstreamSet = [Upstream::new(SocketAddr::from(([127, 0, 0, 1], 9)))]
                .into_iter()
                .collect();
            Proxy::builder()
                .upstream(RoundRobin::new(set))
                .max_tries(tries)
                .next_upstream_timeout(bound)
                .build()
                .unwrap()
        };
        let unbounded = proxy(2, Duration::ZERO);
        let inner = unbounded.inner();
        let mut tries = Tries::new(&inner);
        assert!(tries.started.is_none(), "no clock read without a bound");
        assert!(tries.left(&inner));
        tries.failed(UpstreamId::fresh());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(tries.left(&inner));
        tries.failed(UpstreamId::fresh());
        assert!(!tries.left(&inner), "two tries of two");

        let bounded = proxy(usize::MAX, Duration::from_secs(3));
        let inner = bounded.inner();
        let mut tries = Tries::new(&inner);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(tries.left(&inner), "the first try begins whatever the time");
        tries.failed(UpstreamId::fresh());
        assert!(!tries.left(&inner));
        let mut tries = Tries::new(&inner);
        tries.failed(UpstreamId::fresh());
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(tries.left(&inner));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!tries.left(&inner));
    }

    #[tokio::test]
    async fn a_refused_connect_keeps_its_io_error_as_the_source() {
        // A port nothing listens on: the connect is refused at once.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let set: UpstreamSet = [Upstream::new(dead)].into_iter().collect();
        let err = connect_to(set).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        let ConnectError::Io { upstream, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(upstream.as_socket_addr(), Some(dead));
        let source = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .unwrap();
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_head_written_right_after_connect_arrives_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = UpstreamAddr::from(listener.local_addr().unwrap());
        let mut stream = UpstreamStream::Tcp(connect_addr(&addr).await.unwrap());
        // Larger than any socket buffer: the rest goes through tokio.
        let head: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut accepted, &mut got)
                .await
                .unwrap();
            got
        });
        write_head(&mut stream, &head, Duration::from_secs(10))
            .await
            .unwrap();
        drop(stream);
        let got = timeout(Duration::from_secs(10), reading)
            .await
            .unwrap()
            .unwrap();
        assert!(got == head, "{} of {} bytes", got.len(), head.len());
    }

    #[tokio::test]
    async fn an_upstream_socket_has_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = UpstreamAddr::from(listener.local_addr().unwrap());
        let stream = connect_addr(&addr).await.unwrap();
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn an_empty_group_is_a_selection_error() {
        let err = connect_to(UpstreamSet::default()).await.unwrap_err();
        assert!(matches!(
            err,
            ConnectError::Select(SelectError::NoneAvailable)
        ));
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert!(std::error::Error::source(&err).is_some());
    }
}
