//! Entering with a request that another server already parsed (hyper,
//! axum): connect and complete the upstream's upgrade first, then tunnel the
//! client's upgraded stream once the host has sent the 101.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::connect::{connect, may_retry, proxy_header, ConnectError, Tries};
use super::exchange::Exchange;
use super::guard::{Listing, Upgraded};
use super::head_io::{detach, read_head, write_all_timeout, HeadRead, READ_CHUNK};
use super::stream::UpstreamStream;
use super::target::{rewritten_path, routed_origin_form};
use super::{Inner, Listener, Outcome, Proxy};
use crate::balance::Lease;
use crate::forward::{ForwardContext, ForwardError};
use crate::handshake::{self, HandshakeError, RequestKind, ResponseKind};
use crate::route::RouteError;
use crate::tunnel::{Prefixed, TunnelStats};
use tracing::Instrument;

impl Proxy {
    /// Opens the upstream side of a WebSocket upgrade for a request another
    /// server parsed: routes, checks the policy, connects (with retries),
    /// sends the rewritten head and validates the upstream's 101.
    ///
    /// On success, send [`PendingUpgrade::response`] to the client (hyper:
    /// return it from the handler), then pass the upgraded client stream to
    /// [`PendingUpgrade::tunnel`].
    ///
    /// ```
    /// use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
    /// use wsproxy::forward::Scheme;
    /// use wsproxy::Proxy;
    ///
    /// # async fn handler(
    /// #     proxy: Proxy,
    /// #     request: http::Request<()>,
    /// #     client_io: tokio::io::DuplexStream,
    /// # ) -> Result<(), Box<dyn std::error::Error>> {
    /// let peer = "127.0.0.1:50000".parse()?;
    /// match proxy.connect_upgrade(request, peer, Scheme::Http).await {
    ///     Ok(pending) => {
    ///         // hyper: respond with `pending.response()`, then
    ///         // `hyper::upgrade::on(req).await?` gives the client stream.
    ///         let stats = pending.tunnel(client_io).await;
    ///         println!("{} bytes up", stats.client_to_upstream);
    ///     }
    ///     // The upstream's own refusal (a 401, a redirect): relay it whole.
    ///     Err(wsproxy::UpgradeError::NotSwitched(refusal)) => {
    ///         println!("relay {} with {} body bytes", refusal.status(), refusal.body().len());
    ///     }
    ///     Err(e) => println!("answer {}", e.status()),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`UpgradeError`], whose [`status`](UpgradeError::status) is the answer
    /// to give the client; [`UpgradeError::NotSwitched`] carries the
    /// upstream's own answer to relay.
    pub async fn connect_upgrade(
        &self,
        request: Request<()>,
        peer: SocketAddr,
        listener: impl Into<Listener>,
    ) -> Result<PendingUpgrade, UpgradeError> {
        // Counted, traced and reported as a connection that a Server
        // accepted and that carried this one request.
        let exchange = Exchange::begin(self, peer);
        self.connect_upgrade_with(exchange, request, peer, listener.into(), false)
            .await
    }

    /// [`connect_upgrade`](Self::connect_upgrade) for a request whose
    /// [`Exchange`] the caller began (the tower service, which looks at a
    /// request before it knows it is an upgrade): counted there once.
    /// `bridged`: an HTTP/2 extended CONNECT, whose client would take any
    /// 2xx for an open stream, so a 2xx refusal is the proxy's 502.
    pub(crate) async fn connect_upgrade_with(
        &self,
        mut exchange: Exchange,
        request: Request<()>,
        peer: SocketAddr,
        listener: Listener,
        bridged: bool,
    ) -> Result<PendingUpgrade, UpgradeError> {
        let span = exchange.span().clone();
        let opened = self
            .open_upgrade(request, peer, listener, &mut exchange)
            .instrument(span)
            .await;
        match opened {
            Ok(opened) => Ok(PendingUpgrade {
                inner: self.inner(),
                response: opened.response,
                upstream: opened.upstream,
                prefix: opened.prefix,
                lease: opened.lease,
                listing: opened.listing,
                exchange,
            }),
            Err(e) => {
                let (outcome, status) = match &e {
                    UpgradeError::NotSwitched(r) if bridged && r.status().is_success() => {
                        let status = http::StatusCode::BAD_GATEWAY;
                        (Outcome::Rejected(status), status)
                    }
                    // The upstream's own answer, which the host relays.
                    UpgradeError::NotSwitched(_) => (Outcome::UpgradeRefused, e.status()),
                    _ => (Outcome::Rejected(e.status()), e.status()),
                };
                exchange.finish(outcome, Some(status));
                exchange.end();
                Err(e)
            }
        }
    }

