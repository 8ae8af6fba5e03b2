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

/// A number below `n` (at least 1), from a per-thread xorshift: for choices that need only be
/// spread (`least_request`'s two, a connection age's jitter), not unpredictable.
pub(crate) fn random_below(n: usize) -> usize {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::hash::RandomState::new().hash_one(0u8) | 1);
    }
    let x = STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    usize::try_from(((x >> 32) * n as u64) >> 32).unwrap_or(0)
}

/// Between 90% and 100% of `age`, at random: connections made together (a pool filled by a
/// burst, clients that connected as a replica started) do not all reach their age at once and
/// reconnect in one wave (gRPC jitters `MAX_CONNECTION_AGE` by 10% the same way).
pub(crate) fn jittered(age: Duration) -> Duration {
    let cut = u32::try_from(random_below(1001)).unwrap_or(0);
    age - age / 10 * cut / 1000
}

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

    /// Ages are cut by up to a tenth, spread over that tenth, never lengthened.
    #[test]
    fn jittered_ages_spread_over_the_last_tenth() {
        let age = Duration::from_secs(10);
        let got: Vec<Duration> = (0..1000).map(|_| jittered(age)).collect();
        assert!(got.iter().all(|&d| d >= Duration::from_secs(9) && d <= age));
        let early = got
            .iter()
            .filter(|&&d| d < Duration::from_millis(9500))
            .count();
        assert!(
            (300..700).contains(&early),
            "{early} of 1000 in the first half"
        );
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
