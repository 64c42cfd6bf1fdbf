//! The proxy as a [`tower_service::Service`], for hosts that run their own
//! HTTP server: axum (`Router::route_service`, `fallback_service`,
//! `nest_service`) and hyper 1 (through
//! `hyper_util::service::TowerToHyperService`). Feature `tower`; feature
//! `axum` adds axum's `ConnectInfo` and `OriginalUri`.
//!
//! Every request goes through what [`Server`](crate::server::Server) does
//! with a request read from a socket:
//!
//! - a WebSocket upgrade (HTTP/1.1 `Upgrade`, Firefox's
//!   `Connection: keep-alive, Upgrade` included) gets the same checks,
//!   forwarding policy, balancer pick, connect with retries and upstream
//!   handshake with `Sec-WebSocket-Accept` validation
//!   ([`Proxy::connect_upgrade`]); the client gets the upstream's 101
//!   (subprotocol and extensions as the upstream chose them), and the tunnel
//!   runs as its own task once the host's server hands over the upgraded
//!   connection, listed in the proxy's registry, so that
//!   [`Proxy::tunnels`] and drains reach it;
//! - a plain request is proxied with both bodies streamed, over one upstream
//!   connection per request, with the same policy, retries and
//!   `client_max_body_size`;
//! - what the proxy answers itself (404 without a route, 413, 502 or 504
//!   for the upstream, a CORS preflight) is a response with that status and
//!   a one-line text body. The service never fails and never panics: its
//!   error type is [`Infallible`].
//!
//! Once [`Proxy::drain`] has begun, new WebSocket upgrades are answered
//! 503, and the open tunnels get their Close 1001 from the drain.
//!
//! The counters ([`Proxy::counters`]) count each request the service takes
//! as one connection and one request: the host owns the sockets, and the
//! service cannot see which requests share one.
//!
//! # The client's address
//!
//! In order: the closure given to [`ProxyService::client_addr`], a
//! [`ClientAddr`] request extension, then (feature `axum`) axum's
//! `ConnectInfo<SocketAddr>`, which `into_make_service_with_connect_info`
//! sets. A request with none of them is answered 500: balancing by client
//! address and `X-Forwarded-For` need it.
//!
//! # Paths under `Router::nest`
//!
//! axum strips the mount point from the path a nested service sees. With
//! feature `axum` the service routes on the request's original URI
//! (`OriginalUri`) instead: a service nested at `/v2` matches
//! `Route::new("/v2/")`, and the upstream gets the path the client sent,
//! as it would through [`Server`](crate::server::Server). To strip a
//! prefix, say so in the route ([`Route::strip_prefix`](crate::route::Route)).
//!
//! # HTTP/2
//!
//! A WebSocket over HTTP/2 (RFC 8441 extended CONNECT: method `CONNECT`
//! with `:protocol websocket`, which hyper's HTTP/2 server hands over as the
//! [`hyper::ext::Protocol`] extension once its builder has called
//! `enable_connect_protocol()`) is bridged to the HTTP/1.1 upstream as
//! HAProxy and Envoy do. The upstream sees a `GET` for the same path with
//! `:authority` as `Host`, `Upgrade: websocket`, `Connection: Upgrade`,
//! `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` the proxy makes
//! itself, plus the client's other headers (subprotocols, extensions,
//! `Origin`, cookies). The request takes the same steps as an HTTP/1.1
//! upgrade, and the upstream's `Sec-WebSocket-Accept` is checked against
//! the proxy's key, so a bad 101 never opens the stream. The client gets
//! `200` with the upstream's subprotocol and extensions (no `Upgrade`,
//! `Connection` or `Sec-WebSocket-Accept`), and the stream is tunnelled
//! like an HTTP/1.1 upgrade: registry, counters, drain. An extended
//! CONNECT for another protocol is answered 501, one without `:path` or
//! `:authority` 400, and a CONNECT without `:protocol` 501. Plain HTTP/2
//! requests are proxied to the upstream over HTTP/1.1.
//!
//! ```no_run
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto;
//! use hyper_util::service::TowerToHyperService;
//!
//! # async fn run(proxy: wsproxy::Proxy) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let (stream, peer) = listener.accept().await?;
//! let service = proxy.service().client_addr(move |_| Some(peer));
//! let mut builder = auto::Builder::new(TokioExecutor::new());
//! // Without it hyper refuses `:protocol`, and browsers stay on HTTP/1.1.
//! builder.http2().enable_connect_protocol();
//! builder
//!     .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use wsproxy::balance::{RoundRobin, Upstream};
//! use wsproxy::{Proxy, Scheme};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let upstream = Upstream::new("127.0.0.1:9001".parse::<SocketAddr>()?);
//! let proxy = Proxy::builder()
//!     .upstream(RoundRobin::new([upstream].into_iter().collect()))
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let service = proxy.service().listener(listener.local_addr()?, Scheme::Http);
//! // axum:  Router::new().route("/health", get(..)).fallback_service(service)
//! // hyper: TowerToHyperService::new(service.client_addr(move |_| Some(peer)))
//! # let _ = service;
//! # Ok(())
//! # }
//! ```

