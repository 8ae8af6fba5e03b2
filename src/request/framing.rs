//! A watcher on the socket of each HTTP/1 connection, for three jobs hyper does not do for
//! bearward (or does at a cost):
//!
//! - **Ambiguous framing** (request smuggling): `Content-Length` together with
//!   `Transfer-Encoding`, or more than one `Content-Length` line. hyper copes with both safely
//!   (chunked wins, the connection closes), but it drops the `Content-Length` before the service
//!   sees the request, so the service cannot refuse what it cannot see. The wrapper follows the
//!   request framing itself (heads, fixed-length and chunked bodies) on the bytes hyper reads,
//!   and records the index of the first ambiguous request head on the connection. The service
//!   counts requests as hyper hands them over (HTTP/1 requests on one connection come in order),
//!   so the request with that index, and any after it, is answered 400 and the connection
//!   closes, while clean requests before it are served. When the stream stops being HTTP/1 (a
//!   101 went out) or the wrapper cannot follow it (a head it cannot parse), it stops
//!   following; hyper's own parser still applies. An `Upgrade` header or a `CONNECT` alone
//!   does not stop it: bearward refuses `CONNECT` (400), and an upgrade that does not happen
//!   leaves the connection HTTP/1, so the check stays on for the requests after them.
//! - **`header_read_timeout`** (slowloris): from the moment the connection waits for a request
//!   head (it opened, or the previous response was handed to hyper in full) until hyper hands
//!   the next request to the service. A read while that time has run out fails, and hyper
//!   closes the connection. hyper has the same timer, but it arms a new boxed tokio timer for
//!   every request head, and registering it wakes the runtime's driver through its eventfd
//!   about once a request under load: one `write` system call per request, measured with
//!   `strace -c`. This one is a single timer per connection whose deadline only moves forward,
//!   which tokio does with an atomic store. It keys on the service's request and response
//!   counts, not on the framing follower, so a client cannot turn it off by making the
//!   follower give up.
//! - **`send_timeout`**: a write that cannot proceed (the client reads nothing) starts a timer;
//!   one that proceeds stops it. Past the timeout the write fails and the connection closes.
//! - **Idle connections hold no buffers**: a plain-TCP connection that has waited [`PARK_AFTER`]
//!   for its next request head, with nothing of one read and every response flushed, asks
//!   (through its [`ConnLedger`]) to be parked: `server::conn` takes the socket back from hyper,
//!   drops hyper's 8 KiB read and write buffers and its request slot, and waits for the next
//!   bytes on the socket alone ([`Guarded::idle`]), under the same header timer. hyper gets a
//!   fresh connection state when they come. The timer is the one above: its deadline is the park
//!   point first, then the head deadline, so a busy connection pays nothing for it.

use super::ledger::ConnLedger;
use crate::timer::{rearm_at, Stall};
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Fixed(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers(Vec<u8>),
    Off,
}

/// The framing follower.
struct Framer {
    state: State,
    max_head: usize,
    ledger: ConnLedger,
    heads: usize,
}

const MAX_LINE: usize = 4096;

