//! Routes: pick a location by Host and longest path prefix, as nginx does
//! with `server_name` and `location` blocks.
//!
//! Selection runs in two steps, like nginx:
//!
//! 1. the *server*: the routes whose host pattern matches the request's host,
//!    preferring an exact name, then the longest `*.suffix` wildcard, then the
//!    routes that match any host (nginx's default server);
//! 2. the *location*: among that server's routes, the longest path prefix.
//!
//! A host that selects a server whose locations all miss gets 404; it does not
//! fall back to the default server (nginx behaves the same way).
//!
//! ```
//! use wsproxy::route::{Route, Routes};
//!
//! # fn main() -> Result<(), wsproxy::route::RouteConfigError> {
//! let routes = Routes::builder()
//!     .route(Route::new("/", "web"))
//!     .route(Route::new("/chat/", "chat").strip_prefix())
//!     .route(Route::new("/", "admin").host("admin.example.com"))
//!     .build()?;
//!
//! let hit = routes.find(Some("example.com"), "/chat/room?id=4").expect("route");
//! assert_eq!(*hit.target(), "chat");
//! assert_eq!(hit.path_and_query(), "/room?id=4");
//!
//! let hit = routes.find(Some("ADMIN.example.com:8443"), "/x").expect("route");
//! assert_eq!(*hit.target(), "admin");
//! # Ok(())
//! # }
//! ```

// Builders and setters return a changed copy: dropping it is always a bug.
#![warn(clippy::return_self_not_must_use)]

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;

use crate::handshake::{normalize_host, request_host};

/// Which hosts a route serves (nginx `server_name`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostPattern {
    /// Every host: nginx's default server.
    Any,
    /// One host name, compared case-insensitively, without the port.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (so `a.example.com`
    /// and `a.b.example.com`, but not `example.com` itself), as in nginx.
    /// Holds the suffix with its leading dot, lowercased.
    Wildcard(String),
}

impl HostPattern {
    /// Parses `*`/empty (any host), `*.suffix` (wildcard) or an exact name.
    ///
    /// # Errors
    ///
    /// [`RouteConfigError::BadHost`] when the name is empty after the `*.` or
    /// holds characters that cannot appear in a host (space, `/`, a control
    /// character), or a wildcard that is not a leading `*.`.
    pub fn parse(pattern: &str) -> Result<Self, RouteConfigError> {
        let bad = || RouteConfigError::BadHost(pattern.to_owned());
        if pattern.is_empty() || pattern == "*" {
            return Ok(Self::Any);
        }
        let lower = pattern.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "-._[]:".contains(c);
        if name.is_empty() || !name.chars().all(valid_char) || name.starts_with('.') {
            return Err(bad());
        }
        Ok(if wild {
            Self::Wildcard(format!(".{name}"))
        } else {
            Self::Exact(name.to_owned())
        })
    }

