//! Serving one client connection: the request loop, upstream connect with
//! retries, the upgrade decision and plain HTTP relaying.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, EXPECT, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{field, Instrument};

use super::registry::{Listed, Registered, TunnelRegistry};
use super::{ConnectionReport, Drain, Inner, Listener, Outcome, Phase, UpstreamGroup};
use crate::balance::{Affinity, Lease, PickContext, UpstreamAddr, UpstreamId};
use crate::body::{BodyError, BodyKind, BodyScanner};
use crate::forward::{Client, ForwardContext};
use crate::handshake::{
    self, ChunkedReframer, RequestBodyError, RequestKind, ResponseKind, Status,
};
use crate::tunnel::{tunnel, Prefixed, Tunnel, TunnelHandle, TunnelStats};

/// Room reserved in a read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// How long, and how much, a refused client's input is drained before the
/// connection closes (nginx `lingering_time` is 30 s; `lingering_timeout` 5 s).
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 1 << 20;

/// What to do after one request.
enum Next {
    KeepAlive,
    Close,
    /// The upstream switched protocols and the 101 went out: tunnel.
    Tunnel(Switched),
}

/// One open tunnel, its registry entry and its lease: counted as open and
/// listed until dropped, so that a tunnel whose future is cancelled (a
/// host's timeout, an aborted task) is still counted out, and the lease
/// released after that.
pub(super) struct OpenTunnel {
    inner: Arc<Inner>,
    // Dropped before the lease: a listed tunnel always holds its lease.
    _registered: Option<Registered>,
    lease: Lease,
}

impl OpenTunnel {
    pub(super) fn new(inner: Arc<Inner>, lease: Lease, registered: Option<Registered>) -> Self {
        inner.counters.tunnel_started(lease.addr());
        Self {
            inner,
            _registered: registered,
            lease,
        }
    }

    /// Adds a finished tunnel's bytes to the totals.
    pub(super) fn bytes(&self, from_client: u64, from_upstream: u64) {
        self.inner.counters.bytes(from_client, from_upstream);
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.inner.counters.tunnel_ended(self.lease.addr());
    }
}

/// The upstream half of a completed upgrade.
struct Switched {
    upstream: TcpStream,
    upstream_prefix: Bytes,
    lease: Lease,
    listing: Listing,
}

/// Where an upgraded connection's tunnel is listed, as whose, and with
/// what affinity (for a rebalance to know where its key goes now).
#[derive(Debug)]
pub(crate) struct Listing {
    registry: Arc<TunnelRegistry>,
    client: IpAddr,
    affinity: Option<Affinity>,
}

impl Listing {
    /// The listing of `request`, placed by `group`'s balancer for `client`.
    pub(crate) fn new(group: &UpstreamGroup, client: IpAddr, request: &Request<()>) -> Self {
        let ctx = PickContext::new(client, request, Instant::now().into_std());
        Self {
            registry: group.tunnels.clone(),
            client,
            affinity: group.balancer().affinity(&ctx),
        }
    }

