//! Reading a recording back (`docs/replay.md`, "Format"): one [`Exchange`]
//! per line, streamed (one line in memory at a time, whatever the file's
//! size), from a plain or zstd-compressed file (told by its first bytes, so
//! a renamed file still reads). A line that does not parse is reported with
//! its number and skipped by the caller's choice; it never ends the stream.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

/// The longest line read (a record holds two bodies of up to
/// `max_body_bytes`, base64 in the worst case): longer ones are refused.
pub const MAX_LINE: usize = 256 << 20;

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A recording that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One line that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {reason}")]
pub struct LineError {
    pub path: PathBuf,
    pub line: u64,
    pub reason: String,
    /// The file itself failed (not only this line): nothing more follows.
    pub fatal: bool,
}

/// How the reason of an entry left out on purpose starts (a HAR entry
/// that cannot be replayed, `record::har`): `skipped (KIND): …`.
pub const SKIPPED: &str = "skipped (";

impl LineError {
    /// For an entry left out on purpose, the short name of why
    /// (`failed`, `not-http`, `websocket`: see `record::har::Skip`);
    /// `None` for a line or entry that could not be read.
    pub fn skipped(&self) -> Option<&str> {
        let rest = self.reason.strip_prefix(SKIPPED)?;
        rest.split_once(')').map(|(kind, _)| kind)
    }
}

/// One message (request or answer) as recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// Requests only.
    pub method: Option<String>,
    /// Requests only: path and query as the client sent them.
    pub uri: Option<String>,
    /// Answers only.
    pub status: Option<u16>,
    /// `[name, value]` pairs in order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The body was longer than the recording's `max_body_bytes`: `body`
    /// is empty.
    pub body_truncated: bool,
}

impl Message {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One outbound call the primary made while answering (with the egress
/// proxy on), in the order made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Call {
    /// The egress service's name.
    pub service: String,
    pub request: Message,
    pub response: Message,
    pub duration_ms: f64,
}

/// One recorded request, its primary's answer and its outbound calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exchange {
    /// Line number in its file (1-based).
    pub line: u64,
    pub time: Option<String>,
    pub route: String,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub request: Message,
    pub response: Message,
    pub duration_ms: f64,
    pub calls: Vec<Call>,
}

#[derive(Deserialize)]
struct RawLine {
    v: u32,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    route: String,
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    trace_id: Option<String>,
    request: RawMessage,
    response: RawMessage,
    #[serde(default)]
    duration_ms: f64,
    #[serde(default)]
    calls: Vec<RawCall>,
}

#[derive(Deserialize)]
struct RawCall {
    service: String,
    request: RawMessage,
    response: RawMessage,
    #[serde(default)]
    duration_ms: f64,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_b64: Option<String>,
    #[serde(default)]
    body_truncated: bool,
}

impl RawMessage {
    fn into_message(self, what: &str) -> Result<Message, String> {
        let body = match (self.body, self.body_b64) {
            (Some(_), Some(_)) => return Err(format!("{what}: both `body` and `body_b64`")),
            (Some(text), None) => Bytes::from(text),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map(Bytes::from)
                .map_err(|e| format!("{what}.body_b64: {e}"))?,
            (None, None) => Bytes::new(),
        };
        Ok(Message {
            method: self.method,
            uri: self.uri,
            status: self.status,
            headers: self.headers,
            body,
            body_truncated: self.body_truncated,
        })
    }
}

/// Parses one line (without its newline).
pub fn parse_line(text: &[u8], line: u64) -> Result<Exchange, String> {
    let raw: RawLine = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if raw.v != super::line::VERSION {
        return Err(format!(
            "format version {} (this build reads {})",
            raw.v,
            super::line::VERSION
        ));
    }
    let request = raw.request.into_message("request")?;
    if request.method.as_deref().unwrap_or("").is_empty() {
        return Err("request.method is missing".into());
    }
    if request.uri.as_deref().unwrap_or("").is_empty() {
        return Err("request.uri is missing".into());
    }
    let response = raw.response.into_message("response")?;
    if response.status.is_none() {
        return Err("response.status is missing".into());
    }
    let calls = raw
        .calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(Call {
                service: c.service,
                request: c.request.into_message(&format!("calls[{i}].request"))?,
                response: c.response.into_message(&format!("calls[{i}].response"))?,
                duration_ms: c.duration_ms,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Exchange {
        line,
        time: raw.time,
        route: raw.route,
        request_id: raw.request_id,
        trace_id: raw.trace_id,
        request,
        response,
        duration_ms: raw.duration_ms,
        calls,
    })
}

/// A recording, read line by line.
pub struct Reader {
    path: PathBuf,
    input: Box<dyn BufRead + Send>,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("line", &self.line)
            .finish()
    }
}

/// Whether `head` (a file's first bytes) starts a zstd frame.
pub fn is_zstd(head: &[u8]) -> bool {
    head.starts_with(&ZSTD_MAGIC)
}