    /// How well this pattern matches `host` (lowercased, no port): `None` for
    /// no match, higher is more specific.
    fn rank(&self, host: Option<&str>) -> Option<usize> {
        match (self, host) {
            (Self::Any, _) => Some(0),
            (Self::Exact(name), Some(h)) if name == h => Some(usize::MAX),
            // A longer suffix is a more specific server, as in nginx.
            (Self::Wildcard(suffix), Some(h)) if h.len() > suffix.len() && h.ends_with(suffix) => {
                Some(suffix.len())
            }
            _ => None,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// What a route does to the matched prefix before the request goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrefixRewrite {
    /// Forward the path unchanged (nginx `proxy_pass http://group;`).
    Keep,
    /// Replace the matched prefix (nginx `proxy_pass http://group/new/;`
    /// inside `location /old/`); `Replace("/")` is the common
    /// `proxy_pass http://group/;`.
    Replace(String),
}

/// One location: a host pattern, a path prefix and what it leads to.
///
/// `T` is whatever the host application attaches to a route, typically an
/// upstream group with its balancer.
#[derive(Debug, Clone)]
pub struct Route<T> {
    host: HostPattern,
    host_src: Option<String>,
    prefix: String,
    rewrite: PrefixRewrite,
    target: T,
}

impl<T> Route<T> {
    /// A route for every host, matching paths that start with `prefix`
    /// (a plain string prefix, as nginx `location /prefix`).
    pub fn new(prefix: impl Into<String>, target: T) -> Self {
        Self {
            host: HostPattern::Any,
            host_src: None,
            prefix: prefix.into(),
            rewrite: PrefixRewrite::Keep,
            target,
        }
    }

    /// Restricts the route to a host: an exact name or `*.example.com`.
    /// Checked by [`RoutesBuilder::build`].
    #[must_use]
    pub fn host(mut self, pattern: impl Into<String>) -> Self {
        self.host_src = Some(pattern.into());
        self
    }

    /// Removes the matched prefix, keeping a leading `/`
    /// (`location /chat/ { proxy_pass http://group/; }`).
    #[must_use]
    pub fn strip_prefix(self) -> Self {
        self.replace_prefix("/")
    }

    /// Replaces the matched prefix with `with`.
    #[must_use]
    pub fn replace_prefix(mut self, with: impl Into<String>) -> Self {
        self.rewrite = PrefixRewrite::Replace(with.into());
        self
    }

    /// The host pattern.
    pub fn host_pattern(&self) -> &HostPattern {
        &self.host
    }

    /// The path prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix rewrite.
    pub fn rewrite(&self) -> &PrefixRewrite {
        &self.rewrite
    }

    /// What the route leads to.
    pub fn target(&self) -> &T {
        &self.target
    }
}

/// A route table built by [`Routes::builder`].
#[derive(Debug, Clone)]
pub struct Routes<T> {
    // Sorted by descending prefix length so the first hit in a host group is
    // the longest prefix.
    routes: Vec<Route<T>>,
}

/// Builds a [`Routes`] table; [`build`](Self::build) validates it.
#[derive(Debug)]
#[must_use]
pub struct RoutesBuilder<T> {
    routes: Vec<Route<T>>,
}

impl<T> Default for RoutesBuilder<T> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<T> RoutesBuilder<T> {
    /// Adds a route.
    pub fn route(mut self, route: Route<T>) -> Self {
        self.routes.push(route);
        self
    }

    /// Validates the table.
    ///
    /// # Errors
    ///
    /// - [`RouteConfigError::BadHost`] for an unparsable host pattern;
    /// - [`RouteConfigError::BadPrefix`] for a prefix or replacement that does
    ///   not start with `/`;
    /// - [`RouteConfigError::Duplicate`] for two routes with the same host
    ///   and prefix;
    /// - [`RouteConfigError::Empty`] for a table without routes.
    pub fn build(mut self) -> Result<Routes<T>, RouteConfigError> {
        if self.routes.is_empty() {
            return Err(RouteConfigError::Empty);
        }
        for route in &mut self.routes {
            if let Some(src) = &route.host_src {
                route.host = HostPattern::parse(src)?;
            }
            if !route.prefix.starts_with('/') {
                return Err(RouteConfigError::BadPrefix(route.prefix.clone()));
            }
            if let PrefixRewrite::Replace(with) = &route.rewrite {
                if !with.starts_with('/') {
                    return Err(RouteConfigError::BadPrefix(with.clone()));
                }
            }
        }
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        for (i, a) in self.routes.iter().enumerate() {
            if self.routes[i + 1..]
                .iter()
                .any(|b| a.host == b.host && a.prefix == b.prefix)
            {
                return Err(RouteConfigError::Duplicate {
                    host: a.host.to_string(),
                    prefix: a.prefix.clone(),
                });
            }
        }
        Ok(Routes {
            routes: self.routes,
        })
    }
}

impl<T> Routes<T> {
    /// The same table, each route leading to `f(target)` instead: how a
    /// reconfigured proxy swaps in the groups it keeps without checking
    /// the table again.
    ///
    /// ```
    /// use wsproxy::route::{Route, Routes};
    ///
    /// let routes = Routes::builder().route(Route::new("/chat", 1)).build()?;
    /// let named = routes.map(|n| format!("group {n}"));
    /// assert_eq!(named.iter().next().map(|r| r.target().as_str()), Some("group 1"));
    /// # Ok::<(), wsproxy::route::RouteConfigError>(())
    /// ```
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Routes<U> {
        let routes = self
            .routes
            .iter()
            .map(|r| Route {
                host: r.host.clone(),
                host_src: r.host_src.clone(),
                prefix: r.prefix.clone(),
                rewrite: r.rewrite.clone(),
                target: f(&r.target),
            })
            .collect();
        Routes { routes }
    }

    /// Starts a route table.
    pub fn builder() -> RoutesBuilder<T> {
        RoutesBuilder::default()
    }

    /// Every route, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route<T>> {
        self.routes.iter()
    }

    /// Finds the route for a host (a `Host` header value or URI authority,
    /// port allowed) and a request-target's path and query.
    ///
    /// Returns `None` when no route matches: answer 404.
    pub fn find<'a>(
        &'a self,
        host: Option<&str>,
        path_and_query: &'a str,
    ) -> Option<RouteMatch<'a, T>> {
        let host = host.map(normalize_host);
        let host = host.as_deref();
        let path = path_and_query
            .split_once('?')
            .map_or(path_and_query, |(p, _)| p);
        let best = self.routes.iter().filter_map(|r| r.host.rank(host)).max()?;
        self.routes
            .iter()
            .filter(|r| r.host.rank(host) == Some(best))
            .find(|r| path.starts_with(r.prefix.as_str()))
            .map(|route| RouteMatch {
                route,
                path_and_query,
            })
    }

    /// Finds the route for a parsed request: the host comes from an
    /// absolute-form target's authority if present, otherwise from `Host`
    /// (RFC 9112 §3.2.2).
    ///
    /// # Errors
    ///
    /// - [`RouteError::DotSegments`] (400) when the path holds `.` or `..`
    ///   segments, plain or percent-encoded: a prefix check on such a path
    ///   could be walked out of (`/public/../admin`), and browsers never send
    ///   them;
    /// - [`RouteError::NotFound`] (404) when no route matches.
    pub fn find_for<'a, B>(
        &'a self,
        request: &'a http::Request<B>,
    ) -> Result<RouteMatch<'a, T>, RouteError> {
        let uri = request.uri();
        let host = request_host(request);
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        if has_dot_segment(uri.path()) {
            return Err(RouteError::DotSegments);
        }
        if has_ambiguous_escape(uri.path()) {
            return Err(RouteError::AmbiguousEscape);
        }
        self.find(host, path_and_query).ok_or(RouteError::NotFound)
    }
}

