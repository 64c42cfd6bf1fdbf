//! The gateway: the classic nginx WebSocket configuration as one command.
//!
//! ```sh
//! cargo run --release --example gateway                       # demo backend embedded:
//!                                                             # open http://127.0.0.1:8020/
//! cargo run --release --example gateway -- --listen 127.0.0.1:8020 \
//!     --upstream 127.0.0.1:8010 --upstream 127.0.0.1:8011,weight=3 \
//!     --balance least-conn --read-timeout 2h
//! ```
//!
//! It prints one `listening on ws://ADDR` (or `wss://`) line on stdout once
//! it accepts connections, drains gracefully on Ctrl-C or SIGTERM and exits
//! 0; a bad flag exits 2. `--help` names the nginx directive behind each
//! flag.
//!
//! Built with `--features metrics`, `--metrics ADDR` adds an admin
//! listener (Prometheus `/metrics`, `/healthz`, `/readyz`) and prints a
//! second line, `metrics on http://ADDR/metrics`; without the feature that
//! flag exits 2.

/// See the Cargo.toml note on `mimalloc`: less idle memory per WebSocket
/// than with glibc's malloc (figures in benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access_log;
#[cfg(feature = "metrics")]
mod admin;
mod background;
mod cli;
mod config;
mod demo;
mod dns;
mod reload;
mod tls;
mod upstream_spec;
mod upstream_tls;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};
use wsproxy::balance::{
    Balancer, BoundedLoad, ConsistentHash, HashKey, IpHash, LeastConn, RoundRobin, Upstream,
    UpstreamSet,
};
use wsproxy::forward::{ForwardPolicy, HostMode, Scheme};
use wsproxy::route::Route;
use wsproxy::server::Server;
use wsproxy::tunnel::TunnelConfig;
use wsproxy::{HealthCheck, Proxy, UpstreamGroup};

use cli::{Args, Balance, OnOff, Redirect};
use upstream_spec::Transport;

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Whatever the flags say that cannot work is a usage error: exit 2
    // with clap's format, before anything is bound.
    let usage = |msg: String| -> ! {
        Args::command()
            .error(ErrorKind::ValueValidation, msg)
            .exit()
    };
    if let Some(path) = &args.check_config {
        return config::check(path);
    }
    if let Some(path) = args.config.clone() {
        let beside = config::flags_beside_config(&matches);
        if !beside.is_empty() {
            usage(format!(
                "--config takes every setting from the file: {} cannot come with it",
                beside.join(", ")
            ));
        }
        let watch = args.watch_config;
        args = match config::load(&path) {
            Ok(loaded) => loaded,
            Err(errors) => {
                config::report(&path, &errors);
                return ExitCode::from(2);
            }
        };
        args.config = Some(path);
        args.watch_config = watch;
    }
    #[cfg(not(feature = "metrics"))]
    if args.metrics.is_some() {
        usage("--metrics needs the gateway built with `--features metrics`".into());
    }
    // Before the proxy is built: it registers its metric handles then.
    #[cfg(feature = "metrics")]
    let prometheus = match args.metrics {
        Some(_) => match admin::install() {
            Ok(handle) => Some(handle),
            Err(msg) => return fail(&msg),
        },
        None => None,
    };
    let demo = if args.upstream.is_empty() && args.route.is_empty() {
        match bind_demo() {
            Ok(listener) => Some(listener),
            Err(e) => return fail(&format!("cannot start the demo backend: {e}")),
        }
    } else {
        None
    };
    let demo_addr = demo.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(warning) = descriptor_budget(args.max_connections, open_file_limit()) {
        eprintln!("gateway: {warning}");
    }
    dns::check(&args).unwrap_or_else(|msg| usage(msg));
    let (proxy, groups) = build_proxy(&args, demo_addr).unwrap_or_else(|msg| usage(msg));
    let health = health_config(&args).unwrap_or_else(|msg| usage(msg));
    let drain_timeout = drain_timeout(&args).unwrap_or_else(|msg| usage(msg));
    let proxy_protocol = proxy_protocol(&args).unwrap_or_else(|msg| usage(msg));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls::acceptor(cert, key, !args.no_h2).unwrap_or_else(|msg| usage(msg)))
        }
        _ => None,
    };
    let access_log = match &args.access_log {
        Some(path) => match access_log::AccessLog::open(path) {
            Ok(log) => Some(Arc::new(log)),
            Err(e) => usage(format!("cannot open access log {}: {e}", path.display())),
        },
        None => None,
    };

    // The control runtime: signals, health checks, rebalancing, the admin
    // listener and the demo backend. Connections are served thread-per-core
    // by the server's own workers (see `serve`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let served = runtime.block_on(async {
        if let Some(listener) = demo {
            demo::start(tokio::net::TcpListener::from_std(listener)?);
        }
        let draining = Arc::new(AtomicBool::new(false));
        #[allow(unused_mut)]
        let mut admin_addr = None;
        #[cfg(feature = "metrics")]
        if let (Some(addr), Some(prometheus)) = (args.metrics, prometheus) {
            let listener = admin::bind(addr).await?;
            admin_addr = Some(listener.local_addr()?);
            let admin = admin::Admin {
                prometheus,
                proxy: proxy.clone(),
                draining: draining.clone(),
            };
            tokio::spawn(admin.serve(listener));
        }
        let background = background::Background::start(&args, health.as_ref(), groups).await?;
        let admin = AdminNote {
            addr: admin_addr,
            draining,
        };
        serve(
            &args,
            proxy,
            tls,
            access_log,
            drain_timeout,
            proxy_protocol,
            admin,
            background,
        )
        .await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// The listener's PROXY protocol setting: checked before anything is bound.
