//! Connection workers: one thread per CPU (`server.worker_threads`), each running tokio's
//! current-thread runtime, and every accepted connection handed to one of them for its whole
//! life, as nginx's worker processes and Envoy's worker threads hold theirs. The listeners,
//! the admin endpoints and the background work (key refresh, reloads, health checks) stay on
//! the main thread.
//!
//! Why not tokio's work-stealing runtime: on a keep-alive connection its scheduler's
//! bookkeeping (each worker's poll-time average, a `powf` and clock reads at every park, the
//! searching and waking of idle workers) cost 1.5k instructions a request more than the
//! current-thread runtime (`.ci/budget.py`, cached RS256: 31.4k on two work-stealing workers,
//! 29.9k on one current-thread runtime), and a connection's task moved between cores.
//! What a worker opens (upstream connections, timers) is driven by its own reactor, and
//! upstream connections are pooled per worker ([`crate::worker::shard`]), so no request wakes
//! another thread.
//!
//! With one worker (a sidecar pinned to one CPU) there are no worker threads: the main
//! runtime, itself current-thread, serves the connections.

use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Work sent to a worker: runs on its thread, inside its runtime.
type Job = Box<dyn FnOnce() + Send>;

struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections it serves now (`bearward_worker_connections`): a new one goes to the lane
    /// with the fewest.
    open: Gauge,
}

/// The workers, or none (connections run on the caller's runtime).
pub(super) struct Workers {
    lanes: Box<[Lane]>,
    /// Where the search for the least busy lane starts, so ties rotate.
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers; none for one (the caller's runtime serves). The threads end
    /// when the `Workers` is dropped, and with them whatever their connections still do.
    pub(super) fn start(count: usize, metrics: &crate::telemetry::Metrics) -> io::Result<Workers> {
        let mut lanes = Vec::new();
        if count > 1 {
            for i in 0..count {
                // No signal driver: signals are the main thread's, and a worker would look
                // for them at every park.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()?;
                // Unbounded, yet bounded: each job is an accepted connection holding one of
                // `max_connections` slots.
                let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || {
                        crate::worker::become_shard(i);
                        runtime.block_on(async move {
                            while let Some(job) = rx.recv().await {
                                // A job that panicked must not end the worker: its lane would
                                // then look the least busy and draw every new connection.
                                let taken =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                                if taken.is_err() {
                                    tracing::error!(
                                        worker = i,
                                        "a connection could not be started"
                                    );
                                }
                            }
                        });
                    })?;
                lanes.push(Lane {
                    jobs,
                    open: metrics.worker_connections(i),
                });
            }
        }
        Ok(Workers {
            lanes: lanes.into_boxed_slice(),
            next: AtomicUsize::new(0),
        })
    }

    /// Serves an accepted connection: `serve` runs on the least busy worker (its socket moved
    /// to that worker's reactor), or on the caller's runtime when there are no workers. The
    /// connection's future holds the [`Seat`] it is given until it ends. (It is given rather
    /// than wrapped around the future: an `async` block that holds a future and awaits it keeps
    /// room for it twice, 1.7 KiB more for every idle connection, benches/idle.py.)
    pub(super) fn serve<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream, Seat) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.lanes.is_empty() {
            tokio::spawn(serve(stream, Seat(None)));
            return;
        }
        let lane = self.least_busy();
        // Out of the accepting reactor and into the worker's: a socket registered with one
        // runtime and polled on another would have each of its wake-ups cross threads.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "connection lost before it reached a worker");
                return;
            }
        };
        let open = lane.open.clone();
        open.inc();
        let job: Job = Box::new(move || {
            let seat = Seat(Some(open));
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    tokio::spawn(serve(stream, seat));
                }
                Err(e) => tracing::warn!(error = %e, "a worker could not take a connection"),
            }
        });
        // A worker's thread ends only with the `Workers`: the send cannot fail while it lives.
        let _ = lane.jobs.send(job);
    }

    fn least_busy(&self) -> &Lane {
        let n = self.lanes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = &self.lanes[start];
        let mut least = best.open.get();
        for k in 1..n {
            if least == 0 {
                break;
            }
            let lane = &self.lanes[(start + k) % n];
            let open = lane.open.get();
            if open < least {
                (best, least) = (lane, open);
            }
        }
        best
    }
}

/// A connection's place on its worker, counted until it is dropped with the connection.
pub(super) struct Seat(Option<Gauge>);

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(open) = &self.0 {
            open.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::shard;

    #[tokio::test]
    async fn connections_go_to_the_least_busy_worker_and_run_on_its_thread() {
        let metrics = crate::telemetry::Metrics::new();
        let workers = Workers::start(3, &metrics).unwrap();
        assert_eq!(workers.lanes.len(), 3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for i in 0..6 {
            clients.push(Some(TcpStream::connect(addr).await.unwrap()));
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            workers.serve(stream, move |mut stream, seat| async move {
                use tokio::io::AsyncReadExt;
                let _seat = seat;
                let name = std::thread::current().name().map(String::from);
                let _ = tx.send((i, shard(), name));
                // Held open until the client closes.
                let _ = stream.read(&mut [0u8; 1]).await;
            });
        }
        let mut on = [0; 6];
        for _ in 0..6 {
            let (i, shard, name) = rx.recv().await.unwrap();
            assert_eq!(name, Some(format!("worker-{shard}")));
            on[i] = shard;
        }
        let mut per = [0; 3];
        for shard in on {
            per[shard] += 1;
        }
        assert_eq!(per, [2, 2, 2], "six connections over three workers");
        assert_eq!(metrics.worker_connections(1).get(), 2);
        // Worker 1's two end: the next connections go to it.
        for (i, shard) in on.iter().enumerate() {
            if *shard == 1 {
                clients[i] = None;
            }
        }
        while workers.lanes[1].open.get() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for i in 0..2 {
            clients.push(Some(TcpStream::connect(addr).await.unwrap()));
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            workers.serve(stream, move |_, _| async move {
                let _ = tx.send((i, shard(), None));
            });
            assert_eq!(rx.recv().await.unwrap().1, 1);
        }
        assert_eq!(shard(), 0, "the test's own thread is no worker");
    }
}
