//! The command line: clap's derive API, one flag per nginx directive, and
//! the small parsers for the values nginx writes inline (`4s`,
//! `127.0.0.1:8011 weight=3`, `$cookie_session`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use wsproxy::balance::{HashKey, Upstream};
use wsproxy::proxy::{TcpKeepalive, TcpProbe, WebSocketProbe};
use wsproxy::Probe;

use crate::upstream_spec::{parse_route, parse_upstream, RouteSpec, Transport};

/// A WebSocket-aware reverse proxy: the classic nginx WebSocket
/// configuration as one command.
///
/// With no --upstream and no --route it starts a demo backend in-process
/// (a chat page for browsers on /, WebSocket echo on /, a chat room on
/// /chat) and proxies to it.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about, long_about)]
pub struct Args {
    /// Address to accept clients on (nginx `listen`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8020")]
    pub listen: SocketAddr,

    /// An upstream server, repeatable (nginx `upstream { server ADDR weight=N; }`).
    /// Options after commas: weight=N, max_fails=N, fail_timeout=DUR, backup, down.
    /// ADDR is ip:port, host:port, unix:/PATH (nginx `server unix:/PATH`),
    /// tls://host:port (nginx `proxy_pass https://`; every upstream of a
    /// group or none; needs `--features rustls`), or kept current from DNS
    /// (needs `--features dns`): dns:NAME:PORT (A/AAAA; nginx `server NAME
    /// resolve`) or srv:NAME (SRV ports and weights). Unlike nginx, a
    /// host:port is one upstream, resolved at each connect (the first
    /// address that answers), not one server per address resolved at start:
    /// use dns:NAME:PORT for that.
    #[arg(long, value_name = "ADDR[,weight=N]", value_parser = parse_upstream)]
    pub upstream: Vec<(Upstream, Transport)>,

    /// PEM CA certificates that tls:// upstreams are verified against,
    /// instead of the system's roots (nginx `proxy_ssl_trusted_certificate`).
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// The name tls:// upstreams are sent as SNI and verified for, instead
    /// of each upstream's host (nginx `proxy_ssl_name`).
    #[arg(long, value_name = "NAME")]
    pub upstream_sni: Option<String>,

    /// Accept any certificate from tls:// upstreams (nginx `proxy_ssl_verify
    /// off`). For tests against throwaway certificates only: anyone on the
    /// path can read and change the traffic.
    #[arg(long, conflicts_with = "upstream_ca")]
    pub upstream_insecure: bool,

    /// A location with its own upstream group, repeatable (nginx `server_name`
    /// and `location /PREFIX { proxy_pass http://group; }`):
    /// `[HOST]/PREFIX=UPSTREAM[,opts],UPSTREAM...`; HOST may be
    /// `*.example.com`; the longest prefix wins. `/PREFIX>/NEW=...` replaces
    /// the prefix before the request goes upstream (nginx
    /// `location /PREFIX { proxy_pass http://group/NEW; }`; `>/` strips it).
    /// Routes with a HOST are that host's `server` block: a request for the
    /// host is routed among them only (404 for other paths), as nginx picks
    /// the server first; routes without one, and the --upstream group at
    /// `/`, serve every other host.
    #[arg(long, value_name = "HOST/PREFIX=UPSTREAMS", value_parser = parse_route)]
    pub route: Vec<RouteSpec>,

    /// How each group picks an upstream (nginx `upstream` balancing line:
    /// none = round-robin, `ip_hash`, `hash $key consistent`, `least_conn`;
    /// bounded-hash is HAProxy `hash-balance-factor`).
    #[arg(long, value_enum, default_value_t = Balance::RoundRobin)]
    pub balance: Balance,

    /// The key consistent-hash and bounded-hash place by (nginx `hash $key
    /// consistent`): remote-addr ($remote_addr), header:NAME ($http_NAME),
    /// cookie:NAME ($cookie_NAME), query:NAME ($arg_NAME) or path ($uri).
    #[arg(long, value_name = "KEY", value_parser = parse_hash_key)]
    pub hash_key: Option<HashKey>,

