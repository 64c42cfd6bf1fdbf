//! CORS: the OPTIONS preflight the proxy answers itself, and the
//! `Access-Control-*` headers it adds to plain answers (the well-known nginx
//! `add_header Access-Control-…` snippet, as configuration).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::origin::OriginAllowlist;
use super::ForwardConfigError;

/// CORS settings for [`ForwardPolicyBuilder::cors`](super::ForwardPolicyBuilder::cors).
///
/// Defaults follow the widely copied nginx CORS snippet: methods
/// `GET, POST, OPTIONS`, headers
/// `DNT, User-Agent, X-Requested-With, If-Modified-Since, Cache-Control, Content-Type, Range`,
/// `Access-Control-Max-Age: 1728000`. Values are validated when the policy
/// is built.
///
/// # Examples
///
/// ```
/// use wsproxy::forward::{Cors, ForwardPolicy};
///
/// let policy = ForwardPolicy::builder()
///     .cors(Cors::origins(["https://app.example"]).allow_methods("GET, POST").max_age(600))
///     .build()?;
/// # let _ = policy;
/// # Ok::<(), wsproxy::forward::ForwardConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cors {
    origins: Option<Vec<String>>,
    methods: String,
    headers: String,
    expose: Option<String>,
    max_age: u32,
    credentials: bool,
}

impl Cors {
    /// Any origin: answers carry `Access-Control-Allow-Origin: *`.
    pub fn any_origin() -> Self {
        Self {
            origins: None,
            methods: "GET, POST, OPTIONS".into(),
            headers:
                "DNT, User-Agent, X-Requested-With, If-Modified-Since, Cache-Control, Content-Type, Range"
                    .into(),
            expose: None,
            max_age: 1_728_000,
            credentials: false,
        }
    }

    /// Only these exact origins: an allowed `Origin` is echoed back, with
    /// `Vary: Origin` so caches keep one answer per origin.
    pub fn origins<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            origins: Some(origins.into_iter().map(Into::into).collect()),
            ..Self::any_origin()
        }
    }

    /// `Access-Control-Allow-Methods` on preflight answers.
    #[must_use]
    pub fn allow_methods(mut self, methods: impl Into<String>) -> Self {
        self.methods = methods.into();
        self
    }

    /// `Access-Control-Allow-Headers` on preflight answers.
    #[must_use]
    pub fn allow_headers(mut self, headers: impl Into<String>) -> Self {
        self.headers = headers.into();
        self
    }

    /// `Access-Control-Expose-Headers` on plain answers.
    #[must_use]
    pub fn expose_headers(mut self, headers: impl Into<String>) -> Self {
        self.expose = Some(headers.into());
        self
    }

    /// `Access-Control-Max-Age` in seconds on preflight answers.
    #[must_use]
    pub fn max_age(mut self, seconds: u32) -> Self {
        self.max_age = seconds;
        self
    }

    /// `Access-Control-Allow-Credentials: true`; refused at build with
    /// [`Cors::any_origin`], which browsers reject.
    #[must_use]
    pub fn allow_credentials(mut self, allow: bool) -> Self {
        self.credentials = allow;
        self
    }

    pub(crate) fn compile(&self) -> Result<CompiledCors, ForwardConfigError> {
        let value = |name: &str, v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| ForwardConfigError::InvalidHeaderValue { name: name.into() })
        };
        let origins = match &self.origins {
            None if self.credentials => {
                return Err(ForwardConfigError::CorsCredentialsWithAnyOrigin)
            }
            None => None,
            Some(list) => Some(OriginAllowlist::parse(list)?),
        };
        Ok(CompiledCors {
            origins,
            methods: value("access-control-allow-methods", &self.methods)?,
            headers: value("access-control-allow-headers", &self.headers)?,
            expose: match &self.expose {
                Some(e) => Some(value("access-control-expose-headers", e)?),
                None => None,
            },
            max_age: HeaderValue::from(self.max_age),
            credentials: self.credentials,
        })
    }
}

/// [`Cors`] with every value checked, ready to write.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCors {
    /// `None` is any origin. An empty list allows none, unlike the upgrade
    /// allowlist, so it is matched with `contains`, not `allows`.
    origins: Option<OriginAllowlist>,
    methods: HeaderValue,
    headers: HeaderValue,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

/// What `Access-Control-Allow-Origin` says for one request origin.
enum Allow<'a> {
    Any,
    Echo(&'a HeaderValue),
}

