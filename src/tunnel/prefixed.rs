//! A stream that first replays bytes already read from it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project! {
    /// A stream that yields `prefix` before anything read from `inner`;
    /// writes go straight to `inner`.
    ///
    /// A handshake reader usually reads past the end of the HTTP head: the
    /// first WebSocket frames may sit in the same TCP segment. Wrapping the
    /// stream with those bytes hands them to the tunnel in order, so nothing
    /// is dropped or reordered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use bytes::Bytes;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// use wsproxy::tunnel::Prefixed;
    ///
    /// let (near, mut far) = tokio::io::duplex(64);
    /// far.write_all(b" world").await?;
    /// drop(far);
    /// let mut stream = Prefixed::new(Bytes::from_static(b"hello"), near);
    /// let mut all = String::new();
    /// stream.read_to_string(&mut all).await?;
    /// assert_eq!(all, "hello world");
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct Prefixed<S> {
        // Boxed, and `None` once read: an idle tunnel keeps one pointer per
        // side here instead of a 32-byte `Bytes`.
        prefix: Option<Box<Bytes>>,
        #[pin]
        inner: S,
    }
}

impl<S> Prefixed<S> {
    /// Wraps `inner` so that reads return `prefix` first.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        let prefix = (!prefix.is_empty()).then(|| Box::new(prefix));
        Self { prefix, inner }
    }

    /// The prefix bytes not yet read.
    pub fn prefix(&self) -> &[u8] {
        self.prefix.as_deref().map_or(&[], |b| &b[..])
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably. Reading from it directly skips the
    /// remaining prefix.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The unread prefix and the wrapped stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix.map_or_else(Bytes::new, |b| *b), self.inner)
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let Some(prefix) = this.prefix.as_deref_mut() else {
            return this.inner.poll_read(cx, buf);
        };
        let n = prefix.len().min(buf.remaining());
        buf.put_slice(&prefix[..n]);
        prefix.advance(n);
        if prefix.is_empty() {
            // Release the handshake buffer the prefix may share.
            *this.prefix = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_read_first_even_through_tiny_buffers() {
        let (near, mut far) = tokio::io::duplex(64);
        far.write_all(b"def").await.unwrap();
        drop(far);
        let mut s = Prefixed::new(Bytes::from_static(b"abc"), near);
        let mut out = Vec::new();
        let mut one = [0u8; 2];
        loop {
            let n = s.read(&mut one).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&one[..n]);
        }
        assert_eq!(out, b"abcdef");
        assert!(s.prefix().is_empty());
    }

    #[tokio::test]
    async fn writes_pass_through_untouched() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut s = Prefixed::new(Bytes::from_static(b"unread"), near);
        s.write_all(b"out").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"out");
        let (prefix, _inner) = s.into_parts();
        assert_eq!(prefix, Bytes::from_static(b"unread"));
    }
}
