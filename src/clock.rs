//! Durations a caller chose, made safe to add to an instant: a timeout may
//! be as long as the caller likes (`Duration::MAX` for "never"), and
//! `Instant + Duration` panics past the clock's range.

use std::time::Duration;

/// What tokio itself takes for "never": about thirty years.
pub(crate) const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `d`, at most [`FAR`]: added to any instant of this process, it cannot
/// overflow.
pub(crate) fn capped(d: Duration) -> Duration {
    d.min(FAR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_duration_adds_to_now() {
        let now = std::time::Instant::now();
        assert!(now.checked_add(Duration::MAX).is_none());
        assert!(now + capped(Duration::MAX) > now);
        assert_eq!(capped(Duration::from_secs(5)), Duration::from_secs(5));
    }
}
