//! The frame-header state machine.

use super::close::{CloseCapture, CloseFrame};
use super::{opcode, Boundary, FrameError, Role, MAX_CONTROL_PAYLOAD};

/// Where the tracker is within the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first header byte (FIN, RSV1-3, opcode): a frame boundary.
    Head,
    /// Before the second (MASK, 7-bit length).
    Length,
    /// Reading this many more bytes of the 16- or 64-bit extended length.
    ExtendedLength(u8),
    /// Reading this many more bytes of the masking key.
    MaskKey(u8),
    /// Skipping `remaining` payload bytes.
    Payload,
    /// The stream broke a rule; every later call reports it.
    Failed(FrameError),
}

/// Follows the frames of one direction of a WebSocket connection, reading
/// only their headers, as bytes stream past in slices of any size.
///
/// It never copies or unmasks a payload, except the at most 125 bytes of a
/// Close frame, and it keeps about 40 bytes of state (plus a 128-byte block
/// allocated when a Close frame with a reason arrives; an empty or code-only
/// one is kept inline). See the [module docs](super) for an example and the
/// rules it checks.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    /// Bytes left in the payload, or the extended length read so far.
    remaining: u64,
    messages: u64,
    /// The first Close frame's payload when it is longer than a code.
    close: Option<Box<CloseCapture>>,
    /// The first Close frame's payload when it is empty or a bare code, as
    /// most are: kept in the padding of this struct, with no box.
    short_close: ShortClose,
    mask: [u8; 4],
    stage: Stage,
    /// First header byte of the current frame: FIN, RSV1-3, opcode.
    head: u8,
    masked: bool,
    /// A fragmented data message is under way (its final frame not read).
    in_message: bool,
    role: Role,
}

impl FrameTracker {
    /// A tracker for frames sent by `role`, at the start of the stream (the
    /// first byte after the handshake).
    pub fn new(role: Role) -> Self {
        Self {
            remaining: 0,
            messages: 0,
            close: None,
            short_close: ShortClose::OFF,
            mask: [0; 4],
            stage: Stage::Head,
            head: 0,
            masked: false,
            in_message: false,
            role,
        }
    }

    /// The role whose frames this tracker reads.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Reads `bytes`, the next bytes of the stream.
    ///
    /// # Errors
    ///
    /// The first rule the stream broke (see [`FrameError`]), for this call
    /// and every later one.
    pub fn observe(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.feed::<false>(bytes).map(|_| ())
    }

    /// Reads `bytes` up to the first frame boundary after at least one byte
    /// and returns how many it read: `bytes.len()` when no boundary comes
    /// before their end. A frame inserted after those bytes lands between
    /// two frames. Check [`boundary`](Self::boundary) first to insert before
    /// any byte.
    ///
    /// ```
    /// use wsproxy::frame::{Boundary, FrameTracker, Role};
    ///
    /// # fn main() -> Result<(), wsproxy::frame::FrameError> {
    /// let mut frames = FrameTracker::new(Role::Server);
    /// let wire = [0x82, 0x01, 0xaa, 0x82, 0x01, 0xbb]; // two binary frames
    /// assert_eq!(frames.observe_to_boundary(&wire)?, 3);
    /// assert_eq!(frames.boundary(), Some(Boundary::Message));
    /// assert_eq!(frames.observe_to_boundary(&wire[3..5])?, 2);
    /// assert_eq!(frames.boundary(), None);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`observe`](Self::observe).
    pub fn observe_to_boundary(&mut self, bytes: &[u8]) -> Result<usize, FrameError> {
        self.feed::<true>(bytes)
    }

    /// Where the stream is: at a boundary between messages, between frames
    /// of a fragmented message, or `None` inside a frame (or after an error).
    pub fn boundary(&self) -> Option<Boundary> {
        match self.stage {
            Stage::Head if self.in_message => Some(Boundary::Frame),
            Stage::Head => Some(Boundary::Message),
            _ => None,
        }
    }

    /// Text and binary messages whose final frame has been read whole.
    /// Control frames are not counted.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The code and reason of the first Close frame, once it has been read
    /// whole.
    pub fn close(&self) -> Option<CloseFrame> {
        if self.short_close.state == Capture::Done {
            return Some(self.short_close.to_frame());
        }
        self.close
            .as_deref()
            .filter(|c| c.done)
            .map(CloseCapture::to_frame)
    }

    /// Whether a whole Close frame has been read (no copy of it made).
    pub(crate) fn close_seen(&self) -> bool {
        self.short_close.state == Capture::Done || self.close.as_deref().is_some_and(|c| c.done)
    }

