//! Whether an upstream's 101 completes the WebSocket upgrade it answers.

use base64::Engine as _;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{Response, StatusCode};

use super::request::WebSocketUpgrade;
use super::syntax::{has_token, trim_ows};
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
    let mut protocols = headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter();
    match (protocols.next(), protocols.next()) {
        (None, _) => {}
        (Some(chosen), None) if upgrade.offers_protocol(chosen.as_bytes()) => {}
        _ => return Err(SwitchError::Protocol),
    }
    if !headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .all(|v| upgrade.offers_extensions(v.as_bytes()))
    {
        return Err(SwitchError::Extension);
    }
    Ok(())
}

impl WebSocketUpgrade {
    /// Whether `chosen`, a 101's Sec-WebSocket-Protocol, is one subprotocol
    /// the client offered (tokens, compared exactly).
    pub(super) fn offers_protocol(&self, chosen: &[u8]) -> bool {
        let chosen = trim_ows(chosen);
        !chosen.is_empty()
            && !chosen.contains(&b',')
            && self.protocols().is_some_and(|offered| {
                offered
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|p| trim_ows(p) == chosen)
            })
    }

    /// Whether every extension a 101's Sec-WebSocket-Extensions `value`
    /// names is one the client offered (names compared case-insensitively;
    /// the parameters are the extension's business).
    pub(super) fn offers_extensions(&self, value: &[u8]) -> bool {
        extension_names(value).all(|name| {
            self.extensions().is_some_and(|offered| {
                extension_names(offered.as_bytes()).any(|o| o.eq_ignore_ascii_case(name))
            })
        })
    }
}

/// The extension names of a Sec-WebSocket-Extensions value (RFC 6455 §9.1:
/// `name *(";" param)` items, comma-separated; a comma inside a quoted
/// parameter value separates nothing).
fn extension_names(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    value
        .split(move |&b| {
            if b == b'"' {
                quoted = !quoted;
            }
            b == b',' && !quoted
        })
        .map(|item| trim_ows(item.split(|&b| b == b';').next().unwrap_or_default()))
        .filter(|name| !name.is_empty())
}
