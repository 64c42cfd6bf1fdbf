//! Thread-per-core serving for a [`Server`] that owns its runtime: N worker
//! threads, each with its own current-thread tokio runtime and its own
//! listener on the same address (`SO_REUSEPORT`), nginx's worker model.
//!
//! ```no_run
//! use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
//! use wsproxy::{Proxy, Server};
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let upstreams = [Upstream::new("127.0.0.1:8010".parse::<std::net::SocketAddr>()?)]
//!     .into_iter()
//!     .collect::<UpstreamSet>();
//! let proxy = Proxy::builder().upstream(RoundRobin::new(upstreams)).build()?;
//! let workers = Server::new(proxy)
//!     .per_core()
//!     .bind("127.0.0.1:8020".parse()?)?;
//! println!("listening on {}", workers.local_addr());
//! // Any runtime runs the control side: the shutdown signal and the wait.
//! let control = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let report = control.block_on(workers.serve(async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }))?;
//! println!("{} connections accepted", report.accepted);
//! # Ok(())
//! # }
//! ```
//!
//! # Why
//!
//! With one accept loop on a multi-thread runtime every accepted connection
//! is spawned from the accepting thread and handed to another through the
//! runtime's shared queue, with a wake-up (a futex or eventfd write) each
//! time, and a handshake can hop threads again between its connect and its
//! tunnel. Here the kernel spreads connections over the workers' listeners
//! (`SO_REUSEPORT` hashes each connection to one of them), and a connection,
//! its upstream connect, its handshake and its tunnel all run on the thread
//! that accepted it, in one task.
//!
//! Embedding hosts need none of this: [`Server::serve`] and
//! [`Server::serve_with`] keep running on whatever runtime the host has.
//!
//! # What the workers share
//!
//! They serve one [`Proxy`](crate::Proxy) (it is an `Arc` inside): its
//! balancers, passive health, registries, counters, metrics and hooks are
//! the same for every worker, so least-connection picks, `Proxy::tunnels`
//! and a `Rebalancer` see all connections. Each worker runs its own accept
//! loop and drain over its own connections; the [`DrainReport`] sums them.
//! A drain window spreads each worker's Close 1001 over the whole window,
//! so the closes stay spread evenly over all tunnels.
//!
//! [`Server::max_connections`] is split evenly across the workers (rounded
//! up), as nginx's `worker_connections` is per worker: a shared limit would
//! make every slot freed on one thread wake a waiter on another, the very
//! cross-thread wake-up this layout removes, and the kernel already spreads
//! connections evenly over the listeners.
//!
//! # Without `SO_REUSEPORT`
//!
//! Where the option is missing (Windows, Solaris, illumos) or refused, the
//! workers share one listening socket instead (duplicated, each registered
//! with its own runtime), as nginx workers share theirs without
//! `reuseport`: every worker may be woken for a connection that only one of
//! them accepts, but each connection is still served on the thread that
//! accepted it. [`BoundWorkers::reuse_port`] tells which way it went.
//!
//! As with nginx `reuseport`, another process of the same user that listens
//! on the port with `SO_REUSEPORT` too is not refused: the kernel shares
//! the connections with it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::server::{DrainReport, Server};

/// The listen backlog of each worker's listener: what std and tokio use.
const BACKLOG: i32 = 1024;

/// A [`Server`] to run on N threads, each with its own current-thread
/// runtime and listener; made by [`Server::per_core`], bound by
/// [`bind`](Self::bind). See the [module docs](self).
#[must_use = "Workers do nothing until bound and served"]
#[derive(Debug, Clone)]
pub struct Workers {
    server: Server,
    threads: usize,
    on_caller_thread: bool,
}

/// Listeners bound for each worker, ready to [`serve`](Self::serve).
#[must_use = "the workers serve nothing until `serve` runs"]
#[derive(Debug)]
pub struct BoundWorkers {
    server: Server,
    listeners: Vec<std::net::TcpListener>,
    local: SocketAddr,
    reuse_port: bool,
    on_caller_thread: bool,
}

