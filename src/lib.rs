//! `wsproxy`: an embeddable, WebSocket-aware reverse proxy.
//!
//! A sans-IO core (handshake parsing, header forwarding policy, routing,
//! upstream balancing) as plain types and functions, and a thin tokio shell
//! (tunnel, proxy, accept loop) around it.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod balance;
pub mod body;
pub mod error;
pub mod forward;
pub mod frame;
pub mod handshake;
pub mod proxy;
pub mod route;
pub mod server;
pub mod tunnel;

pub use balance::{Balancer, Lease, PickContext, SelectError, Upstream, UpstreamSet};
pub use error::Error;
pub use forward::{ForwardContext, ForwardError, ForwardPolicy, Scheme};
pub use frame::{FrameError, FrameTracker};
pub use handshake::HandshakeError;
pub use proxy::{Proxy, ProxyBuilder, UpstreamGroup};
pub use tunnel::{tunnel, Prefixed, TunnelConfig, TunnelEnd, TunnelError, TunnelStats};