#[cfg(feature = "proxy-protocol")]
type ProxyProtocolSetting = Option<wsproxy::proxy_protocol::ProxyProtocol>;
/// Never set without the feature.
#[cfg(not(feature = "proxy-protocol"))]
type ProxyProtocolSetting = Option<std::convert::Infallible>;

#[cfg(feature = "proxy-protocol")]
fn proxy_protocol(args: &Args) -> Result<ProxyProtocolSetting, String> {
    if !args.proxy_protocol {
        return Ok(None);
    }
    if args.proxy_protocol_from.is_empty() {
        // Trusting every peer would let any client claim any address.
        return Err(
            "--proxy-protocol needs --proxy-protocol-from CIDR (the balancers' addresses)".into(),
        );
    }
    wsproxy::proxy_protocol::ProxyProtocol::from_cidrs(&args.proxy_protocol_from)
        .map(Some)
        .map_err(|e| format!("--proxy-protocol-from: {e}"))
}

#[cfg(not(feature = "proxy-protocol"))]
fn proxy_protocol(args: &Args) -> Result<ProxyProtocolSetting, String> {
    if args.proxy_protocol || args.send_proxy_v2 {
        return Err(
            "--proxy-protocol and --send-proxy-v2 need the gateway built with \
             `--features proxy-protocol`"
                .into(),
        );
    }
    Ok(None)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("gateway: {msg}");
    ExitCode::FAILURE
}

/// Bound before the runtime starts so that the proxy, which names its
/// upstreams up front, can be built and checked first.
fn bind_demo() -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

