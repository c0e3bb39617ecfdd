//! The two bounded copies a recorded request makes on the request path:
//! the request body as the primary reads it, and the answer's body as the
//! client reads it (appended to the record's line parts, so an answer
//! costs no buffer and no reservation of its own). Neither ever waits: a
//! chunk that does not fit the cap marks the body truncated, one that does
//! not fit the shadow memory budget drops the record (`over_budget`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::calls::{Expecting, Open};
use super::line::BodyBytes;
use super::{line, with_scratch, Recorder, RequestHead};
use crate::body::{BoxError, ProxyBody, UpstreamBody};
use crate::config::record::RecordConfig;
use crate::config::Config;
use crate::memory::{BoundedBuf, BufRefused, MemoryBudget};

/// A body copied into a buffer from `base` on, up to `cap` bytes: past
/// the cap the copy is let go and marked truncated. One rule for both
/// copies: the request's (its own buffer) and the answer's (after the
/// answer's head in the line's parts).
#[derive(Debug, Clone, Copy)]
struct Capped {
    base: usize,
    cap: usize,
    truncated: bool,
}

impl Capped {
    fn new(base: usize, cap: usize) -> Self {
        Capped {
            base,
            cap,
            truncated: false,
        }
    }

    /// Appends a chunk; `Err` when the memory budget refuses it.
    fn data(&mut self, buf: &mut BoundedBuf, data: &[u8]) -> Result<(), BufRefused> {
        if self.truncated {
            return Ok(());
        }
        let copied = buf.len() - self.base;
        if copied.saturating_add(data.len()) > self.cap {
            self.cut(buf);
            return Ok(());
        }
        buf.extend(data)
    }

    /// Lets the copy go, marked truncated.
    fn cut(&mut self, buf: &mut BoundedBuf) {
        self.truncated = true;
        buf.truncate(self.base);
    }

    fn body<'a>(&self, buf: &'a BoundedBuf) -> BodyBytes<'a> {
        BodyBytes {
            bytes: buf.as_slice().get(self.base..).unwrap_or_default(),
            truncated: self.truncated,
        }
    }
}

/// The request body being copied up to a cap.
#[derive(Debug)]
struct Copy {
    buf: BoundedBuf,
    copied: Capped,
    over_budget: bool,
    /// The body was read to its end.
    ended: bool,
}

impl Copy {
    fn new(memory: &Arc<MemoryBudget>, cap: usize) -> Self {
        Copy {
            // The cap is kept by `Capped`.
            buf: BoundedBuf::empty(memory, usize::MAX),
            copied: Capped::new(0, cap),
            over_budget: false,
            ended: false,
        }
    }

    fn data(&mut self, data: &[u8]) {
        if !self.over_budget && self.copied.data(&mut self.buf, data).is_err() {
            self.over_budget = true;
            drop(self.buf.take());
        }
    }

    /// The copy, or `None` when it did not fit the memory budget; marked
    /// truncated (kept out) when the primary answered before reading the
    /// body to its end.
    fn body(&mut self) -> Option<BodyBytes<'_>> {
        if self.over_budget {
            return None;
        }
        if !self.ended {
            self.copied.cut(&mut self.buf);
        }
        Some(self.copied.body(&self.buf))
    }
}

/// A request admitted for recording, until its answer has ended.
pub struct Pending {
    recorder: Arc<Recorder>,
    started: Instant,
    route: Arc<str>,
    config: Arc<RecordConfig>,
    /// The configuration in force: its `redact:` is what is hidden.
    settings: Arc<Config>,
    /// The line so far, held from the memory budget: `line::request_part`,
    /// from `response_at` `line::response_part`, and from `answer.base`
    /// the answer's body as the client has read it (up to the cap).
    parts: BoundedBuf,
    response_at: usize,
    answer: Capped,
    request: RequestCopy,
    /// With `egress:` on: where its outbound calls are gathered.
    calls: Option<Expecting>,
}

