//! The request loop of one client connection: read a head, admit it
//! (route, policy), connect, send it on, then relay the answer or switch to
//! a tunnel; keep-alive until the connection closes or upgrades.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, EXPECT};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use tracing::{field, Instrument};

use super::connect::{connect, proxy_header, write_head, ConnectError, Tries};
use super::exchange::conn_span;
use super::guard::{Listing, Upgraded};
use super::head_io::{detach, read_head, write_all_timeout, HeadRead, READ_CHUNK};
use super::relay::{send_body, BodySent};
use super::stream::UpstreamStream;
use super::target::{rewritten_path, routed_origin_form};
use super::{ConnectionReport, Drain, DrainPhase, Inner, Listener, Live, Outcome, UpstreamGroup};
use crate::balance::Lease;
use crate::forward::{Client, ForwardContext};
use crate::handshake::body::BodyKind;
use crate::handshake::{
    self, HeadScanner, RequestBodyError, RequestKind, ResponseKind, UpgradeAnswer,
};
use crate::tunnel::Prefixed;

mod accounted;
mod answer;
mod plain;

use accounted::Accounted;
use answer::NoAnswer;

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

/// The upstream half of a completed upgrade.
struct Switched {
    upstream: UpstreamStream,
    upstream_prefix: Bytes,
    lease: Lease,
    listing: Listing,
}

/// A request the proxy will send upstream, with what it learnt admitting it.
struct Admitted {
    /// In origin-form, not yet rewritten for an upstream.
    request: Request<()>,
    kind: RequestKind,
    body: BodyKind,
    client: Client,
    group: UpstreamGroup,
    method: Method,
    websocket: bool,
    client_keeps_alive: bool,
    http10: bool,
    expects_continue: bool,
    /// The route's prefix rewrite (upstream's, client's), for redirects.
    redirect: Option<Box<(String, String)>>,
}

/// An admitted request with its upstream connection, rewritten for it.
struct Connected {
    stream: UpstreamStream,
    lease: Lease,
    /// Where its tunnel would be listed; an upgrade request's only.
    listing: Option<Listing>,
    ctx: ForwardContext,
    admitted: Admitted,
}

/// What sending the request left for reading its answer.
struct Sent {
    /// Upstream bytes read so far: an early answer's body, or nothing.
    up_buf: BytesMut,
    /// The answer, if the upstream gave it before the body was through.
    early: Option<Response<()>>,
    /// The client's body was not sent whole.
    body_cut: bool,
}

/// Why a request was not sent whole.
enum SendFailed {
    /// The upstream did not take the head: another upstream may.
    HeadRefused,
    /// The request has ended (answered, or the client gone): what the
    /// connection does next.
    Answered(Next),
}

/// Serves requests until the connection closes or upgrades; an upgraded
/// connection comes back to the caller to tunnel.
///
/// The connection counts as opened when this is called. Not an `async fn`:
/// a wrapper future around `run`'s would be as large (several KiB) and
/// copied once more when first polled, on every connection.
pub(super) fn serve<'a, S>(
    live: &'a Live,
    io: S,
    peer: SocketAddr,
    listener: Listener,
    drain: Drain,
) -> impl Future<Output = (ConnectionReport, Option<Upgraded<S>>)> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    let inner = live.load();
    inner.counters.connection();
    let span = conn_span(peer);
    let conn = Conn {
        report: Accounted::new(live, peer, drain.end_hook()),
        inner,
        live,
        io,
        span: span.clone(),
        buf: BytesMut::new(),
        peer,
        listener,
        drain,
        linger: false,
    };
    conn.run().instrument(span)
}

