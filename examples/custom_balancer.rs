//! A custom `Balancer`: canary routing. Upgrades that carry `X-Canary: 1` go
//! to the least busy canary upstream when one is available, everything else
//! (and canary traffic while the canary is down) to the stable group. The
//! canary pick uses `Snapshot::pick_available`, which walks primaries and
//! backups and skips unavailable upstreams exactly as the built-in
//! strategies do.
//!
//! ```sh
//! cargo run --example custom_balancer
//! ```
//!
//! It starts two tagged echo backends and the proxy on loopback, connects
//! once without and once with the header, prints who answered, and exits.

use std::error::Error;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wsproxy::balance::{
    Balancer, Lease, PickContext, RoundRobin, SelectError, Upstream, UpstreamSet,
};
use wsproxy::server::Server;
use wsproxy::Proxy;

/// An ordinary balancer, a canary group and a rule choosing between them.
/// The rule reads only the request head in `ctx`: no I/O, no clock, so it
/// can be unit tested with a plain `http::Request`.
#[derive(Debug)]
struct Canary {
    stable: RoundRobin,
    canary: UpstreamSet,
}

impl Balancer for Canary {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let wants_canary = ctx
            .request()
            .headers()
            .get("x-canary")
            .is_some_and(|v| v == "1");
        if wants_canary {
            // A canary that is down or failing must not take its users
            // down with it: fall through to stable.
            // `pick_available` offers only the upstreams that may take this
            // request (not down, draining or failed), backups last.
            let canary = self.canary.snapshot();
            if let Ok(lease) = canary.pick_available(ctx, |peers| peers.min_by_key(|p| p.active()))
            {
                return Ok(lease);
            }
        }
        self.stable.pick(ctx)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let stable = tagged_echo("stable").await?;
    let canary = tagged_echo("canary").await?;
    let balancer = Canary {
        stable: RoundRobin::new([Upstream::new(stable)].into_iter().collect()),
        canary: [Upstream::new(canary)].into_iter().collect(),
    };
    let proxy = Proxy::builder().upstream(balancer).build()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new(proxy).serve(listener, async {
        let _ = stopped.await;
    }));

    for canary_header in [false, true] {
        let mut request = format!("ws://{addr}/").into_client_request()?;
        if canary_header {
            request.headers_mut().insert("x-canary", "1".parse()?);
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
        ws.send(Message::text("hello")).await?;
        if let Some(Ok(reply)) = ws.next().await {
            println!("X-Canary: {canary_header:<5} -> {reply}");
        }
        ws.close(None).await?;
    }

    let _ = stop.send(());
    let report = server.await??;
    println!("served {} connections", report.accepted);
    Ok(())
}

/// A WebSocket backend that answers every message with `name: message`.
async fn tagged_echo(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    if ws
                        .send(Message::text(format!("{name}: {text}")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}
