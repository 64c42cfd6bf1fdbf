//! The proxy's own streams write a direction's last bytes with `MSG_MORE`,
//! so that the shutdown right after sends them and the FIN in one TCP
//! segment: the closing frame a peer sends with its FIN reaches the other
//! peer as one segment too, not two, as HAProxy forwards it.
//!
//! The tunnel is generic over its streams; which of them is a TCP socket
//! is known here, where the types are the server's: a client stream that
//! is a bare `TcpStream`, and the plain TCP upstream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
#[cfg(any(target_os = "linux", target_os = "android"))]
use tokio::net::TcpStream;

use super::stream::UpstreamStream;
use crate::tunnel::{LastWrite, Prefixed};

/// The [`LastWrite`] of a proxied tunnel's streams.
#[derive(Debug)]
pub(crate) struct Sockets;

impl<S: AsyncWrite + Unpin + 'static> LastWrite<Prefixed<S>> for Sockets {
    fn poll_write_last(
        writer: &mut Prefixed<S>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(tcp) = tcp_of(writer.get_mut()) {
            return poll_send_more(tcp, cx, buf);
        }
        Pin::new(writer).poll_write(cx, buf)
    }

    fn closes_on_drop(writer: &Prefixed<S>) -> bool {
        let stream: &dyn std::any::Any = writer.get_ref();
        stream.is::<tokio::net::TcpStream>()
            || matches!(
                stream.downcast_ref::<UpstreamStream>(),
                Some(UpstreamStream::Tcp(_))
            )
    }
}

/// The TCP socket a stream is, if it is one.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn tcp_of(stream: &mut dyn std::any::Any) -> Option<&TcpStream> {
    if let Some(tcp) = stream.downcast_ref::<TcpStream>() {
        return Some(tcp);
    }
    match stream.downcast_ref::<UpstreamStream>() {
        Some(UpstreamStream::Tcp(tcp)) => Some(tcp),
        _ => None,
    }
}

/// `send(MSG_MORE)`: the kernel holds the bytes for what follows, here the
/// shutdown's FIN or the close's (either sends them at once).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn poll_send_more(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    use tokio::io::Interest;
    const FLAGS: std::ffi::c_int = libc::MSG_MORE | libc::MSG_NOSIGNAL;
    // As tokio's own write: wait for writability, try, and on WouldBlock
    // (which clears the readiness) wait again, until the reactor says
    // pending.
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        let sent = tcp.try_io(Interest::WRITABLE, || {
            socket2::SockRef::from(tcp).send_with_flags(buf, FLAGS)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            sent => return Poll::Ready(sent),
        }
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// The server's client stream and the plain upstream are found as TCP
    /// sockets (were they not, every last write would silently be a plain
    /// one), and bytes sent with `MSG_MORE` arrive once the shutdown
    /// follows.
    #[tokio::test]
    async fn the_proxys_tcp_streams_send_their_last_bytes_with_the_fin() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut client = Prefixed::new(Bytes::new(), accepted.unwrap().0);
        let mut upstream = Prefixed::new(Bytes::new(), UpstreamStream::Tcp(connected.unwrap()));
        assert!(tcp_of(client.get_mut()).is_some());
        assert!(tcp_of(upstream.get_mut()).is_some());
        let (mut other, _) = tokio::io::duplex(64);
        assert!(tcp_of(&mut other).is_none());
        // Only the sockets the tunnel owns skip their last shutdown.
        assert!(<Sockets as LastWrite<_>>::closes_on_drop(&client));
        assert!(<Sockets as LastWrite<_>>::closes_on_drop(&upstream));
        let other = Prefixed::new(Bytes::new(), other);
        assert!(!<Sockets as LastWrite<_>>::closes_on_drop(&other));

        let sent =
            std::future::poll_fn(|cx| Sockets::poll_write_last(&mut client, cx, b"bye")).await;
        assert_eq!(sent.unwrap(), 3);
        client.shutdown().await.unwrap();
        let UpstreamStream::Tcp(peer) = upstream.get_mut() else {
            unreachable!()
        };
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            peer.read_to_end(&mut got),
        );
        read.await.unwrap().unwrap();
        assert_eq!(got, b"bye");
    }
}