impl Pending {
    /// The request's part of the line written; `None` (counted) when the
    /// memory budget cannot hold it.
    pub(super) fn new(
        recorder: Arc<Recorder>,
        config: Arc<RecordConfig>,
        head: RequestHead<'_>,
        settings: &Arc<Config>,
        memory: &Arc<MemoryBudget>,
    ) -> Option<Self> {
        let time = SystemTime::now();
        let parts = with_scratch(|part| {
            line::request_part(part, &head, time, &settings.redact);
            // Room for the answer's part too, reserved before allocated.
            let mut parts = BoundedBuf::new(memory, usize::MAX, part.len().max(PARTS_CAPACITY))?;
            parts.extend(part).ok()?;
            Some(parts)
        });
        let Some(parts) = parts else {
            recorder.dropped(head.route, "over_budget");
            return None;
        };
        let answer = Capped::new(parts.len(), config.max_body_bytes);
        Some(Pending {
            recorder,
            started: Instant::now(),
            route: head.route.clone(),
            config,
            settings: settings.clone(),
            response_at: parts.len(),
            answer,
            parts,
            request: RequestCopy::Untapped,
            calls: None,
        })
    }

    /// Gathers the outbound calls that name one of `ids` (the correlation
    /// ids the egress reads) until the answer ends.
    pub fn expect_calls(&mut self, open: &Arc<Open>, ids: &[&str]) {
        let config = &self.config;
        self.calls = Expecting::new(
            open,
            ids,
            self.parts.budget(),
            config.max_body_bytes,
            config.max_calls,
        );
    }

    /// Wraps the request body: copied as the primary reads it. An empty
    /// body (a GET) is passed on as it is: nothing to copy.
    pub fn tap_request(&mut self, body: UpstreamBody) -> UpstreamBody {
        let RequestCopy::Untapped = self.request else {
            return body;
        };
        if body.is_end_stream() {
            self.request = RequestCopy::Empty;
            return body;
        }
        let cap = self.config.max_body_bytes;
        let mut copy = Copy::new(self.parts.budget(), cap);
        presize(&mut copy.buf, body.size_hint(), cap);
        let copy = Arc::new(Mutex::new(copy));
        self.request = RequestCopy::Tapped(copy.clone());
        UpstreamBody::teed(RequestTap { inner: body, copy })
    }

    /// Wraps the answer's body: copied as the client reads it; the record
    /// is sent when it ends.
    pub fn tap_response(mut self, resp: http::Response<ProxyBody>) -> http::Response<ProxyBody> {
        let (parts, body) = resp.into_parts();
        self.response_at = self.parts.len();
        let added = with_scratch(|part| {
            let status = parts.status.as_u16();
            line::response_part(part, status, &parts.headers, &self.settings.redact);
            self.parts.extend(part)
        });
        if added.is_err() {
            self.drop_as("over_budget");
            return http::Response::from_parts(parts, body);
        }
        self.answer = Capped::new(self.parts.len(), self.config.max_body_bytes);
        presize(
            &mut self.parts,
            body.size_hint(),
            self.config.max_body_bytes,
        );
        let tap = ResponseTap {
            inner: body,
            pending: Some(self),
        };
        http::Response::from_parts(parts, tap.boxed())
    }

    /// Appends a chunk of the answer's body to the parts, up to the cap.
    /// False when the memory budget refuses it: the record is dropped.
    fn answer_data(&mut self, data: &[u8]) -> bool {
        self.answer.data(&mut self.parts, data).is_ok()
    }

    /// The record is not written: counted under `reason`.
    fn drop_as(self, reason: &str) {
        self.recorder.dropped(&self.route, reason);
    }

