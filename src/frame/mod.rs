//! WebSocket frame boundaries, sans-IO: where each frame and message of a
//! byte stream starts and ends, without copying or unmasking the payloads;
//! and the encoding and masking of the control frames the proxy sends.
//!
//! A proxy relays WebSocket bytes unchanged, but some decisions need to know
//! where frames are: injecting a Close frame without cutting a frame in two,
//! counting messages, logging the close code each side sent. A
//! [`FrameTracker`] reads only the frame headers of RFC 6455 §5.2 (FIN,
//! RSV1-3, opcode, MASK, the 7/16/64-bit payload length and the masking key)
//! as the bytes stream past in slices of any size, and skips each payload by
//! arithmetic. The one exception is a Close frame: its at most 125 payload
//! bytes are unmasked into a small buffer to read the status code and reason
//! (RFC 6455 §5.5.1).
//!
//! ```
//! use wsproxy::frame::{Boundary, FrameTracker, Role};
//!
//! # fn main() -> Result<(), wsproxy::frame::FrameError> {
//! // Frames a server sends: "Hel" (text, not final), a ping between the
//! // fragments, "lo" (continuation, final), then Close 1000 "bye".
//! let wire: &[u8] = &[
//!     0x01, 0x03, b'H', b'e', b'l',
//!     0x89, 0x00,
//!     0x80, 0x02, b'l', b'o',
//!     0x88, 0x05, 0x03, 0xe8, b'b', b'y', b'e',
//! ];
//! let mut frames = FrameTracker::new(Role::Server);
//! frames.observe(&wire[..4])?;
//! assert_eq!(frames.boundary(), None); // inside the first frame
//! frames.observe(&wire[4..7])?;
//! assert_eq!(frames.boundary(), Some(Boundary::Frame)); // inside the message
//! frames.observe(&wire[7..])?;
//! assert_eq!(frames.boundary(), Some(Boundary::Message));
//! assert_eq!(frames.messages(), 1);
//! let close = frames.close();
//! assert_eq!(close.as_ref().and_then(|c| c.code()), Some(1000));
//! assert_eq!(close.as_ref().map(|c| c.reason()), Some("bye"));
//! # Ok(())
//! # }
//! ```
//!
//! # Rules checked
//!
//! Only what framing itself depends on, or what RFC 6455 tells an endpoint
//! to fail the connection for at the frame level: masking by role (§5.1),
//! reserved opcodes (§5.2), control frames longer than 125 bytes or
//! fragmented (§5.5), continuation frames outside a fragmented message and
//! data frames inside one (§5.4), a 64-bit length with its top bit set
//! (§5.2) and a one-byte Close payload (§5.5.1).
//!
//! RSV1-3 are **not** checked. They are set by extensions (permessage-deflate,
//! RFC 7692, sets RSV1 on the first frame of each compressed message), and the
//! extensions in use are negotiated end to end in `Sec-WebSocket-Extensions`,
//! which a proxy relays without taking part in. Refusing RSV bits would break
//! compression through the proxy, and they never change where a frame ends:
//! the payload length counts extension data too (§5.2). Neither are UTF-8 in
//! text messages or close-code ranges checked: the endpoints do that, and
//! neither changes a boundary.
//!
//! # Cost
//!
//! Payloads are skipped by arithmetic, and a header that arrives whole (most
//! do) is read in one step rather than byte by byte, so the cost is per
//! frame, not per byte: about the same tens of nanoseconds for a 1 KiB frame
//! as for a 64 KiB one (`cargo bench --bench tunnel -- --mode frames` prints
//! the tracker alone before the tunnel figures). A tracker is a few dozen
//! bytes of state and allocates only for a Close frame's payload. A tunnel
//! keeps one per direction when [`TunnelConfig::track_frames`] is on.
//!
//! # Writing frames
//!
//! [`CloseFrame::encode`] writes a Close frame, masked with the key it is
//! given when it goes toward a server (RFC 6455 §5.3); the tunnel inserts
//! such frames at the boundaries a tracker reports
//! ([`Tunnel::insert_close`]).
//!
//! [`TunnelConfig::track_frames`]: crate::tunnel::TunnelConfig::track_frames
//! [`Tunnel::insert_close`]: crate::tunnel::Tunnel::insert_close

