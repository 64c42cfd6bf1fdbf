//! The WebSocket handshake, sans I/O: read a head from bytes, decide what it
//! asks for, check the upstream's answer, write heads back to bytes.
//!
//! Nothing here touches a socket or a clock. The caller reads bytes into a
//! [`BytesMut`](bytes::BytesMut) and calls [`parse_request`] until it returns
//! [`Status::Complete`]; the head is then split off the front of the buffer
//! and any bytes after it (a client may send its first frame in the same
//! packet) stay there for the tunnel.
//!
//! ```
//! use bytes::BytesMut;
//! use wsproxy::handshake::{
//!     classify_response, parse_request, parse_response, write_request_head, Limits,
//!     RequestKind, ResponseKind, Status,
//! };
//!
//! let limits = Limits::default();
//! let mut from_client = BytesMut::from(concat!(
//!     "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n",
//!     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
//!     "Sec-WebSocket-Version: 13\r\n\r\n",
//! ));
//! let Status::Complete(head) = parse_request(&mut from_client, &limits)? else {
//!     unreachable!("the head is complete")
//! };
//! assert!(matches!(head.kind(), RequestKind::WebSocket(_)));
//!
//! // Forward the head (a forwarding policy rewrites it first).
//! let mut to_upstream = BytesMut::new();
//! write_request_head(head.request(), &mut to_upstream);
//!
//! // The upstream answers; its first frame may follow in the same read.
//! let mut from_upstream = BytesMut::from(concat!(
//!     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",
//!     "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
//!     "\u{81}\u{0}",
//! ));
//! let Status::Complete(response) = parse_response(&mut from_upstream, &limits)? else {
//!     unreachable!("the head is complete")
//! };
//! assert_eq!(classify_response(head.kind(), &response)?, ResponseKind::Switched);
//! assert_eq!(&from_upstream[..], "\u{81}\u{0}".as_bytes()); // for the tunnel
//! # Ok::<(), wsproxy::handshake::HandshakeError>(())
//! ```
//!
//! Reading from a socket, feed each read to a [`HeadScanner`] first and
//! parse only once it reports the head complete: a head that trickles in
//! is then looked at once, not re-parsed on every read, and junk that can
//! never start a request is refused at its first byte.
//!
//! A bad request becomes an answer with [`HandshakeError::to_response`]; a
//! bad upstream answer is a 502 and never opens a tunnel. Where a message
//! body ends, for plain HTTP relaying, is [`body`]'s business.
//!
//! # What is checked
//!
//! - Requests against RFC 9112: `Host` (present, one, well formed), body
//!   framing (`Content-Length` and `Transfer-Encoding` not both, a coding
//!   list ending in `chunked`), forbidden bytes (NUL, bare CR or LF,
//!   obs-fold) and the request-target form; a failure is a 400 that names
//!   the header at fault.
//! - When `Upgrade` names `websocket`, RFC 6455 §4.2.1: GET, HTTP/1.1,
//!   `Connection: upgrade`, one `Sec-WebSocket-Key` that is the base64 of
//!   16 bytes, and version 13 (another version gets 426 with
//!   `Sec-WebSocket-Version: 13`). Other upgrades (`h2c`, `TLS/1.0`) are
//!   plain HTTP and never tunneled.
//! - [`parse_upgrade_answer`] reads the answer to an upgrade and makes the
//!   same checks on a 101 without building a `HeaderMap` (a
//!   [`SwitchingHead`]); anything else it hands to [`parse_response`].
//! - [`classify_response`] opens a tunnel only for a 101 with
//!   `Upgrade: websocket`, `Connection: upgrade` and the
//!   `Sec-WebSocket-Accept` that matches the client's key ([`accept_key`]).
//!   Any other 101 is a 502; any other answer is relayed as plain HTTP.
//! - [`Limits`] (by default 16 KiB of head and 100 header fields) give 431
//!   for header fields and 414 for an overlong request line.
//!
//! A short read is [`Status::Partial`], never an error: a valid head split
//! at any byte parses to the same result as the whole head (a proptest
//! checks this). The parsers are fuzzed with cargo-fuzz (`fuzz/`; on a
//! stable toolchain prefix `RUSTC_BOOTSTRAP=1`):
//! `cargo fuzz run parse_request`, `cargo fuzz run parse_response`.
//!
//! # Cost
//!
//! httparse finds the fields; most of the rest is building the
//! [`http::Request`] (header names, values, the `HeaderMap`), which alone
//! takes about four times httparse's time. The whole client side (parse,
//! every check above, the forwarding rewrite, writing the head) stays
//! within a few microseconds on a browser's 12-header upgrade
//! (`cargo bench --bench handshake` compares each step with httparse alone).

// Builders and setters return a changed copy: dropping it is always a bug.
#![warn(clippy::return_self_not_must_use)]

pub mod body;
mod chunked;
mod error;
mod framing;
mod head;
mod limits;
#[cfg(test)]
mod proptests;
mod request;
mod response;
mod scan;
mod switch;
mod syntax;
mod upgrade;
mod write;

pub use chunked::{ChunkedReframer, Reframed, RequestBodyError};
pub use error::{HandshakeError, HeadError, SwitchError};
pub use framing::BodyLength;
pub(crate) use framing::Framing;
pub use limits::Limits;
pub(crate) use request::{is_host_and_port, normalize_host, request_host};
pub use request::{parse_request, RequestHead, RequestKind, WebSocketUpgrade};
pub use response::{classify_response, parse_response, ResponseKind};
pub use scan::HeadScanner;
pub use switch::{parse_upgrade_answer, SwitchingHead, UpgradeAnswer};
pub use upgrade::accept_key;
pub use write::{error_response, write_request_head, write_response_head};

/// The result of reading a head that may not have fully arrived yet.
///
/// As in httparse, incomplete data is not invalid: `Partial` asks for more
/// bytes. Errors travel separately, in the `Err` of a `Result`. Exactly two
/// variants, as httparse's `Status`, so a `match` needs no wildcard arm:
/// everything else a read can learn is in the `T` or the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// The head is complete.
    Complete(T),
    /// More bytes are needed.
    Partial,
}

impl<T> Status<T> {
    /// Whether the head is complete.
    pub fn is_complete(&self) -> bool {
        matches!(self, Self::Complete(_))
    }

    /// Whether more bytes are needed.
    pub fn is_partial(&self) -> bool {
        matches!(self, Self::Partial)
    }
}
