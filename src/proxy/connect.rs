//! Connecting to upstreams: the pick-and-connect loop with retries a request
//! goes through, and the one TCP connect it and the health checks share.

use std::io;
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

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
    /// resolve); the last one when several upstreams were tried.
    #[error("connect to upstream {upstream} failed")]
    Io {
        /// The upstream whose connect failed.
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
/// connect (nginx `proxy_next_upstream error timeout`).
///
/// # Errors
///
/// The last I/O error when any try failed that way (502), a timeout when
/// every try timed out (504), or the balancer's refusal when it had nothing
/// to try.
pub(super) async fn connect(
    inner: &Inner,
    group: &UpstreamGroup,
    client: &Client,
    request: &Request<()>,
) -> Result<(Lease, TcpStream), ConnectError> {
    let mut failed: Vec<UpstreamId> = Vec::new();
    // Only the failure path pays for these.
    let mut last_io: Option<(UpstreamAddr, io::Error)> = None;
    let mut last_timeout: Option<UpstreamAddr> = None;
    let mut refused = SelectError::NoneAvailable;
    for _ in 0..inner.max_tries {
        let now = Instant::now().into_std();
        let ctx = PickContext::new(client.ip(), request, now).with_failed(&failed);
        let lease = match pick_or_last_resort(group, &ctx) {
            Ok(lease) => lease,
            Err(e) => {
                refused = e;
                break;
            }
        };
        if !failed.is_empty() {
            // nginx `proxy_next_upstream`: this pick follows a failed connect.
            inner.counters.retry();
        }
        let connecting = connect_addr(lease.addr());
        match timeout(inner.timeouts.connect, connecting).await {
            Ok(Ok(stream)) => {
                lease.report_success();
                // WebSocket messages are latency-sensitive and already
                // batched by their senders.
                let _ = stream.set_nodelay(true);
                if let Some(keepalive) = inner.tcp_keepalive {
                    if let Err(e) = keepalive.apply(&stream) {
                        tracing::debug!(error = %e, "tcp keepalive refused");
                    }
                }
                return Ok((lease, stream));
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
        failed.push(lease.id());
    }
    // One refused connect among timeouts makes it a 502, as before: the
    // upstreams are not merely slow.
    Err(match (last_io, last_timeout) {
        (Some((upstream, source)), _) => ConnectError::Io { upstream, source },
        (None, Some(upstream)) => ConnectError::TimedOut {
            upstream,
            timeout: inner.timeouts.connect,
        },
        (None, None) => ConnectError::Select(refused),
    })
}

/// Connects to `addr`, resolving a host name at connect time; the caller
/// bounds the wait. Shared by requests and the health checks' TCP probe.
pub(crate) async fn connect_addr(addr: &UpstreamAddr) -> io::Result<TcpStream> {
    match addr.as_socket_addr() {
        Some(sa) => TcpStream::connect(sa).await,
        None => TcpStream::connect((addr.host().as_ref(), addr.port())).await,
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::balance::{RoundRobin, Upstream, UpstreamSet};
    use crate::forward::Scheme;
    use crate::Proxy;

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
    }

    /// Tries `set` once per upstream for a plain request from loopback.
    async fn connect_to(set: UpstreamSet) -> Result<(Lease, TcpStream), ConnectError> {
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
        connect(&proxy.inner(), &group, &client, &request).await
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