impl Framer {
    fn new(max_head: usize, ledger: ConnLedger) -> Framer {
        Framer {
            state: State::Head(Vec::new()),
            max_head,
            ledger,
            heads: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        // After a 101 the bytes belong to the new protocol. Bytes read before it went out are
        // followed as HTTP/1, which is what they are if the upgrade is refused; if it is not,
        // no request comes after, so nothing they set is ever asked.
        if self.ledger.is_upgraded() {
            self.state = State::Off;
            return;
        }
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    // Leading empty lines before a request line are allowed (RFC 9112 2.2).
                    if buf.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                        // The usual case: a whole head in one read, parsed where it lies, its
                        // end and its framing headers found in one pass.
                        let limit = data.len().min(self.max_head + 4);
                        if let Some((end, seen)) = scan_whole_head(&data[..limit]) {
                            self.state = self.decide(seen);
                            self.heads += 1;
                            data = &data[end..];
                            continue;
                        }
                    }
                    // The longest head, its final CRLFCRLF included, as on the path above:
                    // a head must get the same verdict however its bytes are split
                    // (fuzz/fuzz_targets/request_framing.rs). `buf` stays shorter than this.
                    let cap = self.max_head + 4;
                    let start = buf.len().saturating_sub(3);
                    let take = data.len().min(cap - buf.len());
                    buf.extend_from_slice(&data[..take]);
                    match find_head_end(&buf[start..]) {
                        Some(pos) => {
                            let end = start + pos + 4;
                            let extra = buf.len() - end;
                            let head = std::mem::take(buf);
                            data = &data[take - extra..];
                            self.state = self.on_head(&head[..end]);
                            self.heads += 1;
                        }
                        None if buf.len() >= cap => {
                            self.state = State::Off;
                            return;
                        }
                        None => data = &data[take..],
                    }
                }
                State::Fixed(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match data.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&data[..i]);
                        data = &data[i + 1..];
                        // The same strict parser as the upstream side's; what it refuses,
                        // hyper refuses too, and the follower stops.
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        let size = chunk_size(line).ok();
                        self.state = match size {
                            Some(0) => State::Trailers(Vec::new()),
                            Some(n) => State::ChunkData(n),
                            None => State::Off,
                        };
                    }
                    None => {
                        line.extend_from_slice(data);
                        if line.len() > MAX_LINE {
                            self.state = State::Off;
                        }
                        return;
                    }
                },
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::ChunkDataEnd(0);
                    }
                }
                State::ChunkDataEnd(seen) => {
                    // The CRLF after chunk data.
                    if data[0] == b'\n' {
                        self.state = State::ChunkSize(Vec::new());
                    } else if data[0] != b'\r' || *seen > 0 {
                        self.state = State::Off;
                        return;
                    } else {
                        *seen = 1;
                    }
                    data = &data[1..];
                }
                State::Trailers(line) => match data.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&data[..i]);
                        data = &data[i + 1..];
                        let empty = line.is_empty() || line.as_slice() == b"\r";
                        line.clear();
                        if empty {
                            self.state = State::Head(Vec::new());
                        }
                    }
                    None => {
                        line.extend_from_slice(data);
                        if line.len() > MAX_LINE {
                            self.state = State::Off;
                        }
                        return;
                    }
                },
            }
        }
    }

    fn on_head(&self, head: &[u8]) -> State {
        // A light scan, not a full parse: hyper parses (and refuses) the head itself; this only
        // needs the framing headers. Lines are found with memchr.
        let mut ends = memchr::memchr_iter(b'\n', head);
        let mut line_start = match ends.next() {
            Some(end) => end + 1,
            None => return State::Off,
        };
        let mut seen = FramingHeaders::default();
        for end in ends {
            seen.note(&head[line_start..end]);
            line_start = end + 1;
        }
        self.decide(seen)
    }

    /// The state after a head with these framing headers; an ambiguous one is flagged.
    fn decide(&self, seen: FramingHeaders) -> State {
        let FramingHeaders { cl_count, cl, te } = seen;
        if (te && cl_count > 0) || cl_count > 1 {
            self.ledger.flag(self.heads);
            return State::Off;
        }
        if te {
            State::ChunkSize(Vec::new())
        } else {
            match (cl_count, cl) {
                (0, _) | (_, Some(0)) => State::Head(Vec::new()),
                (_, Some(n)) => State::Fixed(n),
                (_, None) => State::Off,
            }
        }
    }
}

/// The framing headers of one request head.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct FramingHeaders {
    cl_count: u32,
    /// The last `Content-Length` value, if it parsed.
    cl: Option<u64>,
    te: bool,
}

impl FramingHeaders {
    /// One header line (not the request line), its `\n` excluded. Only a line whose first byte
    /// could start one of the two names is looked at further (a bearer token line is skipped
    /// without reading it).
    fn note(&mut self, line: &[u8]) {
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            return;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            self.cl_count += 1;
            self.cl = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te = true;
        }
    }
}

/// [`find_head_end`] and [`Framer::on_head`] in one pass over a head that arrived in one read:
/// the end of the first `\r\n\r\n` in `hay` (past it) and the framing headers before it.
/// Every `\r\n\r\n` ends with a `\n`, so looking behind each `\n` finds the first one; the
/// lines between are the head's. About 700 instructions less per request than a substring
/// search and a second scan of the lines (benches/instructions.py).
fn scan_whole_head(hay: &[u8]) -> Option<(usize, FramingHeaders)> {
    let mut seen = FramingHeaders::default();
    // None until the request line has ended.
    let mut line_start = None;
    for i in memchr::memchr_iter(b'\n', hay) {
        if i >= 3 && &hay[i - 3..=i] == b"\r\n\r\n" {
            return Some((i + 1, seen));
        }
        if let Some(start) = line_start {
            seen.note(&hay[start..i]);
        }
        line_start = Some(i + 1);
    }
    None
}

