//! The body tee: the client's request body streams to the primary frame by
//! frame, untouched and never held back, while a copy of at most `cap`
//! bytes is kept for the mirrors. When the body ends the copy is handed to
//! the mirror task; when it grows past `cap`, the copy is abandoned at once
//! (the primary still gets every byte) so memory stays bounded. The copy's
//! bytes are reserved from the shadow memory budget before they are
//! buffered (chunk by chunk as it grows); when the budget cannot take them
//! the copy is abandoned the same way (`Memory`). The reservation travels
//! with the copy's `Bytes` and is returned when the last copy is done.
//!
//! A body that ends in trailers hands the trailer fields over with the
//! copy (those a sender may put in a trailer section: framing, routing,
//! hop-by-hop and similar fields are dropped, RFC 9110 §6.5.1); their bytes
//! are reserved from the same budget and travel with them.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use http::{HeaderMap, HeaderName};

use crate::body::{is_body_too_large, BoxError, ClientBody};
use crate::memory::{BoundedBuf, BufRefused, MemoryBudget, Reservation};

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

/// The request's trailer fields kept for the mirrors; their bytes stay
/// reserved from the shadow memory budget until the last copy is done.
#[derive(Debug)]
pub struct Trailers {
    fields: HeaderMap,
    _reservation: Reservation,
}

impl Trailers {
    pub fn fields(&self) -> &HeaderMap {
        &self.fields
    }
}

/// Per-field overhead counted for kept trailers (the map's own entry).
const TRAILER_FIELD_OVERHEAD: usize = 32;

/// What the mirrors get of a complete body: its bytes and its trailers.
#[derive(Debug, Clone, Default)]
pub struct TeeCopy {
    pub body: Bytes,
    /// `None` when the body ended without (sendable) trailer fields.
    pub trailers: Option<Arc<Trailers>>,
}

impl TeeCopy {
    pub fn body_only(body: Bytes) -> Self {
        TeeCopy {
            body,
            trailers: None,
        }
    }
}

/// What the mirror task receives: the whole body, or why not.
pub type TeeResult = Result<TeeCopy, TeeFailure>;

/// Whether `name` may travel in a copy's trailer section. Fields that frame
/// or route the message, hop-by-hop fields, request modifiers,
/// authentication and content metadata must not (RFC 9110 §6.5.1); a copy
/// never sends them as trailers.
pub fn may_be_trailer(name: &HeaderName) -> bool {
    const NOT_IN_TRAILERS: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "trailer",
        "host",
        "te",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "expect",
        "max-forwards",
        "cache-control",
        "pragma",
        "range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "authorization",
        "proxy-authorization",
        "proxy-authenticate",
        "www-authenticate",
        "cookie",
        "set-cookie",
        "content-encoding",
        "content-type",
        "content-range",
    ];
    !NOT_IN_TRAILERS.contains(&name.as_str())
}

/// Keeps the sendable fields of `trailers`, their bytes reserved from
/// `memory`: `Ok(None)` when none is left, `Err` when the budget refuses.
fn keep_trailers(
    memory: &Arc<MemoryBudget>,
    trailers: &HeaderMap,
) -> Result<Option<Arc<Trailers>>, TeeFailure> {
    let mut fields = HeaderMap::new();
    let mut bytes = 0usize;
    for (name, value) in trailers {
        if may_be_trailer(name) {
            bytes =
                bytes.saturating_add(name.as_str().len() + value.len() + TRAILER_FIELD_OVERHEAD);
            fields.append(name.clone(), value.clone());
        }
    }
    if fields.is_empty() {
        return Ok(None);
    }
    let reservation = memory.reserve(bytes).ok_or(TeeFailure::Memory)?;
    Ok(Some(Arc::new(Trailers {
        fields,
        _reservation: reservation,
    })))
}

pin_project_lite::pin_project! {
    /// A request body that copies what passes through it, up to a cap.
    pub struct TeeBody {
        #[pin]
        inner: ClientBody,
        copy: BoundedBuf,
        memory: Arc<MemoryBudget>,
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
        let memory = memory.clone();
        (
            TeeBody {
                inner,
                copy,
                memory,
                done,
            },
            rx,
        )
    }
}

/// Sends the mirror task its result (made only if it is still owed): the
/// first result of a body is the only one.
fn hand_over(done: &mut Option<oneshot::Sender<TeeResult>>, result: impl FnOnce() -> TeeResult) {
    if let Some(tx) = done.take() {
        let _ = tx.send(result());
    }
}

/// The complete copy of a body that ended without trailers.
fn whole(copy: &mut BoundedBuf) -> TeeResult {
    Ok(TeeCopy::body_only(copy.take().freeze()))
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
                        hand_over(this.done, || Err(failure));
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    // Trailers end the body: hyper's client sends them as the
                    // last frame and never polls again, so the end (`None`)
                    // is never seen. Before, such a complete body was
                    // counted `body_incomplete` and never mirrored. The
                    // trailers go to the mirrors with the body.
                    hand_over(this.done, || {
                        let copy = this.copy.take();
                        keep_trailers(this.memory, trailers).map(|trailers| TeeCopy {
                            body: copy.freeze(),
                            trailers,
                        })
                    });
                }
            }
            Poll::Ready(Some(Err(e))) => {
                drop(this.copy.take());
                // Over the route's limit: as large for the mirrors too.
                hand_over(this.done, || {
                    Err(if is_body_too_large(e.as_ref()) {
                        TeeFailure::TooLarge
                    } else {
                        TeeFailure::ClientError
                    })
                });
            }
            Poll::Ready(None) => hand_over(this.done, || whole(this.copy)),
            Poll::Pending => {}
        }
        // hyper may stop polling once is_end_stream() is true: hand over the
        // copy as soon as the last data frame has passed.
        if this.inner.is_end_stream() {
            hand_over(this.done, || whole(this.copy));
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn kept_trailers_are_sendable_and_budgeted() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("42"));
        t.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        t.insert(http::header::TE, HeaderValue::from_static("trailers"));
        let memory = MemoryBudget::new(1000, None);
        let kept = keep_trailers(&memory, &t).unwrap().unwrap();
        assert_eq!(kept.fields().len(), 1);
        assert_eq!(kept.fields()["x-sum"], "42");
        assert_eq!(memory.in_use(), 5 + 2 + TRAILER_FIELD_OVERHEAD);
        drop(kept);
        assert_eq!(memory.in_use(), 0);

        let only_framing: HeaderMap = [(http::header::HOST, HeaderValue::from_static("h"))]
            .into_iter()
            .collect();
        assert!(keep_trailers(&memory, &only_framing).unwrap().is_none());

        let tiny = MemoryBudget::new(10, None);
        assert_eq!(keep_trailers(&tiny, &t).unwrap_err(), TeeFailure::Memory);
        assert_eq!(tiny.in_use(), 0);
    }
}
