//! A lean HTTP/1.1 exchange for mirror copies.
//!
//! A copy is a request whose body streams from the copy's queue (the tee
//! hands on the client's chunks as the primary reads them) and whose answer
//! nobody waits for: the proxy reads it to its end, counts it and, when
//! comparing, keeps a bounded capture. hyper's pooled client is built for
//! the other case (streaming both ways, a connection task per connection, a
//! dispatch channel per connection) and costs about 50 KiB per connection
//! held open by a slow shadow — 50 MiB for the default 1024 copies in
//! flight. Here the copy's own task owns its connection for the exchange:
//! it writes the head and the body's pieces as [`Segments`] (each piece a
//! `Bytes` clone with its chunk framing when the body is chunked, several
//! in one vectored write), parses the answer with `httparse` into a small
//! buffer ([`read_answer`]) and hands the body to a [`Sink`] chunk by
//! chunk; then the connection goes back to the endpoint's idle list.
//! Nothing else is allocated per connection.
//!
//! Framing follows RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304;
//! `Transfer-Encoding` whose last coding is `chunked` is decoded (trailers
//! read and handed over); any other `Transfer-Encoding`, or no length at
//! all, reads to the end of the connection; `Content-Length` must be one
//! valid number (repeated equal values allowed). Interim 1xx answers are
//! skipped. A connection is reused only after a complete answer that did
//! not ask to close it and left no stray bytes behind.
//!
//! Files: the answer's parser (`parse`: head, framing, chunked bodies and
//! trailers) and the fuzz harness (`fuzz`). Idle connections between
//! copies wait in the upstream endpoint's list (`crate::upstream`), which
//! owns the connections; `crate::mirror::client` takes and returns them.

mod fuzz;
mod parse;

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

#[doc(hidden)]
pub use fuzz::{check_split_properties, replay, Replay};
use parse::{parse_head, read_chunked, read_length, read_to_close, Buffer, ResponseFraming};

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

/// Bytes queued for one (vectored) write: the request head, body chunks
/// as they are (`Bytes` clones) and their framing. Written with
/// `write_all_buf`, which writes vectored where the stream allows.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Segments {
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }

    /// Queues a piece of the body with its framing (a chunk of its own
    /// when `chunked`).
    pub fn body(&mut self, data: &Bytes, chunked: bool) {
        if data.is_empty() {
            return;
        }
        if chunked {
            self.push(Bytes::from(format!("{:x}\r\n", data.len())));
            self.push(data.clone());
            self.push(Bytes::from_static(b"\r\n"));
        } else {
            self.push(data.clone());
        }
    }

    /// Queues the end of a chunked body: the last chunk and the trailer
    /// section (only fields that may be trailers, RFC 9110 §6.5.1).
    pub fn last_chunk(&mut self, trailers: Option<&HeaderMap>) {
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.into_iter().flatten() {
            if crate::mirror::tee::may_be_trailer(name) {
                end.extend_from_slice(name.as_str().as_bytes());
                end.extend_from_slice(b": ");
                end.extend_from_slice(value.as_bytes());
                end.extend_from_slice(b"\r\n");
            }
        }
        end.extend_from_slice(b"\r\n");
        self.push(Bytes::from(end));
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Buf for Segments {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| &p[..])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = std::io::IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        self.remaining = self.remaining.saturating_sub(cnt);
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }
}

/// Writes everything in `out` (vectored where the stream allows).
pub async fn write<S: Io>(stream: &mut S, out: &mut Segments) -> Result<(), WireError> {
    stream
        .write_all_buf(out)
        .await
        .map_err(WireError::Unanswered)
}

/// Sends one request (`head` from [`request_head`], then `body`, then
/// `tail`, in one vectored write where the stream allows) and reads the
/// whole answer into `sink`.
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
    read_answer(stream, method, sink).await
}

/// Reads the whole answer to a request already written into `sink`.
pub async fn read_answer<S: Io>(
    stream: &mut S,
    method: &Method,
    sink: &mut (dyn Sink + Send),
) -> Result<Answered, WireError> {
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
        ResponseFraming::Empty
    } else {
        parsed.framing
    };
    sink.head(status, &parsed.headers.unwrap_or_default());
    let (body_bytes, clean_end) = match framing {
        ResponseFraming::Empty => (0, true),
        ResponseFraming::Length(n) => (read_length(stream, &mut buf, n, sink).await?, true),
        ResponseFraming::Chunked => read_chunked(stream, &mut buf, sink).await?,
        ResponseFraming::Close => (read_to_close(stream, &mut buf, sink).await?, false),
    };
    Ok(Answered {
        status,
        body_bytes,
        reusable: clean_end && parsed.keep_alive && buf.unread().is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamStream;
    use http::HeaderValue;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
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
    fn chunked_copies_frame_each_piece_and_end_with_sendable_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("42"));
        trailers.insert(http::header::HOST, HeaderValue::from_static("evil"));
        trailers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let mut out = Segments::default();
        out.push(Bytes::from_static(b"HEAD\r\n\r\n"));
        out.body(&Bytes::from_static(b"hello"), true);
        out.body(&Bytes::new(), true);
        out.body(&Bytes::from_static(b" world, again"), true);
        out.last_chunk(Some(&trailers));
        let mut written = Vec::new();
        let mut slices = [std::io::IoSlice::new(&[]); 16];
        let n = out.chunks_vectored(&mut slices);
        for s in &slices[..n] {
            written.extend_from_slice(s);
        }
        assert_eq!(written.len(), out.remaining());
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "HEAD\r\n\r\n5\r\nhello\r\nd\r\n world, again\r\n0\r\nx-sum: 42\r\n\r\n"
        );
        // Advancing across pieces keeps the rest intact.
        out.advance(10);
        assert_eq!(out.chunk(), b"\n");
        let mut rest = Vec::new();
        while out.has_remaining() {
            let c = out.chunk().to_vec();
            out.advance(c.len());
            rest.extend_from_slice(&c);
        }
        assert_eq!(
            String::from_utf8(rest).unwrap(),
            "\nhello\r\nd\r\n world, again\r\n0\r\nx-sum: 42\r\n\r\n"
        );
        // A length-framed body is sent as it is.
        let mut plain = Segments::default();
        plain.body(&Bytes::from_static(b"abc"), false);
        assert_eq!(plain.chunk(), b"abc");
        let mut end = Segments::default();
        end.last_chunk(None);
        assert_eq!(end.chunk(), b"0\r\n\r\n");
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
}
