//! The crate-wide error: one variant per layer, each knowing its HTTP status.

use http::StatusCode;

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
    /// The forwarding policy refused the request (e.g. a foreign origin).
    #[error("request refused by the forwarding policy")]
    Forward(#[from] crate::forward::ForwardError),
}

impl Error {
    /// The HTTP status a proxy answers with when this error ends a request.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Io(_) => StatusCode::BAD_GATEWAY,
            Self::Forward(e) => e.status(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::ForwardError;

    #[test]
    fn forward_error_keeps_its_status_and_source() {
        let e = Error::from(ForwardError::OriginNotAllowed {
            origin: "https://evil.example".into(),
        });
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(e.to_string(), "request refused by the forwarding policy");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("origin `https://evil.example` is not allowed")
        );
    }
}
