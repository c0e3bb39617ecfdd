//! The body tee: the client's request body streams to the primary frame by
//! frame, untouched and never held back, and each data chunk is handed on
//! at once to every admitted copy through that copy's own bounded queue
//! (one copy of the chunk, of its own size, shared by every copy; see
//! `deliver` for why not a clone of hyper's slice). The copy's
//! task (`dispatch`, `client`) has already sent the request head and
//! writes the chunks to its shadow as they come; nothing gathers the body.
//!
//! Each chunk's bytes are reserved from the shadow memory budget once, for
//! all copies, and returned when the last copy has written or dropped it.
//! A copy that cannot take a chunk is abandoned at once, and only that
//! copy (the primary still gets every byte, and never waits):
//! - its queue is full, [`QUEUE_BYTES`] or [`QUEUE_CHUNKS`]: its shadow
//!   reads slower than the client sends (`Slow`, counted `shadow_slow`);
//! - the body grew past its mirror's `max_body_bytes` (`TooLarge`);
//! - the budget cannot take the chunk (`Memory`, every copy).
//!
//! The client's body failing (reset, malformed chunking; or the body
//! dropped before its end) abandons every copy (`ClientError`; over the
//! route's own limit, `TooLarge`). An abandoned copy's connection is
//! closed, so its shadow never sees a complete request.
//!
//! A body that ends in trailers hands the trailer fields over with the
//! end (those a sender may put in a trailer section: framing, routing,
//! hop-by-hop and similar fields are dropped, RFC 9110 §6.5.1); their bytes
//! are reserved from the same budget and travel with them.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::body::{is_body_too_large, BoxError, ClientBody};
use crate::memory::{MemoryBudget, Reservation};

/// Why a copy gets no complete body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TeeFailure {
    /// The body was larger than the mirror cap.
    #[error("request body larger than the mirror's max_body_bytes")]
    TooLarge,
    /// The client's body failed (reset, malformed chunking), or was dropped
    /// before its end.
    #[error("the client's request body did not complete")]
    ClientError,
    /// The shadow memory budget could not hold the copy.
    #[error("the shadow memory budget could not hold the copy")]
    Memory,
    /// The copy's queue was full: the shadow took the body slower than the
    /// client sent it.
    #[error("the shadow took the body too slowly")]
    Slow,
}

impl TeeFailure {
    fn code(self) -> u8 {
        match self {
            TeeFailure::TooLarge => 1,
            TeeFailure::ClientError => 2,
            TeeFailure::Memory => 3,
            TeeFailure::Slow => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TeeFailure::TooLarge),
            2 => Some(TeeFailure::ClientError),
            3 => Some(TeeFailure::Memory),
            4 => Some(TeeFailure::Slow),
            _ => None,
        }
    }
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

/// Most bytes queued for one copy: how far its shadow may lag behind the
/// primary's reading of the body before the copy is abandoned
/// (`shadow_slow`). The queue must absorb what a fast client sends while
/// the copy's connection is still being set up (a connect, a TLS
/// handshake), a burst of hyper's reads (one read of a fast HTTP/1.1
/// upload is one chunk, up to ~400 KiB; a chunk is always taken into an
/// empty queue), and the scheduling jitter between the primary's upload and
/// the copy's task: on loopback a millisecond is about a megabyte. Measured
/// (debug build, 2 shared cores): with 256 KiB, 1 MiB uploads lost their
/// copy while it connected; with 1 MiB, one 8 MiB upload in four to a
/// shadow as fast as the primary lost its copy. 4 MiB is above the default
/// mirror `max_body_bytes` (1 MiB), so with the defaults a copy is never
/// abandoned as slow and never holds more than the gathering copy it
/// replaces did; the shadow memory budget bounds the sum over all copies.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Most chunks queued for one copy (many tiny chunks cost their entries
/// even when their bytes are few: about 100 bytes each).
pub const QUEUE_CHUNKS: usize = 1024;