    /// The steps of [`connect_upgrade`](Self::connect_upgrade), counted in
    /// `exchange` as the request loop of a served connection counts them.
    async fn open_upgrade(
        &self,
        request: Request<()>,
        peer: SocketAddr,
        listener: Listener,
        exchange: &mut Exchange,
    ) -> Result<Opened, UpgradeError> {
        let inner = &self.inner();
        // The same checks as for a head read from a socket: the request
        // goes through the parser once more rather than a second rule set.
        let mut head = BytesMut::new();
        handshake::write_request_head(&request, &mut head);
        let handshake::Status::Complete(head) = handshake::parse_request(&mut head, &inner.limits)?
        else {
            return Err(UpgradeError::NotUpgrade);
        };
        exchange.request();
        let has_body = head.body_length() != handshake::BodyLength::Fixed(0);
        let (mut request, kind) = head.into_parts();
        if !matches!(kind, RequestKind::WebSocket(_)) {
            return Err(UpgradeError::NotUpgrade);
        }
        // Counted before the body check, as `Server` counts it.
        exchange.handshake();
        // Bytes after an upgrade request are the tunnel's: a body would be
        // read by the upstream as its start (as `Server` refuses it).
        if has_body {
            return Err(UpgradeError::HasBody);
        }
        let client = inner
            .policy
            .resolve_client(peer, request.headers(), listener.scheme);
        let (group, path) = {
            let hit = inner.routes.find_for(&request)?;
            (hit.target().clone(), rewritten_path(hit.path_and_query()))
        };
        exchange.route(&group);
        inner.policy.check(&request, true)?;
        routed_origin_form(&mut request, path).map_err(|()| UpgradeError::NotUpgrade)?;
        // Before the connect, as `Server` takes it: the group counts the
        // upgrade as on its way from here (see `Proxy::reconfigure`).
        let listing = Listing::new(&group, client.ip(), &request);
        // The upstreams that failed this request: the next try picks
        // another (nginx `proxy_next_upstream error timeout`).
        let mut tried = Tries::new(inner);
        // Why the last try failed after its connect, if one did.
        let mut last = None;
        let limits = &inner.limits;
        let (lease, upstream, mut buf, ctx, mut response) = loop {
            let picked = Instant::now().into_std();
            let connected = connect(inner, &group, &client, &request, &mut tried).await;
            let (lease, mut upstream) = match (connected, last) {
                (Ok(pair), _) => pair,
                // Nothing left to pick after a retry: the failure that
                // made it stands, as nginx answers with the last error.
                (Err(ConnectError::Select(_)), Some(status)) => {
                    return Err(UpgradeError::Unreachable(status));
                }
                (Err(e), _) => {
                    tracing::debug!(error = %e, source = ?std::error::Error::source(&e), "no upstream");
                    return Err(e.into());
                }
            };
            exchange.upstream(lease.addr());
            let authority = lease.authority().clone();
            // Its head went through `parse_request` above.
            let ctx = ForwardContext::new(peer, listener.scheme, listener.port, authority)
                .with_websocket(true)
                .with_checked_host();
            // One buffer: the request head goes out of it, the answer comes
            // into it.
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            proxy_header(&group, &client, peer, listener.port, &mut buf);
            // The rewritten head straight from the parsed one, as `Server`
            // writes it. The 101 below still becomes a `Response`: the host
            // sends it with its own server, through `PendingUpgrade::response`.
            inner
                .policy
                .write_request_head(&request, &client, &ctx, &mut buf);
            let written = write_all_timeout(&mut upstream, &buf, inner.timeouts.send).await;
            buf.clear();
            // Interim answers (103 Early Hints) are skipped; bounded like
            // the proxy's own loop.
            let mut answered = Err(StatusCode::BAD_GATEWAY);
            // Whether the next upstream may take the request
            // (`HeadRead::passes_on`).
            let mut retry = true;
            if written.is_ok() {
                for interim in 1..=8 {
                    let deadline = Instant::now() + crate::clock::capped(inner.timeouts.read);
                    let head = read_head(
                        &mut upstream,
                        &mut buf,
                        deadline,
                        handshake::HeadScanner::response(*limits),
                        |b| handshake::parse_response(b, limits),
                    )
                    .await;
                    let head = match head {
                        Ok(head) => head,
                        Err(HeadRead::Timeout) => {
                            answered = Err(StatusCode::GATEWAY_TIMEOUT);
                            break;
                        }
                        Err(e) => {
                            retry = e.passes_on();
                            break;
                        }
                    };
                    lease.report_success(picked);
                    match handshake::classify_response(&kind, &head) {
                        Ok(ResponseKind::Informational) => {
                            // Interim answers without end: invalid too.
                            retry = interim < 8;
                            continue;
                        }
                        Ok(ResponseKind::Switched) => {
                            answered = Ok(head);
                            break;
                        }
                        Ok(_) => {
                            // Relayed as `Server` relays it: a 401's
                            // WWW-Authenticate, a 302's Location, a
                            // Retry-After reach the client.
                            let mut head = head;
                            inner.policy.rewrite_response(&mut head, &client, &ctx);
                            let body = refusal_body(&mut upstream, &mut buf, &head, deadline).await;
                            return Err(UpgradeError::NotSwitched(Box::new(refusal(head, body))));
                        }
                        // An invalid 101 is not held against the upstream:
                        // the client's own request decides whether it fits
                        // (see "Passive health" in the module docs).
                        Err(e) => {
                            tracing::warn!(error = %e, "upstream sent an invalid 101");
                            return Err(UpgradeError::Unreachable(StatusCode::BAD_GATEWAY));
                        }
                    }
                }
            }
            match answered {
                Ok(response) => break (lease, upstream, buf, ctx, response),
                Err(status) => {
                    // Its head not taken, or no answer head in time.
                    lease.report_failure(Instant::now().into_std());
                    tried.failed(lease.id());
                    if !retry || !may_retry(inner, request.method(), false, &tried) {
                        return Err(UpgradeError::Unreachable(status));
                    }
                    last = Some(status);
                }
            }
        };
        inner.policy.rewrite_response(&mut response, &client, &ctx);
        Ok(Opened {
            response,
            upstream,
            prefix: detach(&mut buf),
            lease,
            listing,
        })
    }
}

