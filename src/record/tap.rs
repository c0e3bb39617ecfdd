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
///
/// The copy is the line's text for the body: each chunk is escaped as a
/// JSON string's contents as it passes, while it is still in the cache,
/// and the line copies the text as it is. Escaping the whole copy when the
/// answer had ended read it back from memory that had gone cold (1.3 µs
/// of a recorded 4 KiB POST of letters, which need no escape at all, in
/// `bench/record_profile.py`; docs/benchmarks.md, "Recording, session
/// 15"). The escape's time moves from the answer's last frame to the
/// request body's way to the primary; it was on the serving thread either
/// way. From the first chunk that is not UTF-8 on, the copy holds the
/// body's raw bytes (the text so far turned back into them), and the line
/// writes base64.
#[derive(Debug, Clone, Copy)]
struct Capped {
    base: usize,
    cap: usize,
    truncated: bool,
    /// The body's bytes taken so far: the cap counts these, not the text.
    taken: usize,
    /// From `base` on: escaped text (true) or raw bytes.
    text: bool,
    /// The first bytes of a character the last chunk cut in two, kept
    /// out of the text until its end comes.
    split: Split,
}

/// Up to three bytes that begin a UTF-8 character.
#[derive(Debug, Clone, Copy, Default)]
struct Split {
    bytes: [u8; 4],
    len: u8,
}

impl Split {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The character's length, from its first byte.
    fn width(&self) -> usize {
        width(self.bytes[0])
    }
}

/// The length of the UTF-8 character a byte begins; 1 for ASCII and for
/// a byte that begins none (a continuation byte, or one no character
/// starts with).
fn width(first: u8) -> usize {
    match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

/// Where the character that `data` begins but does not end starts; the
/// length of `data` when it ends with a whole character, or with bytes
/// that begin none (those are for the UTF-8 check to refuse).
fn begun_at(data: &[u8]) -> usize {
    let n = data.len();
    for back in 1..=n.min(3) {
        let b = data[n - back];
        if b & 0xC0 != 0x80 {
            return if width(b) > back { n - back } else { n };
        }
    }
    n
}

impl Capped {
    fn new(base: usize, cap: usize) -> Self {
        Capped {
            base,
            cap,
            truncated: false,
            taken: 0,
            text: true,
            split: Split::default(),
        }
    }

    /// Appends a chunk; `Err` when the memory budget refuses it.
    fn data(&mut self, buf: &mut BoundedBuf, data: &[u8]) -> Result<(), BufRefused> {
        if self.truncated {
            return Ok(());
        }
        if self.taken.saturating_add(data.len()) > self.cap {
            self.cut(buf);
            return Ok(());
        }
        self.taken += data.len();
        if !self.text {
            return buf.extend(data);
        }
        // Escaped into this thread's scratch buffer, then copied: the
        // buffer's capacity is reserved before it grows, and an escape's
        // length is known only once written.
        with_scratch(|text| {
            let not_text = self.escape_chunk(text, data);
            buf.extend(text)?;
            match not_text {
                Ok(()) => Ok(()),
                Err((split, rest)) => self.turn_raw(buf, split.as_slice(), rest),
            }
        })
    }

    /// Escapes `data` into `text`, after the character the last chunk
    /// began (a character `data` leaves begun is kept in `split`). `Err`
    /// with the bytes from where the body stops being UTF-8 (a begun
    /// character's bytes, and the rest of `data`); `text` then holds what
    /// came before them.
    fn escape_chunk<'a>(
        &mut self,
        text: &mut Vec<u8>,
        mut data: &'a [u8],
    ) -> Result<(), (Split, &'a [u8])> {
        if self.split.len > 0 {
            let need = self.split.width() - usize::from(self.split.len);
            let (more, rest) = data.split_at(need.min(data.len()));
            let at = usize::from(self.split.len);
            self.split.bytes[at..at + more.len()].copy_from_slice(more);
            self.split.len += more.len() as u8;
            data = rest;
            if more.len() < need {
                return Ok(());
            }
            let split = std::mem::take(&mut self.split);
            match std::str::from_utf8(split.as_slice()) {
                Ok(c) => shadowgate_escape::escape_str(text, c),
                Err(_) => return Err((split, data)),
            }
        }
        // One pass: a character this chunk cuts in two is set aside first
        // (escaping the whole chunk, failing at its end, then checking it
        // and escaping it again took three passes over a chunk of text
        // that is not ASCII).
        let (whole, begun) = data.split_at(begun_at(data));
        if !shadowgate_escape::escape_utf8(text, whole) {
            return Err((Split::default(), data));
        }
        self.split.bytes[..begun.len()].copy_from_slice(begun);
        self.split.len = begun.len() as u8;
        Ok(())
    }

    /// The copy turned into the body's raw bytes: its text so far read
    /// back, then `split` and `rest` as they are.
    fn turn_raw(
        &mut self,
        buf: &mut BoundedBuf,
        split: &[u8],
        rest: &[u8],
    ) -> Result<(), BufRefused> {
        let raw = unescape(&buf.as_slice()[self.base..]);
        buf.truncate(self.base);
        self.text = false;
        self.split = Split::default();
        buf.extend(&raw)?;
        buf.extend(split)?;
        buf.extend(rest)
    }

    /// The body has ended: a character it left begun makes it not UTF-8.
    fn end(&mut self, buf: &mut BoundedBuf) -> Result<(), BufRefused> {
        if self.truncated || self.split.len == 0 {
            return Ok(());
        }
        let split = std::mem::take(&mut self.split);
        self.turn_raw(buf, split.as_slice(), &[])
    }

    /// Lets the copy go, marked truncated.
    fn cut(&mut self, buf: &mut BoundedBuf) {
        self.truncated = true;
        self.split = Split::default();
        buf.truncate(self.base);
    }

    fn body<'a>(&self, buf: &'a BoundedBuf) -> BodyBytes<'a> {
        BodyBytes {
            bytes: buf.as_slice().get(self.base..).unwrap_or_default(),
            truncated: self.truncated,
            escaped: self.text,
        }
    }
}

