//! The framing guard: reads each HTTP/1 request head on a client
//! connection before hyper does, and refuses the shapes used for request
//! smuggling that hyper tolerates — `Content-Length` together with
//! `Transfer-Encoding`, a `Transfer-Encoding` other than `chunked`, bare
//! LF line ends — and invalid chunk sizes at the start of a chunked body.
//! A refused request gets `400` (on the connection's first request) and
//! the connection is closed; hyper never sees it, so nothing reaches a
//! backend. HTTP/2 connections and upgraded tunnels pass untouched.
//!
//! To tell where the next head starts on a keep-alive connection, the
//! guard follows each message's framing (fixed length or chunked).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest head the guard buffers when no limit is given.
const MAX_HEAD: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line; `digits` seen so far.
    Size {
        digits: usize,
        ext: bool,
    },
    /// Expecting LF after a CR at the end of a size line.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data(u64),
    /// After chunk data: CR then LF.
    DataCr,
    DataLf,
    /// Trailer section: at the start of a line.
    TrailerLineStart,
    TrailerLine,
    TrailerEndLf,
    TrailerLf,
}

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head,
    /// A checked head is held back until the first chunk-size line is seen.
    HeldChunked,
    Fixed(u64),
    Chunked(Chunk),
    /// After the request numbered `.0` on this connection (and its body),
    /// which may start a tunnel: the bytes that follow are held until the
    /// service's answer to it is known (see `TunnelVerdicts`).
    AwaitVerdict(u64),
    /// HTTP/2, or after an upgrade: no more inspection.
    Passthrough,
    /// Refused before anything was handed to hyper: writing the 400, then
    /// failing the read.
    Refusing {
        response: &'static [u8],
        written: usize,
    },
    Refused,
    /// Refused after earlier requests were handed to hyper (keep-alive,
    /// pipelining): hyper still owes them their answers, so the guard does
    /// not write on its own. It hands hyper `POISON` in place of the bad
    /// head; hyper answers the earlier requests, then reads the poison and
    /// answers it 400 itself, in order, and closes. `.0`: bytes handed.
    Poisoning(usize),
    /// After the poison: the client's further bytes are read and dropped
    /// (so that closing sends FIN, not a reset that could destroy the 400
    /// in flight), never handed on.
    Draining,
}

/// What hyper gets in place of a refused head on a connection where it
/// already has requests: a request line whose method is no token, which
/// hyper answers `400 Bad Request` (in order, after the earlier answers)
/// before closing the connection.
const POISON: &[u8] = b"\x01 / HTTP/1.1\r\n\r\n";

