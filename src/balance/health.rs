//! Active health checks, sans-IO: the rise/fall state machine of HAProxy's
//! `check inter rise fall`, fed results and the time by the caller.
//!
//! [`HealthState`] decides *when* each upstream is checked and *what* a result
//! means; it never connects and never reads a clock. The async driver,
//! [`proxy::HealthChecker`](crate::proxy::HealthChecker), runs the checks
//! and applies each [`Transition`] with
//! [`UpstreamSet::set_check_down`](super::UpstreamSet::set_check_down).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::UpstreamId;
use crate::clock::capped;

/// HAProxy's default `inter`: 2 s between checks.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// HAProxy's default `rise`: 2 consecutive successes mark a down server up.
pub const DEFAULT_RISE: u32 = 2;
/// HAProxy's default `fall`: 3 consecutive failures mark an up server down.
pub const DEFAULT_FALL: u32 = 3;

/// A change of an upstream's checked state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// `fall` consecutive failures: take it out of rotation.
    Down,
    /// `rise` consecutive successes: put it back.
    Up,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    up: bool,
    /// Consecutive results against the current state: failures while up,
    /// successes while down.
    streak: u32,
    due: Instant,
    in_flight: bool,
}

/// The rise/fall state of every checked upstream and when each is due.
///
/// Upstreams start up, as HAProxy servers do with checks enabled, and need
/// `fall` failures in a row to go down (HAProxy's default `init-state up`
/// drops a server at its first failure instead; here a freshly added
/// upstream gets the same benefit of the doubt as a running one). While up,
/// any success resets the failure count; while down, any failure resets the
/// success count: HAProxy's `check->health` counter, which amounts to
/// "consecutive" on each side.
///
/// The loop a driver runs (quinn's `poll_timeout` / `handle_timeout` shape):
///
/// ```
/// use std::time::{Duration, Instant};
/// use wsproxy::balance::health::{HealthState, Transition};
/// use wsproxy::balance::{Upstream, UpstreamSet};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let set = UpstreamSet::new();
/// let id = set.add(Upstream::new("127.0.0.1:9001".parse::<std::net::SocketAddr>()?));
/// // inter 2s rise 2 fall 3
/// let mut state = HealthState::new(Duration::from_secs(2), 2, 3);
/// let mut now = Instant::now();
/// state.sync(set.snapshot().iter().map(|p| p.id()), now);
///
/// let mut changes = Vec::new();
/// for _ in 0..3 {
///     let due = state.poll_due(now).ok_or("a check is due")?;
///     // ... connect to the upstream: it refused ...
///     if let Some(t) = state.handle_result(due, false, now) {
///         changes.push(t);
///     }
///     now = state.poll_timeout().ok_or("next check scheduled")?;
/// }
/// assert_eq!(changes, [Transition::Down]);
/// assert_eq!(state.is_up(id), Some(false));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthState {
    interval: Duration,
    rise: u32,
    fall: u32,
    entries: BTreeMap<UpstreamId, Entry>,
}

impl HealthState {
    /// Checks every `interval` (HAProxy `inter`); `rise` successes in a row
    /// mark a down upstream up, `fall` failures in a row mark an up one
    /// down. Zero thresholds are raised to one.
    pub fn new(interval: Duration, rise: u32, fall: u32) -> Self {
        Self {
            interval,
            rise: rise.max(1),
            fall: fall.max(1),
            entries: BTreeMap::new(),
        }
    }

    /// Brings the checked upstreams in line with `ids` (the current set):
    /// new ones start up and are due at `now`, ones no longer listed are
    /// forgotten (a result still in flight for them is then ignored).
    pub fn sync(&mut self, ids: impl IntoIterator<Item = UpstreamId>, now: Instant) {
        let mut seen: Vec<UpstreamId> = ids.into_iter().collect();
        seen.sort_unstable();
        self.entries.retain(|id, _| seen.binary_search(id).is_ok());
        for id in seen {
            self.entries.entry(id).or_insert(Entry {
                up: true,
                streak: 0,
                due: now,
                in_flight: false,
            });
        }
    }

    /// The next upstream whose check is due at `now` and not already
    /// running, marked as running: start its check, then report with
    /// [`handle_result`](Self::handle_result). `None` when nothing is due.
    pub fn poll_due(&mut self, now: Instant) -> Option<UpstreamId> {
        let (id, entry) = self
            .entries
            .iter_mut()
            .filter(|(_, e)| !e.in_flight && e.due <= now)
            .min_by_key(|(_, e)| e.due)?;
        entry.in_flight = true;
        Some(*id)
    }

