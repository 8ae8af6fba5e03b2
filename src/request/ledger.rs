//! What each client connection's service and its transport share: how many requests were
//! handed over and answered (the HTTP/1 header timer and framing verdicts key on these), and on
//! HTTP/2 which response bodies wait on the client's window (`send_timeout`). [`Answered`]
//! wraps each response body to report its end.

use prometheus_client::metrics::gauge::Gauge;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

/// What the wrapper and the connection's service share.
#[derive(Debug)]
struct Shared {
    /// Index of the first ambiguous request head; `usize::MAX` while there is none.
    ambiguous_from: AtomicUsize,
    /// Requests hyper has handed to the service.
    started: AtomicUsize,
    /// Responses hyper has taken in full (their bodies dropped).
    answered: AtomicUsize,
    /// A 101 went out: the connection no longer carries HTTP/1 heads.
    upgraded: AtomicBool,
    /// HTTP/1: the connection has idled long enough to give hyper's buffers back
    /// ([`crate::request::framing::Guarded`] sets it, `server::conn` parks the connection).
    park: AtomicBool,
    /// HTTP/2 only: the response bodies in flight, for [`ConnLedger::client_stalled`].
    sends: Option<Sends>,
}

/// List length at which ended bodies are swept out as a new one is added.
const SWEEP_AT: usize = 512;

/// Each HTTP/2 response body in flight notes since when it has waited for the client to take
/// what it gave (in ms after `epoch`, plus one; 0 while it waits on the upstream instead).
#[derive(Debug)]
struct Sends {
    epoch: std::time::Instant,
    bodies: Mutex<Vec<Weak<AtomicU64>>>,
    /// The connection has carried its last request (`max_requests_per_connection`,
    /// `max_connection_age`): GOAWAY.
    close: tokio::sync::Notify,
}

impl Sends {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// The service's side of one connection's ledger: requests handed over and answered, framing
/// verdicts by request index, and (HTTP/2) response bodies waiting on the client.
#[derive(Debug, Clone)]
pub struct ConnLedger(Arc<Shared>);

impl Default for ConnLedger {
    fn default() -> Self {
        ConnLedger::new(None)
    }
}

impl ConnLedger {
    fn new(sends: Option<Sends>) -> ConnLedger {
        ConnLedger(Arc::new(Shared {
            ambiguous_from: AtomicUsize::new(usize::MAX),
            started: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            park: AtomicBool::new(false),
            sends,
        }))
    }

    /// For an HTTP/2 connection: counts requests and responses as on HTTP/1 (nothing sets its
    /// framing verdict, so it never refuses one), and follows its response bodies for
    /// [`ConnLedger::client_stalled`].
    pub fn for_h2() -> ConnLedger {
        ConnLedger::new(Some(Sends {
            epoch: std::time::Instant::now(),
            bodies: Mutex::new(Vec::new()),
            close: tokio::sync::Notify::new(),
        }))
    }

    /// HTTP/2: the connection has started its last request; [`ConnLedger::close_wanted`] ends.
    pub fn want_close(&self) {
        if let Some(sends) = &self.0.sends {
            sends.close.notify_one();
        }
    }

    /// HTTP/2: ends once [`ConnLedger::want_close`] has been called (at once if it was
    /// before); on HTTP/1, never.
    pub async fn close_wanted(&self) {
        match &self.0.sends {
            Some(sends) => sends.close.notified().await,
            None => std::future::pending().await,
        }
    }

    /// HTTP/2: has some response body waited longer than `limit` for the client to take data
    /// (flow control held shut)? HTTP/1 bounds this in its write path instead (`send_timeout`).
    pub fn client_stalled(&self, limit: Duration) -> bool {
        let Some(sends) = &self.0.sends else {
            return false;
        };
        let now = sends.now();
        let limit = limit.as_millis() as u64;
        let mut bodies = sends
            .bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bodies.retain(|b| b.strong_count() > 0);
        bodies.iter().filter_map(Weak::upgrade).any(|since| {
            let since = since.load(Ordering::Acquire);
            since != 0 && now.saturating_sub(since) > limit
        })
    }