    /// Lists the tunnel `handle` controls, running to the lease's upstream.
    pub(crate) fn register(self, lease: &Lease, handle: TunnelHandle, origin: u32) -> Registered {
        Registered::new(
            self.registry,
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

/// A connection whose upgrade completed, ready to tunnel. It owns only what
/// the tunnel needs, so a server can run it as its own small task and let the
/// connection's larger handshake state go (the idle-memory budget).
pub(crate) struct Upgraded<S> {
    inner: Arc<Inner>,
    client: Prefixed<S>,
    upstream: Prefixed<TcpStream>,
    lease: Lease,
    listing: Listing,
    span: tracing::Span,
}

impl<S> Upgraded<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The tunnel, ready to run until it ends and account for it, listed
    /// as `origin`'s (a [`Server`](crate::server::Server)'s own tunnels;
    /// 0 for none).
    pub(crate) fn run(self, origin: u32) -> Running<S, ()> {
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
    pub(crate) fn run_holding<K>(self, keep: K, origin: u32) -> Running<S, K> {
        let Self {
            inner,
            client,
            upstream,
            lease,
            listing,
            span,
        } = self;
        let mut relay = tunnel(client, upstream, &inner.tunnel, std::future::pending());
        let registered = listing.register(&lease, relay.handle(), origin);
        Running {
            relay,
            open: Some(OpenTunnel::new(inner, lease, Some(registered))),
            // Without a subscriber that wants it, the span is 40 bytes of
            // nothing in every idle tunnel.
            span: (!span.is_disabled()).then(|| Box::new(span)),
            keep: Some(keep),
        }
    }
}

pin_project! {
    /// A running tunnel; see [`Upgraded::run`].
    pub(crate) struct Running<S, K> {
        #[pin]
        relay: Tunnel<Prefixed<S>, Prefixed<TcpStream>, std::future::Pending<()>>,
        // Dropped when the tunnel ends, or with the future if it is
        // cancelled: either way the tunnel is counted out.
        open: Option<OpenTunnel>,
        span: Option<Box<tracing::Span>>,
        keep: Option<K>,
    }
}

impl<S, K> Running<S, K> {
    /// The handle of the tunnel, before it is polled.
    pub(crate) fn handle(&mut self) -> TunnelHandle {
        self.relay.handle()
    }
}

impl<S, K> Future for Running<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Output = TunnelStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        let this = self.project();
        let stats = ready!(this.relay.poll(cx));
        if let Some(open) = this.open.take() {
            open.bytes(stats.client_to_upstream, stats.upstream_to_client);
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

/// Serves requests until the connection closes or upgrades; an upgraded
/// connection comes back to the caller to tunnel.
pub(super) async fn serve<S>(
    inner: &Arc<Inner>,
    io: S,
    peer: SocketAddr,
    listener: Listener,
    drain: Drain,
) -> (ConnectionReport, Option<Upgraded<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    inner.counters.connection();
    let span = tracing::info_span!(
        "conn",
        client = %peer,
        route = field::Empty,
        upstream = field::Empty,
        outcome = field::Empty,
        from_client = field::Empty,
        from_upstream = field::Empty,
    );
    let conn = Conn {
        inner,
        io,
        span: span.clone(),
        buf: BytesMut::new(),
        peer,
        listener,
        drain,
        report: ConnectionReport::default(),
        linger: false,
    };
    conn.run().instrument(span).await
}

struct Conn<'a, S> {
    inner: &'a Arc<Inner>,
    io: S,
    span: tracing::Span,
    /// Client bytes read but not yet used: the rest of a head, a body's
    /// start, a pipelined request or the first WebSocket frames.
    buf: BytesMut,
    peer: SocketAddr,
    listener: Listener,
    drain: Drain,
    report: ConnectionReport,
    /// The client may still be sending what the proxy will not read (a
    /// refused request's body): close without resetting the answer away.
    linger: bool,
}

/// Why a head could not be read.
pub(super) enum HeadRead<E> {
    /// The peer closed; `partial` when it had sent part of a head.
    Eof {
        partial: bool,
    },
    Timeout,
    Io(io::Error),
    Parse(E),
}

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(mut self) -> (ConnectionReport, Option<Upgraded<S>>) {
        let switched = loop {
            if self.report.requests > 0 && self.buf.is_empty() && !self.await_next_request().await {
                break None;
            }
            let limits = &self.inner.limits;
            let deadline = Instant::now() + self.inner.timeouts.handshake;
            let head = read_head(
                &mut self.io,
                &mut self.buf,
                deadline,
                limits.max_head_bytes(),
                |b| handshake::parse_request(b, limits),
            )
            .await;
            let head = match head {
                Ok(head) => head,
                Err(HeadRead::Eof { partial: false }) if self.report.requests > 0 => break None,
                Err(HeadRead::Eof { .. }) => {
                    self.finish(Outcome::Abandoned);
                    break None;
                }
                Err(HeadRead::Io(e)) => {
                    tracing::debug!(error = %e, "client read failed");
                    self.finish(Outcome::Abandoned);
                    break None;
                }
                Err(HeadRead::Timeout) => {
                    // nginx answers 408 when `client_header_timeout` expires;
                    // a client that stopped reading is not waited for.
                    self.reject(StatusCode::REQUEST_TIMEOUT, "request head timed out", None)
                        .await;
                    break None;
                }
                Err(HeadRead::Parse(e)) => {
                    let extra = (e.status() == StatusCode::UPGRADE_REQUIRED).then_some((
                        http::header::SEC_WEBSOCKET_VERSION,
                        HeaderValue::from_static("13"),
                    ));
                    self.reject(e.status(), &e.to_string(), extra).await;
                    break None;
                }
            };
            self.report.requests += 1;
            // The report describes the last request: nothing of an earlier
            // one may leak into it.
            self.report.route = None;
            self.report.upstream = None;
            self.report.status = None;
            self.inner.counters.request();
            match self.handle(head).await {
                Next::KeepAlive => continue,
                Next::Close => break None,
                Next::Tunnel(switched) => break Some(switched),
            }
        };
        let Some(switched) = switched else {
            self.close().await;
            return (self.report, None);
        };
        self.finish(Outcome::Tunneled);
        // Whatever the client sent after its head waited in `buf` until the
        // 101 was checked: only now may it reach the upstream.
        let upgraded = Upgraded {
            inner: self.inner.clone(),
            client: Prefixed::new(detach(&mut self.buf), self.io),
            upstream: Prefixed::new(switched.upstream_prefix, switched.upstream),
            lease: switched.lease,
            listing: switched.listing,
            span: self.span,
        };
        (self.report, Some(upgraded))
    }

    /// Waits for the first byte of a keep-alive connection's next request.
    /// False when the connection should close instead.
    async fn await_next_request(&mut self) -> bool {
        if self.drain.phase() != Phase::Running {
            return false;
        }
        self.buf.reserve(READ_CHUNK);
        let read = timeout(
            self.inner.timeouts.keepalive,
            self.io.read_buf(&mut self.buf),
        );
        tokio::select! {
            got = read => matches!(got, Ok(Ok(n)) if n > 0),
            () = self.drain.clone().reached(Phase::Draining) => false,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.report.outcome = Some(outcome);
        self.inner.counters.outcome(outcome);
        tracing::Span::current().record("outcome", field::debug(outcome));
    }

    /// Answers with an error status the proxy makes itself and closes.
    async fn reject(
        &mut self,
        status: StatusCode,
        message: &str,
        extra: Option<(http::HeaderName, HeaderValue)>,
    ) -> Next {
        tracing::debug!(%status, message, "rejected");
        let mut answer = handshake::error_response(status, message);
        if let Some((name, value)) = extra {
            answer.headers_mut().insert(name, value);
        }
        let mut out = BytesMut::new();
        handshake::write_response_head(&answer, &mut out);
        out.extend_from_slice(answer.body());
        let _ = write_all_timeout(&mut self.io, &out, self.inner.timeouts.send).await;
        self.report.status = Some(status);
        self.finish(Outcome::Rejected(status));
        self.linger = true;
        Next::Close
    }

    /// Closes the client connection. After a refusal, what the client still
    /// sends is read and dropped for a while first (nginx `lingering_close`):
    /// closing a socket with unread input sends a reset, which can destroy
    /// the answer before the client reads it.
    async fn close(&mut self) {
        let _ = timeout(self.inner.timeouts.send, self.io.shutdown()).await;
        if !self.linger {
            return;
        }
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        let drain = async {
            while left > 0 {
                match self.io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = timeout(LINGER_TIME, drain).await;
    }

    async fn handle(&mut self, head: handshake::RequestHead) -> Next {
        let inner = self.inner;
        let body = BodyKind::from(head.body_length());
        let (mut request, kind) = head.into_parts();
        let websocket = matches!(kind, RequestKind::WebSocket(_));
        if websocket {
            inner.counters.handshake();
        }
        let client =
            inner
                .policy
                .resolve_client(self.peer, request.headers(), self.listener.scheme);

        let (group, path) = match inner.routes.find_for(&request) {
            Ok(hit) => (hit.target().clone(), hit.path_and_query().into_owned()),
            Err(e) => return self.reject(e.status(), &e.to_string(), None).await,
        };
        tracing::Span::current().record("route", group.name());
        self.report.route = Some(group.name.clone());

        // nginx refuses a declared length over `client_max_body_size` before
        // reading any of the body (and before `100 Continue`); a chunked
        // body is measured as its chunk sizes arrive, in `send_body`.
        let limit = inner.client_max_body_size;
        if matches!(body, BodyKind::Length(n) if limit != 0 && n > limit) {
            let e = RequestBodyError::TooLarge { limit };
            return self.reject(e.status(), &e.to_string(), None).await;
        }

        if let Err(e) = inner.policy.check(&request, websocket) {
            return self.reject(e.status(), &e.to_string(), None).await;
        }
        let client_keeps_alive = keeps_alive(&request);
        if let Some(preflight) = inner.policy.preflight(&request) {
            return self
                .answer_preflight(preflight, body, client_keeps_alive)
                .await;
        }
        if websocket && body != BodyKind::Empty {
            // Bytes after an upgrade request are the tunnel's; a body would
            // be ambiguous with them.
            let message = "websocket upgrade request has a body";
            return self.reject(StatusCode::BAD_REQUEST, message, None).await;
        }
        let http10 = request.version() == Version::HTTP_10;
        let expects_continue = body != BodyKind::Empty && expects_continue(&request);
        let method = request.method().clone();
        if to_origin_form(&mut request, &path).is_err() {
            return self
                .reject(StatusCode::BAD_REQUEST, "invalid request path", None)
                .await;
        }

        let (lease, mut upstream) = match connect(inner, &group, &client, &request).await {
            Ok(pair) => pair,
            Err(status) => {
                return self
                    .reject(status, "no upstream could be reached", None)
                    .await
            }
        };
        // Taken from the request the balancer placed, before the rewrite;
        // only an upgrade can become a tunnel to list.
        let listing = websocket.then(|| Listing::new(&group, client.ip(), &request));
        let authority = authority_of(lease.addr());
        tracing::Span::current().record("upstream", field::display(&authority));
        self.report.upstream = Some(lease.addr().clone());
        let ctx = ForwardContext::new(
            self.peer,
            self.listener.scheme,
            self.listener.port,
            authority,
        )
        .with_websocket(websocket);
        // The policy keeps Content-Length and Transfer-Encoding: a
        // Content-Length body goes through untouched, a chunked one (whose
        // Transfer-Encoding is exactly `chunked`) re-framed by the proxy.
        inner.policy.rewrite_request(&mut request, &client, &ctx);
        if http10 {
            // An upstream never answers an HTTP/1.0 request chunked (RFC 9112
            // §6.1), and chunked is the one framing a 1.0 client cannot read.
            *request.version_mut() = Version::HTTP_10;
        }
        if expects_continue {
            // The proxy answers the expectation itself, as nginx does.
            request.headers_mut().remove(EXPECT);
        }

        let mut head_bytes = BytesMut::new();
        handshake::write_request_head(&request, &mut head_bytes);
        if write_all_timeout(&mut upstream, &head_bytes, inner.timeouts.send)
            .await
            .is_err()
        {
            lease.report_failure(Instant::now().into_std());
            return self
                .reject(StatusCode::BAD_GATEWAY, "upstream closed", None)
                .await;
        }

        let mut up_buf = BytesMut::new();
        let mut early = None;
        let mut body_cut = false;
        if body != BodyKind::Empty {
            if expects_continue
                && write_all_timeout(&mut self.io, CONTINUE, inner.timeouts.send)
                    .await
                    .is_err()
            {
                self.finish(Outcome::Abandoned);
                return Next::Close;
            }
            match self.send_body(&mut upstream, &mut up_buf, body).await {
                BodySent::Whole(n) => {
                    inner.counters.bytes(n, 0);
                    self.report.body_from_client += n;
                }
                BodySent::EarlyAnswer(response) => {
                    early = Some(response);
                    body_cut = true;
                }
                BodySent::Framing(e) => return self.reject(e.status(), &e.to_string(), None).await,
                BodySent::Refused(e) => return self.reject(e.status(), &e.to_string(), None).await,
                BodySent::ClientGone => {
                    self.finish(Outcome::Abandoned);
                    return Next::Close;
                }
                // The upstream may have answered before it stopped reading
                // (413): what it sent is still read below.
                BodySent::UpstreamGone => body_cut = true,
            }
        }

        if body_cut {
            // The client's body was cut short: the connection cannot carry
            // another request, and closing must not reset the answer away.
            self.linger = true;
        }
        let response = match early {
            Some(response) => response,
            None => match self.read_answer(&mut upstream, &mut up_buf, http10).await {
                Ok(response) => response,
                Err(status) => {
                    lease.report_failure(Instant::now().into_std());
                    return self
                        .reject(status, "upstream sent no valid answer", None)
                        .await;
                }
            },
        };

        // A 101 classifies as Switched only for a WebSocket request, which
        // always has its listing.
        match (handshake::classify_response(&kind, &response), listing) {
            (Ok(ResponseKind::Switched), Some(listing)) => {
                let mut response = response;
                inner.policy.rewrite_response(&mut response, &client, &ctx);
                return self
                    .switch(response, upstream, detach(&mut up_buf), lease, listing)
                    .await;
            }
            (Ok(_), _) => {}
            (Err(e), _) => {
                tracing::warn!(error = %e, "upstream sent an invalid 101");
                lease.report_failure(Instant::now().into_std());
                return self
                    .reject(StatusCode::BAD_GATEWAY, &e.to_string(), None)
                    .await;
            }
        }

        let outcome = if websocket {
            Outcome::UpgradeRefused
        } else {
            Outcome::Proxied
        };
        let keep_alive = !body_cut && self.may_keep_alive(client_keeps_alive);
        let mut response = response;
        inner.policy.rewrite_response(&mut response, &client, &ctx);
        self.relay(response, &method, upstream, up_buf, keep_alive, outcome)
            .await
    }

    /// Whether the connection may carry another request after this one.
    fn may_keep_alive(&self, client_keeps_alive: bool) -> bool {
        client_keeps_alive
            && self.report.requests < self.inner.keepalive_requests
            && self.drain.phase() == Phase::Running
    }

    /// Streams the request body upstream while listening for an answer: an
    /// upstream may answer before it has read the body (413, 401), and that
    /// answer must reach the client rather than a reset.
    async fn send_body(
        &mut self,
        upstream: &mut TcpStream,
        up_buf: &mut BytesMut,
        body: BodyKind,
    ) -> BodySent {
        let inner = self.inner;
        let limits = &inner.limits;
        let (mut up_read, mut up_write) = upstream.split();
        let send = copy_body(
            &mut self.io,
            &mut up_write,
            &mut self.buf,
            BodyWalk::request(body, inner.client_max_body_size),
            inner.timeouts.handshake,
            inner.timeouts.send,
        );
        // Interim answers are dropped here: the proxy answered any
        // `Expect: 100-continue` itself.
        let listen = async {
            loop {
                // No deadline of its own: the body's timeouts bound this.
                match read_head_unbounded(&mut up_read, up_buf, limits.max_head_bytes(), |b| {
                    handshake::parse_response(b, limits)
                })
                .await
                {
                    Ok(r) if r.status().is_informational() => continue,
                    Ok(r) => return Some(r),
                    Err(_) => return None,
                }
            }
        };
        tokio::pin!(send, listen);
        let mut listening = true;
        loop {
            tokio::select! {
                biased;
                answer = &mut listen, if listening => match answer {
                    Some(response) => return BodySent::EarlyAnswer(response),
                    // A read error or close: the send side will see it too.
                    None => listening = false,
                },
                sent = &mut send => return match sent {
                    Ok(n) => BodySent::Whole(n),
                    Err(CopyError::Framing(e)) => BodySent::Framing(e),
                    Err(CopyError::Refused(e)) => BodySent::Refused(e),
                    Err(CopyError::Read) => BodySent::ClientGone,
                    Err(CopyError::Write) => BodySent::UpstreamGone,
                },
            }
        }
    }

    async fn answer_preflight(
        &mut self,
        mut preflight: Response<()>,
        body: BodyKind,
        client_keeps_alive: bool,
    ) -> Next {
        if preflight.status() != StatusCode::NO_CONTENT {
            let status = preflight.status();
            return self
                .reject(status, "origin not allowed by cors", None)
                .await;
        }
        if body != BodyKind::Empty {
            // A preflight has no body (Fetch standard); one that claims a
            // body is refused rather than its body read as the next request.
            let message = "cors preflight request has a body";
            return self.reject(StatusCode::BAD_REQUEST, message, None).await;
        }
        let keep_alive = self.may_keep_alive(client_keeps_alive);
        if !keep_alive {
            preflight
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let mut out = BytesMut::new();
        handshake::write_response_head(&preflight, &mut out);
        if write_all_timeout(&mut self.io, &out, self.inner.timeouts.send)
            .await
            .is_err()
        {
            return Next::Close;
        }
        self.report.status = Some(preflight.status());
        self.finish(Outcome::Preflight);
        if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Reads the upstream's final answer head, relaying interim 1xx answers
    /// (other than 101) to the client as they come.
    async fn read_answer(
        &mut self,
        upstream: &mut TcpStream,
        up_buf: &mut BytesMut,
        http10: bool,
    ) -> Result<Response<()>, StatusCode> {
        let limits = &self.inner.limits;
        // Bounded: a 1xx flood is still limited by the read timeout per head
        // and by this count.
        for _ in 0..8 {
            let deadline = Instant::now() + self.inner.timeouts.read;
            let head = read_head(upstream, up_buf, deadline, limits.max_head_bytes(), |b| {
                handshake::parse_response(b, limits)
            })
            .await;
            let response = match head {
                Ok(response) => response,
                Err(HeadRead::Timeout) => return Err(StatusCode::GATEWAY_TIMEOUT),
                Err(_) => return Err(StatusCode::BAD_GATEWAY),
            };
            let status = response.status();
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                // HTTP/1.0 clients cannot take interim answers (RFC 9110
                // §15.2).
                if http10 {
                    continue;
                }
                let mut out = BytesMut::new();
                handshake::write_response_head(&response, &mut out);
                write_all_timeout(&mut self.io, &out, self.inner.timeouts.send)
                    .await
                    .map_err(|_| StatusCode::BAD_GATEWAY)?;
                continue;
            }
            return Ok(response);
        }
        Err(StatusCode::BAD_GATEWAY)
    }

    /// Sends the 101; the caller then tunnels.
    async fn switch(
        &mut self,
        response: Response<()>,
        upstream: TcpStream,
        upstream_prefix: Bytes,
        lease: Lease,
        listing: Listing,
    ) -> Next {
        let mut out = BytesMut::new();
        handshake::write_response_head(&response, &mut out);
        if write_all_timeout(&mut self.io, &out, self.inner.timeouts.send)
            .await
            .is_err()
        {
            self.finish(Outcome::Abandoned);
            return Next::Close;
        }
        self.report.status = Some(response.status());
        Next::Tunnel(Switched {
            upstream,
            upstream_prefix,
            lease,
            listing,
        })
    }

    /// Relays a plain answer and its body to the client.
    async fn relay(
        &mut self,
        mut response: Response<()>,
        method: &Method,
        mut upstream: TcpStream,
        mut up_buf: BytesMut,
        keep_alive: bool,
        outcome: Outcome,
    ) -> Next {
        let inner = self.inner;
        let body = match BodyKind::of_response(method, response.status(), response.headers()) {
            Ok(kind) => kind,
            Err(_) => {
                return self
                    .reject(
                        StatusCode::BAD_GATEWAY,
                        "upstream answer has invalid framing",
                        None,
                    )
                    .await
            }
        };
        let keep_alive = keep_alive && body != BodyKind::UntilClose;
        // The policy marks plain answers `Connection: close`, which is
        // right toward the one-request upstream connection; toward the
        // client, keep-alive is decided here.
        let headers = response.headers_mut();
        if keep_alive {
            headers.remove(CONNECTION);
        } else {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let mut out = BytesMut::new();
        handshake::write_response_head(&response, &mut out);
        if write_all_timeout(&mut self.io, &out, inner.timeouts.send)
            .await
            .is_err()
        {
            self.finish(Outcome::Abandoned);
            return Next::Close;
        }
        self.report.status = Some(response.status());
        // An answer's body goes through as the upstream framed it, only
        // scanned for its end: the upstream is trusted more than the client
        // (the operator chose it), and the client's parser is not one the
        // proxy shields others from.
        let copied = copy_body(
            &mut upstream,
            &mut self.io,
            &mut up_buf,
            BodyWalk::Scan(BodyScanner::new(body)),
            inner.timeouts.read,
            inner.timeouts.send,
        )
        .await;
        match copied {
            Ok(n) => {
                inner.counters.bytes(0, n);
                self.report.body_from_upstream += n;
                self.finish(outcome);
                if keep_alive {
                    Next::KeepAlive
                } else {
                    Next::Close
                }
            }
            // The head is out: the only honest signal left is closing.
            Err(CopyError::Write) => {
                self.finish(Outcome::Abandoned);
                Next::Close
            }
            Err(_) => {
                self.finish(Outcome::UpstreamFailed);
                Next::Close
            }
        }
    }
}

/// The bytes read past a head, copied out of the read buffer for the
/// tunnel. `split().freeze()` would share the buffer instead, and an idle
/// tunnel would keep the whole handshake buffer (8 KiB reserved, a page or
/// more resident) alive for as long as it runs, even with nothing left to
/// replay.
pub(super) fn detach(buf: &mut BytesMut) -> Bytes {
    let bytes = if buf.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(buf)
    };
    buf.clear();
    bytes
}

/// True when the client allows another request on this connection.
fn keeps_alive<B>(request: &Request<B>) -> bool {
    let listed = |token: &str| {
        request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match request.version() {
        Version::HTTP_11 => !listed("close"),
        _ => false,
    }
}

pub(super) fn authority_of(addr: &UpstreamAddr) -> http::uri::Authority {
    // The address prints as `ip:port`, `[ipv6]:port` or `host:port`.
    addr.to_string()
        .parse()
        .unwrap_or_else(|_| http::uri::Authority::from_static("upstream"))
}

/// Picks and connects, trying the next upstream after a refused or timed out
/// connect (nginx `proxy_next_upstream error timeout`).
///
/// The error is 504 when every try timed out, otherwise 502.
pub(super) async fn connect(
    inner: &Inner,
    group: &UpstreamGroup,
    client: &Client,
    request: &Request<()>,
) -> Result<(Lease, TcpStream), StatusCode> {
    let mut failed: Vec<UpstreamId> = Vec::new();
    let mut only_timeouts = true;
    for _ in 0..inner.max_tries {
        let now = Instant::now().into_std();
        let ctx = PickContext::new(client.ip(), request, now).with_failed(&failed);
        let Ok(lease) = group.balancer().pick(&ctx) else {
            break;
        };
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
                only_timeouts = false;
            }
            Err(_) => tracing::warn!(upstream = ?lease.addr(), "connect timed out"),
        }
        lease.report_failure(Instant::now().into_std());
        failed.push(lease.id());
    }
    Err(if !failed.is_empty() && only_timeouts {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    })
}

/// Connects to `addr`, resolving a host name at connect time.
pub(crate) async fn connect_addr(addr: &UpstreamAddr) -> io::Result<TcpStream> {
    match addr.as_socket_addr() {
        Some(sa) => TcpStream::connect(sa).await,
        None => TcpStream::connect((addr.host().as_ref(), addr.port())).await,
    }
}

/// Reads until `parse` completes a head, all within `deadline`.
pub(super) async fn read_head<R, T, E>(
    io: &mut R,
    buf: &mut BytesMut,
    deadline: Instant,
    max_head: usize,
    parse: impl FnMut(&mut BytesMut) -> Result<Status<T>, E>,
) -> Result<T, HeadRead<E>>
where
    R: AsyncRead + Unpin,
{
    timeout_at(deadline, read_head_unbounded(io, buf, max_head, parse))
        .await
        .unwrap_or(Err(HeadRead::Timeout))
}

/// Reads until `parse` completes a head; the caller bounds the wait.
///
/// The parser only runs when the bytes could hold a complete head (a blank
/// line arrived) or the size limit is reached, so a head trickling in byte
/// by byte costs linear time, not quadratic.
async fn read_head_unbounded<R, T, E>(
    io: &mut R,
    buf: &mut BytesMut,
    max_head: usize,
    mut parse: impl FnMut(&mut BytesMut) -> Result<Status<T>, E>,
) -> Result<T, HeadRead<E>>
where
    R: AsyncRead + Unpin,
{
    let mut scanned = 0usize;
    loop {
        let from = scanned.saturating_sub(3);
        let blank_line = buf[from..].windows(2).any(|w| w == b"\n\n")
            || buf[from..].windows(3).any(|w| w == b"\n\r\n");
        scanned = buf.len();
        if blank_line || buf.len() >= max_head {
            match parse(buf).map_err(HeadRead::Parse)? {
                Status::Complete(head) => return Ok(head),
                Status::Partial => {}
            }
        }
        buf.reserve(READ_CHUNK);
        match io.read_buf(buf).await {
            Ok(0) => {
                return Err(HeadRead::Eof {
                    partial: !buf.is_empty(),
                })
            }
            Ok(_) => {}
            Err(e) => return Err(HeadRead::Io(e)),
        }
    }
}

pub(super) async fn write_all_timeout<W>(
    io: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    match timeout(limit, io.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Why a body stopped short, by the side at fault.
enum CopyError {
    Framing(BodyError),
    /// A chunked request body the re-framer refused (400, 413).
    Refused(RequestBodyError),
    /// Reading the source failed, timed out or ended early.
    Read,
    /// Writing the destination failed or timed out.
    Write,
}

/// How sending a request body ended.
enum BodySent {
    Whole(u64),
    /// The upstream answered before the body was through.
    EarlyAnswer(Response<()>),
    Framing(BodyError),
    Refused(RequestBodyError),
    ClientGone,
    UpstreamGone,
}

/// What the proxy answers `Expect: 100-continue` with before reading a body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// True when the request waits for `100 Continue` before sending its body.
fn expects_continue<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Turns the target into origin-form for the upstream. An absolute-form
/// target's authority replaces Host (RFC 9112 §3.2.2), so that the upstream
/// sees the host the route was chosen by.
pub(super) fn to_origin_form<B>(request: &mut Request<B>, path: &str) -> Result<(), ()> {
    if let Some(authority) = request.uri().authority() {
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| ())?;
        request.headers_mut().insert(HOST, host);
    }
    *request.uri_mut() = path.parse().map_err(|_| ())?;
    Ok(())
}

/// How [`copy_body`] walks a body.
enum BodyWalk {
    /// Forwarded as it came, scanned for its end.
    Scan(BodyScanner),
    /// A chunked request body, forwarded in the proxy's own framing so that
    /// the client's chunk sizes and extensions never reach the upstream's
    /// parser (request smuggling toward lax backends).
    Reframe(ChunkedReframer),
}

impl BodyWalk {
    /// A request body of `kind`; chunked ones are held to `limit` (0: none).
    fn request(kind: BodyKind, limit: u64) -> Self {
        match kind {
            BodyKind::Chunked => Self::Reframe(ChunkedReframer::new(limit)),
            kind => Self::Scan(BodyScanner::new(kind)),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Self::Scan(scanner) => scanner.is_done(),
            Self::Reframe(reframer) => reframer.is_done(),
        }
    }

    fn ends_at_close(&self) -> bool {
        matches!(self, Self::Scan(scanner) if scanner.ends_at_close())
    }
}

/// Streams one body from `src` to `dst`, starting with the bytes already in
/// `pending`; bytes after the body's end stay in `pending`. Returns the
/// bytes written.
async fn copy_body<R, W>(
    src: &mut R,
    dst: &mut W,
    pending: &mut BytesMut,
    mut walk: BodyWalk,
    read_timeout: Duration,
    send_timeout: Duration,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    loop {
        match &mut walk {
            BodyWalk::Scan(scanner) if !pending.is_empty() => {
                let scan = scanner.scan(pending).map_err(CopyError::Framing)?;
                let chunk = pending.split_to(scan.consumed);
                write_all_timeout(dst, &chunk, send_timeout)
                    .await
                    .map_err(|_| CopyError::Write)?;
                total += chunk.len() as u64;
            }
            BodyWalk::Scan(_) => {}
            BodyWalk::Reframe(reframer) => {
                // Bounded: each batch consumes at least one pending byte or
                // carries an error.
                while !pending.is_empty() && !reframer.is_done() {
                    // The proxy's framing and the client's data slices in one
                    // vectored write: the data is never copied.
                    let mut batch = reframer.reframe_batch(pending);
                    let (consumed, refused) = (batch.consumed(), batch.error());
                    let len = batch.remaining() as u64;
                    match timeout(send_timeout, dst.write_all_buf(&mut batch)).await {
                        Ok(Ok(())) => total += len,
                        Ok(Err(_)) | Err(_) => return Err(CopyError::Write),
                    }
                    pending.advance(consumed);
                    if let Some(e) = refused {
                        return Err(CopyError::Refused(e));
                    }
                }
            }
        }
        if walk.is_done() {
            return Ok(total);
        }
        pending.reserve(READ_CHUNK);
        match timeout(read_timeout, src.read_buf(pending)).await {
            Ok(Ok(0)) if walk.ends_at_close() => return Ok(total),
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(CopyError::Read),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_is_the_upstream_address_as_printed() {
        let v4 = UpstreamAddr::from(SocketAddr::from(([127, 0, 0, 1], 9001)));
        let v6 = UpstreamAddr::from(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9002)));
        let name = UpstreamAddr::name("localhost", 9003);
        assert_eq!(authority_of(&v4).as_str(), "127.0.0.1:9001");
        assert_eq!(authority_of(&v6).as_str(), "[::1]:9002");
        assert_eq!(authority_of(&name).as_str(), "localhost:9003");
        // A name no authority can hold falls back.
        let bad = UpstreamAddr::name("bad host", 1);
        assert_eq!(authority_of(&bad).as_str(), "upstream");
    }

    #[test]
    fn detached_leftovers_do_not_share_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n\x81\x05hello");
        // What the head parser does: the head leaves as a shared handle.
        let head = buf.split_to(18);
        let rest = detach(&mut buf);
        assert_eq!(&rest[..], b"\x81\x05hello");
        assert!(buf.is_empty());
        // Unique: the frames own their few bytes, not the 8 KiB buffer
        // that `head` still holds.
        assert!(rest.try_into_mut().is_ok());
        drop(head);

        let mut empty = BytesMut::with_capacity(READ_CHUNK);
        assert!(detach(&mut empty).is_empty());
    }
}
