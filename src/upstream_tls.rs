//! TLS toward upstreams (feature `rustls`): nginx `proxy_pass https://…`
//! and its `proxy_ssl_*` directives, with rustls on the ring provider.
//!
//! An [`UpstreamGroup`] given an
//! [`UpstreamTls`] reaches every one of its upstreams over TLS (as nginx's
//! `proxy_pass https://group` does for all servers of the group): the TCP
//! connect (or a Unix socket's, nginx `https://unix:/path`), then the TLS
//! handshake, both within the connect timeout (nginx
//! `proxy_connect_timeout` bounds the SSL handshake too). A handshake that
//! fails, a certificate that does not verify included, is a failed connect:
//! 502, counted against the upstream's `max_fails`, and the next upstream
//! is tried. Health checks go over TLS too when the checker is given the
//! same configuration ([`HealthChecker::tls`](crate::proxy::HealthChecker::tls)).
//!
//! - **Verification is on by default**, against the system's root
//!   certificates, or only those of a CA file
//!   ([`UpstreamTlsBuilder::ca_file`], nginx
//!   `proxy_ssl_trusted_certificate`). nginx's `proxy_ssl_verify` defaults
//!   to `off`; here it does not, because an unverified TLS connection
//!   protects from passive eavesdroppers only, and the default should not
//!   be the setting that an attacker on the path can exploit.
//!   [`UpstreamTlsBuilder::danger_accept_invalid_certs`] turns it off, for
//!   tests.
//! - **SNI and the verified name** are the upstream's host name, or a
//!   configured one ([`UpstreamTlsBuilder::server_name`], nginx
//!   `proxy_ssl_name` with `proxy_ssl_server_name on`). An upstream given
//!   by IP address is verified against the IP addresses of its certificate
//!   and sends no SNI (RFC 6066 allows host names only); a Unix socket
//!   upstream is `localhost`.
//! - **ALPN** offers `http/1.1` only: WebSockets are HTTP/1.1 upgrades
//!   (RFC 6455), and the proxy speaks HTTP/1.1 upstream.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use wsproxy::balance::{RoundRobin, Upstream, UpstreamAddr};
//! use wsproxy::proxy::UpstreamGroup;
//! use wsproxy::upstream_tls::UpstreamTls;
//!
//! // proxy_pass https://backends; proxy_ssl_trusted_certificate ca.pem;
//! // proxy_ssl_verify on; proxy_ssl_name backend.internal;
//! # let ca_pem = rcgen::generate_simple_self_signed(vec!["backend.internal".into()])?.cert.pem();
//! let tls = UpstreamTls::builder()
//!     .ca_pem(ca_pem.as_bytes())
//!     .server_name("backend.internal")
//!     .build()?;
//! let upstream = Upstream::new(UpstreamAddr::name("10.0.0.7", 8443));
//! let group = UpstreamGroup::new("backends", RoundRobin::new([upstream].into_iter().collect()))
//!     .tls(tls);
//! assert!(group.upstream_tls().is_some());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::balance::UpstreamAddr;
use crate::proxy::stream::UpstreamStream;
use crate::proxy::{HealthChecker, UpstreamGroup};

/// How a group's upstreams are reached over TLS: built once, cheap to
/// clone (one `Arc`), shared by every connection and health check.
///
/// See the [module docs](self) for the defaults and why.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use wsproxy::upstream_tls::{UpstreamTls, Verify};
///
/// # let ca_pem = rcgen::generate_simple_self_signed(vec!["localhost".into()])?.cert.pem();
/// let tls = UpstreamTls::builder().ca_pem(ca_pem.as_bytes()).build()?;
/// assert_eq!(tls.verify(), Verify::CaCertificates);
/// assert_eq!(tls.server_name(), None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
    verify: Verify,
}

/// What an [`UpstreamTls`] verifies an upstream's certificate against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verify {
    /// The system's root certificates (the default).
    SystemRoots,
    /// Only the certificates of a CA file or PEM text (nginx
    /// `proxy_ssl_trusted_certificate`).
    CaCertificates,
    /// Nothing: any certificate is accepted (nginx `proxy_ssl_verify off`).
    /// For tests only.
    Off,
}

impl UpstreamTls {
    /// Starts a configuration: system roots, SNI from the upstream's name.
    pub fn builder() -> UpstreamTlsBuilder {
        UpstreamTlsBuilder::default()
    }

