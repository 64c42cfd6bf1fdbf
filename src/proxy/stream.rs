//! The upstream side of a proxied connection as one type: plain TCP, a Unix
//! socket, or TLS (feature `rustls`), and the dial that opens it around the
//! one TCP connect ([`connect_addr`]) requests and health checks share.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::connect::connect_addr;
use super::{TcpKeepalive, UpstreamGroup};
use crate::balance::UpstreamAddr;
#[cfg(feature = "rustls")]
use crate::upstream_tls::UpstreamTls;

/// An open upstream connection.
///
/// Only the TCP variant is held inline: the others are boxed so that an
/// idle tunnel over plain TCP, the common case, costs no more than it did
/// when this was a bare `TcpStream` (the tag fits in a niche of it).
#[derive(Debug)]
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(Box<tokio::net::UnixStream>),
    #[cfg(feature = "rustls")]
    Tls(Box<tokio_rustls::client::TlsStream<UpstreamStream>>),
}

/// How a connection reaches its upstream beyond the address: the socket
/// options a TCP connection gets and, for a TLS group, its configuration.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dial<'a> {
    /// Set on TCP connections ([`ProxyBuilder::tcp_keepalive`](super::ProxyBuilder::tcp_keepalive)).
    pub(crate) keepalive: Option<TcpKeepalive>,
    #[cfg(feature = "rustls")]
    pub(crate) tls: Option<&'a UpstreamTls>,
    #[cfg(not(feature = "rustls"))]
    pub(crate) tls: Option<&'a std::convert::Infallible>,
}

impl UpstreamGroup {
    /// How this group's upstreams are reached, with `keepalive` on TCP.
    pub(crate) fn dial(&self, keepalive: Option<TcpKeepalive>) -> Dial<'_> {
        Dial {
            keepalive,
            #[cfg(feature = "rustls")]
            tls: self.tls.as_ref(),
            #[cfg(not(feature = "rustls"))]
            tls: None,
        }
    }
}

impl Dial<'_> {
    /// Connects to `addr` (a TCP connect, or a Unix socket's), then does
    /// the TLS handshake when the dial says TLS; the caller bounds the
    /// whole of it, as nginx's `proxy_connect_timeout` bounds the connect
    /// and the SSL handshake together.
    pub(crate) async fn connect(self, addr: &UpstreamAddr) -> io::Result<UpstreamStream> {
        self.open(addr)
            .await
            .inspect_err(super::connect::note_local)
    }

    async fn open(self, addr: &UpstreamAddr) -> io::Result<UpstreamStream> {
        let plain = match addr.as_unix_path() {
            Some(path) => connect_unix(path).await?,
            None => {
                let stream = connect_addr(addr).await?;
                if let Some(keepalive) = self.keepalive {
                    if let Err(e) = keepalive.apply(&stream) {
                        tracing::debug!(error = %e, "tcp keepalive refused");
                    }
                }
                UpstreamStream::Tcp(stream)
            }
        };
        match self.tls {
            #[cfg(feature = "rustls")]
            Some(tls) => tls.handshake(addr, plain).await,
            #[cfg(not(feature = "rustls"))]
            Some(never) => match *never {},
            None => Ok(plain),
        }
    }
}

#[cfg(unix)]
async fn connect_unix(path: &std::path::Path) -> io::Result<UpstreamStream> {
    let stream = tokio::net::UnixStream::connect(path).await?;
    Ok(UpstreamStream::Unix(Box::new(stream)))
}

#[cfg(not(unix))]
async fn connect_unix(path: &std::path::Path) -> io::Result<UpstreamStream> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "unix socket upstream {} on a target without unix sockets",
            path.display()
        ),
    ))
}

impl UpstreamStream {
    /// Splits into a read and a write half borrowed from the stream, for a
    /// request body sent while the answer is read. TCP and Unix halves are
    /// the socket's own (no lock, no allocation); TLS, one session for both
    /// directions, goes through tokio's locked split.
    pub(crate) fn split(&mut self) -> (UpstreamRead<'_>, UpstreamWrite<'_>) {
        match self {
            Self::Tcp(s) => {
                let (r, w) = s.split();
                (UpstreamRead::Tcp(r), UpstreamWrite::Tcp(w))
            }
            #[cfg(unix)]
            Self::Unix(s) => {
                let (r, w) = s.split();
                (UpstreamRead::Unix(r), UpstreamWrite::Unix(w))
            }
            #[cfg(feature = "rustls")]
            Self::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
        }
    }
}

/// Forwards one `AsyncRead`/`AsyncWrite` call to whichever variant `$this`
/// holds.
macro_rules! each {
    ($this:expr, $s:ident => $call:expr) => {
        match $this {
            Self::Tcp($s) => $call,
            #[cfg(unix)]
            Self::Unix($s) => $call,
            #[cfg(feature = "rustls")]
            Self::Tls($s) => $call,
        }
    };
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The read half of [`UpstreamStream::split`].
pub(crate) enum UpstreamRead<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    #[cfg(unix)]
    Unix(tokio::net::unix::ReadHalf<'a>),
    #[cfg(feature = "rustls")]
    Tls(tokio::io::ReadHalf<&'a mut tokio_rustls::client::TlsStream<UpstreamStream>>),
}

/// The write half of [`UpstreamStream::split`].
pub(crate) enum UpstreamWrite<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    #[cfg(unix)]
    Unix(tokio::net::unix::WriteHalf<'a>),
    #[cfg(feature = "rustls")]
    Tls(tokio::io::WriteHalf<&'a mut tokio_rustls::client::TlsStream<UpstreamStream>>),
}

impl AsyncRead for UpstreamRead<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamWrite<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle tunnels hold one of these each: the boxed variants must not
    /// make a plain TCP upstream any larger than the socket itself.
    #[test]
    fn a_tcp_upstream_costs_no_more_than_its_socket() {
        let (stream, socket) = (
            std::mem::size_of::<UpstreamStream>(),
            std::mem::size_of::<TcpStream>(),
        );
        println!("upstream stream {stream} bytes, tcp stream {socket} bytes");
        assert!(stream <= socket, "{stream} > {socket}");
    }
}