mod body;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tracing::Instrument;

pub use body::{BoxError, ProxyBody};
use body::{Download, Upload, UploadState};
use http_body_util::combinators::UnsyncBoxBody;

use crate::balance::Lease;
use crate::forward::Scheme;
use crate::handshake::{error_response, RequestBodyError};
use crate::proxy::{refuse, Exchange, Hosted, HostedTries, Listener, Outcome, UpgradeError};
use crate::Proxy;

/// The client's address, as a request extension a host inserts when it
/// accepts connections itself (the service reads it when no
/// [`client_addr`](ProxyService::client_addr) closure answers).
///
/// ```
/// use wsproxy::service::ClientAddr;
///
/// let mut request = http::Request::new(());
/// let peer = "127.0.0.1:50000".parse()?;
/// request.extensions_mut().insert(ClientAddr(peer));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

type ClientAddrFn = dyn Fn(&Parts) -> Option<SocketAddr> + Send + Sync;

/// A [`Proxy`] as a tower [`Service`](tower_service::Service) over
/// `http::Request<B>`; cheap to clone (two `Arc`s). See the
/// [module docs](self) for what it does with each request.
///
/// ```
/// use wsproxy::balance::{RoundRobin, Upstream};
/// use wsproxy::service::ProxyService;
/// use wsproxy::{Proxy, Scheme};
///
/// let upstream = Upstream::new("127.0.0.1:9001".parse::<std::net::SocketAddr>()?);
/// let proxy = Proxy::builder()
///     .upstream(RoundRobin::new([upstream].into_iter().collect()))
///     .build()?;
/// let service = ProxyService::new(proxy)
///     .listener("0.0.0.0:8443".parse()?, Scheme::Https)
///     .client_addr(|parts| {
///         // A host that knows the peer another way, e.g. a PROXY header.
///         parts.extensions.get::<std::net::SocketAddr>().copied()
///     });
/// # let _ = service;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ProxyService {
    proxy: Proxy,
    listener: Listener,
    client_addr: Option<Arc<ClientAddrFn>>,
    /// Set when a [`Server`](crate::server::Server) serves HTTP/2 through
    /// this service: its tunnels are the server's.
    #[cfg(feature = "h2")]
    front: Option<crate::server::Front>,
}

impl Proxy {
    /// This proxy as a tower service for an axum or hyper host; the same as
    /// [`ProxyService::new`].
    ///
    /// ```
    /// use wsproxy::balance::{RoundRobin, Upstream};
    /// use wsproxy::Proxy;
    ///
    /// let upstream = Upstream::new("127.0.0.1:9001".parse::<std::net::SocketAddr>()?);
    /// let proxy = Proxy::builder()
    ///     .upstream(RoundRobin::new([upstream].into_iter().collect()))
    ///     .build()?;
    /// let service = proxy.service();
    /// # let _ = service;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn service(&self) -> ProxyService {
        ProxyService::new(self.clone())
    }
}