    /// TCP connect to an upstream (nginx `proxy_connect_timeout`).
    #[arg(long, value_name = "DUR", default_value = "4s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Silence from the upstream, also inside a tunnel (nginx `proxy_read_timeout`).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub read_timeout: Duration,

    /// A write that makes no progress (nginx `proxy_send_timeout`).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// One deadline from accept for the TLS handshake and the whole request head (nginx `client_header_timeout`).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// How long an idle client connection waits for its next request (nginx
    /// `keepalive_timeout`); 0 turns keep-alive off.
    #[arg(long, value_name = "DUR", default_value = "75s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Upstreams one request may try, the first included, after failed
    /// connects or no answer (nginx `proxy_next_upstream_tries`); 0 tries
    /// each upstream once, as nginx's 0 sets no limit.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub next_upstream_tries: usize,

    /// How long after its first try a request may still go to the next
    /// upstream (nginx `proxy_next_upstream_timeout`); 0 sets no limit.
    #[arg(long, value_name = "DUR", default_value = "0s", value_parser = parse_duration)]
    pub next_upstream_timeout: Duration,

    /// The largest request body forwarded (nginx `client_max_body_size`):
    /// bytes, or with k, m or g (`512k`, `1m`, `1g`); 0 for no limit. A
    /// larger Content-Length, or chunk sizes adding up to more, get 413.
    #[arg(long, value_name = "SIZE", default_value = "1m", value_parser = parse_size)]
    pub client_max_body_size: u64,

    /// Trust X-Forwarded-For from this proxy address or CIDR block, repeatable
    /// (nginx `set_real_ip_from` + `real_ip_recursive on`).
    #[arg(long, value_name = "CIDR")]
    pub trusted_proxy: Vec<String>,

    /// Read a PROXY protocol header (v1 or v2) before anything else on
    /// every connection and serve it as the client it names (nginx `listen
    /// … proxy_protocol`, HAProxy `accept-proxy`). Needs
    /// --proxy-protocol-from and a gateway built with `--features
    /// proxy-protocol`.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// A balancer address or CIDR block that may send the PROXY header,
    /// repeatable; connections from anywhere else are closed unread. Its own
    /// list, not --trusted-proxy's (nginx uses `set_real_ip_from` for both):
    /// a balancer trusted for the header need not be for X-Forwarded-For.
    #[arg(long, value_name = "CIDR", requires = "proxy_protocol")]
    pub proxy_protocol_from: Vec<String>,

    /// Start every upstream connection with a PROXY protocol v2 header
    /// carrying the client's address (HAProxy `send-proxy-v2`). Needs a
    /// gateway built with `--features proxy-protocol`.
    #[arg(long)]
    pub send_proxy_v2: bool,

    /// Allow WebSocket upgrades only from this Origin, repeatable (others get
    /// 403; nginx has no directive, apps check `$http_origin`).
    #[arg(long, value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,

    /// Set a request header toward the upstream, repeatable (nginx `proxy_set_header NAME VALUE`); an empty value (`NAME:`) removes it.
    #[arg(long, value_name = "NAME:VALUE", value_parser = parse_header)]
    pub set_header: Vec<(String, String)>,

    /// Set a header on plain (non-101) answers, repeatable (nginx `add_header NAME VALUE always`).
    #[arg(long, value_name = "NAME:VALUE", value_parser = parse_header)]
    pub add_header: Vec<(String, String)>,

    /// The Host the upstream sees (nginx `proxy_set_header Host`):
    /// `$http_host` (as the client sent it, port included), `$host`,
    /// `$host:$server_port`, `$proxy_host` or a fixed name.
    #[arg(long, value_name = "HOST", default_value = "$http_host")]
    pub host_header: String,

