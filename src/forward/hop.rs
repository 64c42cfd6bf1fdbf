//! Hop-by-hop header removal (RFC 9110 §7.6.1) that keeps body framing.

use http::header::{self, HeaderMap, HeaderName};

/// The fields RFC 9110 §7.6.1 names as connection-specific, plus the
/// pre-standard `Proxy-Connection` that old clients still send.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    REMOVED.contains(name) || name == header::TRANSFER_ENCODING
}

/// Fields a client must not be able to delete by naming them in
/// `Connection` ("hop-by-hop header abuse"): dropping `Content-Length` or
/// `Transfer-Encoding` would leave a body without framing and desynchronise
/// the upstream, and dropping `Host` would break HTTP/1.1 (RFC 9112 §3.2).
fn is_protected(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::HOST
}

/// Which hop-by-hop fields survive the strip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Remove them all.
    Nothing,
    /// Keep `Upgrade` and `Connection`: a 101 answer completing an upgrade.
    Upgrade,
}

/// The hop-by-hop fields removed by [`strip`]. `Connection` and `Upgrade`
/// come first so that [`Keep::Upgrade`] can skip them by starting at
/// [`UPGRADE_PAIR`].
static REMOVED: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
];

/// How many leading entries of [`REMOVED`] a 101 answer keeps.
const UPGRADE_PAIR: usize = 2;

/// Removes every hop-by-hop field and every field named in `Connection`,
/// except `Transfer-Encoding`.
///
/// `Transfer-Encoding` is hop-by-hop, but wsproxy relays bodies in the
/// framing they arrived with (a chunked request body is re-framed, still
/// chunked), so that framing must travel with them:
/// forwarding a chunked body without `Transfer-Encoding: chunked` would make
/// the next hop read the chunk sizes as content and desynchronise it. It is
/// kept verbatim, like the end-to-end `Content-Length`. A caller that
/// decodes and re-frames the body must set the framing itself.
pub(crate) fn strip(headers: &mut HeaderMap, keep: Keep) {
    // Names listed in Connection that are not hop-by-hop anyway are rare,
    // so this Vec usually never allocates.
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for token in value.split(',').map(str::trim) {
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || REMOVED
                    .iter()
                    .any(|n| token.eq_ignore_ascii_case(n.as_str()))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if !is_protected(&name) {
                    listed.push(name);
                }
            }
        }
    }
    for name in &listed {
        headers.remove(name);
    }
    let from = match keep {
        Keep::Nothing => 0,
        Keep::Upgrade => UPGRADE_PAIR,
    };
    for name in &REMOVED[from..] {
        headers.remove(name);
    }
}

/// The fields [`strip`] keeps even when `Connection` names them.
static PROTECTED: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
];

fn named_in(names: &[HeaderName], name: &[u8]) -> bool {
    names
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
}

/// The `Connection` values of one head, read once: the fields they name
/// beyond the hop-by-hop set (`Connection: Upgrade` and `keep-alive` name
/// none), sorted, so that most heads check no field against them and a
/// head listing many checks each field in O(log n), not by rescanning
/// every value for every field.
pub(crate) struct Listed<'v> {
    /// Sorted by [`cmp_ignore_case`]; allocated only when a value names a
    /// field beyond the hop-by-hop set.
    names: Vec<&'v str>,
}

impl<'v> Listed<'v> {
    /// `values` are the head's `Connection` values.
    pub(crate) fn new(values: impl Iterator<Item = &'v [u8]>) -> Self {
        let mut names: Vec<&'v str> = values
            .flat_map(tokens)
            .filter(|token| {
                let t = token.as_bytes();
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !named_in(&REMOVED, t)
                    && !named_in(&PROTECTED, t)
            })
            .collect();
        names.sort_unstable_by(|a, b| cmp_ignore_case(a.as_bytes(), b.as_bytes()));
        Self { names }
    }

    fn lists(&self, name: &[u8]) -> bool {
        !self.names.is_empty()
            && self
                .names
                .binary_search_by(|t| cmp_ignore_case(t.as_bytes(), name))
                .is_ok()
    }

