//! The body tee: the client's request body streams to the primary frame by
//! frame, untouched and never held back, while a copy of at most `cap`
//! bytes is kept for the mirrors. When the body ends the copy is handed to
//! the mirror task; when it grows past `cap`, the copy is abandoned at once
//! (the primary still gets every byte) so memory stays bounded.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::body::{is_body_too_large, BoxError, ClientBody};

/// Why the mirrors got no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeFailure {
    /// The body was larger than the mirror cap.
    TooLarge,
    /// The client's body failed (reset, malformed chunking).
    ClientError,
}

/// What the mirror task receives: the whole body, or why not.
pub type TeeResult = Result<Bytes, TeeFailure>;

pin_project_lite::pin_project! {
    /// A request body that copies what passes through it, up to a cap.
    pub struct TeeBody {
        #[pin]
        inner: ClientBody,
        copy: BytesMut,
        cap: usize,
        done: Option<oneshot::Sender<TeeResult>>,
    }
}

impl TeeBody {
    /// Wraps `inner`; the copy (or the failure) is sent on the returned receiver.
    /// If the body is dropped before its end, the receiver sees the sender dropped.
    pub fn new(inner: ClientBody, cap: usize) -> (Self, oneshot::Receiver<TeeResult>) {
        let (tx, rx) = oneshot::channel();
        let initial = inner
            .size_hint()
            .exact()
            .map(|n| n as usize)
            .unwrap_or(0)
            .min(cap);
        (
            TeeBody {
                inner,
                copy: BytesMut::with_capacity(initial),
                cap,
                done: Some(tx),
            },
            rx,
        )
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
                if let (Some(data), Some(_)) = (frame.data_ref(), this.done.as_ref()) {
                    if this.copy.len() + data.len() > *this.cap {
                        *this.copy = BytesMut::new();
                        if let Some(tx) = this.done.take() {
                            let _ = tx.send(Err(TeeFailure::TooLarge));
                        }
                    } else {
                        this.copy.extend_from_slice(data);
                    }
                } else if frame.is_trailers() {
                    // Trailers end the body: hyper's client sends them as the
                    // last frame and never polls again, so the end (`None`)
                    // is never seen. Before, such a complete body was
                    // counted `body_incomplete` and never mirrored.
                    if let Some(tx) = this.done.take() {
                        let _ = tx.send(Ok(std::mem::take(this.copy).freeze()));
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
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
                    let _ = tx.send(Ok(std::mem::take(this.copy).freeze()));
                }
            }
            Poll::Pending => {}
        }
        // hyper may stop polling once is_end_stream() is true: hand over the
        // copy as soon as the last data frame has passed.
        if this.inner.is_end_stream() {
            if let Some(tx) = this.done.take() {
                let _ = tx.send(Ok(std::mem::take(this.copy).freeze()));
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
