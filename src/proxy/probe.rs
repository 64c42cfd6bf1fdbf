//! What an active health check asks of an upstream ([`Probe`]): a TCP
//! connect ([`TcpProbe`]), a real WebSocket handshake ([`WebSocketProbe`]),
//! or the host's own. [`HealthChecker`](super::HealthChecker) runs them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use bytes::BytesMut;
use http::header::{CONNECTION, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderValue, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connect::authority_of;
use super::stream::Dial;
use super::HealthConfigError;
use crate::balance::UpstreamAddr;
use crate::frame::{masking_key, CloseFrame};
use crate::handshake::{
    classify_response, parse_request, parse_response, write_request_head, HandshakeError,
    HeadScanner, Limits, ResponseKind, Status, SwitchError,
};

/// What [`Probe::probe`] returns: resolves to `true` when the upstream is
/// healthy.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// One health check of one upstream, run every interval by a
/// [`HealthChecker`](super::HealthChecker); implement it for a check of the host's own (an HTTP
/// status page, a protocol ping).
///
/// The checker bounds each probe with the check timeout (a probe that does
/// not finish in time failed) and drops it on shutdown, so a probe need not
/// time itself out. A boxed future keeps the trait object-safe: one
/// allocation per check, not per proxied connection.
///
/// ```
/// use wsproxy::balance::UpstreamAddr;
/// use wsproxy::proxy::{HealthCheck, Probe, ProbeFuture, TcpProbe};
///
/// /// A TCP check that an operator can force to fail.
/// #[derive(Debug, Default)]
/// struct Maintenance {
///     on: std::sync::atomic::AtomicBool,
/// }
///
/// impl Probe for Maintenance {
///     fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
///         Box::pin(async move {
///             !self.on.load(std::sync::atomic::Ordering::Relaxed)
///                 && TcpProbe.probe(upstream).await
///         })
///     }
/// }
///
/// let config = HealthCheck::builder().probe(Maintenance::default()).build()?;
/// # Ok::<(), wsproxy::proxy::HealthConfigError>(())
/// ```
pub trait Probe: fmt::Debug + Send + Sync {
    /// Checks `upstream` once: `true` when it is healthy.
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a>;

    /// Checks `upstream` once over TLS configured by `tls`, as a checker
    /// given [`HealthChecker::tls`](super::HealthChecker::tls) does. [`TcpProbe`] and
    /// [`WebSocketProbe`] complete a TLS handshake first; by default, the
    /// plain [`probe`](Self::probe). Feature `rustls`.
    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        let _ = tls;
        self.probe(upstream)
    }
}

impl<P: Probe + ?Sized> Probe for Arc<P> {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        (**self).probe(upstream)
    }

    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        (**self).probe_tls(upstream, tls)
    }
}

impl<P: Probe + ?Sized> Probe for Box<P> {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        (**self).probe(upstream)
    }

    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        (**self).probe_tls(upstream, tls)
    }
}

/// A TCP connect that completes (HAProxy's default `check`); a host name is
/// resolved at each check. A Unix socket upstream is connected to by its
/// path; over TLS (`HealthChecker::tls`, feature `rustls`) the handshake
/// must complete too, certificate verified (HAProxy `check-ssl`).
///
/// ```
/// use wsproxy::proxy::{HealthCheck, TcpProbe};
///
/// let config = HealthCheck::builder().probe(TcpProbe).build()?;
/// # Ok::<(), wsproxy::proxy::HealthConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpProbe;

impl Probe for TcpProbe {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        Box::pin(async move { Dial::default().connect(upstream).await.is_ok() })
    }

    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        Box::pin(async move {
            let dial = Dial {
                tls: Some(tls),
                ..Dial::default()
            };
            dial.connect(upstream).await.is_ok()
        })
    }
}

/// A WebSocket upgrade to a path, answered by a 101 that completes it (RFC
/// 6455 §4.1, with a fresh random key and the crate's own checks of the
/// answer), then a masked Close 1000 so the upstream logs a clean close.
///
/// ```
/// use wsproxy::proxy::{HealthCheck, WebSocketProbe};
///
/// let probe = WebSocketProbe::new("/health")?.with_host("app.example")?;
/// let config = HealthCheck::builder().probe(probe).build()?;
/// # Ok::<(), wsproxy::proxy::HealthConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketProbe {
    path: String,
    host: Option<String>,
    limits: Limits,
    proxy_v2: bool,
}

/// A PROXY protocol v2 header with the LOCAL command: the connection is the
/// proxy's own (a health check), no client addresses follow.
const PROXY_V2_LOCAL: [u8; 16] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00,
];