/// The upstream half of an upgrade that [`Proxy::open_upgrade`] completed.
struct Opened {
    response: Response<()>,
    upstream: UpstreamStream,
    prefix: Bytes,
    lease: Lease,
    listing: Listing,
}

/// An upstream that completed its WebSocket upgrade, waiting for the client
/// side; see [`Proxy::connect_upgrade`].
///
/// Dropped without [`tunnel`](Self::tunnel) (the client's upgrade failed),
/// the request counts as [`Outcome::Abandoned`] and the upstream
/// connection closes.
#[derive(Debug)]
pub struct PendingUpgrade {
    inner: Arc<Inner>,
    response: Response<()>,
    upstream: UpstreamStream,
    prefix: Bytes,
    lease: Lease,
    listing: Listing,
    exchange: Exchange,
}

impl PendingUpgrade {
    /// The rewritten 101 answer to send to the client.
    pub fn response(&self) -> &Response<()> {
        &self.response
    }

    /// The client was sent `status` instead of the 101 (`200` on an
    /// HTTP/2 extended CONNECT, RFC 8441 §5): the report's status.
    #[cfg(feature = "tower")]
    pub(crate) fn answered(&mut self, status: StatusCode) {
        *self.response.status_mut() = status;
    }

    /// Tunnels the client's upgraded stream to the upstream until either
    /// side ends, with the proxy's tunnel timeouts. Bytes the upstream sent
    /// right after its 101 go first.
    ///
    /// The tunnel is accounted for as one a [`Server`](crate::server::Server)
    /// runs: listed in its group's [`TunnelRegistry`](super::TunnelRegistry)
    /// (so that [`Proxy::drain`] and a rebalance reach it), counted open and
    /// its bytes added to the counters while it runs, a `tunnel closed`
    /// event in the request's `conn` span, and the proxy's
    /// [`on_connection_end`](super::ProxyBuilder::on_connection_end) hook
    /// called when it ends.
    pub async fn tunnel<C>(self, client: C) -> TunnelStats
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        self.tunnel_as(client, 0, |_| {}).await
    }

    /// [`tunnel`](Self::tunnel), listed as a server's tunnel (`origin`,
    /// which its drain closes and cuts), with `started` given the tunnel's
    /// handle before it runs.
    pub(crate) async fn tunnel_as<C>(
        self,
        client: C,
        origin: u32,
        started: impl FnOnce(crate::tunnel::TunnelHandle),
    ) -> TunnelStats
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let Self {
            inner,
            response,
            upstream,
            prefix,
            lease,
            listing,
            mut exchange,
        } = self;
        // The host sent the 101: the request is a tunnel from here, as a
        // served connection's is once its 101 is written.
        exchange.finish(Outcome::Tunneled, Some(response.status()));
        let upgraded = Upgraded {
            inner,
            client: Prefixed::new(Bytes::new(), client),
            upstream: Prefixed::new(prefix, upstream),
            lease,
            listing,
            span: exchange.span().clone(),
        };
        let mut running = upgraded.run::<crate::tunnel::Plain>(origin);
        started(running.handle());
        let stats = running.await;
        exchange.end_tunnel(stats)
    }
}

