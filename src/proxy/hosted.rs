//! Plain requests that a host's own server parsed (the tower service):
//! admitted as a request read from a socket is (the parser's checks, route,
//! policy, CORS preflight, `client_max_body_size`), connected with the same
//! retries and rewritten by the same policy. The HTTP exchange itself is
//! left to the caller, which speaks it through the host's HTTP stack and
//! reports a try the upstream failed to [`HostedTries`], which says whether
//! the next upstream may take the request.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Version};

use super::connect::{connect, proxy_header, repeatable, ConnectError, Tries};
use super::exchange::Exchange;
use super::head_io::write_all_timeout;
use super::stream::UpstreamStream;
use super::target::{rewritten_path, routed_origin_form};
use super::{Listener, Outcome, Proxy, UpstreamGroup};
use crate::balance::Lease;
use crate::forward::{Client, ForwardContext};
use crate::handshake::body::BodyKind;
use crate::handshake::{self, RequestBodyError, RequestKind};

/// A plain request admitted: routed, checked and in origin-form, not yet
/// rewritten; each try rewrites its own copy for its upstream.
#[derive(Debug)]
pub(crate) struct Admitted {
    request: Request<()>,
    group: UpstreamGroup,
    client: Client,
    /// The route's prefix rewrite, for `proxy_redirect default`.
    redirect: Option<Box<(String, String)>>,
    peer: SocketAddr,
    listener: Listener,
    /// Its head announces a body (`Content-Length` above zero, chunked).
    has_body: bool,
}

/// A plain request connected and rewritten for one upstream.
#[derive(Debug)]
pub(crate) struct Hosted {
    /// In origin-form, rewritten by the policy.
    pub(crate) request: Request<()>,
    pub(crate) upstream: UpstreamStream,
    /// The PROXY v2 header a `send-proxy-v2` group expects, to write
    /// before the request; empty otherwise.
    pub(crate) preface: BytesMut,
    /// Held until the answer's body ends: `least_conn` counts it in flight.
    pub(crate) lease: Lease,
    pub(crate) answer: HostedAnswer,
}

impl Hosted {
    /// Writes the PROXY v2 preface, if the group sends one, within `send`;
    /// `false` when the upstream did not take it.
    pub(crate) async fn write_preface(&mut self, send: std::time::Duration) -> bool {
        self.preface.is_empty()
            || write_all_timeout(&mut self.upstream, &self.preface, send)
                .await
                .is_ok()
    }
}

/// One hosted request's tries, across which the caller keeps it: the
/// upstreams that failed it, and whether another may take it (nginx
/// `proxy_next_upstream error timeout`, as for `Server`).
#[derive(Debug)]
pub(crate) struct HostedTries {
    tries: Tries,
    /// Why the last try failed, once one did: the answer when no
    /// upstream is left to pick.
    last: Option<StatusCode>,
    /// Whether the request may go out again: no body (none is kept to send
    /// again) and a method other than POST, LOCK and PATCH.
    repeatable: bool,
}

impl HostedTries {
    /// The tries of `admitted`, whose body `has_body` says whether it has
    /// (as does its head, if it announces one).
    pub(crate) fn new(proxy: &Proxy, admitted: &Admitted, has_body: bool) -> Self {
        let has_body = has_body || admitted.has_body;
        Self {
            tries: Tries::new(&proxy.inner()),
            last: None,
            repeatable: repeatable(admitted.request.method(), has_body),
        }
    }

    /// Counts a try `lease`'s upstream failed with `status` (its head or
    /// preface not taken, no answer head, or none in time) against the
    /// upstream and the request; whether the next upstream may take it.
    pub(crate) fn failed(&mut self, proxy: &Proxy, lease: &Lease, status: StatusCode) -> bool {
        lease.report_failure(tokio::time::Instant::now().into_std());
        self.tries.failed(lease.id());
        self.last = Some(status);
        let inner = proxy.inner();
        self.repeatable && self.tries.left(&inner)
    }
}

/// What rewriting the upstream's answer needs to know of the request.
#[derive(Debug)]
pub(crate) struct HostedAnswer {
    client: Client,
    ctx: ForwardContext,
}

impl HostedAnswer {
    /// Rewrites the upstream's answer head as the policy does for `Server`.
    pub(crate) fn rewrite(&self, proxy: &Proxy, response: &mut Response<()>) {
        proxy
            .inner()
            .policy
            .rewrite_response(response, &self.client, &self.ctx);
    }
}