// Each is one thing `main` prepared before the runtime; a struct for them
// would only be unpacked here.
#[allow(clippy::too_many_arguments)]
async fn serve(
    args: &Args,
    proxy: Proxy,
    tls: Option<tls::Tls>,
    access_log: Option<Arc<access_log::AccessLog>>,
    drain_timeout: Duration,
    proxy_protocol: ProxyProtocolSetting,
    admin: AdminNote,
    background: background::Background,
) -> std::io::Result<()> {
    let scheme = if tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let mut server = Server::new(proxy.clone())
        .scheme(scheme)
        .max_connections(args.max_connections as usize)
        .drain_timeout(drain_timeout);
    if let Some(window) = args.drain_window {
        server = server.drain_window(window);
    }
    if let Some(pp) = proxy_protocol {
        #[cfg(feature = "proxy-protocol")]
        {
            server = server.proxy_protocol(pp);
        }
        #[cfg(not(feature = "proxy-protocol"))]
        match pp {}
    }
    if let Some(log) = access_log.clone() {
        server = server.on_connection_end(move |client, report| log.write(client, report));
    }
    // Thread-per-core (nginx `worker_processes`): each worker accepts on its
    // own SO_REUSEPORT listener and serves its connections on its thread;
    // one worker (the default) is the main thread itself.
    let workers = args
        .workers
        .apply(server.clone().per_core())
        .bind(args.listen)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.listen))
        })?;
    let local = workers.local_addr();
    // Signal handlers go in before the line is printed: a script that sends
    // SIGTERM as soon as it reads the line must get a graceful stop.
    let signal = shutdown_signal()?;
    other_signals(args, access_log.clone())?;
    let draining = admin.draining;
    // Every listener's server drains on the same signal (a reload may have
    // started more than one).
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal.await;
        // /readyz answers 503 from here on.
        draining.store(true, Ordering::Relaxed);
        let _ = stopping.send(true);
    });
    let shutdown = reload::stopped(stop.clone());
    // Without a reloader to own them, the groups' tasks and discoveries
    // are kept here until the gateway stops.
    let (retire, reloading, _background) = match &args.config {
        Some(path) => {
            let (reloader, retire) = reload::Reloader::new(
                path.clone(),
                args.clone(),
                proxy.clone(),
                server.clone(),
                tls.clone(),
                local,
                background,
                stop,
            )?;
            (retire, Some(tokio::spawn(reloader.run())), None)
        }
        None => (reload::Retire::never(), None, Some(background)),
    };
    let ws = if tls.is_some() { "wss" } else { "ws" };
    let alpn = match &tls {
        Some(tls) if tls.h2 => " (h2, http/1.1)",
        _ => "",
    };
    let demo_note = if args.upstream.is_empty() && args.route.is_empty() {
        let http = if tls.is_some() { "https" } else { "http" };
        format!(
            " (demo backend: echo on /, chat room on /chat; open {http}://{local}/ in a browser)"
        )
    } else {
        String::new()
    };
    println!("gateway: listening on {ws}://{local}{alpn}{demo_note}");
    if let Some(addr) = admin.addr {
        println!("gateway: metrics on http://{addr}/metrics");
    }
    let _ = std::io::stdout().flush();

    let report = reload::serve_listener(workers, tls, retire, shutdown).await?;
    eprintln!(
        "gateway: stopped: {} connections accepted, {} open at shutdown, {} sent Close 1001, {} finished, {} cut",
        report.accepted, report.open_at_shutdown, report.closed, report.finished, report.cut
    );
    if let Some(reloading) = reloading {
        // The servers of listeners a reload bound drain on the same signal.
        let bound = drain_timeout.saturating_add(Duration::from_secs(10));
        let _ = tokio::time::timeout(bound, async {
            if let Ok((servers, _background)) = reloading.await {
                for server in servers {
                    let _ = server.await;
                }
            }
        })
        .await;
    }
    Ok(())
}

/// The admin listener's address, if `--metrics` started one, and the flag
/// its `/readyz` reads.
struct AdminNote {
    addr: Option<SocketAddr>,
    draining: Arc<AtomicBool>,
}

/// Resolves on Ctrl-C or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("gateway: shutting down");
    })
}

/// nginx's other signals, which would otherwise end the process and cut
/// every tunnel: SIGUSR1 reopens the access log (logrotate's `postrotate`),
/// SIGHUP reloads with `--config` (the reloader takes it) and is logged and
/// ignored without.
fn other_signals(
    args: &Args,
    access_log: Option<Arc<access_log::AccessLog>>,
) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let path = args.access_log.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                let (Some(log), Some(path)) = (&access_log, &path) else {
                    continue;
                };
                match log.reopen(path) {
                    Ok(()) => eprintln!("gateway: SIGUSR1: reopened {}", path.display()),
                    Err(e) => eprintln!("gateway: SIGUSR1: cannot reopen {}: {e}", path.display()),
                }
            }
        });
        if args.config.is_none() {
            let mut hup = signal(SignalKind::hangup())?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    eprintln!("gateway: SIGHUP ignored: started with flags, not --config, so there is nothing to reload");
                }
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (args, access_log);
    Ok(())
}