/// The bytes a JSON string's contents (as `shadowgate_escape` writes
/// them) stand for. Only when a body turns out not to be UTF-8.
fn unescape(text: &[u8]) -> Vec<u8> {
    let mut quoted = Vec::with_capacity(text.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(text);
    quoted.push(b'"');
    // The text is the escaper's own output: it always parses.
    serde_json::from_slice::<String>(&quoted)
        .map(String::into_bytes)
        .unwrap_or_default()
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
        if self.copied.end(&mut self.buf).is_err() {
            return None;
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
                truncated: true,
                ..BodyBytes::default()
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
            mut parts,
            response_at,
            mut answer,
            ..
        } = self;
        if answer.end(&mut parts).is_err() {
            recorder.dropped(&route, "over_budget");
            return;
        }
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
/// first chunk: it is then copied once, not again at each doubling. The
/// copy is escaped text: a quarter more than the body holds a JSON
/// document's (a quote every 7 bytes or so). A refusal here is left to
/// the chunks' own (`over_budget`).
fn presize(buf: &mut BoundedBuf, hint: SizeHint, cap: usize) {
    if let Some(len) = hint.exact().and_then(|n| usize::try_from(n).ok()) {
        if len <= cap {
            let _ = buf.reserve(len.saturating_add(len / 4));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the line writes for a whole body: its text escaped when it
    /// is UTF-8, else its bytes (for base64).
    fn whole(body: &[u8]) -> (Vec<u8>, bool) {
        let mut text = Vec::new();
        if shadowgate_escape::escape_utf8(&mut text, body) {
            (text, true)
        } else {
            (body.to_vec(), false)
        }
    }

    /// `body` copied in the chunks `cuts` make of it (after a head of
    /// five bytes in the same buffer), as the line gets it.
    fn copied(body: &[u8], cuts: &[usize], cap: usize) -> (Vec<u8>, bool, bool) {
        let memory = MemoryBudget::new(1 << 20, None);
        let mut buf = BoundedBuf::empty(&memory, usize::MAX);
        buf.extend(b"head:").unwrap();
        let mut copy = Capped::new(buf.len(), cap);
        let mut at = 0;
        for &cut in cuts.iter().chain([&body.len()]) {
            copy.data(&mut buf, &body[at..cut]).unwrap();
            at = cut;
        }
        copy.end(&mut buf).unwrap();
        assert_eq!(&buf.as_slice()[..5], b"head:", "the head is kept");
        let out = copy.body(&buf);
        (out.bytes.to_vec(), out.escaped, out.truncated)
    }

    fn bodies() -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = [
            "",
            "plain letters",
            "{\"a\":\"quote \\\" and \\\\ back\",\n\"b\":[1,2]}\r\t",
            "é 漢字 🦀 \u{1}\u{7f}\u{1f} end",
            "🦀🦀🦀",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        // Not UTF-8: a bad byte first, amid, last; a character begun at
        // the end; a begun one followed by ASCII; an overlong form.
        out.push(b"\xffabc".to_vec());
        out.push(b"ab\"c\xfe\\d\ne".to_vec());
        out.push("é \"x\"\u{1}".bytes().chain([0x80]).collect());
        out.push("ab\"🦀".bytes().take(6).collect());
        out.push(b"ab\xe6\x97x\"y".to_vec());
        out.push(b"\xc0\xafab".to_vec());
        // A byte no character begins with, at the end; a surrogate's form.
        out.push(b"ab\"\xf5\x80".to_vec());
        out.push(b"a\xed\xa0\x80b".to_vec());
        out
    }

    #[test]
    fn a_body_in_any_chunks_is_what_the_line_writes_for_it_whole() {
        for body in bodies() {
            let (text, utf8) = whole(&body);
            let want = (text, utf8, false);
            assert_eq!(
                copied(&body, &[], usize::MAX),
                want,
                "{body:?} in one chunk"
            );
            // Two chunks, cut at every place; and a byte at a time.
            for cut in 0..=body.len() {
                assert_eq!(
                    copied(&body, &[cut], usize::MAX),
                    want,
                    "{body:?} cut at {cut}"
                );
            }
            let bytes: Vec<usize> = (1..body.len()).collect();
            assert_eq!(
                copied(&body, &bytes, usize::MAX),
                want,
                "{body:?} a byte at a time"
            );
            // Three chunks, a character's bytes apart.
            for a in 0..body.len() {
                for b in a..=body.len() {
                    assert_eq!(
                        copied(&body, &[a, b], usize::MAX),
                        want,
                        "{body:?} at {a}, {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn past_the_cap_the_copy_is_let_go_whatever_its_form() {
        for body in bodies().into_iter().filter(|b| b.len() > 4) {
            let (text, utf8) = whole(&body);
            // The cap counts the body's bytes, not their escapes.
            assert_eq!(
                copied(&body, &[2], body.len()),
                (text, utf8, false),
                "{body:?}"
            );
            for cut in 0..=body.len() {
                let (bytes, _, truncated) = copied(&body, &[cut], body.len() - 1);
                assert!(truncated && bytes.is_empty(), "{body:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn the_copy_counts_against_the_memory_budget() {
        // Room for `n` quotes' text, not for three more.
        let memory = MemoryBudget::new(256, None);
        let n = memory.available() / 2 - 1;
        let mut buf = BoundedBuf::empty(&memory, usize::MAX);
        let mut copy = Capped::new(0, usize::MAX);
        copy.data(&mut buf, &vec![b'"'; n]).unwrap();
        assert_eq!(buf.len(), 2 * n, "escaped: a quote is two bytes");
        assert_eq!(copy.data(&mut buf, b"\"\"\""), Err(BufRefused::Memory));
        // Raw bytes need less room than their text: turning back fits.
        drop(buf);
        let mut buf = BoundedBuf::empty(&memory, usize::MAX);
        let mut copy = Capped::new(0, usize::MAX);
        copy.data(&mut buf, &vec![b'"'; n]).unwrap();
        copy.data(&mut buf, b"\xff").unwrap();
        assert_eq!(
            copy.body(&buf).bytes,
            [vec![b'"'; n], b"\xff".to_vec()].concat()
        );
        assert!(!copy.body(&buf).escaped);
    }
}
