//! `--metrics ADDR`: the admin listener (feature `metrics`). Prometheus
//! text on `/metrics`, `/healthz` while the process runs, `/readyz` while
//! the gateway accepts clients (503 once its drain has begun, so that a
//! load balancer in front stops sending new clients first).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Handshakes take milliseconds; a slow upstream's, seconds.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Tunnels live from a second (a health probe) to hours (a chat tab).
const TUNNEL_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0,
];

/// Histograms kept as summaries need their windows rotated; between
/// scrapes this keeps memory bounded.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder. Must run before the proxy is built:
/// the proxy registers its handles then.
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(wsproxy::metrics::HANDSHAKE_SECONDS.to_owned()),
            HANDSHAKE_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(wsproxy::metrics::TUNNEL_SECONDS.to_owned()),
                TUNNEL_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// What the admin listener reads.
#[derive(Clone)]
pub struct Admin {
    pub prometheus: PrometheusHandle,
    /// Its groups' upstream sets, for `wsproxy_upstreams`: read at each
    /// scrape, so that they follow a reload.
    pub proxy: wsproxy::Proxy,
    /// Set once the drain has begun.
    pub draining: Arc<AtomicBool>,
}

impl Admin {
    /// Serves on `listener` until the process exits. One task per admin
    /// connection: scrapes are rare and short.
    pub async fn serve(self, listener: TcpListener) {
        let upkeep = self.prometheus.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP_EVERY).await;
                upkeep.run_upkeep();
            }
        });
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors, for instance: give the others a
                // moment rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.answer(&req)) }
                });
                let conn = http1::Builder::new()
                    .header_read_timeout(Duration::from_secs(10))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(tcp), service);
                let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            });
        }
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<String> {
        match req.uri().path() {
            "/metrics" => {
                let now = Instant::now();
                for group in self.proxy.groups() {
                    if let Some(set) = group.upstreams() {
                        wsproxy::metrics::record_upstreams(group.name(), set, now);
                    }
                }
                self.prometheus.run_upkeep();
                let mut ok = Response::new(self.prometheus.render());
                ok.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                ok
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.draining.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => text(StatusCode::OK, "ready\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<String> {
    let mut answer = Response::new(body.to_owned());
    *answer.status_mut() = status;
    answer
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