struct Conn<'a, S> {
    /// The configuration of the current request: loaded once per request
    /// from `live`, so that a reload applies from the next request on.
    inner: Arc<Inner>,
    live: &'a Live,
    io: S,
    span: tracing::Span,
    /// Client bytes read but not yet used: the rest of a head, a body's
    /// start, a pipelined request or the first WebSocket frames.
    buf: BytesMut,
    peer: SocketAddr,
    listener: Listener,
    drain: Drain,
    /// The report, with the current request's state (whether one is under
    /// way, a WebSocket's, when it began), which accounts for the request
    /// if the connection's future is dropped.
    report: Accounted<'a>,
    /// The client may still be sending what the proxy will not read (a
    /// refused request's body): close without resetting the answer away.
    linger: bool,
}

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(mut self) -> (ConnectionReport, Option<Upgraded<S>>) {
        let switched = loop {
            if self.report.requests > 0 {
                // Empty lines between requests are ignored (RFC 9112
                // §2.2); left in the buffer they would pass for the next
                // request's start and skip the keep-alive wait.
                let blank = self.buf.iter().take_while(|b| matches!(b, b'\r' | b'\n'));
                let blank = blank.count();
                self.buf.advance(blank);
            }
            if self.report.requests > 0 && self.buf.is_empty() && !self.await_next_request().await {
                break None;
            }
            if self.report.requests > 0 {
                self.report.began = Instant::now();
                self.inner = self.live.load();
            }
            self.report.websocket = false;
            let limits = &self.inner.limits;
            // A server sets the first head's deadline at accept: the TLS
            // handshake and the head share one handshake timeout.
            let deadline = (self.report.requests == 0)
                .then(|| self.drain.head_deadline())
                .flatten()
                .unwrap_or_else(|| {
                    Instant::now() + crate::clock::capped(self.inner.timeouts.handshake)
                });
            let head = read_head(
                &mut self.io,
                &mut self.buf,
                deadline,
                HeadScanner::request(*limits),
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
                // Not a byte of a request (a browser's preconnect): closed
                // without an answer nobody asked for (HAProxy
                // `option http-ignore-probes`).
                Err(HeadRead::Timeout) if self.buf.is_empty() => {
                    self.finish(Outcome::Abandoned);
                    break None;
                }
                Err(HeadRead::Timeout) => {
                    // nginx answers 408 when `client_header_timeout` expires;
                    // a client that stopped reading is not waited for.
                    self.reject(StatusCode::REQUEST_TIMEOUT, "request head timed out", None)
                        .await;
                    // nginx closes at `client_header_timeout`: lingering
                    // would hold a slowloris client's slot for longer.
                    self.linger = false;
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
            self.report.in_request = true;
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
            return (self.report.into_report(), None);
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
        (self.report.into_report(), Some(upgraded))
    }

    /// Waits for the first byte of a keep-alive connection's next request.
    /// False when the connection should close instead.
    async fn await_next_request(&mut self) -> bool {
        if self.drain.phase() != DrainPhase::Running {
            return false;
        }
        let (io, buf) = (&mut self.io, &mut self.buf);
        // Empty lines are no request (RFC 9112 §2.2): the wait goes on past
        // them, within the one keep-alive timeout.
        let next = async move {
            // Bounded: each turn reads bytes, and the timeout bounds them all.
            loop {
                buf.reserve(READ_CHUNK);
                if !matches!(io.read_buf(buf).await, Ok(n) if n > 0) {
                    return false;
                }
                let blank = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n'));
                let blank = blank.count();
                buf.advance(blank);
                if !buf.is_empty() {
                    return true;
                }
            }
        };
        let read = timeout(self.inner.timeouts.keepalive, next);
        let reclaimed = self.drain.reclaimed();
        tokio::select! {
            // A request that arrived wins over a reclaim.
            biased;
            got = read => got.unwrap_or(false),
            () = self.drain.clone().reached(DrainPhase::Draining) => false,
            // The server ran out of slots: an idle connection is the one
            // to give up (nginx `ngx_drain_connections`).
            () = reclaimed => false,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.report.in_request = false;
        self.report.outcome = Some(outcome);
        self.inner.counters.outcome(outcome);
        if std::mem::take(&mut self.report.websocket) {
            // After the 101 went out, for a tunnel: the handshake's time.
            self.inner
                .counters
                .handshake_ended(outcome, self.report.began.elapsed());
        }
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
        self.inner.policy.edit_own_answer(answer.headers_mut());
        if let Some((name, value)) = extra {
            answer.headers_mut().insert(name, value);
        }
        let mut out = BytesMut::new();
        handshake::write_response_head(&answer, &mut out);
        out.extend_from_slice(answer.body());
        // Counted before the write: a client that reads the answer and then
        // asks the metrics must find it counted.
        self.report.status = Some(status);
        self.finish(Outcome::Rejected(status));
        let _ = write_all_timeout(&mut self.io, &out, self.inner.timeouts.send).await;
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

    /// One request, step by step: admit it, connect, send it on, answer.
    /// A step that ends the request itself (a refusal, a preflight, a gone
    /// peer) returns `Err` with what the connection does next.
    async fn handle(&mut self, head: handshake::RequestHead) -> Next {
        let mut admitted = match self.admit(head).await {
            Ok(admitted) => admitted,
            Err(answered) => return answered,
        };
        // The upstreams that failed this request: the next try picks
        // another (nginx `proxy_next_upstream error timeout`).
        let mut tried = Tries::new(&self.inner);
        let mut last = None;
        loop {
            let mut connected = match self.connect_upstream(admitted, &mut tried, last).await {
                Ok(connected) => connected,
                Err(answered) => return answered,
            };
            // Why this upstream failed the request, if another may take it.
            let failed = match self.send_request(&mut connected).await {
                Err(SendFailed::Answered(next)) => return next,
                Err(SendFailed::HeadRefused) => StatusCode::BAD_GATEWAY,
                Ok(mut sent) => {
                    let answered = match sent.early.take() {
                        Some(response) => Ok(UpgradeAnswer::Other(response)),
                        None => {
                            let (kind, http10) =
                                (&connected.admitted.kind, connected.admitted.http10);
                            let up = (&mut connected.stream, &mut sent.up_buf);
                            self.read_answer(up.0, up.1, http10, kind).await
                        }
                    };
                    match answered {
                        Ok(answer) => return self.answer(connected, sent, answer).await,
                        // The client's failure is not held against the
                        // upstream.
                        Err(NoAnswer::ClientGone) => {
                            self.finish(Outcome::Abandoned);
                            return Next::Close;
                        }
                        // No other upstream may answer it (an interim
                        // answer reached the client, or the head was
                        // invalid).
                        Err(NoAnswer::Upstream {
                            status,
                            retry: false,
                        }) => {
                            connected.lease.report_failure(Instant::now().into_std());
                            return self
                                .reject(status, "upstream sent no valid answer", None)
                                .await;
                        }
                        Err(NoAnswer::Upstream { status, .. }) => status,
                    }
                }
            };
            admitted = match self.try_next(connected, &mut tried, failed).await {
                Ok(back) => back,
                Err(answered) => return answered,
            };
            last = Some(failed);
        }
    }

    /// Routes the request and checks it against the policy; answers what
    /// the proxy answers itself (refusals, CORS preflights) and hands back
    /// the rest, in origin-form.
    async fn admit(&mut self, head: handshake::RequestHead) -> Result<Admitted, Next> {
        let inner = Arc::clone(&self.inner);
        let body = BodyKind::from(head.body_length());
        let (mut request, kind) = head.into_parts();
        let websocket = matches!(kind, RequestKind::WebSocket(_));
        if websocket {
            inner.counters.handshake();
            self.report.websocket = true;
        }
        let client =
            inner
                .policy
                .resolve_client(self.peer, request.headers(), self.listener.scheme);

        let (group, path, redirect) = match inner.routes.find_for(&request) {
            Ok(hit) => (
                hit.target().clone(),
                rewritten_path(hit.path_and_query()),
                // A 101 has no redirect to map back.
                hit.prefix_rewrite()
                    .filter(|_| !websocket)
                    .map(|(client, upstream)| Box::new((upstream.to_owned(), client.to_owned()))),
            ),
            Err(e) => return Err(self.reject(e.status(), &e.to_string(), None).await),
        };
        tracing::Span::current().record("route", group.name());
        self.report.route = Some(group.name.clone());

        // nginx refuses a declared length over `client_max_body_size` before
        // reading any of the body (and before `100 Continue`); a chunked
        // body is measured as its chunk sizes arrive, in `send_body`.
        let limit = inner.client_max_body_size;
        if matches!(body, BodyKind::Length(n) if limit != 0 && n > limit) {
            let e = RequestBodyError::TooLarge { limit };
            return Err(self.reject(e.status(), &e.to_string(), None).await);
        }

        if let Err(e) = inner.policy.check(&request, websocket) {
            return Err(self.reject(e.status(), &e.to_string(), None).await);
        }
        let client_keeps_alive = keeps_alive(&request);
        if let Some(preflight) = inner.policy.preflight(&request) {
            return Err(self
                .answer_preflight(preflight, body, client_keeps_alive)
                .await);
        }
        if websocket && body != BodyKind::Empty {
            // Bytes after an upgrade request are the tunnel's; a body would
            // be ambiguous with them.
            let message = "websocket upgrade request has a body";
            return Err(self.reject(StatusCode::BAD_REQUEST, message, None).await);
        }
        let http10 = request.version() == Version::HTTP_10;
        // HTTP/1.0 has no 1xx: its `Expect` is ignored (RFC 9110 §10.1.1).
        let expects_continue = !http10 && body != BodyKind::Empty && expects_continue(&request);
        let method = request.method().clone();
        if routed_origin_form(&mut request, path).is_err() {
            return Err(self
                .reject(StatusCode::BAD_REQUEST, "invalid request path", None)
                .await);
        }
        Ok(Admitted {
            request,
            kind,
            body,
            client,
            group,
            method,
            websocket,
            client_keeps_alive,
            http10,
            expects_continue,
            redirect,
        })
    }

    /// Connects an upstream for an admitted request and rewrites the request
    /// for it (forwarding headers, Host, version, `Expect`).
    /// `tried` holds the upstreams this request failed on so far, and
    /// `last` why the last of them failed after its connect: with no other
    /// upstream left, that is the answer.
    async fn connect_upstream(
        &mut self,
        admitted: Admitted,
        tried: &mut Tries,
        last: Option<StatusCode>,
    ) -> Result<Connected, Next> {
        let inner = Arc::clone(&self.inner);
        // Cloned, not taken: a retry needs it again (a plain request
        // through a prefix rewrite only).
        let redirect = admitted.redirect.clone();
        let request = &admitted.request;
        // Taken from the request the balancer places, before the rewrite;
        // only an upgrade can become a tunnel to list. Taken before the
        // connect: from here the group counts the upgrade as on its way, so
        // a reconfigure that removes the group keeps it reachable.
        let listing = admitted
            .websocket
            .then(|| Listing::new(&admitted.group, admitted.client.ip(), request));
        let connecting = connect(&inner, &admitted.group, &admitted.client, request, tried);
        let (lease, stream) = match (connecting.await, last) {
            (Ok(pair), _) => pair,
            // Nothing left to pick after a retry: the failure that made it
            // stands, as nginx answers with the last error.
            (Err(ConnectError::Select(_)), Some(status)) => {
                let message = "upstream sent no valid answer";
                return Err(self.reject(status, message, None).await);
            }
            (Err(e), _) => {
                tracing::debug!(error = %e, source = ?std::error::Error::source(&e), "no upstream");
                return Err(self
                    .reject(e.status(), "no upstream could be reached", None)
                    .await);
            }
        };
        let authority = lease.authority().clone();
        tracing::Span::current().record("upstream", field::display(&authority));
        self.report.upstream = Some(lease.addr().clone());
        let ctx = ForwardContext::new(
            self.peer,
            self.listener.scheme,
            self.listener.port,
            authority,
        )
        .with_websocket(admitted.websocket)
        .with_checked_host()
        // An upstream never answers an HTTP/1.0 request chunked (RFC 9112
        // §6.1), and chunked is the one framing a 1.0 client cannot read.
        .with_http10(admitted.http10)
        // The proxy answers the expectation itself, as nginx does.
        .without_expect(admitted.expects_continue)
        .with_boxed_redirect_prefix(redirect);
        Ok(Connected {
            stream,
            lease,
            listing,
            ctx,
            admitted,
        })
    }

    /// Sends the rewritten head, then the body if there is one, answering
    /// `Expect: 100-continue` first.
    async fn send_request(&mut self, up: &mut Connected) -> Result<Sent, SendFailed> {
        let inner = Arc::clone(&self.inner);
        let body = up.admitted.body;
        // One buffer serves the whole exchange: the request head goes out
        // of it, the answer comes into it, the 101 goes out of it. Without
        // a body or pipelined bytes, it is the rest of the client's buffer,
        // whose room the request head did not use.
        let mut up_buf = if body == BodyKind::Empty && self.buf.is_empty() {
            std::mem::take(&mut self.buf)
        } else {
            BytesMut::with_capacity(READ_CHUNK)
        };
        proxy_header(
            &up.admitted.group,
            &up.admitted.client,
            self.peer,
            self.listener.port,
            &mut up_buf,
        );
        // The policy keeps Content-Length and Transfer-Encoding: a
        // Content-Length body goes through untouched, a chunked one (whose
        // Transfer-Encoding is exactly `chunked`) re-framed by the proxy.
        // Written from the parsed head, which is left as it came.
        let admitted = &up.admitted;
        inner
            .policy
            .write_request_head(&admitted.request, &admitted.client, &up.ctx, &mut up_buf);
        let written = write_head(&mut up.stream, &up_buf, inner.timeouts.send).await;
        up_buf.clear();
        if written.is_err() {
            return Err(SendFailed::HeadRefused);
        }

        let mut sent = Sent {
            up_buf,
            early: None,
            body_cut: false,
        };
        if body == BodyKind::Empty {
            return Ok(sent);
        }
        if up.admitted.expects_continue
            && write_all_timeout(&mut self.io, CONTINUE, inner.timeouts.send)
                .await
                .is_err()
        {
            self.finish(Outcome::Abandoned);
            return Err(SendFailed::Answered(Next::Close));
        }
        // Boxed: a body's copy state (the re-framer's batch, two futures
        // raced) would otherwise sit in every connection's future, a
        // WebSocket's too, which never has a body, and be copied on spawn.
        // An answer that comes before the body is through goes out with
        // the same rewrite as one after it, and closes the connection.
        let (policy, client, ctx, method) = (
            &inner.policy,
            &up.admitted.client,
            &up.ctx,
            &up.admitted.method,
        );
        let head_of = |response: &mut Response<()>| {
            // Checked before the rewrite: an answer refused for its framing
            // goes on to the usual path, which refuses it with 502.
            BodyKind::of_response(method, response.status(), response.headers()).ok()?;
            policy.rewrite_response(response, client, ctx);
            let (kind, _) = plain::prepare_answer(response, method, false)?;
            let mut head = BytesMut::new();
            handshake::write_response_head(response, &mut head);
            Some((head, kind))
        };
        let sending = Box::pin(send_body(
            &inner,
            &mut self.io,
            &mut self.buf,
            &mut up.stream,
            &mut sent.up_buf,
            body,
            head_of,
        ));
        match sending.await {
            BodySent::Whole(n) => {
                inner.counters.bytes(n, 0);
                self.report.body_from_client += n;
            }
            BodySent::Relayed {
                status,
                answered,
                sent: body_sent,
            } => {
                // Answered: the upstream is well, whatever became of the
                // bodies after.
                up.lease.report_success(self.report.began.into_std());
                let from_client = match body_sent {
                    Some(Ok(n)) => n,
                    _ => 0,
                };
                let from_upstream = *answered.as_ref().unwrap_or(&0);
                inner.counters.bytes(from_client, from_upstream);
                self.report.body_from_client += from_client;
                self.report.body_from_upstream += from_upstream;
                self.report.status = Some(status);
                self.finish(match &answered {
                    Ok(_) => Outcome::Proxied,
                    Err(e) => plain::broken_answer(e),
                });
                // A body cut short: closing must not reset the answer away.
                self.linger = !matches!(body_sent, Some(Ok(_)));
                return Err(SendFailed::Answered(Next::Close));
            }
            BodySent::EarlyAnswer(response) => {
                sent.early = Some(response);
                sent.body_cut = true;
            }
            BodySent::Framing(e) => {
                return Err(SendFailed::Answered(
                    self.reject(e.status(), &e.to_string(), None).await,
                ))
            }
            BodySent::Refused(e) => {
                return Err(SendFailed::Answered(
                    self.reject(e.status(), &e.to_string(), None).await,
                ))
            }
            BodySent::ClientGone => {
                self.finish(Outcome::Abandoned);
                return Err(SendFailed::Answered(Next::Close));
            }
            // nginx answers 408 at `client_body_timeout`; the upstream's
            // connection, with half a body, is dropped.
            BodySent::ClientTimedOut => {
                let status = StatusCode::REQUEST_TIMEOUT;
                let next = self.reject(status, "request body timed out", None).await;
                self.linger = false;
                return Err(SendFailed::Answered(next));
            }
            // The upstream may have answered before it stopped reading
            // (413): what it sent is still read below.
            BodySent::UpstreamGone => sent.body_cut = true,
        }
        if sent.body_cut {
            // The client's body was cut short: the connection cannot carry
            // another request, and closing must not reset the answer away.
            self.linger = true;
        }
        Ok(sent)
    }

    /// With the upstream's answer head read (or come early), either
    /// switches to a tunnel or relays it as a plain answer.
    async fn answer(&mut self, connected: Connected, sent: Sent, answer: UpgradeAnswer) -> Next {
        let inner = Arc::clone(&self.inner);
        let Connected {
            stream,
            lease,
            listing,
            ctx,
            admitted,
        } = connected;
        let Admitted {
            kind,
            client,
            method,
            websocket,
            client_keeps_alive,
            ..
        } = admitted;
        let Sent {
            mut up_buf,
            body_cut,
            ..
        } = sent;
        // The request began before its pick: a success lifts a mark only
        // for a request begun after the sit-out.
        lease.report_success(self.report.began.into_std());

        if let (UpgradeAnswer::Switched(head), Some(_)) = (&answer, &listing) {
            let (out, prefix) = switching(std::mem::take(&mut up_buf), |out| {
                inner.policy.write_switching_head(head, &client, &ctx, out);
            });
            // Dropped whole, and the listing taken whole, before the
            // await: neither is then kept in the connection's future.
            drop(answer);
            if let Some(listing) = listing {
                return self.switch(out, prefix, stream, lease, listing).await;
            }
            return Next::Close;
        }
        // Any other answer; a 101 is Switched only for a WebSocket request,
        // which always has its listing.
        let response = answer.into_response();
        match (handshake::classify_response(&kind, &response), listing) {
            (Ok(ResponseKind::Switched), Some(listing)) => {
                let mut response = response;
                inner.policy.rewrite_response(&mut response, &client, &ctx);
                let (out, prefix) = switching(up_buf, |out| {
                    handshake::write_response_head(&response, out);
                });
                return self.switch(out, prefix, stream, lease, listing).await;
            }
            (Ok(_), _) => {}
            (Err(e), _) => {
                // Not a passive-health failure: the upstream answered, and
                // whether its 101 fits depends on the client's own request
                // (its key, its subprotocols), so one client could otherwise
                // take the upstream out for everyone. nginx does not check
                // the 101 at all.
                tracing::warn!(error = %e, "upstream sent an invalid 101");
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
        // Bytes behind a refused upgrade were meant for its tunnel (frames
        // sent early): they are no next request.
        let early_frames = websocket && !self.buf.is_empty();
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty
        // framing; the connection closes after it.
        let faulty = response.version() == Version::HTTP_10
            && response
                .headers()
                .contains_key(http::header::TRANSFER_ENCODING);
        let keep_alive =
            !body_cut && !early_frames && !faulty && self.may_keep_alive(client_keeps_alive);
        let mut response = response;
        inner.policy.rewrite_response(&mut response, &client, &ctx);
        self.relay(response, &method, stream, up_buf, keep_alive, outcome)
            .await
    }

    /// Whether the connection may carry another request after this one.
    fn may_keep_alive(&self, client_keeps_alive: bool) -> bool {
        client_keeps_alive
            && !self.inner.timeouts.keepalive.is_zero()
            && self.report.requests < self.inner.keepalive_requests
            && self.drain.phase() == DrainPhase::Running
    }

    /// Sends the 101 `out` (see [`switching`]); the caller then tunnels.
    async fn switch(
        &mut self,
        out: BytesMut,
        upstream_prefix: Bytes,
        upstream: UpstreamStream,
        lease: Lease,
        listing: Listing,
    ) -> Next {
        if write_all_timeout(&mut self.io, &out, self.inner.timeouts.send)
            .await
            .is_err()
        {
            self.finish(Outcome::Abandoned);
            return Next::Close;
        }
        self.report.status = Some(StatusCode::SWITCHING_PROTOCOLS);
        Next::Tunnel(Switched {
            upstream,
            upstream_prefix,
            lease,
            listing,
        })
    }
}

/// The 101 written out of `up_buf`, the answer's buffer, once what the
/// upstream sent past its head is copied out for the tunnel (the second).
fn switching(mut up_buf: BytesMut, write_head: impl FnOnce(&mut BytesMut)) -> (BytesMut, Bytes) {
    let upstream_prefix = detach(&mut up_buf);
    write_head(&mut up_buf);
    (up_buf, upstream_prefix)
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

/// What the proxy answers `Expect: 100-continue` with before reading a body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// True when the request waits for `100 Continue` before sending its body.
fn expects_continue<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}