    /// Rewrite upstream Location/Refresh answers (nginx `proxy_redirect default|off`).
    #[arg(long, value_enum, default_value_t = Redirect::Default)]
    pub proxy_redirect: Redirect,

    /// Pass request headers whose names have underscores (nginx
    /// `underscores_in_headers`); off drops them, and even on, twins of the
    /// headers the proxy sets (`X_Real_IP`) are dropped.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    pub underscores_in_headers: OnOff,

    /// Client connections served at once, all workers together (nginx
    /// `worker_connections` times `worker_processes`); when all are taken,
    /// the longest idle keep-alive connection is closed for a new one. Each
    /// proxied one holds two file descriptors: a start-up warning says when
    /// the open file limit (`ulimit -n`) is too low for it, as nginx's does.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Worker threads, each accepting on its own SO_REUSEPORT listener and
    /// serving its connections itself (nginx `worker_processes`, default 1 as
    /// in nginx; `auto`: one per core). One worker serves on the main thread.
    #[arg(long, value_name = "N|auto", default_value = "1", value_parser = parse_workers)]
    pub workers: WorkerCount,

    /// After SIGTERM or Ctrl-C, how long open connections may finish before
    /// they are cut (nginx `worker_shutdown_timeout`). Default 30s, or
    /// --drain-window plus --close-linger when that is longer.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// After SIGTERM or Ctrl-C, send every open WebSocket a Close 1001
    /// (going away), spread evenly over this window, so that clients
    /// reconnect a few at a time (HAProxy `close-spread-time`; nginx has no
    /// directive). Off by default: tunnels run on until --drain-timeout cuts
    /// them. The window plus --close-linger must fit in --drain-timeout.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub drain_window: Option<Duration>,

    /// How long a tunnel closed by the gateway (drain, --on-marked-down)
    /// waits for both peers' Close replies before it shuts the sockets
    /// (like nginx `lingering_timeout`).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub close_linger: Duration,

    /// Send a WebSocket Ping to a side of a tunnel that sent nothing for
    /// this long (no nginx directive: nginx relies on proxy_read_timeout;
    /// like HAProxy's and Envoy's WebSocket keepalive pings). Off by default.
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    pub ping_interval: Option<Duration>,

