//! Socket options a server sets once on its listening socket, for every
//! connection it accepts to inherit, instead of one `setsockopt` per
//! connection.

use tokio::net::{TcpListener, TcpStream};

/// What the accepted sockets inherit from the listener.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inherited {
    nodelay: bool,
}

/// Sets on a socket not yet listening what its connections inherit:
/// `TCP_NODELAY`, and `TCP_QUICKACK` off, as HAProxy sets on its HTTP
/// listeners. Listeners made this way ([`crate::workers`]) need no
/// `setsockopt` per accepted socket on Linux.
///
/// With quick ACKs off, the kernel does not acknowledge the request head
/// on its own: the ACK rides on the 101 (or the error) the proxy answers
/// with, one packet fewer per WebSocket. The kernel leaves this mode by
/// itself once a delayed ACK finds nothing to ride on.
pub(crate) fn before_listen(socket: &socket2::Socket) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket.set_tcp_quickack(false);
        let _ = socket.set_tcp_nodelay(true);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

/// What the connections `listener` accepts inherit from it.
///
/// Linux copies a listener's options to each connection as its handshake
/// completes, so only a listener that had `TCP_NODELAY` before it listened
/// ([`before_listen`]) is trusted with it: connections already queued on a
/// listener given it later would run with Nagle's algorithm, and each
/// accepted socket then gets `TCP_NODELAY` of its own ([`Inherited::apply`]),
/// as on every other system. Quick ACKs are turned off here for the
/// connections still to come; one that misses it sends one ACK more.
pub(super) fn prepare(listener: &TcpListener) -> Inherited {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let socket = socket2::SockRef::from(listener);
        let _ = socket.set_tcp_quickack(false);
        Inherited {
            nodelay: socket.tcp_nodelay().unwrap_or(false),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = listener;
        Inherited { nodelay: false }
    }
}

impl Inherited {
    /// Sets on `stream` what it did not inherit.
    pub(super) fn apply(self, stream: &TcpStream) {
        if !self.nodelay {
            let _ = stream.set_nodelay(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener made by [`before_listen`], as `workers` makes its own.
    fn prepared_listener() -> TcpListener {
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        before_listen(&socket);
        socket.bind(&addr.into()).unwrap();
        socket.listen(8).unwrap();
        socket.set_nonblocking(true).unwrap();
        TcpListener::from_std(socket.into()).unwrap()
    }

    #[tokio::test]
    async fn accepted_sockets_get_nodelay_from_the_listener_or_their_own() {
        let listener = prepared_listener();
        let inherited = prepare(&listener);
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (accepted, _) = accepted.unwrap();
        inherited.apply(&accepted);
        assert!(accepted.nodelay().unwrap());
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // Inherited, with no call of its own.
            assert!(inherited.nodelay);
            assert!(!socket2::SockRef::from(&accepted).tcp_quickack().unwrap());
        }
    }

    /// A caller's listener may hold connections that completed before
    /// the server set anything on it: they inherited nothing.
    #[tokio::test]
    async fn connections_queued_on_a_callers_listener_get_nodelay_of_their_own() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let inherited = prepare(&listener);
        let (accepted, _) = listener.accept().await.unwrap();
        inherited.apply(&accepted);
        assert!(accepted.nodelay().unwrap());
    }
}