    /// When the next check falls due (possibly already past), or `None`
    /// when every upstream's check is running or none is known.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.in_flight)
            .map(|e| e.due)
            .min()
    }

    /// Records the result of `id`'s check, finished at `now`, and schedules
    /// its next one `interval` later (HAProxy re-arms its check task after
    /// the check completes, so a slow upstream is not checked back to back).
    /// Returns the change of state, if this result made one. Unknown ids
    /// (removed since) are ignored.
    pub fn handle_result(&mut self, id: UpstreamId, ok: bool, now: Instant) -> Option<Transition> {
        let entry = self.entries.get_mut(&id)?;
        entry.in_flight = false;
        entry.due = now + capped(self.interval);
        if ok == entry.up {
            entry.streak = 0;
            return None;
        }
        entry.streak = entry.streak.saturating_add(1);
        let threshold = if entry.up { self.fall } else { self.rise };
        if entry.streak < threshold {
            return None;
        }
        entry.streak = 0;
        entry.up = ok;
        Some(if ok { Transition::Up } else { Transition::Down })
    }

    /// Records that `id`'s check, finished at `now`, proved nothing either
    /// way (the prober itself could not open a socket: out of file
    /// descriptors or ports) and schedules the next one `interval` later,
    /// its streak as it was.
    pub fn handle_inconclusive(&mut self, id: UpstreamId, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.in_flight = false;
            entry.due = now + capped(self.interval);
        }
    }

    /// Takes `id` as down without checking it, its streak reset: an upstream
    /// found marked down by an earlier run of the checks (one stopped
    /// without lifting its marks, or an aborted one) stays out until `rise`
    /// checks in a row pass, as if these checks had marked it. Returns
    /// whether its state changed (`false` for an unknown id or one already
    /// down).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use wsproxy::balance::health::{HealthState, Transition};
    /// use wsproxy::balance::{Upstream, UpstreamSet};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let set = UpstreamSet::new();
    /// let id = set.add(Upstream::new("127.0.0.1:9001".parse::<std::net::SocketAddr>()?));
    /// let mut state = HealthState::new(Duration::from_secs(2), 2, 3);
    /// let now = Instant::now();
    /// state.sync([id], now);
    /// assert!(state.mark_down(id));
    /// assert_eq!(state.is_up(id), Some(false));
    /// let due = state.poll_due(now).ok_or("due at once")?;
    /// assert_eq!(state.handle_result(due, true, now), None); // one pass of `rise` 2
    /// # Ok(())
    /// # }
    /// ```
    pub fn mark_down(&mut self, id: UpstreamId) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) if entry.up => {
                entry.up = false;
                entry.streak = 0;
                true
            }
            _ => false,
        }
    }

    /// Whether `id` is up by its checks; `None` for an unknown id.
    pub fn is_up(&self, id: UpstreamId) -> Option<bool> {
        self.entries.get(&id).map(|e| e.up)
    }

    /// The upstreams currently down by their checks.
    pub fn down(&self) -> impl Iterator<Item = UpstreamId> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| !e.up)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    const INTER: Duration = Duration::from_secs(2);

    /// Runs one check of `id` at its due time with result `ok`.
    fn check(s: &mut HealthState, id: UpstreamId, ok: bool) -> (Instant, Option<Transition>) {
        let now = s.poll_timeout().unwrap();
        assert_eq!(s.poll_due(now), Some(id));
        (now, s.handle_result(id, ok, now))
    }

    fn one(rise: u32, fall: u32) -> (HealthState, UpstreamId, Instant) {
        let (set, ids) = set_of(&[1]);
        let now = epoch();
        let mut s = HealthState::new(INTER, rise, fall);
        s.sync(set.snapshot().iter().map(|p| p.id()), now);
        (s, ids[0], now)
    }

    #[test]
    fn fall_failures_in_a_row_mark_down_and_rise_successes_mark_up() {
        let (mut s, id, t0) = one(2, 3);
        let results = [false, false, false, true, true, true];
        let got: Vec<_> = results.iter().map(|&ok| check(&mut s, id, ok).1).collect();
        use Transition::*;
        assert_eq!(got, [None, None, Some(Down), None, Some(Up), None]);
        // One check every `inter`, starting at once.
        assert_eq!(s.poll_timeout(), Some(t0 + INTER * 6));
    }

    #[test]
    fn a_success_resets_the_failure_streak_and_a_failure_the_success_streak() {
        let (mut s, id, _) = one(2, 3);
        for ok in [false, false, true, false, false] {
            assert_eq!(check(&mut s, id, ok).1, None);
        }
        assert_eq!(check(&mut s, id, false).1, Some(Transition::Down));
        for ok in [true, false, true] {
            assert_eq!(check(&mut s, id, ok).1, None);
        }
        assert_eq!(check(&mut s, id, true).1, Some(Transition::Up));
        assert_eq!(s.is_up(id), Some(true));
    }

    #[test]
    fn thresholds_of_one_flip_on_every_changed_result() {
        let (mut s, id, _) = one(1, 1);
        assert_eq!(check(&mut s, id, false).1, Some(Transition::Down));
        assert_eq!(check(&mut s, id, false).1, None);
        assert_eq!(check(&mut s, id, true).1, Some(Transition::Up));
        let (mut z, id, _) = one(0, 0);
        assert_eq!(check(&mut z, id, false).1, Some(Transition::Down));
    }

    #[test]
    fn a_running_check_is_not_due_again_and_next_is_after_its_end() {
        let (mut s, id, t0) = one(2, 3);
        assert_eq!(s.poll_due(t0), Some(id));
        assert_eq!(s.poll_due(t0 + INTER * 5), None);
        assert_eq!(s.poll_timeout(), None);
        let end = t0 + Duration::from_millis(700);
        s.handle_result(id, true, end);
        assert_eq!(s.poll_timeout(), Some(end + INTER));
        assert_eq!(s.poll_due(end + INTER - Duration::from_millis(1)), None);
    }

    #[test]
    fn sync_adds_due_now_and_forgets_removed_upstreams() {
        let (set, ids) = set_of(&[1, 1]);
        let t0 = epoch();
        let mut s = HealthState::new(INTER, 2, 3);
        s.sync([ids[0]], t0);
        assert_eq!(s.poll_due(t0), Some(ids[0]));
        s.handle_result(ids[0], false, t0);
        let t1 = t0 + Duration::from_secs(1);
        s.sync(set.snapshot().iter().map(|p| p.id()), t1);
        // The new one is due at once; the known one keeps its schedule.
        assert_eq!(s.poll_due(t1), Some(ids[1]));
        assert_eq!(s.poll_due(t1), None);
        s.sync([ids[1]], t1);
        assert_eq!(s.is_up(ids[0]), None);
        assert_eq!(s.handle_result(ids[0], false, t1), None);
        assert_eq!(s.handle_result(ids[1], false, t1), None);
        assert_eq!(s.down().count(), 0);
    }

    #[test]
    fn an_upstream_marked_down_needs_rise_passes_to_come_back() {
        let (mut s, id, _) = one(2, 3);
        assert!(s.mark_down(id));
        assert!(!s.mark_down(id));
        assert_eq!(s.down().collect::<Vec<_>>(), [id]);
        assert_eq!(check(&mut s, id, true).1, None);
        assert_eq!(check(&mut s, id, false).1, None);
        assert_eq!(check(&mut s, id, true).1, None);
        assert_eq!(check(&mut s, id, true).1, Some(Transition::Up));
        assert!(!HealthState::new(INTER, 2, 3).mark_down(id));
    }

    #[test]
    fn the_earliest_due_upstream_goes_first() {
        let (set, ids) = set_of(&[1, 1, 1]);
        let t0 = epoch();
        let mut s = HealthState::new(INTER, 2, 3);
        s.sync(set.snapshot().iter().map(|p| p.id()), t0);
        let first: Vec<_> = std::iter::from_fn(|| s.poll_due(t0)).collect();
        assert_eq!(first, ids);
        s.handle_result(ids[2], true, t0);
        s.handle_result(ids[0], true, t0 + Duration::from_secs(1));
        s.handle_result(ids[1], true, t0 + Duration::from_millis(500));
        let later = t0 + INTER * 2;
        let order: Vec<_> = std::iter::from_fn(|| s.poll_due(later)).collect();
        assert_eq!(order, [ids[2], ids[1], ids[0]]);
    }
}
