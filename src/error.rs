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
    /// An I/O error outside any more specific layer.
    #[error("i/o error")]
    Io(#[source] std::io::Error),
    /// A request or response head was invalid (400, 426, 431 or 502).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

impl Error {
    /// The HTTP status a proxy answers with when this error ends a request.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Io(_) => StatusCode::BAD_GATEWAY,
            Self::Handshake(e) => e.status(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}