/// The default drain timeout (nginx `worker_shutdown_timeout` has none; 30 s
/// is what the gateway always used).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The drain timeout: `--drain-timeout`, or else long enough for the whole
/// `--drain-window` and the last closes' linger. A window that an explicit
/// timeout would cut short is a usage error: the tunnels at the end of the
/// window would be cut instead of closed.
fn drain_timeout(args: &Args) -> Result<Duration, String> {
    let needed = args
        .drain_window
        .map(|window| window.saturating_add(args.close_linger));
    match (args.drain_timeout, needed) {
        (Some(timeout), Some(needed)) if timeout < needed => Err(format!(
            "--drain-window {:?} plus --close-linger {:?} does not fit in --drain-timeout {:?}",
            args.drain_window.unwrap_or_default(),
            args.close_linger,
            timeout
        )),
        (Some(timeout), _) => Ok(timeout),
        (None, needed) => Ok(needed.map_or(DRAIN_TIMEOUT, |n| n.max(DRAIN_TIMEOUT))),
    }
}

/// The tunnels' configuration: the proxy's default (upstream read and send
/// timeouts, 5 s half-close linger, frames tracked) plus the close linger
/// and pings the flags ask for. Frames must stay tracked: polite closes,
/// pings and the close codes in the access log all read them.
fn tunnel_config(args: &Args) -> TunnelConfig {
    TunnelConfig::new()
        .upstream_read_timeout(args.read_timeout)
        .send_timeout(args.send_timeout)
        .linger_timeout(HALF_CLOSE_LINGER)
        .track_frames(true)
        .close_linger(args.close_linger)
        .ping(args.ping_interval, args.ping_timeout)
}

/// Once one side of a tunnel sent EOF, how long the other may stay silent
/// (an inactivity timeout, HAProxy `client-fin`): the proxy's default, so a
/// WebSocket closing handshake can complete.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Each group's upstream set (for its health checker) and the group.
type Groups = Vec<(UpstreamSet, UpstreamGroup)>;

/// The proxy the flags describe; `Err` is a message for a usage error.
fn build_proxy(args: &Args, demo: Option<SocketAddr>) -> Result<(Proxy, Groups), String> {
    let hashing = matches!(args.balance, Balance::ConsistentHash | Balance::BoundedHash);
    if args.hash_key.is_some() && !hashing {
        return Err("--hash-key needs --balance consistent-hash or bounded-hash".into());
    }
    let key = args.hash_key.clone().unwrap_or(HashKey::RemoteAddr);
    let tls = upstream_tls::setting(args)?;
    // Each group's set, for the health checker; the sets share their state
    // with the balancers, the groups their tunnel registries (cheap clones).
    let groups = std::cell::RefCell::new(Vec::new());
    let balance = args.balance;
    let group = |name: &str, upstreams: &[Upstream], transport: Transport| {
        // DNS names are not addresses: dns.rs keeps the set current.
        let set: UpstreamSet = dns::fixed(upstreams).collect();
        let checked = set.clone();
        let key = key.clone();
        // A group that knows its set and strategy: a reload keeps the set
        // (matched by the group's name) and builds the strategy over it.
        let strategy = move |set: UpstreamSet| -> Arc<dyn Balancer> {
            match balance {
                Balance::RoundRobin => Arc::new(RoundRobin::new(set)),
                Balance::IpHash => Arc::new(IpHash::new(set)),
                Balance::ConsistentHash => Arc::new(ConsistentHash::new(set, key.clone())),
                Balance::LeastConn => Arc::new(LeastConn::new(set)),
                Balance::BoundedHash => Arc::new(BoundedLoad::new(set, key.clone())),
            }
        };
        let group = UpstreamGroup::balanced_dyn(name, set, strategy);
        let group = upstream_tls::apply(group, transport, &tls);
        #[cfg(feature = "proxy-protocol")]
        let group = group.send_proxy_v2(args.send_proxy_v2);
        groups.borrow_mut().push((checked, group.clone()));
        group
    };

    let mut builder = Proxy::builder()
        .policy(build_policy(args)?)
        .connect_timeout(args.connect_timeout)
        .read_timeout(args.read_timeout)
        .send_timeout(args.send_timeout)
        .handshake_timeout(args.handshake_timeout)
        .keepalive_timeout(args.keepalive_timeout)
        .max_tries(match args.next_upstream_tries {
            0 => usize::MAX,
            tries => tries,
        })
        .next_upstream_timeout(args.next_upstream_timeout)
        .client_max_body_size(args.client_max_body_size)
        .tunnel(tunnel_config(args));
    if let Some(keepalive) = args.so_keepalive {
        builder = builder.tcp_keepalive(keepalive.resolve());
    }
    if let Some(addr) = demo {
        let demo = group("demo", &[Upstream::new(addr)], Transport::Plain);
        builder = builder.route(Route::new("/", demo));
    }
    if !args.upstream.is_empty() {
        let (upstreams, transport) = upstream_spec::one_transport(&args.upstream)?;
        builder = builder.route(Route::new("/", group("default", &upstreams, transport)));
    }
    for spec in &args.route {
        let upstreams = group(&spec.name, &spec.upstreams, spec.transport);
        let mut route = Route::new(spec.prefix.clone(), upstreams);
        if let Some(host) = &spec.host {
            route = route.host(host.clone());
        }
        if let Some(with) = &spec.replace {
            route = route.replace_prefix(with.clone());
        }
        builder = builder.route(route);
    }
    let proxy = builder.build().map_err(|e| with_source(&e))?;
    Ok((proxy, groups.into_inner()))
}

