//! A tunnel's one timer: the sans-IO [`Deadlines`] and a tokio `Sleep`
//! created on first use, boxed so that an untimed tunnel carries neither.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::deadline::Deadlines;
use super::transfer::NEVER;

pin_project! {
    /// A timer created on first use, in place: `tokio::time::Sleep` needs
    /// the runtime, which `tunnel` may be called without.
    #[project = LazySleepProj]
    #[derive(Debug)]
    pub(super) enum LazySleep {
        Unarmed,
        Armed {
            #[pin]
            sleep: Sleep,
        },
    }
}

impl LazySleep {
    /// The armed timer, set to fire no later than `at`.
    pub(super) fn arm(mut self: Pin<&mut Self>, at: Instant) -> Option<Pin<&mut Sleep>> {
        if let LazySleepProj::Unarmed = self.as_mut().project() {
            self.as_mut().set(LazySleep::Armed {
                sleep: tokio::time::sleep_until(at),
            });
        }
        match self.project() {
            LazySleepProj::Armed { mut sleep } => {
                if sleep.deadline() > at {
                    sleep.as_mut().reset(at);
                }
                Some(sleep)
            }
            // Armed just above; there is no way back to `Unarmed`.
            LazySleepProj::Unarmed => None,
        }
    }
}

pin_project! {
    /// Everything only timeouts need, boxed so that an untimed tunnel does
    /// not carry it and a timed one keeps the task small: the sans-IO
    /// deadlines and the one timer that waits for the next of them.
    #[project = TimersProj]
    #[derive(Debug)]
    pub(super) struct Timers {
        pub(super) deadlines: Deadlines,
        // One timer for every timeout (see `poll_timers`).
        #[pin]
        pub(super) sleep: LazySleep,
    }
}

/// Whether the final shutdown of both sides should stop waiting: at once
/// without a send timeout (the streams are dropped, hence closed, right
/// after), else once the send timeout has passed, so that a peer that
/// stopped reading cannot hold the tunnel open.
pub(super) fn close_deadline_passed(
    cx: &mut Context<'_>,
    timers: Option<&mut Pin<Box<Timers>>>,
) -> bool {
    let Some(timers) = timers else { return true };
    let t = timers.as_mut().project();
    let send = t.deadlines.timeouts.send;
    if send == NEVER {
        return true;
    }
    let limit = Duration::from_nanos(send);
    let Some(mut sleep) = Instant::now()
        .checked_add(limit)
        .and_then(|at| t.sleep.arm(at))
    else {
        return true;
    };
    if !t.deadlines.close_bounded {
        t.deadlines.close_bounded = true;
        if let Some(at) = Instant::now().checked_add(limit) {
            sleep.as_mut().reset(at);
        }
    }
    sleep.poll(cx).is_ready()
}

/// The deadlines of a tunnel that had no timer until now: a closing
/// handshake needs one for its linger.
pub(super) fn deadlines_or_off(timers: &mut Option<Pin<Box<Timers>>>) -> &mut Deadlines {
    let timers = timers.get_or_insert_with(|| {
        Box::pin(Timers {
            deadlines: Deadlines::off(),
            sleep: LazySleep::Unarmed,
        })
    });
    timers.as_mut().project().deadlines
}