impl Server {
    /// Runs this server thread-per-core: one worker per available core
    /// (nginx `worker_processes auto`), see [`Workers`].
    ///
    /// ```no_run
    /// # use wsproxy::{Proxy, Server};
    /// # fn run(proxy: Proxy) -> Result<(), Box<dyn std::error::Error>> {
    /// let workers = Server::new(proxy).per_core().threads(2).bind("127.0.0.1:0".parse()?)?;
    /// assert_eq!(workers.threads(), 2);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use = "Workers do nothing until bound and served"]
    pub fn per_core(self) -> Workers {
        let threads = thread::available_parallelism().map_or(1, usize::from);
        Workers {
            server: self,
            threads,
            on_caller_thread: false,
        }
    }
}

impl Workers {
    /// How many worker threads (nginx `worker_processes N`); at least 1.
    /// The default is the available parallelism (`worker_processes auto`).
    #[must_use = "builder methods return the updated builder"]
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// With one worker, serve on the thread that polls the serve future
    /// instead of starting one, when that thread runs a current-thread
    /// tokio runtime (otherwise this changes nothing). Off by default.
    ///
    /// A process that serves this way can keep a single thread, and then
    /// the kernel takes no reference on a socket's file in every socket
    /// syscall (`fdget` on an unshared fd table) and glibc's malloc skips
    /// its locks: the gateway's `--workers 1`. What the caller then
    /// provides is what a worker thread otherwise brings: its runtime needs
    /// IO and time enabled, must be driven (not polled from another
    /// executor), and sees the connections' tasks; a panic in the accept
    /// loop reaches the caller instead of becoming an error; and dropping
    /// the serve future stops accepting without the drain (connections
    /// already accepted run on) — resolve `shutdown` to drain.
    ///
    /// ```
    /// # use wsproxy::balance::{RoundRobin, UpstreamSet};
    /// # use wsproxy::{Proxy, Server};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let proxy = Proxy::builder().upstream(RoundRobin::new(UpstreamSet::default())).build()?;
    /// let workers = Server::new(proxy)
    ///     .per_core()
    ///     .threads(1)
    ///     .on_caller_thread(true)
    ///     .bind("127.0.0.1:0".parse()?)?;
    /// assert_eq!(workers.threads(), 1);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use = "builder methods return the updated builder"]
    pub fn on_caller_thread(mut self, yes: bool) -> Self {
        self.on_caller_thread = yes;
        self
    }

    /// Binds one listener per worker on `addr`, each with `SO_REUSEPORT`
    /// (port 0 picks one port for all of them), or, where that option is
    /// unavailable, one listener the workers share.
    ///
    /// ```
    /// # use wsproxy::balance::{RoundRobin, UpstreamSet};
    /// # use wsproxy::{Proxy, Server};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let proxy = Proxy::builder().upstream(RoundRobin::new(UpstreamSet::default())).build()?;
    /// let workers = Server::new(proxy).per_core().threads(3).bind("127.0.0.1:0".parse()?)?;
    /// assert_ne!(workers.local_addr().port(), 0);
    /// assert_eq!(workers.threads(), 3);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When the address cannot be bound (in use, not local, no permission).
    pub fn bind(self, addr: SocketAddr) -> io::Result<BoundWorkers> {
        let first = match listen(addr, true) {
            Ok(first) => first,
            // Refused (not merely unsupported) by the platform: share one.
            Err(e) if e.kind() != io::ErrorKind::AddrInUse => {
                tracing::debug!(error = %e, "SO_REUSEPORT unavailable, workers share one listener");
                return shared(self, addr);
            }
            Err(e) => return Err(e),
        };
        let local = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..self.threads {
            match listen(local, true) {
                Ok(listener) => listeners.push(listener),
                // Another process holds the port without SO_REUSEPORT, or
                // the platform ignores the option: share the first socket.
                Err(e) => {
                    tracing::debug!(error = %e, "a second SO_REUSEPORT listener failed, workers share one");
                    let first = listeners.swap_remove(0);
                    drop(listeners);
                    return BoundWorkers::sharing(self, first, local);
                }
            }
        }
        Ok(BoundWorkers {
            server: self.server,
            listeners,
            local,
            reuse_port: true,
            on_caller_thread: self.on_caller_thread,
        })
    }
}

/// Binds one listener without `SO_REUSEPORT` and shares it.
fn shared(workers: Workers, addr: SocketAddr) -> io::Result<BoundWorkers> {
    let listener = listen(addr, false)?;
    let local = listener.local_addr()?;
    BoundWorkers::sharing(workers, listener, local)
}

