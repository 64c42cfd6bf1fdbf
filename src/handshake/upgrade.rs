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
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
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
    if accept.as_bytes() != upgrade.expected_accept().as_bytes() {
        return Err(SwitchError::AcceptMismatch);
    }
    Ok(())
}
