//! `wsproxy`: an embeddable, WebSocket-aware reverse proxy.
//!
//! A sans-IO core (handshake parsing, header forwarding policy, routing,
//! upstream balancing) as plain types and functions, and a thin tokio shell
//! (tunnel, proxy, accept loop) around it.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod error;
pub mod handshake;

pub use error::Error;
pub use handshake::HandshakeError;
