//! The `Origin` allowlist for WebSocket upgrades, the defence against
//! cross-site WebSocket hijacking (RFC 6455 §10.2).

use http::header::{self, HeaderMap};

use super::{ForwardConfigError, ForwardError};

/// Exact origins a WebSocket upgrade may come from; empty allows all, as
/// nginx does (it has no origin check).
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginAllowlist {
    origins: Vec<String>,
}

impl OriginAllowlist {
    /// Validates each origin as `scheme://host[:port]` (RFC 6454 §6.2: no
    /// path, no trailing slash) and stores it lowercased, because scheme and
    /// host compare case-insensitively.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, ForwardConfigError> {
        let mut origins = Vec::with_capacity(entries.len());
        for entry in entries {
            if !is_serialized_origin(entry) {
                return Err(ForwardConfigError::InvalidOrigin {
                    origin: entry.clone(),
                });
            }
            origins.push(entry.to_ascii_lowercase());
        }
        Ok(Self { origins })
    }

    /// Whether `origin` is one of the listed origins (never, when the list
    /// is empty). The list is stored lowercased, so only the request's value
    /// needs folding.
    pub(crate) fn contains(&self, origin: &[u8]) -> bool {
        self.origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// Whether `origin` is allowed (always, when the list is empty).
    pub(crate) fn allows(&self, origin: &[u8]) -> bool {
        self.origins.is_empty() || self.contains(origin)
    }

    /// Refuses a WebSocket upgrade whose `Origin` is outside the list.
    ///
    /// A request without `Origin` passes: browsers always send it on
    /// WebSocket handshakes (RFC 6455 §4.1), so its absence means a
    /// non-browser client, which cross-site hijacking cannot drive (the same
    /// rule as gorilla/websocket's default `CheckOrigin`).
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), ForwardError> {
        let mut values = headers.get_all(header::ORIGIN).iter();
        let Some(origin) = values.next() else {
            return Ok(());
        };
        // Several Origin fields are malformed; judge them as one opaque value
        // so none can slip past the list.
        if values.next().is_none() && self.allows(origin.as_bytes()) {
            return Ok(());
        }
        Err(ForwardError::OriginNotAllowed {
            origin: String::from_utf8_lossy(origin.as_bytes()).into_owned(),
        })
    }
}

/// `scheme "://" host [ ":" port ]` with nothing after the authority.
fn is_serialized_origin(s: &str) -> bool {
    let Some((scheme, authority)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    scheme_ok
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && authority.parse::<http::uri::Authority>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn list(entries: &[&str]) -> OriginAllowlist {
        let v: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        OriginAllowlist::parse(&v).unwrap()
    }

    fn with_origin(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ORIGIN, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn empty_list_allows_every_origin() {
        assert_eq!(
            list(&[]).check(&with_origin(&["https://evil.example"])),
            Ok(())
        );
    }

    #[test]
    fn exact_origin_passes_case_insensitively() {
        let l = list(&["https://App.example"]);
        assert_eq!(l.check(&with_origin(&["https://app.example"])), Ok(()));
    }

    #[test]
    fn other_origin_port_or_scheme_is_refused() {
        let l = list(&["https://app.example"]);
        for bad in [
            "https://evil.example",
            "https://app.example:8443",
            "http://app.example",
            "null",
        ] {
            let err = l.check(&with_origin(&[bad])).unwrap_err();
            assert_eq!(err, ForwardError::OriginNotAllowed { origin: bad.into() });
        }
    }

    #[test]
    fn several_origin_fields_are_refused() {
        let l = list(&["https://app.example"]);
        assert!(l
            .check(&with_origin(&[
                "https://app.example",
                "https://evil.example"
            ]))
            .is_err());
    }

    #[test]
    fn missing_origin_passes() {
        assert_eq!(
            list(&["https://app.example"]).check(&HeaderMap::new()),
            Ok(())
        );
    }

    #[test]
    fn malformed_configured_origins_are_refused() {
        for bad in [
            "app.example",
            "https://app.example/",
            "https://",
            "https://a b",
            "1x://a",
        ] {
            let err = OriginAllowlist::parse(&[bad.to_string()]).unwrap_err();
            assert!(
                matches!(err, ForwardConfigError::InvalidOrigin { ref origin } if origin == bad)
            );
        }
    }
}