    /// A request was handed to the service; returns its index (0-based, in connection order).
    pub fn request_started(&self) -> usize {
        self.0.started.fetch_add(1, Ordering::AcqRel)
    }
    /// A response was taken in full by hyper.
    fn response_done(&self) {
        self.0.answered.fetch_add(1, Ordering::AcqRel);
    }
    /// Requests handed to the service so far.
    pub fn started(&self) -> usize {
        self.0.started.load(Ordering::Acquire)
    }
    /// Is a request in flight (handed over, its response not yet taken in full)?
    pub fn busy(&self) -> bool {
        self.0.started.load(Ordering::Acquire) != self.0.answered.load(Ordering::Acquire)
    }
    /// A 101 went out: what follows on the connection is not HTTP/1.
    pub fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::Release);
    }
    /// Is the request with this index ambiguous, or after one?
    pub fn refuses(&self, request_index: usize) -> bool {
        request_index >= self.0.ambiguous_from.load(Ordering::Acquire)
    }
    /// Was any request head on this connection ambiguous?
    pub fn ambiguous(&self) -> bool {
        self.first_ambiguous().is_some()
    }
    /// The index of the first ambiguous request head, if any.
    pub(crate) fn first_ambiguous(&self) -> Option<usize> {
        let first = self.0.ambiguous_from.load(Ordering::Acquire);
        (first != usize::MAX).then_some(first)
    }
    /// The connection is idle, and hyper may be set aside until the client sends again.
    pub(crate) fn want_park(&self) {
        self.0.park.store(true, Ordering::Release);
    }
    /// Was parking asked for since the last call?
    pub(crate) fn take_park(&self) -> bool {
        // A load first: this runs on every pending poll of a busy connection, and a swap is a
        // locked instruction even when there is nothing to take.
        self.0.park.load(Ordering::Acquire) && self.0.park.swap(false, Ordering::AcqRel)
    }
    pub(crate) fn is_upgraded(&self) -> bool {
        self.0.upgraded.load(Ordering::Acquire)
    }
    pub(crate) fn flag(&self, head_index: usize) {
        self.0
            .ambiguous_from
            .fetch_min(head_index, Ordering::AcqRel);
    }
    /// When every request so far has been answered, the connection waits for the next head:
    /// the number of responses so far, which names this wait.
    pub(crate) fn waiting_for_head(&self) -> Option<usize> {
        let answered = self.0.answered.load(Ordering::Acquire);
        (!self.is_upgraded() && self.0.started.load(Ordering::Acquire) == answered)
            .then_some(answered)
    }
}

/// A response body that tells the [`ConnLedger`] when hyper is done with it. hyper drops a
/// response body once its last frame is queued (or the connection ends), which is also when
/// it starts reading the next request head.
pub struct Answered<B> {
    inner: B,
    ledger: Option<ConnLedger>,
    /// HTTP/2: this body's entry in the connection's [`Sends`].
    waiting: Option<Arc<AtomicU64>>,
    /// Held until hyper is done with the body: the request's `max_requests_in_flight` place.
    _place: Option<Place>,
}

impl<B> Answered<B> {
    /// Wraps a response body; with no ledger it only passes frames through.
    pub fn new(inner: B, ledger: Option<ConnLedger>) -> Self {
        let waiting = ledger
            .as_ref()
            .and_then(|w| w.0.sends.as_ref())
            .map(|sends| {
                // Until hyper first asks for data, the body waits on the client's window.
                let since = Arc::new(AtomicU64::new(sends.now()));
                let mut bodies = sends
                    .bodies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Ended bodies leave dead entries; sweep them here too, not only at the
                // connection's next tick, so a busy connection's list stays near its live
                // streams (at most 256 on the server's h2 settings).
                if bodies.len() >= SWEEP_AT {
                    bodies.retain(|b| b.strong_count() > 0);
                }
                bodies.push(Arc::downgrade(&since));
                since
            });
        Answered {
            inner,
            ledger,
            waiting,
            _place: None,
        }
    }

    /// Keeps the request's place in flight (if it got one) until the body is done with.
    pub fn holding(mut self, place: Option<Place>) -> Self {
        self._place = place;
        self
    }
}

impl<B> Drop for Answered<B> {
    fn drop(&mut self) {
        if let Some(w) = &self.ledger {
            w.response_done();
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Answered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(since), Some(sends)) = (
            &self.waiting,
            self.ledger.as_ref().and_then(|w| w.0.sends.as_ref()),
        ) {
            // A frame given: the next poll waits on the client. Pending: on the upstream.
            let now = match &polled {
                Poll::Ready(Some(Ok(_))) => sends.now(),
                _ => 0,
            };
            since.store(now, Ordering::Release);
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Requests in flight on a listener, bounded by `max_requests_in_flight`. The count is the
/// `bearward_requests_in_flight` gauge itself: taking a place is one atomic add (and a second
/// to give it back when the limit is reached), with no lock, so it costs the request path
/// next to nothing.
#[derive(Clone)]
pub struct InFlight {
    count: Gauge,
    max: i64,
}

impl InFlight {
    pub fn new(count: Gauge, max: usize) -> InFlight {
        InFlight {
            count,
            max: i64::try_from(max).unwrap_or(i64::MAX),
        }
    }

    /// A place, unless `max` requests hold one already.
    pub fn enter(&self) -> Option<Place> {
        if self.count.inc() >= self.max {
            self.count.dec();
            return None;
        }
        Some(Place(self.count.clone()))
    }
}

/// One request's place in flight, given back when dropped.
pub struct Place(Gauge);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.dec();
    }
}
