//! Capturing a response for comparison while it streams: the bytes are
//! shared (`Bytes` clones, no copy) up to a cap, so the client never waits.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use crate::compare::Captured;

/// Collects one response up to `cap` body bytes.
#[derive(Debug)]
pub struct Capturer {
    status: StatusCode,
    headers: HeaderMap,
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    truncated: bool,
}

impl Capturer {
    pub fn new(status: StatusCode, headers: HeaderMap, cap: usize) -> Self {
        Capturer {
            status,
            headers,
            chunks: Vec::new(),
            len: 0,
            cap,
            truncated: false,
        }
    }

    /// Notes a body chunk.
    pub fn data(&mut self, data: &Bytes) {
        if self.admit(data.len()) {
            self.chunks.push(data.clone());
        }
    }

    /// Notes a body chunk that lives in someone else's buffer (copied only
    /// while under the cap).
    pub fn data_slice(&mut self, data: &[u8]) {
        if self.admit(data.len()) {
            self.chunks.push(Bytes::copy_from_slice(data));
        }
    }

    /// Counts `n` more bytes; false (and the capture truncated) once over
    /// the cap.
    fn admit(&mut self, n: usize) -> bool {
        if self.truncated {
            return false;
        }
        if self.len + n > self.cap {
            self.truncated = true;
            self.chunks = Vec::new();
            return false;
        }
        self.len += n;
        true
    }

    /// The captured response.
    pub fn finish(self) -> Captured {
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for c in &self.chunks {
                    all.extend_from_slice(c);
                }
                all.freeze()
            }
        };
        Captured {
            status: self.status.as_u16(),
            headers: self.headers,
            body,
            truncated: self.truncated,
        }
    }
}

/// The primary's capture, published once its body has ended.
#[derive(Debug)]
pub struct PrimaryCapturer {
    pub capturer: Capturer,
    tx: watch::Sender<Option<Arc<Captured>>>,
}

impl PrimaryCapturer {
    pub fn new(capturer: Capturer, tx: watch::Sender<Option<Arc<Captured>>>) -> Self {
        PrimaryCapturer { capturer, tx }
    }

    /// Publishes the complete capture to the waiting comparisons.
    pub fn publish(self) {
        let _ = self.tx.send(Some(Arc::new(self.capturer.finish())));
    }
}

/// A channel for the primary's capture: dropped unpublished, the waiting
/// comparisons see the primary did not complete.
pub fn channel() -> (watch::Sender<Option<Arc<Captured>>>, super::PrimaryCapture) {
    watch::channel(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_up_to_the_cap() {
        let mut c = Capturer::new(StatusCode::OK, HeaderMap::new(), 10);
        c.data(&Bytes::from_static(b"hello"));
        c.data(&Bytes::from_static(b"world"));
        let got = c.finish();
        assert_eq!(got.body, Bytes::from_static(b"helloworld"));
        assert!(!got.truncated);
        let mut c = Capturer::new(StatusCode::OK, HeaderMap::new(), 10);
        c.data(&Bytes::from_static(b"hello"));
        c.data(&Bytes::from_static(b"world!"));
        let got = c.finish();
        assert!(got.truncated);
        assert!(got.body.is_empty());
    }
}
