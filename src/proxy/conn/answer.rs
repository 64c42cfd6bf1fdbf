//! Reading the upstream's answer head for the request loop: interim 1xx
//! answers relayed as they come, and the client watched meanwhile, so that
//! one that leaves frees the upstream (nginx's 499); and, when no answer
//! comes, whether the next upstream gets the request.

use bytes::BytesMut;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::super::connect::{may_retry, Tries};
use super::super::head_io::{client_gone, read_head, write_all_timeout, HeadRead};
use super::super::stream::UpstreamStream;
use super::{Admitted, Conn, Connected, Next};
use crate::handshake::body::BodyKind;
use crate::handshake::{self, HeadScanner, RequestKind, UpgradeAnswer};

/// Why no final answer head came.
pub(super) enum NoAnswer {
    /// The upstream's fault (a passive-health failure): answer with
    /// `status`, unless another upstream may take the request (`retry`).
    /// None may once an interim answer reached the client, nor after an
    /// invalid answer head ([`HeadRead::passes_on`]).
    Upstream { status: StatusCode, retry: bool },
    /// The client closed before the answer came, or relaying an interim
    /// answer to it failed.
    ClientGone,
}

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Reads the upstream's final answer head, relaying interim 1xx answers
    /// (other than 101) to the client as they come.
    pub(super) async fn read_answer(
        &mut self,
        upstream: &mut UpstreamStream,
        up_buf: &mut BytesMut,
        http10: bool,
        kind: &RequestKind,
    ) -> Result<UpgradeAnswer, NoAnswer> {
        let limits = &self.inner.limits;
        // An upgrade's 101 is checked and kept without a `HeaderMap`.
        let parse = |b: &mut BytesMut| match kind {
            RequestKind::WebSocket(upgrade) => handshake::parse_upgrade_answer(b, limits, upgrade),
            _ => Ok(match handshake::parse_response(b, limits)? {
                handshake::Status::Complete(r) => {
                    handshake::Status::Complete(UpgradeAnswer::Other(r))
                }
                handshake::Status::Partial => handshake::Status::Partial,
            }),
        };
        let mut relayed = false;
        // Bounded: a 1xx flood is still limited by the read timeout per head
        // and by this count.
        for _ in 0..8 {
            let deadline = Instant::now() + crate::clock::capped(self.inner.timeouts.read);
            let head = read_head(
                upstream,
                up_buf,
                deadline,
                HeadScanner::response(*limits),
                parse,
            );
            // The client may leave meanwhile (nginx
            // `proxy_ignore_client_abort off`): the upstream is let go.
            let answered = tokio::select! {
                biased;
                answered = head => answered,
                () = client_gone(&mut self.io, &mut self.buf, limits.max_head_bytes) => {
                    return Err(NoAnswer::ClientGone);
                }
            };
            // Matched as a temporary, whose storage ends with the
            // statement: a 101's head is then not kept across the interim
            // answer's write below.
            let response = match answered {
                Ok(UpgradeAnswer::Other(response)) => response,
                Ok(switched) => return Ok(switched),
                Err(e) => {
                    let status = match e {
                        HeadRead::Timeout => StatusCode::GATEWAY_TIMEOUT,
                        _ => StatusCode::BAD_GATEWAY,
                    };
                    let retry = !relayed && e.passes_on();
                    return Err(NoAnswer::Upstream { status, retry });
                }
            };
            let status = response.status();
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                // HTTP/1.0 clients cannot take interim answers (RFC 9110
                // §15.2).
                if http10 {
                    continue;
                }
                let mut response = response;
                crate::forward::strip_interim(response.headers_mut());
                let mut out = BytesMut::new();
                handshake::write_response_head(&response, &mut out);
                write_all_timeout(&mut self.io, &out, self.inner.timeouts.send)
                    .await
                    .map_err(|_| NoAnswer::ClientGone)?;
                relayed = true;
                continue;
            }
            return Ok(UpgradeAnswer::Other(response));
        }
        // Interim answers without end: as invalid as a bad head.
        let status = StatusCode::BAD_GATEWAY;
        Err(NoAnswer::Upstream {
            status,
            retry: false,
        })
    }

    /// After `connected`'s upstream failed the request with `status` (its
    /// head not taken, or no valid answer head in time): marks it, and
    /// hands the request back for the next upstream when it may be
    /// repeated ([`may_retry`]), or answers `status`.
    pub(super) async fn try_next(
        &mut self,
        connected: Connected,
        tried: &mut Tries,
        status: StatusCode,
    ) -> Result<Admitted, Next> {
        connected.lease.report_failure(Instant::now().into_std());
        tried.failed(connected.lease.id());
        let admitted = connected.admitted;
        let body = admitted.body != BodyKind::Empty;
        if may_retry(&self.inner, &admitted.method, body, tried) {
            return Ok(admitted);
        }
        let message = if status == StatusCode::GATEWAY_TIMEOUT {
            "upstream sent no valid answer"
        } else {
            "upstream closed"
        };
        Err(self.reject(status, message, None).await)
    }
}