pin_project_lite::pin_project! {
    /// An IO wrapper that inspects request framing as it is read.
    pub struct FramingGuard<IO> {
        #[pin]
        io: IO,
        state: State,
        // Bytes read from the socket but not yet handed to hyper.
        pending: Vec<u8>,
        // Of `pending`, how many are checked and may be handed over.
        released: usize,
        // Position in `pending` up to which framing has been followed.
        scanned: usize,
        first_message: bool,
        // Request heads released so far (their number on the connection).
        heads: u64,
        // The current request may start a tunnel: await the verdict on it
        // once its body is through.
        tunnel_pending: bool,
        // How the service answered each request (None: no tunnel ever
        // starts, every request is followed by another to inspect).
        verdicts: Option<Arc<TunnelVerdicts>>,
        chunk_size: u64,
        // A head longer than this (`limits.max_header_bytes`) is answered
        // 431 here: hyper's read buffer is larger, for bodies
        // (`proxy::server::READ_BUFFER`).
        max_head: usize,
        // Time for the first request head (or the HTTP/2 preface), armed on
        // the first read and dropped once bytes are handed on: until then
        // neither hyper's `header_read_timeout` nor anything else runs
        // (hyper-util waits for enough bytes to tell the version).
        head_timeout: Option<Duration>,
        deadline: Option<Pin<Box<Sleep>>>,
        handed_on: bool,
    }
}

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 64\r\n\r\n{\"error\":\"bad_request\",\"message\":\"ambiguous or invalid framing\"}";

/// The answer to a request head over `limits.max_header_bytes`.
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 104\r\n\r\n{\"error\":\"request_header_fields_too_large\",\"message\":\"the request head is over limits.max_header_bytes\"}";

impl<IO> FramingGuard<IO> {
    pub fn new(io: IO) -> Self {
        Self::with_limits(io, MAX_HEAD, None)
    }

    /// A guard that buffers at most `max_head` bytes of an incomplete head
    /// (the configured `limits.max_header_bytes`), so a connection holds no
    /// more than that before hyper refuses the head, and that closes the
    /// connection when its first head (or HTTP/2 preface) is not complete
    /// within `head_timeout` (`limits.header_read_timeout`; later heads are
    /// timed by hyper).
    pub fn with_limits(io: IO, max_head: usize, head_timeout: Option<Duration>) -> Self {
        FramingGuard {
            io,
            state: State::Head,
            pending: Vec::new(),
            released: 0,
            scanned: 0,
            first_message: true,
            heads: 0,
            tunnel_pending: false,
            verdicts: None,
            chunk_size: 0,
            max_head,
            head_timeout,
            deadline: None,
            handed_on: false,
        }
    }

    /// Lets a 101 (or a 2xx to CONNECT) sent by the service turn the
    /// connection into a tunnel: `verdicts` is told how each request was
    /// answered. Without it, the guard never stops inspecting.
    pub fn with_verdicts(mut self, verdicts: Arc<TunnelVerdicts>) -> Self {
        self.verdicts = Some(verdicts);
        self
    }
}

/// How the service answered the requests of one HTTP/1 connection, as far
/// as the guard needs to know: whether a tunnel started. Shared between
/// the connection's service (which numbers the requests in the order hyper
/// hands them over, one at a time) and its guard (which numbers the heads
/// it releases in the same order).
///
/// Before this, any head with `Upgrade:` (or a CONNECT) switched the guard
/// off for the rest of the connection, whether or not a tunnel followed:
/// the next requests went to hyper, and to the backend, unchecked.
#[derive(Debug, Default)]
pub struct TunnelVerdicts {
    calls: AtomicU64,
    state: Mutex<VerdictState>,
}

#[derive(Debug, Default)]
struct VerdictState {
    /// Requests answered (in order; hyper serves one at a time).
    decided: u64,
    /// The request whose answer started a tunnel, if any.
    tunnel: Option<u64>,
    /// The guard, waiting for a verdict.
    waker: Option<Waker>,
}

impl TunnelVerdicts {
    /// Called as the service receives a request: its number on the connection.
    pub fn request(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Called when the answer to request `n` is known, before hyper writes
    /// it: `tunnel` when it is a 101, or a 2xx to CONNECT.
    pub fn decide(&self, n: u64, tunnel: bool) {
        let waker = {
            let mut s = self.state.lock();
            s.decided = s.decided.max(n);
            if tunnel {
                s.tunnel = Some(n);
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether request `n` started a tunnel, once known; else the waker is kept.
    fn verdict(&self, n: u64, waker: &Waker) -> Option<bool> {
        let mut s = self.state.lock();
        if s.decided >= n {
            return Some(s.tunnel == Some(n));
        }
        s.waker = Some(waker.clone());
        None
    }
}

/// What a complete head says about the body that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    None,
    Fixed(u64),
    Chunked,
}

/// A checked request head: its body's framing, and whether it may turn
/// the connection into a tunnel (CONNECT, or any `Upgrade` field). After
/// such a request the guard inspects nothing further until the answer is
/// known: a 101 (or a 2xx to CONNECT) starts a tunnel, anything else means
/// the next bytes are another request to inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    framing: RequestFraming,
    tunnel: bool,
}

/// The largest `Content-Length` hyper can represent (`u64::MAX - 2`): a
/// larger one would be answered 431 by hyper; it is a bad request (400).
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// RFC 9110 §5.6.2 `tchar`: the bytes of a field name (and a method).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.5: a field value is HTAB, SP, VCHAR and obs-text (0x80–0xFF,
/// Latin-1 and the like, which HTTP/2 forwards as well); other control
/// bytes (NUL, a bare CR, DEL …) are refused.
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// Optional whitespace (SP / HTAB) trimmed at both ends.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Checks one request head (`head` ends with the blank line).
fn check_head(head: &[u8]) -> Result<Head, ()> {
    // Bare LF: every LF must follow a CR.
    for (i, b) in head.iter().enumerate() {
        if *b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Err(());
        }
    }
    // Empty lines before the request line are allowed (RFC 9112 §2.2) and
    // are no part of the request: the request line is the first non-empty
    // one (found by fuzzing: it was taken to be the empty line, so the real
    // request line counted as a header field).
    let mut text = head;
    while let [b'\r', b'\n', rest @ ..] = text {
        text = rest;
    }
    let mut lines = text
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(())?;
    let method = request_line.split(|b| *b == b' ').next().unwrap_or(b"");
    let (mut length, mut te, mut upgrade) = (None::<&[u8]>, None::<&[u8]>, false);
    for line in lines.filter(|l| !l.is_empty()) {
        let colon = line.iter().position(|b| *b == b':').ok_or(())?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // A name is a token: no whitespace before the colon (RFC 9112
        // §5.1), no obs-fold (a line starting with SP/HTAB, §5.2).
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(());
        }
        if !value.iter().all(|b| is_field_value_byte(*b)) {
            return Err(());
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some_and(|l| l != value) {
                return Err(());
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te.is_some() {
                return Err(());
            }
            te = Some(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    let tunnel = method == b"CONNECT" || upgrade;
    let framing = match (length, te) {
        (Some(_), Some(_)) => return Err(()),
        (None, Some(t)) if t.eq_ignore_ascii_case(b"chunked") => RequestFraming::Chunked,
        (None, Some(_)) => return Err(()),
        (Some(l), None) => {
            // Digits only; unparseable or too large for hyper is 400.
            if l.is_empty() || !l.iter().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(l)
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if n > MAX_CONTENT_LENGTH {
                return Err(());
            }
            RequestFraming::Fixed(n)
        }
        (None, None) => RequestFraming::None,
    };
    Ok(Head { framing, tunnel })
}

impl<IO: AsyncRead + AsyncWrite> FramingGuard<IO> {
    /// Advances the framing state over `pending[scanned..]`, releasing
    /// checked bytes. Returns false when the request is refused.
    fn advance(self: Pin<&mut Self>) -> bool {
        let this = self.project();
        loop {
            let data = &this.pending[*this.scanned..];
            if data.is_empty() {
                return true;
            }
            match this.state {
                State::Passthrough => {
                    *this.scanned = this.pending.len();
                    *this.released = *this.scanned;
                    return true;
                }
                State::Refusing { .. } | State::Refused | State::Poisoning(_) | State::Draining => {
                    return false
                }
                // Held until `poll_read` learns the verdict.
                State::AwaitVerdict(_) => return true,
                State::Head => {
                    let start = *this.scanned;
                    if *this.first_message && this.pending.len() >= start + H2_PREFACE.len().min(3)
                    {
                        let n = (this.pending.len() - start).min(H2_PREFACE.len());
                        if this.pending[start..start + n] == H2_PREFACE[..n] {
                            if n == H2_PREFACE.len() {
                                *this.state = State::Passthrough;
                                continue;
                            }
                            return true;
                        }
                    }
                    // Leading empty lines before a request are allowed (RFC 9112 §2.2).
                    let end = find_head_end(&this.pending[start..]);
                    let length = end.unwrap_or(this.pending.len() - start);
                    let checked = if length > *this.max_head {
                        // Whole or not, longer than the limit: 431.
                        Err(HEAD_TOO_LARGE)
                    } else if let Some(end) = end {
                        check_head(&this.pending[start..start + end])
                            .map(|checked| (checked, end))
                            .map_err(|()| BAD_REQUEST)
                    } else {
                        return true;
                    };
                    match checked {
                        Err(response) => {
                            // Earlier heads on this connection were handed on.
                            let earlier = *this.heads > 0;
                            *this.state = refuse_head(
                                this.pending,
                                this.scanned,
                                *this.released,
                                earlier,
                                response,
                            );
                            return false;
                        }
                        Ok((checked, end)) => {
                            *this.first_message = false;
                            *this.heads += 1;
                            *this.tunnel_pending = checked.tunnel;
                            *this.scanned = start + end;
                            match checked.framing {
                                RequestFraming::None | RequestFraming::Fixed(0) => {
                                    *this.released = *this.scanned;
                                    *this.state = message_done(
                                        this.tunnel_pending,
                                        *this.heads,
                                        this.verdicts,
                                    );
                                }
                                RequestFraming::Fixed(n) => {
                                    *this.released = *this.scanned;
                                    *this.state = State::Fixed(n);
                                }
                                RequestFraming::Chunked => {
                                    *this.state = State::HeldChunked;
                                }
                            }
                        }
                    }
                }
                State::Fixed(n) => {
                    let take = (*n).min(data.len() as u64);
                    *this.scanned += take as usize;
                    *this.released = *this.scanned;
                    *n -= take;
                    if *n == 0 {
                        *this.state = message_done(this.tunnel_pending, *this.heads, this.verdicts);
                    }
                }
                State::HeldChunked | State::Chunked(_) => {
                    let held = matches!(this.state, State::HeldChunked);
                    let mut chunk = match this.state {
                        State::Chunked(c) => *c,
                        _ => Chunk::Size {
                            digits: 0,
                            ext: false,
                        },
                    };
                    let mut i = 0;
                    let mut ok = true;
                    let mut size_line_done = false;
                    while i < data.len() {
                        let b = data[i];
                        chunk = match chunk {
                            Chunk::Size { digits, ext } => match b {
                                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if !ext => {
                                    if digits >= 16 {
                                        ok = false;
                                        break;
                                    }
                                    let v = (b as char).to_digit(16).unwrap_or(0) as u64;
                                    *this.chunk_size = *this.chunk_size * 16 + v;
                                    Chunk::Size {
                                        digits: digits + 1,
                                        ext,
                                    }
                                }
                                b';' if digits > 0 => Chunk::Size { digits, ext: true },
                                b'\r' if digits > 0 => Chunk::SizeLf {
                                    size: *this.chunk_size,
                                },
                                _ if ext && b != b'\n' && b != b'\r' => Chunk::Size { digits, ext },
                                _ => {
                                    ok = false;
                                    break;
                                }
                            },
                            Chunk::SizeLf { size } => {
                                if b != b'\n' {
                                    ok = false;
                                    break;
                                }
                                *this.chunk_size = 0;
                                size_line_done = true;
                                if size == 0 {
                                    Chunk::TrailerLineStart
                                } else {
                                    Chunk::Data(size)
                                }
                            }
                            Chunk::Data(left) => {
                                let take = left.min((data.len() - i) as u64);
                                i += take as usize;
                                let left = left - take;
                                chunk = if left == 0 {
                                    Chunk::DataCr
                                } else {
                                    Chunk::Data(left)
                                };
                                continue;
                            }
                            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                            Chunk::DataLf if b == b'\n' => Chunk::Size {
                                digits: 0,
                                ext: false,
                            },
                            Chunk::DataCr | Chunk::DataLf => {
                                ok = false;
                                break;
                            }
                            Chunk::TrailerLineStart if b == b'\r' => Chunk::TrailerEndLf,
                            Chunk::TrailerLineStart | Chunk::TrailerLine if b == b'\n' => {
                                ok = false;
                                break;
                            }
                            Chunk::TrailerLineStart => Chunk::TrailerLine,
                            Chunk::TrailerLine if b == b'\r' => Chunk::TrailerLf,
                            Chunk::TrailerLine => Chunk::TrailerLine,
                            Chunk::TrailerLf if b == b'\n' => Chunk::TrailerLineStart,
                            Chunk::TrailerLf => {
                                ok = false;
                                break;
                            }
                            Chunk::TrailerEndLf => {
                                if b != b'\n' {
                                    ok = false;
                                    break;
                                }
                                i += 1;
                                *this.scanned += i;
                                *this.released = *this.scanned;
                                *this.state =
                                    message_done(this.tunnel_pending, *this.heads, this.verdicts);
                                break;
                            }
                        };
                        i += 1;
                    }
                    if !ok {
                        // A bad first chunk line: the head is still held, refuse cleanly.
                        // Later in the body: the request is already streaming; cut it.
                        *this.state = if held {
                            let earlier = *this.heads > 1;
                            refuse_head(
                                this.pending,
                                this.scanned,
                                *this.released,
                                earlier,
                                BAD_REQUEST,
                            )
                        } else {
                            State::Refusing {
                                response: b"",
                                written: 0,
                            }
                        };
                        return false;
                    }
                    if matches!(this.state, State::Head | State::AwaitVerdict(_)) {
                        continue;
                    }
                    *this.scanned += i;
                    // Release once the first size line has been validated.
                    let first_line_done = size_line_done || !held;
                    if first_line_done {
                        *this.released = *this.scanned;
                    }
                    *this.state = State::Chunked(chunk);
                    if held && !first_line_done {
                        *this.state = State::HeldChunked;
                        // Keep the partial size-line progress by rescanning from the
                        // start of the body next time.
                        *this.scanned -= i;
                        *this.chunk_size = 0;
                    }
                    return true;
                }
            }
        }
    }
}

/// The state after a refused head that starts at `pending[at..]` (all
/// before it is checked). With nothing handed to hyper yet, the guard
/// writes `response` itself; after earlier requests, hyper gets `POISON`
/// in its place so that it answers them first and then 400 (see
/// `State::Poisoning`).
fn refuse_head(
    pending: &mut Vec<u8>,
    scanned: &mut usize,
    at: usize,
    earlier: bool,
    response: &'static [u8],
) -> State {
    if !earlier {
        return State::Refusing {
            response,
            written: 0,
        };
    }
    pending.truncate(at);
    *scanned = at;
    State::Poisoning(0)
}

/// The state once a request (head and body) has passed: the next head, or,
/// after a request that may start a tunnel, the wait for its answer.
fn message_done(
    tunnel_pending: &mut bool,
    heads: u64,
    verdicts: &Option<Arc<TunnelVerdicts>>,
) -> State {
    match (std::mem::take(tunnel_pending), verdicts) {
        (true, Some(_)) => State::AwaitVerdict(heads),
        _ => State::Head,
    }
}

fn find_head_end(data: &[u8]) -> Option<usize> {
    // Skip leading CRLFs, then find the first empty line (CRLF CRLF, or LF LF
    // for bare-LF heads). One pass over the line ends, stopping at the first
    // empty line: what follows a head (a body, the next request) is never
    // scanned. Before, two full scans for each pattern ran over everything
    // read so far, 16 KiB of body per request (measured: 3.4% of the proxy's
    // CPU with 256 KiB POST bodies, docs/benchmarks.md).
    let skip = data
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let rest = &data[skip..];
    // The first LF that ends an empty line gives the earliest end of either
    // form, as a LF LF ends one byte after its first LF and a CR LF CR LF
    // two bytes after.
    for lf in memchr::memchr_iter(b'\n', rest) {
        match rest.get(lf + 1) {
            Some(b'\n') => return Some(skip + lf + 2),
            Some(b'\r') if lf > 0 && rest[lf - 1] == b'\r' && rest.get(lf + 2) == Some(&b'\n') => {
                return Some(skip + lf + 3)
            }
            _ => {}
        }
    }
    None
}

impl<IO: AsyncRead + AsyncWrite> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            // Hand over checked bytes first (a refusal comes after them).
            {
                let this = self.as_mut().project();
                if *this.released > 0 {
                    *this.handed_on = true;
                    *this.deadline = None;
                    let n = (*this.released).min(buf.remaining());
                    buf.put_slice(&this.pending[..n]);
                    this.pending.drain(..n);
                    *this.released -= n;
                    *this.scanned -= n;
                    return Poll::Ready(Ok(()));
                }
            }
            // Refusing: write the 400 (if any), then fail.
            {
                let mut this = self.as_mut().project();
                if let State::Refusing { response, written } = this.state {
                    while *written < response.len() {
                        let n = ready!(this.io.as_mut().poll_write(cx, &response[*written..]))?;
                        if n == 0 {
                            break;
                        }
                        *written += n;
                    }
                    let _ = this.io.poll_flush(cx);
                    *this.state = State::Refused;
                }
            }
            if matches!(self.state, State::Refused) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "refused request framing",
                )));
            }
            {
                let mut this = self.as_mut().project();
                match *this.state {
                    State::Poisoning(handed) => {
                        let n = (POISON.len() - handed).min(buf.remaining());
                        buf.put_slice(&POISON[handed..handed + n]);
                        *this.state = if handed + n == POISON.len() {
                            State::Draining
                        } else {
                            State::Poisoning(handed + n)
                        };
                        return Poll::Ready(Ok(()));
                    }
                    State::Draining => {
                        // Whatever the client still sends is dropped; its
                        // end is hyper's end of input.
                        let mut scratch = [0u8; 4096];
                        for _ in 0..16 {
                            let mut rb = ReadBuf::new(&mut scratch);
                            ready!(this.io.as_mut().poll_read(cx, &mut rb))?;
                            if rb.filled().is_empty() {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        // A bounded amount per poll: let other tasks run.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    State::AwaitVerdict(n) => {
                        let verdict = match this.verdicts.as_ref() {
                            Some(v) => v.verdict(n, cx.waker()),
                            None => Some(false),
                        };
                        match verdict {
                            None => return Poll::Pending,
                            Some(true) => *this.state = State::Passthrough,
                            Some(false) => *this.state = State::Head,
                        }
                        self.as_mut().advance();
                        continue;
                    }
                    _ => {}
                }
                if matches!(this.state, State::Passthrough) && this.pending.is_empty() {
                    *this.handed_on = true;
                    *this.deadline = None;
                    return this.io.poll_read(cx, buf);
                }
                // Inside a fixed-length body: read straight into hyper's
                // buffer, as much as one read brings (an uninitialised
                // buffer is not zeroed: neither `TcpStream` nor
                // tokio-rustls initialises what it does not fill). What a
                // read brings past the body's end (the next pipelined
                // request) is taken back into `pending`, as the next head
                // must be inspected before hyper sees it.
                if let State::Fixed(left) = this.state {
                    if this.pending.is_empty() {
                        let start = buf.filled().len();
                        ready!(this.io.poll_read(cx, buf))?;
                        let n = buf.filled().len() - start;
                        let body = usize::try_from(*left).unwrap_or(usize::MAX).min(n);
                        if n > body {
                            this.pending
                                .extend_from_slice(&buf.filled()[start + body..]);
                            buf.set_filled(start + body);
                        }
                        *left -= body as u64;
                        if *left == 0 {
                            *this.state =
                                message_done(this.tunnel_pending, *this.heads, this.verdicts);
                            self.as_mut().advance();
                        }
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            // Read more from the socket.
            // Uninitialised scratch space: no memset per read.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
            let mut rb = ReadBuf::uninit(&mut chunk);
            {
                let this = self.as_mut().project();
                if this.io.poll_read(cx, &mut rb)?.is_pending() {
                    if !*this.handed_on {
                        if let Some(timeout) = *this.head_timeout {
                            let deadline = this
                                .deadline
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                            if deadline.as_mut().poll(cx).is_ready() {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "no complete request head within limits.header_read_timeout",
                                )));
                            }
                        }
                    }
                    return Poll::Pending;
                }
            }
            if rb.filled().is_empty() {
                // EOF: hand over whatever is left so hyper sees the truncation.
                let this = self.as_mut().project();
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                *this.released = this.pending.len();
                *this.scanned = this.pending.len();
                *this.state = State::Passthrough;
                continue;
            }
            self.as_mut()
                .project()
                .pending
                .extend_from_slice(rb.filled());
            self.as_mut().advance();
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What the guard made of a byte stream: how many leading bytes it let
/// through (checked requests), and whether it refused what came next.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    pub released: usize,
    pub refused: bool,
}

/// The properties the `guard` fuzz target checks on one input (first byte:
/// a read size): the same verdict whether the bytes arrive at once, one by
/// one or in pieces of 2–62; when refused, never fewer bytes let through in
/// pieces than at once (a chunked body's checked chunks go on before a
/// later bad one cuts the stream); and whatever was let through is itself
/// acceptable.
#[doc(hidden)]
pub fn check_split_properties(input: &[u8]) {
    let Some((&step, bytes)) = input.split_first() else {
        return;
    };
    let whole = inspect(bytes, bytes.len().max(1));
    assert!(whole.released <= bytes.len());
    for step in [1, usize::from(step % 61) + 2] {
        let split = inspect(bytes, step);
        assert_eq!(split.refused, whole.refused, "step {step}");
        if whole.refused {
            assert!(split.released >= whole.released, "step {step}");
        } else {
            assert_eq!(split, whole, "step {step}");
        }
        let prefix = &bytes[..split.released];
        assert!(!inspect(prefix, prefix.len().max(1)).refused, "step {step}");
    }
}

/// Runs the guard's framing state machine over `bytes` as if they arrived
/// `step` bytes at a time, with no I/O. For fuzzing and tests: the verdict
/// must not depend on `step`.
#[doc(hidden)]
pub fn inspect(bytes: &[u8], step: usize) -> Inspection {
    let mut guard = FramingGuard::new(NoIo);
    let mut guard = Pin::new(&mut guard);
    let mut released = 0;
    for piece in bytes.chunks(step.max(1)) {
        guard.as_mut().project().pending.extend_from_slice(piece);
        let ok = guard.as_mut().advance();
        // Hand the checked bytes on, as `poll_read` does.
        let this = guard.as_mut().project();
        let n = *this.released;
        this.pending.drain(..n);
        *this.scanned -= n;
        *this.released = 0;
        released += n;
        if !ok {
            return Inspection {
                released,
                refused: true,
            };
        }
    }
    Inspection {
        released,
        refused: false,
    }
}

/// A transport that is never read or written (for `inspect`).
struct NoIo;

impl AsyncRead for NoIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for NoIo {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two-scan search `find_head_end` replaced, kept as the reference.
    fn head_end_by_windows(data: &[u8]) -> Option<usize> {
        let skip = data
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        let rest = &data[skip..];
        let lf = rest.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
        let crlf = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4);
        Some(skip + lf.into_iter().chain(crlf).min()?)
    }

    #[test]
    fn head_end_matches_the_two_scan_search() {
        // Every string of up to 7 bytes over the alphabet that matters.
        let alphabet = [b'\r', b'\n', b'a'];
        let mut checked = 0;
        for len in 0..=7u32 {
            for mut code in 0..3usize.pow(len) {
                let mut s = Vec::new();
                for _ in 0..len {
                    s.push(alphabet[code % 3]);
                    code /= 3;
                }
                assert_eq!(find_head_end(&s), head_end_by_windows(&s), "{s:?}");
                checked += 1;
            }
        }
        assert!(checked > 3000);
        let req = b"\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\n\n";
        assert_eq!(find_head_end(req), head_end_by_windows(req));
        assert_eq!(find_head_end(req), Some(req.len() - 5));
    }

    #[test]
    fn heads() {
        let ok: &[(&[u8], RequestFraming)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestFraming::None),
            // obs-text (Latin-1) in a field value is allowed (RFC 9110 §5.5).
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xe9\r\n\r\n",
                RequestFraming::None,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551613\r\n\r\n",
                RequestFraming::Fixed(u64::MAX - 2),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                RequestFraming::Fixed(5),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\n",
                RequestFraming::Fixed(5),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                RequestFraming::Chunked,
            ),
        ];
        for (head, want) in ok {
            assert_eq!(
                check_head(head),
                Ok(Head {
                    framing: *want,
                    tunnel: false
                }),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Requests that may start a tunnel are marked, their framing kept.
        let tunnels: &[(&[u8], RequestFraming)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                RequestFraming::None,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n",
                RequestFraming::None,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nContent-Length: 3\r\n\r\n",
                RequestFraming::Fixed(3),
            ),
            (
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                RequestFraming::None,
            ),
        ];
        for (head, want) in tunnels {
            assert_eq!(
                check_head(head),
                Ok(Head {
                    framing: *want,
                    tunnel: true
                }),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Leading empty lines are skipped: the request line comes after them.
        assert_eq!(
            check_head(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Head {
                framing: RequestFraming::None,
                tunnel: false
            })
        );
        assert_eq!(
            check_head(b"\r\nCONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Ok(Head {
                framing: RequestFraming::None,
                tunnel: true
            })
        );
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
            // Whitespace before the colon, obs-fold, control bytes in a value.
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            // Too large for hyper, or for u64: 400, not 431.
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ];
        for head in bad {
            assert!(
                check_head(head).is_err(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    /// Feeds `input` in pieces of `step` bytes; returns what the guard hands on
    /// and whether the read failed.
    async fn pass(input: &[u8], step: usize) -> (Vec<u8>, bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut guard = FramingGuard::new(server);
        let data = input.to_vec();
        let writer = tokio::spawn(async move {
            for piece in data.chunks(step) {
                if client.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        });
        let mut out = Vec::new();
        let failed = guard.read_to_end(&mut out).await.is_err();
        drop(guard);
        let _ = writer.await;
        (out, failed)
    }

    #[tokio::test]
    async fn keep_alive_messages_pass_whole_in_any_split() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nx\
GET /b HTTP/1.1\r\nHost: a\r\n\r\n\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\n\r\n\n\r\n0\r\nX-Trailer: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: a\r\n\r\n";
        for step in [1, 2, 3, 7, 64, 4096] {
            let (out, failed) = pass(stream, step).await;
            assert!(!failed, "step {step}");
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(stream),
                "step {step}"
            );
        }
    }

    #[tokio::test]
    async fn a_smuggled_second_request_is_cut_off() {
        let stream: &[u8] = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // The first request passes; in place of the second, hyper gets a
        // head it refuses itself (400, after answering the first), and
        // nothing of the smuggled request.
        let mut want = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        want.extend_from_slice(POISON);
        for step in [1, 5, 4096] {
            let (out, _) = pass(stream, step).await;
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want),
                "step {step}: only the first request passes"
            );
        }
        // Refused as the connection's first request: the guard's own 400.
        let (out, failed) = pass(&stream[28..], 4096).await;
        assert!(failed);
        assert!(out.is_empty());
    }

    #[test]
    fn inspect_gives_the_same_verdict_however_the_bytes_are_split() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let whole = inspect(stream, stream.len());
        assert!(whole.refused);
        assert_eq!(&stream[whole.released..whole.released + 6], b"GET /b");
        for step in 1..40 {
            assert_eq!(inspect(stream, step), whole, "step {step}");
        }
        // An incomplete head is held back, not refused.
        let partial = inspect(b"GET / HTTP/1.1\r\nHost: a\r\n", 3);
        assert_eq!(
            partial,
            Inspection {
                released: 0,
                refused: false
            }
        );
    }

    #[test]
    fn inspection_goes_on_after_a_head_that_may_start_a_tunnel() {
        // Without a service to say otherwise, no tunnel starts: the next
        // request is inspected (and here refused) like any other.
        let first: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n";
        let mut stream = first.to_vec();
        stream.extend_from_slice(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        for step in [1, 7, stream.len()] {
            assert_eq!(
                inspect(&stream, step),
                Inspection {
                    released: first.len(),
                    refused: true
                },
                "step {step}"
            );
        }
    }

    #[test]
    fn fuzz_regressions() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-regressions/guard");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let input = std::fs::read(entry.unwrap().path()).unwrap();
            check_split_properties(&input);
            n += 1;
        }
        assert!(n > 0);
    }

    #[tokio::test]
    async fn http2_preface_passes_untouched() {
        let mut stream = H2_PREFACE.to_vec();
        stream.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0 anything \n\n goes");
        for step in [1, 4096] {
            let (out, failed) = pass(&stream, step).await;
            assert!(!failed);
            assert_eq!(out, stream);
        }
    }
}

