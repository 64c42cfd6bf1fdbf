//! End-to-end rules of the policy through its public API.

use super::*;

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ctx(peer_addr: &str, websocket: bool) -> ForwardContext {
    ForwardContext::new(
        peer(peer_addr),
        Scheme::Http,
        8080,
        "10.9.0.1:9000".parse().unwrap(),
    )
    .with_websocket(websocket)
}

fn request(pairs: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::get("/chat?room=1");
    for (k, v) in pairs {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// Runs steps 1 and 3 the way the proxy does and returns the rewritten head.
fn forward(
    policy: &ForwardPolicy,
    peer_addr: &str,
    websocket: bool,
    pairs: &[(&str, &str)],
) -> Request<()> {
    let mut req = request(pairs);
    let client = policy.resolve_client(peer(peer_addr), req.headers(), Scheme::Http);
    policy.rewrite_request(&mut req, &client, &ctx(peer_addr, websocket));
    req
}

fn all<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

const WS: &[(&str, &str)] = &[
    ("host", "Chat.Example:8080"),
    ("upgrade", "websocket"),
    ("connection", "keep-alive, Upgrade"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
];

#[test]
fn nginx_default_rewrites_a_websocket_upgrade_like_the_classic_config() {
    let req = forward(&ForwardPolicy::default(), "192.0.2.10:5000", true, WS);
    let h = req.headers();
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(all(h, "upgrade"), ["websocket"]);
    assert_eq!(all(h, "connection"), ["upgrade"]);
    // `$http_host` since issue 15: the port the client used survives.
    assert_eq!(all(h, "host"), ["Chat.Example:8080"]);
    assert_eq!(all(h, "x-real-ip"), ["192.0.2.10"]);
    assert_eq!(all(h, "x-forwarded-for"), ["192.0.2.10"]);
    assert_eq!(all(h, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(h, "sec-websocket-key"), ["dGhlIHNhbXBsZSBub25jZQ=="]);
    assert_eq!(all(h, "sec-websocket-version"), ["13"]);
    assert!(h.get("forwarded").is_none());
    assert_eq!(h.len(), 8);
}

#[test]
fn plain_request_gets_connection_close_and_loses_other_upgrades() {
    let req = forward(
        &ForwardPolicy::nginx(),
        "192.0.2.10:5000",
        false,
        &[
            ("host", "a.example"),
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ],
    );
    let h = req.headers();
    assert_eq!(all(h, "connection"), ["close"]);
    assert!(h.get("upgrade").is_none());
    assert!(h.get("http2-settings").is_none());
}

#[test]
fn http_10_request_is_forwarded_as_http_11() {
    let mut req = request(&[("host", "a.example")]);
    *req.version_mut() = Version::HTTP_10;
    let policy = ForwardPolicy::nginx();
    let client = policy.resolve_client(peer("192.0.2.1:1"), req.headers(), Scheme::Http);
    policy.rewrite_request(&mut req, &client, &ctx("192.0.2.1:1", false));
    assert_eq!(req.version(), Version::HTTP_11);
}

#[test]
fn absolute_form_target_becomes_origin_form() {
    let mut req = Request::get("http://a.example:81/x?y=1").body(()).unwrap();
    let policy = ForwardPolicy::nginx();
    let client = policy.resolve_client(peer("192.0.2.1:1"), req.headers(), Scheme::Http);
    policy.rewrite_request(&mut req, &client, &ctx("192.0.2.1:1", false));
    assert_eq!(req.uri(), "/x?y=1");
    assert_eq!(req.headers()["host"], "a.example:81");
}

#[test]
fn untrusted_peer_cannot_spoof_real_ip_proto_or_forwarded() {
    let req = forward(
        &ForwardPolicy::nginx(),
        "192.0.2.10:5000",
        false,
        &[
            ("host", "a.example"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6;proto=https"),
        ],
    );
    let h = req.headers();
    assert_eq!(all(h, "x-real-ip"), ["192.0.2.10"]);
    // Appended like $proxy_add_x_forwarded_for: rightmost is the real peer.
    assert_eq!(all(h, "x-forwarded-for"), ["6.6.6.6, 192.0.2.10"]);
    assert_eq!(all(h, "x-forwarded-proto"), ["http"]);
    assert!(h.get("forwarded").is_none());
}

#[test]
fn untrusted_peer_is_what_ip_hash_sees() {
    let policy = ForwardPolicy::builder()
        .trusted_proxy("10.0.0.0/8")
        .build()
        .unwrap();
    let req = request(&[("x-forwarded-for", "10.0.0.7"), ("x-real-ip", "10.0.0.7")]);
    let client = policy.resolve_client(peer("192.0.2.10:5000"), req.headers(), Scheme::Http);
    assert_eq!(client.ip().to_string(), "192.0.2.10");
    assert!(!client.is_peer_trusted());
}

#[test]
fn trusted_chain_is_walked_past_several_hops() {
    let policy = ForwardPolicy::builder()
        .trusted_proxy("10.0.0.0/8")
        .trusted_proxy("fd00::/8")
        .build()
        .unwrap();
    let pairs = [
        ("host", "a.example"),
        ("x-forwarded-for", "6.6.6.6, 198.51.100.4, fd00::2"),
        ("x-forwarded-for", "10.1.1.1"),
        ("x-forwarded-proto", "https"),
        ("x-real-ip", "6.6.6.6"),
    ];
    let mut req = request(&pairs);
    let client = policy.resolve_client(peer("10.0.0.1:5000"), req.headers(), Scheme::Http);
    assert_eq!(client.ip().to_string(), "198.51.100.4");
    assert_eq!(client.proto(), Scheme::Https);
    assert!(client.is_peer_trusted());
    policy.rewrite_request(&mut req, &client, &ctx("10.0.0.1:5000", false));
    let h = req.headers();
    assert_eq!(all(h, "x-real-ip"), ["198.51.100.4"]);
    assert_eq!(
        all(h, "x-forwarded-for"),
        ["6.6.6.6, 198.51.100.4, fd00::2, 10.1.1.1, 10.0.0.1"]
    );
    assert_eq!(all(h, "x-forwarded-proto"), ["https"]);
}

#[test]
fn all_hops_trusted_believes_the_leftmost() {
    let policy = ForwardPolicy::builder()
        .trusted_proxy("10.0.0.0/8")
        .build()
        .unwrap();
    let req = request(&[("x-forwarded-for", "10.5.5.5, 10.0.0.2")]);
    let client = policy.resolve_client(peer("10.0.0.1:5000"), req.headers(), Scheme::Http);
    assert_eq!(client.ip().to_string(), "10.5.5.5");
}

#[test]
fn ipv4_mapped_peer_is_reported_as_ipv4() {
    let req = forward(
        &ForwardPolicy::nginx(),
        "[::ffff:192.0.2.10]:5000",
        false,
        &[("host", "a")],
    );
    assert_eq!(req.headers()["x-real-ip"], "192.0.2.10");
    assert_eq!(req.headers()["x-forwarded-for"], "192.0.2.10");
}

#[test]
fn replace_mode_sends_only_the_believed_client() {
    let policy = ForwardPolicy::builder()
        .trusted_proxy("10.0.0.0/8")
        .x_forwarded_for(XForwardedFor::Replace)
        .build()
        .unwrap();
    let req = forward(
        &policy,
        "10.0.0.1:1",
        false,
        &[("x-forwarded-for", "6.6.6.6, 198.51.100.4")],
    );
    assert_eq!(all(req.headers(), "x-forwarded-for"), ["198.51.100.4"]);
    let req = forward(
        &policy,
        "192.0.2.3:1",
        false,
        &[("x-forwarded-for", "6.6.6.6")],
    );
    assert_eq!(all(req.headers(), "x-forwarded-for"), ["192.0.2.3"]);
}

#[test]
fn connection_listed_headers_are_removed_but_forwarding_headers_are_rebuilt() {
    let req = forward(
        &ForwardPolicy::nginx(),
        "192.0.2.10:5000",
        false,
        &[
            ("host", "a.example"),
            (
                "connection",
                "X-Debug, x-forwarded-for, Content-Length, Host",
            ),
            ("x-debug", "1"),
            ("x-forwarded-for", "198.51.100.1"),
            ("content-length", "4"),
        ],
    );
    let h = req.headers();
    assert!(h.get("x-debug").is_none());
    assert_eq!(all(h, "x-forwarded-for"), ["198.51.100.1, 192.0.2.10"]);
    assert_eq!(all(h, "content-length"), ["4"]);
    assert_eq!(all(h, "host"), ["a.example"]);
}

#[test]
fn chunked_request_keeps_transfer_encoding_for_its_relayed_body() {
    let req = forward(
        &ForwardPolicy::nginx(),
        "192.0.2.10:5000",
        false,
        &[
            ("host", "a"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
        ],
    );
    let h = req.headers();
    assert_eq!(all(h, "transfer-encoding"), ["chunked"]);
    assert!(h.get("te").is_none());
    assert!(h.get("trailer").is_none());
    assert!(h.get("content-length").is_none());
}

#[test]
fn host_modes() {
    let pairs = [("host", "App.Example:9999")];
    let run = |mode: HostMode| {
        let policy = ForwardPolicy::builder().host(mode).build().unwrap();
        forward(&policy, "192.0.2.1:1", false, &pairs).headers()["host"].clone()
    };
    assert_eq!(run(HostMode::default()), "App.Example:9999");
    assert_eq!(run(HostMode::ClientAsSent), "App.Example:9999");
    assert_eq!(run(HostMode::Client), "app.example");
    assert_eq!(run(HostMode::ClientWithListenerPort), "app.example:8080");
    assert_eq!(run(HostMode::Upstream), "10.9.0.1:9000");
    assert_eq!(run(HostMode::Fixed("api.internal".into())), "api.internal");
}

#[test]
fn fixed_host_with_crlf_or_empty_is_refused_at_build() {
    for bad in ["a\r\nx: y", ""] {
        let err = ForwardPolicy::builder()
            .host(HostMode::Fixed(bad.into()))
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ForwardConfigError::InvalidHeaderValue { ref name } if name == "host")
        );
    }
}

#[test]
fn forwarded_header_names_the_believed_client_with_ipv6_quoted() {
    let policy = ForwardPolicy::builder()
        .forwarded(true)
        .trusted_proxy("::1")
        .build()
        .unwrap();
    let req = forward(
        &policy,
        "[::1]:5000",
        false,
        &[
            ("host", "a.example"),
            ("x-forwarded-for", "2001:db8:cafe::17"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ],
    );
    assert_eq!(
        all(req.headers(), "forwarded"),
        ["for=\"[2001:db8:cafe::17]\";proto=https;host=a.example"]
    );
}

#[test]
fn trusted_peer_forwarded_passes_through_when_disabled() {
    let policy = ForwardPolicy::builder()
        .trusted_proxy("10.0.0.0/8")
        .build()
        .unwrap();
    let req = forward(
        &policy,
        "10.0.0.1:1",
        false,
        &[("forwarded", "for=198.51.100.4")],
    );
    assert_eq!(all(req.headers(), "forwarded"), ["for=198.51.100.4"]);
}

#[test]
fn extra_request_headers_are_set_and_removed_last() {
    let policy = ForwardPolicy::builder()
        .set_request_header("HTTP_X_FORWARDED_FOR", "$proxy_add_x_forwarded_for")
        .set_request_header("X-Real-IP", "overridden")
        .remove_request_header("x-forwarded-proto")
        .build()
        .unwrap();
    let req = forward(
        &policy,
        "192.0.2.1:1",
        false,
        &[("http_x_forwarded_for", "6.6.6.6")],
    );
    let h = req.headers();
    assert_eq!(
        all(h, "http_x_forwarded_for"),
        ["$proxy_add_x_forwarded_for"]
    );
    assert_eq!(all(h, "x-real-ip"), ["overridden"]);
    assert!(h.get("x-forwarded-proto").is_none());
}

#[test]
fn bad_configured_headers_are_refused_at_build() {
    let cases = [
        ForwardPolicy::builder().set_request_header("X-A", "a\nb"),
        ForwardPolicy::builder().set_request_header("X-A", "a\0b"),
        ForwardPolicy::builder().add_response_header("X-A", "a\rb"),
        ForwardPolicy::builder().set_request_header("X\r\nA", "1"),
    ];
    for builder in cases {
        let err = builder.build().unwrap_err();
        assert!(matches!(
            err,
            ForwardConfigError::InvalidHeaderValue { .. }
                | ForwardConfigError::InvalidHeaderName { .. }
        ));
    }
    let err = ForwardPolicy::builder()
        .set_request_header("X-A", "a\r\nb")
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for header `X-A`: control characters are not allowed"
    );
}

#[test]
fn bad_cidr_and_origin_are_refused_at_build() {
    let err = ForwardPolicy::builder()
        .trusted_proxy("10.0.0.0/40")
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid trusted proxy `10.0.0.0/40`");
    assert!(std::error::Error::source(&err).is_some());
    let err = ForwardPolicy::builder()
        .allow_origin("app.example")
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid origin `app.example`");
}

#[test]
fn websocket_from_foreign_origin_is_403_and_plain_request_is_not_checked() {
    let policy = ForwardPolicy::builder()
        .allow_origin("https://app.example")
        .build()
        .unwrap();
    let evil = request(&[("origin", "https://evil.example")]);
    let err = policy.check(&evil, true).unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        err,
        ForwardError::OriginNotAllowed {
            origin: "https://evil.example".into()
        }
    );
    assert_eq!(policy.check(&evil, false), Ok(()));
    assert_eq!(
        policy.check(&request(&[("origin", "https://app.example")]), true),
        Ok(())
    );
    assert_eq!(ForwardPolicy::nginx().check(&evil, true), Ok(()));
}

#[test]
fn preflight_is_answered_204_only_when_cors_is_configured() {
    let req = Request::options("/api")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .body(())
        .unwrap();
    assert!(ForwardPolicy::nginx().preflight(&req).is_none());
    let policy = ForwardPolicy::builder()
        .cors(Cors::origins(["https://app.example"]).allow_methods("GET, PUT"))
        .build()
        .unwrap();
    let answer = policy.preflight(&req).unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(answer.headers()["access-control-allow-methods"], "GET, PUT");
    assert!(policy
        .preflight(&request(&[("origin", "https://app.example")]))
        .is_none());
}

fn answer(status: u16, pairs: &[(&str, &str)]) -> Response<()> {
    let mut b = Response::builder().status(status);
    for (k, v) in pairs {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn client_of(policy: &ForwardPolicy, pairs: &[(&str, &str)], listener: Scheme) -> Client {
    policy.resolve_client(peer("192.0.2.1:1"), request(pairs).headers(), listener)
}

#[test]
fn answer_loses_hop_by_hop_and_gets_connection_close() {
    let policy = ForwardPolicy::nginx();
    let client = client_of(&policy, &[("host", "a")], Scheme::Http);
    let mut resp = answer(
        200,
        &[
            ("connection", "keep-alive, X-Internal"),
            ("keep-alive", "timeout=5"),
            ("x-internal", "1"),
            ("upgrade", "h2c"),
            ("content-length", "10"),
            ("transfer-encoding", "chunked"),
        ],
    );
    *resp.version_mut() = Version::HTTP_10;
    policy.rewrite_response(&mut resp, &client, &ctx("192.0.2.1:1", false));
    let h = resp.headers();
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(all(h, "connection"), ["close"]);
    assert!(h.get("keep-alive").is_none());
    assert!(h.get("x-internal").is_none());
    assert!(h.get("upgrade").is_none());
    assert_eq!(all(h, "content-length"), ["10"]);
    assert_eq!(all(h, "transfer-encoding"), ["chunked"]);
}

#[test]
fn switching_protocols_keeps_upgrade_and_connection_only() {
    let policy = ForwardPolicy::builder()
        .cors(Cors::any_origin())
        .add_response_header("X-Frame-Options", "DENY")
        .build()
        .unwrap();
    let client = client_of(&policy, &[("host", "a")], Scheme::Http);
    let mut resp = answer(
        101,
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("keep-alive", "timeout=5"),
        ],
    );
    policy.rewrite_response(&mut resp, &client, &ctx("192.0.2.1:1", true));
    let h = resp.headers();
    assert_eq!(all(h, "upgrade"), ["websocket"]);
    assert_eq!(all(h, "connection"), ["Upgrade"]);
    assert_eq!(
        all(h, "sec-websocket-accept"),
        ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    );
    assert_eq!(h.len(), 3);
}

#[test]
fn redirect_to_upstream_is_pointed_at_the_client_address() {
    let policy = ForwardPolicy::nginx();
    let client = client_of(&policy, &[("host", "app.example:8443")], Scheme::Https);
    let mut resp = answer(
        301,
        &[
            ("location", "http://10.9.0.1:9000/next?a=1"),
            ("refresh", "3; url=http://10.9.0.1:9000/r"),
        ],
    );
    policy.rewrite_response(&mut resp, &client, &ctx("192.0.2.1:1", false));
    assert_eq!(
        resp.headers()["location"],
        "https://app.example:8443/next?a=1"
    );
    assert_eq!(
        resp.headers()["refresh"],
        "3; url=https://app.example:8443/r"
    );
}

#[test]
fn refresh_without_location_is_rewritten_too() {
    let policy = ForwardPolicy::nginx();
    let client = client_of(&policy, &[("host", "app.example")], Scheme::Https);
    let mut resp = answer(200, &[("refresh", "0; url=http://10.9.0.1:9000/r")]);
    policy.rewrite_response(&mut resp, &client, &ctx("192.0.2.1:1", false));
    assert_eq!(resp.headers()["refresh"], "0; url=https://app.example/r");
}

#[test]
fn redirect_off_and_foreign_locations_are_untouched() {
    let policy = ForwardPolicy::builder().redirect(false).build().unwrap();
    let client = client_of(&policy, &[("host", "app.example")], Scheme::Https);
    let mut resp = answer(302, &[("location", "http://10.9.0.1:9000/x")]);
    policy.rewrite_response(&mut resp, &client, &ctx("192.0.2.1:1", false));
    assert_eq!(resp.headers()["location"], "http://10.9.0.1:9000/x");
    let policy = ForwardPolicy::nginx();
    let mut resp = answer(302, &[("location", "https://sso.example/login")]);
    policy.rewrite_response(&mut resp, &client, &ctx("192.0.2.1:1", false));
    assert_eq!(resp.headers()["location"], "https://sso.example/login");
}

#[test]
fn plain_answers_get_cors_and_configured_headers() {
    let policy = ForwardPolicy::builder()
        .cors(Cors::origins(["https://app.example"]))
        .add_response_header("X-Frame-Options", "DENY")
        .remove_response_header("Server")
        .build()
        .unwrap();
    let client = client_of(
        &policy,
        &[("host", "a"), ("origin", "https://app.example")],
        Scheme::Http,
    );
    let mut resp = answer(
        200,
        &[("server", "secret/1.0"), ("vary", "Accept-Encoding")],
    );
    policy.rewrite_response(&mut resp, &client, &ctx("192.0.2.1:1", false));
    let h = resp.headers();
    assert_eq!(
        all(h, "access-control-allow-origin"),
        ["https://app.example"]
    );
    assert_eq!(all(h, "vary"), ["Accept-Encoding", "Origin"]);
    assert_eq!(all(h, "x-frame-options"), ["DENY"]);
    assert!(h.get("server").is_none());

    let other = client_of(&policy, &[("origin", "https://evil.example")], Scheme::Http);
    let mut resp = answer(200, &[]);
    policy.rewrite_response(&mut resp, &other, &ctx("192.0.2.1:1", false));
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Header-ish text: visible ASCII plus space, heavy on the separators
    /// the rules split on.
    fn field() -> impl Strategy<Value = String> {
        prop::string::string_regex(r#"[ -~]{0,40}|([0-9a-f:.\[\], ;=]|10\.0\.0\.[0-9]){0,12}"#)
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn rewrite_never_panics_and_keeps_the_peer_rightmost(
            xff in field(), host in field(), conn in field(), proto in field(),
            trusted_peer in any::<bool>(), websocket in any::<bool>(),
        ) {
            let policy = ForwardPolicy::builder().trusted_proxy("10.0.0.0/8").forwarded(true).build().unwrap();
            let peer_addr = if trusted_peer { "10.0.0.1:1" } else { "192.0.2.9:1" };
            let mut req = Request::get("/").body(()).unwrap();
            for (name, value) in [("x-forwarded-for", &xff), ("host", &host), ("connection", &conn), ("x-forwarded-proto", &proto)] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    req.headers_mut().insert(name, v);
                }
            }
            let client = policy.resolve_client(peer(peer_addr), req.headers(), Scheme::Http);
            if !trusted_peer {
                prop_assert_eq!(client.ip().to_string(), "192.0.2.9");
                prop_assert_eq!(client.proto(), Scheme::Http);
            }
            policy.rewrite_request(&mut req, &client, &ctx(peer_addr, websocket));
            let h = req.headers();
            let ip = peer(peer_addr).ip().to_string();
            let list = h["x-forwarded-for"].to_str().unwrap();
            prop_assert!(list == ip || list.ends_with(&format!(", {ip}")), "{}", list);
            prop_assert_eq!(h["x-real-ip"].to_str().unwrap(), client.ip().to_string());
            prop_assert_eq!(h.get_all("connection").iter().count(), 1);
        }

        #[test]
        fn answer_rewrite_never_panics(location in field(), refresh in field(), host in field()) {
            let policy = ForwardPolicy::nginx();
            let mut req = Request::get("/").body(()).unwrap();
            if let Ok(v) = HeaderValue::from_str(&host) {
                req.headers_mut().insert("host", v);
            }
            let client = policy.resolve_client(peer("192.0.2.9:1"), req.headers(), Scheme::Https);
            let mut resp = Response::new(());
            for (name, value) in [("location", &location), ("refresh", &refresh)] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    resp.headers_mut().insert(name, v);
                }
            }
            policy.rewrite_response(&mut resp, &client, &ctx("192.0.2.9:1", false));
            prop_assert_eq!(&resp.headers()["connection"], "close");
        }
    }
}