    /// A side that sends nothing for this long after a ping ends its tunnel
    /// (no nginx directive; see --ping-interval, which it needs). Without
    /// it, pings only keep NAT and firewall state alive.
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration, requires = "ping_interval")]
    pub ping_timeout: Option<Duration>,

    /// TCP keepalive on client and upstream sockets (nginx `listen ...
    /// so_keepalive=30m::10`, HAProxy `tcp-ka-idle`/`-intvl`/`-cnt`):
    /// IDLE:INTVL:CNT, times as whole seconds (30m, 75s), CNT a number of
    /// probes; an empty field keeps the system default, as in nginx
    /// (Linux: net.ipv4.tcp_keepalive_time/intvl/probes); `on` is `::`.
    #[arg(long, value_name = "IDLE:INTVL:CNT", value_parser = parse_so_keepalive)]
    pub so_keepalive: Option<SoKeepalive>,

    /// PEM certificate chain: terminate TLS and serve wss:// (nginx `ssl_certificate`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert (nginx `ssl_certificate_key`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// With --tls-cert, offer only http/1.1 in ALPN, no HTTP/2 (nginx
    /// `http2 off`). HTTP/2, WebSockets over it included (RFC 8441), is
    /// offered when the gateway is built with feature `h2`.
    #[arg(long, requires = "tls_cert")]
    pub no_h2: bool,

    /// One line per connection: client, route, upstream, status, bytes each
    /// way, duration, how it ended and who sent a WebSocket Close with which
    /// code (nginx `access_log`; default off). Without
    /// FILE, or with `-`, to stdout.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub access_log: Option<PathBuf>,

    /// Active health checks of every upstream (HAProxy `check`; nginx Plus
    /// `health_check`): `tcp` (a connect) or `ws:/PATH` (a real WebSocket
    /// handshake). Off by default; passive checks (max_fails) always run.
    #[arg(long, value_name = "tcp|ws:/PATH", value_parser = parse_health_check)]
    pub health_check: Option<HealthCheckArg>,

    /// Time between two checks of an upstream (HAProxy `inter`).
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// Passing checks in a row that bring a down upstream back (HAProxy `rise`).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_rise: u32,

    /// Failing checks in a row that take an upstream out (HAProxy `fall`).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_fall: u32,

    /// What active health checks do to the open tunnels of an upstream they
    /// mark down: `close` sends them Close 1001 (HAProxy `on-marked-down
    /// shutdown-sessions`, which resets them instead). Needs --health-check.
    /// By default they run on.
    #[arg(long, value_enum, value_name = "close", requires = "health_check")]
    pub on_marked_down: Option<OnMarkedDown>,

    /// Rebalance long-lived tunnels (no nginx or HAProxy directive: neither
    /// moves established connections): when an upstream comes (back) up, and
    /// every --rebalance-interval, close tunnels on upstreams above
    /// --rebalance-factor times their share with Close 1012, at most N a
    /// second, so that their clients reconnect where there is room. Off by
    /// default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rebalance_rate: Option<u32>,

    /// The most loaded upstream may hold this many times its share before a
    /// rebalance moves tunnels (like HAProxy `hash-balance-factor 125`).
    #[arg(long, value_name = "F", default_value_t = 1.25, value_parser = parse_factor, requires = "rebalance_rate")]
    pub rebalance_factor: f64,

    /// How often loads are checked for a rebalance, besides when an
    /// upstream comes up (needs --rebalance-rate).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_positive_duration, requires = "rebalance_rate")]
    pub rebalance_interval: Duration,

    /// The DNS server that `dns:NAME:PORT` and `srv:NAME` upstreams are
    /// resolved with (nginx `resolver ADDR`; default: /etc/resolv.conf's).
    /// Needs the gateway built with `--features dns`.
    #[arg(long, value_name = "ADDR")]
    pub resolver: Option<SocketAddr>,

    /// Re-resolve DNS upstreams no sooner than this after an answer,
    /// whatever its TTL (a failed lookup is retried after it too).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_positive_duration)]
    pub resolve_min_ttl: Duration,

    /// Re-resolve DNS upstreams no later than this after an answer,
    /// whatever its TTL (nginx `resolver ... valid=` sets one fixed time).
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_positive_duration)]
    pub resolve_max_ttl: Duration,

    /// Tunnels to an address that left a DNS answer run on until they end;
    /// with this, those still open after DUR are sent Close 1001 (like
    /// HAProxy `on-marked-down shutdown-sessions`, but polite and late).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub resolve_drain_timeout: Option<Duration>,

    /// Admin listener (like nginx `stub_status` or HAProxy `stats uri` on
    /// their own `listen`): Prometheus figures on /metrics, 200 on /healthz
    /// while the process runs, and on /readyz 200 while accepting, 503 once
    /// a drain has begun. Needs the gateway built with `--features metrics`.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Take every setting from this TOML file, whose keys are these flags'
    /// names (examples/gateway/gateway.toml shows them all); no other flag
    /// may come with it. SIGHUP reloads it in place (nginx `-c` and
    /// `nginx -s reload`).
    #[arg(long, value_name = "FILE", conflicts_with = "check_config")]
    pub config: Option<PathBuf>,

    /// Check a configuration file and exit: every error with its line and
    /// column, exit 0 when valid and 2 otherwise (nginx `-t`).
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,

    /// Also reload --config when the file's modification time changes
    /// (looked at every second).
    #[arg(long, requires = "config")]
    pub watch_config: bool,
}

/// A rebalance factor: a number of at least 1.
pub fn parse_factor(text: &str) -> Result<f64, String> {
    let factor: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    wsproxy::balance::Rebalance::new(factor)
        .map(|r| r.factor())
        .map_err(|e| e.to_string())
}