/// A non-blocking listening socket on `addr`, with `SO_REUSEADDR` as
/// tokio's `TcpListener::bind` sets it on Unix.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if reuse_port {
        set_reuse_port(&socket)?;
    }
    // Before `listen`: every connection it queues inherits these.
    crate::server::before_listen(&socket);
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(not(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
)))]
fn set_reuse_port(_socket: &Socket) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

impl BoundWorkers {
    /// One socket, duplicated for every worker.
    fn sharing(
        workers: Workers,
        listener: std::net::TcpListener,
        local: SocketAddr,
    ) -> io::Result<Self> {
        let mut listeners = Vec::with_capacity(workers.threads);
        for _ in 1..workers.threads {
            listeners.push(listener.try_clone()?);
        }
        listeners.push(listener);
        Ok(Self {
            server: workers.server,
            listeners,
            local,
            reuse_port: false,
            on_caller_thread: workers.on_caller_thread,
        })
    }

    /// The address the workers listen on (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many worker threads will serve.
    pub fn threads(&self) -> usize {
        self.listeners.len()
    }

    /// Whether each worker has its own `SO_REUSEPORT` listener (false: they
    /// share one socket, see the [module docs](self)).
    pub fn reuse_port(&self) -> bool {
        self.reuse_port
    }

    /// Starts the workers and serves until `shutdown` resolves (or this
    /// future is dropped), then drains each worker as [`Server::serve`]
    /// does and reports the sum.
    ///
    /// This future only waits: it runs on any runtime (or `block_on`), and
    /// the connections are served on the worker threads (unless
    /// [`Workers::on_caller_thread`] put the one worker on the caller's).
    ///
    /// # Errors
    ///
    /// The first worker's error: its runtime could not be built, or its
    /// listener could not be registered with it.
    pub async fn serve<F>(self, shutdown: F) -> io::Result<DrainReport>
    where
        F: Future<Output = ()>,
    {
        self.serve_with(|tcp| std::future::ready(Ok(tcp)), shutdown)
            .await
    }

    /// Like [`serve`](Self::serve), each accepted socket going through
    /// `accept` first, as in [`Server::serve_with`] (TLS termination).
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub async fn serve_with<A, Fut, S, F>(self, accept: A, shutdown: F) -> io::Result<DrainReport>
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Future<Output = ()>,
    {
        self.serve_retiring(accept, std::future::pending(), shutdown)
            .await
    }

