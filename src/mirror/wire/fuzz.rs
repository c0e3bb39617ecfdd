//! The fuzz harness of the copy's HTTP/1.1 client: [`replay`] runs an
//! exchange against a scripted server, [`check_split_properties`] is what
//! the `wire` fuzz target checks on each input (also run on the stored
//! regressions in `tests/fuzz-regressions/wire`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{exchange, request_head, Sink, WireError};

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
}
