//! `--upstream tls://…`, `--upstream-ca`, `--upstream-sni` and
//! `--upstream-insecure`: TLS toward upstreams (nginx `proxy_pass https://`,
//! `proxy_ssl_trusted_certificate`, `proxy_ssl_name`, `proxy_ssl_verify`),
//! with the library's feature `rustls`.

use wsproxy::{HealthChecker, UpstreamGroup};

use crate::cli::Args;
use crate::upstream_spec::Transport;

/// The TLS configuration every tls:// group shares, built once.
#[cfg(feature = "rustls")]
pub type Setting = Option<wsproxy::upstream_tls::UpstreamTls>;
/// Never set without the feature.
#[cfg(not(feature = "rustls"))]
pub type Setting = Option<std::convert::Infallible>;

/// The configuration the flags ask for, if any upstream is tls://; `Err`
/// is a message for a usage error.
pub fn setting(args: &Args) -> Result<Setting, String> {
    let any_tls = args.upstream.iter().any(|(_, t)| *t == Transport::Tls)
        || args.route.iter().any(|r| r.transport == Transport::Tls);
    let tuned = args.upstream_ca.is_some() || args.upstream_sni.is_some() || args.upstream_insecure;
    if !any_tls {
        if tuned {
            return Err(
                "--upstream-ca, --upstream-sni and --upstream-insecure need a tls:// upstream"
                    .into(),
            );
        }
        return Ok(None);
    }
    build(args)
}

#[cfg(feature = "rustls")]
fn build(args: &Args) -> Result<Setting, String> {
    let mut builder = wsproxy::upstream_tls::UpstreamTls::builder();
    if let Some(ca) = &args.upstream_ca {
        builder = builder.ca_file(ca);
    }
    if let Some(name) = &args.upstream_sni {
        builder = builder.server_name(name);
    }
    if args.upstream_insecure {
        eprintln!(
            "gateway: WARNING: --upstream-insecure: tls:// upstream certificates are NOT \
             verified; anyone on the path can read and change the traffic. For tests only."
        );
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| match std::error::Error::source(&e) {
            Some(source) => format!("--upstream-ca: {e}: {source}"),
            None => format!("tls upstreams: {e}"),
        })
}

#[cfg(not(feature = "rustls"))]
fn build(_args: &Args) -> Result<Setting, String> {
    Err("tls:// upstreams need the gateway built with `--features rustls`".into())
}

/// `group` over TLS when its upstreams were written tls://.
pub fn apply(group: UpstreamGroup, transport: Transport, setting: &Setting) -> UpstreamGroup {
    match (transport, setting) {
        #[cfg(feature = "rustls")]
        (Transport::Tls, Some(tls)) => group.tls(tls.clone()),
        #[cfg(not(feature = "rustls"))]
        (_, Some(never)) => match *never {},
        _ => group,
    }
}

/// Health checks of a TLS group's upstreams go over TLS too (HAProxy
/// `check-ssl`, implied by `ssl`).
pub fn check(checker: HealthChecker, group: &UpstreamGroup) -> HealthChecker {
    #[cfg(feature = "rustls")]
    if let Some(tls) = group.upstream_tls() {
        return checker.tls(tls.clone());
    }
    let _ = group;
    checker
}