#[cfg(test)]
mod streaming_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn chunks_are_released_as_they_arrive() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut guard = FramingGuard::new(server);
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        client.write_all(head).await.unwrap();
        client.write_all(b"7\r\npart-1 \r\n").await.unwrap();
        let mut got = Vec::new();
        let want = head.len() + 12;
        while got.len() < want {
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), guard.read(&mut buf))
                .await
                .expect("the first chunk must be handed on without waiting for more")
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), want);
    }

    /// Reads from the guard until `want` bytes came or it ends.
    async fn read_from<IO: AsyncRead + AsyncWrite + Unpin>(
        guard: &mut FramingGuard<IO>,
        want: usize,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            let mut buf = vec![0u8; 1 << 16];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(2), guard.read(&mut buf));
            match read.await.expect("the guard must hand on what it has") {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    }

    /// The guard's own answers declare their bodies' true lengths.
    #[test]
    fn refusals_are_well_framed() {
        for response in [BAD_REQUEST, HEAD_TOO_LARGE] {
            let text = std::str::from_utf8(response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap();
            assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{head}");
            serde_json::from_str::<serde_json::Value>(body).unwrap();
        }
    }

    /// A head over the limit is answered 431 by the guard, whole or not
    /// (hyper's read buffer is larger); after requests already handed on,
    /// it is replaced by `POISON`.
    #[tokio::test]
    async fn a_head_over_the_limit_is_431() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n",
            "a".repeat(2000)
        );
        let fits = "GET / HTTP/1.1\r\nHost: a\r\nX-Small: b\r\n\r\n";
        for (sent, earlier) in [
            (big.clone(), false),
            (format!("{big}\r\n"), false),
            (format!("{fits}{big}\r\n"), true),
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut guard = FramingGuard::with_limits(server, 1024, None);
            client.write_all(sent.as_bytes()).await.unwrap();
            client.shutdown().await.unwrap();
            let got = read_from(&mut guard, usize::MAX).await;
            drop(guard);
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            if earlier {
                assert_eq!(got, [fits.as_bytes(), POISON].concat());
            } else {
                assert!(got.is_empty(), "nothing of it is handed on");
                assert_eq!(answer, HEAD_TOO_LARGE);
            }
        }
        // At the limit, it passes.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut guard = FramingGuard::with_limits(server, fits.len(), None);
        client.write_all(fits.as_bytes()).await.unwrap();
        assert_eq!(read_from(&mut guard, fits.len()).await, fits.as_bytes());
    }

    /// A fixed-length body is read straight into the caller's buffer; what
    /// that read brings past the body's end is the next head, and it is
    /// inspected like any other: a good one is handed on whole, a smuggling
    /// shape is never handed on.
    #[tokio::test]
    async fn a_head_read_with_the_end_of_a_body_is_still_inspected() {
        let head = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
        let good = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let bad = b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for (next, pass) in [(&good[..], true), (&bad[..], false)] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut guard = FramingGuard::new(server);
            client.write_all(head).await.unwrap();
            // The head alone first, so that the body is read directly.
            assert_eq!(read_from(&mut guard, head.len()).await, head);
            let mut rest = b"hello".to_vec();
            rest.extend_from_slice(next);
            client.write_all(&rest).await.unwrap();
            let mut got = read_from(&mut guard, 5).await;
            assert_eq!(got, b"hello", "a direct read stops at the body's end");
            if pass {
                got = read_from(&mut guard, next.len()).await;
                assert_eq!(got, next);
            } else {
                drop(client);
                got = read_from(&mut guard, usize::MAX).await;
                assert_eq!(got, POISON, "the bad head is replaced, never handed on");
            }
        }
    }
}
