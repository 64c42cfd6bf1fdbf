//! Live reload of `--config`: on SIGHUP, and with `--watch-config` when the
//! file's modification time changes (looked at every second), the file is
//! read and checked again.
//!
//! An invalid file changes nothing: every error is logged with its line,
//! and the gateway runs on as it was. A valid one is applied in place by
//! [`Proxy::reconfigure`]: routes, upstreams (added, reweighted, removed
//! ones drained until their tunnels end), balancing, hash key, forwarding
//! policy, timeouts, pings and body limits take effect from the next
//! request, while every open connection and tunnel runs on where it is.
//! Health checkers, rebalancers and DNS discoveries run on where their
//! settings did not change, and start or stop with their groups and names
//! (see background.rs). A changed `listen` address is bound first, then the
//! old listener stops accepting; the connections it accepted run on until
//! they end or the gateway drains. What is fixed at start (workers,
//! connection limit, drain settings, TLS, PROXY protocol, access log, admin
//! listener) is logged as needing a restart.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use wsproxy::server::{DrainReport, Server};
use wsproxy::workers::BoundWorkers;
use wsproxy::{Proxy, UpstreamGroup};

use crate::background::Background;
use crate::cli::Args;
use crate::config;

/// A listener's server task.
type ServerTask = JoinHandle<io::Result<DrainReport>>;

/// Tells a listener's server to stop accepting.
pub struct Retire(Option<oneshot::Receiver<()>>);

impl Retire {
    /// For a listener no reload will move.
    pub fn never() -> Self {
        Self(None)
    }

    async fn wait(self) {
        // A dropped sender (the reloader ended) retires nothing.
        let retired = match self.0 {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        if !retired {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once the shutdown signal has come.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Serves one address's workers, plain or TLS, until they are retired and
/// shutdown drains them.
pub async fn serve_listener(
    workers: BoundWorkers,
    tls: Option<crate::tls::Tls>,
    retire: Retire,
    shutdown: impl Future<Output = ()>,
) -> io::Result<DrainReport> {
    let retire = retire.wait();
    match tls {
        Some(tls) => crate::tls::serve(workers, tls, retire, shutdown).await,
        None => {
            workers
                .serve_retiring(|tcp| std::future::ready(Ok(tcp)), retire, shutdown)
                .await
        }
    }
}

/// Watches for reload requests and applies them.
pub struct Reloader {
    path: PathBuf,
    /// The settings in force.
    args: Args,
    proxy: Proxy,
    /// The first listener's server, as configured: a rebound listener is
    /// served by a clone of it.
    server: Server,
    tls: Option<crate::tls::Tls>,
    /// The address being served, as bound.
    local: SocketAddr,
    /// Health checkers, rebalancers and discoveries of the groups in force.
    background: Background,
    stop: watch::Receiver<bool>,
    /// Retires the listener being served.
    retire: Option<oneshot::Sender<()>>,
    /// Servers of listeners bound by reloads, for the drain to wait on.
    servers: Vec<ServerTask>,
    hangup: tokio::signal::unix::Signal,
    modified: Option<SystemTime>,
}

impl Reloader {
    /// A reloader for the gateway `args` started; the [`Retire`] is for the
    /// listener it serves. The SIGHUP handler is installed here, before the
    /// gateway says it listens: SIGHUP's default would end the process.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: PathBuf,
        args: Args,
        proxy: Proxy,
        server: Server,
        tls: Option<crate::tls::Tls>,
        local: SocketAddr,
        background: Background,
        stop: watch::Receiver<bool>,
    ) -> io::Result<(Self, Retire)> {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let (retire, retired) = oneshot::channel();
        let modified = modified(&path);
        let reloader = Self {
            path,
            args,
            proxy,
            server,
            tls,
            local,
            background,
            stop,
            retire: Some(retire),
            servers: Vec::new(),
            hangup,
            modified,
        };
        Ok((reloader, Retire(Some(retired))))
    }

    /// Reloads on request until shutdown; returns the servers of the
    /// listeners reloads bound, for the drain to wait on, and the groups'
    /// background work, which runs on while they drain.
    pub async fn run(mut self) -> (Vec<ServerTask>, Background) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = self.stop.clone();
        let stopping = stopped(stop);
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                () = &mut stopping => break,
                Some(()) = self.hangup.recv() => self.reload("SIGHUP").await,
                _ = tick.tick() => {
                    // Upstreams a reload drained go once their tunnels end.
                    self.proxy.remove_drained();
                    if self.args.watch_config {
                        let now = modified(&self.path);
                        if now != self.modified {
                            self.modified = now;
                            self.reload("file changed").await;
                        }
                    }
                }
            }
        }
        (self.servers, self.background)
    }