/// The framing follower's verdict on bytes read in these pieces: the request heads it saw, the
/// index of the first ambiguous one, and whether it stopped following. For the fuzz target
/// `request_framing`: how a client splits its bytes must not change the verdict.
#[doc(hidden)]
pub fn follow(pieces: &[&[u8]], max_head: usize) -> (usize, Option<usize>, bool) {
    let ledger = ConnLedger::default();
    let mut f = Framer::new(max_head, ledger.clone());
    for p in pieces {
        f.feed(p);
    }
    (
        f.heads,
        ledger.first_ambiguous(),
        matches!(f.state, State::Off),
    )
}

/// The end of a request head. The searcher is built once: building it on every call (what
/// `memmem::find` does) was about half of the 565 instructions this search took per request.
fn find_head_end(hay: &[u8]) -> Option<usize> {
    static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    HEAD_END.find(hay)
}

/// The header timer went off: the error a [`Guarded`] read ends the connection with.
#[derive(Debug)]
pub struct HeadTimeout {
    /// Some of a request had arrived: a request cut off (nginx logs it as a 408), not an idle
    /// keep-alive connection closed.
    pub partial: bool,
}

impl std::fmt::Display for HeadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no complete request head within header_read_timeout")
    }
}

impl std::error::Error for HeadTimeout {}

/// How long a plain-TCP HTTP/1 connection waits for its next request before hyper's buffers are
/// given back (see the module docs). nginx frees them at once; a short wait keeps the cost of
/// setting them up again (about 1,000 instructions) off connections that are busy.
pub const PARK_AFTER: Duration = Duration::from_millis(10);

/// A stream the connection can wait on without reading: only plain TCP is parked (rustls
/// keeps decrypted bytes of its own, which readiness of the socket would not show).
pub trait Parkable {
    /// Ready when the socket has bytes (or the client closed it).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// May it be parked at all?
    fn parkable(&self) -> bool;
}

impl Parkable for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
    fn parkable(&self) -> bool {
        true
    }
}

impl<T> Parkable for tokio_rustls::server::TlsStream<T> {
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn parkable(&self) -> bool {
        false
    }
}

/// An IO stream whose reads are watched by a [`Framer`] and bounded by the header timer.
pub struct Guarded<T> {
    inner: T,
    framer: Framer,
    ledger: ConnLedger,
    header_timeout: Duration,
    /// The header timer: made on the first read, then only pushed forward.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The wait the timer's deadline was set for (see [`ConnLedger::waiting_for_head`]). A wait can
    /// begin without a read in between (a pipelined head already in hyper's buffer), so a
    /// deadline belongs to a wait, not to the last read.
    armed_for: Option<usize>,
    /// `send_timeout`, counted while writes cannot proceed.
    send_stall: Stall,
    /// The stream may be parked ([`Parkable`]).
    parkable: bool,
    /// When the current wait for a head began.
    wait_started: tokio::time::Instant,
    /// The timer's deadline is the park point, not yet the head deadline.
    park_point: bool,
    /// Every write so far has been flushed: hyper holds nothing unsent.
    flushed: bool,
    /// Bytes hyper had read but not parsed when the connection was parked, given back first.
    replay: Bytes,
}

impl<T> Guarded<T> {
    /// Wraps `inner`; the returned [`ConnLedger`] goes to the connection's service.
    pub fn new(
        inner: T,
        max_head: usize,
        header_timeout: Duration,
        send_timeout: Duration,
    ) -> (Self, ConnLedger)
    where
        T: Parkable,
    {
        let parkable = inner.parkable() && PARK_AFTER < header_timeout;
        let ledger = ConnLedger::default();
        let framer = Framer::new(max_head, ledger.clone());
        let guarded = Guarded {
            inner,
            framer,
            ledger: ledger.clone(),
            header_timeout,
            timer: None,
            armed_for: None,
            send_stall: Stall::new(send_timeout),
            parkable,
            wait_started: tokio::time::Instant::now(),
            park_point: false,
            flushed: true,
            replay: Bytes::new(),
        };
        (guarded, ledger)
    }

    /// Takes the stream back from a parked hyper connection, with the bytes hyper had read and
    /// not used (none, on the terms a park is asked on; replayed first if there are).
    pub fn unpark(&mut self, unread: Bytes) {
        // Copied or dropped, never kept: even empty, hyper's buffer holds its 8 KiB allocation.
        self.replay = match unread.is_empty() {
            true => Bytes::new(),
            false => Bytes::copy_from_slice(&unread),
        };
    }