impl WebSocketProbe {
    /// A handshake to `path` (origin-form, e.g. `/health`), with the
    /// upstream's `host:port` as Host.
    ///
    /// # Errors
    ///
    /// [`HealthConfigError::BadPath`] for a path that is not an absolute
    /// path with an optional query.
    pub fn new(path: impl Into<String>) -> Result<Self, HealthConfigError> {
        let path = path.into();
        let valid = path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok();
        if !valid {
            return Err(HealthConfigError::BadPath(path));
        }
        Ok(Self {
            path,
            host: None,
            limits: Limits::default(),
            proxy_v2: false,
        })
    }

    /// Opens each check with a PROXY protocol v2 header (the LOCAL
    /// command: a connection of the proxy's own), for upstreams that
    /// require one before the request, as a group with
    /// [`send_proxy_v2`](crate::proxy::UpstreamGroup::send_proxy_v2) has
    /// (HAProxy `check-send-proxy`, implied there by `send-proxy-v2`).
    #[must_use]
    pub fn with_proxy_v2(mut self) -> Self {
        self.proxy_v2 = true;
        self
    }

    /// Sends `host` as the Host header instead of the upstream's address.
    ///
    /// # Errors
    ///
    /// [`HealthConfigError::BadHost`] for an empty host or one that is not
    /// a valid header value.
    pub fn with_host(mut self, host: impl Into<String>) -> Result<Self, HealthConfigError> {
        let host = host.into();
        if host.is_empty() || HeaderValue::from_str(&host).is_err() {
            return Err(HealthConfigError::BadHost(host));
        }
        self.host = Some(host);
        Ok(self)
    }

    /// The request target.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The Host header it sends, when not the upstream's address.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
}

impl WebSocketProbe {
    /// Connects as `dial` says and does the handshake.
    async fn check(&self, upstream: &UpstreamAddr, dial: Dial<'_>) -> bool {
        let Ok(stream) = dial.connect(upstream).await else {
            return false;
        };
        let preface: &[u8] = if self.proxy_v2 { &PROXY_V2_LOCAL } else { &[] };
        websocket(
            stream,
            upstream,
            &self.path,
            self.host.as_deref(),
            &self.limits,
            preface,
        )
        .await
        .unwrap_or(false)
    }
}

impl Probe for WebSocketProbe {
    fn probe<'a>(&'a self, upstream: &'a UpstreamAddr) -> ProbeFuture<'a> {
        Box::pin(self.check(upstream, Dial::default()))
    }

    #[cfg(feature = "rustls")]
    fn probe_tls<'a>(
        &'a self,
        upstream: &'a UpstreamAddr,
        tls: &'a crate::upstream_tls::UpstreamTls,
    ) -> ProbeFuture<'a> {
        let dial = Dial {
            tls: Some(tls),
            ..Dial::default()
        };
        Box::pin(self.check(upstream, dial))
    }
}

/// A WebSocket upgrade that must be answered by a valid 101, then a Close.
async fn websocket<S>(
    mut stream: S,
    addr: &UpstreamAddr,
    path: &str,
    host: Option<&str>,
    limits: &Limits,
    preface: &[u8],
) -> Option<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    // `localhost` for a Unix socket, whose path is no Host.
    let host = host.map_or_else(|| authority_of(addr).to_string(), str::to_owned);
    let request = Request::get(path)
        .header(HOST, host)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_KEY, key)
        .header(SEC_WEBSOCKET_VERSION, "13")
        .body(())
        .ok()?;
    let mut head = BytesMut::new();
    write_request_head(&request, &mut head);
    // Parsing our own head gives the RequestKind that classify_response
    // checks the 101 against (key, accept), with the crate's own rules.
    let Ok(Status::Complete(sent)) = parse_request(&mut head.clone(), limits) else {
        return None;
    };
    let mut out = BytesMut::from(preface);
    out.extend_from_slice(&head);
    stream.write_all(&out).await.ok()?;
    let mut buf = BytesMut::with_capacity(1024);
    // The scanner looks at each byte once; parsing waits for the blank line,
    // so a head that trickles in is not re-parsed on every read.
    let mut scanner = HeadScanner::response(*limits);
    let response = loop {
        if let Status::Complete(_) = scanner.scan(&buf).ok()? {
            if let Status::Complete(response) = parse_response(&mut buf, limits).ok()? {
                break response;
            }
        }
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return Some(false);
        }
    };
    // A subprotocol or extension the probe did not offer still completes
    // the upgrade (the key, Upgrade and Connection were checked first):
    // such a backend serves its real clients, which offer them.
    let switched = matches!(
        classify_response(sent.kind(), &response),
        Ok(ResponseKind::Switched)
            | Err(HandshakeError::Switch(
                SwitchError::Protocol | SwitchError::Extension
            ))
    );
    if switched {
        // RFC 6455 §5.5.1: a masked Close 1000 (client frames are masked,
        // §5.3), so the upstream logs a clean close rather than an abort.
        if let Ok(close) = CloseFrame::new(1000, "") {
            let _ = stream.write_all(&close.encode(Some(masking_key()))).await;
        }
    }
    let _ = stream.shutdown().await;
    Some(switched)
}
