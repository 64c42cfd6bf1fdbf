//! Encoding the control frames the proxy sends itself (Close, Ping), and the
//! one source of their masking keys.

use super::{opcode, MAX_CONTROL_PAYLOAD};

/// A fresh masking key for a frame toward a server (RFC 6455 §5.3 asks for
/// one per frame, "derived from a strong source of entropy" so that it is
/// unpredictable). Every key the crate sends comes from here: the tunnel's
/// Close and Ping frames and the health check's Close.
///
/// `RandomState` is seeded from the operating system's randomness and keyed
/// anew per call, so its SipHash output serves without another dependency
/// (the core uses std only).
pub(crate) fn masking_key() -> [u8; 4] {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    let bits = hasher.finish();
    [
        bits as u8,
        (bits >> 8) as u8,
        (bits >> 16) as u8,
        (bits >> 24) as u8,
    ]
}

/// A whole control frame: FIN and `opcode`, then `payload`, masked with
/// `mask` (frames toward a server) or not (`None`, frames toward a client,
/// RFC 6455 §5.1). A payload over 125 bytes (§5.5) is cut there.
pub(crate) fn control_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut out = Vec::with_capacity(2 + 4 + payload.len());
    out.push(0x80 | opcode);
    // At most 125: the length fits the 7-bit field.
    out.push(payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 });
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A Ping frame with an empty payload, masked with `mask` when it goes to a
/// server.
pub(crate) fn ping_frame(mask: Option<[u8; 4]>) -> Vec<u8> {
    control_frame(opcode::PING, &[], mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameTracker, Role};

    #[test]
    fn a_ping_is_two_bytes_toward_a_client_and_six_masked_toward_a_server() {
        assert_eq!(ping_frame(None), [0x89, 0x00]);
        assert_eq!(ping_frame(Some([1, 2, 3, 4])), [0x89, 0x80, 1, 2, 3, 4]);
        let mut server = FrameTracker::new(Role::Client);
        server.observe(&ping_frame(Some(masking_key()))).unwrap();
        let mut client = FrameTracker::new(Role::Server);
        client.observe(&ping_frame(None)).unwrap();
    }

    #[test]
    fn control_payloads_are_masked_by_their_offset_and_capped_at_125_bytes() {
        let wire = control_frame(opcode::PONG, b"hello", Some([1, 2, 3, 4]));
        assert_eq!(&wire[..6], &[0x8a, 0x85, 1, 2, 3, 4]);
        let plain: Vec<u8> = wire[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(plain, b"hello");
        assert_eq!(control_frame(opcode::PING, &[0; 200], None).len(), 2 + 125);
    }

    #[test]
    fn masking_keys_differ_from_call_to_call() {
        // Four random bytes repeat by chance once in 2^32; eight calls that
        // all agree mean the source is not keyed per call.
        let first = masking_key();
        assert!((0..8).any(|_| masking_key() != first));
    }
}
