//! `--access-log`: one line per connection, written when it ends (nginx
//! `access_log`, whose lines are also written at the end of a request).
//!
//! ```text
//! 2026-11-24T07:00:00Z client=127.0.0.1:50212 route=default upstream=127.0.0.1:8010 status=101 outcome=tunneled requests=1 from_client=1204 from_upstream=1188 duration=3.214s end=client-closed close=client:1000,upstream:1000
//! ```
//!
//! `end` says why the tunnel ended: `client-closed` / `upstream-closed` (that
//! side's EOF came first), `proxy-closed` (the gateway closed it politely:
//! drain, `--on-marked-down`), `idle-timeout`, `read-timeout`,
//! `send-timeout`, `ping-timeout:client` / `ping-timeout:upstream` (that side
//! did not answer a ping), `linger-timeout`, `lifetime`, `shutdown` (cut at
//! the drain deadline), `error`; `-` without a tunnel.
//!
//! `close` lists who sent a WebSocket Close frame and its code: `proxy:1001`
//! first when the gateway closed the tunnel, then `client:CODE` and
//! `upstream:CODE` for the Close each peer sent (1005 for a Close without a
//! code, as RFC 6455 §7.1.5 reports it); `-` when nobody did. The order is
//! fixed, not the order the frames were sent: the tunnel does not record
//! which peer's Close came first, and a peer answering a Close usually echoes
//! its code, so `client:1000,upstream:1000` is an ordinary closing handshake.

use std::fmt::Write as _;
use std::io::{self, LineWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wsproxy::frame::CloseFrame;
use wsproxy::proxy::{ConnectionReport, Outcome};
use wsproxy::tunnel::{FrameStats, Side, Timeout, TunnelEnd};

/// Where lines go; one lock per line, flushed per line so that nothing is
/// lost at exit and `tail -f` sees each connection as it ends.
pub struct AccessLog {
    out: Mutex<LineWriter<Box<dyn Write + Send>>>,
}

impl AccessLog {
    /// `-` is stdout; anything else a file opened for appending, as nginx does.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            out: Mutex::new(LineWriter::new(Self::target(path)?)),
        })
    }

    fn target(path: &Path) -> io::Result<Box<dyn Write + Send>> {
        Ok(if path == Path::new("-") {
            Box::new(io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        })
    }

    /// Opens `path` again and writes there from now on (nginx's SIGUSR1,
    /// after logrotate moved the file away); on failure the old file stays.
    pub fn reopen(&self, path: &Path) -> io::Result<()> {
        let fresh = LineWriter::new(Self::target(path)?);
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = out.flush();
        *out = fresh;
        Ok(())
    }

    /// Writes one connection's line; a failed write is dropped (nginx
    /// does not stop serving when its log cannot be written either).
    pub fn write(&self, client: SocketAddr, report: &ConnectionReport) {
        let line = format_line(SystemTime::now(), client, report);
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
        }
    }
}

/// The line for one finished connection, newline included.
pub fn format_line(now: SystemTime, client: SocketAddr, report: &ConnectionReport) -> String {
    let mut line = String::with_capacity(200);
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let _ = write!(
        line,
        "{} client={client} route={} upstream={} status={} outcome={} requests={}",
        rfc3339(now),
        dash(report.route.as_deref().map(str::to_owned)),
        dash(report.upstream.as_ref().map(ToString::to_string)),
        dash(report.status.map(|s| s.as_u16().to_string())),
        outcome(report.outcome),
        report.requests,
    );
    match &report.tunnel {
        Some(t) => {
            let _ = write!(
                line,
                " from_client={} from_upstream={}",
                t.client_to_upstream, t.upstream_to_client
            );
        }
        None => {
            let _ = write!(
                line,
                " from_client={} from_upstream={}",
                report.body_from_client, report.body_from_upstream
            );
        }
    }
    let _ = write!(
        line,
        " duration={:.3}s end={}",
        report.duration.as_secs_f64(),
        report.tunnel.as_ref().map_or("-", |t| end(&t.end))
    );
    line.push_str(" close=");
    match &report.tunnel {
        Some(t) => closes(&mut line, &t.end, t.frames.as_ref()),
        None => line.push('-'),
    }
    line.push('\n');
    line
}

fn outcome(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        None => "-",
        Some(Outcome::Tunneled) => "tunneled",
        Some(Outcome::Proxied) => "proxied",
        Some(Outcome::UpgradeRefused) => "upgrade-refused",
        Some(Outcome::Preflight) => "preflight",
        Some(Outcome::Rejected(_)) => "rejected",
        Some(Outcome::Abandoned) => "abandoned",
        Some(_) => "other",
    }
}