    /// The error the stream broke framing with, if it did.
    pub fn error(&self) -> Option<FrameError> {
        match self.stage {
            Stage::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The loop behind `observe` (`STOP = false`) and `observe_to_boundary`.
    fn feed<const STOP: bool>(&mut self, bytes: &[u8]) -> Result<usize, FrameError> {
        let mut at = 0;
        while at < bytes.len() {
            match self.stage {
                Stage::Payload => {
                    let left = bytes.len() - at;
                    // Skip the payload by arithmetic: the bulk of the bytes.
                    let n = usize::try_from(self.remaining).map_or(left, |r| r.min(left));
                    if self.capturing() {
                        let mask = self.masked.then_some(self.mask);
                        if let Some(capture) = self.close.as_deref_mut() {
                            capture.push(&bytes[at..at + n], mask);
                        } else {
                            self.short_close.push(&bytes[at..at + n], mask);
                        }
                    }
                    at += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.end_frame();
                        if STOP {
                            return Ok(at);
                        }
                    }
                    continue;
                }
                Stage::Failed(e) => return Err(e),
                Stage::Head => {
                    // Most headers arrive whole: read them in one step
                    // rather than byte by byte.
                    match self.whole_header(&bytes[at..]) {
                        Ok(Some(n)) => {
                            at += n;
                            if STOP && self.stage == Stage::Head {
                                return Ok(at);
                            }
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.stage = Stage::Failed(e);
                            return Err(e);
                        }
                    }
                }
                _ => {}
            }
            let b = bytes[at];
            at += 1;
            if let Err(e) = self.header_byte(b) {
                self.stage = Stage::Failed(e);
                return Err(e);
            }
            if STOP && self.stage == Stage::Head {
                return Ok(at);
            }
        }
        match self.stage {
            Stage::Failed(e) => Err(e),
            _ => Ok(at),
        }
    }

    fn header_byte(&mut self, b: u8) -> Result<(), FrameError> {
        match self.stage {
            Stage::Head => self.start_frame(b),
            Stage::Length => {
                self.second_byte(b)?;
                self.remaining = 0;
                match b & 0x7f {
                    126 => self.stage = Stage::ExtendedLength(2),
                    127 => self.stage = Stage::ExtendedLength(8),
                    n => {
                        self.remaining = u64::from(n);
                        self.end_length()?;
                    }
                }
                Ok(())
            }
            Stage::ExtendedLength(left) => {
                self.remaining = (self.remaining << 8) | u64::from(b);
                if left > 1 {
                    self.stage = Stage::ExtendedLength(left - 1);
                    return Ok(());
                }
                if self.remaining >> 63 != 0 {
                    return Err(FrameError::LengthTooLarge);
                }
                self.end_length()
            }
            Stage::MaskKey(left) => {
                self.mask[usize::from(4 - left.min(4))] = b;
                if left > 1 {
                    self.stage = Stage::MaskKey(left - 1);
                    return Ok(());
                }
                self.start_payload()
            }
            // The caller handles these two before reading a header byte.
            Stage::Payload => Ok(()),
            Stage::Failed(e) => Err(e),
        }
    }

    /// Reads a whole header from the start of `rest`, if it holds one, and
    /// returns its length.
    fn whole_header(&mut self, rest: &[u8]) -> Result<Option<usize>, FrameError> {
        let [b0, b1, ..] = *rest else {
            return Ok(None);
        };
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let key = if b1 & 0x80 != 0 { 4 } else { 0 };
        let len = 2 + ext + key;
        let Some(header) = rest.get(..len) else {
            return Ok(None);
        };
        self.start_frame(b0)?;
        self.second_byte(b1)?;
        let mut length = [0u8; 8];
        length[8 - ext..].copy_from_slice(&header[2..2 + ext]);
        self.remaining = match ext {
            0 => u64::from(b1 & 0x7f),
            _ => u64::from_be_bytes(length),
        };
        if self.remaining >> 63 != 0 {
            return Err(FrameError::LengthTooLarge);
        }
        if key != 0 {
            self.mask.copy_from_slice(&header[2 + ext..len]);
        }
        self.start_payload()?;
        Ok(Some(len))
    }

    /// Checks the second header byte: the masking rule of the role (§5.1)
    /// and the length of a control frame (§5.5).
    fn second_byte(&mut self, b: u8) -> Result<(), FrameError> {
        self.masked = b & 0x80 != 0;
        match (self.role, self.masked) {
            (Role::Client, false) => return Err(FrameError::UnmaskedClientFrame),
            (Role::Server, true) => return Err(FrameError::MaskedServerFrame),
            _ => {}
        }
        if self.is_control() && usize::from(b & 0x7f) > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::ControlTooLong);
        }
        Ok(())
    }

    /// Checks the first header byte against the fragmentation rules (§5.4).
    fn start_frame(&mut self, b: u8) -> Result<(), FrameError> {
        let fin = b & 0x80 != 0;
        match b & 0x0f {
            opcode::CONTINUATION => {
                if !self.in_message {
                    return Err(FrameError::UnexpectedContinuation);
                }
                self.in_message = !fin;
            }
            opcode::TEXT | opcode::BINARY => {
                if self.in_message {
                    return Err(FrameError::UnfinishedMessage);
                }
                self.in_message = !fin;
            }
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin {
                    return Err(FrameError::FragmentedControl);
                }
            }
            reserved => return Err(FrameError::ReservedOpcode(reserved)),
        }
        self.head = b;
        self.stage = Stage::Length;
        Ok(())
    }

    fn end_length(&mut self) -> Result<(), FrameError> {
        if self.masked {
            self.stage = Stage::MaskKey(4);
            Ok(())
        } else {
            self.start_payload()
        }
    }

    fn start_payload(&mut self) -> Result<(), FrameError> {
        if self.head & 0x0f == opcode::CLOSE {
            if self.remaining == 1 {
                return Err(FrameError::CloseTooShort);
            }
            if self.close.is_none() && self.short_close.state == Capture::Off {
                if self.remaining <= 2 {
                    self.short_close.state = Capture::Reading;
                } else {
                    self.close = Some(Box::new(CloseCapture::new()));
                }
            }
        }
        if self.remaining == 0 {
            self.end_frame();
        } else {
            self.stage = Stage::Payload;
        }
        Ok(())
    }

    fn end_frame(&mut self) {
        match self.head & 0x0f {
            opcode::CLOSE => {
                if let Some(capture) = self.close.as_deref_mut() {
                    capture.done = true;
                } else if self.short_close.state == Capture::Reading {
                    self.short_close.state = Capture::Done;
                }
            }
            // The final frame of a message: a data frame without anything
            // left to continue.
            opcode::TEXT | opcode::BINARY | opcode::CONTINUATION if !self.in_message => {
                self.messages += 1;
            }
            _ => {}
        }
        self.stage = Stage::Head;
    }

    fn is_control(&self) -> bool {
        self.head & 0x08 != 0
    }

    /// Whether the payload being read is the first Close frame's.
    fn capturing(&self) -> bool {
        self.head & 0x0f == opcode::CLOSE
            && (self.short_close.state == Capture::Reading
                || self.close.as_deref().is_some_and(|c| !c.done))
    }
}

