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
//! A bad request becomes an answer with [`HandshakeError::to_response`]; a
//! bad upstream answer is a 502 and never opens a tunnel.

mod chunked;
mod error;
mod framing;
mod head;
mod limits;
#[cfg(test)]
mod proptests;
mod request;
mod response;
mod syntax;
mod upgrade;
mod write;

pub use chunked::{ChunkedReframer, Reframed, RequestBodyError};
pub use error::{HandshakeError, HeadError, SwitchError};
pub use framing::BodyLength;
pub(crate) use framing::Framing;
pub use limits::Limits;
pub(crate) use request::request_host;
pub use request::{parse_request, RequestHead, RequestKind, WebSocketUpgrade};
pub use response::{classify_response, parse_response, ResponseKind};
pub use upgrade::accept_key;
pub use write::{error_response, write_request_head, write_response_head};

/// The result of reading a head that may not have fully arrived yet.
///
/// As in httparse, incomplete data is not invalid: `Partial` asks for more
/// bytes. Errors travel separately, in the `Err` of a `Result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
