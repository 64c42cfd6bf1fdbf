//! The tunnel layer's error.

use std::io;

use http::StatusCode;

use super::stats::{Side, Timeout};
use crate::frame::FrameError;

/// Why a tunnel failed: an I/O error on one side, a timeout, or a side that
/// broke WebSocket framing.
///
/// A tunnel reports it inside [`TunnelEnd`](super::TunnelEnd);
/// [`TunnelEnd::into_error`](super::TunnelEnd::into_error) turns an end into
/// this error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// Reading from a side failed.
    #[error("reading from the {side} failed")]
    Read {
        /// The side that was read.
        side: Side,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing, flushing or shutting down toward a side failed.
    #[error("writing to the {side} failed")]
    Write {
        /// The side that was written to.
        side: Side,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A timeout of the tunnel's configuration fired.
    #[error("tunnel ended by its {0}")]
    Timeout(Timeout),
    /// A side sent bytes that break WebSocket framing (RFC 6455 §5), seen
    /// by the frame tracker of [`TunnelConfig::track_frames`](super::TunnelConfig::track_frames).
    /// The offending bytes were not forwarded.
    #[error("the {side} broke websocket framing")]
    Framing {
        /// The side that sent the bytes.
        side: Side,
        /// The rule it broke.
        #[source]
        source: FrameError,
    },
}

impl TunnelError {
    /// The side the error happened on, if it was an I/O or framing error.
    pub fn side(&self) -> Option<Side> {
        match self {
            Self::Read { side, .. } | Self::Write { side, .. } | Self::Framing { side, .. } => {
                Some(*side)
            }
            Self::Timeout(_) => None,
        }
    }

    /// The HTTP status a proxy logs for this error: timeouts are 504 (as
    /// nginx logs an upstream timeout), upstream failures 502, client
    /// failures 400 (framing errors included).
    ///
    /// ```
    /// use http::StatusCode;
    /// use wsproxy::tunnel::{Side, Timeout, TunnelError};
    /// let err = TunnelError::Timeout(Timeout::Read(Side::Upstream));
    /// assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self.side() {
            None => StatusCode::GATEWAY_TIMEOUT,
            Some(Side::Upstream) => StatusCode::BAD_GATEWAY,
            Some(Side::Client) => StatusCode::BAD_REQUEST,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_blames_the_side() {
        let up = TunnelError::Read {
            side: Side::Upstream,
            source: io::ErrorKind::ConnectionReset.into(),
        };
        let client = TunnelError::Write {
            side: Side::Client,
            source: io::ErrorKind::BrokenPipe.into(),
        };
        assert_eq!(up.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(client.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            TunnelError::Timeout(Timeout::Idle).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(up.to_string(), "reading from the upstream failed");
        assert_eq!(
            TunnelError::Timeout(Timeout::Linger).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            TunnelError::Timeout(Timeout::Send(Side::Client)).to_string(),
            "tunnel ended by its send timeout toward the client"
        );
    }

    #[test]
    fn framing_error_blames_the_sender_and_keeps_the_rule() {
        let up = TunnelError::Framing {
            side: Side::Upstream,
            source: FrameError::MaskedServerFrame,
        };
        assert_eq!(up.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(up.side(), Some(Side::Upstream));
        assert_eq!(up.to_string(), "the upstream broke websocket framing");
        let source = std::error::Error::source(&up).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("masked frame from the server"));
        let client = TunnelError::Framing {
            side: Side::Client,
            source: FrameError::UnmaskedClientFrame,
        };
        assert_eq!(client.status(), StatusCode::BAD_REQUEST);
    }
}
