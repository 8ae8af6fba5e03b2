//! Timers kept across many uses instead of made per use.
//!
//! A fresh tokio timer inserts a wheel entry under the timer lock when first polled, and when
//! its deadline falls before the driver's next wake it also wakes the driver through its
//! eventfd: a system call. A timer that is kept and only ever moved later is updated in place
//! with an atomic store (tokio re-files it only if it comes due). Every per-request or
//! per-frame bound in bearward is built on [`rearm`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Sets `timer` to go off `after` from now, making it the first time.
pub(crate) fn rearm(timer: &mut Option<Pin<Box<Sleep>>>, after: Duration) {
    rearm_at(timer, tokio::time::Instant::now() + after);
}

/// Sets `timer` to go off at `deadline`, making it the first time.
pub(crate) fn rearm_at(timer: &mut Option<Pin<Box<Sleep>>>, deadline: tokio::time::Instant) {
    match timer {
        Some(t) => t.as_mut().reset(deadline),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
    }
}

/// A bound on how long something may go without progress: the clock starts when a poll first
/// comes back pending and stops at the next one that makes progress (nginx's
/// `client_body_timeout` and `send_timeout` count the same way). Time spent not asking, for
/// instance while the other side of a proxy is slow, does not count.
pub(crate) struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl Stall {
    /// A bound of `limit`; no timer is made until something first stalls.
    pub(crate) fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            timer: None,
            waiting: false,
        }
    }

    /// Takes the outcome of one poll. `true` when it was pending and has now been pending for
    /// longer than the limit; the task is woken when that happens.
    pub(crate) fn expired<T>(&mut self, cx: &mut Context<'_>, polled: &Poll<T>) -> bool {
        if polled.is_ready() {
            self.waiting = false;
            return false;
        }
        if !self.waiting {
            self.waiting = true;
            rearm(&mut self.timer, self.limit);
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn only_time_spent_pending_counts() {
        let mut stall = Stall::new(Duration::from_millis(100));
        let pending = Poll::<()>::Pending;
        // Time before the first pending poll does not count.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!poll_fn(|cx| Poll::Ready(stall.expired(cx, &pending))).await);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!poll_fn(|cx| Poll::Ready(stall.expired(cx, &pending))).await);
        // Progress stops the clock; the next wait starts from zero.
        assert!(!poll_fn(|cx| Poll::Ready(stall.expired(cx, &Poll::Ready(())))).await);
        assert!(!poll_fn(|cx| Poll::Ready(stall.expired(cx, &pending))).await);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!poll_fn(|cx| Poll::Ready(stall.expired(cx, &pending))).await);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(poll_fn(|cx| Poll::Ready(stall.expired(cx, &pending))).await);
    }
}
