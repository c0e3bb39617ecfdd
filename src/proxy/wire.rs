//! A lean HTTP/1.1 exchange for mirror copies.
//!
//! A copy is a request whose whole body is already in memory and whose
//! answer nobody waits for: the proxy reads it to its end, counts it and,
//! when comparing, keeps a bounded capture. hyper's pooled client is built
//! for the other case (streaming both ways, a connection task per
//! connection, a dispatch channel per connection) and costs about 50 KiB
//! per connection held open by a slow shadow — 50 MiB for the default 1024
//! copies in flight. Here the copy's own task owns its connection for the
//! exchange: it writes the head and body, parses the answer with `httparse`
//! into a small buffer and hands the body to a [`Sink`] chunk by chunk; then
//! the connection goes back to the endpoint's idle list. Nothing else is
//! allocated per connection.
//!
//! Framing follows RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304;
//! `Transfer-Encoding` whose last coding is `chunked` is decoded (trailers
//! read and handed over); any other `Transfer-Encoding`, or no length at
//! all, reads to the end of the connection; `Content-Length` must be one
//! valid number (repeated equal values allowed). Interim 1xx answers are
//! skipped. A connection is reused only after a complete answer that did
//! not ask to close it and left no stray bytes behind.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::tls::UpstreamStream;

/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a response head (or trailer section).
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (size, extensions) or trailer line.
const MAX_LINE_BYTES: usize = 4096;
/// First read buffer: a typical answer's head and a small body fit.
const INITIAL_BUFFER: usize = 2048;
/// Reads into the buffer happen with at least this much room.
const READ_ROOM: usize = 1024;

/// What the copy's owner does with the answer, as it arrives.
pub trait Sink {
    /// Whether [`Sink::head`] wants the header fields (building them costs
    /// an allocation per field).
    fn wants_headers(&self) -> bool;
    /// The final response head (`headers` empty unless wanted).
    fn head(&mut self, status: StatusCode, headers: &HeaderMap);
    /// A piece of the body, in order.
    fn data(&mut self, chunk: &[u8]);
    /// Trailer fields of a chunked body.
    fn trailers(&mut self, trailers: &HeaderMap);
}

/// A connection the exchange can run over (`UpstreamStream` in the
/// proxy; anything that reads and writes in tests and fuzzing).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection ended before any byte of an answer arrived (a
    /// reused connection the server had closed meanwhile looks like this).
    #[error("connection closed before an answer")]
    ClosedEarly,
    /// Writing the request, or reading before any byte came back, failed.
    #[error("connection failed before an answer: {0}")]
    Unanswered(std::io::Error),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid response: {0}")]
    Protocol(&'static str),
}

impl WireError {
    /// True when nothing of an answer arrived, so retrying on a fresh
    /// connection is safe for an idempotent request.
    pub fn nothing_received(&self) -> bool {
        matches!(self, WireError::ClosedEarly | WireError::Unanswered(_))
    }
}

/// A finished exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub status: StatusCode,
    /// Body bytes received (after chunked decoding).
    pub body_bytes: u64,
    /// Whether the connection may carry another request.
    pub reusable: bool,
}

