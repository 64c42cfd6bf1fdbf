//! The RFC 9112 syntax rules that httparse does not enforce or does not name.
//!
//! httparse refuses NUL, bare CR and obs-fold in requests but only says
//! "invalid header value" or "invalid header name"; it accepts a bare LF as a
//! line end. These functions find which header was at fault, and refuse the
//! bare LF.

use http::header::GetAll;
use http::HeaderValue;

use super::HeadError;

/// Header names in error messages are cut to this many bytes: enough to name
/// the header, short enough for a one-line error answer.
const NAME_IN_MESSAGE: usize = 64;

/// Refuses a head that httparse accepted but which holds a bare LF.
///
/// httparse refuses any CR not followed by LF, so in a head it accepted the
/// two counts are equal exactly when every LF follows a CR. Counting is one
/// vectorised pass; the slow scan runs only to name the culprit.
pub(super) fn check_line_ends(head: &[u8]) -> Result<(), HeadError> {
    let (mut cr, mut lf) = (0usize, 0usize);
    // Byte-wide counters over chunks that cannot overflow them let the
    // compiler compare and add 16 or 32 bytes at a time.
    for chunk in head.chunks(255) {
        let (mut c, mut l) = (0u8, 0u8);
        for &b in chunk {
            c += u8::from(b == b'\r');
            l += u8::from(b == b'\n');
        }
        cr += usize::from(c);
        lf += usize::from(l);
    }
    if cr == lf {
        return Ok(());
    }
    Err(diagnose(head).unwrap_or(HeadError::BareLf { header: None }))
}

/// Finds the first byte-level fault in a (possibly incomplete) head, naming
/// the header it sits in. `None` when the fault is not one it knows.
pub(super) fn diagnose(buf: &[u8]) -> Option<HeadError> {
    // `None` while on the start line, then the last header name seen.
    let mut header: Option<String> = None;
    let mut in_start_line = true;
    let mut rest = buf;
    while !rest.is_empty() {
        let (line, terminated, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        rest = next;
        let (content, crlf) = match line.split_last() {
            Some((b'\r', content)) if terminated => (content, true),
            _ => (line, false),
        };
        if in_start_line {
            if let Some(e) = check_bytes(content, None) {
                return Some(e);
            }
            if terminated && !crlf {
                return Some(HeadError::BareLf { header: None });
            }
            // httparse skips empty lines before the start line (RFC 9112 §2.2).
            in_start_line = content.is_empty();
            continue;
        }
        if content.is_empty() {
            if terminated && !crlf {
                return Some(HeadError::BareLf { header });
            }
            // The blank line ending the head.
            return None;
        }
        if content[0] == b' ' || content[0] == b'\t' {
            return Some(HeadError::ObsFold { header });
        }
        let Some(colon) = content.iter().position(|&b| b == b':') else {
            if terminated {
                return Some(HeadError::HeaderName { after: header });
            }
            return check_name(content, header);
        };
        let name = &content[..colon];
        if let Some(e) = check_name(name, header.take()) {
            return Some(e);
        }
        let name = message_name(name);
        if let Some(e) = check_bytes(&content[colon + 1..], Some(&name)) {
            return Some(e);
        }
        if terminated && !crlf {
            return Some(HeadError::BareLf { header: Some(name) });
        }
        header = Some(name);
    }
    None
}

fn check_name(name: &[u8], after: Option<String>) -> Option<HeadError> {
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(token) {
        return Some(HeadError::HeaderName { after });
    }
    None
}

fn check_bytes(content: &[u8], header: Option<&str>) -> Option<HeadError> {
    let i = content
        .iter()
        .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)?;
    let byte = content[i];
    let header = header.map(str::to_owned);
    if byte == b'\r' {
        // A CR at the very end of an unterminated line may be half of a CRLF.
        if i + 1 == content.len() {
            return None;
        }
        return Some(HeadError::BareCr { header });
    }
    // The start line's own errors are named by the caller.
    header.map(|header| HeadError::ControlByte { header, byte })
}

fn message_name(name: &[u8]) -> String {
    let name = &name[..name.len().min(NAME_IN_MESSAGE)];
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

/// Whether any of the comma-separated lists in `values` holds `token`,
/// compared ASCII case-insensitively (RFC 9110 §5.6.1).
pub(super) fn has_token(values: GetAll<'_, HeaderValue>, token: &str) -> bool {
    values.iter().any(|value| list_has(value.as_bytes(), token))
}

/// Whether the comma-separated list `value` holds `token`, compared ASCII
/// case-insensitively.
pub(super) fn list_has(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| trim_ows(item).eq_ignore_ascii_case(token.as_bytes()))
}

/// Strips optional whitespace (RFC 9110 §5.6.3) from both ends.
pub(super) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnose_names_the_header_holding_the_fault() {
        let cases: &[(&[u8], HeadError)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
                HeadError::ControlByte {
                    header: "x-a".into(),
                    byte: 0,
                },
            ),
            (
                b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
                HeadError::BareCr {
                    header: Some("x-a".into()),
                },
            ),
            (
                b"GET / HTTP/1.1\r\nX-A: a\nb: c\r\n\r\n",
                HeadError::BareLf {
                    header: Some("x-a".into()),
                },
            ),
            (
                b"GET / HTTP/1.1\nHost: a\r\n\r\n",
                HeadError::BareLf { header: None },
            ),
            (
                b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
                HeadError::ObsFold {
                    header: Some("x-a".into()),
                },
            ),
            (
                b"GET / HTTP/1.1\r\n X-A: a\r\n\r\n",
                HeadError::ObsFold { header: None },
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX A: a\r\n\r\n",
                HeadError::HeaderName {
                    after: Some("host".into()),
                },
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\n",
                HeadError::BareLf {
                    header: Some("host".into()),
                },
            ),
        ];
        for (head, want) in cases {
            assert_eq!(
                diagnose(head).as_ref(),
                Some(want),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn diagnose_finds_nothing_in_a_valid_or_half_received_head() {
        assert_eq!(diagnose(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(diagnose(b"GET / HTTP/1.1\r\nHost: a\r"), None);
        assert_eq!(diagnose(b"GET / HTTP/1.1\r\nHo"), None);
        assert_eq!(diagnose(b"\r\nGET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn has_token_reads_comma_separated_lists_case_insensitively() {
        let mut map = http::HeaderMap::new();
        map.append(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(map.get_all("connection"), "upgrade"));
        assert!(!has_token(map.get_all("connection"), "close"));
        map.append("connection", HeaderValue::from_static(" close "));
        assert!(has_token(map.get_all("connection"), "close"));
        assert!(!has_token(map.get_all("upgrade"), "websocket"));
        // A token is the whole list item, not a substring of it.
        map.append(
            "upgrade",
            HeaderValue::from_static("websocketx, xwebsocket"),
        );
        assert!(!has_token(map.get_all("upgrade"), "websocket"));
    }
}
