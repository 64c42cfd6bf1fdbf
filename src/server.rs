//! The accept loop: serves a `TcpListener` through a [`Proxy`] with a bound
//! on concurrent connections, and shuts down gracefully.
//!
//! ```no_run
//! use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
//! use wsproxy::server::Server;
//! use wsproxy::Proxy;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let upstreams = [Upstream::new("127.0.0.1:8010".parse::<std::net::SocketAddr>()?)].into_iter().collect::<UpstreamSet>();
//! let proxy = Proxy::builder().upstream(RoundRobin::new(upstreams)).build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8020").await?;
//! let report = Server::new(proxy)
//!     .max_connections(10_000)
//!     .serve(listener, async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! println!("{} tunnels cut at the drain deadline", report.cut);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::forward::Scheme;
use crate::proxy::{Drain, Listener, Phase, Proxy};

/// Serves a listener through a [`Proxy`].
#[derive(Debug, Clone)]
pub struct Server {
    proxy: Proxy,
    scheme: Scheme,
    max_connections: usize,
    drain_timeout: Duration,
}

impl Server {
    /// A server for `proxy`: plain `http`, at most 10,000 connections, a
    /// 30 s drain.
    pub fn new(proxy: Proxy) -> Self {
        Self {
            proxy,
            scheme: Scheme::Http,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// The scheme clients used to reach the listener (`Https` behind TLS
    /// termination in front of this server); feeds `X-Forwarded-Proto`.
    pub fn scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// At most this many connections are served at once; beyond it, new
    /// ones wait in the listen backlog until one ends (nginx
    /// `worker_connections`). At least 1.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long open connections may run after shutdown starts before their
    /// tunnels are ended.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Accepts and serves connections until `shutdown` resolves, then stops
    /// accepting, lets open connections finish until the drain deadline,
    /// ends the tunnels still open, and reports.
    ///
    /// # Errors
    ///
    /// Only when the listener's local address cannot be read; accept errors
    /// (a full fd table, a connection reset before accept) are logged and
    /// retried.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> io::Result<DrainReport>
    where
        F: Future<Output = ()>,
    {
        let port = listener.local_addr()?.port();
        let listener_info = Listener::new(self.scheme, port);
        let (phase, rx) = watch::channel(Phase::Running);
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let tracker = Arc::new(Tracker::default());
        let mut report = DrainReport::default();
        tokio::pin!(shutdown);
        loop {
            // Waiting for a slot before accepting leaves extra connections in
            // the kernel's backlog instead of holding them unserved.
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        // Out of fds: give connections time to end instead
                        // of spinning on the same error.
                        sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            report.accepted += 1;
            let proxy = self.proxy.clone();
            let drain = Drain::new(rx.clone());
            let token = tracker.token();
            tokio::spawn(async move {
                // At the drain deadline a connection still in a request is
                // dropped (its sockets close); a tunnel is cut cleanly.
                let cut = drain.clone().reached(Phase::Cut);
                let served = proxy.serve_until_upgrade(stream, peer, listener_info, drain);
                let upgraded = tokio::select! {
                    (_, upgraded) = served => upgraded,
                    () = cut => None,
                };
                // The tunnel runs as its own task so that only its few
                // hundred bytes stay allocated while it idles, not the
                // handshake's state.
                if let Some(upgraded) = upgraded {
                    tokio::spawn(async move {
                        upgraded.run().await;
                        drop((permit, token));
                    });
                }
            });
        }
        drop(listener);

        report.open_at_shutdown = tracker.live();
        let _ = phase.send(Phase::Draining);
        let deadline = Instant::now() + self.drain_timeout;
        let _ = timeout_at(deadline, tracker.all_done()).await;
        report.cut = tracker.live();
        report.finished = report.open_at_shutdown.saturating_sub(report.cut);
        if report.cut > 0 {
            let _ = phase.send(Phase::Cut);
            // Cut tunnels shut both sockets down, each within its send
            // timeout; this only bounds how long the report waits for that.
            let _ = timeout(CUT_GRACE, tracker.all_done()).await;
        }
        tracing::info!(?report, "server stopped");
        Ok(report)
    }
}

/// How long [`Server::serve`] waits for cut connections to close.
const CUT_GRACE: Duration = Duration::from_secs(5);

/// Counts live connections (and their tunnels) without keeping their tasks.
#[derive(Debug, Default)]
struct Tracker {
    live: AtomicUsize,
    changed: Notify,
}

/// One live connection; dropping it counts it out.
struct Token(Arc<Tracker>);

impl Tracker {
    fn token(self: &Arc<Self>) -> Token {
        self.live.fetch_add(1, Ordering::Relaxed);
        Token(self.clone())
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    async fn all_done(&self) {
        loop {
            let changed = self.changed.notified();
            if self.live() == 0 {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// What a [`Server`] did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open when shutdown began.
    pub open_at_shutdown: usize,
    /// Of those, the ones that ended by themselves before the drain deadline.
    pub finished: usize,
    /// Of those, the ones still open at the deadline and ended by the server.
    pub cut: usize,
}
