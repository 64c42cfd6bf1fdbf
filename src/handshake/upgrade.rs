//! Whether an upstream's 101 completes the WebSocket upgrade it answers.

use base64::Engine as _;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{Response, StatusCode};

use super::request::WebSocketUpgrade;
use super::syntax::has_token;
use super::SwitchError;

/// RFC 6455 §1.3: the GUID appended to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The Sec-WebSocket-Accept value for a Sec-WebSocket-Key:
/// base64(SHA-1(key + GUID)), RFC 6455 §4.2.2.
///
/// ```
/// // The example of RFC 6455 §1.3.
/// let accept = wsproxy::handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
/// assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    String::from_utf8_lossy(&accept_bytes(key)).into_owned()
}

/// [`accept_key`] on the stack: base64 of a 20-byte digest is 28 bytes.
pub(super) fn accept_bytes(key: &[u8]) -> [u8; 28] {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(sha1.digest().bytes(), &mut out);
    out
}

/// Checks a 101 against the upgrade it answers (RFC 6455 §4.1, the checks
/// the client would make: the proxy makes them before it opens a tunnel).
pub(super) fn check_switch<B>(
    upgrade: &WebSocketUpgrade,
    response: &Response<B>,
) -> Result<(), SwitchError> {
    debug_assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers();
    let mut upgrades = headers.get_all(UPGRADE).iter();
    match (upgrades.next(), upgrades.next()) {
        (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"websocket") => {}
        _ => return Err(SwitchError::Upgrade),
    }
    if !has_token(headers.get_all(CONNECTION), "upgrade") {
        return Err(SwitchError::Connection);
    }
    let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    let accept = match (accepts.next(), accepts.next()) {
        (Some(accept), None) => accept,
        _ => return Err(SwitchError::MissingAccept),
    };
    // Compared on the stack: a `String` per handshake for 28 bytes.
    if accept.as_bytes() != accept_bytes(upgrade.key().as_bytes()) {
        return Err(SwitchError::AcceptMismatch);
    }
    Ok(())
}