/// Why [`Proxy::connect_upgrade`] opened no tunnel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The request is not a WebSocket upgrade.
    #[error("request is not a websocket upgrade")]
    NotUpgrade,
    /// The request breaks the WebSocket handshake rules.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The upgrade request announces a body (Content-Length or
    /// Transfer-Encoding): 400, as `Server` answers it.
    #[error("websocket upgrade request has a body")]
    HasBody,
    /// No route for the request.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The forwarding policy refused it (Origin).
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// No upstream could be connected (502, or 504 when every connect
    /// timed out); the socket's error is its source.
    #[error("no upstream could be reached")]
    Connect(#[from] ConnectError),
    /// The upstream connected but closed, did not answer in time, or its 101
    /// did not complete the upgrade (502 or 504).
    #[error("upstream unreachable, silent or invalid ({0})")]
    Unreachable(StatusCode),
    /// The upstream answered without switching protocols: its answer,
    /// rewritten as `Server` relays it (hop-by-hop fields stripped,
    /// `proxy_redirect`, CORS), with its body (up to
    /// [`MAX_REFUSAL_BODY`] bytes, else none). A host sends it to the
    /// client as it is.
    #[error("upstream answered {} instead of 101", .0.status())]
    NotSwitched(Box<Response<Bytes>>),
}

/// The most of a refusal's body [`UpgradeError::NotSwitched`] carries: an
/// error page or a login redirect's. A longer one is left out (the head is
/// still relayed), as is one that does not arrive whole within 5 s of its
/// head (or the read timeout, if shorter).
pub const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// How long a refusal's body may take after its head: the refusal is not
/// held up for long by an upstream that stalls in its body.
const REFUSAL_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A refusal with its body; the body's framing is the host's server's to
/// write, so the upstream's is dropped.
fn refusal(head: Response<()>, body: Option<Bytes>) -> Response<Bytes> {
    let mut response = head.map(|()| body.unwrap_or_default());
    let headers = response.headers_mut();
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::TRANSFER_ENCODING);
    response
}

/// Reads the body of a refusal `head` (the bytes after its head start in
/// `buf`), whole, decoded from chunked, by `deadline`: `None` when it is
/// longer than [`MAX_REFUSAL_BODY`], malformed, cut short or late.
async fn refusal_body(
    upstream: &mut UpstreamStream,
    buf: &mut BytesMut,
    head: &Response<()>,
    deadline: Instant,
) -> Option<Bytes> {
    use bytes::Buf;
    use handshake::body::BodyKind;
    use tokio::io::AsyncReadExt;
    let kind = BodyKind::of_response(&http::Method::GET, head.status(), head.headers()).ok()?;
    let reading = async {
        let mut chunked = handshake::ChunkedReframer::new(MAX_REFUSAL_BODY as u64);
        let mut decoded = BytesMut::new();
        loop {
            match kind {
                BodyKind::Empty => return Some(Bytes::new()),
                BodyKind::Length(n) => {
                    let n = usize::try_from(n).ok().filter(|&n| n <= MAX_REFUSAL_BODY)?;
                    if buf.len() >= n {
                        return Some(buf.split_to(n).freeze());
                    }
                }
                BodyKind::Chunked => {
                    while !buf.is_empty() {
                        let step = chunked.reframe(buf).ok()?;
                        decoded.extend_from_slice(buf.get(step.data.clone())?);
                        let (consumed, done) = (step.consumed, step.done);
                        buf.advance(consumed);
                        if done {
                            return Some(decoded.freeze());
                        }
                        if consumed == 0 {
                            break;
                        }
                    }
                }
                _ => {
                    if buf.len() > MAX_REFUSAL_BODY {
                        return None;
                    }
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            if upstream.read_buf(buf).await.ok()? == 0 {
                // The end of a body delimited by the close; any other cut
                // short.
                let until_close = !matches!(kind, BodyKind::Length(_) | BodyKind::Chunked);
                return until_close.then(|| buf.split().freeze());
            }
        }
    };
    let deadline = deadline.min(Instant::now() + REFUSAL_BODY_WAIT);
    let body = tokio::time::timeout_at(deadline, reading)
        .await
        .ok()
        .flatten();
    if body.is_none() {
        tracing::debug!(status = %head.status(), "refusal relayed without its body");
    }
    body
}

impl UpgradeError {
    /// The status to answer the client with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotUpgrade | Self::HasBody => StatusCode::BAD_REQUEST,
            Self::Handshake(e) => e.status(),
            Self::Route(e) => e.status(),
            Self::Forward(e) => e.status(),
            Self::Connect(e) => e.status(),
            Self::Unreachable(status) => *status,
            Self::NotSwitched(response) => response.status(),
        }
    }
}