    /// A parked connection's wait for its next request: `Ok(true)` when the client sends (or
    /// closes), `Ok(false)` when the head deadline passes (an idle keep-alive connection is
    /// closed, as hyper would have) or `drain` completes.
    pub async fn idle<D: Future + Unpin>(&mut self, drain: &mut D) -> io::Result<bool>
    where
        T: Parkable,
    {
        if !self.replay.is_empty() || !self.parkable {
            return Ok(true);
        }
        // A new connection's first wait begins here, not at hyper's first read.
        self.arm();
        std::future::poll_fn(|cx| {
            if Pin::new(&mut *drain).poll(cx).is_ready() {
                return Poll::Ready(Ok(false));
            }
            if let Poll::Ready(r) = self.inner.poll_read_ready(cx) {
                return Poll::Ready(r.map(|()| true));
            }
            loop {
                let Some(t) = &mut self.timer else {
                    return Poll::Pending;
                };
                if t.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if !self.park_point {
                    return Poll::Ready(Ok(false));
                }
                // Already parked: the park point only moves the timer on to the head deadline.
                self.past_park_point();
            }
        })
        .await
    }

    /// Starts the header timer if the connection has just begun waiting for a head; `true`
    /// while it runs.
    fn arm(&mut self) -> bool {
        let Some(wait) = self.ledger.waiting_for_head() else {
            return false;
        };
        if self.armed_for != Some(wait) {
            self.armed_for = Some(wait);
            let now = tokio::time::Instant::now();
            self.wait_started = now;
            self.park_point = self.parkable;
            let after = if self.parkable {
                PARK_AFTER
            } else {
                self.header_timeout
            };
            rearm_at(&mut self.timer, now + after);
        }
        true
    }

    /// Moves the timer from the park point on to the head deadline of the same wait.
    fn past_park_point(&mut self) -> Option<&mut Pin<Box<tokio::time::Sleep>>> {
        self.park_point = false;
        let t = self.timer.as_mut()?;
        t.as_mut().reset(self.wait_started + self.header_timeout);
        Some(t)
    }

    /// The timer reached the park point: from now it runs to the head deadline, and if the
    /// connection is idle (nothing of a head read, nothing unsent) it asks to be parked.
    fn at_park_point(&mut self, cx: &mut Context<'_>, read_pending: bool) {
        if let Some(t) = self.past_park_point() {
            // Registers the new deadline; it is later than now, so this is pending.
            let _ = t.as_mut().poll(cx);
        }
        let nothing_read = matches!(&self.framer.state, State::Head(b) if b.is_empty());
        if read_pending && self.flushed && nothing_read {
            self.ledger.want_park();
        }
    }