    /// The answer has ended: the line is finished on this thread, in its
    /// lane of the writer's queue.
    fn complete(mut self) {
        let calls = self.calls.take().map(Expecting::close).unwrap_or_default();
        if calls.cut > 0 {
            self.recorder.calls_cut(&self.route, calls.cut);
        }
        // The request's copy is read under its lock: its tap is done by
        // now, unless the primary answered before reading the body, and
        // then the copy is only marked truncated.
        let mut tapped;
        let request = match &self.request {
            RequestCopy::Empty => Some(BodyBytes::default()),
            // Never read: kept out, as a body cut short.
            RequestCopy::Untapped => Some(BodyBytes {
                bytes: &[],
                truncated: true,
            }),
            RequestCopy::Tapped(copy) => {
                tapped = copy.lock();
                tapped.body()
            }
        };
        let Some(request_body) = request else {
            self.recorder.dropped(&self.route, "over_budget");
            return;
        };
        let Pending {
            recorder,
            started,
            route,
            config,
            settings,
            parts,
            response_at,
            answer,
            ..
        } = self;
        let duration = started.elapsed();
        recorder.queue_line(route, config, move |out| {
            // `response_at <= answer.base <= len` (the answer's body is
            // only ever cut back to its base).
            let (request, response) = parts.as_slice()[..answer.base].split_at(response_at);
            let end = line::Ending {
                request_body,
                response_body: answer.body(&parts),
                duration,
                calls: &calls,
            };
            line::finish_into(out, request, response, &end, &settings.redact);
            // The line takes over the parts' reservation.
            parts.into_reservation()
        });
    }
}

/// Room for a body of declared length up to the cap, made before its
/// first chunk: it is then copied once, not again at each doubling. A
/// refusal here is left to the chunks' own (`over_budget`).
fn presize(buf: &mut BoundedBuf, hint: SizeHint, cap: usize) {
    if let Some(len) = hint.exact().and_then(|n| usize::try_from(n).ok()) {
        if len <= cap {
            let _ = buf.reserve(len);
        }
    }
}

/// Bytes a record's line parts start with room for: a request's and an
/// answer's usual heads (the bench's GET line is 650 bytes in all).
const PARTS_CAPACITY: usize = 1024;

/// Where a recorded request's body copy stands.
enum RequestCopy {
    /// Not tapped yet.
    Untapped,
    /// The body was empty.
    Empty,
    /// Copied as the primary reads it.
    Tapped(Arc<Mutex<Copy>>),
}

pin_project_lite::pin_project! {
    /// The request body on its way to the primary, copied up to the cap.
    struct RequestTap {
        #[pin]
        inner: UpstreamBody,
        copy: Arc<Mutex<Copy>>,
    }
}

impl Body for RequestTap {
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
                let mut copy = this.copy.lock();
                if let Some(d) = frame.data_ref() {
                    copy.data(d);
                }
                if this.inner.is_end_stream() {
                    copy.ended = true;
                }
            }
            Poll::Ready(None) => this.copy.lock().ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.copy.lock().ended = true;
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The answer's body on its way to the client, copied up to the cap;
    /// the record is sent when it ends.
    struct ResponseTap {
        #[pin]
        inner: ProxyBody,
        pending: Option<Pending>,
    }

    impl PinnedDrop for ResponseTap {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(pending) = this.pending.take() {
                // An empty body may never be polled: that is a complete answer.
                if this.inner.is_end_stream() {
                    pending.complete();
                } else {
                    pending.drop_as("incomplete");
                }
            }
        }
    }
}

impl Body for ResponseTap {
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
                let refused = match (this.pending.as_mut(), frame.data_ref()) {
                    (Some(pending), Some(d)) => !pending.answer_data(d),
                    _ => false,
                };
                if let Some(pending) = this.pending.take_if(|_| refused) {
                    pending.drop_as("over_budget");
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(pending) = this.pending.take() {
                    pending.drop_as("incomplete");
                }
            }
            Poll::Ready(None) => {}
            Poll::Pending => {}
        }
        let ended = matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream();
        if ended {
            if let Some(pending) = this.pending.take() {
                pending.complete();
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