    async fn reload(&mut self, why: &str) {
        let shown = self.path.display().to_string();
        let mut args = match config::load(&self.path) {
            Ok(args) => args,
            Err(errors) => {
                eprintln!(
                    "gateway: reload ({why}) refused, configuration unchanged: {shown} has {} error(s)",
                    errors.len()
                );
                config::report(&self.path, &errors);
                return;
            }
        };
        args.config.clone_from(&self.args.config);
        args.watch_config = self.args.watch_config;
        // Checked by `load` already (but for DNS upstreams in a gateway
        // built without them); a failure here is one more refusal.
        let built = crate::dns::check(&args)
            .and_then(|()| crate::build_proxy(&args, None))
            .and_then(|(next, groups)| Ok((next, groups, crate::health_config(&args)?)));
        let (next, groups, health) = match built {
            Ok(built) => built,
            Err(msg) => {
                eprintln!("gateway: reload ({why}) refused, configuration unchanged: {msg}");
                return;
            }
        };
        // The certificate is read again, as nginx's reload does (a renewed
        // one is served from the next handshake on); one that does not load
        // refuses the reload.
        // Swapped in only once nothing else can refuse the reload.
        let cert = match (&self.tls, &args.tls_cert, &args.tls_key) {
            (Some(tls), Some(cert), Some(key)) => match tls.load_cert(cert, key) {
                Ok(loaded) => Some(loaded),
                Err(msg) => {
                    eprintln!("gateway: reload ({why}) refused, configuration unchanged: {msg}");
                    return;
                }
            },
            _ => None,
        };
        // A group the swap adds is put in force as built: its discoveries
        // answer first, so that it serves from its first request.
        let known: Vec<UpstreamGroup> = self.proxy.groups();
        let added: crate::Groups = groups
            .iter()
            .filter(|(_, g)| !known.iter().any(|k| k.name() == g.name()))
            .cloned()
            .collect();
        if let Err(msg) = self.background.before_swap(&args, &added).await {
            eprintln!("gateway: reload ({why}) refused, configuration unchanged: {msg}");
            return;
        }
        // No await from here to the swap, and the discoveries run on this
        // same single-threaded control runtime: what they hold now is what
        // is carried.
        if let (Some(tls), Some(cert)) = (&self.tls, cert) {
            tls.serve_cert(cert);
        }
        crate::dns::carry(&self.proxy, &self.args, &args, &groups);
        let done = self.proxy.reconfigure(next);
        // Routed groups only: a group a reload removed keeps its tunnels
        // but gets no checks or rebalancing.
        let mut in_force: crate::Groups = Vec::new();
        for route in self.proxy.routes().iter() {
            let group = route.target();
            if let Some(set) = group.upstreams() {
                if !in_force.iter().any(|(_, g)| g.name() == group.name()) {
                    in_force.push((set.clone(), group.clone()));
                }
            }
        }
        let replaced = self
            .background
            .after_swap(&args, health.as_ref(), in_force)
            .await;
        if !replaced.is_empty() {
            eprintln!(
                "gateway: reload: new health checks and rebalancing for {}",
                replaced.join(", ")
            );
        }
        if args.listen != self.args.listen && !self.rebind(args.listen).await {
            // Kept, so that the next reload tries again.
            args.listen = self.args.listen;
        }
        let fixed = needs_restart(&self.args, &args);
        if !fixed.is_empty() {
            eprintln!(
                "gateway: reload: {} changed; that takes effect after a restart",
                fixed.join(", ")
            );
        }
        eprintln!(
            "gateway: reloaded {shown} ({why}): {} groups kept, {} added, {} removed",
            done.kept.len(),
            done.added.len(),
            done.removed.len()
        );
        self.args = args;
    }

    /// Serves `addr` and then retires the listener served so far; false if
    /// it cannot be bound (the old one serves on).
    async fn rebind(&mut self, addr: SocketAddr) -> bool {
        let workers = match self
            .args
            .workers
            .apply(self.server.clone().per_core())
            .bind(addr)
        {
            Ok(workers) => workers,
            Err(e) => {
                eprintln!(
                    "gateway: reload: cannot listen on {addr}: {e}; still on {}",
                    self.local
                );
                return false;
            }
        };
        let local = workers.local_addr();
        let (retire, retired) = oneshot::channel();
        let serving = serve_listener(
            workers,
            self.tls.clone(),
            Retire(Some(retired)),
            stopped(self.stop.clone()),
        );
        self.servers.push(tokio::spawn(serving));
        // Only now that the new one accepts does the old one stop.
        if let Some(old) = self.retire.replace(retire) {
            let _ = old.send(());
        }
        let ws = if self.tls.is_some() { "wss" } else { "ws" };
        println!(
            "gateway: listening on {ws}://{local} (moved from {})",
            self.local
        );
        self.local = local;
        true
    }
}

/// The file's modification time, if it can be read.
fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Settings a reload cannot change in place.
fn needs_restart(old: &Args, new: &Args) -> Vec<&'static str> {
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut changed = Vec::new();
    for (name, a, b) in [
        (
            "workers",
            &old.workers as &dyn std::fmt::Debug,
            &new.workers as &dyn std::fmt::Debug,
        ),
        (
            "max-connections",
            &old.max_connections,
            &new.max_connections,
        ),
        ("drain-timeout", &old.drain_timeout, &new.drain_timeout),
        ("drain-window", &old.drain_window, &new.drain_window),
        ("no-h2", &old.no_h2, &new.no_h2),
        // Another certificate is loaded in place; turning TLS on or off
        // changes the listener.
        ("tls-cert", &old.tls_cert.is_some(), &new.tls_cert.is_some()),
        ("tls-key", &old.tls_key.is_some(), &new.tls_key.is_some()),
        ("access-log", &old.access_log, &new.access_log),
        ("metrics", &old.metrics, &new.metrics),
        ("proxy-protocol", &old.proxy_protocol, &new.proxy_protocol),
        (
            "proxy-protocol-from",
            &old.proxy_protocol_from,
            &new.proxy_protocol_from,
        ),
    ] {
        if !same(a, b) {
            changed.push(name);
        }
    }
    changed
}
