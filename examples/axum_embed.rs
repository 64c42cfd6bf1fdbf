//! An axum app that answers `GET /health` itself and proxies `/ws/*` (and
//! `/`, where the benches' echo lives) to its upstreams, WebSocket or plain
//! HTTP. Ctrl-C: axum stops accepting, then the tunnels get Close 1001.
//!
//! `cargo run --features axum --example axum_embed -- --upstream 127.0.0.1:9001`
use std::{error::Error, net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use clap::Parser;
use wsproxy::{balance::Upstream, Proxy, RoundRobin, Scheme};

/// The gateway's flags, as benches/anchors.sh starts it.
#[derive(Parser)]
struct Args {
    /// Address to listen on (nginx `listen`).
    #[arg(long, default_value = "127.0.0.1:8040")]
    listen: SocketAddr,
    /// An upstream `ip:port` (nginx `server` in `upstream`); repeatable.
    #[arg(long, required = true)]
    upstream: Vec<SocketAddr>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = tcp.local_addr()?;
    let ups = args.upstream.into_iter().map(Upstream::new).collect();
    let proxy = Proxy::builder().upstream(RoundRobin::new(ups)).build()?;
    let svc = proxy.service().listener(addr, Scheme::Http);
    let app = Router::new().route("/health", get(|| async { "ok\n" }));
    let app = app.nest_service("/ws", svc.clone()).route_service("/", svc);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    println!("listening on ws://{addr} (/health here, /ws/* and / proxied)");
    let stop = async { _ = tokio::signal::ctrl_c().await };
    axum::serve(tcp, app).with_graceful_shutdown(stop).await?;
    let (window, deadline) = (Duration::from_secs(5), Duration::from_secs(15));
    println!("drained: {:?}", proxy.drain(window, deadline).await);
    Ok(())
}
