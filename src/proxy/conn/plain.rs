//! The plain (non-upgrade) answers of the request loop: the upstream's
//! answer relayed with its body, and the proxy's own answer to an accepted
//! CORS preflight.

use std::sync::Arc;

use bytes::BytesMut;
use http::header::CONNECTION;
use http::{HeaderValue, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::head_io::write_all_timeout;
use super::super::relay::{copy_body, BodyCopyError, BodyWalk};
use super::super::stream::UpstreamStream;
use super::super::Outcome;
use super::{Conn, Next};
use crate::handshake;
use crate::handshake::body::{BodyKind, BodyScanner};

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Answers a CORS preflight the policy accepted (204) or refused.
    pub(super) async fn answer_preflight(
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

    /// Relays a plain answer and its body to the client.
    pub(super) async fn relay(
        &mut self,
        mut response: Response<()>,
        method: &Method,
        mut upstream: UpstreamStream,
        mut up_buf: BytesMut,
        keep_alive: bool,
        outcome: Outcome,
    ) -> Next {
        let inner = Arc::clone(&self.inner);
        let Some((body, keep_alive)) = prepare_answer(&mut response, method, keep_alive) else {
            return self
                .reject(
                    StatusCode::BAD_GATEWAY,
                    "upstream answer has invalid framing",
                    None,
                )
                .await;
        };
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
        // Boxed, as the request body's copy is, to keep a plain answer's
        // copy state out of every connection's future.
        let copied = Box::pin(copy_body(
            &mut upstream,
            &mut self.io,
            &mut up_buf,
            BodyWalk::Scan(BodyScanner::new(body)),
            inner.timeouts.read,
            inner.timeouts.send,
        ))
        .await;
        match copied {
            Ok(n) => {
                inner.counters.bytes(0, n);
                self.report.body_from_upstream += n;
                self.finish(outcome);
                if keep_alive {
                    // The next request's head reads into the room left,
                    // as it would have with the buffer lent for this one.
                    if self.buf.is_empty() && up_buf.is_empty() {
                        self.buf = up_buf;
                    }
                    Next::KeepAlive
                } else {
                    Next::Close
                }
            }
            // The head is out: the only honest signal left is closing.
            Err(e) => {
                self.finish(broken_answer(&e));
                Next::Close
            }
        }
    }
}

/// How an exchange ended whose answer's body broke off after its head went
/// out: the client's fault if writing to it failed, else the upstream's.
pub(super) fn broken_answer(e: &BodyCopyError) -> Outcome {
    match e {
        BodyCopyError::Write => Outcome::Abandoned,
        _ => Outcome::UpstreamFailed,
    }
}

/// Readies a plain answer's head for the client: how its body is framed
/// (`None` when the framing is invalid, a 502) and whether the connection
/// stays open, which the head then says.
pub(super) fn prepare_answer(
    response: &mut Response<()>,
    method: &Method,
    keep_alive: bool,
) -> Option<(BodyKind, bool)> {
    let body = BodyKind::of_response(method, response.status(), response.headers()).ok()?;
    let keep_alive = keep_alive && body != BodyKind::UntilClose;
    if let BodyKind::Length(n) = body {
        // Equal repeats (`2, 2`, or two fields) passed the check; the
        // client gets the one value (RFC 9110 §8.6), as some clients refuse
        // repeats.
        let headers = response.headers();
        let lengths = headers.get_all(http::header::CONTENT_LENGTH);
        if lengths.iter().count() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    // The policy marks plain answers `Connection: close`, which is right
    // toward the one-request upstream connection; toward the client,
    // keep-alive is decided here.
    let headers = response.headers_mut();
    if keep_alive {
        headers.remove(CONNECTION);
    } else {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Some((body, keep_alive))
}
