//! Idle keep-alive connections a server closes when it runs out of
//! connection slots, oldest first (nginx `ngx_drain_connections`, which
//! reuses idle keep-alive connections when `worker_connections` runs
//! short): HTTP/1.1 ones between requests, HTTP/2 ones while no stream is
//! open on them.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The idle keep-alive connections of one server.
#[derive(Debug, Default)]
pub(crate) struct Reclaim {
    /// Connections waiting for their next request.
    idle: AtomicUsize,
    /// Wakes idle connections to close; its waiters are woken in the order
    /// they began waiting, so the longest idle goes first.
    close: Notify,
    /// Wakes a server waiting for a slot when a connection goes idle.
    went_idle: Notify,
}

impl Reclaim {
    /// Asks the longest idle connection to close. False when none idles.
    pub(crate) fn close_oldest(&self) -> bool {
        if self.idle.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.close.notify_one();
        true
    }

    /// Resolves when a connection goes idle after it was enabled or first
    /// polled.
    pub(crate) fn went_idle(&self) -> Notified<'_> {
        self.went_idle.notified()
    }

    /// Counts the caller as idle until the future is dropped; resolves when
    /// the server asks it to close.
    pub(crate) async fn idle(&self) {
        let _idle = Idle::new(self);
        self.went_idle.notify_waiters();
        self.close.notified().await;
    }
}

/// One idle connection, counted out when dropped.
struct Idle<'a>(&'a Reclaim);

impl<'a> Idle<'a> {
    fn new(reclaim: &'a Reclaim) -> Self {
        reclaim.idle.fetch_add(1, Ordering::AcqRel);
        Self(reclaim)
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_longest_idle_connection_closes_first() {
        let reclaim = Arc::new(Reclaim::default());
        assert!(!reclaim.close_oldest(), "nobody idles yet");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (r, tx) = (reclaim.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                r.idle().await;
                let _ = tx.send(i);
            }));
            // Each waits before the next begins to.
            while reclaim.idle.load(Ordering::Acquire) < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert!(reclaim.close_oldest());
        assert_eq!(rx.recv().await, Some(0));
        assert!(reclaim.close_oldest());
        assert_eq!(rx.recv().await, Some(1));
        for task in tasks.drain(..1) {
            let _ = task.await;
        }
        assert_eq!(reclaim.idle.load(Ordering::Acquire), 1);
    }
}
