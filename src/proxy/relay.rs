//! Relaying plain HTTP bodies: one body streamed from a source to a sink
//! with its framing checked as it passes, and a request body sent upstream
//! while listening for an early answer.

use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::Response;
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
    /// The whole body went up after the upstream had answered, without an
    /// error, before it was through.
    WholeAfterAnswer(u64, Response<()>),
    /// The upstream refused the body (an error status) before it was
    /// through, or answered and then stopped reading it.
    EarlyAnswer(Response<()>),
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
/// only for a server that refuses it. It is held until the body is through,
/// as nginx holds answers until it has the whole request body
/// (`proxy_request_buffering on`), and up to [`ANSWER_READ_AHEAD`] of what
/// follows its head is read meanwhile, so that an upstream writing its
/// answer as it reads is not stalled by a full socket. Past that (and the
/// socket buffers) such an upstream stops reading and the body's write
/// times out: relaying the answer while the body is still sent is what
/// would lift the limit.
pub(super) async fn send_body<S>(
    inner: &Inner,
    client: &mut S,
    client_buf: &mut BytesMut,
    upstream: &mut UpstreamStream,
    up_buf: &mut BytesMut,
    body: BodyKind,
) -> BodySent
where
    S: AsyncRead + Unpin,
{
    let limits = &inner.limits;
    let (mut up_read, mut up_write) = upstream.split();
    let send = copy_body(
        client,
        &mut up_write,
        client_buf,
        BodyWalk::request(body, inner.client_max_body_size),
        inner.timeouts.handshake,
        inner.timeouts.send,
    );
    // A non-error answer waits here for the body to be through (a mutex
    // only because the connection's future must be `Send`; never contended).
    let held: Mutex<Option<Response<()>>> = Mutex::new(None);
    // Interim answers are dropped here: the proxy answered any
    // `Expect: 100-continue` itself.
    let listen = async {
        let response = loop {
            // No deadline of its own: the body's timeouts bound this.
            match read_head_unbounded(&mut up_read, up_buf, HeadScanner::response(*limits), |b| {
                handshake::parse_response(b, limits)
            })
            .await
            {
                Ok(r) if r.status().is_informational() => continue,
                Ok(r) => break r,
                Err(_) => return None,
            }
        };
        if refuses_body(&response) {
            return Some(response);
        }
        if let Ok(mut held) = held.lock() {
            *held = Some(response);
        }
        // Bounded by the read-ahead; then the upstream waits on its socket.
        while up_buf.len() < ANSWER_READ_AHEAD {
            up_buf.reserve(READ_CHUNK);
            if !matches!(up_read.read_buf(up_buf).await, Ok(n) if n > 0) {
                break;
            }
        }
        std::future::pending().await
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
            sent = &mut send => return match (sent, held.lock().ok().and_then(|mut h| h.take())) {
                (Ok(n), None) => BodySent::Whole(n),
                (Ok(n), Some(answer)) => BodySent::WholeAfterAnswer(n, answer),
                // It answered and stopped reading: the answer still goes out.
                (Err(BodyCopyError::Write), Some(answer)) => BodySent::EarlyAnswer(answer),
                (Err(BodyCopyError::Framing(e)), _) => BodySent::Framing(e),
                (Err(BodyCopyError::Refused(e)), _) => BodySent::Refused(e),
                (Err(BodyCopyError::Read), _) => BodySent::ClientGone,
                (Err(BodyCopyError::ReadTimeout), _) => BodySent::ClientTimedOut,
                (Err(BodyCopyError::Write), None) => BodySent::UpstreamGone,
            },
        }
    }
}

/// How much of a held early answer is read ahead of the request body's
/// end (nginx `proxy_buffers` default, 8 × 8 KiB, in memory).
pub(super) const ANSWER_READ_AHEAD: usize = 64 * 1024;

/// True for an early answer that stops the request body: an error status,
/// by which the upstream declines what the body would be for.
fn refuses_body(response: &Response<()>) -> bool {
    response.status().is_client_error() || response.status().is_server_error()
}