    /// The configured SNI and verified name, when not the upstream's own.
    pub fn server_name(&self) -> Option<&str> {
        match &self.server_name {
            Some(ServerName::DnsName(name)) => Some(name.as_ref()),
            _ => None,
        }
    }

    /// What certificates are verified against.
    pub fn verify(&self) -> Verify {
        self.verify
    }

    /// The TLS handshake over an open connection to `addr`, with the
    /// configured name or the upstream's.
    pub(crate) async fn handshake(
        &self,
        addr: &UpstreamAddr,
        stream: UpstreamStream,
    ) -> io::Result<UpstreamStream> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => name_of(addr)?,
        };
        let tls = self.connector.connect(name, stream).await?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }
}

/// The name an upstream is verified by (and the SNI, for a host name).
fn name_of(addr: &UpstreamAddr) -> io::Result<ServerName<'static>> {
    match addr {
        UpstreamAddr::Socket(sa) => Ok(ServerName::IpAddress(sa.ip().into())),
        UpstreamAddr::Name { host, .. } => ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
        UpstreamAddr::Unix(_) => Ok(ServerName::try_from("localhost")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .to_owned()),
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name())
            .field("verify", &self.verify)
            .finish()
    }
}

/// Where trusted certificates come from.
#[derive(Debug, Clone, Default)]
enum Trust {
    #[default]
    System,
    File(PathBuf),
    Pem(Vec<u8>),
    Off,
}

/// Builds an [`UpstreamTls`]; see [`UpstreamTls::builder`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until build"]
pub struct UpstreamTlsBuilder {
    trust: Trust,
    server_name: Option<String>,
}

impl UpstreamTlsBuilder {
    /// Verifies against the CA certificates of the PEM file at `path`
    /// only, read by [`build`](Self::build) (nginx
    /// `proxy_ssl_trusted_certificate`). Replaces the system roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust = Trust::File(path.into());
        self
    }

    /// Verifies against the CA certificates of `pem` only, as
    /// [`ca_file`](Self::ca_file) does with a file's text.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.trust = Trust::Pem(pem.as_ref().to_vec());
        self
    }

    /// Verifies against the system's root certificates (the default).
    pub fn system_roots(mut self) -> Self {
        self.trust = Trust::System;
        self
    }

    /// Sends `name` as SNI and verifies the certificate for it, whatever
    /// the upstream's address (nginx `proxy_ssl_name`).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// With `true`, accepts any certificate, expired, self-signed or for
    /// another name (nginx `proxy_ssl_verify off`). For tests against
    /// throwaway certificates only: anyone on the path can then read and
    /// change the traffic.
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        if accept {
            self.trust = Trust::Off;
        } else if matches!(self.trust, Trust::Off) {
            self.trust = Trust::System;
        }
        self
    }

    /// Loads the certificates and builds the configuration.
    ///
    /// # Errors
    ///
    /// [`UpstreamTlsError`]: a CA file that cannot be read or holds no
    /// certificate, no usable system root, or an invalid server name.
    pub fn build(self) -> Result<UpstreamTls, UpstreamTlsError> {
        let provider = Arc::new(crypto::ring::default_provider());
        let server_name = self
            .server_name
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| UpstreamTlsError::ServerName(name))
            })
            .transpose()?;
        let versions = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(UpstreamTlsError::Config)?;
        let (verify, builder) = match self.trust {
            Trust::Off => (
                Verify::Off,
                versions
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))),
            ),
            Trust::System => (
                Verify::SystemRoots,
                versions.with_root_certificates(system_roots()?),
            ),
            Trust::File(path) => {
                let pem = std::fs::read(&path).map_err(|source| UpstreamTlsError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let roots = pem_roots(&pem, &path.display().to_string())?;
                (
                    Verify::CaCertificates,
                    versions.with_root_certificates(roots),
                )
            }
            Trust::Pem(pem) => {
                let roots = pem_roots(&pem, "the pem text")?;
                (
                    Verify::CaCertificates,
                    versions.with_root_certificates(roots),
                )
            }
        };
        let mut config = builder.with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            verify,
        })
    }
}

/// The certificates of a PEM text, as roots.
fn pem_roots(pem: &[u8], what: &str) -> Result<RootCertStore, UpstreamTlsError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(UpstreamTlsError::NoCertificates(what.to_owned()));
    }
    Ok(roots)
}