    /// Like [`serve_with`](Self::serve_with), but when `retire` resolves
    /// every worker closes its listener while the connections it accepted
    /// run on until `shutdown` drains them, as in
    /// [`Server::serve_retiring`]: how a host moves to a new address
    /// without refusing or ending a connection.
    ///
    /// ```no_run
    /// use wsproxy::{server::Server, Proxy};
    ///
    /// # async fn run(proxy: Proxy) -> std::io::Result<()> {
    /// let (moved, retire) = tokio::sync::oneshot::channel::<()>();
    /// let old = Server::new(proxy).per_core().bind("127.0.0.1:8020".parse().unwrap())?;
    /// let serving = old.serve_retiring(
    ///     |tcp| std::future::ready(Ok(tcp)),
    ///     async { let _ = retire.await; },
    ///     async { let _ = tokio::signal::ctrl_c().await; },
    /// );
    /// # let _ = (moved, serving);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub async fn serve_retiring<A, Fut, S, R, F>(
        self,
        accept: A,
        retire: R,
        shutdown: F,
    ) -> io::Result<DrainReport>
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        R: Future<Output = ()>,
        F: Future<Output = ()>,
    {
        let accept = move |tcp| {
            let accepting = accept(tcp);
            async move { Ok((accepting.await?, false)) }
        };
        self.serve_accepted(accept, retire, shutdown).await
    }

    /// Like [`serve_retiring`](Self::serve_retiring), with HTTP/2 on the
    /// connections whose TLS ALPN picked `h2`, as in
    /// [`Server::serve_negotiated`] (feature `h2`).
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    #[cfg(feature = "h2")]
    pub async fn serve_negotiated<A, Fut, S, R, F>(
        self,
        accept: A,
        retire: R,
        shutdown: F,
    ) -> io::Result<DrainReport>
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<(S, crate::server::Negotiated)>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        R: Future<Output = ()>,
        F: Future<Output = ()>,
    {
        let accept = move |tcp| {
            let accepting = accept(tcp);
            async move {
                let (stream, protocol) = accepting.await?;
                Ok((stream, protocol == crate::server::Negotiated::H2))
            }
        };
        self.serve_accepted(accept, retire, shutdown).await
    }

    /// The workers' serve; `accept` also says whether the stream speaks
    /// HTTP/2.
    async fn serve_accepted<A, Fut, S, R, F>(
        self,
        accept: A,
        retire: R,
        shutdown: F,
    ) -> io::Result<DrainReport>
    where
        A: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<(S, bool)>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        R: Future<Output = ()>,
        F: Future<Output = ()>,
    {
        if self.on_caller_thread && self.listeners.len() == 1 && on_current_thread_runtime() {
            // See `Workers::on_caller_thread`.
            if let Some(listener) = self.listeners.into_iter().next() {
                let listener = TcpListener::from_std(listener)?;
                return self
                    .server
                    .serve_accepted(listener, accept, retire, shutdown)
                    .await;
            }
            return Ok(DrainReport::default());
        }
        let accept = Arc::new(accept);
        // The retire signal crosses to every worker's thread.
        let (retiring, retired) = watch::channel(false);
        let n = self.listeners.len();
        let per_worker = self.server.max_connections.div_ceil(n).max(1);
        // Dropping the sender (this future dropped) stops the workers too.
        let (stop, stopped) = watch::channel(false);
        let (done, mut results) = mpsc::unbounded_channel();
        for (i, listener) in self.listeners.into_iter().enumerate() {
            let server = self.server.clone().max_connections(per_worker);
            let accept = accept.clone();
            let mut stopped = stopped.clone();
            let mut retired = retired.clone();
            let done = done.clone();
            let spawned = thread::Builder::new()
                .name(format!("wsproxy-worker-{i}"))
                .spawn(move || {
                    let served = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .and_then(|runtime| {
                            runtime.block_on(async move {
                                let listener = TcpListener::from_std(listener)?;
                                let shutdown = async move {
                                    // Err: the sender is gone, which stops too.
                                    let _ = stopped.wait_for(|stop| *stop).await;
                                };
                                let retire = async move {
                                    // Err: the sender is gone, and so is
                                    // the serve: shutdown follows.
                                    let _ = retired.wait_for(|retire| *retire).await;
                                };
                                server
                                    .serve_accepted(
                                        listener,
                                        move |tcp| accept(tcp),
                                        retire,
                                        shutdown,
                                    )
                                    .await
                            })
                        });
                    let _ = done.send(served);
                });
            if let Err(e) = spawned {
                let _ = stop.send(true);
                return Err(e);
            }
        }
        drop((stopped, retired, done));

        let mut report = DrainReport::default();
        let mut first_error = None;
        let mut received = 0;
        let mut take = |served: io::Result<DrainReport>| match served {
            Ok(worker) => add(&mut report, &worker),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        };
        tokio::pin!(retire);
        tokio::pin!(shutdown);
        let mut retire_sent = false;
        // A worker that ends on its own (an error) ends the whole serve.
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = &mut retire, if !retire_sent => {
                    retire_sent = true;
                    let _ = retiring.send(true);
                }
                served = results.recv() => {
                    if let Some(served) = served {
                        received += 1;
                        take(served);
                    }
                    break;
                }
            }
        }
        let _ = stop.send(true);
        while let Some(served) = results.recv().await {
            received += 1;
            take(served);
        }
        if received < n {
            // Its sender went with a panicking thread.
            first_error.get_or_insert_with(|| io::Error::other("a worker thread panicked"));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// Whether this is called on a current-thread tokio runtime (where one
/// worker can be the caller's own thread).
fn on_current_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// Adds one worker's report to the sum.
fn add(sum: &mut DrainReport, worker: &DrainReport) {
    sum.accepted += worker.accepted;
    sum.open_at_shutdown += worker.open_at_shutdown;
    sum.finished += worker.finished;
    sum.cut += worker.cut;
    sum.closed += worker.closed;
}
