//! Extra headers from configuration (nginx `proxy_set_header`,
//! `add_header`), validated when the policy is built.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::hop::is_hop_by_hop;
use super::ForwardConfigError;

/// One configured header edit, as written by the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawEdit {
    Set(String, Vec<u8>),
    Remove(String),
}

/// Validated header edits, applied in configuration order.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderEdits {
    edits: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl HeaderEdits {
    /// Refuses names that are not tokens, values with CR, LF, NUL or other
    /// controls, and the fields the proxy manages itself (hop-by-hop and
    /// `Content-Length`), which would break framing or connection handling.
    pub(crate) fn compile(raw: &[RawEdit]) -> Result<Self, ForwardConfigError> {
        let mut edits = Vec::with_capacity(raw.len());
        for edit in raw {
            let (name, value) = match edit {
                RawEdit::Set(n, v) => (n, Some(v)),
                RawEdit::Remove(n) => (n, None),
            };
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ForwardConfigError::InvalidHeaderName { name: name.clone() })?;
            if is_hop_by_hop(&parsed) || parsed == http::header::CONTENT_LENGTH {
                return Err(ForwardConfigError::ReservedHeader {
                    name: parsed.as_str().to_owned(),
                });
            }
            let value =
                match value {
                    Some(v) => Some(HeaderValue::from_bytes(v).map_err(|_| {
                        ForwardConfigError::InvalidHeaderValue { name: name.clone() }
                    })?),
                    None => None,
                };
            edits.push((parsed, value));
        }
        Ok(Self { edits })
    }

    /// The names this sets (not those it removes).
    pub(crate) fn set_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.edits
            .iter()
            .filter(|(_, value)| value.is_some())
            .map(|(name, _)| name)
    }

    /// What the edits leave for `name` once all have applied: `None` when
    /// none names it, `Some(None)` when the last removes it, `Some(value)`
    /// when the last sets it.
    pub(crate) fn last_for(&self, name: &HeaderName) -> Option<Option<&HeaderValue>> {
        self.edits
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_ref())
    }

    /// The values set, once per name (the last edit of each name that sets
    /// it), in configuration order.
    pub(crate) fn final_sets(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.edits
            .iter()
            .enumerate()
            .filter_map(|(i, (name, value))| {
                let later = self.edits.get(i + 1..).unwrap_or_default();
                match value {
                    Some(v) if !later.iter().any(|(n, _)| n == name) => Some((name, v)),
                    _ => None,
                }
            })
    }

    /// Whether no edit is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.edits {
            match value {
                Some(v) => {
                    headers.insert(name.clone(), v.clone());
                }
                None => {
                    headers.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &str, v: &[u8]) -> RawEdit {
        RawEdit::Set(n.into(), v.to_vec())
    }

    #[test]
    fn cr_lf_and_nul_in_values_are_refused() {
        for bad in [&b"a\rb"[..], b"a\nb", b"a\0b", b"a\r\nX-Injected: 1"] {
            let err = HeaderEdits::compile(&[set("x-tag", bad)]).unwrap_err();
            assert!(
                matches!(err, ForwardConfigError::InvalidHeaderValue { ref name } if name == "x-tag")
            );
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["x tag", "x:tag", "", "x\r\ny"] {
            let err = HeaderEdits::compile(&[set(bad, b"1")]).unwrap_err();
            assert!(matches!(err, ForwardConfigError::InvalidHeaderName { .. }));
        }
    }

    #[test]
    fn proxy_managed_names_are_refused() {
        for name in [
            "Connection",
            "transfer-encoding",
            "Upgrade",
            "content-length",
            "TE",
        ] {
            let err = HeaderEdits::compile(&[RawEdit::Remove(name.into())]).unwrap_err();
            assert!(
                matches!(err, ForwardConfigError::ReservedHeader { .. }),
                "{name}"
            );
        }
    }

    #[test]
    fn underscore_names_set_and_remove_in_order() {
        let edits = HeaderEdits::compile(&[
            set("HTTP_X_FORWARDED_FOR", b"1.2.3.4"),
            set("x-a", b"1"),
            RawEdit::Remove("x-a".into()),
        ])
        .unwrap();
        let mut h = HeaderMap::new();
        h.append("http_x_forwarded_for", HeaderValue::from_static("old"));
        h.append("http_x_forwarded_for", HeaderValue::from_static("old2"));
        edits.apply(&mut h);
        assert_eq!(
            h.get_all("http_x_forwarded_for").iter().collect::<Vec<_>>(),
            ["1.2.3.4"]
        );
        assert!(h.get("x-a").is_none());
    }
}