/// A route chosen for one request.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a, T> {
    route: &'a Route<T>,
    path_and_query: &'a str,
}

impl<'a, T> RouteMatch<'a, T> {
    /// The chosen route.
    pub fn route(&self) -> &'a Route<T> {
        self.route
    }

    /// What the route leads to.
    pub fn target(&self) -> &'a T {
        &self.route.target
    }

    /// The route's prefix and what it is replaced with upstream, when the
    /// route rewrites it.
    pub fn prefix_rewrite(&self) -> Option<(&'a str, &'a str)> {
        match &self.route.rewrite {
            PrefixRewrite::Keep => None,
            PrefixRewrite::Replace(with) => Some((&self.route.prefix, with)),
        }
    }

    /// The path and query to send upstream, after the route's prefix rewrite.
    pub fn path_and_query(&self) -> Cow<'a, str> {
        match &self.route.rewrite {
            PrefixRewrite::Keep => Cow::Borrowed(self.path_and_query),
            PrefixRewrite::Replace(with) => {
                let rest = &self.path_and_query[self.route.prefix.len()..];
                // nginx concatenates replacement and rest; only a doubled `/`
                // at the seam is folded, so `/chat/x` stripped is `/x`.
                let joined = match (with.strip_suffix('/'), rest.starts_with('/')) {
                    (Some(base), true) => format!("{base}{rest}"),
                    _ => format!("{with}{rest}"),
                };
                Cow::Owned(joined)
            }
        }
    }
}

// Both checks below read escapes in place rather than decoding through the
// `percent-encoding` crate: what matters is what was *encoded* (`%2e` for
// `.`, `%2f` for `/`), which a decoder's output no longer shows, and they
// allocate nothing. So the crate would add a dependency and no line saved.

/// True when a segment of `path` is `.` or `..`, also as `%2e`/`%2E`.
fn has_dot_segment(path: &str) -> bool {
    const DOTS: [&str; 6] = [".", "..", "%2e", "%2e%2e", ".%2e", "%2e."];
    path.split('/')
        .any(|segment| DOTS.iter().any(|d| segment.eq_ignore_ascii_case(d)))
}