/// The system's roots; the unreadable ones are skipped, as long as one is
/// left.
fn system_roots() -> Result<RootCertStore, UpstreamTlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(UpstreamTlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// Why an [`UpstreamTls`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamTlsError {
    /// The CA file could not be read.
    #[error("cannot read ca file {path}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The CA file or PEM text holds no certificate.
    #[error("no ca certificate in {0}")]
    NoCertificates(String),
    /// The system has no root certificate rustls can use.
    #[error("no usable system root certificate")]
    NoSystemRoots,
    /// The configured server name is neither a DNS name nor an IP address.
    #[error("invalid tls server name {0:?}")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("tls configuration refused")]
    Config(#[source] rustls::Error),
}

/// Accepts any certificate, yet checks the handshake's signatures with the
/// provider's algorithms, so the session is still keyed by whoever holds
/// the certificate's key (nginx `proxy_ssl_verify off` does the same).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl UpstreamGroup {
    /// Reaches every upstream of this group over TLS configured by `tls`
    /// (nginx `proxy_pass https://…`); see the [module docs](self).
    /// Feature `rustls`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use wsproxy::balance::{RoundRobin, UpstreamSet};
    /// use wsproxy::proxy::UpstreamGroup;
    /// use wsproxy::upstream_tls::UpstreamTls;
    ///
    /// let tls = UpstreamTls::builder().danger_accept_invalid_certs(true).build()?;
    /// let group = UpstreamGroup::new("tls", RoundRobin::new(UpstreamSet::new())).tls(tls);
    /// assert!(group.upstream_tls().is_some());
    /// # Ok(())
    /// # }
    /// ```
    #[must_use = "builder methods return the updated group"]
    pub fn tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The group's TLS configuration, if its upstreams are reached over
    /// TLS.
    pub fn upstream_tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref()
    }
}

impl HealthChecker {
    /// Probes over TLS configured by `tls`, as the group the set belongs
    /// to connects (HAProxy `check-ssl`, which `ssl` on a server implies):
    /// [`TcpProbe`](crate::proxy::TcpProbe) then passes once the TLS
    /// handshake completes with a certificate that verifies, and
    /// [`WebSocketProbe`](crate::proxy::WebSocketProbe) does its handshake
    /// inside the TLS session. A probe of the host's own gets it through
    /// [`Probe::probe_tls`](crate::proxy::Probe::probe_tls). Feature
    /// `rustls`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use wsproxy::balance::UpstreamSet;
    /// use wsproxy::upstream_tls::UpstreamTls;
    /// use wsproxy::{HealthCheck, HealthChecker};
    ///
    /// let tls = UpstreamTls::builder().danger_accept_invalid_certs(true).build()?;
    /// let checker = HealthChecker::new(UpstreamSet::new(), HealthCheck::default()).tls(tls);
    /// # drop(checker);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use = "builder methods return the updated builder"]
    pub fn tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_refuses_empty_cas_and_bad_names() {
        assert!(matches!(
            UpstreamTls::builder().ca_pem("not pem").build(),
            Err(UpstreamTlsError::NoCertificates(_))
        ));
        assert!(matches!(
            UpstreamTls::builder()
                .ca_file("/nonexistent/ca.pem")
                .build(),
            Err(UpstreamTlsError::CaFile { .. })
        ));
        assert!(matches!(
            UpstreamTls::builder()
                .danger_accept_invalid_certs(true)
                .server_name("bad name!")
                .build(),
            Err(UpstreamTlsError::ServerName(_))
        ));
        let off = UpstreamTls::builder()
            .danger_accept_invalid_certs(true)
            .server_name("backend.test")
            .build()
            .unwrap();
        assert_eq!(
            (off.verify(), off.server_name()),
            (Verify::Off, Some("backend.test"))
        );
    }

    #[test]
    fn the_default_verifies_against_the_system_roots() {
        match UpstreamTls::builder().build() {
            Ok(tls) => assert_eq!(tls.verify(), Verify::SystemRoots),
            // A machine without a CA bundle says so rather than trusting
            // nothing silently.
            Err(UpstreamTlsError::NoSystemRoots) => {}
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn names_come_from_the_upstream_address() {
        let ip = name_of(&"127.0.0.1:443".parse().unwrap()).unwrap();
        assert!(matches!(ip, ServerName::IpAddress(_)));
        let dns = name_of(&UpstreamAddr::name("backend.test", 443)).unwrap();
        assert_eq!(dns.to_str(), "backend.test");
        let unix = name_of(&UpstreamAddr::unix("/run/app.sock")).unwrap();
        assert_eq!(unix.to_str(), "localhost");
    }
}
