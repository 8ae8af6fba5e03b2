//! Which connection worker a thread is, for state kept per worker (idle upstream connections,
//! HTTP/2 upstream connections): `server` starts the workers; what they run asks here.

use std::cell::Cell;

thread_local! {
    /// The worker this thread is (0 on any other thread).
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is: 0 to `count - 1` on a worker, 0 elsewhere.
pub(crate) fn shard() -> usize {
    SHARD.get()
}

/// Marks the calling thread as worker `i`.
pub(crate) fn become_shard(i: usize) {
    SHARD.set(i);
}

/// How many workers a config asks for: `server.worker_threads`, or one per CPU the process may
/// use (`available_parallelism` follows the affinity mask and cgroup quotas).
pub fn count(worker_threads: Option<usize>) -> usize {
    worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    })
}
