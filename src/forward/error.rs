//! The forwarding layer's errors: [`ForwardError`] at run time and
//! [`ForwardConfigError`] when a policy is built.

use http::StatusCode;

/// A request the forwarding policy refuses to forward.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::ForwardError;
///
/// let e = ForwardError::OriginNotAllowed { origin: "https://evil.example".into() };
/// assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
/// assert_eq!(e.to_string(), "origin `https://evil.example` is not allowed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// A WebSocket upgrade whose `Origin` is outside the allowlist
    /// (cross-site WebSocket hijacking, RFC 6455 §10.2).
    #[error("origin `{origin}` is not allowed")]
    OriginNotAllowed {
        /// The refused `Origin` value, lossily decoded.
        origin: String,
    },
}

impl ForwardError {
    /// The HTTP status a proxy answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::OriginNotAllowed { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// A forwarding configuration refused by
/// [`ForwardPolicyBuilder::build`](super::ForwardPolicyBuilder::build).
///
/// Configuration is checked once, when the policy is built, so a bad header
/// can never reach the wire at run time. It has no `status()`: it never
/// reaches a client, only the operator starting the proxy.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::{ForwardPolicy, ForwardConfigError};
///
/// let built = ForwardPolicy::builder().set_request_header("X-Tag", "a\r\nb").build();
/// assert!(matches!(built, Err(ForwardConfigError::InvalidHeaderValue { .. })));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardConfigError {
    /// A configured header name is not an RFC 9110 token.
    #[error("invalid header name `{name}`")]
    InvalidHeaderName {
        /// The name as configured, lossily decoded.
        name: String,
    },
    /// A configured header value contains CR, LF, NUL or another control
    /// byte (RFC 9110 §5.5).
    #[error("invalid value for header `{name}`: control characters are not allowed")]
    InvalidHeaderValue {
        /// The header the value was configured for.
        name: String,
    },
    /// A configured header the policy itself controls: hop-by-hop fields and
    /// `Content-Length` decide framing and connection reuse, so configuring
    /// them could desynchronise the upstream.
    #[error("header `{name}` is managed by the proxy and cannot be configured")]
    ReservedHeader {
        /// The refused header name.
        name: String,
    },
    /// A trusted-proxy entry that is neither an address nor a CIDR block.
    #[error("invalid trusted proxy `{entry}`")]
    InvalidCidr {
        /// The entry as configured.
        entry: String,
        /// Why `ipnet` refused it.
        #[source]
        source: ipnet::AddrParseError,
    },
    /// An allowed origin that is not `scheme://host[:port]` (RFC 6454 §6.2).
    #[error("invalid origin `{origin}`")]
    InvalidOrigin {
        /// The origin as configured.
        origin: String,
    },
    /// A CORS setup that browsers refuse: credentials with the `*` origin
    /// (Fetch standard, CORS protocol and credentials).
    #[error("cors credentials cannot be allowed for any origin")]
    CorsCredentialsWithAnyOrigin,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_not_allowed_is_403_and_names_the_origin() {
        let e = ForwardError::OriginNotAllowed {
            origin: "https://evil.example".into(),
        };
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            e.to_string(),
            "origin `https://evil.example` is not allowed"
        );
    }

    #[test]
    fn config_errors_have_lowercase_messages() {
        let e = ForwardConfigError::ReservedHeader {
            name: "connection".into(),
        };
        assert_eq!(
            e.to_string(),
            "header `connection` is managed by the proxy and cannot be configured"
        );
    }
}