/// Descriptors a gateway keeps beside its connections (listeners, the
/// runtimes, health checks, DNS, logs), left out of the value it suggests.
const DESCRIPTOR_RESERVE: u64 = 100;

/// nginx's warning when `worker_connections` exceed the open file limit:
/// each proxied connection holds two descriptors (the client's socket and
/// the upstream's), and an HTTP/2 client connection up to one per stream
/// more. Past the limit, connects fail with 500 (the upstreams are not
/// blamed) and accepts wait.
fn descriptor_budget(max_connections: u32, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    // The connections' own descriptors alone, as nginx compares: at the
    // limit itself the last few connects get 500, which is no reason to
    // warn at every start of a default gateway on a 20,000-file system.
    let needed = u64::from(max_connections) * 2;
    (needed > limit).then(|| {
        format!(
            "--max-connections {max_connections} may need {needed} file descriptors (a client \
             and an upstream socket each), over the open file limit of {limit}: raise it \
             (ulimit -n) or lower --max-connections to {}",
            limit.saturating_sub(DESCRIPTOR_RESERVE) / 2
        )
    })
}

/// The soft limit on open files (`ulimit -n`), where the system tells it
/// without unsafe code (Linux's `/proc/self/limits`); `None` when unlimited
/// or unknown.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The health-check configuration `--health-check` asks for, if any.
fn health_config(args: &Args) -> Result<Option<HealthCheck>, String> {
    let Some(check) = &args.health_check else {
        return Ok(None);
    };
    HealthCheck::builder()
        .probe(check.probe(args.send_proxy_v2))
        .interval(args.health_interval)
        .rise(args.health_rise)
        .fall(args.health_fall)
        .build()
        .map(Some)
        .map_err(|e| e.to_string())
}

fn build_policy(args: &Args) -> Result<ForwardPolicy, String> {
    let host = match args.host_header.as_str() {
        "$http_host" => HostMode::ClientAsSent,
        "$host" => HostMode::Client,
        "$host:$server_port" => HostMode::ClientWithListenerPort,
        "$proxy_host" => HostMode::Upstream,
        fixed => HostMode::Fixed(fixed.to_owned()),
    };
    let mut policy = ForwardPolicy::builder()
        .host(host)
        .redirect(args.proxy_redirect == Redirect::Default)
        .underscores_in_headers(args.underscores_in_headers == OnOff::On);
    for cidr in &args.trusted_proxy {
        policy = policy.trusted_proxy(cidr.clone());
    }
    for origin in &args.allow_origin {
        policy = policy.allow_origin(origin.clone());
    }
    for (name, value) in &args.set_header {
        // nginx: "if the value of a header field is an empty string then
        // this field will not be passed to a proxied server".
        policy = if value.is_empty() {
            policy.remove_request_header(name.clone())
        } else {
            policy.set_request_header(name.clone(), value)
        };
    }
    for (name, value) in &args.add_header {
        policy = policy.add_response_header(name.clone(), value);
    }
    policy.build().map_err(|e| with_source(&e))
}

/// `error: cause`, so that "invalid routes" says which route.
fn with_source(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}