impl CompiledCors {
    fn allow<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<Allow<'a>> {
        match &self.origins {
            None => Some(Allow::Any),
            Some(list) => {
                let origin = origin?;
                list.contains(origin.as_bytes())
                    .then_some(Allow::Echo(origin))
            }
        }
    }

    fn write_origin(&self, allow: Allow<'_>, headers: &mut HeaderMap) {
        match allow {
            Allow::Any => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
            Allow::Echo(origin) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                headers.append(header::VARY, HeaderValue::from_static("Origin"));
            }
        }
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// The answer to a CORS preflight (Fetch standard: `OPTIONS` with
    /// `Origin` and `Access-Control-Request-Method`): 204 with the CORS
    /// headers, or 403 without them for an origin outside the list.
    pub(crate) fn preflight<B>(&self, req: &Request<B>) -> Option<Response<()>> {
        let h = req.headers();
        if req.method() != Method::OPTIONS
            || !h.contains_key(header::ORIGIN)
            || !h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut resp = Response::new(());
        let Some(allow) = self.allow(h.get(header::ORIGIN)) else {
            *resp.status_mut() = StatusCode::FORBIDDEN;
            return Some(resp);
        };
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let out = resp.headers_mut();
        self.write_origin(allow, out);
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.headers.clone());
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(resp)
    }

    /// Adds the CORS headers to a plain answer for a request from `origin`.
    /// They replace any the upstream sent: two `Access-Control-Allow-Origin`
    /// fields make browsers reject the answer.
    pub(crate) fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        let Some(allow) = self.allow(origin) else {
            return;
        };
        self.write_origin(allow, headers);
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight_request(origin: &str) -> Request<()> {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap()
    }

    #[test]
    fn preflight_from_any_origin_gets_204_with_nginx_snippet_headers() {
        let cors = Cors::any_origin().compile().unwrap();
        let resp = cors
            .preflight(&preflight_request("https://a.example"))
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(h["access-control-allow-methods"], "GET, POST, OPTIONS");
        assert_eq!(
            h["access-control-allow-headers"],
            "DNT, User-Agent, X-Requested-With, If-Modified-Since, Cache-Control, Content-Type, Range"
        );
        assert_eq!(h["access-control-max-age"], "1728000");
        assert!(h.get("vary").is_none());
    }

    #[test]
    fn preflight_from_listed_origin_echoes_it_and_varies() {
        let cors = Cors::origins(["https://a.example"])
            .allow_credentials(true)
            .compile()
            .unwrap();
        let resp = cors
            .preflight(&preflight_request("https://a.example"))
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://a.example"
        );
        assert_eq!(resp.headers()["vary"], "Origin");
        assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    }

    #[test]
    fn preflight_from_unlisted_origin_gets_403_without_cors_headers() {
        let cors = Cors::origins(["https://a.example"]).compile().unwrap();
        let resp = cors
            .preflight(&preflight_request("https://evil.example"))
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().is_empty());
    }

    #[test]
    fn empty_origin_list_allows_no_origin() {
        let cors = Cors::origins(Vec::<String>::new()).compile().unwrap();
        let resp = cors
            .preflight(&preflight_request("https://a.example"))
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let mut h = HeaderMap::new();
        cors.decorate(Some(&HeaderValue::from_static("https://a.example")), &mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn listed_origin_matches_case_insensitively() {
        let cors = Cors::origins(["https://A.example"]).compile().unwrap();
        let resp = cors
            .preflight(&preflight_request("https://a.EXAMPLE"))
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://a.EXAMPLE"
        );
    }

    #[test]
    fn options_without_request_method_is_not_a_preflight() {
        let cors = Cors::any_origin().compile().unwrap();
        let req = Request::builder()
            .method(Method::OPTIONS)
            .header("origin", "https://a.example")
            .body(())
            .unwrap();
        assert!(cors.preflight(&req).is_none());
    }

    #[test]
    fn decorate_replaces_upstream_allow_origin() {
        let cors = Cors::any_origin()
            .expose_headers("Content-Length")
            .compile()
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "access-control-allow-origin",
            HeaderValue::from_static("https://x"),
        );
        cors.decorate(None, &mut h);
        assert_eq!(h.get_all("access-control-allow-origin").iter().count(), 1);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(h["access-control-expose-headers"], "Content-Length");
    }

    #[test]
    fn credentials_with_any_origin_are_refused() {
        let err = Cors::any_origin()
            .allow_credentials(true)
            .compile()
            .unwrap_err();
        assert!(matches!(
            err,
            ForwardConfigError::CorsCredentialsWithAnyOrigin
        ));
    }

    #[test]
    fn bad_configured_values_are_refused() {
        let err = Cors::any_origin()
            .allow_methods("GET\r\nX: y")
            .compile()
            .unwrap_err();
        assert!(
            matches!(err, ForwardConfigError::InvalidHeaderValue { ref name } if name == "access-control-allow-methods")
        );
        let err = Cors::origins(["a.example"]).compile().unwrap_err();
        assert!(matches!(err, ForwardConfigError::InvalidOrigin { .. }));
    }
}
