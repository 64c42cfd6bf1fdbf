//! What a finished tunnel reports: bytes, duration, and why it ended.

use std::fmt;
use std::time::Duration;

use super::error::TunnelError;
use crate::frame::CloseFrame;

/// One end of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Side {
    /// The downstream peer: the connection the proxy accepted.
    Client,
    /// The upstream peer: the backend the proxy connected to.
    Upstream,
}

impl Side {
    /// The opposite end.
    ///
    /// ```
    /// use wsproxy::tunnel::Side;
    /// assert_eq!(Side::Client.other(), Side::Upstream);
    /// ```
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// Which timeout of a [`TunnelConfig`](super::TunnelConfig) ended a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timeout {
    /// No byte in either direction for the idle timeout (HAProxy `timeout tunnel`).
    Idle,
    /// No byte from this side for its read timeout (nginx `proxy_read_timeout`
    /// for the upstream).
    Read(Side),
    /// A write toward this side could not progress for the send timeout
    /// (nginx `proxy_send_timeout` for the upstream).
    Send(Side),
    /// One side finished sending and the other direction ran past the
    /// half-close linger (HAProxy `timeout client-fin` / `timeout server-fin`).
    Linger,
    /// The tunnel reached its maximum lifetime.
    Lifetime,
    /// This side sent nothing for the ping timeout after the proxy pinged
    /// it ([`TunnelConfig::ping_timeout`](super::TunnelConfig::ping_timeout)):
    /// a dead peer.
    Ping(Side),
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timeout::Idle => f.write_str("idle timeout"),
            Timeout::Read(side) => write!(f, "read timeout on the {side}"),
            Timeout::Send(side) => write!(f, "send timeout toward the {side}"),
            Timeout::Linger => f.write_str("half-close linger timeout"),
            Timeout::Lifetime => f.write_str("maximum lifetime"),
            Timeout::Ping(side) => write!(f, "ping timeout on the {side}"),
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum TunnelEnd {
    /// Both sides sent EOF; the client did so first.
    ClientEof,
    /// Both sides sent EOF; the upstream did so first.
    UpstreamEof,
    /// A timeout fired.
    Timeout(Timeout),
    /// The shutdown future completed, or the host cut the tunnel
    /// ([`TunnelHandle::cut`](super::TunnelHandle::cut)).
    Shutdown,
    /// The host closed the tunnel politely with this Close frame
    /// ([`TunnelHandle::close`](super::TunnelHandle::close)): the peers'
    /// replies, if they sent any, are in [`TunnelStats::frames`].
    Closed(CloseFrame),
    /// Both peers sent their Close frames (a closing handshake they ran
    /// themselves, [`TunnelConfig::track_frames`] on) and kept their TCP
    /// connections open for [`TunnelConfig::close_linger`] after both went
    /// through: RFC 6455 §7.1.1 has the server close the connection then,
    /// so the proxy did. Their frames are in [`TunnelStats::frames`]. Peers
    /// that close their streams within the linger end the tunnel with
    /// [`ClientEof`](Self::ClientEof) or [`UpstreamEof`](Self::UpstreamEof).
    ///
    /// [`TunnelConfig::track_frames`]: super::TunnelConfig::track_frames
    /// [`TunnelConfig::close_linger`]: super::TunnelConfig::close_linger
    PeersClosed,
    /// Reading from or writing to one side failed.
    Error(TunnelError),
}

impl TunnelEnd {
    /// True when both sides finished on their own (no timeout, no
    /// shutdown, no error): both sent EOF, or both sent their Close frames
    /// ([`PeersClosed`](Self::PeersClosed)).
    ///
    /// ```
    /// use wsproxy::tunnel::TunnelEnd;
    /// assert!(TunnelEnd::ClientEof.is_clean());
    /// assert!(TunnelEnd::PeersClosed.is_clean());
    /// assert!(!TunnelEnd::Shutdown.is_clean());
    /// ```
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            TunnelEnd::ClientEof | TunnelEnd::UpstreamEof | TunnelEnd::PeersClosed
        )
    }

    /// The error to report for this end, if it was one: a timeout or an I/O
    /// error. EOF and shutdown give `None`.
    ///
    /// ```
    /// use http::StatusCode;
    /// use wsproxy::tunnel::{Timeout, TunnelEnd};
    /// let err = TunnelEnd::Timeout(Timeout::Idle).into_error();
    /// assert_eq!(err.map(|e| e.status()), Some(StatusCode::GATEWAY_TIMEOUT));
    /// ```
    pub fn into_error(self) -> Option<TunnelError> {
        match self {
            TunnelEnd::Timeout(t) => Some(TunnelError::Timeout(t)),
            TunnelEnd::Error(e) => Some(e),
            TunnelEnd::ClientEof
            | TunnelEnd::UpstreamEof
            | TunnelEnd::Shutdown
            | TunnelEnd::Closed(_)
            | TunnelEnd::PeersClosed => None,
        }
    }
}

/// What a finished tunnel reports, for logging and metering.
#[derive(Debug)]
#[non_exhaustive]
pub struct TunnelStats {
    /// Bytes written to the upstream (read from the client, prefix included).
    pub client_to_upstream: u64,
    /// Bytes written to the client (read from the upstream, prefix included).
    pub upstream_to_client: u64,
    /// Time from the call to [`tunnel`](super::tunnel) to its end.
    pub duration: Duration,
    /// The side that sent EOF first, if any did.
    pub first_eof: Option<Side>,
    /// Why the tunnel ended.
    pub end: TunnelEnd,
    /// Messages and Close frames, when the tunnel tracked WebSocket frames
    /// ([`TunnelConfig::track_frames`](super::TunnelConfig::track_frames)).
    pub frames: Option<FrameStats>,
}

/// What the frame trackers of a tunnel saw: whole messages each way and the
/// Close frame each side sent, so a log can say "client closed 1000" or
/// "upstream closed 1011".
///
/// Counts cover the bytes forwarded: a message cut by the end of the tunnel
/// is not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameStats {
    /// Text and binary messages the client sent (control frames not counted).
    pub client_messages: u64,
    /// Text and binary messages the upstream sent.
    pub upstream_messages: u64,
    /// The first Close frame the client sent, if one was forwarded whole.
    pub client_close: Option<CloseFrame>,
    /// The first Close frame the upstream sent, if one was forwarded whole.
    pub upstream_close: Option<CloseFrame>,
}

impl FrameStats {
    /// The Close frame `side` sent, if any.
    ///
    /// ```
    /// use wsproxy::tunnel::{FrameStats, Side};
    /// assert_eq!(FrameStats::default().close(Side::Client), None);
    /// ```
    pub fn close(&self, side: Side) -> Option<&CloseFrame> {
        match side {
            Side::Client => self.client_close.as_ref(),
            Side::Upstream => self.upstream_close.as_ref(),
        }
    }

    /// Messages `side` sent.
    pub fn messages(&self, side: Side) -> u64 {
        match side {
            Side::Client => self.client_messages,
            Side::Upstream => self.upstream_messages,
        }
    }
}