/// `--health-check`: which probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckArg {
    /// A TCP connect.
    Tcp,
    /// A WebSocket handshake.
    WebSocket(WebSocketProbe),
}

impl HealthCheckArg {
    /// The probe; a WebSocket one opens with a PROXY v2 header when the
    /// upstreams expect one (`--send-proxy-v2`), as HAProxy's checks do.
    pub fn probe(&self, send_proxy_v2: bool) -> Arc<dyn Probe> {
        match self {
            Self::Tcp => Arc::new(TcpProbe),
            Self::WebSocket(probe) if send_proxy_v2 => Arc::new(probe.clone().with_proxy_v2()),
            Self::WebSocket(probe) => Arc::new(probe.clone()),
        }
    }
}

/// `tcp` or `ws:/PATH`.
pub fn parse_health_check(text: &str) -> Result<HealthCheckArg, String> {
    match text.split_once(':') {
        None if text == "tcp" => Ok(HealthCheckArg::Tcp),
        Some(("ws", path)) if path.starts_with('/') => WebSocketProbe::new(path)
            .map(HealthCheckArg::WebSocket)
            .map_err(|e| e.to_string()),
        _ => Err(format!(
            "`{text}` is not a health check (tcp, or ws:/PATH for a WebSocket handshake)"
        )),
    }
}

/// `--on-marked-down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnMarkedDown {
    /// Close the upstream's tunnels with 1001 (HAProxy `shutdown-sessions`).
    Close,
}

/// `--so-keepalive IDLE:INTVL:CNT`; `None` fields keep the system default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoKeepalive {
    pub idle: Option<Duration>,
    pub interval: Option<Duration>,
    pub count: Option<u32>,
}

/// Linux's bounds (`MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`, `MAX_TCP_KEEPCNT`):
/// beyond them `setsockopt` fails and the socket would run without keepalive.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_COUNT: u32 = 127;

/// nginx `so_keepalive` syntax: `[IDLE]:[INTVL]:[CNT]` or `on`.
pub fn parse_so_keepalive(text: &str) -> Result<SoKeepalive, String> {
    if text == "on" {
        return Ok(SoKeepalive {
            idle: None,
            interval: None,
            count: None,
        });
    }
    let fields: Vec<&str> = text.split(':').collect();
    let [idle, interval, count] = fields[..] else {
        return Err(format!(
            "`{text}` is not IDLE:INTVL:CNT (example: 30m::10; an empty field keeps the system default)"
        ));
    };
    // The kernel counts keepalive times in whole seconds, from 1.
    let seconds = |name: &str, field: &str| -> Result<Option<Duration>, String> {
        if field.is_empty() {
            return Ok(None);
        }
        let d = parse_duration(field)?;
        if d.subsec_nanos() != 0 || !(1..=MAX_KEEPALIVE_SECS).contains(&d.as_secs()) {
            return Err(format!(
                "so_keepalive {name} `{field}` must be whole seconds from 1s to {MAX_KEEPALIVE_SECS}s"
            ));
        }
        Ok(Some(d))
    };
    let count = if count.is_empty() {
        None
    } else {
        match count.parse::<u32>() {
            Ok(n) if (1..=MAX_KEEPALIVE_COUNT).contains(&n) => Some(n),
            _ => {
                return Err(format!(
                    "so_keepalive count `{count}` must be a number of probes from 1 to {MAX_KEEPALIVE_COUNT}"
                ))
            }
        }
    };
    Ok(SoKeepalive {
        idle: seconds("idle", idle)?,
        interval: seconds("interval", interval)?,
        count,
    })
}