impl Reader {
    /// Opens `path` (plain JSON lines, or zstd frames of them).
    pub fn open(path: &Path) -> Result<Reader, OpenError> {
        let file = File::open(path).map_err(|source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Reader::from_file(path, BufReader::with_capacity(64 << 10, file))
    }

    /// Reads an opened file (plain, or zstd told by its first bytes).
    pub fn from_file(path: &Path, mut file: BufReader<File>) -> Result<Reader, OpenError> {
        let io = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let zstd = is_zstd(file.fill_buf().map_err(io)?);
        let input: Box<dyn BufRead + Send> = if zstd {
            Box::new(BufReader::with_capacity(
                64 << 10,
                zstd::stream::read::Decoder::with_buffer(file).map_err(io)?,
            ))
        } else {
            Box::new(file)
        };
        Ok(Reader::from_reader(path, input))
    }

    /// Reads lines from `input`, naming `path` in errors.
    pub fn from_reader(path: &Path, input: Box<dyn BufRead + Send>) -> Reader {
        Reader {
            path: path.to_path_buf(),
            input,
            line: 0,
            buf: Vec::new(),
            done: false,
        }
    }

    fn error(&self, reason: String, fatal: bool) -> LineError {
        LineError {
            path: self.path.clone(),
            line: self.line,
            reason,
            fatal,
        }
    }

    /// Reads the next line into `self.buf` (without its newline), at most
    /// `MAX_LINE` bytes kept: Ok(false) at the end.
    fn next_line(&mut self) -> Result<bool, LineError> {
        self.buf.clear();
        self.line += 1;
        let mut too_long = false;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.error(e.to_string(), true)),
            };
            if chunk.is_empty() {
                if self.buf.is_empty() && !too_long {
                    return Ok(false);
                }
                break;
            }
            let (take, end) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                if self.buf.len() + take > MAX_LINE {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.input.consume(take + usize::from(end));
            if end {
                break;
            }
        }
        if too_long {
            return Err(self.error(format!("line longer than {MAX_LINE} bytes"), false));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(true)
    }
}

impl Iterator for Reader {
    type Item = Result<Exchange, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            match self.next_line() {
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Ok(true) => {}
                Err(e) => {
                    self.done = e.fatal;
                    return Some(Err(e));
                }
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = self.line;
            return Some(parse_line(&self.buf, line).map_err(|r| self.error(r, false)));
        }
    }
}

/// Reads all of `input` (for tests and small inputs).
pub fn read_all(
    path: &Path,
    input: impl Read + Send + 'static,
) -> Vec<Result<Exchange, LineError>> {
    Reader::from_reader(path, Box::new(BufReader::new(input))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"v":1,"time":"2026-11-30T02:41:59.123Z","route":"items","request_id":"r1","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","request":{"method":"POST","uri":"/items?colour=red","headers":[["content-type","application/json"]],"body":"{\"name\":\"lamp\"}","body_truncated":false},"response":{"status":201,"headers":[["content-type","application/json"]],"body_b64":"AAEC","body_truncated":false},"duration_ms":3.412}"#;

    #[test]
    fn reads_lines_skips_blank_and_reports_bad_ones_by_number() {
        let text = format!(
            "{LINE}\n\n{{\"v\":1}}\r\n{LINE}\r\n{{\"v\":9,\"request\":{{}},\"response\":{{}}}}"
        );
        let out = read_all(
            Path::new("c.jsonl"),
            std::io::Cursor::new(text.into_bytes()),
        );
        assert_eq!(out.len(), 4);
        let first = out[0].as_ref().unwrap();
        assert_eq!(first.line, 1);
        assert_eq!(first.route, "items");
        assert_eq!(first.request.method.as_deref(), Some("POST"));
        assert_eq!(
            first.request.header("Content-Type"),
            Some("application/json")
        );
        assert_eq!(&first.request.body[..], br#"{"name":"lamp"}"#);
        assert_eq!(&first.response.body[..], &[0u8, 1, 2]);
        assert_eq!(first.response.status, Some(201));
        let bad = out[1].as_ref().unwrap_err();
        assert_eq!(bad.line, 3);
        assert!(bad.to_string().starts_with("c.jsonl:3: "), "{bad}");
        assert_eq!(out[2].as_ref().unwrap().line, 4);
        let version = out[3].as_ref().unwrap_err();
        assert!(version.reason.contains("format version 9"), "{version}");
    }

    #[test]
    fn a_too_long_line_is_one_error_and_reading_goes_on() {
        let mut text = vec![b'x'; MAX_LINE + 10];
        text.push(b'\n');
        text.extend_from_slice(LINE.as_bytes());
        let out = read_all(Path::new("big"), std::io::Cursor::new(text));
        assert_eq!(out.len(), 2);
        assert!(out[0].as_ref().unwrap_err().reason.contains("longer than"));
        assert_eq!(out[1].as_ref().unwrap().line, 2);
    }

    #[test]
    fn zstd_is_told_by_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("renamed.jsonl");
        let mut text = String::new();
        for _ in 0..3 {
            text.push_str(LINE);
            text.push('\n');
        }
        let packed = zstd::stream::encode_all(text.as_bytes(), 3).unwrap();
        std::fs::write(&path, packed).unwrap();
        let read: Vec<_> = Reader::open(&path).unwrap().collect();
        assert_eq!(read.len(), 3);
        assert!(read.iter().all(|r| r.is_ok()));
    }
}
