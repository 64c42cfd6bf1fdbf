//! `--tls-cert`/`--tls-key`: a rustls server configuration for `wss://`
//! termination (nginx `listen 443 ssl`, `ssl_certificate`,
//! `ssl_certificate_key`), offering HTTP/2 as well when the gateway is
//! built with feature `h2` and `--no-h2` is not given (nginx `http2 on`).

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use wsproxy::server::DrainReport;
use wsproxy::workers::BoundWorkers;

/// The TLS acceptor and whether its ALPN offers `h2`.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub h2: bool,
    cert: Arc<Cert>,
}

/// The certificate every handshake is answered with; a reload swaps it, so
/// that a renewed certificate (certbot) is served without a restart, as
/// nginx's reload loads it again.
#[derive(Debug)]
struct Cert {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for Cert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// Reads the PEM files into a certificate chain with its key, checked to
/// match.
fn certified(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("invalid certificate or key: {e}"))
}

/// Reads the PEM files and builds the acceptor, with the ring provider.
/// `h2`: offer HTTP/2 in ALPN before http/1.1 (only with feature `h2`,
/// which serves it).
pub fn acceptor(cert: &Path, key: &Path, h2: bool) -> Result<Tls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = Arc::new(Cert {
        current: RwLock::new(Arc::new(certified(cert, key, &provider)?)),
        provider: Arc::clone(&provider),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("invalid certificate or key: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    // WebSockets over HTTP/2 are RFC 8441 extended CONNECTs, which only the
    // `h2` feature's front door serves: without it, never offer h2, or a
    // browser would pick it and find no WebSocket there.
    let h2 = h2 && cfg!(feature = "h2");
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        h2,
        cert,
    })
}

/// A certificate read for [`Tls::serve_cert`], not yet served.
pub struct LoadedCert(Arc<CertifiedKey>);

impl Tls {
    /// Reads the PEM files again, checked as at start; nothing changes yet.
    pub fn load_cert(&self, cert: &Path, key: &Path) -> Result<LoadedCert, String> {
        Ok(LoadedCert(Arc::new(certified(
            cert,
            key,
            &self.cert.provider,
        )?)))
    }

    /// Answers new handshakes with `loaded` from now on.
    pub fn serve_cert(&self, loaded: LoadedCert) {
        *self
            .cert
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = loaded.0;
    }
}

/// Serves `workers` over TLS until retired: HTTP/2 on connections whose
/// ALPN picked `h2`, HTTP/1.1 on the others.
pub async fn serve(
    workers: BoundWorkers,
    tls: Tls,
    retire: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<DrainReport> {
    let acceptor = tls.acceptor;
    #[cfg(feature = "h2")]
    if tls.h2 {
        use wsproxy::server::Negotiated;
        let accept = move |tcp| {
            let accepting = acceptor.accept(tcp);
            async move {
                let stream = accepting.await?;
                let protocol = Negotiated::from_alpn(stream.get_ref().1.alpn_protocol());
                Ok((stream, protocol))
            }
        };
        return workers.serve_negotiated(accept, retire, shutdown).await;
    }
    workers
        .serve_retiring(move |tcp| acceptor.accept(tcp), retire, shutdown)
        .await
}
