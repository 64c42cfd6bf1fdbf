//! One accepted connection's task, from the accept to the tunnel's end.
//!
//! The handshake (PROXY header, TLS, request heads, upstream connect, 101)
//! needs several kilobytes of state; an idle tunnel needs a few hundred
//! bytes. Both run in the one task the accept loop spawns, so that the
//! connection, its upstream connect and its tunnel stay on one thread with
//! no second spawn (issue 14), yet an idle WebSocket keeps only the
//! tunnel's bytes: the handshake runs boxed, and its box is freed the
//! moment it hands over the tunnel.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::Token;
use crate::proxy::{ConnectionHook, ConnectionReport, Proxy, Running, Sockets};

/// What a connection holds until it ends: its slot and its place in the
/// server's count.
pub(super) type Keep = (OwnedSemaphorePermit, Token);

/// What the handshake hands over.
pub(super) enum Next<S> {
    /// Nothing to tunnel: the connection has ended.
    Done,
    /// A tunnel with nobody waiting for its report.
    Tunnel(Running<S, Keep, Sockets>),
    /// A tunnel whose report a hook waits for.
    Reported(Running<S, (), Sockets>, Box<Ending>),
}

/// What a reported connection keeps for its hook while its tunnel runs,
/// boxed so that connections without a hook do not carry it.
pub(super) struct Ending {
    pub(super) report: ConnectionReport,
    pub(super) started: Instant,
    pub(super) peer: SocketAddr,
    pub(super) hooks: Hooks,
    pub(super) keep: Keep,
}

/// The proxy's end-of-connection hook, then the server's own.
#[derive(Clone)]
pub(super) struct Hooks {
    pub(super) proxy: Proxy,
    pub(super) server: Option<ConnectionHook>,
}

impl Hooks {
    /// Hands `report` to both hooks.
    pub(super) fn call(&self, peer: SocketAddr, report: &ConnectionReport) {
        self.proxy.report_end(peer, report);
        if let Some(hook) = &self.server {
            (hook.0)(peer, report);
        }
    }
}

pin_project! {
    /// The task of one connection: its boxed handshake, then its tunnel in
    /// the handshake's place.
    #[project = ConnectionProj]
    pub(super) enum Connection<S, H> {
        Handshake { handshake: Pin<Box<H>> },
        Tunnel { #[pin] running: Running<S, Keep, Sockets> },
        Reported { #[pin] running: Running<S, (), Sockets>, ending: Option<Box<Ending>> },
        Done,
    }
}

impl<S, H> Connection<S, H>
where
    H: Future<Output = Next<S>>,
{
    /// The task that runs `handshake`, then the tunnel it hands over.
    pub(super) fn new(handshake: H) -> Self {
        Self::Handshake {
            handshake: Box::pin(handshake),
        }
    }
}

impl<S, H> Future for Connection<S, H>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    H: Future<Output = Next<S>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.as_mut().project() {
            ConnectionProj::Handshake { handshake } => {
                let next = std::task::ready!(handshake.as_mut().poll(cx));
                // Replacing the state drops the handshake's box: an idle
                // tunnel holds nothing of it.
                self.as_mut().set(match next {
                    Next::Done => Self::Done,
                    Next::Tunnel(running) => Self::Tunnel { running },
                    Next::Reported(running, ending) => Self::Reported {
                        running,
                        ending: Some(ending),
                    },
                });
                // The tunnel's first poll registers its wakers.
                self.poll(cx)
            }
            ConnectionProj::Tunnel { running } => running.poll(cx).map(drop),
            ConnectionProj::Reported { running, ending } => {
                let stats = std::task::ready!(running.poll(cx));
                if let Some(ending) = ending.take() {
                    let Ending {
                        mut report,
                        started,
                        peer,
                        hooks,
                        keep,
                    } = *ending;
                    report.tunnel = Some(stats);
                    report.duration = started.elapsed();
                    hooks.call(peer, &report);
                    // Counted out only once the hook has seen the report.
                    drop(keep);
                }
                Poll::Ready(())
            }
            ConnectionProj::Done => Poll::Ready(()),
        }
    }
}
