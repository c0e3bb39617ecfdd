//! The body tee: the client's request body streams to the primary frame by
//! frame, untouched and never held back, while a copy of at most `cap`
//! bytes is kept for the mirrors. When the body ends the copy is handed to
//! the mirror task; when it grows past `cap`, the copy is abandoned at once
//! (the primary still gets every byte) so memory stays bounded. The copy's
//! bytes are reserved from the shadow memory budget before they are
//! buffered (chunk by chunk as it grows); when the budget cannot take them
//! the copy is abandoned the same way (`Memory`). The reservation travels
//! with the copy's `Bytes` and is returned when the last copy is done.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::budget::{BoundedBuf, BufRefused, MemoryBudget};
use crate::body::{is_body_too_large, BoxError, ClientBody};

/// Why the mirrors got no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeFailure {
    /// The body was larger than the mirror cap.
    TooLarge,
    /// The client's body failed (reset, malformed chunking).
    ClientError,
    /// The shadow memory budget could not hold the copy.
    Memory,
}

/// What the mirror task receives: the whole body, or why not.
pub type TeeResult = Result<Bytes, TeeFailure>;

pin_project_lite::pin_project! {
    /// A request body that copies what passes through it, up to a cap.
    pub struct TeeBody {
        #[pin]
        inner: ClientBody,
        copy: BoundedBuf,
        done: Option<oneshot::Sender<TeeResult>>,
    }
}

impl TeeBody {
    /// Wraps `inner`; the copy (or the failure) is sent on the returned receiver.
    /// If the body is dropped before its end, the receiver sees the sender dropped.
    /// A declared length is reserved from `memory` up front.
    pub fn new(
        inner: ClientBody,
        cap: usize,
        memory: &Arc<MemoryBudget>,
    ) -> (Self, oneshot::Receiver<TeeResult>) {
        let (tx, rx) = oneshot::channel();
        let initial = inner
            .size_hint()
            .exact()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .unwrap_or(0)
            .min(cap);
        let (copy, done) = match BoundedBuf::new(memory, cap, initial) {
            Some(copy) => (copy, Some(tx)),
            None => {
                let _ = tx.send(Err(TeeFailure::Memory));
                (BoundedBuf::empty(memory, cap), None)
            }
        };
        (TeeBody { inner, copy, done }, rx)
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(tx)) = (frame.data_ref(), this.done.as_ref()) {
                    // Nobody waits any more (the copies timed out): stop copying.
                    let failed = if tx.is_closed() {
                        Some(TeeFailure::ClientError)
                    } else {
                        match this.copy.extend(data) {
                            Ok(()) => None,
                            Err(BufRefused::TooLarge) => Some(TeeFailure::TooLarge),
                            Err(BufRefused::Memory) => Some(TeeFailure::Memory),
                        }
                    };
                    if let Some(failure) = failed {
                        drop(this.copy.take());
                        if let Some(tx) = this.done.take() {
                            let _ = tx.send(Err(failure));
                        }
                    }
                } else if frame.is_trailers() {
                    // Trailers end the body: hyper's client sends them as the
                    // last frame and never polls again, so the end (`None`)
                    // is never seen. Before, such a complete body was
                    // counted `body_incomplete` and never mirrored.
                    if let Some(tx) = this.done.take() {
                        let _ = tx.send(Ok(this.copy.take().freeze()));
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                drop(this.copy.take());
                if let Some(tx) = this.done.take() {
                    // Over the route's limit: as large for the mirrors too.
                    let failure = if is_body_too_large(e.as_ref()) {
                        TeeFailure::TooLarge
                    } else {
                        TeeFailure::ClientError
                    };
                    let _ = tx.send(Err(failure));
                }
            }
            Poll::Ready(None) => {
                if let Some(tx) = this.done.take() {
                    let _ = tx.send(Ok(this.copy.take().freeze()));
                }
            }
            Poll::Pending => {}
        }
        // hyper may stop polling once is_end_stream() is true: hand over the
        // copy as soon as the last data frame has passed.
        if this.inner.is_end_stream() {
            if let Some(tx) = this.done.take() {
                let _ = tx.send(Ok(this.copy.take().freeze()));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