    /// Whether [`strip`] removes a field named `name` (any case), keeping
    /// `Upgrade` and `Connection` with [`Keep::Upgrade`]: the same rule, for
    /// a writer that skips fields instead of removing them from a map.
    pub(crate) fn strips(&self, name: &[u8], keep: Keep) -> bool {
        let from = match keep {
            Keep::Nothing => 0,
            Keep::Upgrade => UPGRADE_PAIR,
        };
        if named_in(&REMOVED[from..], name) {
            return true;
        }
        // A kept `Upgrade` or `Connection` named in `Connection` stays, as
        // do the protected fields (never among `names`).
        !named_in(&REMOVED[..from], name) && self.lists(name)
    }

    /// [`strips`](Self::strips) for a request's field (no field is kept):
    /// the hop-by-hop names compared as `HeaderName`s, which for the
    /// standard ones is one integer compare, not a string compare each.
    pub(crate) fn strips_name(&self, name: &HeaderName) -> bool {
        REMOVED.contains(name) || self.lists(name.as_str().as_bytes())
    }
}

/// Byte order of the ASCII-lowercased strings.
fn cmp_ignore_case(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter()
        .map(u8::to_ascii_lowercase)
        .cmp(b.iter().map(u8::to_ascii_lowercase))
}

/// The tokens of a `Connection` value as [`strip`] reads them: none when
/// the value is not visible ASCII (`to_str` fails).
fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    let visible = value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    let text = if visible {
        std::str::from_utf8(value).unwrap_or_default()
    } else {
        ""
    };
    text.split(',').map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn listed_names_are_found_in_any_case_among_many() {
        let value = (0..300)
            .map(|i| format!("X-Opt-{i}"))
            .chain(["close".into(), "Keep-Alive".into(), "Host".into()])
            .collect::<Vec<_>>()
            .join(", ");
        let values = [value.as_bytes(), b"  x-Late ,"];
        let listed = Listed::new(values.iter().copied());
        for name in [
            "x-opt-0",
            "X-OPT-299",
            "x-opt-150",
            "x-late",
            "keep-alive",
            "te",
        ] {
            assert!(listed.strips(name.as_bytes(), Keep::Nothing), "{name}");
        }
        // Protected, `close`, unlisted and empty names stay.
        for name in ["host", "close", "x-opt-300", "x-opt", "content-length"] {
            assert!(!listed.strips(name.as_bytes(), Keep::Nothing), "{name}");
        }
        let none = Listed::new([b"Upgrade".as_slice()].into_iter());
        assert!(!none.strips(b"x-opt-0", Keep::Nothing));
        assert!(none.strips(b"upgrade", Keep::Nothing));
        assert!(!none.strips(b"upgrade", Keep::Upgrade));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_rfc_9110_hop_by_hop_field_is_removed() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        strip(&mut h, Keep::Nothing);
        assert_eq!(h.len(), 1);
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn hop_by_hop_names_are_the_removed_ones_and_transfer_encoding() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["content-length", "host", "accept", "x-upgrade"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn fields_named_in_connection_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("connection", " x-other ,"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
        ]);
        strip(&mut h, Keep::Nothing);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("x-other").is_none());
        assert_eq!(h["x-kept"], "3");
    }

    #[test]
    fn connection_cannot_delete_content_length_or_host() {
        let mut h = map(&[
            ("connection", "content-length, host"),
            ("content-length", "5"),
            ("host", "a.example"),
        ]);
        strip(&mut h, Keep::Nothing);
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["host"], "a.example");
    }

    #[test]
    fn chunked_framing_is_kept_verbatim() {
        let mut h = map(&[
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
            ("connection", "transfer-encoding"),
        ]);
        strip(&mut h, Keep::Nothing);
        let te: Vec<_> = h.get_all("transfer-encoding").iter().collect();
        assert_eq!(te, ["gzip", "chunked"]);
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn upgrade_pair_survives_when_kept_but_listed_extras_do_not() {
        let mut h = map(&[
            ("connection", "Upgrade, X-Hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
        ]);
        strip(&mut h, Keep::Upgrade);
        assert_eq!(h["connection"], "Upgrade, X-Hop");
        assert_eq!(h["upgrade"], "websocket");
        assert!(h.get("x-hop").is_none());
        assert!(h.get("keep-alive").is_none());
    }
}
