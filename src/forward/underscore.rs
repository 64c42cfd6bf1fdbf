//! Request header names with underscores (nginx `underscores_in_headers`).
//!
//! CGI, WSGI and Rack map both `-` and `_` to `_` (`X-Real-IP` and
//! `X_Real_IP` both become `HTTP_X_REAL_IP`), so a client's `X_Real_IP`
//! passed through beside the proxy's `X-Real-IP` lets it choose which one
//! such a backend reads.

use http::header::{self, HeaderMap, HeaderName};

use super::extra::HeaderEdits;

/// The fields the proxy itself writes on every request, whose underscore
/// twins are dropped even when underscores are allowed.
static PROXY_SET: [HeaderName; 7] = [
    header::HOST,
    header::CONNECTION,
    header::UPGRADE,
    header::FORWARDED,
    super::X_REAL_IP,
    super::X_FORWARDED_FOR,
    super::X_FORWARDED_PROTO,
];

/// Removes every field whose name has an underscore, or with `allow`, only
/// those that a CGI-style backend would read as a field the proxy sets
/// (built in, or configured in `edits`).
pub(crate) fn strip(headers: &mut HeaderMap, allow: bool, edits: &HeaderEdits) {
    // Names with underscores are rare: this Vec usually never allocates.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if !name.as_str().contains('_') {
            continue;
        }
        let twin = || {
            PROXY_SET.iter().any(|set| is_twin(name, set))
                || edits.set_names().any(|set| is_twin(name, set))
        };
        if !allow || twin() {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
}

/// Whether [`strip`] removes a field named `name` (lowercase): the same
/// rule, for a writer that skips fields instead of removing them.
pub(crate) fn is_dropped(name: &HeaderName, allow: bool, edits: &HeaderEdits) -> bool {
    name.as_str().contains('_')
        && (!allow
            || PROXY_SET.iter().any(|set| is_twin(name, set))
            || edits.set_names().any(|set| is_twin(name, set)))
}

/// Whether `name` reads as `set` once `_` and `-` are the same (names are
/// lowercase already). A configured name with its own underscore is its own
/// twin and is kept: the configured value replaces it afterwards.
fn is_twin(name: &HeaderName, set: &HeaderName) -> bool {
    let (a, b) = (name.as_str().as_bytes(), set.as_str().as_bytes());
    a != b
        && a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || matches!((x, y), (b'_', b'-') | (b'-', b'_')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in names {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("6.6.6.6"),
            );
        }
        h
    }

    #[test]
    fn underscored_names_are_dropped_unless_allowed() {
        let edits = HeaderEdits::default();
        let mut h = headers(&["x_real_ip", "x_custom", "x-custom"]);
        strip(&mut h, false, &edits);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-custom"));

        let mut h = headers(&["x_custom", "x_forwarded_for", "x-forwarded_proto", "host"]);
        strip(&mut h, true, &edits);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x_custom"]);
    }

    #[test]
    fn twins_of_configured_headers_are_dropped_when_underscores_are_allowed() {
        let raw = [super::super::extra::RawEdit::Set(
            "X-Tenant".into(),
            b"a".to_vec(),
        )];
        let edits = HeaderEdits::compile(&raw).unwrap();
        let mut h = headers(&["x_tenant", "x_other"]);
        strip(&mut h, true, &edits);
        assert!(!h.contains_key("x_tenant"));
        assert!(h.contains_key("x_other"));
    }
}
