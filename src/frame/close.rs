//! Close frames: the code and reason a peer sent, and the encoder for the
//! ones the proxy sends itself.

use std::fmt;

use super::encode::control_frame;
use super::{opcode, FrameError, MAX_CONTROL_PAYLOAD};

/// The status code and reason of a Close frame (RFC 6455 §5.5.1, §7.4).
///
/// A [`FrameTracker`](super::FrameTracker) reports the first one each
/// direction sent; [`CloseFrame::new`] builds one for the proxy to send.
///
/// ```
/// use wsproxy::frame::CloseFrame;
///
/// # fn main() -> Result<(), wsproxy::frame::FrameError> {
/// let going_away = CloseFrame::new(1001, "server restart")?;
/// assert_eq!(going_away.to_string(), "1001 server restart");
/// // Toward a client: unmasked, FIN + Close, 2 + 14 payload bytes.
/// let wire = going_away.encode(None);
/// assert_eq!(&wire[..4], &[0x88, 16, 0x03, 0xe9]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CloseFrame {
    code: Option<u16>,
    reason: String,
}

impl CloseFrame {
    /// A Close frame with `code` and `reason`.
    ///
    /// The code is sent as given: choose one RFC 6455 §7.4.1 defines for
    /// sending (1000-1003, 1007-1014) or an application code (3000-4999).
    ///
    /// # Errors
    ///
    /// [`FrameError::CloseReasonTooLong`] when `reason` is over 123 bytes:
    /// a control frame carries at most 125 (§5.5), two of them the code.
    pub fn new(code: u16, reason: impl Into<String>) -> Result<Self, FrameError> {
        let reason = reason.into();
        if reason.len() > MAX_CONTROL_PAYLOAD - 2 {
            return Err(FrameError::CloseReasonTooLong);
        }
        Ok(Self {
            code: Some(code),
            reason,
        })
    }

    /// A Close frame without a payload: no code, no reason (RFC 6455
    /// §5.5.1 allows it; the receiver reports 1005).
    pub fn empty() -> Self {
        Self {
            code: None,
            reason: String::new(),
        }
    }

    /// The status code, or `None` when the frame had an empty payload (which
    /// an endpoint reports as 1005, "no status received", §7.4.1).
    pub fn code(&self) -> Option<u16> {
        self.code
    }

    /// The reason; bytes that were not UTF-8 are replaced by U+FFFD.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The frame on the wire: FIN and opcode Close, then the code and the
    /// reason. `mask` is the masking key for frames toward a server (RFC 6455
    /// §5.3 asks for a fresh, unpredictable key per frame); `None` for frames
    /// toward a client, which must not be masked.
    pub fn encode(&self, mask: Option<[u8; 4]>) -> Vec<u8> {
        // `new` and the tracker keep the payload within 125 bytes; the
        // encoder cuts it there anyway rather than overflow the length.
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let mut len = 0;
        if let Some(code) = self.code {
            let reason = self.reason.as_bytes();
            let reason = &reason[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)];
            payload[..2].copy_from_slice(&code.to_be_bytes());
            payload[2..2 + reason.len()].copy_from_slice(reason);
            len = 2 + reason.len();
        }
        control_frame(opcode::CLOSE, &payload[..len], mask)
    }
}

impl fmt::Display for CloseFrame {
    /// `1000 bye`, `1000` without a reason, `no status` without a code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            None => f.write_str("no status"),
            Some(code) if self.reason.is_empty() => write!(f, "{code}"),
            Some(code) => write!(f, "{code} {}", self.reason),
        }
    }
}

/// The unmasked payload of the Close frame being read: allocated only when a
/// Close frame arrives, so an open stream carries one pointer for it.
#[derive(Debug, Clone)]
pub(crate) struct CloseCapture {
    bytes: [u8; MAX_CONTROL_PAYLOAD],
    len: u8,
    /// The whole payload has been read; later Close frames are not captured.
    pub(crate) done: bool,
}

impl CloseCapture {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; MAX_CONTROL_PAYLOAD],
            len: 0,
            done: false,
        }
    }

    /// Appends payload bytes, unmasking them by their offset in the payload.
    pub(crate) fn push(&mut self, data: &[u8], mask: Option<[u8; 4]>) {
        for &b in data {
            let at = usize::from(self.len);
            let Some(slot) = self.bytes.get_mut(at) else {
                return;
            };
            *slot = match mask {
                Some(key) => b ^ key[at % 4],
                None => b,
            };
            self.len += 1;
        }
    }

    pub(crate) fn to_frame(&self) -> CloseFrame {
        CloseFrame::from_payload(&self.bytes[..usize::from(self.len)])
    }
}

impl CloseFrame {
    /// The frame of a captured (unmasked) Close payload; a reason that is
    /// not UTF-8 is kept lossily.
    pub(crate) fn from_payload(payload: &[u8]) -> Self {
        match payload {
            [hi, lo, reason @ ..] => CloseFrame {
                code: Some(u16::from_be_bytes([*hi, *lo])),
                reason: String::from_utf8_lossy(reason).into_owned(),
            },
            // Empty (a one-byte payload is refused by the tracker).
            _ => CloseFrame {
                code: None,
                reason: String::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_encoding_unmasks_to_code_and_reason() {
        let close = CloseFrame::new(1011, "oops").unwrap();
        let key = [0x12, 0x34, 0x56, 0x78];
        let wire = close.encode(Some(key));
        assert_eq!(wire[0], 0x88);
        assert_eq!(wire[1], 0x80 | 6);
        assert_eq!(&wire[2..6], &key);
        let plain: Vec<u8> = wire[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(plain, b"\x03\xf3oops");
    }

    #[test]
    fn reason_longer_than_123_bytes_is_refused() {
        assert!(CloseFrame::new(1000, "x".repeat(123)).is_ok());
        assert_eq!(
            CloseFrame::new(1000, "x".repeat(124)).unwrap_err(),
            FrameError::CloseReasonTooLong
        );
    }

    #[test]
    fn display_names_code_and_reason() {
        assert_eq!(CloseFrame::new(1000, "").unwrap().to_string(), "1000");
        let mut capture = CloseCapture::new();
        assert_eq!(capture.to_frame().to_string(), "no status");
        capture.push(&[0x03, 0xe8, 0xff], None);
        assert_eq!(capture.to_frame().reason(), "\u{fffd}");
    }
}