impl SoKeepalive {
    /// The settings with empty fields filled from the system's defaults:
    /// Linux's sysctls when readable, else their stock values (2 h idle,
    /// RFC 1122's minimum; 75 s between probes; 9 probes).
    pub fn resolve(self) -> TcpKeepalive {
        let sysctl = |name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let idle = self
            .idle
            .unwrap_or_else(|| Duration::from_secs(sysctl("tcp_keepalive_time").unwrap_or(7_200)));
        let interval = self
            .interval
            .unwrap_or_else(|| Duration::from_secs(sysctl("tcp_keepalive_intvl").unwrap_or(75)));
        let count = self.count.unwrap_or_else(|| {
            sysctl("tcp_keepalive_probes")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(9)
        });
        TcpKeepalive::new(idle, interval, count)
    }
}

/// A duration above zero: a zero ping interval would ping without pause.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("`{text}` must be longer than zero")),
        d => Ok(d),
    }
}

/// The balancing strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Balance {
    /// Smooth weighted round-robin (nginx default).
    RoundRobin,
    /// nginx `ip_hash`.
    IpHash,
    /// nginx `hash $key consistent` (ketama).
    ConsistentHash,
    /// nginx `least_conn`.
    LeastConn,
    /// Consistent hash with a load bound (HAProxy `hash-balance-factor 125`).
    BoundedHash,
}

/// nginx `proxy_redirect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Redirect {
    /// `proxy_redirect default`.
    Default,
    /// `proxy_redirect off`.
    Off,
}

/// An nginx `on|off` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// `on`.
    On,
    /// `off`.
    Off,
}

/// `--workers`: a count, or `auto` for one per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    Auto,
    Threads(u16),
}

impl WorkerCount {
    /// Sets the count on `workers` (`auto` keeps its default, the cores);
    /// one worker serves on the main thread, whose control runtime is a
    /// current-thread one, so the process keeps a single thread.
    pub fn apply(self, workers: wsproxy::workers::Workers) -> wsproxy::workers::Workers {
        let workers = workers.on_caller_thread(true);
        match self {
            WorkerCount::Auto => workers,
            WorkerCount::Threads(n) => workers.threads(usize::from(n)),
        }
    }
}

/// nginx `worker_processes` syntax: a whole number from 1, or `auto`.
pub fn parse_workers(text: &str) -> Result<WorkerCount, String> {
    match text.trim() {
        "auto" => Ok(WorkerCount::Auto),
        n => match n.parse::<u16>() {
            Ok(n) if n >= 1 => Ok(WorkerCount::Threads(n)),
            _ => Err(format!(
                "`{text}` is not a worker count (1, 2, ... or auto)"
            )),
        },
    }
}

/// nginx time syntax: `500ms`, `4s`, `2h`, `1m30s`, parsed by humantime,
/// which also takes `1m 30s` and `1.5s`; a bare number is seconds, as in
/// nginx, where humantime would want a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration (examples: 500ms, 4s, 1m30s, 2h): {e}"))
}

/// nginx size syntax: bytes, or a whole number of `k`, `m` or `g` (either
/// case), as nginx's `ngx_parse_offset` reads `client_max_body_size`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size (examples: 0, 4096, 512k, 1m, 1g)");
    let text = text.trim();
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 10),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 20),
        Some(b'g' | b'G') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// `remote-addr|header:NAME|cookie:NAME|query:NAME|path`.
pub fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    let bad = || {
        format!("`{text}` is not a hash key (remote-addr, header:NAME, cookie:NAME, query:NAME or path)")
    };
    match text.split_once(':') {
        None if text == "remote-addr" => Ok(HashKey::RemoteAddr),
        None if text == "path" => Ok(HashKey::Path),
        Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| bad()),
        Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_owned())),
        Some(("query", name)) if !name.is_empty() => Ok(HashKey::Query(name.to_owned())),
        _ => Err(bad()),
    }
}