mod close;
mod encode;
mod tracker;

#[cfg(test)]
pub(crate) mod proptests;

use http::StatusCode;

pub use close::CloseFrame;
pub(crate) use encode::{masking_key, ping_frame};
pub use tracker::FrameTracker;

/// Which endpoint sends the frames a [`FrameTracker`] reads: it decides the
/// masking rule (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Frames from the client: every one must be masked.
    Client,
    /// Frames from the server: none may be masked.
    Server,
}

/// A point between frames of a stream, where a whole frame can be inserted.
///
/// Control frames (Close, Ping, Pong) may go at any [`Boundary`], even
/// between the fragments of a message (RFC 6455 §5.4); a data frame only at
/// [`Boundary::Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Boundary {
    /// Between two messages: no fragmented message is under way.
    Message,
    /// Between two frames of a fragmented message.
    Frame,
}

/// How a stream broke the framing rules of RFC 6455. Once a tracker reports
/// one, it reports the same error for every later call.
///
/// ```
/// use wsproxy::frame::{FrameError, FrameTracker, Role};
///
/// let mut frames = FrameTracker::new(Role::Client);
/// // An unmasked text frame: a client must mask every frame (§5.1).
/// let result = frames.observe(&[0x81, 0x02, b'h', b'i']);
/// assert_eq!(result, Err(FrameError::UnmaskedClientFrame));
/// assert_eq!(
///     FrameError::UnmaskedClientFrame.to_string(),
///     "unmasked frame from the client"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A client sent a frame without a masking key (§5.1).
    #[error("unmasked frame from the client")]
    UnmaskedClientFrame,
    /// A server sent a masked frame (§5.1).
    #[error("masked frame from the server")]
    MaskedServerFrame,
    /// An opcode RFC 6455 reserves (3-7, 0xB-0xF) and no extension in the
    /// IANA registry defines (§5.2).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame with a payload over 125 bytes (§5.5).
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    /// A control frame without FIN (§5.5).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A continuation frame with no fragmented message to continue (§5.4).
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    /// A text or binary frame before the fragmented message under way was
    /// finished (§5.4).
    #[error("new data frame inside an unfinished fragmented message")]
    UnfinishedMessage,
    /// A 64-bit payload length with its most significant bit set (§5.2).
    #[error("payload length with the most significant bit set")]
    LengthTooLarge,
    /// A Close frame with a one-byte payload: a status code takes two (§5.5.1).
    #[error("close frame with a one-byte payload")]
    CloseTooShort,
    /// A Close frame to encode whose reason does not fit in 123 bytes (§5.5).
    #[error("close reason longer than 123 bytes")]
    CloseReasonTooLong,
}

impl FrameError {
    /// The HTTP status to log: 400, since the sender broke the protocol.
    /// Inside a tunnel, [`TunnelError::Framing`](crate::tunnel::TunnelError)
    /// names the side and gives 502 when it was the upstream.
    ///
    /// ```
    /// use http::StatusCode;
    /// use wsproxy::frame::FrameError;
    /// assert_eq!(FrameError::ControlTooLong.status(), StatusCode::BAD_REQUEST);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnmaskedClientFrame
            | Self::MaskedServerFrame
            | Self::ReservedOpcode(_)
            | Self::ControlTooLong
            | Self::FragmentedControl
            | Self::UnexpectedContinuation
            | Self::UnfinishedMessage
            | Self::LengthTooLarge
            | Self::CloseTooShort
            | Self::CloseReasonTooLong => StatusCode::BAD_REQUEST,
        }
    }
}

/// Opcodes of RFC 6455 §5.2 that the tracker and the encoder use.
pub(crate) mod opcode {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// The longest payload of a control frame (§5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;