impl ProxyService {
    /// The service of `proxy`, for a plain-HTTP listener on port 80 until
    /// [`listener`](Self::listener) says otherwise.
    ///
    /// ```
    /// # use wsproxy::balance::{RoundRobin, UpstreamSet};
    /// use wsproxy::service::ProxyService;
    /// use wsproxy::Proxy;
    ///
    /// # let proxy = Proxy::builder().upstream(RoundRobin::new(UpstreamSet::default())).build()?;
    /// let service = ProxyService::new(proxy.clone());
    /// assert_eq!(service.proxy().counters().requests, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(proxy: Proxy) -> Self {
        Self {
            proxy,
            listener: Listener::from(Scheme::Http),
            client_addr: None,
            #[cfg(feature = "h2")]
            front: None,
        }
    }

    /// The service of one HTTP/2 connection a server accepted.
    #[cfg(feature = "h2")]
    pub(crate) fn front(mut self, front: crate::server::Front) -> Self {
        self.listener = front.listener();
        let peer = front.peer();
        self.client_addr = Some(Arc::new(move |_| Some(peer)));
        self.front = Some(front);
        self
    }

    /// Begins one request's accounting, reported to the server's hook too
    /// when a server's HTTP/2 front door took it.
    fn begin(&self, peer: SocketAddr) -> Exchange {
        let exchange = Exchange::begin(&self.proxy, peer);
        #[cfg(feature = "h2")]
        let exchange = exchange.also_report_to(self.front.as_ref().and_then(|f| f.on_end()));
        exchange
    }

    /// The address the host listens on and its scheme (`Https` behind TLS
    /// termination): `X-Forwarded-Proto`, redirects, and the port of
    /// [`HostMode::ClientWithListenerPort`](crate::forward::HostMode)
    /// (nginx `$server_port`).
    ///
    /// ```
    /// # use wsproxy::balance::{RoundRobin, UpstreamSet};
    /// use wsproxy::{Proxy, Scheme};
    ///
    /// # let proxy = Proxy::builder().upstream(RoundRobin::new(UpstreamSet::default())).build()?;
    /// // Behind a TLS terminator that forwards port 8443 here.
    /// let service = proxy.service().listener("0.0.0.0:8443".parse()?, Scheme::Https);
    /// # let _ = service;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn listener(mut self, addr: SocketAddr, scheme: Scheme) -> Self {
        self.listener = Listener::new(scheme, addr.port());
        self
    }

    /// Where the client's address comes from, before the [`ClientAddr`]
    /// extension and axum's `ConnectInfo`: a hyper host accepting
    /// connections itself gives `move |_| Some(peer)` per connection.
    ///
    /// ```
    /// # use wsproxy::balance::{RoundRobin, UpstreamSet};
    /// use wsproxy::Proxy;
    ///
    /// # let proxy = Proxy::builder().upstream(RoundRobin::new(UpstreamSet::default())).build()?;
    /// let peer: std::net::SocketAddr = "192.0.2.7:50000".parse()?;
    /// let per_connection = proxy.service().client_addr(move |_| Some(peer));
    /// # let _ = per_connection;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn client_addr<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<SocketAddr> + Send + Sync + 'static,
    {
        self.client_addr = Some(Arc::new(f));
        self
    }

    /// The proxy this service serves with.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    fn peer(&self, parts: &Parts) -> Option<SocketAddr> {
        if let Some(addr) = self.client_addr.as_ref().and_then(|f| f(parts)) {
            return Some(addr);
        }
        if let Some(ClientAddr(addr)) = parts.extensions.get() {
            return Some(*addr);
        }
        #[cfg(feature = "axum")]
        if let Some(axum::extract::ConnectInfo(addr)) = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(*addr);
        }
        None
    }

    async fn serve<B>(self, request: Request<B>) -> Response<ProxyBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        #[cfg(feature = "axum")]
        let parts = original_uri(parts);
        let proxy = &self.proxy;
        let Some(peer) = self.peer(&parts) else {
            let message = "client address unknown: serve with connect info or set a ClientAddr";
            let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
            return self.refuse(unknown, StatusCode::INTERNAL_SERVER_ERROR, message);
        };
        let (parts, bridged) = if parts.method == Method::CONNECT
            && parts.extensions.get::<hyper::ext::Protocol>().is_some()
        {
            match bridge_extended_connect(parts) {
                Ok(parts) => (parts, true),
                Err((status, message)) => return self.refuse(peer, status, message),
            }
        } else {
            (parts, false)
        };
        if parts.method == Method::CONNECT {
            // A plain CONNECT asks for a TCP tunnel to its authority: this
            // is a reverse proxy, not a forward one. (`Server` refuses an
            // HTTP/1.1 one as it parses the head.)
            let message = "connect without :protocol is not proxied";
            return self.refuse(peer, StatusCode::NOT_IMPLEMENTED, message);
        }
        if bridged || asks_websocket(&parts) {
            if proxy.is_draining() {
                // A tunnel opened now would get its Close 1001 at once: the
                // client is better off reconnecting to another instance.
                return self.refuse(peer, StatusCode::SERVICE_UNAVAILABLE, "proxy is draining");
            }
            self.upgrade(Request::from_parts(parts, ()), peer, bridged)
                .await
        } else {
            self.plain(Request::from_parts(parts, body), peer).await
        }
    }

    /// An answer the proxy makes itself, with the policy's response
    /// headers (nginx `add_header … always`), as `Server` sends it.
    fn own_answer(&self, mut response: Response<Bytes>) -> Response<ProxyBody> {
        self.proxy.edit_own_answer(response.headers_mut());
        answer(response)
    }

    /// Refuses a request before the proxy's own steps, counted as one
    /// connection with one refused request.
    fn refuse(&self, peer: SocketAddr, status: StatusCode, message: &str) -> Response<ProxyBody> {
        let mut exchange = self.begin(peer);
        exchange.request();
        let refused = answer(refuse(&mut exchange, status, message));
        exchange.end();
        refused
    }

    /// A WebSocket upgrade, through [`Proxy::connect_upgrade`]'s steps,
    /// which count and trace it. `bridged`: `head` was made from an HTTP/2
    /// extended CONNECT, whose client gets a 200 instead of the 101.
    async fn upgrade(
        &self,
        mut head: Request<()>,
        peer: SocketAddr,
        bridged: bool,
    ) -> Response<ProxyBody> {
        // Taken before the head is handed on: resolves to the client's
        // stream once the host's server has sent the 101.
        let on_upgrade = hyper::upgrade::on(&mut head);
        // Begun here as the plain path's is, so that both ways count alike.
        let exchange = self.begin(peer);
        let opened = self
            .proxy
            .connect_upgrade_with(exchange, head, peer, self.listener, bridged)
            .await;
        match opened {
            Ok(mut pending) => {
                let mut switch = Response::new(ProxyBody::empty());
                *switch.status_mut() = pending.response().status();
                *switch.headers_mut() = pending.response().headers().clone();
                if bridged {
                    // RFC 8441 §5: the stream opens with a 2xx, and the
                    // HTTP/1.1 handshake headers have no meaning on it
                    // (RFC 9113 §8.2.2 forbids the connection-specific
                    // ones). Subprotocol and extensions stay: the client
                    // reads them from here.
                    *switch.status_mut() = StatusCode::OK;
                    for name in [
                        UPGRADE,
                        SEC_WEBSOCKET_ACCEPT,
                        CONTENT_LENGTH,
                        TRANSFER_ENCODING,
                    ] {
                        switch.headers_mut().remove(name);
                    }
                    remove_connection_headers(switch.headers_mut());
                    // The access log shows what the client got.
                    pending.answered(StatusCode::OK);
                }
                // Bounded: a server that sent the 101 hands the connection
                // over at once, or drops it when the client is gone (then
                // the pending upgrade counts as abandoned).
                let wait = self.proxy.timeouts().send;
                #[cfg(feature = "h2")]
                let front = self.front.as_ref().map(crate::server::Front::opening);
                tokio::spawn(async move {
                    match tokio::time::timeout(wait, on_upgrade).await {
                        Ok(Ok(upgraded)) => {
                            let client = TokioIo::new(upgraded);
                            #[cfg(feature = "h2")]
                            if let Some(front) = front {
                                front.tunnel(pending, client).await;
                                return;
                            }
                            pending.tunnel(client).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "upgrade not handed over"),
                        Err(_) => tracing::debug!("upgrade not handed over in time"),
                    }
                });
                switch
            }
            // Any 2xx to an extended CONNECT opens the stream as a tunnel
            // (RFC 8441 §5, RFC 9113 §8.5): the client would take the
            // upstream's page for an open WebSocket that carries nothing.
            Err(UpgradeError::NotSwitched(response))
                if bridged && response.status().is_success() =>
            {
                tracing::debug!(status = %response.status(), "upstream answered an extended connect with 2xx, not 101");
                self.own_answer(error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream answered the websocket upgrade without switching",
                ))
            }
            // The upstream's own answer, relayed as `Server` relays it.
            Err(UpgradeError::NotSwitched(response)) => answer(*response),
            Err(e) => {
                let status = e.status();
                let mut refused = self.own_answer(error_response(status, &e.to_string()));
                if status == StatusCode::UPGRADE_REQUIRED {
                    refused
                        .headers_mut()
                        .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                }
                refused
            }
        }
    }

    /// A plain request, over one hyper client connection to the upstream.
    async fn plain<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<ProxyBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut exchange = self.begin(peer);
        let span = exchange.span().clone();
        match self
            .exchange(request, peer, &mut exchange)
            .instrument(span)
            .await
        {
            Ok(response) => response.map(|download| ProxyBody::upstream(download, exchange)),
            Err(refused) => {
                exchange.end();
                answer(refused)
            }
        }
    }

    /// The steps of [`plain`](Self::plain), counted in `exchange`. `Err` is
    /// an answer the proxy made itself.
    async fn exchange<B>(
        &self,
        request: Request<B>,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Download>, Response<Bytes>>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let proxy = &self.proxy;
        let (parts, body) = request.into_parts();
        let head = Request::from_parts(parts, ());
        let admitted = proxy.admit_hosted(head, peer, self.listener, exchange)?;
        let mut tries = HostedTries::new(proxy, &admitted, !body.is_end_stream());
        // Taken by the first try; a request that may go out again has none.
        let mut body = Some(Upload::boxed(body));
        // Each turn is one upstream, and the tries are bounded.
        loop {
            // Before the pick: an answer lifts a failure mark only for a
            // pick made after the mark's sit-out ended.
            let picked = tokio::time::Instant::now().into_std();
            let hosted = proxy
                .connect_hosted(&admitted, &mut tries, exchange)
                .await?;
            let body = body.take().unwrap_or_else(Upload::empty);
            match self.try_hosted(hosted, body, picked, exchange).await {
                Tried::Answered(answer) => return answer,
                Tried::Failed {
                    lease,
                    status,
                    message,
                    retry,
                } => {
                    let next = tries.failed(proxy, &lease, status);
                    if !(retry && next) {
                        return Err(refuse(exchange, status, message));
                    }
                }
            }
        }
    }

    /// One try of a plain request on the upstream `hosted` connected:
    /// its answer, or the upstream's failure to give one.
    async fn try_hosted(
        &self,
        mut hosted: Hosted,
        body: UnsyncBoxBody<Bytes, BoxError>,
        picked: std::time::Instant,
        exchange: &mut Exchange,
    ) -> Tried {
        let proxy = &self.proxy;
        if !hosted.write_preface(proxy.timeouts().send).await {
            let message = "upstream refused the request";
            return Tried::failed(hosted.lease, StatusCode::BAD_GATEWAY, message);
        }
        let lease = hosted.lease;
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(hosted.upstream)).await {
                Ok(pair) => pair,
                Err(_) => return Tried::failed(lease, StatusCode::BAD_GATEWAY, "upstream closed"),
            };
        // Ends with the exchange: the request says `Connection: close`, and
        // dropping the answer's body closes it early.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        let state = Arc::new(UploadState::default());
        let upload = Upload::new(body, proxy.client_max_body_size(), state.clone());
        let mut sending = std::pin::pin!(sender.send_request(hosted.request.map(|()| upload)));
        let read = proxy.timeouts().read;
        // The answer's deadline restarts with every body frame sent:
        // `proxy_read_timeout` counts from the end of the request. Bounded:
        // each turn either sees progress or ends.
        let answered = loop {
            tokio::select! {
                answered = &mut sending => break answered,
                () = state.progress.notified() => continue,
                () = tokio::time::sleep(read) => {
                    let message = "upstream sent no answer in time";
                    return Tried::failed(lease, StatusCode::GATEWAY_TIMEOUT, message);
                }
            }
        };
        let response = match answered {
            Ok(response) => {
                lease.report_success(picked);
                response
            }
            Err(_) if state.too_large() => {
                let limit = proxy.client_max_body_size();
                let e = RequestBodyError::TooLarge { limit };
                return Tried::Answered(Err(refuse(exchange, e.status(), &e.to_string())));
            }
            Err(_) if state.client_failed() => {
                exchange.finish(Outcome::Abandoned, None);
                return Tried::Answered(Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "request body broke off",
                )));
            }
            // An invalid head goes to no other upstream: nginx's default
            // passes on `error timeout`, not `invalid_header`.
            Err(e) => {
                return Tried::Failed {
                    lease,
                    status: StatusCode::BAD_GATEWAY,
                    message: "upstream sent no valid answer",
                    retry: !e.is_parse(),
                }
            }
        };
        let (parts, incoming) = response.into_parts();
        let mut head = Response::from_parts(parts, ());
        hosted.answer.rewrite(proxy, &mut head);
        // The policy marks answers `Connection: close` for the one-request
        // upstream connection; toward the client the host's server decides.
        head.headers_mut().remove(CONNECTION);
        let download = Download::new(incoming, read, lease, state, head.status());
        Tried::Answered(Ok(head.map(|()| download)))
    }
}