/// `NAME:VALUE`; the value may be empty and may hold colons.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("`{text}` is not NAME:VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_nginx_syntax() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("4s"), Ok(ms(4_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("75"), Ok(ms(75_000)));
        // Everything the hand-written parser took before humantime.
        assert_eq!(parse_duration(" 60s "), Ok(ms(60_000)));
        assert_eq!(parse_duration("0"), Ok(ms(0)));
        assert_eq!(parse_duration("0s"), Ok(ms(0)));
        assert_eq!(parse_duration("30m"), Ok(ms(1_800_000)));
        assert_eq!(parse_duration("1d"), Ok(ms(86_400_000)));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse_duration("2s500ms"), Ok(ms(2_500)));
        assert_eq!(parse_duration("1s1s"), Ok(ms(2_000)));
        assert_eq!(
            parse_duration("4294967296"),
            Ok(Duration::from_secs(1 << 32))
        );
        // And what humantime adds.
        assert_eq!(parse_duration("1m 30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("2min"), Ok(ms(120_000)));
        for bad in [
            "",
            " ",
            "s",
            "4x",
            "-1s",
            "1.5",
            "99999999999999999999d",
            "4s!",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sizes_follow_nginx_syntax() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("1m"), Ok(1024 * 1024));
        assert_eq!(parse_size("1M"), Ok(1024 * 1024));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        for bad in ["", "m", "1.5m", "-1", "1mb", "1 m", "99999999999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn workers_follow_nginx_worker_processes() {
        assert_eq!(parse_workers("1"), Ok(WorkerCount::Threads(1)));
        assert_eq!(parse_workers("8"), Ok(WorkerCount::Threads(8)));
        assert_eq!(parse_workers("auto"), Ok(WorkerCount::Auto));
        for bad in ["0", "", "-1", "two", "65536"] {
            assert!(parse_workers(bad).is_err(), "{bad:?}");
        }
        let args = Args::try_parse_from(["gateway"]).unwrap();
        assert_eq!(args.workers, WorkerCount::Threads(1), "nginx's default");
    }

    #[test]
    fn so_keepalive_follows_nginx_syntax() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            parse_so_keepalive("30m::10"),
            Ok(SoKeepalive {
                idle: secs(1_800),
                interval: None,
                count: Some(10)
            })
        );
        assert_eq!(
            parse_so_keepalive("60s:10s:6"),
            Ok(SoKeepalive {
                idle: secs(60),
                interval: secs(10),
                count: Some(6)
            })
        );
        let defaults = SoKeepalive {
            idle: None,
            interval: None,
            count: None,
        };
        assert_eq!(parse_so_keepalive("::"), Ok(defaults));
        assert_eq!(parse_so_keepalive("on"), Ok(defaults));
        for bad in [
            "", "30m", "30m:10", "1:2:3:4", "x::", "500ms::", "0::", "1500ms::", "::0", "::128",
            "::x", "10h::", ":1.5s:", "off",
        ] {
            assert!(parse_so_keepalive(bad).is_err(), "{bad:?}");
        }
        // Empty fields come from the system, whatever it says.
        let resolved = parse_so_keepalive(":20s:").unwrap().resolve();
        assert_eq!(resolved.interval, Duration::from_secs(20));
        assert!(resolved.idle >= Duration::from_secs(1) && resolved.count >= 1);
    }

    #[test]
    fn ping_durations_must_be_positive() {
        assert_eq!(
            parse_positive_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("0").is_err());
    }

    #[test]
    fn hash_keys_and_headers_parse() {
        assert_eq!(parse_hash_key("path"), Ok(HashKey::Path));
        assert_eq!(
            parse_hash_key("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert_eq!(
            parse_hash_key("header:X-User"),
            Ok(HashKey::Header(http::HeaderName::from_static("x-user")))
        );
        assert!(parse_hash_key("cookie:").is_err());
        assert!(parse_hash_key("header:bad name").is_err());
        assert_eq!(
            parse_header("X-Proxy: wsproxy:1"),
            Ok(("X-Proxy".into(), "wsproxy:1".into()))
        );
        assert!(parse_header(":v").is_err());
    }
}