/// Where the capture of a short Close payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// No Close frame seen yet, or one too long for [`ShortClose`].
    Off,
    Reading,
    Done,
}

/// The payload of an empty or code-only Close frame (two bytes at most).
#[derive(Debug, Clone, Copy)]
struct ShortClose {
    bytes: [u8; 2],
    len: u8,
    state: Capture,
}

impl ShortClose {
    const OFF: Self = Self {
        bytes: [0; 2],
        len: 0,
        state: Capture::Off,
    };

    /// Appends payload bytes, unmasking them by their offset in the payload.
    fn push(&mut self, data: &[u8], mask: Option<[u8; 4]>) {
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

    fn to_frame(self) -> CloseFrame {
        CloseFrame::from_payload(self.bytes.get(..usize::from(self.len)).unwrap_or(&[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::proptests::frame;

    #[test]
    fn masked_close_from_client_is_unmasked_for_the_stats() {
        let mut t = FrameTracker::new(Role::Client);
        let wire = frame(Role::Client, 0x88, b"\x03\xe9going away");
        // One byte at a time: the mask offset must follow the payload offset.
        for b in &wire {
            assert_eq!(t.close(), None);
            t.observe(std::slice::from_ref(b)).unwrap();
        }
        let close = t.close().unwrap();
        assert_eq!(close.code(), Some(1001));
        assert_eq!(close.reason(), "going away");
        assert_eq!(t.boundary(), Some(Boundary::Message));
        assert_eq!(t.messages(), 0);
    }

    #[test]
    fn a_code_only_close_is_captured_without_a_box() {
        let mut t = FrameTracker::new(Role::Client);
        let wire = frame(Role::Client, 0x88, b"\x03\xe8");
        // Byte by byte, so the mask offset must follow the payload offset.
        for b in &wire {
            assert!(!t.close_seen());
            t.observe(std::slice::from_ref(b)).unwrap();
        }
        assert!(t.close_seen());
        assert_eq!(t.close().unwrap().code(), Some(1000));
        assert_eq!(t.close().unwrap().reason(), "");
        // A later, longer Close is not captured over the first.
        t.observe(&frame(Role::Client, 0x88, b"\x03\xe9going away"))
            .unwrap();
        assert_eq!(t.close().unwrap().code(), Some(1000));
        assert!(t.close.is_none(), "no box for a two-byte payload");
    }

    #[test]
    fn empty_close_has_no_code_and_later_closes_are_ignored() {
        let mut t = FrameTracker::new(Role::Server);
        t.observe(&frame(Role::Server, 0x88, b"")).unwrap();
        t.observe(&frame(Role::Server, 0x88, b"\x03\xe8")).unwrap();
        assert_eq!(t.close().unwrap().code(), None);
    }

    #[test]
    fn extended_lengths_are_skipped_exactly() {
        let mut t = FrameTracker::new(Role::Client);
        let big = vec![7u8; 70_000];
        let mut wire = frame(Role::Client, 0x82, &big[..300]);
        wire.extend(frame(Role::Client, 0x82, &big));
        wire.extend(frame(Role::Client, 0x81, b"x"));
        let n = t.observe_to_boundary(&wire).unwrap();
        assert_eq!(n, 2 + 2 + 4 + 300);
        assert_eq!(t.messages(), 1);
        let m = t.observe_to_boundary(&wire[n..]).unwrap();
        assert_eq!(m, 2 + 8 + 4 + 70_000);
        t.observe(&wire[n + m..]).unwrap();
        assert_eq!(t.messages(), 3);
        assert_eq!(t.boundary(), Some(Boundary::Message));
    }

    #[test]
    fn fragmented_message_counts_once_and_allows_control_frames_between() {
        let mut t = FrameTracker::new(Role::Server);
        t.observe(&frame(Role::Server, 0x02, b"ab")).unwrap();
        assert_eq!(t.boundary(), Some(Boundary::Frame));
        t.observe(&frame(Role::Server, 0x8a, b"pong")).unwrap();
        assert_eq!(t.boundary(), Some(Boundary::Frame));
        t.observe(&frame(Role::Server, 0x00, b"cd")).unwrap();
        assert_eq!(t.messages(), 0);
        t.observe(&frame(Role::Server, 0x80, b"")).unwrap();
        assert_eq!(t.messages(), 1);
        assert_eq!(t.boundary(), Some(Boundary::Message));
    }

    #[test]
    fn rsv_bits_pass_as_permessage_deflate_sets_them() {
        let mut t = FrameTracker::new(Role::Client);
        // RSV1 on a compressed text message (RFC 7692 §6).
        t.observe(&frame(Role::Client, 0xc1, b"\xf2\x48\x05\x00"))
            .unwrap();
        assert_eq!(t.messages(), 1);
    }

    #[test]
    fn rule_breaks_are_reported_and_sticky() {
        let cases: &[(Role, Vec<u8>, FrameError)] = &[
            (
                Role::Client,
                frame(Role::Server, 0x81, b"hi"),
                FrameError::UnmaskedClientFrame,
            ),
            (
                Role::Server,
                frame(Role::Client, 0x81, b"hi"),
                FrameError::MaskedServerFrame,
            ),
            (
                Role::Server,
                frame(Role::Server, 0x83, b""),
                FrameError::ReservedOpcode(3),
            ),
            (
                Role::Server,
                frame(Role::Server, 0x8b, b""),
                FrameError::ReservedOpcode(0xb),
            ),
            (
                Role::Server,
                frame(Role::Server, 0x89, &[0; 126]),
                FrameError::ControlTooLong,
            ),
            (
                Role::Server,
                frame(Role::Server, 0x09, b""),
                FrameError::FragmentedControl,
            ),
            (
                Role::Server,
                frame(Role::Server, 0x80, b""),
                FrameError::UnexpectedContinuation,
            ),
            (
                Role::Server,
                [
                    frame(Role::Server, 0x01, b"a"),
                    frame(Role::Server, 0x81, b"b"),
                ]
                .concat(),
                FrameError::UnfinishedMessage,
            ),
            (
                Role::Server,
                vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
                FrameError::LengthTooLarge,
            ),
            (
                Role::Server,
                frame(Role::Server, 0x88, b"\x03"),
                FrameError::CloseTooShort,
            ),
        ];
        for (role, wire, want) in cases {
            let mut t = FrameTracker::new(*role);
            assert_eq!(t.observe(wire), Err(*want), "{wire:02x?}");
            assert_eq!(t.error(), Some(*want));
            assert_eq!(t.boundary(), None);
            assert_eq!(t.observe(&[0x81]), Err(*want));
            assert_eq!(t.observe(&[]), Err(*want));
            assert_eq!(t.observe_to_boundary(&[0x81]), Err(*want));
        }
    }

    #[test]
    fn boundary_is_none_inside_a_header() {
        let mut t = FrameTracker::new(Role::Client);
        let wire = frame(Role::Client, 0x82, b"xyz");
        for (i, b) in wire.iter().enumerate() {
            let expect = if i == 0 {
                Some(Boundary::Message)
            } else {
                None
            };
            assert_eq!(t.boundary(), expect, "at byte {i}");
            t.observe(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(t.boundary(), Some(Boundary::Message));
    }
}