impl Proxy {
    /// Admits a plain request another server parsed, counted in `exchange`
    /// as the request loop counts one. `Err` is the answer the proxy gives
    /// itself (a refusal, a CORS preflight), its outcome already in
    /// `exchange`.
    // The error is the answer itself, made once per refused request.
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit_hosted(
        &self,
        mut request: Request<()>,
        peer: SocketAddr,
        listener: Listener,
        exchange: &mut Exchange,
    ) -> Result<Admitted, Response<Bytes>> {
        let inner = &self.inner();
        // An HTTP/2 request has no Host header and an absolute target; the
        // upstream connection is HTTP/1.1 either way.
        if request.version() != Version::HTTP_10 {
            *request.version_mut() = Version::HTTP_11;
        }
        if !request.headers().contains_key(HOST) {
            if let Some(host) = request
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                request.headers_mut().insert(HOST, host);
            }
        }
        // The same checks as for a head read from a socket: the request
        // goes through the parser once more rather than a second rule set.
        let mut head = BytesMut::new();
        handshake::write_request_head(&request, &mut head);
        let head = match handshake::parse_request(&mut head, &inner.limits) {
            Ok(handshake::Status::Complete(head)) => head,
            Ok(handshake::Status::Partial) => {
                return Err(refuse(
                    exchange,
                    StatusCode::BAD_REQUEST,
                    "malformed request",
                ))
            }
            Err(e) => return Err(refuse(exchange, e.status(), &e.to_string())),
        };
        exchange.request();
        let body = BodyKind::from(head.body_length());
        let (mut request, kind) = head.into_parts();
        let websocket = matches!(kind, RequestKind::WebSocket(_));
        if websocket {
            exchange.handshake();
        }
        let client = inner
            .policy
            .resolve_client(peer, request.headers(), listener.scheme);
        let (group, path, redirect) = match inner.routes.find_for(&request) {
            Ok(hit) => (
                hit.target().clone(),
                rewritten_path(hit.path_and_query()),
                hit.prefix_rewrite()
                    .map(|(client, upstream)| Box::new((upstream.to_owned(), client.to_owned()))),
            ),
            Err(e) => return Err(refuse(exchange, e.status(), &e.to_string())),
        };
        exchange.route(&group);
        let limit = inner.client_max_body_size;
        if matches!(body, BodyKind::Length(n) if limit != 0 && n > limit) {
            let e = RequestBodyError::TooLarge { limit };
            return Err(refuse(exchange, e.status(), &e.to_string()));
        }
        if let Err(e) = inner.policy.check(&request, websocket) {
            return Err(refuse(exchange, e.status(), &e.to_string()));
        }
        if let Some(preflight) = inner.policy.preflight(&request) {
            if preflight.status() != StatusCode::NO_CONTENT {
                let status = preflight.status();
                return Err(refuse(exchange, status, "origin not allowed by cors"));
            }
            exchange.finish(Outcome::Preflight, Some(preflight.status()));
            return Err(preflight.map(|()| Bytes::new()));
        }
        if routed_origin_form(&mut request, path).is_err() {
            return Err(refuse(
                exchange,
                StatusCode::BAD_REQUEST,
                "invalid request path",
            ));
        }
        Ok(Admitted {
            request,
            group,
            client,
            redirect,
            peer,
            listener,
            has_body: body != BodyKind::Empty,
        })
    }

    /// Connects `admitted` to an upstream `tries` has not seen fail, with
    /// the same retries of failed connects as `Server`, and rewrites a copy
    /// of the request for it. `Err` is the answer when none could be
    /// reached, its outcome already in `exchange`.
    pub(crate) async fn connect_hosted(
        &self,
        admitted: &Admitted,
        tries: &mut HostedTries,
        exchange: &mut Exchange,
    ) -> Result<Hosted, Response<Bytes>> {
        let inner = &self.inner();
        let Admitted {
            request,
            group,
            client,
            redirect,
            peer,
            listener,
            ..
        } = admitted;
        let connected = connect(inner, group, client, request, &mut tries.tries).await;
        let (lease, upstream) = match (connected, tries.last) {
            (Ok(pair), _) => pair,
            // Nothing left to pick after a retry: the failure that made it
            // stands, as nginx answers with the last error.
            (Err(ConnectError::Select(_)), Some(status)) => {
                return Err(refuse(exchange, status, "upstream sent no valid answer"));
            }
            (Err(e), _) => {
                tracing::debug!(error = %e, source = ?std::error::Error::source(&e), "no upstream");
                return Err(refuse(exchange, e.status(), "no upstream could be reached"));
            }
        };
        // A group that expects a PROXY v2 header (HAProxy `send-proxy-v2`)
        // gets it before hyper's client writes the request head.
        let mut preface = BytesMut::new();
        proxy_header(group, client, *peer, listener.port, &mut preface);
        exchange.upstream(lease.addr());
        let ctx = ForwardContext::new(
            *peer,
            listener.scheme,
            listener.port,
            lease.authority().clone(),
        )
        // Its head went through `parse_request` above.
        .with_checked_host()
        .with_boxed_redirect_prefix(redirect.clone());
        let mut request = copy_head(request);
        inner.policy.rewrite_request(&mut request, client, &ctx);
        Ok(Hosted {
            request,
            upstream,
            preface,
            lease,
            answer: HostedAnswer {
                client: client.clone(),
                ctx,
            },
        })
    }
}

/// A copy of a request head (method, target, version, headers) for one
/// try's rewrite; extensions stay behind, as the upstream never sees them.
fn copy_head(request: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// An answer the proxy makes itself, counted in `exchange` as `Server`
/// counts a refusal.
pub(crate) fn refuse(
    exchange: &mut Exchange,
    status: StatusCode,
    message: &str,
) -> Response<Bytes> {
    exchange.finish(Outcome::Rejected(status), Some(status));
    let mut answer = handshake::error_response(status, message);
    exchange.policy().edit_own_answer(answer.headers_mut());
    answer
}