/// A piece of the body held for the copies: one allocation of its own
/// size (copied from hyper's buffer, see `deliver`) shared by every copy,
/// its bytes reserved from the shadow memory budget until the last copy
/// has written or dropped it.
#[derive(Debug)]
struct Chunk {
    data: Bytes,
    _reservation: Reservation,
}

/// A chunk of body a copy is about to write; drop it once written (that
/// returns its bytes to the budget when no other copy holds it).
#[derive(Debug, Clone)]
pub struct Held(Arc<Chunk>);

impl Held {
    pub fn bytes(&self) -> &Bytes {
        &self.0.data
    }
}

#[derive(Debug)]
enum Piece {
    Data(Held),
    /// The body ended (with its sendable trailer fields, if any).
    End(Option<Arc<Trailers>>),
}

/// What one copy's queue shares between the tee and the copy's task.
#[derive(Debug, Default)]
struct QueueState {
    bytes: AtomicUsize,
    chunks: AtomicUsize,
    /// Why the tee abandoned this copy (`TeeFailure::code`), 0 if not.
    failure: AtomicU8,
    /// Wakes a copy's task blocked in a write when the copy is abandoned.
    abandoned: tokio::sync::Notify,
}

impl QueueState {
    fn failure(&self) -> Option<TeeFailure> {
        TeeFailure::from_code(self.failure.load(Ordering::Acquire))
    }

