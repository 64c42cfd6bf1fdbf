//! Relaying plain HTTP bodies: one body streamed from a source to a sink
//! with its framing checked as it passes, and a request body sent upstream
//! while listening for an early answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::head_io::{read_head_unbounded, write_all_timeout, READ_CHUNK};
use super::stream::UpstreamStream;
use super::Inner;
use crate::handshake::body::{BodyError, BodyKind, BodyScanner};
use crate::handshake::{self, ChunkedReframer, HeadScanner, RequestBodyError};

/// Why a body stopped short, by the side at fault.
pub(super) enum BodyCopyError {
    Framing(BodyError),
    /// A chunked request body the re-framer refused (400, 413).
    Refused(RequestBodyError),
    /// Reading the source failed or ended early.
    Read,
    /// The source sent nothing for the read timeout.
    ReadTimeout,
    /// Writing the destination failed or timed out.
    Write,
}

/// How sending a request body ended.
pub(super) enum BodySent {
    Whole(u64),
    /// The upstream refused the body (an error status) before it was
    /// through, or gave an answer whose framing is invalid.
    EarlyAnswer(Response<()>),
    /// The upstream answered without refusing before the body was through,
    /// and its answer went to the client while the body went on.
    Relayed {
        status: StatusCode,
        /// The answer's body: its bytes, or why it stopped.
        answered: Result<u64, BodyCopyError>,
        /// The request's body: its bytes, why it stopped, or `None` when
        /// the answer ended first and it was given up.
        sent: Option<Result<u64, BodyCopyError>>,
    },
    Framing(BodyError),
    Refused(RequestBodyError),
    ClientGone,
    /// The client sent no body byte for the read timeout (nginx
    /// `client_body_timeout`: 408).
    ClientTimedOut,
    UpstreamGone,
}

/// How [`copy_body`] walks a body.
pub(super) enum BodyWalk {
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
pub(super) async fn copy_body<R, W>(
    src: &mut R,
    dst: &mut W,
    pending: &mut BytesMut,
    mut walk: BodyWalk,
    read_timeout: Duration,
    send_timeout: Duration,
) -> Result<u64, BodyCopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    loop {
        match &mut walk {
            BodyWalk::Scan(scanner) if !pending.is_empty() => {
                let scan = scanner.scan(pending).map_err(BodyCopyError::Framing)?;
                let chunk = pending.split_to(scan.consumed);
                write_all_timeout(dst, &chunk, send_timeout)
                    .await
                    .map_err(|_| BodyCopyError::Write)?;
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
                        Ok(Err(_)) | Err(_) => return Err(BodyCopyError::Write),
                    }
                    pending.advance(consumed);
                    if let Some(e) = refused {
                        return Err(BodyCopyError::Refused(e));
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
            Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyCopyError::Read),
            Err(_) => return Err(BodyCopyError::ReadTimeout),
            Ok(Ok(_)) => {}
        }
    }
}
/// Streams the request body from the client (`client`, with what was read
/// past its head in `client_buf`) upstream while listening for an answer:
/// an upstream may answer before it has read the body (413, 401), and that
/// answer must reach the client rather than a reset.
///
/// An early answer without an error status (an upload's 200 sent at once,
/// a streaming echo) does not stop the body: RFC 9112 §9.5 stops a body
/// only for a server that refuses it. It goes to the client at once, its
/// head made by `head_of` (the rewrite, `None` for invalid framing), while
/// the body goes on: full duplex, as HAProxy relays, so an upstream that
/// answers as it reads is never stalled by a proxy holding its answer. Once
/// the answer has ended, what is left of the body is given up.
pub(super) async fn send_body<S, H>(
    inner: &Inner,
    client: &mut S,
    client_buf: &mut BytesMut,
    upstream: &mut UpstreamStream,
    up_buf: &mut BytesMut,
    body: BodyKind,
    head_of: H,
) -> BodySent
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: FnOnce(&mut Response<()>) -> Option<(BytesMut, BodyKind)> + Send,
{
    let limits = &inner.limits;
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut up_read, mut up_write) = upstream.split();
    let send = copy_body(
        &mut client_read,
        &mut up_write,
        client_buf,
        BodyWalk::request(body, inner.client_max_body_size),
        inner.timeouts.handshake,
        inner.timeouts.send,
    );
    // Set once the answer is on its way to the client: from then on the
    // exchange ends with the answer, not with the body.
    let relaying = AtomicBool::new(false);
    // Interim answers are dropped here: the proxy answered any
    // `Expect: 100-continue` itself.
    let listen = async {
        let mut response = loop {
            // No deadline of its own: the body's timeouts bound this.
            match read_head_unbounded(&mut up_read, up_buf, HeadScanner::response(*limits), |b| {
                handshake::parse_response(b, limits)
            })
            .await
            {
                Ok(r) if r.status().is_informational() => continue,
                Ok(r) => break r,
                Err(_) => return Heard::Nothing,
            }
        };
        if refuses_body(&response) {
            return Heard::Refusal(response);
        }
        let Some((head, kind)) = head_of(&mut response) else {
            return Heard::Refusal(response);
        };
        relaying.store(true, Ordering::Relaxed);
        let status = response.status();
        drop(response);
        let answered = match write_all_timeout(&mut client_write, &head, inner.timeouts.send).await
        {
            Ok(()) => {
                copy_body(
                    &mut up_read,
                    &mut client_write,
                    up_buf,
                    BodyWalk::Scan(BodyScanner::new(kind)),
                    inner.timeouts.read,
                    inner.timeouts.send,
                )
                .await
            }
            Err(_) => Err(BodyCopyError::Write),
        };
        Heard::Relayed { status, answered }
    };
    tokio::pin!(send, listen);
    let mut listening = true;
    let mut sent = None;
    loop {
        tokio::select! {
            biased;
            heard = &mut listen, if listening => match heard {
                Heard::Refusal(response) => return BodySent::EarlyAnswer(response),
                // A read error or close: the send side will see it too.
                Heard::Nothing => listening = false,
                Heard::Relayed { status, answered } => {
                    return BodySent::Relayed { status, answered, sent };
                }
            },
            done = &mut send, if sent.is_none() => {
                if relaying.load(Ordering::Relaxed) {
                    // The answer is under way: it ends the exchange.
                    sent = Some(done);
                    continue;
                }
                return match done {
                    Ok(n) => BodySent::Whole(n),
                    Err(BodyCopyError::Framing(e)) => BodySent::Framing(e),
                    Err(BodyCopyError::Refused(e)) => BodySent::Refused(e),
                    Err(BodyCopyError::Read) => BodySent::ClientGone,
                    Err(BodyCopyError::ReadTimeout) => BodySent::ClientTimedOut,
                    Err(BodyCopyError::Write) => BodySent::UpstreamGone,
                };
            },
        }
    }
}

/// What listening for an early answer came to.
enum Heard {
    /// The upstream's stream ended or failed before an answer.
    Nothing,
    /// An answer that stops the body, or one the caller must refuse.
    Refusal(Response<()>),
    /// An answer relayed to the client while the body went on.
    Relayed {
        status: StatusCode,
        answered: Result<u64, BodyCopyError>,
    },
}

/// True for an early answer that stops the request body: an error status,
/// by which the upstream declines what the body would be for.
fn refuses_body(response: &Response<()>) -> bool {
    response.status().is_client_error() || response.status().is_server_error()
}