/// How one try of a plain request ended.
// Returned once per try and matched at once: boxing the answer would
// cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Tried {
    /// With the answer to give the client: the upstream's, or the proxy's
    /// own for the client's fault.
    Answered(Result<Response<Download>, Response<Bytes>>),
    /// The upstream took no request or gave no valid answer head (in
    /// time): the status and message to answer with if no other upstream
    /// may try, and whether this failure lets one (`retry`).
    Failed {
        lease: Lease,
        status: StatusCode,
        message: &'static str,
        retry: bool,
    },
}

impl Tried {
    /// A failure another upstream may make good.
    fn failed(lease: Lease, status: StatusCode, message: &'static str) -> Self {
        Self::Failed {
            lease,
            status,
            message,
            retry: true,
        }
    }
}

/// Routes on the path the client sent, not the one a nesting router left
/// (see "Paths under `Router::nest`").
#[cfg(feature = "axum")]
fn original_uri(mut parts: Parts) -> Parts {
    if let Some(axum::extract::OriginalUri(uri)) = parts.extensions.get() {
        parts.uri = uri.clone();
    }
    parts
}

/// The HTTP/1.1 upgrade request an HTTP/2 extended CONNECT (RFC 8441 §4,
/// `:protocol websocket`) stands for, as HAProxy and Envoy bridge it: `GET`
/// on the same path, `:authority` as `Host`, and the handshake headers
/// HTTP/2 leaves out. The key is the proxy's own, so the upstream's
/// `Sec-WebSocket-Accept` is checked against it like a client's. `Err` is
/// the status and message for a malformed or foreign extended CONNECT.
fn bridge_extended_connect(mut parts: Parts) -> Result<Parts, (StatusCode, &'static str)> {
    let websocket = parts
        .extensions
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if !websocket {
        // RFC 8441 §4 leaves other protocols to their own specs: not ours.
        let message = "extended connect protocol is not websocket";
        return Err((StatusCode::NOT_IMPLEMENTED, message));
    }
    // RFC 8441 §4: an extended CONNECT carries :scheme and :path; without
    // them it is malformed (RFC 9113 §8.1.1).
    let Some(path) = parts
        .uri
        .path_and_query()
        .filter(|p| p.path().starts_with('/'))
        .cloned()
    else {
        return Err((StatusCode::BAD_REQUEST, "extended connect without :path"));
    };
    if let Some(authority) = parts.uri.authority() {
        let Ok(host) = HeaderValue::from_str(authority.as_str()) else {
            return Err((StatusCode::BAD_REQUEST, "invalid :authority"));
        };
        parts.headers.insert(HOST, host);
    } else if !parts.headers.contains_key(HOST) {
        return Err((
            StatusCode::BAD_REQUEST,
            "extended connect without :authority",
        ));
    }
    parts.uri = http::Uri::from(path);
    parts.method = Method::GET;
    parts.version = Version::HTTP_11;
    parts.extensions.remove::<hyper::ext::Protocol>();
    remove_connection_headers(&mut parts.headers);
    let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let Ok(key) = HeaderValue::from_str(&key) else {
        return Err((StatusCode::INTERNAL_SERVER_ERROR, "websocket key"));
    };
    let headers = &mut parts.headers;
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_KEY, key);
    // RFC 8441 §5 has the client send its version as over HTTP/1.1; one it
    // left out is the only version there is, and a wrong one gets the
    // parser's 426.
    if !headers.contains_key(SEC_WEBSOCKET_VERSION) {
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    Ok(parts)
}

