//! `proxy_redirect default`: a `Location` or `Refresh` that points at the
//! upstream is pointed back at the address the client used.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

use super::Scheme;

const REFRESH: HeaderName = HeaderName::from_static("refresh");

/// Whether `headers` hold a `Location` or `Refresh` that [`rewrite`] may
/// change; most answers hold neither, and then the client's URL need not be
/// built.
pub(crate) fn has_target(headers: &HeaderMap) -> bool {
    headers.contains_key(header::LOCATION) || headers.contains_key(REFRESH)
}

/// Rewrites `Location` and `Refresh` in `headers` from `upstream` to `to`
/// (`scheme://host[:port]` the client used, or empty for a relative URL);
/// with a route's `prefix` rewrite (upstream's, client's), only URLs under
/// the upstream's prefix, which becomes the client's.
pub(crate) fn rewrite(
    headers: &mut HeaderMap,
    upstream: &Authority,
    prefix: Option<(&str, &str)>,
    to: &str,
) {
    if let Some(url) = header_str(headers, &header::LOCATION) {
        if let Some(new) = rewrite_url(url, upstream, prefix, to) {
            set(headers, header::LOCATION, &new);
        }
    }
    if let Some(value) = header_str(headers, &REFRESH) {
        if let Some(new) = rewrite_refresh(value, upstream, prefix, to) {
            set(headers, REFRESH, &new);
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // The parts came from valid header values, so this only fails on a
    // client Host that is not visible ASCII; then the header stays as is.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// `http(s)://<upstream>[path]` → `<to>[path]`; `None` when `url` points
/// elsewhere. The port compares with the scheme's default filled in, so
/// `http://backend/` matches the upstream `backend:80`.
pub(crate) fn rewrite_url(
    url: &str,
    upstream: &Authority,
    prefix: Option<(&str, &str)>,
    to: &str,
) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = Scheme::parse(scheme)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return None;
    }
    let authority: Authority = authority.parse().ok()?;
    let same_host = authority.host().eq_ignore_ascii_case(upstream.host());
    let port = authority.port_u16().unwrap_or(scheme.default_port());
    let upstream_port = upstream.port_u16().unwrap_or(Scheme::Http.default_port());
    if !same_host || port != upstream_port {
        return None;
    }
    let mut out = String::with_capacity(to.len() + tail.len() + 1);
    out.push_str(to);
    match prefix {
        // nginx: the default rule is the location's own, and leaves a URL
        // outside the upstream's prefix alone.
        Some((up, client)) => {
            let rest = tail.strip_prefix(up)?;
            out.push_str(client);
            // The request's rewrite folded the `/` at the seam (`/chat` +
            // `/x` became `/` + `x`): put it back.
            let seam = up.ends_with('/') && !client.ends_with('/');
            if seam && !rest.is_empty() && !rest.starts_with(['?', '#']) {
                out.push('/');
            }
            out.push_str(rest);
        }
        None => {
            if to.is_empty() && !tail.starts_with('/') {
                out.push('/');
            }
            out.push_str(tail);
        }
    }
    Some(out)
}

/// `Refresh: 5; url=<url>` (unquoted or quoted), rewriting only the URL.
fn rewrite_refresh(
    value: &str,
    upstream: &Authority,
    prefix: Option<(&str, &str)>,
    to: &str,
) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    let at = lower.find("url=")? + "url=".len();
    let (head, url) = value.split_at(at);
    let (quote, url) = match url.as_bytes().first() {
        Some(q @ (b'"' | b'\'')) => (Some(char::from(*q)), &url[1..]),
        _ => (None, url),
    };
    let (url, after) = match quote {
        Some(q) => url.split_at(url.find(q).unwrap_or(url.len())),
        None => (url.trim_end(), ""),
    };
    let new = rewrite_url(url, upstream, prefix, to)?;
    let mut out = String::with_capacity(value.len() + to.len());
    out.push_str(head);
    if let Some(q) = quote {
        out.push(q);
    }
    out.push_str(&new);
    out.push_str(after);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Authority {
        s.parse().unwrap()
    }

    #[test]
    fn location_at_upstream_is_rewritten_keeping_the_path() {
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_static("http://10.0.0.5:8080/login?next=%2F#top"),
        );
        rewrite(&mut h, &up("10.0.0.5:8080"), None, "https://app.example");
        assert_eq!(h["location"], "https://app.example/login?next=%2F#top");
    }

    #[test]
    fn default_port_and_host_case_match() {
        assert_eq!(
            rewrite_url(
                "HTTP://Backend/x",
                &up("backend:80"),
                None,
                "http://a.example:8080"
            )
            .as_deref(),
            Some("http://a.example:8080/x")
        );
        assert_eq!(
            rewrite_url(
                "https://backend/x",
                &up("backend:443"),
                None,
                "https://a.example"
            )
            .as_deref(),
            Some("https://a.example/x")
        );
    }

    #[test]
    fn other_hosts_ports_and_relative_urls_are_left_alone() {
        let u = up("backend:8080");
        assert_eq!(
            rewrite_url("http://backend:8081/x", &u, None, "https://a"),
            None
        );
        assert_eq!(
            rewrite_url("http://other:8080/x", &u, None, "https://a"),
            None
        );
        assert_eq!(rewrite_url("/x", &u, None, "https://a"), None);
        assert_eq!(
            rewrite_url("ftp://backend:8080/x", &u, None, "https://a"),
            None
        );
        assert_eq!(
            rewrite_url("http://user@backend:8080/x", &u, None, "https://a"),
            None
        );
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_static("https://elsewhere.example/"),
        );
        rewrite(&mut h, &u, None, "https://a");
        assert_eq!(h["location"], "https://elsewhere.example/");
    }

    #[test]
    fn a_route_rewrite_is_mapped_back_and_urls_outside_it_left_alone() {
        let u = up("backend:8080");
        // location /chat/ { proxy_pass http://backend:8080/; }
        let strip = Some(("/", "/chat/"));
        assert_eq!(
            rewrite_url("http://backend:8080/login", &u, strip, "https://a").as_deref(),
            Some("https://a/chat/login")
        );
        // location /one/ { proxy_pass http://backend:8080/two/; }
        let moved = Some(("/two/", "/one/"));
        assert_eq!(
            rewrite_url("http://backend:8080/two/x?y", &u, moved, "https://a").as_deref(),
            Some("https://a/one/x?y")
        );
        assert_eq!(
            rewrite_url("http://backend:8080/three/", &u, moved, "https://a"),
            None
        );
        // location /chat { proxy_pass http://backend:8080/; }: `/chat/x` went
        // up as `/x`, so `/login` comes back as `/chat/login`.
        let bare = Some(("/", "/chat"));
        assert_eq!(
            rewrite_url("http://backend:8080/login", &u, bare, "https://a").as_deref(),
            Some("https://a/chat/login")
        );
        assert_eq!(
            rewrite_url("http://backend:8080/?q", &u, bare, "https://a").as_deref(),
            Some("https://a/chat?q")
        );
        // Relative (no client host): no doubled `/`.
        assert_eq!(
            rewrite_url("http://backend:8080/login", &u, strip, "").as_deref(),
            Some("/chat/login")
        );
    }

    #[test]
    fn without_client_host_the_url_becomes_relative() {
        assert_eq!(
            rewrite_url("http://backend:8080", &up("backend:8080"), None, "").as_deref(),
            Some("/")
        );
        assert_eq!(
            rewrite_url("http://backend:8080?q", &up("backend:8080"), None, "").as_deref(),
            Some("/?q")
        );
    }

    #[test]
    fn refresh_url_is_rewritten_quoted_or_not() {
        let u = up("backend:8080");
        let mut h = HeaderMap::new();
        h.insert(
            "refresh",
            HeaderValue::from_static("5; URL=http://backend:8080/done"),
        );
        rewrite(&mut h, &u, None, "https://a.example");
        assert_eq!(h["refresh"], "5; URL=https://a.example/done");
        h.insert(
            "refresh",
            HeaderValue::from_static("0;url='http://backend:8080/x' "),
        );
        rewrite(&mut h, &u, None, "https://a.example");
        assert_eq!(h["refresh"], "0;url='https://a.example/x' ");
        h.insert("refresh", HeaderValue::from_static("5"));
        rewrite(&mut h, &u, None, "https://a.example");
        assert_eq!(h["refresh"], "5");
    }
}
