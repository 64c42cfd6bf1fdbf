//! How a direction writes the bytes its reader's EOF follows.
//!
//! The copy sees that EOF together with the last bytes when both came in
//! one go (a peer's closing frame and its FIN): it then writes those bytes
//! so that the shutdown right after can carry them, which for a TCP socket
//! means `MSG_MORE`, one segment with the data and the FIN instead of two,
//! as HAProxy sends it. Which writers can do that is the caller's to say
//! ([`LastWrite`]); every other writer gets a plain write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Writes `buf` to `writer` as bytes a shutdown follows at once.
pub(crate) trait LastWrite<W: ?Sized> {
    /// As `poll_write`, for the last bytes before the writer is shut down.
    fn poll_write_last(writer: &mut W, cx: &mut Context<'_>, buf: &[u8])
        -> Poll<io::Result<usize>>;

    /// Whether dropping `writer` closes its connection the way its shutdown
    /// would (a socket the tunnel owns: the close sends the FIN), so that a
    /// direction ending last may skip the shutdown. Not for a borrowed
    /// stream, whose connection outlives the tunnel, nor for TLS (the
    /// shutdown sends close_notify) or an HTTP/2 stream (END_STREAM).
    fn closes_on_drop(_writer: &W) -> bool {
        false
    }
}

/// Any writer: a plain write.
#[derive(Debug)]
pub(crate) struct Plain;

impl<W: AsyncWrite + Unpin + ?Sized> LastWrite<W> for Plain {
    fn poll_write_last(
        writer: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(writer).poll_write(cx, buf)
    }
}