fn end(end: &TunnelEnd) -> &'static str {
    match end {
        TunnelEnd::ClientEof => "client-closed",
        TunnelEnd::UpstreamEof => "upstream-closed",
        TunnelEnd::Closed(_) => "proxy-closed",
        TunnelEnd::PeersClosed => "peers-closed",
        TunnelEnd::Timeout(Timeout::Idle) => "idle-timeout",
        TunnelEnd::Timeout(Timeout::Read(_)) => "read-timeout",
        TunnelEnd::Timeout(Timeout::Send(_)) => "send-timeout",
        TunnelEnd::Timeout(Timeout::Ping(Side::Client)) => "ping-timeout:client",
        TunnelEnd::Timeout(Timeout::Ping(Side::Upstream)) => "ping-timeout:upstream",
        TunnelEnd::Timeout(Timeout::Linger) => "linger-timeout",
        TunnelEnd::Timeout(Timeout::Lifetime) => "lifetime",
        TunnelEnd::Timeout(_) => "timeout",
        TunnelEnd::Shutdown => "shutdown",
        TunnelEnd::Error(_) => "error",
        _ => "other",
    }
}

/// The `close` field: `proxy:CODE`, `client:CODE`, `upstream:CODE`, those
/// that apply, comma-separated; `-` for none.
fn closes(line: &mut String, end: &TunnelEnd, frames: Option<&FrameStats>) {
    let start = line.len();
    if let TunnelEnd::Closed(frame) = end {
        let _ = write!(line, "proxy:{}", code(frame));
    }
    for side in [Side::Client, Side::Upstream] {
        if let Some(frame) = frames.and_then(|f| f.close(side)) {
            if line.len() > start {
                line.push(',');
            }
            let _ = write!(line, "{side}:{}", code(frame));
        }
    }
    if line.len() == start {
        line.push('-');
    }
}

/// RFC 6455 §7.1.5: a Close without a code is reported as 1005.
fn code(frame: &CloseFrame) -> u16 {
    frame.code().unwrap_or(1005)
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC, whole seconds as nginx's `$time_iso8601`
/// (which prints local time with an offset instead).
fn rfc3339(now: SystemTime) -> humantime::Rfc3339Timestamp {
    // humantime panics on a time before the epoch and fails to print one
    // after 9999 (four-digit years): a clock that far off still gets a line.
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_seconds(now.clamp(UNIX_EPOCH, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let stamp = |t| rfc3339(t).to_string();
        assert_eq!(stamp(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(stamp(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(stamp(at(1_795_503_601)), "2026-11-24T07:00:01Z");
        // Whole seconds: the fraction is dropped, not rounded.
        assert_eq!(
            stamp(at(1_795_503_601) + Duration::from_millis(999)),
            "2026-11-24T07:00:01Z"
        );
        // A clock off the printable range is clamped, not a panic.
        assert_eq!(
            stamp(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(stamp(at(300_000_000_000)), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn a_rejected_connection_has_dashes_for_what_it_lacks() {
        let report = ConnectionReport::default();
        let line = format_line(UNIX_EPOCH, "127.0.0.1:5000".parse().unwrap(), &report);
        assert_eq!(
            line,
            "1970-01-01T00:00:00Z client=127.0.0.1:5000 route=- upstream=- status=- outcome=- \
             requests=0 from_client=0 from_upstream=0 duration=0.000s end=- close=-\n"
        );
    }

    fn close_field(end: &TunnelEnd, frames: Option<&FrameStats>) -> String {
        let mut line = String::new();
        closes(&mut line, end, frames);
        line
    }

    #[test]
    fn close_field_names_who_sent_a_close_and_its_code() {
        let frame = |code| CloseFrame::new(code, "").unwrap();
        assert_eq!(close_field(&TunnelEnd::ClientEof, None), "-");
        let mut frames = FrameStats::default();
        assert_eq!(close_field(&TunnelEnd::ClientEof, Some(&frames)), "-");
        frames.client_close = Some(frame(1000));
        assert_eq!(
            close_field(&TunnelEnd::UpstreamEof, Some(&frames)),
            "client:1000"
        );
        frames.upstream_close = Some(frame(1000));
        assert_eq!(
            close_field(&TunnelEnd::UpstreamEof, Some(&frames)),
            "client:1000,upstream:1000"
        );
        let mut frames = FrameStats::default();
        frames.upstream_close = Some(frame(1011));
        assert_eq!(
            close_field(&TunnelEnd::ClientEof, Some(&frames)),
            "upstream:1011"
        );
        frames.client_close = Some(CloseFrame::empty());
        assert_eq!(
            close_field(&TunnelEnd::Closed(frame(1001)), Some(&frames)),
            "proxy:1001,client:1005,upstream:1011"
        );
        assert_eq!(
            close_field(&TunnelEnd::Closed(frame(1001)), None),
            "proxy:1001"
        );
    }

    #[test]
    fn end_names_the_timeout_and_its_side() {
        let timeout = |t| end(&TunnelEnd::Timeout(t));
        assert_eq!(
            timeout(Timeout::Ping(Side::Upstream)),
            "ping-timeout:upstream"
        );
        assert_eq!(timeout(Timeout::Ping(Side::Client)), "ping-timeout:client");
        assert_eq!(timeout(Timeout::Read(Side::Upstream)), "read-timeout");
        assert_eq!(
            end(&TunnelEnd::Closed(CloseFrame::new(1001, "").unwrap())),
            "proxy-closed"
        );
    }
}
