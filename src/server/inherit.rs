//! Socket options a server sets once on its listening socket, for every
//! connection it accepts to inherit, instead of one `setsockopt` per
//! connection.

use tokio::net::{TcpListener, TcpStream};

/// What the accepted sockets inherit from the listener.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inherited {
    nodelay: bool,
}

/// Sets `TCP_NODELAY` and turns `TCP_QUICKACK` off on `listener`, as
/// HAProxy does on its HTTP listeners.
///
/// With quick ACKs off, the kernel does not acknowledge the request head
/// on its own: the ACK rides on the 101 (or the error) the proxy answers
/// with, one packet fewer per WebSocket. The kernel leaves this mode by
/// itself once a delayed ACK finds nothing to ride on.
///
/// Linux copies both options to every socket `accept` returns; elsewhere
/// each accepted socket still gets `TCP_NODELAY` of its own
/// ([`Inherited::apply`]).
pub(super) fn prepare(listener: &TcpListener) -> Inherited {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let socket = socket2::SockRef::from(listener);
        let _ = socket.set_tcp_quickack(false);
        Inherited {
            nodelay: socket.set_tcp_nodelay(true).is_ok(),
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

    #[tokio::test]
    async fn accepted_sockets_get_nodelay_from_the_listener_or_their_own() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
}
