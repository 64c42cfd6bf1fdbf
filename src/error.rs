//! The crate-wide error: one variant per layer, each knowing its HTTP status.

use http::StatusCode;

use crate::handshake::HandshakeError;

/// Any error `wsproxy` reports, wrapping the error of the layer that failed.
///
/// Act on it through [`Error::status`] and by matching the layer, never by
/// matching message strings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No route for the request, or a path that cannot be routed safely.
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
    /// An I/O error outside any more specific layer.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// The forwarding policy refused the request (e.g. a foreign origin).
    #[error("request refused by the forwarding policy")]
    Forward(#[from] crate::forward::ForwardError),
    /// No upstream could be chosen.
    #[error("upstream selection failed")]
    Select(#[from] crate::balance::SelectError),
    /// No upstream could be connected; the socket's error is kept as the
    /// source.
    #[error("upstream connect failed")]
    Connect(#[from] crate::proxy::ConnectError),
    /// The tunnel failed: an I/O error on one side or a timeout.
    #[error("tunnel failed")]
    Tunnel(#[from] crate::tunnel::TunnelError),
    /// A request or response head was invalid (400, 426, 431 or 502).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A WebSocket stream broke framing rules (RFC 6455 §5), as seen by a
    /// [`FrameTracker`](crate::frame::FrameTracker) used directly; inside a
    /// tunnel it arrives as [`Error::Tunnel`].
    #[error("websocket framing error")]
    Frame(#[from] crate::frame::FrameError),
}

impl Error {
    /// The HTTP status a proxy answers with when this error ends a request.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Route(e) => e.status(),
            Self::Io(_) => StatusCode::BAD_GATEWAY,
            Self::Forward(e) => e.status(),
            Self::Select(e) => e.status(),
            Self::Connect(e) => e.status(),
            Self::Tunnel(e) => e.status(),
            Self::Handshake(e) => e.status(),
            Self::Frame(e) => e.status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_error_keeps_its_status_and_source() {
        let e = Error::from(crate::balance::SelectError::NoneAvailable);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn io_error_converts_to_502_and_keeps_its_source() {
        let e = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(e, Error::Io(_)));
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn connect_error_keeps_its_status_and_io_source() {
        let e = Error::from(crate::proxy::ConnectError::Io {
            upstream: std::net::SocketAddr::from(([127, 0, 0, 1], 9)).into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let connect = std::error::Error::source(&e).unwrap();
        let io = std::error::Error::source(connect).unwrap();
        assert!(io.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn frame_error_keeps_its_status_and_source() {
        let e = Error::from(crate::frame::FrameError::FragmentedControl);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(std::error::Error::source(&e).is_some());
    }
}
