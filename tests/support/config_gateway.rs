//! A gateway process started with `--config` and reloaded with SIGHUP,
//! and the WebSocket helpers the config tests share (tests/config.rs,
//! tests/config_dns.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::{bounded, child_output, gateway_bin, ws_upstream, WsUpstreamOptions, WAIT};

pub type Ws = WebSocketStream<TcpStream>;

/// A gateway process started with `--config`; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: mpsc::UnboundedReceiver<String>,
    pub stderr: Arc<Mutex<String>>,
    pub _dir: TempDir,
    pub config: PathBuf,
}

impl Gateway {
    pub async fn start(config: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(gateway_bin())
            .arg("--config")
            .arg(&path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let (lines, stderr) = child_output(&mut child);
        let mut gateway = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            lines,
            stderr,
            _dir: dir,
            config: path,
        };
        let banner = gateway
            .next_line()
            .await
            .unwrap_or_else(|| panic!("no banner; stderr: {}", gateway.stderr.lock().unwrap()));
        gateway.addr = banner_addr(&banner);
        gateway
    }

    pub async fn next_line(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Writes `config` and sends SIGHUP; waits until the gateway has
    /// logged one more reload (`reloaded`) or refusal (`refused`).
    pub async fn reload(&self, config: &str) {
        let before = self.outcomes();
        std::fs::write(&self.config, config).unwrap();
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        self.await_outcomes(before + 1).await;
    }

    pub fn outcomes(&self) -> usize {
        let err = self.stderr();
        // Whole lines only: stderr is unbuffered, so a line can arrive in
        // pieces and a test would read the rest of it too early.
        let err = &err[..err.rfind('\n').map_or(0, |end| end + 1)];
        err.matches("gateway: reloaded ").count()
            + err.matches(" refused, configuration unchanged").count()
    }

    pub async fn await_outcomes(&self, n: usize) {
        bounded("the reload's log line", async {
            while self.outcomes() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsproxy-config-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn banner_addr(line: &str) -> SocketAddr {
    line.split("://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Opens a tunnel through the gateway; returns it with the name the
/// upstream announced.
pub async fn open(addr: SocketAddr, path: &str) -> (Ws, String) {
    let stream = bounded("tcp connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let url = format!("ws://{addr}{path}");
    let (mut ws, response) = bounded("handshake", tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake");
    assert_eq!(response.status(), 101);
    let name = match bounded("announce", ws.next()).await {
        Some(Ok(Message::Text(name))) => name.to_string(),
        other => panic!("no announce: {other:?}"),
    };
    (ws, name)
}

pub async fn echoes(ws: &mut Ws, text: &str) {
    bounded("send", ws.send(Message::text(text))).await.unwrap();
    match bounded("echo", ws.next()).await {
        Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), text),
        other => panic!("no echo of {text:?}: {other:?}"),
    }
}

pub async fn named_upstream(name: &'static str) -> SocketAddr {
    ws_upstream(WsUpstreamOptions {
        announce: Some(name),
        ..WsUpstreamOptions::default()
    })
    .await
    .addr
}
