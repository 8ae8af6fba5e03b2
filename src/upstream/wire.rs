//! The HTTP/1.1 wire format of bearward's upstream side: request heads out, response heads and
//! bodies in. The connection handling (pooling, retries, timeouts) is in [`super::pool`].
//!
//! Why not hyper's client here: its connection task, the channel that hands it each request and
//! the one that brings the response back cost 13k of the 35k instructions bearward spent per
//! proxied request (benches/instructions.py, SHA-256 aside). Running the exchange inside the
//! request's own task brought the whole request to 28.5k. Parsing stays with `httparse`, the
//! parser hyper itself uses; what is written here is framing, and it is strict (RFC 9112
//! section 6):
//!
//! - no body for HEAD, 1xx, 204 and 304; otherwise `Transfer-Encoding` with `chunked` last, or
//!   one `Content-Length` (repeats must agree), or the body runs to the close;
//! - both `Transfer-Encoding` and `Content-Length`, `chunked` anywhere but last, a bad length,
//!   a malformed chunk, an oversized head, trailer or chunk line: the response is refused (502)
//!   and its connection closed, as nginx does; a response that cannot be framed exactly is never
//!   forwarded, and its connection is never reused;
//! - a connection goes back to the pool only after a response framed by length or chunks was
//!   read to its exact end with nothing after it, over HTTP/1.1, without `Connection: close`.

use crate::request::framing::chunk_size;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Largest response head accepted from an upstream (nginx's `proxy_buffer_size` is 4-8 KiB;
/// hyper's default limit is about 400 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in one response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size plus extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes after the last chunk (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an upstream response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed upstream response: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body bytes.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// Headers the proxy writes in place of the client's (see `forward::prepare_request`). Written
/// straight into the head, not inserted into the request's `HeaderMap` first: that saved about
/// 500 instructions per request (benches/instructions.py).
#[derive(Debug, Default)]
pub struct HeadRewrite {
    /// The `Host` line, written first. The client's `Host` never passes.
    pub host: Option<HeaderValue>,
    /// Each entry replaces every client header of its name; `None` drops them.
    pub replace: [Option<(HeaderName, Option<HeaderValue>)>; 8],
    /// The client is no trusted proxy: its [`is_hop_view`](crate::headers::is_hop_view) headers are dropped.
    pub untrusted: bool,
    /// A WebSocket upgrade ([`crate::headers::is_upgrade_request`]): its `Upgrade` and
    /// `Connection` pass.
    pub upgrade: bool,
}

impl HeadRewrite {
    fn replaces(&self, name: &HeaderName) -> bool {
        name == header::HOST
            || self.replace.iter().flatten().any(|(n, _)| n == name)
            || self.untrusted && crate::headers::is_hop_view(name)
    }

    /// The rewrite applied to a header map, for HTTP/2 upstreams (hyper writes that head): the
    /// client's headers it names go, its own lines come. `Host` becomes `:authority`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.replaces(k))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
        for (k, v) in self.lines() {
            headers.append(k.clone(), v.clone());
        }
    }

    /// The replacement lines (`Host` aside).
    fn lines(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.replace
            .iter()
            .flatten()
            .filter_map(|(n, v)| Some((n, v.as_ref()?)))
    }
}

