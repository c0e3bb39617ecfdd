//! The mirror copies' HTTP/1.1 client (`proxy::wire`) reading arbitrary
//! server bytes: never a panic; the same outcome whether the bytes arrive in
//! large reads or in small pieces; a body never longer than what arrived,
//! and exactly what was counted.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use shadowgate::proxy::wire::{exchange, request_head, Sink, WireError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A server that answers `data`, at most `step` bytes per read, then ends.
struct Feed<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Feed<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.step).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, Default, PartialEq)]
struct Seen {
    want: bool,
    status: Option<StatusCode>,
    fields: usize,
    body: Vec<u8>,
    trailers: usize,
}

impl Sink for Seen {
    fn wants_headers(&self) -> bool {
        self.want
    }
    fn head(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.status = Some(status);
        self.fields = headers.len();
    }
    fn data(&mut self, chunk: &[u8]) {
        self.body.extend_from_slice(chunk);
    }
    fn trailers(&mut self, trailers: &HeaderMap) {
        self.trailers += trailers.len();
    }
}

/// The outcome without `reusable` (stray bytes after the body are seen only
/// when they were read with it), plus that flag.
fn run(data: &[u8], step: usize, method: &Method, want: bool) -> (Result<(u16, u64), String>, bool, Seen) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut seen = Seen { want, ..Default::default() };
    let mut feed = Feed { data, step };
    let head = request_head(method, "/", &HeaderMap::new());
    let r = rt.block_on(exchange(&mut feed, &head, &Bytes::new(), method, &mut seen));
    match r {
        Ok(a) => (Ok((a.status.as_u16(), a.body_bytes)), a.reusable, seen),
        Err(e) => {
            let kind = match e {
                WireError::Protocol(why) => format!("protocol: {why}"),
                WireError::ClosedEarly | WireError::Unanswered(_) => "unanswered".into(),
                WireError::Io(io) => format!("io: {:?}", io.kind()),
            };
            (Err(kind), false, seen)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let method = if flags & 1 == 1 { Method::HEAD } else { Method::GET };
    let want = flags & 2 == 2;
    let step = 1 + usize::from(flags >> 2) % 13;
    let (whole, whole_reusable, whole_seen) = run(rest, usize::MAX, &method, want);
    let (split, split_reusable, split_seen) = run(rest, step, &method, want);
    assert_eq!(whole, split, "outcome depends on how the bytes arrive (step {step})");
    if whole.is_ok() {
        assert_eq!(whole_seen, split_seen);
        assert!(!whole_reusable || split_reusable);
    }
    if let Ok((_, n)) = whole {
        assert!(n as usize <= rest.len());
        assert_eq!(n as usize, whole_seen.body.len());
    }
});
