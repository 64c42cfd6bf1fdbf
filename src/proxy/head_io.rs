//! Head I/O: reading an HTTP head from either peer within its deadline,
//! writing under the send timeout, and handing the bytes read past a head
//! on to the tunnel.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use crate::handshake::{HandshakeError, HeadScanner, Status};

/// Room reserved in a read buffer before each read.
pub(super) const READ_CHUNK: usize = 8 * 1024;

/// A head is read into the room a buffer already has while there is at
/// least this much: the tail of the client's buffer left by its head then
/// takes the upstream's answer too, with no second buffer allocated.
const MIN_ROOM: usize = 2 * 1024;

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

impl<E> HeadRead<E> {
    /// Whether an answer head that failed so lets the next upstream take
    /// the request: a closed, broken or silent upstream does (nginx's
    /// default `proxy_next_upstream error timeout`), an invalid head does
    /// not (that takes `invalid_header`).
    pub(super) fn passes_on(&self) -> bool {
        !matches!(self, Self::Parse(_))
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

/// Reads until `parse` completes a head, all within `deadline`.
pub(super) async fn read_head<R, T, E>(
    io: &mut R,
    buf: &mut BytesMut,
    deadline: Instant,
    scanner: HeadScanner,
    parse: impl FnMut(&mut BytesMut) -> Result<Status<T>, E>,
) -> Result<T, HeadRead<E>>
where
    R: AsyncRead + Unpin,
    E: From<HandshakeError>,
{
    timeout_at(deadline, read_head_unbounded(io, buf, scanner, parse))
        .await
        .unwrap_or(Err(HeadRead::Timeout))
}

/// Reads until `parse` completes a head; the caller bounds the wait.
///
/// The parser only runs once `scanner` has seen the blank line that ends a
/// head, so a head trickling in byte by byte costs linear time, not
/// quadratic; the scanner also refuses at once what is too large or can
/// never be a request.
pub(super) async fn read_head_unbounded<R, T, E>(
    io: &mut R,
    buf: &mut BytesMut,
    mut scanner: HeadScanner,
    mut parse: impl FnMut(&mut BytesMut) -> Result<Status<T>, E>,
) -> Result<T, HeadRead<E>>
where
    R: AsyncRead + Unpin,
    E: From<HandshakeError>,
{
    loop {
        let scanned = scanner.scan(buf).map_err(|e| HeadRead::Parse(e.into()))?;
        if scanned.is_complete() {
            match parse(buf).map_err(HeadRead::Parse)? {
                Status::Complete(head) => return Ok(head),
                Status::Partial => {}
            }
        }
        if buf.capacity() - buf.len() < MIN_ROOM {
            buf.reserve(READ_CHUNK);
        }
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

/// Resolves once the client has closed its connection (or it failed), for
/// racing against the wait for the upstream's answer: nginx ends such a
/// request (499) rather than keep the upstream busy for nobody. What the
/// client sends meanwhile (pipelined requests, early WebSocket frames) is
/// kept in `buf`, up to `limit` bytes; past that it is no longer read, and
/// TCP holds the client back.
pub(super) fn client_gone<'a, R>(
    io: &'a mut R,
    buf: &'a mut BytesMut,
    limit: usize,
) -> impl std::future::Future<Output = ()> + 'a
where
    R: AsyncRead + Unpin,
{
    std::future::poll_fn(move |cx| loop {
        if buf.len() >= limit {
            return std::task::Poll::Pending;
        }
        // On the stack for this poll only: the connection's future, and
        // every request's allocations, stay as they were.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 512];
        let mut read = tokio::io::ReadBuf::uninit(&mut chunk);
        match std::pin::Pin::new(&mut *io).poll_read(cx, &mut read) {
            std::task::Poll::Ready(Ok(())) if read.filled().is_empty() => {
                return std::task::Poll::Ready(())
            }
            std::task::Poll::Ready(Ok(())) => buf.extend_from_slice(read.filled()),
            std::task::Poll::Ready(Err(_)) => return std::task::Poll::Ready(()),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        }
    })
}

/// Writes all of `bytes` unless a write makes no progress for `limit`
/// (nginx `send_timeout`), which fails as `TimedOut`.
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

#[cfg(test)]
mod tests {
    use super::*;

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