/// Writes a request head for an origin-form request whose headers `forward::prepare_request` has
/// already cleaned (no hop-by-hop headers but an upgrade's own), with `rewrite` in place of the
/// client's headers it names. Decides the body framing: the client's `Content-Length` when it
/// sent one, else the body's exact size, else chunked.
pub fn encode_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    rewrite: &HeadRewrite,
    body_empty: bool,
    exact_len: Option<u64>,
) -> (Vec<u8>, RequestFraming) {
    let framing = if body_empty {
        RequestFraming::Empty
    } else if let Some(n) = declared_length(headers) {
        RequestFraming::Length(n)
    } else if let Some(n) = exact_len {
        RequestFraming::Length(n)
    } else {
        RequestFraming::Chunked
    };
    let length;
    let framing_line: Option<(&HeaderName, &HeaderValue)> = match framing {
        // RFC 9110 8.6: a request whose method gives content a meaning says its length, even 0.
        RequestFraming::Empty => {
            static ZERO: HeaderValue = HeaderValue::from_static("0");
            (matches!(*method, Method::POST | Method::PUT | Method::PATCH)
                && !headers.contains_key(header::CONTENT_LENGTH))
            .then_some((&header::CONTENT_LENGTH, &ZERO))
        }
        // Exactly the length that goes on the wire, whatever the client wrote.
        RequestFraming::Length(n) => {
            length = HeaderValue::from(n);
            Some((&header::CONTENT_LENGTH, &length))
        }
        RequestFraming::Chunked => {
            static CHUNKED: HeaderValue = HeaderValue::from_static("chunked");
            Some((&header::TRANSFER_ENCODING, &CHUNKED))
        }
    };
    // With a body, the client's own Content-Length gives way to the framing line.
    let skip_length = framing != RequestFraming::Empty;
    let passes =
        |k: &HeaderName| !(rewrite.replaces(k) || skip_length && k == header::CONTENT_LENGTH);
    let host = rewrite.host.as_ref().map(|v| (&header::HOST, v));
    let ours = || host.into_iter().chain(rewrite.lines()).chain(framing_line);
    // Room for every line, skipped ones included: one pass, and no realloc (a guess fell short
    // of a forwarded bearer token and cost one on every request, about 600 instructions).
    let line = |(k, v): (&HeaderName, &HeaderValue)| k.as_str().len() + v.len() + 4;
    let room = headers.iter().chain(ours()).map(line).sum::<usize>()
        + method.as_str().len()
        + target.len()
        + " ".len()
        + " HTTP/1.1\r\n\r\n".len();
    let mut out = Vec::with_capacity(room);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut write = |(k, v): (&HeaderName, &HeaderValue)| {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    // Host first, as clients send it; then the client's headers; then the proxy's own.
    host.into_iter().for_each(&mut write);
    headers
        .iter()
        .filter(|(k, _)| passes(k))
        .for_each(&mut write);
    rewrite.lines().chain(framing_line).for_each(&mut write);
    out.extend_from_slice(b"\r\n");
    debug_assert!(out.len() <= room);
    (out, framing)
}

/// The request's own `Content-Length`, if it has exactly one valid value. hyper's server (and h2)
/// already refused requests whose body does not match it.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_length(first.as_bytes())
}

fn parse_length(v: &[u8]) -> Option<u64> {
    // At most 19 digits, so it cannot overflow a u64.
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
    /// 101: the connection now carries another protocol.
    Upgrade,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// May the connection carry another request after this response's body?
    pub keep_alive: bool,
}

