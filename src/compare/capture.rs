//! Capturing a response for comparison while it streams: each chunk is
//! copied into a buffer whose bytes are reserved from the shadow memory
//! budget first (never waiting: what does not fit is refused), up to a cap,
//! so the client never waits and what captures hold stays bounded. The
//! reservation goes with the captured body into the comparison queue and is
//! returned when the pair has been judged or dropped.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use super::PrimaryAnswer;
use crate::diff::Captured;
use crate::memory::{BoundedBuf, BufRefused, MemoryBudget};

/// The shadow memory budget could not hold a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

/// Collects one response up to `cap` body bytes.
#[derive(Debug)]
pub struct Capturer {
    status: StatusCode,
    headers: HeaderMap,
    buf: BoundedBuf,
    truncated: bool,
    over_budget: bool,
}

impl Capturer {
    /// A capture of at most `cap` body bytes, reserved from `memory`
    /// (a declared `content-length` within the cap is reserved at once).
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        cap: usize,
        memory: &Arc<MemoryBudget>,
    ) -> Self {
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n <= cap)
            .unwrap_or(0);
        let (buf, over_budget) = match BoundedBuf::new(memory, cap, declared) {
            Some(buf) => (buf, false),
            None => (BoundedBuf::empty(memory, cap), true),
        };
        Capturer {
            status,
            headers,
            buf,
            truncated: false,
            over_budget,
        }
    }

    /// Notes a body chunk.
    pub fn data(&mut self, data: &Bytes) {
        self.data_slice(data);
    }

    /// Notes a body chunk (copied while under the cap and the budget).
    pub fn data_slice(&mut self, data: &[u8]) {
        if self.truncated || self.over_budget {
            return;
        }
        match self.buf.extend(data) {
            Ok(()) => {}
            Err(BufRefused::TooLarge) => {
                self.truncated = true;
                drop(self.buf.take());
            }
            Err(BufRefused::Memory) => {
                self.over_budget = true;
                drop(self.buf.take());
            }
        }
    }

    /// The captured response, or `OverBudget` when its body did not fit
    /// in the shadow memory budget.
    pub fn finish(self) -> Result<Captured, OverBudget> {
        if self.over_budget {
            return Err(OverBudget);
        }
        Ok(Captured {
            status: self.status.as_u16(),
            headers: self.headers,
            body: self.buf.freeze(),
            truncated: self.truncated,
        })
    }
}

/// Where the primary's capture is published.
pub type CaptureSender = watch::Sender<Option<PrimaryAnswer>>;

/// The primary's capture, published once its body has ended.
#[derive(Debug)]
pub struct PrimaryCapturer {
    pub capturer: Capturer,
    tx: CaptureSender,
}

impl PrimaryCapturer {
    pub fn new(capturer: Capturer, tx: CaptureSender) -> Self {
        PrimaryCapturer { capturer, tx }
    }

    /// Publishes the complete capture to the waiting comparisons.
    pub fn publish(self) {
        let answer = match self.capturer.finish() {
            Ok(c) => PrimaryAnswer::Captured(Arc::new(c)),
            Err(OverBudget) => PrimaryAnswer::OverBudget,
        };
        let _ = self.tx.send(Some(answer));
    }
}

/// A channel for the primary's capture: dropped unpublished, the waiting
/// comparisons see the primary did not complete.
pub fn channel() -> (CaptureSender, super::PrimaryCapture) {
    watch::channel(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_up_to_the_cap() {
        let memory = MemoryBudget::new(1 << 20, None);
        let mut c = Capturer::new(StatusCode::OK, HeaderMap::new(), 10, &memory);
        c.data(&Bytes::from_static(b"hello"));
        c.data(&Bytes::from_static(b"world"));
        let got = c.finish().unwrap();
        assert_eq!(got.body, Bytes::from_static(b"helloworld"));
        assert!(!got.truncated);
        assert_eq!(memory.in_use(), 10, "the captured body holds its bytes");
        drop(got);
        let mut c = Capturer::new(StatusCode::OK, HeaderMap::new(), 10, &memory);
        c.data(&Bytes::from_static(b"hello"));
        c.data(&Bytes::from_static(b"world!"));
        let got = c.finish().unwrap();
        assert!(got.truncated);
        assert!(got.body.is_empty());
        assert_eq!(memory.in_use(), 0);
    }

    #[test]
    fn a_capture_over_the_budget_is_refused() {
        let memory = MemoryBudget::new(8, None);
        let mut c = Capturer::new(StatusCode::OK, HeaderMap::new(), 100, &memory);
        c.data(&Bytes::from_static(b"hello"));
        c.data(&Bytes::from_static(b"world"));
        assert_eq!(c.finish().unwrap_err(), OverBudget);
        assert_eq!(memory.in_use(), 0);
    }
}
