//! The bodies of proxied plain requests: the client's, streamed upstream
//! under `client_max_body_size`, and the upstream's, streamed back under the
//! read timeout. Both count their bytes as they pass.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use http::StatusCode;

use crate::balance::Lease;
use crate::proxy::{Exchange, Outcome};

/// The error type of the bodies the service streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a [`ProxyService`](super::ProxyService) answer: the
/// upstream's body streamed as it arrives, or the short text of an answer
/// the proxy made itself.
///
/// Between two frames of an upstream body at most the proxy's read timeout
/// passes (nginx `proxy_read_timeout`); after it the body ends with an
/// error, which the host's server turns into a cut connection.
///
/// ```
/// use http_body::Body as _;
/// use wsproxy::service::ProxyBody;
///
/// let body = ProxyBody::from(bytes::Bytes::from_static(b"no route\n"));
/// assert_eq!(body.size_hint().exact(), Some(9));
/// ```
pub struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<Download>),
}

impl ProxyBody {
    /// An empty body (the 101 of an upgrade).
    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    /// The upstream's answer body, finishing `exchange` when it ends.
    pub(crate) fn upstream(mut download: Download, exchange: Exchange) -> Self {
        download.exchange = Some(exchange);
        Self {
            kind: Kind::Upstream(Box::new(download)),
        }
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Upstream(_) => "upstream",
        };
        f.debug_struct("ProxyBody").field("kind", &kind).finish()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(download) => download.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(download) => download.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(download) => download.body.size_hint(),
        }
    }
}

/// An upstream answer's body on its way to the client.
pub(crate) struct Download {
    body: hyper::body::Incoming,
    idle: Pin<Box<Sleep>>,
    read_timeout: Duration,
    /// Held until the body ends: `least_conn` counts the request in flight.
    _lease: Lease,
    upload: Arc<UploadState>,
    status: StatusCode,
    /// The request's accounting, finished when the body ends; a body
    /// dropped before counts abandoned, as `Server` counts a client that
    /// went away.
    exchange: Option<Exchange>,
}

impl Download {
    /// `body`, at most `read_timeout` apart between frames.
    pub(crate) fn new(
        body: hyper::body::Incoming,
        read_timeout: Duration,
        lease: Lease,
        upload: Arc<UploadState>,
        status: StatusCode,
    ) -> Self {
        Self {
            body,
            idle: Box::pin(tokio::time::sleep(read_timeout)),
            read_timeout,
            _lease: lease,
            upload,
            status,
            exchange: None,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exchange.is_none() || self.body.is_end_stream()
    }

    /// Finishes the request's accounting once.
    fn end(&mut self, outcome: Outcome) {
        if let Some(mut exchange) = self.exchange.take() {
            exchange.body_from_client(self.upload.sent());
            let status = (outcome != Outcome::Abandoned).then_some(self.status);
            exchange.finish(outcome, status);
            exchange.end();
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(exchange) = self.exchange.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    exchange.body_from_upstream(data.len() as u64);
                }
                // A server that knows the length stops polling after the
                // last byte: the body ends here, not at a `None` never asked for.
                if self.body.is_end_stream() {
                    self.end(Outcome::Proxied);
                } else {
                    let next = Instant::now() + crate::clock::capped(self.read_timeout);
                    self.idle.as_mut().reset(next);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.end(Outcome::Proxied);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.end(Outcome::UpstreamFailed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                ready!(self.idle.as_mut().poll(cx));
                self.end(Outcome::UpstreamFailed);
                Poll::Ready(Some(Err("upstream body timed out".into())))
            }
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        // An empty body (204, HEAD) is never polled.
        let outcome = if self.body.is_end_stream() {
            Outcome::Proxied
        } else {
            Outcome::Abandoned
        };
        self.end(outcome);
    }
}

/// How the client's body stream ended, when it did not end well.
#[derive(Debug, Default)]
pub(crate) struct UploadState {
    /// 0 running or whole, [`TOO_LARGE`], [`CLIENT_FAILED`].
    fault: AtomicU8,
    /// Body bytes sent upstream.
    sent: AtomicU64,
    /// Woken by every frame that passes: the answer's deadline restarts.
    pub(crate) progress: Notify,
}

const TOO_LARGE: u8 = 1;
const CLIENT_FAILED: u8 = 2;

impl UploadState {
    /// The body went over `client_max_body_size`.
    pub(crate) fn too_large(&self) -> bool {
        self.fault.load(Ordering::Relaxed) == TOO_LARGE
    }

    /// Body bytes sent upstream so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Reading the client's body failed.
    pub(crate) fn client_failed(&self) -> bool {
        self.fault.load(Ordering::Relaxed) == CLIENT_FAILED
    }
}

/// A client's request body on its way upstream.
pub(crate) struct Upload {
    body: UnsyncBoxBody<Bytes, BoxError>,
    /// nginx `client_max_body_size`; 0: no limit.
    limit: u64,
    seen: u64,
    state: Arc<UploadState>,
}

impl Upload {
    /// `body`, counted against `limit` (0: none) into `state`.
    pub(crate) fn new(
        body: UnsyncBoxBody<Bytes, BoxError>,
        limit: u64,
        state: Arc<UploadState>,
    ) -> Self {
        Self {
            body,
            limit,
            seen: 0,
            state,
        }
    }

    /// A host's request body, in the one type every try sends.
    pub(crate) fn boxed<B>(body: B) -> UnsyncBoxBody<Bytes, BoxError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt as _;
        body.map_frame(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
            .map_err(Into::into)
            .boxed_unsync()
    }

    /// No body: what a request sends again on the next upstream (only a
    /// request without one goes out again).
    pub(crate) fn empty() -> UnsyncBoxBody<Bytes, BoxError> {
        Self::boxed(http_body_util::Empty::<Bytes>::new())
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.seen += n;
                    // nginx refuses with 413 once the body passes the limit;
                    // the upstream gets a cut request, never the excess.
                    if this.limit != 0 && this.seen > this.limit {
                        this.state.fault.store(TOO_LARGE, Ordering::Relaxed);
                        return Poll::Ready(Some(Err("request body too large".into())));
                    }
                    this.state.sent.fetch_add(n, Ordering::Relaxed);
                }
                this.state.progress.notify_one();
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.state.fault.store(CLIENT_FAILED, Ordering::Relaxed);
                Poll::Ready(Some(Err(e)))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