/// Parses one response head from the front of `buf`, consuming it. `Ok(None)`: more bytes are
/// needed. Informational responses other than 101 are consumed and skipped by the caller
/// (see [`ResponseHead::is_interim`]).
pub fn parse_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, Malformed> {
    // Uninitialized slots and narrow spans: zeroing 100 full-width entries of each cost more
    // than the parse itself (4k instructions of memset per response under callgrind).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Malformed("head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many headers")),
        Err(_) => return Err(Malformed("bad head")),
    };
    if len >= MAX_HEAD {
        return Err(Malformed("head too large"));
    }
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Malformed("bad status"))?;
    let version = if resp.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Header values are kept as slices of the head's own buffer (no copy per header): note
    // where each lies, then freeze the head.
    // Offsets fit in u16: the head is at most MAX_HEAD (64 KiB) long.
    let base = buf.as_ptr() as usize;
    let at = |p: *const u8| (p as usize - base) as u16;
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let count = resp.headers.len();
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        let (n, v) = (at(h.name.as_ptr()), at(h.value.as_ptr()));
        *span = (n, n + h.name.len() as u16, v, v + h.value.len() as u16);
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut close = false;
    // A `Connection` header that says only keep-alive or close, and `Keep-Alive`, are hop-by-hop
    // and name nothing else to strip: they are noted here and never enter the map, so the
    // proxy does not have to remove them again (about 900 instructions on most responses).
    // Anything else, and every header of a 101, goes in and is stripped as before.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    // The framing headers are read as they go by: looking them up in the map afterwards cost
    // about 450 instructions on every response.
    let mut te = false;
    let mut length = Length::Absent;
    for &(n, n_end, v, v_end) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[n as usize..n_end as usize])
            .map_err(|_| Malformed("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v as usize..v_end as usize))
            .map_err(|_| Malformed("bad header value"))?;
        if name == header::CONNECTION {
            let mut only_own = true;
            for token in value
                .as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
            {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !(token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive")) {
                    only_own = false;
                }
            }
            if only_own && !switching {
                continue;
            }
        } else if !switching && name.as_str() == "keep-alive" {
            continue;
        } else if name == header::CONTENT_LENGTH {
            length.note(value.as_bytes());
        } else if name == header::TRANSFER_ENCODING {
            te = true;
        }
        headers.append(name, value);
    }
    let (framing, keep_alive) = framing(
        request_method,
        status,
        version,
        close,
        te.then_some(&headers),
        length,
    )?;
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

impl ResponseHead {
    /// A 1xx other than 101: skipped, the final response follows on the same connection.
    pub fn is_interim(&self) -> bool {
        self.status.is_informational() && self.status != StatusCode::SWITCHING_PROTOCOLS
    }
}

/// A response's `Content-Length` lines, read as the head is parsed: every comma-separated value
/// of every line must be a valid length, and all must agree (RFC 9112 6.3, item 5). The first
/// fault is kept: it is reported only if the length is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    Absent,
    Agreed(u64),
    Faulty(&'static str),
}

impl Length {
    fn note(&mut self, value: &[u8]) {
        for part in value.split(|b| *b == b',') {
            *self = match (*self, parse_length(part.trim_ascii())) {
                (Length::Faulty(_), _) => return,
                (_, None) => Length::Faulty("bad Content-Length"),
                (Length::Agreed(l), Some(n)) if l != n => {
                    Length::Faulty("conflicting Content-Length")
                }
                (_, Some(n)) => Length::Agreed(n),
            };
        }
    }
}

/// RFC 9112 6.3, strictly: anything ambiguous is refused rather than guessed.
/// `close`: a `Connection` header of the response has the `close` option. `transfer_encoding`:
/// the response's headers, when it has a `Transfer-Encoding` line.
fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    close: bool,
    transfer_encoding: Option<&HeaderMap>,
    length: Length,
) -> Result<(ResponseFraming, bool), Malformed> {
    let close = version != Version::HTTP_11 || close;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((ResponseFraming::Upgrade, false));
    }
    let te = transfer_encoding.is_some();
    let cl = length != Length::Absent;
    if te && cl {
        return Err(Malformed("both Transfer-Encoding and Content-Length"));
    }
    if te && version != Version::HTTP_11 {
        return Err(Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((ResponseFraming::Empty, !close));
    }
    if let Some(headers) = transfer_encoding {
        let codings: Vec<&[u8]> = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .collect();
        let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        return match codings.iter().position(chunked) {
            Some(i) if i + 1 == codings.len() => Ok((ResponseFraming::Chunked, !close)),
            Some(_) => Err(Malformed("chunked is not the last transfer coding")),
            None => Ok((ResponseFraming::Close, false)),
        };
    }
    match length {
        Length::Agreed(n) => Ok((ResponseFraming::Length(n), !close)),
        Length::Faulty(why) => Err(Malformed(why)),
        Length::Absent => Ok((ResponseFraming::Close, false)),
    }
}

/// What the chunked decoder got from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete next piece; read more.
    NeedMore,
    /// The last chunk and the trailers are consumed.
    End,
}