    /// The send timeout (nginx's `send_timeout`): a client that reads nothing of what it is
    /// sent for that long loses the connection. The clock runs only while writes are blocked.
    fn bound_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if self.send_stall.expired(cx, &res) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing within send_timeout",
            )));
        }
        res
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            // Already seen by the framer, before the park.
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let timed = this.arm();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            if !matches!(this.framer.state, State::Off) {
                this.framer.feed(&buf.filled()[before..]);
            }
        }
        // Checked whether or not bytes came: a client trickling a head a byte at a time must
        // not keep the connection past the deadline.
        if timed {
            if let Some(t) = &mut this.timer {
                if t.as_mut().poll(cx).is_ready() {
                    if this.park_point {
                        this.at_park_point(cx, res.is_pending());
                        return res;
                    }
                    let partial = match &this.framer.state {
                        State::Head(buf) => !buf.is_empty(),
                        State::Off => false,
                        _ => true,
                    };
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        HeadTimeout { partial },
                    )));
                }
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.flushed = false;
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound_write(cx, res)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the stream only once its own write buffer is empty.
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            self.flushed = true;
        }
        res
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.flushed = false;
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound_write(cx, res)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// `chunk-size [ BWS ; chunk-ext ]`: hex digits, then optional whitespace and extensions. Shared
/// by the request framing follower and the upstream response parser.
pub fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("bad chunk size");
    }
    let mut size: u64 = 0;
    for &d in &line[..digits] {
        let v = (d as char).to_digit(16).expect("a hex digit") as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(v))
            .ok_or("chunk size overflows")?;
    }
    let rest = &line[digits..];
    let after_ws = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .map_or(&[][..], |i| &rest[i..]);
    match after_ws.first() {
        None | Some(b';') => Ok(size),
        Some(_) => Err("bad chunk size"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (bool, bool) {
        let (_, first_ambiguous, off) = follow(chunks, 16384);
        (first_ambiguous.is_some(), off)
    }

    #[test]
    fn plain_requests_are_followed() {
        let reqs = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /z HTTP/1.1\r\n\r\n";
        assert_eq!(run(&[reqs]), (false, false));
        // The same bytes one at a time.
        let singles: Vec<&[u8]> = reqs.chunks(1).collect();
        assert_eq!(run(&singles), (false, false));
    }

    /// The one-pass scan finds what the substring search and the line scan find, on heads cut
    /// anywhere and with framing headers in every spelling.
    #[test]
    fn the_one_pass_scan_agrees_with_the_two() {
        let framer = Framer::new(16384, ConnLedger::default());
        let heads: [&[u8]; 9] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"POST /x HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\nCookie: c\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n\r\nX",
            b"GET / HTTP/1.1\r\nContent-Length:  7 \r\n\r\nbody\r\n\r\n",
        ];
        for head in heads {
            for cut in 0..=head.len() {
                let hay = &head[..cut];
                let two = find_head_end(hay).map(|pos| {
                    let end = pos + 4;
                    let mut seen = FramingHeaders::default();
                    let mut ends = memchr::memchr_iter(b'\n', &hay[..end]);
                    let mut start = ends.next().unwrap() + 1;
                    for e in ends {
                        seen.note(&hay[start..e]);
                        start = e + 1;
                    }
                    (end, seen)
                });
                assert_eq!(
                    scan_whole_head(hay),
                    two,
                    "{:?}",
                    String::from_utf8_lossy(hay)
                );
                if let Some((end, seen)) = two {
                    let (a, b) = (framer.decide(seen), framer.on_head(&hay[..end]));
                    assert_eq!(format!("{a:?}"), format!("{b:?}"));
                }
            }
        }
    }

    #[test]
    fn cl_and_te_flag() {
        let r =
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(run(&[r]).0);
    }

    #[test]
    fn duplicate_cl_flags() {
        let r = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
        assert!(run(&[r]).0);
    }

    #[test]
    fn smuggled_second_request_is_seen() {
        let r = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET /admin HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert!(run(&[r]).0);
    }

    #[test]
    fn a_head_at_the_size_limit_gets_one_verdict_however_it_is_split() {
        // A head of exactly max_head bytes plus its CRLFCRLF, then a smuggling attempt. Read
        // byte by byte, the follower used to give up at max_head + 1 bytes and miss the second
        // head (found by fuzz/fuzz_targets/request_framing.rs).
        let max_head = 64;
        let mut first = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        first.resize(max_head, b'a');
        first.extend_from_slice(b"\r\n\r\n");
        let smuggled =
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bytes = [first.as_slice(), smuggled].concat();
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(follow(&[&bytes], max_head), (2, Some(1), true));
        assert_eq!(follow(&singles, max_head), (2, Some(1), true));
        // One byte longer: too long either way, and the follower stops.
        let mut long = first.clone();
        long.insert(20, b'a');
        let singles: Vec<&[u8]> = long.chunks(1).collect();
        assert_eq!(follow(&[&long], max_head), (0, None, true));
        assert_eq!(follow(&singles, max_head), (0, None, true));
    }

    /// The fuzz target's property over a deterministic stream of request streams built from
    /// framing pieces, so CI checks it without a fuzzer: one verdict however the bytes are
    /// split.
    #[test]
    fn the_verdict_does_not_depend_on_the_split_for_generated_streams() {
        const PIECES: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"POST /x HTTP/1.1\r\n",
            b"Content-Length: 3\r\n",
            b"content-length: 0\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Upgrade: x\r\n",
            b"X-A: a\r\n",
            b"\r\n",
            b"abc",
            b"3\r\nabc\r\n0\r\n\r\n",
            b"3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n",
            b"\n",
        ];
        let max_head = 64;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            for _ in 0..next() % 16 {
                let r = next();
                if r % 8 == 0 {
                    // Padding that brings a head near the size limit.
                    bytes.extend_from_slice(b"X-Pad: ");
                    bytes.resize(bytes.len() + (r >> 8) as usize % (max_head + 8), b'p');
                    bytes.extend_from_slice(b"\r\n");
                } else {
                    bytes.extend_from_slice(PIECES[(r >> 8) as usize % PIECES.len()]);
                }
            }
            let whole = follow(&[&bytes], max_head);
            let mut pieces = Vec::new();
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let n = (1 + next() as usize % 80).min(rest.len());
                pieces.push(&rest[..n]);
                rest = &rest[n..];
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            let text = String::from_utf8_lossy(&bytes);
            assert_eq!(follow(&pieces, max_head), whole, "{text:?}");
            assert_eq!(
                follow(&singles, max_head),
                whole,
                "{text:?} one byte at a time"
            );
        }
    }

    #[test]
    fn the_index_of_the_ambiguous_head_is_kept() {
        let verdict = ConnLedger::default();
        let mut f = Framer::new(16384, verdict.clone());
        f.feed(b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(!verdict.refuses(0));
        assert!(verdict.refuses(1));
        assert!(verdict.refuses(2));
    }
}
