//! How large a head may grow before it is refused.

/// Size limits for a request or response head.
///
/// The defaults are 16 KiB of head and 100 header fields. nginx allows
/// header lines of up to 8 KiB (`large_client_header_buffers 4 8k`);
/// Apache's `LimitRequestFields` defaults to 100. A request over either limit
/// is answered with 431 (RFC 6585 §5), or with 414 when its request line
/// alone does not fit (RFC 9112 §3, as nginx does).
///
/// Set through the builder-style setters named after the fields, as
/// [`TunnelConfig`](crate::TunnelConfig) does:
///
/// ```
/// use wsproxy::handshake::Limits;
///
/// let limits = Limits::default().max_head_bytes(8 * 1024).max_headers(50);
/// assert_eq!(limits.max_head_bytes, 8192);
/// assert_eq!(limits.max_headers, 50);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest head, in bytes, start line and final blank line included
    /// (16 KiB by default).
    pub max_head_bytes: usize,
    /// The largest number of header fields (100 by default, Apache's
    /// `LimitRequestFields`).
    pub max_headers: usize,
}

impl Limits {
    /// The default limits: 16 KiB of head, 100 header fields.
    pub const fn new() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
        }
    }

    /// Sets [`max_head_bytes`](Self::max_head_bytes).
    #[must_use]
    pub const fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes;
        self
    }

    /// Sets [`max_headers`](Self::max_headers).
    #[must_use]
    pub const fn max_headers(mut self, headers: usize) -> Self {
        self.max_headers = headers;
        self
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}