/// Chunked transfer coding (RFC 9112 7.1), decoded from the front of a buffer. Chunk extensions
/// and trailer fields are read and dropped. Line ends must be CRLF.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line).map_err(Malformed)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let room = MAX_TRAILERS.saturating_sub(self.trailer_bytes).max(2);
                    let Some(line) = take_line(buf, room)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.trailer_bytes += line.len() + 2;
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Takes one CRLF-terminated line off the front of `buf` (without its CRLF). `Ok(None)`: no
/// line end yet and fewer than `max` bytes buffered.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Malformed> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i > max => Err(Malformed("line too long")),
        Some(i) if i == 0 || buf[i - 1] != b'\r' => Err(Malformed("bare LF")),
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(Malformed("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<ResponseHead>, Malformed> {
        parse_head(&mut BytesMut::from(raw), &method)
    }

    fn framing_of(raw: &str) -> Result<(ResponseFraming, bool), Malformed> {
        head(raw, Method::GET).map(|h| {
            let h = h.expect("complete");
            (h.framing, h.keep_alive)
        })
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use ResponseFraming::*;
        for (raw, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                (Length(5), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\n",
                (Length(5), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                (Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                (Close, false),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", (Close, false)),
            (
                "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n",
                (Length(0), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
                (Length(2), false),
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
                (Empty, true),
            ),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", (Empty, true)),
            ("HTTP/1.1 100 Continue\r\n\r\n", (Empty, true)),
            (
                "HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n",
                (Upgrade, false),
            ),
        ] {
            assert_eq!(framing_of(raw).unwrap(), want, "{raw:?}");
        }
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Empty, true));
        // A length is checked only where it frames the body, as before the lines were read in
        // the parse loop.
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Empty);

        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5, x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nFolded: a\r\n b\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(framing_of(bad).is_err(), "accepted: {bad:?}");
        }
    }

    #[test]
    fn connection_options_are_noted_and_plain_ones_left_out() {
        let names = |raw: &str| -> (Vec<String>, bool) {
            let h = head(raw, Method::GET).unwrap().unwrap();
            let names = h.headers.keys().map(|k| k.as_str().to_owned()).collect();
            (names, h.keep_alive)
        };
        // Only keep-alive or close: noted, never in the map.
        assert_eq!(
            names("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n"),
            (vec!["content-length".to_owned()], true)
        );
        assert_eq!(
            names("HTTP/1.1 200 OK\r\nconnection: , Close\r\nContent-Length: 0\r\n\r\n"),
            (vec!["content-length".to_owned()], false)
        );
        // Naming another header: kept, so the proxy strips that header too; close still noted.
        assert_eq!(
            names("HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n"),
            (
                vec!["connection".to_owned(), "x-secret".to_owned(), "content-length".to_owned()],
                false
            )
        );
        // A 101 keeps everything for the upgrade handshake.
        assert_eq!(
            names("HTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: ws\r\nKeep-Alive: 5\r\n\r\n").0,
            vec!["connection".to_owned(), "upgrade".to_owned(), "keep-alive".to_owned()]
        );
    }

    #[test]
    fn heads_are_bounded_and_may_arrive_in_pieces() {
        let full = "HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\nhi";
        for cut in 0..full.len() - 2 {
            assert!(head(&full[..cut], Method::GET).unwrap().is_none(), "{cut}");
        }
        let mut buf = BytesMut::from(full);
        let h = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(&buf[..], b"hi", "only the head is consumed");
        assert_eq!(h.headers["server"], "x");

        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            head(&big, Method::GET).unwrap_err(),
            Malformed("head too large")
        );
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            head(&many, Method::GET).unwrap_err(),
            Malformed("too many headers")
        );
    }

    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, BytesMut), Malformed> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::End => return Ok((out, buf)),
                Decoded::NeedMore if fed >= wire.len() => return Err(Malformed("eof")),
                Decoded::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_decodes_in_any_split_and_stops_at_its_end() {
        let wire = b"5;name=value\r\nhello\r\n6 \t; x\r\n world\r\n000\r\nTrailer: t\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (data, rest) = decode_all(wire, step).unwrap();
            assert_eq!(data, b"hello world", "step {step}");
            // Bytes after the end are not the body's: whatever of them was fed is left over.
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
        let (data, _) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", 64).unwrap();
        assert_eq!(data, b"0123456789");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"x\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"10000000000000000\r\n",
            b"0\r\nTrailer: t\n\r\n",
        ] {
            assert!(decode_all(bad, 3).is_err(), "accepted: {bad:?}");
        }
        let long_ext = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(
            decode_all(long_ext.as_bytes(), 512).unwrap_err(),
            Malformed("line too long")
        );
        let long_trailers = format!("0\r\n{}", "T: x\r\n".repeat(MAX_TRAILERS / 6 + 1));
        assert!(decode_all(long_trailers.as_bytes(), 100).is_err());
        // The biggest size that fits is accepted as a size.
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"ab"))
        );
    }

    /// A small deterministic generator, so the randomized tests below need no crate and
    /// replay the same inputs on every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_chunked_bodies_round_trip_in_random_splits() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let mut body = Vec::new();
            let mut wire = Vec::new();
            for _ in 0..rng.below(6) {
                let chunk: Vec<u8> = (0..1 + rng.below(300)).map(|_| rng.next() as u8).collect();
                let ext = if rng.below(3) == 0 { ";a=b" } else { "" };
                wire.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(&chunk);
                wire.extend_from_slice(b"\r\n");
                body.extend_from_slice(&chunk);
            }
            wire.extend_from_slice(b"0\r\n");
            if rng.below(2) == 0 {
                wire.extend_from_slice(b"T: 1\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            let step = 1 + rng.below(64);
            let (got, rest) = decode_all(&wire, step).unwrap();
            assert_eq!(got, body);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn random_bytes_never_panic_the_parsers() {
        // Pieces of real messages, shuffled: more likely than noise to reach deep states.
        const PIECES: [&[u8]; 16] = [
            b"HTTP/1.1 ",
            b"200 OK",
            b"\r\n",
            b"\n",
            b"Content-Length: ",
            b"Transfer-Encoding: ",
            b"chunked",
            b"5",
            b"ffffffffffffffffff",
            b";x=y",
            b" ",
            b"0",
            b":",
            b"\r\n\r\n",
            b"HTTP/1.0 101 Switching\r\n",
            b"\xff\x00",
        ];
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(24) {
                input.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
            let method = if rng.below(4) == 0 {
                Method::HEAD
            } else {
                Method::GET
            };
            let mut buf = BytesMut::from(&input[..]);
            if let Ok(Some(h)) = parse_head(&mut buf, &method) {
                assert!(h.headers.len() <= MAX_HEADERS);
            }
            let mut buf = BytesMut::from(&input[..]);
            let mut dec = Chunked::default();
            for _ in 0..64 {
                match dec.decode(&mut buf) {
                    Ok(Decoded::Data(d)) => assert!(!d.is_empty()),
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn request_heads_say_how_long_the_body_is() {
        let enc = |m: Method, h: &HeaderMap, empty, exact| {
            let rewrite = HeadRewrite {
                host: Some(HeaderValue::from_static("up")),
                ..HeadRewrite::default()
            };
            let (bytes, f) = encode_head(&m, "/p?q=1", h, &rewrite, empty, exact);
            (String::from_utf8(bytes).unwrap(), f)
        };
        let h = HeaderMap::new();
        let (s, f) = enc(Method::GET, &h, true, None);
        assert_eq!(s, "GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\n");
        assert_eq!(f, RequestFraming::Empty);
        let (s, _) = enc(Method::POST, &h, true, None);
        assert!(s.contains("content-length: 0\r\n"), "{s}");
        let (s, f) = enc(Method::POST, &h, false, Some(7));
        assert!(s.contains("content-length: 7\r\n"), "{s}");
        assert_eq!(f, RequestFraming::Length(7));
        let mut with_cl = h.clone();
        with_cl.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let (s, f) = enc(Method::PUT, &with_cl, false, None);
        assert_eq!(
            (s.matches("content-length").count(), f),
            (1, RequestFraming::Length(9))
        );
        // A bodiless request keeps the client's own `Content-Length: 0`, once.
        with_cl.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let (s, _) = enc(Method::POST, &with_cl, true, None);
        assert_eq!(s.matches("content-length: 0").count(), 1, "{s}");
        let (s, f) = enc(Method::POST, &h, false, None);
        assert!(s.contains("transfer-encoding: chunked\r\n"), "{s}");
        assert!(!s.contains("content-length"), "{s}");
        assert_eq!(f, RequestFraming::Chunked);
    }

    #[test]
    fn the_rewrite_replaces_the_clients_headers_of_its_names() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("client"));
        h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        h.insert("x-dropped", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let name = HeaderName::from_static;
        let rewrite = HeadRewrite {
            host: Some(HeaderValue::from_static("up")),
            replace: [
                Some((
                    name("x-forwarded-for"),
                    Some(HeaderValue::from_static("9.9.9.9")),
                )),
                Some((name("x-dropped"), None)),
                None,
                None,
                None,
                None,
                None,
                None,
            ],
            untrusted: false,
            upgrade: false,
        };
        let (head, _) = encode_head(&Method::GET, "/", &h, &rewrite, true, None);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.1\r\nhost: up\r\nx-kept: 1\r\nx-forwarded-for: 9.9.9.9\r\n\r\n"
        );
        // No Host in the rewrite: no Host line at all, not the client's.
        let (head, _) = encode_head(&Method::GET, "/", &h, &HeadRewrite::default(), true, None);
        let head = String::from_utf8(head).unwrap();
        assert!(!head.contains("host"), "{head}");
    }
}