    /// Records why the copy is abandoned (the first reason stays).
    fn fail(&self, why: TeeFailure) {
        let _ = self
            .failure
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The tee's end of one copy's queue. Dropped before the body's end (the
/// tee dropped: the primary's request failed, the client went away), it
/// abandons the copy (`ClientError`).
#[derive(Debug)]
struct Feed {
    tx: mpsc::UnboundedSender<Piece>,
    state: Arc<QueueState>,
    /// The copy's `max_body_bytes`.
    cap: u64,
    /// The end was queued.
    ended: bool,
}

impl Drop for Feed {
    fn drop(&mut self) {
        if !self.ended {
            self.state.fail(TeeFailure::ClientError);
            self.state.abandoned.notify_one();
        }
    }
}

impl Feed {
    /// Queues `chunk` (body bytes so far: `seen`), or says why the copy
    /// must be abandoned. The queue is bounded here, by [`QUEUE_BYTES`]
    /// and [`QUEUE_CHUNKS`]; the channel itself never refuses.
    fn offer(&self, chunk: &Held, seen: u64) -> Result<(), Option<TeeFailure>> {
        if seen > self.cap {
            return Err(Some(TeeFailure::TooLarge));
        }
        let len = chunk.bytes().len();
        let queued = self.state.bytes.load(Ordering::Acquire);
        if self.state.chunks.load(Ordering::Acquire) >= QUEUE_CHUNKS
            || (queued > 0 && queued.saturating_add(len) > QUEUE_BYTES)
        {
            return Err(Some(TeeFailure::Slow));
        }
        self.state.bytes.fetch_add(len, Ordering::AcqRel);
        self.state.chunks.fetch_add(1, Ordering::AcqRel);
        // Refused only when the copy is gone (it failed or timed out,
        // and counted that itself).
        self.tx.send(Piece::Data(chunk.clone())).map_err(|_| None)
    }

    /// Abandons the copy: the reason first, then the queue closes (and
    /// the copy's task is woken).
    fn fail(self, why: TeeFailure) {
        self.state.fail(why);
    }

    fn end(mut self, trailers: Option<Arc<Trailers>>) {
        self.ended = true;
        let _ = self.tx.send(Piece::End(trailers));
    }
}

/// What a copy's task gets from its queue.
#[derive(Debug)]
pub enum Next {
    /// The next piece of the body, in order.
    Data(Held),
    /// The body ended, with its sendable trailer fields if any.
    End(Option<Arc<Trailers>>),
    /// The copy is abandoned: the body will not be complete.
    Failed(TeeFailure),
}

/// A copy's end of its queue: the body's chunks as the primary reads them.
#[derive(Debug)]
pub struct CopyStream {
    rx: mpsc::UnboundedReceiver<Piece>,
    state: Arc<QueueState>,
    finished: bool,
}

/// Reads why a copy was abandoned after its [`CopyStream`] has been handed
/// to someone else (hyper's client).
#[derive(Debug, Clone)]
pub struct FailureWatch(Arc<QueueState>);

impl FailureWatch {
    pub fn failure(&self) -> Option<TeeFailure> {
        self.0.failure()
    }

    /// Resolves when the tee abandons the copy (for a task blocked in a
    /// write to its shadow).
    pub async fn abandoned(&self) -> TeeFailure {
        loop {
            if let Some(why) = self.failure() {
                return why;
            }
            self.0.abandoned.notified().await;
        }
    }
}

impl CopyStream {
    /// The next piece; waits for it.
    pub async fn next(&mut self) -> Next {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        if self.finished {
            return Poll::Ready(self.after_end());
        }
        let piece = std::task::ready!(self.rx.poll_recv(cx));
        Poll::Ready(self.take(piece))
    }

    /// The next piece if one is queued now.
    pub fn try_next(&mut self) -> Option<Next> {
        if self.finished {
            return Some(self.after_end());
        }
        match self.rx.try_recv() {
            Ok(piece) => Some(self.take(Some(piece))),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(self.take(None)),
        }
    }

    pub fn watch(&self) -> FailureWatch {
        FailureWatch(self.state.clone())
    }

    fn take(&mut self, piece: Option<Piece>) -> Next {
        match piece {
            Some(Piece::Data(chunk)) => {
                let len = chunk.bytes().len();
                self.state.bytes.fetch_sub(len, Ordering::AcqRel);
                self.state.chunks.fetch_sub(1, Ordering::AcqRel);
                // Abandoned meanwhile: what is still queued is not sent.
                match self.state.failure() {
                    Some(why) => {
                        self.finished = true;
                        Next::Failed(why)
                    }
                    None => Next::Data(chunk),
                }
            }
            Some(Piece::End(trailers)) => {
                self.finished = true;
                Next::End(trailers)
            }
            None => {
                self.finished = true;
                self.end_of_queue()
            }
        }
    }

    /// Asked again after the end: nothing more comes.
    fn after_end(&self) -> Next {
        Next::Failed(self.state.failure().unwrap_or(TeeFailure::ClientError))
    }

    /// The queue closed without an end: abandoned for a reason, or the
    /// body was dropped before its end (the primary's request failed or
    /// the client went away).
    fn end_of_queue(&self) -> Next {
        self.state.fail(TeeFailure::ClientError);
        Next::Failed(self.state.failure().unwrap_or(TeeFailure::ClientError))
    }
}

pin_project_lite::pin_project! {
    /// A request body that hands what passes through it to the copies'
    /// queues, chunk by chunk, never holding the primary back.
    pub struct TeeBody {
        #[pin]
        inner: ClientBody,
        feeds: Vec<Feed>,
        memory: Arc<MemoryBudget>,
        seen: u64,
    }
}

impl TeeBody {
    /// Wraps `inner` for copies whose `max_body_bytes` are `caps`; returns
    /// one [`CopyStream`] per cap, in order. If the body is dropped before
    /// its end, the copies see it failed (`ClientError`).
    pub fn new(
        inner: ClientBody,
        caps: impl ExactSizeIterator<Item = u64>,
        memory: &Arc<MemoryBudget>,
    ) -> (Self, Vec<CopyStream>) {
        let (feeds, copies) = queues(caps);
        let tee = TeeBody {
            inner,
            feeds,
            memory: memory.clone(),
            seen: 0,
        };
        (tee, copies)
    }
}

/// One queue per copy (of cap `caps[i]`): the tee's ends and the copies'.
fn queues(caps: impl ExactSizeIterator<Item = u64>) -> (Vec<Feed>, Vec<CopyStream>) {
    let mut feeds = Vec::with_capacity(caps.len());
    let mut copies = Vec::with_capacity(caps.len());
    for cap in caps {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(QueueState::default());
        feeds.push(Feed {
            tx,
            state: state.clone(),
            cap,
            ended: false,
        });
        copies.push(CopyStream {
            rx,
            state,
            finished: false,
        });
    }
    (feeds, copies)
}

/// Abandons every copy still fed, for `why`.
fn fail_all(feeds: &mut Vec<Feed>, why: TeeFailure) {
    for feed in feeds.drain(..) {
        feed.fail(why);
    }
}

/// Ends every copy still fed (with `trailers`).
fn end_all(feeds: &mut Vec<Feed>, trailers: Option<Arc<Trailers>>) {
    for feed in feeds.drain(..) {
        feed.end(trailers.clone());
    }
}

/// Queues `data` for every copy still fed; a copy that cannot take it is
/// abandoned (over its cap, or its queue is full: the shadow is slow).
fn deliver(feeds: &mut Vec<Feed>, memory: &Arc<MemoryBudget>, data: &Bytes, seen: u64) {
    feeds.retain_mut(|f| {
        let gone = f.tx.is_closed();
        f.ended |= gone;
        !gone
    });
    if feeds.is_empty() || data.is_empty() {
        return;
    }
    let Some(reservation) = memory.reserve(data.len()) else {
        fail_all(feeds, TeeFailure::Memory);
        return;
    };
    // Copied into an allocation of its own size, not a clone of hyper's
    // slice: a slice pins the whole read buffer it was cut from (up to
    // hundreds of KiB) while the budget counts only the slice, so what the
    // budget counts would not be what is held. The copy is one memcpy per
    // byte, what gathering cost. (`bench/memory.py --rows post` peaked at
    // 465 MiB RSS for a 128 MiB budget with clones; most of that was the
    // copy client keeping its first write, fixed in `client`; with both
    // fixes 157 MiB, as the gathering tee's 155 MiB in the same session.)
    let chunk = Held(Arc::new(Chunk {
        data: Bytes::copy_from_slice(data),
        _reservation: reservation,
    }));
    let mut i = 0;
    while i < feeds.len() {
        match feeds[i].offer(&chunk, seen) {
            Ok(()) => i += 1,
            Err(why) => {
                let mut feed = feeds.swap_remove(i);
                match why {
                    Some(why) => feed.fail(why),
                    // The copy is gone: nobody to tell.
                    None => feed.ended = true,
                }
            }
        }
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
        if this.feeds.is_empty() {
            return polled;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen = this.seen.saturating_add(data.len() as u64);
                    deliver(this.feeds, this.memory, data, *this.seen);
                } else if let Some(trailers) = frame.trailers_ref() {
                    // Trailers end the body: hyper's client sends them as the
                    // last frame and never polls again, so the end (`None`)
                    // is never seen.
                    match keep_trailers(this.memory, trailers) {
                        Ok(kept) => end_all(this.feeds, kept),
                        Err(why) => fail_all(this.feeds, why),
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // Over the route's limit: as large for the mirrors too.
                let why = if is_body_too_large(e.as_ref()) {
                    TeeFailure::TooLarge
                } else {
                    TeeFailure::ClientError
                };
                fail_all(this.feeds, why);
            }
            Poll::Ready(None) => end_all(this.feeds, None),
            Poll::Pending => {}
        }
        // hyper may stop polling once is_end_stream() is true: end the
        // copies as soon as the last data frame has passed.
        if this.inner.is_end_stream() {
            end_all(this.feeds, None);
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

    fn data(next: Option<Next>) -> Bytes {
        match next {
            Some(Next::Data(h)) => h.bytes().clone(),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn chunks_reach_every_copy_in_order_shared_and_budgeted() {
        let memory = MemoryBudget::new(1 << 20, None);
        let (mut feeds, mut copies) = queues([1000, 1000].into_iter());
        let a = Bytes::from_static(b"hello ");
        let b = Bytes::from_static(b"world");
        deliver(&mut feeds, &memory, &a, 6);
        deliver(&mut feeds, &memory, &b, 11);
        // One reservation per chunk, whatever the number of copies.
        assert_eq!(memory.in_use(), 11);
        end_all(&mut feeds, None);
        assert!(feeds.is_empty());
        let first = &mut copies[0];
        let got = data(first.try_next());
        assert_eq!(got, a);
        assert_ne!(
            got.as_ptr(),
            a.as_ptr(),
            "a copy of its own size, not the client's buffer"
        );
        assert_eq!(data(first.try_next()), b);
        assert!(matches!(first.try_next(), Some(Next::End(None))));
        // Written by one copy, still held by the other.
        assert_eq!(memory.in_use(), 11);
        let second = &mut copies[1];
        let got_too = data(Some(second.next().await));
        assert_eq!(got_too, a);
        assert_eq!(got_too.as_ptr(), got.as_ptr(), "one copy for every copy");
        assert_eq!(data(Some(second.next().await)), b);
        assert!(matches!(second.next().await, Next::End(None)));
        assert_eq!(memory.in_use(), 0);
        assert_eq!(second.watch().failure(), None);
    }

    #[tokio::test]
    async fn a_full_queue_abandons_only_its_copy_and_wakes_it() {
        let memory = MemoryBudget::new(64 << 20, None);
        let (mut feeds, mut copies) = queues([u64::MAX, u64::MAX].into_iter());
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let watch = copies[1].watch();
        let mut seen = 0;
        // Copy 0 keeps up; copy 1 never reads.
        for _ in 0..(QUEUE_BYTES / chunk.len()) {
            seen += chunk.len() as u64;
            deliver(&mut feeds, &memory, &chunk, seen);
            assert_eq!(data(copies[0].try_next()), chunk);
        }
        assert_eq!(feeds.len(), 2, "a queue exactly full is not over");
        seen += chunk.len() as u64;
        deliver(&mut feeds, &memory, &chunk, seen);
        assert_eq!(feeds.len(), 1, "the slow copy is abandoned");
        assert_eq!(watch.abandoned().await, TeeFailure::Slow);
        // What was queued is not handed out: the copy sees the failure.
        assert!(matches!(
            copies[1].try_next(),
            Some(Next::Failed(TeeFailure::Slow))
        ));
        drop(copies.remove(1));
        assert_eq!(data(copies[0].try_next()), chunk);
        assert_eq!(memory.in_use(), 0, "the abandoned queue's bytes came back");
        // A single chunk larger than the bound fits an empty queue.
        let big = Bytes::from(vec![1u8; QUEUE_BYTES + 1]);
        deliver(&mut feeds, &memory, &big, seen + big.len() as u64);
        assert_eq!(feeds.len(), 1);
        assert_eq!(data(copies[0].try_next()).len(), QUEUE_BYTES + 1);
    }

    #[test]
    fn cap_memory_and_the_client_abandon_copies_with_their_reason() {
        let memory = MemoryBudget::new(400, None); // buffers: 300
        let (mut feeds, copies) = queues([10, 1000].into_iter());
        deliver(&mut feeds, &memory, &Bytes::from_static(b"0123456789"), 10);
        deliver(&mut feeds, &memory, &Bytes::from_static(b"x"), 11);
        assert_eq!(feeds.len(), 1);
        assert_eq!(copies[0].watch().failure(), Some(TeeFailure::TooLarge));
        deliver(&mut feeds, &memory, &Bytes::from(vec![0u8; 301]), 312);
        assert!(feeds.is_empty());
        assert_eq!(copies[1].watch().failure(), Some(TeeFailure::Memory));
        drop(copies);
        assert_eq!(memory.in_use(), 0);

        // The tee dropped before the body's end (client reset, primary
        // failed): the copy is abandoned, not left waiting.
        let (feeds, mut copies) = queues([1000].into_iter());
        drop(feeds);
        assert!(matches!(
            copies[0].try_next(),
            Some(Next::Failed(TeeFailure::ClientError))
        ));
        // A copy that went away is simply no longer fed.
        let (mut feeds, copies) = queues([1000].into_iter());
        drop(copies);
        deliver(&mut feeds, &memory, &Bytes::from_static(b"a"), 1);
        assert!(feeds.is_empty());
        assert_eq!(memory.in_use(), 0);
    }
}