/// The request head of a copy, serialized once.
pub fn request_head(method: &Method, target: &str, headers: &HeaderMap) -> Vec<u8> {
    let size = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + method.as_str().len()
        + target.len()
        + 16;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The request of a copy whose body ends in trailer fields: the head (from
/// `headers` without their framing fields, plus `Transfer-Encoding:
/// chunked` and a `Trailer` field naming the trailers) with the first chunk
/// line, and what follows the body: the last chunk and the trailer section.
/// Fields that must not be trailers are left out (RFC 9110 §6.5.1). Send
/// with [`exchange`] as `head`, body, `tail`.
pub fn chunked_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body_len: usize,
    trailers: &HeaderMap,
) -> (Vec<u8>, Vec<u8>) {
    let sendable = || {
        trailers
            .iter()
            .filter(|(n, _)| crate::mirror::tee::may_be_trailer(n))
    };
    let mut fields = headers.clone();
    for framing in [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::TRAILER,
    ] {
        fields.remove(framing);
    }
    fields.insert(
        http::header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in sendable() {
        if !names.contains(&name.as_str()) {
            names.push(name.as_str());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
        if !names.is_empty() {
            fields.insert(http::header::TRAILER, v);
        }
    }
    let mut head = request_head(method, target, &fields);
    let mut tail = Vec::new();
    if body_len > 0 {
        head.extend_from_slice(format!("{body_len:x}\r\n").as_bytes());
        tail.extend_from_slice(b"\r\n");
    }
    tail.extend_from_slice(b"0\r\n");
    for (name, value) in sendable() {
        tail.extend_from_slice(name.as_str().as_bytes());
        tail.extend_from_slice(b": ");
        tail.extend_from_slice(value.as_bytes());
        tail.extend_from_slice(b"\r\n");
    }
    tail.extend_from_slice(b"\r\n");
    (head, tail)
}

/// Sends one request (`head` from [`request_head`], then `body`, then
/// `tail` — empty, or the end of a chunked body from [`chunked_request`] —
/// in one vectored write where the stream allows) and reads the whole
/// answer into `sink`.
pub async fn exchange<S: Io>(
    stream: &mut S,
    head: &[u8],
    body: &Bytes,
    tail: &[u8],
    method: &Method,
    sink: &mut (dyn Sink + Send),
) -> Result<Answered, WireError> {
    let mut out = Buf::chain(head, &body[..]).chain(tail);
    stream
        .write_all_buf(&mut out)
        .await
        .map_err(WireError::Unanswered)?;
    let mut buf = Buffer::new();
    let parsed = loop {
        match parse_head(buf.unread(), sink.wants_headers())? {
            Some(h) if h.len > MAX_HEAD_BYTES => {
                return Err(WireError::Protocol("response head too large"));
            }
            Some(h) if h.status.is_informational() => {
                if h.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(WireError::Protocol("unexpected 101 Switching Protocols"));
                }
                buf.consume(h.len);
            }
            Some(h) => break h,
            None => {
                if buf.unread().len() >= MAX_HEAD_BYTES {
                    return Err(WireError::Protocol("response head too large"));
                }
                let read = buf.fill(stream).await;
                let read = match read {
                    Err(e) if buf.total == 0 => return Err(WireError::Unanswered(e)),
                    other => other?,
                };
                if read == 0 {
                    return Err(if buf.total == 0 {
                        WireError::ClosedEarly
                    } else {
                        WireError::Protocol("connection closed inside the response head")
                    });
                }
            }
        }
    };
    buf.consume(parsed.len);
    let status = parsed.status;
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else {
        parsed.framing
    };
    sink.head(status, &parsed.headers.unwrap_or_default());
    let (body_bytes, clean_end) = match framing {
        Framing::Empty => (0, true),
        Framing::Length(n) => (read_length(stream, &mut buf, n, sink).await?, true),
        Framing::Chunked => read_chunked(stream, &mut buf, sink).await?,
        Framing::Close => (read_to_close(stream, &mut buf, sink).await?, false),
    };
    Ok(Answered {
        status,
        body_bytes,
        reusable: clean_end && parsed.keep_alive && buf.unread().is_empty(),
    })
}

/// The read buffer of one exchange: `data[start..]` is unread.
struct Buffer {
    data: Vec<u8>,
    start: usize,
    /// Bytes received in all.
    total: usize,
}

impl Buffer {
    fn new() -> Self {
        Buffer {
            data: Vec::with_capacity(INITIAL_BUFFER),
            start: 0,
            total: 0,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Reads more; 0 at the end of the connection.
    async fn fill<S: Io>(&mut self, stream: &mut S) -> std::io::Result<usize> {
        if self.start > 0 && self.data.capacity() - self.data.len() < READ_ROOM {
            self.data.drain(..self.start);
            self.start = 0;
        }
        self.data.reserve(READ_ROOM);
        let n = stream.read_buf(&mut self.data).await?;
        self.total += n;
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

#[derive(Debug)]
struct ParsedHead {
    status: StatusCode,
    framing: Framing,
    keep_alive: bool,
    headers: Option<HeaderMap>,
    /// Bytes the head took.
    len: usize,
}

/// Parses a response head at the start of `bytes`; `None` when more bytes
/// are needed.
fn parse_head(bytes: &[u8], want_headers: bool) -> Result<Option<ParsedHead>, WireError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Protocol("too many header fields"))
        }
        Err(_) => return Err(WireError::Protocol("malformed response head")),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(WireError::Protocol("invalid status code"))?;
    let http10 = response.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    for field in response.headers.iter() {
        if field.name.eq_ignore_ascii_case("content-length") {
            let n =
                parse_length(field.value).ok_or(WireError::Protocol("invalid Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(WireError::Protocol("conflicting Content-Length values"));
            }
            length = Some(n);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding decides; any coding but a final chunked
            // one means the body runs to the end of the connection.
            for coding in tokens(field.value) {
                chunked = coding.eq_ignore_ascii_case(b"chunked");
                other_coding |= !chunked;
            }
        } else if field.name.eq_ignore_ascii_case("connection") {
            for token in tokens(field.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let has_coding = chunked || other_coding;
    let framing = match (has_coding, chunked, length) {
        (true, true, _) => Framing::Chunked,
        (true, false, _) => Framing::Close,
        (false, _, Some(n)) => Framing::Length(n),
        (false, _, None) => Framing::Close,
    };
    let headers = if want_headers {
        let mut map = HeaderMap::with_capacity(response.headers.len());
        for field in response.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(field.name.as_bytes()),
                HeaderValue::from_bytes(field.value),
            ) {
                map.append(n, v);
            }
        }
        Some(map)
    } else {
        None
    };
    // A transfer coding and a length together is a smuggling shape: decode
    // by the coding, never reuse the connection.
    let ambiguous = has_coding && length.is_some();
    let closing = close || (http10 && !keep_alive_token);
    Ok(Some(ParsedHead {
        status,
        framing,
        keep_alive: !closing && !ambiguous,
        headers,
        len,
    }))
}

/// Comma-separated tokens of a field value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A Content-Length value: digits only (repeated equal values, as in
/// `5, 5`, are one value).
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
        if found.is_some_and(|m| m != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

async fn read_length<S: Io>(
    stream: &mut S,
    buf: &mut Buffer,
    length: u64,
    sink: &mut (dyn Sink + Send),
) -> Result<u64, WireError> {
    let mut left = length;
    while left > 0 {
        if buf.unread().is_empty() && buf.fill(stream).await? == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let take = buf
            .unread()
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        sink.data(&buf.unread()[..take]);
        buf.consume(take);
        left -= take as u64;
    }
    Ok(length)
}

async fn read_to_close<S: Io>(
    stream: &mut S,
    buf: &mut Buffer,
    sink: &mut (dyn Sink + Send),
) -> Result<u64, WireError> {
    let mut bytes = 0u64;
    loop {
        if !buf.unread().is_empty() {
            let n = buf.unread().len();
            sink.data(buf.unread());
            buf.consume(n);
            bytes += n as u64;
        }
        if buf.fill(stream).await? == 0 {
            return Ok(bytes);
        }
    }
}

/// Decodes a chunked body; returns its size and whether it ended cleanly.
async fn read_chunked<S: Io>(
    stream: &mut S,
    buf: &mut Buffer,
    sink: &mut (dyn Sink + Send),
) -> Result<(u64, bool), WireError> {
    let mut bytes = 0u64;
    loop {
        let line = next_line(stream, buf).await?;
        let size = chunk_size(&buf.unread()[..line.content])?;
        buf.consume(line.total);
        if size == 0 {
            read_trailers(stream, buf, sink).await?;
            return Ok((bytes, true));
        }
        bytes += read_length(stream, buf, size, sink).await?;
        let end = next_line(stream, buf).await?;
        if end.content != 0 {
            return Err(WireError::Protocol("chunk data longer than its size"));
        }
        buf.consume(end.total);
    }
}

/// Where the next line ends in the buffer (reading more as needed).
#[derive(Debug, Clone, Copy)]
struct Line {
    /// Length without the line ending.
    content: usize,
    /// Length with it.
    total: usize,
}

async fn next_line<S: Io>(stream: &mut S, buf: &mut Buffer) -> Result<Line, WireError> {
    loop {
        if let Some(lf) = buf.unread().iter().position(|b| *b == b'\n') {
            if lf > MAX_LINE_BYTES {
                return Err(WireError::Protocol("chunk line too long"));
            }
            let content = if lf > 0 && buf.unread()[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            return Ok(Line {
                content,
                total: lf + 1,
            });
        }
        if buf.unread().len() > MAX_LINE_BYTES {
            return Err(WireError::Protocol("chunk line too long"));
        }
        if buf.fill(stream).await? == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// The size of a chunk-size line (`1a;ext=1`).
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(WireError::Protocol("invalid chunk size"));
    }
    let text =
        std::str::from_utf8(digits).map_err(|_| WireError::Protocol("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| WireError::Protocol("invalid chunk size"))
}

/// Reads the trailer section (up to the empty line) and hands it over.
async fn read_trailers<S: Io>(
    stream: &mut S,
    buf: &mut Buffer,
    sink: &mut (dyn Sink + Send),
) -> Result<(), WireError> {
    let mut trailers = HeaderMap::new();
    for _ in 0..=MAX_HEADERS {
        let line = next_line(stream, buf).await?;
        if line.content == 0 {
            buf.consume(line.total);
            if !trailers.is_empty() {
                sink.trailers(&trailers);
            }
            return Ok(());
        }
        let text = &buf.unread()[..line.content];
        if let Some(colon) = text.iter().position(|b| *b == b':') {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(text[..colon].trim_ascii()),
                HeaderValue::from_bytes(text[colon + 1..].trim_ascii()),
            ) {
                trailers.append(n, v);
            }
        }
        buf.consume(line.total);
    }
    Err(WireError::Protocol("too many trailer fields"))
}

/// Idle keep-alive connections of one endpoint, newest last.
#[derive(Debug, Default)]
pub struct IdleConns {
    conns: parking_lot::Mutex<Vec<IdleConn>>,
}

#[derive(Debug)]
struct IdleConn {
    stream: UpstreamStream,
    since: Instant,
}

impl IdleConns {
    /// The most recently used connection that is still open and not older
    /// than `max_idle`. Closed or expired ones found on the way are dropped.
    pub fn take(&self, max_idle: Duration) -> Option<UpstreamStream> {
        loop {
            let conn = self.conns.lock().pop()?;
            let mut stream = conn.stream;
            if conn.since.elapsed() <= max_idle && still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` for reuse (at most `max` kept; expired ones dropped).
    pub fn put(&self, stream: UpstreamStream, max: usize, max_idle: Duration) {
        let mut conns = self.conns.lock();
        let expired = conns
            .iter()
            .take_while(|c| c.since.elapsed() > max_idle)
            .count();
        conns.drain(..expired);
        if conns.len() < max {
            conns.push(IdleConn {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle longer than `max_idle` and those the
    /// server has closed; returns how many are left.
    pub fn sweep(&self, max_idle: Duration) -> usize {
        let mut conns = self.conns.lock();
        conns.retain_mut(|c| c.since.elapsed() <= max_idle && still_open(&mut c.stream));
        conns.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().len()
    }
}

/// An idle connection is usable when reading from it would block: the
/// server has neither closed it nor sent anything unasked.
fn still_open(stream: &mut UpstreamStream) -> bool {
    let mut probe = [0u8; 1];
    let mut read = ReadBuf::new(&mut probe);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        Pin::new(stream).poll_read(&mut cx, &mut read),
        Poll::Pending
    )
}

/// What [`replay`] saw: the outcome (error kinds by name) and everything
/// the sink was given.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct Replay {
    pub outcome: Result<(u16, u64), String>,
    /// Advisory: depends on where the last read ended (stray bytes after
    /// an answer are caught when the idle connection is next taken).
    pub reusable: bool,
    pub fields: usize,
    pub body: Vec<u8>,
    pub trailers: usize,
}

/// Runs [`exchange`] against a server that answers `answer` at most `step`
/// bytes per read; for fuzzing and its regression tests.
#[doc(hidden)]
pub fn replay(answer: &[u8], step: usize, head_request: bool, want_headers: bool) -> Replay {
    struct Feed<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl AsyncRead for Feed<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.data.len().min(self.step).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }
    impl AsyncWrite for Feed<'_> {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    struct Seen {
        want: bool,
        fields: usize,
        body: Vec<u8>,
        trailers: usize,
    }
    impl Sink for Seen {
        fn wants_headers(&self) -> bool {
            self.want
        }
        fn head(&mut self, _: StatusCode, headers: &HeaderMap) {
            self.fields = headers.len();
        }
        fn data(&mut self, chunk: &[u8]) {
            self.body.extend_from_slice(chunk);
        }
        fn trailers(&mut self, trailers: &HeaderMap) {
            self.trailers += trailers.len();
        }
    }
    let method = if head_request {
        Method::HEAD
    } else {
        Method::GET
    };
    let mut seen = Seen {
        want: want_headers,
        fields: 0,
        body: Vec::new(),
        trailers: 0,
    };
    let mut feed = Feed {
        data: answer,
        step: step.max(1),
    };
    let head = request_head(&method, "/", &HeaderMap::new());
    let result = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt.block_on(exchange(
            &mut feed,
            &head,
            &Bytes::new(),
            &[],
            &method,
            &mut seen,
        )),
        Err(e) => Err(WireError::Io(e)),
    };
    let (outcome, reusable) = match result {
        Ok(a) => (Ok((a.status.as_u16(), a.body_bytes)), a.reusable),
        Err(WireError::Protocol(why)) => (Err(format!("protocol: {why}")), false),
        Err(WireError::ClosedEarly | WireError::Unanswered(_)) => (Err("unanswered".into()), false),
        Err(WireError::Io(e)) => (Err(format!("io: {:?}", e.kind())), false),
    };
    Replay {
        outcome,
        reusable,
        fields: seen.fields,
        body: seen.body,
        trailers: seen.trailers,
    }
}

/// The properties the `wire` fuzz target checks on one input (first byte:
/// flags and read size): the same outcome and the same body, fields and
/// trailers whether the answer arrives in large reads or small pieces; a
/// body never longer than what arrived.
#[doc(hidden)]
pub fn check_split_properties(data: &[u8]) {
    let Some((&flags, answer)) = data.split_first() else {
        return;
    };
    let (head_request, want) = (flags & 1 == 1, flags & 2 == 2);
    let step = 1 + usize::from(flags >> 2) % 13;
    let mut whole = replay(answer, usize::MAX, head_request, want);
    let mut split = replay(answer, step, head_request, want);
    if let Ok((_, n)) = whole.outcome {
        assert!(n as usize <= answer.len());
        assert_eq!(n as usize, whole.body.len());
    }
    whole.reusable = false;
    split.reusable = false;
    assert_eq!(
        whole, split,
        "the outcome depends on how the bytes arrive (step {step})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    #[derive(Default)]
    struct Collect {
        want: bool,
        status: Option<StatusCode>,
        headers: HeaderMap,
        body: Vec<u8>,
        trailers: HeaderMap,
    }

    impl Sink for Collect {
        fn wants_headers(&self) -> bool {
            self.want
        }
        fn head(&mut self, status: StatusCode, headers: &HeaderMap) {
            self.status = Some(status);
            self.headers = headers.clone();
        }
        fn data(&mut self, chunk: &[u8]) {
            self.body.extend_from_slice(chunk);
        }
        fn trailers(&mut self, trailers: &HeaderMap) {
            self.trailers = trailers.clone();
        }
    }

    /// A server that reads one request head and answers `answer` split in
    /// `pieces` writes; returns the client side and what the server read.
    async fn serve(
        answer: &'static [u8],
        pieces: usize,
        close: bool,
    ) -> (UpstreamStream, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            let step = answer.len().div_ceil(pieces.max(1)).max(1);
            for part in answer.chunks(step) {
                s.write_all(part).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if close {
                let _ = s.shutdown().await;
            } else {
                // Hold the connection open until the client is done.
                let _ = s.read(&mut chunk).await;
            }
            got
        });
        let client = TcpStream::connect(addr).await.unwrap();
        (UpstreamStream::Plain(client), server)
    }

    async fn run(
        answer: &'static [u8],
        pieces: usize,
        close: bool,
        method: Method,
    ) -> (Result<Answered, WireError>, Collect) {
        let (mut stream, _server) = serve(answer, pieces, close).await;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("app-shadow"));
        let head = request_head(&method, "/p?q=1", &headers);
        let mut sink = Collect {
            want: true,
            ..Default::default()
        };
        let r = exchange(&mut stream, &head, &Bytes::new(), &[], &method, &mut sink).await;
        (r, sink)
    }

    #[test]
    fn fuzz_regressions() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-regressions/wire");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            check_split_properties(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn the_request_head_is_serialized_as_written() {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static("a-shadow"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let head = request_head(&Method::POST, "/x?y", &h);
        assert_eq!(
            head,
            b"POST /x?y HTTP/1.1\r\nhost: a-shadow\r\nx-a: 1\r\nx-a: 2\r\n\r\n".to_vec()
        );
    }

    #[tokio::test]
    async fn content_length_bodies_arrive_whole_however_split() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-V: 2\r\n\r\nhello world";
        for pieces in [1, 3, answer.len()] {
            let (r, sink) = run(answer, pieces, false, Method::GET).await;
            let a = r.unwrap();
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.body_bytes, 11);
            assert!(a.reusable, "pieces {pieces}");
            assert_eq!(sink.body, b"hello world");
            assert_eq!(sink.headers["x-v"], "2");
        }
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_with_trailers() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
        for pieces in [1, 4, answer.len()] {
            let (r, sink) = run(answer, pieces, false, Method::GET).await;
            let a = r.unwrap();
            assert_eq!(sink.body, b"hello world", "pieces {pieces}");
            assert_eq!(a.body_bytes, 11);
            assert!(a.reusable);
            assert_eq!(sink.trailers["grpc-status"], "0");
        }
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_bodiless_answers_end_at_the_head() {
        let (r, _) = run(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            2,
            false,
            Method::POST,
        )
        .await;
        let a = r.unwrap();
        assert_eq!(
            (a.status, a.body_bytes, a.reusable),
            (StatusCode::NO_CONTENT, 0, true)
        );
        // HEAD: the length describes a body that is not sent.
        let (r, _) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            1,
            false,
            Method::HEAD,
        )
        .await;
        assert_eq!(r.unwrap().body_bytes, 0);
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close_and_is_not_reused() {
        let (r, sink) = run(
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
            2,
            true,
            Method::GET,
        )
        .await;
        let a = r.unwrap();
        assert_eq!(sink.body, b"until the end");
        assert!(!a.reusable);
        let (r, _) = run(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            1,
            true,
            Method::GET,
        )
        .await;
        assert!(!r.unwrap().reusable);
        let (r, _) = run(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            1,
            true,
            Method::GET,
        )
        .await;
        assert!(!r.unwrap().reusable, "HTTP/1.0 without keep-alive");
    }

    #[tokio::test]
    async fn broken_answers_are_protocol_errors_or_resets() {
        for (answer, want) in [
            (&b"garbage\r\n\r\n"[..], "protocol"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", "protocol"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
                "protocol",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "protocol",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "protocol",
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "protocol"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
                "reset",
            ),
            (b"HTTP/1.1 200 O", "protocol"),
            (b"", "closed"),
        ] {
            let (r, _) = run(answer, 1, true, Method::GET).await;
            let got = match r {
                Err(WireError::Protocol(_)) => "protocol",
                Err(WireError::Io(_)) => "reset",
                Err(WireError::ClosedEarly | WireError::Unanswered(_)) => "closed",
                Ok(a) => panic!("{:?} accepted: {a:?}", String::from_utf8_lossy(answer)),
            };
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(answer));
        }
    }

    #[tokio::test]
    async fn a_length_and_a_coding_together_decode_by_the_coding_and_close() {
        let (r, sink) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            1,
            false,
            Method::GET,
        )
        .await;
        let a = r.unwrap();
        assert_eq!(sink.body, b"ok");
        assert!(!a.reusable);
    }

    #[test]
    fn a_copy_with_trailers_is_chunked_and_names_them() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("app-shadow"));
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("42"));
        trailers.insert(http::header::HOST, HeaderValue::from_static("evil"));
        trailers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let (head, tail) = chunked_request(&Method::POST, "/t", &headers, 5, &trailers);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /t HTTP/1.1\r\nhost: app-shadow\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n5\r\n"
        );
        assert_eq!(
            String::from_utf8(tail).unwrap(),
            "\r\n0\r\nx-sum: 42\r\n\r\n"
        );
        let (head, tail) = chunked_request(&Method::POST, "/t", &headers, 0, &trailers);
        assert!(head.ends_with(b"trailer: x-sum\r\n\r\n"));
        assert_eq!(&tail[..], b"0\r\nx-sum: 42\r\n\r\n");
    }

    #[tokio::test]
    async fn headers_are_built_only_when_wanted() {
        let (mut stream, _server) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n",
            1,
            false,
        )
        .await;
        let head = request_head(&Method::GET, "/", &HeaderMap::new());
        let mut sink = Collect::default();
        exchange(
            &mut stream,
            &head,
            &Bytes::new(),
            &[],
            &Method::GET,
            &mut sink,
        )
        .await
        .unwrap();
        assert!(sink.headers.is_empty());
        assert_eq!(sink.status, Some(StatusCode::OK));
    }

    #[tokio::test]
    async fn idle_connections_closed_by_the_server_are_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = IdleConns::default();
        let open = TcpStream::connect(addr).await.unwrap();
        let (_kept, _) = listener.accept().await.unwrap();
        let closing = TcpStream::connect(addr).await.unwrap();
        let (gone, _) = listener.accept().await.unwrap();
        drop(gone);
        // The server's FIN has arrived once the socket turns readable.
        closing.readable().await.unwrap();
        let max_idle = Duration::from_secs(90);
        idle.put(UpstreamStream::Plain(open), 8, max_idle);
        idle.put(UpstreamStream::Plain(closing), 8, max_idle);
        assert!(idle.take(max_idle).is_some(), "the open connection");
        assert!(idle.take(max_idle).is_none(), "the closed one was dropped");
        assert_eq!(idle.len(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_and_expire() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = IdleConns::default();
        let mut server_sides = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(addr).await.unwrap();
            server_sides.push(listener.accept().await.unwrap().0);
            idle.put(UpstreamStream::Plain(c), 2, Duration::from_secs(90));
        }
        assert_eq!(idle.len(), 2);
        assert!(idle.take(Duration::ZERO).is_none(), "both expired");
        assert_eq!(idle.len(), 0);
    }

    #[tokio::test]
    async fn a_sweep_closes_expired_and_closed_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = IdleConns::default();
        let max_idle = Duration::from_secs(90);
        let kept = TcpStream::connect(addr).await.unwrap();
        let (_kept_peer, _) = listener.accept().await.unwrap();
        let closed = TcpStream::connect(addr).await.unwrap();
        let (closed_peer, _) = listener.accept().await.unwrap();
        drop(closed_peer);
        closed.readable().await.unwrap();
        idle.put(UpstreamStream::Plain(kept), 8, max_idle);
        idle.put(UpstreamStream::Plain(closed), 8, max_idle);
        assert_eq!(idle.sweep(max_idle), 1, "the closed one went");
        assert_eq!(idle.sweep(Duration::ZERO), 0, "the expired one went");
    }
}