/// Removes the headers RFC 9113 §8.2.2 calls connection-specific, which
/// never cross between HTTP/1.1 and HTTP/2 as they are.
fn remove_connection_headers(headers: &mut http::HeaderMap) {
    for name in [CONNECTION, TE, UPGRADE, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

/// True when the request asks for a WebSocket (`Upgrade: websocket`); the
/// parser then decides whether the upgrade is valid.
fn asks_websocket(parts: &Parts) -> bool {
    parts
        .headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
}

/// An answer the proxy made itself, for the host's server: its keep-alive
/// is the server's to decide.
fn answer(response: Response<Bytes>) -> Response<ProxyBody> {
    let mut response = response.map(ProxyBody::from);
    response.headers_mut().remove(CONNECTION);
    response
}

impl fmt::Debug for ProxyService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyService")
            .field("listener", &self.listener)
            .field("client_addr", &self.client_addr.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> tower_service::Service<Request<B>> for ProxyService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ServiceFuture {
        let service = self.clone();
        ServiceFuture(Box::pin(async move { Ok(service.serve(request).await) }))
    }
}

/// The future of [`ProxyService`]'s [`call`](tower_service::Service::call): the
/// answer, never an error.
pub struct ServiceFuture(
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>,
);

impl Future for ServiceFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ServiceFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceFuture")
    }
}
