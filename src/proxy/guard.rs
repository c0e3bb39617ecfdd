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
use std::task::{ready, Context, Poll};
use std::time::Duration;

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
    /// HTTP/2, or after an upgrade: no more inspection.
    Passthrough,
    /// Refused: writing the 400, then failing the read.
    Refusing {
        response: &'static [u8],
        written: usize,
    },
    Refused,
}

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
        chunk_size: u64,
        // Past this many bytes without a complete head, the bytes go on to
        // hyper, whose own limit (`limits.max_header_bytes`) answers 431.
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
            chunk_size: 0,
            max_head,
            head_timeout,
            deadline: None,
            handed_on: false,
        }
    }
}

/// What a complete head says about the body that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Fixed(u64),
    Chunked,
    /// CONNECT or an upgrade: stop inspecting after this head.
    Tunnel,
}

/// Checks one request head (`head` ends with the blank line).
fn check_head(head: &[u8]) -> Result<Framing, ()> {
    // Bare LF: every LF must follow a CR.
    for (i, b) in head.iter().enumerate() {
        if *b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Err(());
        }
    }
    let text = std::str::from_utf8(head).map_err(|_| ())?;
    // Empty lines before the request line are allowed (RFC 9112 §2.2) and
    // are no part of the request: the request line is the first non-empty
    // one (found by fuzzing: it was taken to be the empty line, so the real
    // request line counted as a header field).
    let text = text.trim_start_matches("\r\n");
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(())?;
    let method = request_line.split(' ').next().unwrap_or("");
    let (mut length, mut te, mut upgrade) = (None::<&str>, None::<&str>, false);
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(());
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some_and(|l| l != value) {
                return Err(());
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err(());
            }
            te = Some(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    match (length, te) {
        (Some(_), Some(_)) => Err(()),
        (None, Some(t)) if t.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        (None, Some(_)) => Err(()),
        _ if method == "CONNECT" || upgrade => Ok(Framing::Tunnel),
        (Some(l), None) => {
            if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            l.parse().map(Framing::Fixed).map_err(|_| ())
        }
        (None, None) => Ok(Framing::None),
    }
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
                State::Refusing { .. } | State::Refused => return false,
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
                    let Some(end) = find_head_end(&this.pending[start..]) else {
                        if this.pending.len() - start > *this.max_head {
                            // Let hyper answer 431 for what it has.
                            *this.state = State::Passthrough;
                            continue;
                        }
                        return true;
                    };
                    let head = &this.pending[start..start + end];
                    match check_head(head) {
                        Err(()) => {
                            *this.state = State::Refusing {
                                response: if *this.first_message {
                                    BAD_REQUEST
                                } else {
                                    b""
                                },
                                written: 0,
                            };
                            return false;
                        }
                        Ok(framing) => {
                            *this.first_message = false;
                            *this.scanned = start + end;
                            match framing {
                                Framing::None | Framing::Fixed(0) => {
                                    *this.released = *this.scanned;
                                    *this.state = State::Head;
                                }
                                Framing::Fixed(n) => {
                                    *this.released = *this.scanned;
                                    *this.state = State::Fixed(n);
                                }
                                Framing::Chunked => {
                                    *this.state = State::HeldChunked;
                                }
                                Framing::Tunnel => {
                                    *this.released = *this.scanned;
                                    *this.state = State::Passthrough;
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
                        *this.state = State::Head;
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
                                *this.state = State::Head;
                                break;
                            }
                        };
                        i += 1;
                    }
                    if !ok {
                        // A bad first chunk line: the head is still held, refuse cleanly.
                        // Later in the body: the request is already streaming; cut it.
                        *this.state = State::Refusing {
                            response: if held && this.released == &0 {
                                BAD_REQUEST
                            } else {
                                b""
                            },
                            written: 0,
                        };
                        return false;
                    }
                    if matches!(this.state, State::Head) {
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

fn find_head_end(data: &[u8]) -> Option<usize> {
    // Skip leading CRLFs, then find the first empty line (CRLF CRLF, or LF LF for bare-LF heads).
    let skip = data
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let rest = &data[skip..];
    let pos = rest
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| p + 2)
        .into_iter()
        .chain(
            rest.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4),
        )
        .min()?;
    Some(skip + pos)
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
                let this = self.as_mut().project();
                if matches!(this.state, State::Passthrough) && this.pending.is_empty() {
                    *this.handed_on = true;
                    *this.deadline = None;
                    return this.io.poll_read(cx, buf);
                }
                // Inside a fixed-length body: read straight into hyper's
                // buffer, never past the body's end (the next head must be
                // inspected).
                if let State::Fixed(left) = this.state {
                    if this.pending.is_empty() {
                        let limit = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(buf.remaining());
                        let mut direct = ReadBuf::new(buf.initialize_unfilled_to(limit));
                        ready!(this.io.poll_read(cx, &mut direct))?;
                        let n = direct.filled().len();
                        buf.advance(n);
                        *left -= n as u64;
                        if *left == 0 {
                            *this.state = State::Head;
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

    #[test]
    fn heads() {
        let ok: &[(&[u8], Framing)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::None),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                Framing::Fixed(5),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\n",
                Framing::Fixed(5),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                Framing::Tunnel,
            ),
        ];
        for (head, want) in ok {
            assert_eq!(
                check_head(head),
                Ok(*want),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Leading empty lines are skipped: the request line comes after them.
        assert_eq!(
            check_head(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(
            check_head(b"\r\nCONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Ok(Framing::Tunnel)
        );
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
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
        for step in [1, 5, 4096] {
            let (out, failed) = pass(stream, step).await;
            assert!(failed, "step {step}");
            assert_eq!(
                out, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
                "step {step}: only the first request passes"
            );
        }
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
}
