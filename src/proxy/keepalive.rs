//! TCP keepalive on the proxy's sockets: finds peers that vanished without a
//! FIN (a crashed host, a dropped NAT mapping) on tunnels that may idle for
//! hours.

use std::io;
use std::time::Duration;

use socket2::SockRef;

/// TCP keepalive probes for a socket: after `idle` without traffic, a probe
/// every `interval`; `count` unanswered probes and the kernel resets the
/// connection, which ends its tunnel with a read error. nginx
/// `listen ... so_keepalive=idle:interval:count`, HAProxy
/// `option clitcpka` / `srvtcpka` with `tcp-ka-idle`, `-intvl`, `-cnt`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::time::Duration;
/// use wsproxy::proxy::TcpKeepalive;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let socket = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
/// // so_keepalive=60s:10s:6: a dead peer is found within about two minutes.
/// TcpKeepalive::new(Duration::from_secs(60), Duration::from_secs(10), 6).apply(&socket)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpKeepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`).
    pub idle: Duration,
    /// Between probes (`TCP_KEEPINTVL`).
    pub interval: Duration,
    /// Unanswered probes before the connection is reset (`TCP_KEEPCNT`).
    pub count: u32,
}

impl TcpKeepalive {
    /// Probes after `idle`, every `interval`, `count` of them.
    pub fn new(idle: Duration, interval: Duration, count: u32) -> Self {
        Self {
            idle,
            interval,
            count,
        }
    }

    /// Turns keepalive on for `socket` with these settings.
    ///
    /// # Errors
    ///
    /// The operating system's, for a socket that refuses the options.
    pub fn apply(&self, socket: &tokio::net::TcpStream) -> io::Result<()> {
        let params = socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.count);
        SockRef::from(socket).set_tcp_keepalive(&params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settings_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let sock = SockRef::from(&socket);
        assert!(!sock.keepalive().unwrap());
        TcpKeepalive::new(Duration::from_secs(42), Duration::from_secs(7), 3)
            .apply(&socket)
            .unwrap();
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
    }
}
