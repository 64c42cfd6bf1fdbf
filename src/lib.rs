//! `wsproxy`: an embeddable, WebSocket-aware reverse proxy.
//!
//! The classic nginx WebSocket configuration (`map $http_upgrade
//! $connection_upgrade`, an `upstream` block, `proxy_set_header` for Upgrade,
//! Connection, Host, X-Real-IP, X-Forwarded-For and X-Forwarded-Proto, and
//! `proxy_connect_timeout` / `proxy_read_timeout` / `proxy_send_timeout`) as
//! a library: proxy one connection, or a whole listener, in a few lines.
//!
//! ```
//! use futures_util::{SinkExt, StreamExt};
//! use tokio::net::TcpListener;
//! use tokio_tungstenite::tungstenite::Message;
//! use wsproxy::balance::{RoundRobin, Upstream, UpstreamSet};
//! use wsproxy::{Proxy, Scheme};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let backend = TcpListener::bind("127.0.0.1:0").await?;
//! # let backend_addr = backend.local_addr()?;
//! # tokio::spawn(async move {
//! #     let (stream, _) = backend.accept().await?;
//! #     let mut ws = tokio_tungstenite::accept_async(stream).await?;
//! #     while let Some(Ok(msg)) = ws.next().await {
//! #         if msg.is_text() { ws.send(msg).await?; }
//! #     }
//! #     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! # });
//! // An upstream group with the nginx defaults for everything else.
//! let upstreams: UpstreamSet = [Upstream::new(backend_addr)].into_iter().collect();
//! let proxy = Proxy::builder().upstream(RoundRobin::new(upstreams)).build()?;
//!
//! // Serve one accepted connection (or a whole listener with `wsproxy::Server`).
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     let (stream, peer) = listener.accept().await?;
//!     proxy.serve(stream, peer, Scheme::Http).await;
//!     Ok::<_, std::io::Error>(())
//! });
//!
//! // A WebSocket client talks to the backend through the proxy.
//! let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat")).await?;
//! ws.send(Message::text("hello")).await?;
//! assert_eq!(ws.next().await.transpose()?, Some(Message::text("hello")));
//! # Ok(())
//! # }
//! ```
//!
//! The parts, each usable alone:
//!
//! - sans-IO core, no sockets and no clock: [`handshake`] (HTTP/1.1 heads with
//!   httparse, RFC 6455 checks on both sides, head writers), [`forward`]
//!   (hop-by-hop and forwarding headers, trusted proxies, Origin and CORS),
//!   [`route`] (Host + longest prefix), [`balance`] (the [`Balancer`] trait
//!   and nginx's strategies plus bounded-load consistent hashing, affinity
//!   and the [`balance::Rebalance`] planner), [`handshake::body`] (where a
//!   streamed body ends), [`frame`] (WebSocket frame boundaries and Close frames,
//!   read as bytes pass);
//! - async shell: [`tunnel()`] (copy both ways, timeouts, half-close, no
//!   buffer while idle, polite close through a [`tunnel::TunnelHandle`],
//!   pings), [`Proxy`] (one connection end to end, a
//!   [`proxy::TunnelRegistry`] of live tunnels per upstream group,
//!   [`proxy::Rebalancer`], and the [`HealthChecker`]: active TCP,
//!   WebSocket or custom [`Probe`]s with HAProxy's rise/fall, closing the
//!   tunnels of an upstream marked down), [`Server`] (accept loop, bounded
//!   concurrency, graceful drain with Close 1001 spread over a window).
//! - feature modules, integrations behind cargo features: `proxy_protocol`
//!   (feature `proxy-protocol`: the PROXY protocol v1/v2 on a [`Server`]'s
//!   listener and toward upstream groups);
//!   `metrics` (feature `metrics`: the same figures through the `metrics`
//!   facade, for Prometheus and other exporters); `dns` (feature `dns`:
//!   upstream groups kept current from A/AAAA or SRV records);
//!   `upstream_tls` (feature `rustls`: TLS toward upstream groups, nginx
//!   `proxy_pass https://`; Unix-socket upstreams, `unix:/path`, need no
//!   feature); `service` (feature `tower`); HTTP/2 on a [`Server`]'s TLS
//!   connections (feature `h2`: `Server::serve_negotiated`, RFC 8441
//!   WebSockets).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod balance;
mod clock;
#[cfg(feature = "dns")]
pub mod dns;
pub mod forward;
pub mod frame;
pub mod handshake;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod proxy;
#[cfg(feature = "proxy-protocol")]
pub mod proxy_protocol;
pub mod route;
pub mod server;
#[cfg(feature = "tower")]
pub mod service;
pub mod tunnel;
#[cfg(feature = "rustls")]
pub mod upstream_tls;
pub mod workers;

pub use balance::{Balancer, Lease, PickContext, RoundRobin, SelectError, Upstream, UpstreamSet};
pub use forward::{ForwardContext, ForwardError, ForwardPolicy, Scheme};
pub use frame::{FrameError, FrameTracker};
pub use handshake::HandshakeError;
pub use proxy::{
    ConnectError, ConnectionReport, HealthCheck, HealthChecker, Listener, PendingUpgrade, Probe,
    Proxy, ProxyBuilder, UpgradeError, UpstreamGroup,
};
pub use route::Route;
pub use server::{DrainReport, Server};
pub use tunnel::{tunnel, Prefixed, TunnelConfig, TunnelEnd, TunnelError, TunnelStats};

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
