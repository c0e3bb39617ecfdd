//! Reading a copy's answer: the response head (`httparse`, interim 1xx
//! answers skipped), how its body is framed (RFC 9112 §6.3), and the body
//! itself by length, chunked (with trailers) or to the end of the
//! connection, handed to the [`Sink`] piece by piece.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::AsyncReadExt;

use super::{Io, Sink, WireError, INITIAL_BUFFER, MAX_HEADERS, MAX_LINE_BYTES, READ_ROOM};

/// The read buffer of one exchange: `data[start..]` is unread.
pub(super) struct Buffer {
    data: Vec<u8>,
    start: usize,
    /// Bytes received in all.
    pub(super) total: usize,
}

impl Buffer {
    pub(super) fn new() -> Self {
        Buffer {
            data: Vec::with_capacity(INITIAL_BUFFER),
            start: 0,
            total: 0,
        }
    }

    pub(super) fn unread(&self) -> &[u8] {
        &self.data[self.start..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Reads more; 0 at the end of the connection.
    pub(super) async fn fill<S: Io>(&mut self, stream: &mut S) -> std::io::Result<usize> {
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
pub(super) enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

#[derive(Debug)]
pub(super) struct ParsedHead {
    pub(super) status: StatusCode,
    pub(super) framing: ResponseFraming,
    pub(super) keep_alive: bool,
    pub(super) headers: Option<HeaderMap>,
    /// Bytes the head took.
    pub(super) len: usize,
}

/// Parses a response head at the start of `bytes`; `None` when more bytes
/// are needed.
pub(super) fn parse_head(
    bytes: &[u8],
    want_headers: bool,
) -> Result<Option<ParsedHead>, WireError> {
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
        (true, true, _) => ResponseFraming::Chunked,
        (true, false, _) => ResponseFraming::Close,
        (false, _, Some(n)) => ResponseFraming::Length(n),
        (false, _, None) => ResponseFraming::Close,
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

pub(super) async fn read_length<S: Io>(
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

pub(super) async fn read_to_close<S: Io>(
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
pub(super) async fn read_chunked<S: Io>(
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
struct LineEnd {
    /// Length without the line ending.
    content: usize,
    /// Length with it.
    total: usize,
}

async fn next_line<S: Io>(stream: &mut S, buf: &mut Buffer) -> Result<LineEnd, WireError> {
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
            return Ok(LineEnd {
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
