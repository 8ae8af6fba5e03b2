//! Freed heap given back to the kernel when connections go idle.
//!
//! glibc's malloc hands memory back only from the top of a heap (`M_TRIM_THRESHOLD`). The
//! buffers that thousands of keep-alive connections used for a request each, freed when they
//! parked (`request::framing::PARK_AFTER`), lie between live allocations, so without a trim the
//! process keeps its high-water mark: benches/idle.py counted 4.50 KiB per idle HTTP/1.1
//! connection after a request at 4,000 connections, 3.80 with the trim (2.10 before any request).
//! `malloc_trim(0)` returns the free pages inside the heaps as well (glibc >= 2.8).
//!
//! When: at most once a second, and only when the number of parked connections grew by at least
//! [`GREW_BY`] since the last look. A steady load parks and wakes connections in balance and
//! never pays for a trim; a crowd that goes quiet pays once. The trim runs on the blocking pool,
//! since on a large heap it takes a while and holds the arena locks while it walks them.

use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;

/// Connections newly parked since the last look that make a trim worth it (64 connections' worth
/// of request buffers is about half a MiB).
const GREW_BY: i64 = 64;
const EVERY: Duration = Duration::from_secs(1);

/// Starts the trimmer; `None` where the allocator is not glibc's.
pub(super) fn trimmer(parked: Gauge) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = parked.get();
        loop {
            tick.tick().await;
            let now = parked.get();
            if now - last >= GREW_BY {
                let _ = tokio::task::spawn_blocking(trim).await;
            }
            last = now;
        }
    }))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena it walks);
    // it only releases pages malloc holds free.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::trace!(released, "malloc_trim");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