/// True when `path` percent-encodes `/`, `\\` or a character that needs no
/// encoding (RFC 3986 §2.3 unreserved). Prefixes are matched on the path as
/// sent, so `/%63hat` would miss `/chat` and `/a%2f..%2fb` would hide a
/// traversal from the dot-segment check while an upstream that decodes it
/// sees one; browsers never send either form.
fn has_ambiguous_escape(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        if b != b'%' {
            return false;
        }
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (hex(i + 1), hex(i + 2)) {
            (Some(hi), Some(lo)) => {
                let c = (hi * 16 + lo) as u8;
                c == b'/' || c == b'\\' || c.is_ascii_alphanumeric() || b"-._~".contains(&c)
            }
            _ => false,
        }
    })
}

/// Why a request found no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No route matches the host and path.
    #[error("no route for this host and path")]
    NotFound,
    /// The path holds `.` or `..` segments.
    #[error("request path has dot segments")]
    DotSegments,
    /// The path percent-encodes `/`, `\\` or an unreserved character.
    #[error("request path has an ambiguous percent-encoding")]
    AmbiguousEscape,
}

impl RouteError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::DotSegments | Self::AmbiguousEscape => StatusCode::BAD_REQUEST,
        }
    }
}

/// A route table that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteConfigError {
    /// The table has no routes.
    #[error("route table is empty")]
    Empty,
    /// A host pattern is not a host name, `*.suffix` or `*`.
    #[error("bad host pattern {0:?}")]
    BadHost(String),
    /// A prefix or replacement does not start with `/`.
    #[error("path prefix {0:?} does not start with '/'")]
    BadPrefix(String),
    /// Two routes share a host pattern and prefix.
    #[error("duplicate route for host {host} and prefix {prefix:?}")]
    Duplicate {
        /// The host pattern.
        host: String,
        /// The prefix.
        prefix: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Routes<&'static str> {
        Routes::builder()
            .route(Route::new("/", "default"))
            .route(Route::new("/chat", "chat"))
            .route(Route::new("/chat/admin", "chat-admin"))
            .route(Route::new("/ws/", "ws").strip_prefix())
            .route(Route::new("/v1/", "v2").replace_prefix("/v2/"))
            .route(Route::new("/", "exact").host("api.example.com"))
            .route(Route::new("/", "wild").host("*.example.com"))
            .route(Route::new("/only", "deep-wild").host("*.eu.example.com"))
            .build()
            .unwrap()
    }

    fn target(routes: &Routes<&'static str>, host: &str, path: &str) -> Option<&'static str> {
        routes.find(Some(host), path).map(|m| *m.target())
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(target(&t, "x.org", "/chat/admin/1"), Some("chat-admin"));
        assert_eq!(target(&t, "x.org", "/chat/room"), Some("chat"));
        // nginx prefixes are plain string prefixes.
        assert_eq!(target(&t, "x.org", "/chatroom"), Some("chat"));
        assert_eq!(target(&t, "x.org", "/other"), Some("default"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_default() {
        let t = table();
        assert_eq!(target(&t, "api.example.com", "/chat"), Some("exact"));
        assert_eq!(target(&t, "API.Example.COM:443", "/"), Some("exact"));
        assert_eq!(target(&t, "www.example.com", "/chat"), Some("wild"));
        assert_eq!(target(&t, "a.b.example.com", "/"), Some("wild"));
        // The wildcard does not match the bare domain.
        assert_eq!(target(&t, "example.com", "/chat"), Some("chat"));
    }

    #[test]
    fn longer_wildcard_is_more_specific_and_does_not_fall_back() {
        let t = table();
        assert_eq!(target(&t, "x.eu.example.com", "/only/1"), Some("deep-wild"));
        // The host chose the `*.eu.example.com` server; none of its locations
        // match, so 404, as nginx does.
        assert_eq!(target(&t, "x.eu.example.com", "/chat"), None);
    }

    #[test]
    fn prefix_rewrites() {
        let t = table();
        let m = t.find(Some("x.org"), "/ws/echo?a=1").unwrap();
        assert_eq!(m.path_and_query(), "/echo?a=1");
        let m = t.find(Some("x.org"), "/ws/").unwrap();
        assert_eq!(m.path_and_query(), "/");
        let m = t.find(Some("x.org"), "/v1/users?q").unwrap();
        assert_eq!(m.path_and_query(), "/v2/users?q");
        let m = t.find(Some("x.org"), "/chat/x?y").unwrap();
        assert_eq!(m.path_and_query(), "/chat/x?y");
    }

    #[test]
    fn strip_without_trailing_slash_keeps_a_valid_target() {
        let t = Routes::builder()
            .route(Route::new("/chat", 1).strip_prefix())
            .route(Route::new("/api", 2).replace_prefix("/v2"))
            .build()
            .unwrap();
        let pq = |p: &str| t.find(None, p).unwrap().path_and_query().into_owned();
        assert_eq!(pq("/chat"), "/");
        assert_eq!(pq("/chat?x=1"), "/?x=1");
        assert_eq!(pq("/chat/a"), "/a");
        assert_eq!(pq("/api"), "/v2");
        assert_eq!(pq("/api/x"), "/v2/x");
        // A plain string replacement, as nginx does.
        assert_eq!(pq("/apix"), "/v2x");
    }

    #[test]
    fn find_for_uses_absolute_form_authority_over_host() {
        let t = table();
        let req = http::Request::get("http://api.example.com/chat")
            .header("host", "www.example.com")
            .body(())
            .unwrap();
        assert_eq!(*t.find_for(&req).unwrap().target(), "exact");
        let req = http::Request::get("/chat")
            .header("host", "www.example.com")
            .body(())
            .unwrap();
        assert_eq!(*t.find_for(&req).unwrap().target(), "wild");
    }

    #[test]
    fn no_match_is_404() {
        let t = Routes::builder()
            .route(Route::new("/a", ()))
            .build()
            .unwrap();
        let req = http::Request::get("/b")
            .header("host", "x")
            .body(())
            .unwrap();
        let err = t.find_for(&req).unwrap_err();
        assert_eq!(err, RouteError::NotFound);
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn dot_segments_are_400() {
        let t = table();
        for path in ["/ws/../admin", "/ws/%2e%2E/admin", "/./x", "/a/.."] {
            let req = http::Request::get(path)
                .header("host", "x")
                .body(())
                .unwrap();
            let err = t.find_for(&req).unwrap_err();
            assert_eq!(err, RouteError::DotSegments, "{path}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
        let req = http::Request::get("/a/..b/.c")
            .header("host", "x")
            .body(())
            .unwrap();
        assert!(t.find_for(&req).is_ok());
    }

    #[test]
    fn ambiguous_escapes_are_400() {
        let t = table();
        for path in [
            "/ws/..%2fadmin",
            "/ws/%5C..",
            "/%63hat/admin",
            "/a%2Fb",
            "/x%7e",
        ] {
            let req = http::Request::get(path)
                .header("host", "x")
                .body(())
                .unwrap();
            let err = t.find_for(&req).unwrap_err();
            assert_eq!(err, RouteError::AmbiguousEscape, "{path}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
        // Escapes that are needed stay allowed.
        for path in ["/chat/a%20b", "/chat/%25", "/chat/%3F?q=%2f"] {
            let req = http::Request::get(path)
                .header("host", "x")
                .body(())
                .unwrap();
            assert!(t.find_for(&req).is_ok(), "{path}");
        }
    }

    #[test]
    fn ipv6_host_keeps_brackets() {
        let t = Routes::builder()
            .route(Route::new("/", "v6").host("[::1]"))
            .route(Route::new("/", "any"))
            .build()
            .unwrap();
        assert_eq!(target(&t, "[::1]:8080", "/"), Some("v6"));
        assert_eq!(target(&t, "[::2]", "/"), Some("any"));
    }

    #[test]
    fn build_rejects_bad_tables() {
        let empty: RoutesBuilder<()> = Routes::builder();
        assert_eq!(empty.build().unwrap_err(), RouteConfigError::Empty);
        let err = Routes::builder()
            .route(Route::new("chat", ()))
            .build()
            .unwrap_err();
        assert_eq!(err, RouteConfigError::BadPrefix("chat".into()));
        let err = Routes::builder()
            .route(Route::new("/", ()).host("bad host"))
            .build()
            .unwrap_err();
        assert_eq!(err, RouteConfigError::BadHost("bad host".into()));
        let err = Routes::builder()
            .route(Route::new("/", ()).host("a.*.com"))
            .build()
            .unwrap_err();
        assert_eq!(err, RouteConfigError::BadHost("a.*.com".into()));
        let err = Routes::builder()
            .route(Route::new("/x", 1).host("A.com"))
            .route(Route::new("/x", 2).host("a.com"))
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            RouteConfigError::Duplicate {
                host: "a.com".into(),
                prefix: "/x".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "duplicate route for host a.com and prefix \"/x\""
        );
    }
}
