//! A tunnel's settings: its timeouts (nginx and HAProxy directives), frame
//! tracking, polite-close linger and pings.

use std::time::Duration;

/// Timeouts of a tunnel. Every timeout is optional and off by default;
/// traffic resets the ones that measure silence.
///
/// Setters take a [`Duration`] or `None`:
///
/// ```
/// use std::time::Duration;
/// use wsproxy::tunnel::TunnelConfig;
///
/// // nginx's classic WebSocket location: proxy_read_timeout 7200s,
/// // proxy_send_timeout 12s.
/// let config = TunnelConfig::default()
///     .upstream_read_timeout(Duration::from_secs(7200))
///     .send_timeout(Duration::from_secs(12))
///     .linger_timeout(None);
/// assert_eq!(config.send_timeout, Some(Duration::from_secs(12)));
/// ```
///
/// A zero duration fires at the first opportunity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelConfig {
    /// No byte read from either side for this long ends the tunnel
    /// (HAProxy `timeout tunnel`).
    pub idle_timeout: Option<Duration>,
    /// No byte from the client for this long ends the tunnel. Stops
    /// applying once the client sent EOF, and is suspended while a write
    /// toward the upstream cannot progress (the client is not read then).
    pub client_read_timeout: Option<Duration>,
    /// No byte from the upstream for this long ends the tunnel (nginx
    /// `proxy_read_timeout`, 60 s by default there). Stops applying once the
    /// upstream sent EOF, and is suspended while a write toward the client
    /// cannot progress.
    pub upstream_read_timeout: Option<Duration>,
    /// A write, flush or shutdown toward either side that makes no progress
    /// for this long ends the tunnel: the peer stopped reading (nginx
    /// `proxy_send_timeout`). Also bounds the final shutdown of both sides.
    pub send_timeout: Option<Duration>,
    /// Once one side sent EOF, how long the other direction may stay silent
    /// before the tunnel ends (HAProxy `timeout client-fin` / `timeout
    /// server-fin`, inactivity timeouts as these are): it runs as long as
    /// it moves.
    pub linger_timeout: Option<Duration>,
    /// The longest a tunnel may live, traffic or not.
    pub max_lifetime: Option<Duration>,
    /// Follow WebSocket frames in both directions (off by default, for
    /// tunnels of other protocols): count messages, capture each side's
    /// Close frame into [`TunnelStats::frames`](super::TunnelStats::frames),
    /// and end the tunnel with
    /// [`TunnelError::Framing`](super::TunnelError::Framing) when a side
    /// breaks RFC 6455 framing. The client side must send masked frames and
    /// the upstream unmasked ones (§5.1). Bytes still pass unchanged; the
    /// first byte read from each side (after any
    /// [`Prefixed`](super::Prefixed) bytes, which count) must start a frame.
    pub track_frames: bool,
    /// How long a polite close
    /// ([`TunnelHandle::close`](super::TunnelHandle::close)) waits for both
    /// peers' Close replies before shutting the sockets down: 5 s by default,
    /// as nginx's `lingering_timeout`. RFC 6455 §7.1.1 lets the server close
    /// the TCP connection once the Close frames are exchanged. With
    /// [`track_frames`](Self::track_frames), peers that exchanged Close
    /// frames themselves get as long to close their connections, then the
    /// tunnel ends with [`TunnelEnd::PeersClosed`](super::TunnelEnd::PeersClosed).
    pub close_linger: Duration,
    /// Send a WebSocket Ping to a side that sent nothing for this long, at
    /// the next frame boundary toward it (masked toward the upstream): keeps
    /// NAT and firewall state alive and, with
    /// [`ping_timeout`](Self::ping_timeout), finds dead peers. Needs
    /// [`track_frames`](Self::track_frames); ignored without it. The peer's
    /// Pong is forwarded to the other side like any frame: an unsolicited
    /// Pong is a valid heartbeat there (RFC 6455 §5.5.3).
    pub ping_interval: Option<Duration>,
    /// A side that sends nothing for this long after a ping ends the tunnel
    /// with [`Timeout::Ping`](super::Timeout::Ping). Any byte counts as an
    /// answer, not only a Pong.
    pub ping_timeout: Option<Duration>,
}

/// [`TunnelConfig::close_linger`] unless set.
const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(5);

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            idle_timeout: None,
            client_read_timeout: None,
            upstream_read_timeout: None,
            send_timeout: None,
            linger_timeout: None,
            max_lifetime: None,
            track_frames: false,
            close_linger: DEFAULT_CLOSE_LINGER,
            ping_interval: None,
            ping_timeout: None,
        }
    }
}

impl TunnelConfig {
    /// A configuration with every timeout and ping off, frames not tracked,
    /// and a 5 s close linger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = timeout.into();
        self
    }

    /// Sets [`client_read_timeout`](Self::client_read_timeout).
    pub fn client_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.client_read_timeout = timeout.into();
        self
    }

    /// Sets [`upstream_read_timeout`](Self::upstream_read_timeout).
    pub fn upstream_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.upstream_read_timeout = timeout.into();
        self
    }

    /// Sets [`send_timeout`](Self::send_timeout).
    pub fn send_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.send_timeout = timeout.into();
        self
    }

    /// Sets [`linger_timeout`](Self::linger_timeout).
    pub fn linger_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.linger_timeout = timeout.into();
        self
    }

    /// Sets [`max_lifetime`](Self::max_lifetime).
    pub fn max_lifetime(mut self, lifetime: impl Into<Option<Duration>>) -> Self {
        self.max_lifetime = lifetime.into();
        self
    }

    /// Sets [`track_frames`](Self::track_frames).
    ///
    /// ```
    /// use wsproxy::tunnel::TunnelConfig;
    /// let websocket = TunnelConfig::new().track_frames(true);
    /// assert!(websocket.track_frames);
    /// assert!(!TunnelConfig::default().track_frames);
    /// ```
    pub fn track_frames(mut self, on: bool) -> Self {
        self.track_frames = on;
        self
    }

    /// Sets [`close_linger`](Self::close_linger).
    pub fn close_linger(mut self, linger: Duration) -> Self {
        self.close_linger = linger;
        self
    }

    /// Sets [`ping_interval`](Self::ping_interval) and
    /// [`ping_timeout`](Self::ping_timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use wsproxy::tunnel::TunnelConfig;
    /// // A ping after 30 s of silence; no answer within 10 s ends the tunnel.
    /// let config = TunnelConfig::new()
    ///     .track_frames(true)
    ///     .ping(Duration::from_secs(30), Duration::from_secs(10));
    /// assert_eq!(config.ping_timeout, Some(Duration::from_secs(10)));
    /// ```
    pub fn ping(
        mut self,
        interval: impl Into<Option<Duration>>,
        timeout: impl Into<Option<Duration>>,
    ) -> Self {
        self.ping_interval = interval.into();
        self.ping_timeout = timeout.into();
        self
    }
}
