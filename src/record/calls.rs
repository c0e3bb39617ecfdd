//! The outbound calls of a recorded request (with `egress:` on): while a
//! recorded request is being answered, its correlation ids name an open
//! [`CallLog`] in [`Open`]; the egress live side appends each call it has
//! answered for that id. When the inbound answer ends the log is closed and
//! its calls go into the record, in the order they were made; calls that
//! end later are not kept. Unrecorded requests have no entry: a call of
//! theirs costs one lookup in an empty (or small) map.
//!
//! Bounded: each body at the route's `record.max_body_bytes` (longer ones
//! are kept out, `body_truncated`), at most `record.max_calls` calls a
//! record, and every byte kept reserved from `limits.shadow_memory` first;
//! a call that does not fit is left out and counted (`calls_cut`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use parking_lot::Mutex;

use super::CapturedBody;
use crate::memory::{MemoryBudget, Reservation};

/// Bytes counted for a kept call besides its bodies (heads, names).
const HEAD_COST: usize = 512;

/// One outbound call as kept for a record.
#[derive(Debug, Clone)]
pub struct OutboundCall {
    /// The egress service's name.
    pub service: Arc<str>,
    pub method: Method,
    /// Origin-form: path and query.
    pub uri: Uri,
    pub request_headers: HeaderMap,
    pub request_body: CapturedBody,
    pub status: u16,
    pub response_headers: HeaderMap,
    pub response_body: CapturedBody,
    pub duration: Duration,
}

/// A record's outbound calls, as handed to the writer.
#[derive(Debug, Default)]
pub struct RecordedCalls {
    /// In the order the calls were made.
    pub list: Vec<OutboundCall>,
    /// Calls left out: over `max_calls` or over the memory budget.
    pub cut: u32,
    /// The bytes of `list`, held until the record is written.
    pub held: Option<Reservation>,
}

/// The calls of one recorded request, while it is being answered.
#[derive(Debug)]
pub struct CallLog {
    inner: Mutex<LogInner>,
    next: AtomicU64,
    max_body: usize,
    max_calls: usize,
}

#[derive(Debug)]
struct LogInner {
    /// (order made, call).
    calls: Vec<(u64, OutboundCall)>,
    cut: u32,
    held: Option<Reservation>,
    closed: bool,
}

/// A call's body as kept: whole, or empty and marked when it is longer
/// than the cap or was not read whole (`whole == false`).
pub fn capped(bytes: &Bytes, whole: bool, cap: usize) -> CapturedBody {
    if whole && bytes.len() <= cap {
        CapturedBody {
            bytes: bytes.clone(),
            truncated: false,
        }
    } else {
        CapturedBody {
            bytes: Bytes::new(),
            truncated: true,
        }
    }
}

impl CallLog {
    fn new(memory: &Arc<MemoryBudget>, max_body: usize, max_calls: usize) -> Self {
        CallLog {
            inner: Mutex::new(LogInner {
                calls: Vec::new(),
                cut: 0,
                held: Some(Reservation::empty(memory)),
                closed: false,
            }),
            next: AtomicU64::new(0),
            max_body,
            max_calls,
        }
    }

    /// A call starts: its place in the order made.
    pub fn begin(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The largest body kept (the route's `record.max_body_bytes`).
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// A call has been answered: kept when the record is still open, there
    /// is room and its bytes fit the budget; otherwise counted as cut.
    /// Only a short lock; never waits.
    pub fn add(&self, order: u64, call: OutboundCall) {
        let mut inner = self.inner.lock();
        if inner.closed {
            return;
        }
        let cost = HEAD_COST + call.request_body.bytes.len() + call.response_body.bytes.len();
        let room = inner.calls.len() < self.max_calls;
        if !room || !inner.held.as_mut().is_some_and(|h| h.grow(cost)) {
            inner.cut = inner.cut.saturating_add(1);
            return;
        }
        inner.calls.push((order, call));
    }

    /// The inbound answer has ended: no more calls; the kept ones in order.
    fn close(&self) -> RecordedCalls {
        let mut inner = self.inner.lock();
        inner.closed = true;
        let mut calls = std::mem::take(&mut inner.calls);
        calls.sort_by_key(|(order, _)| *order);
        RecordedCalls {
            list: calls.into_iter().map(|(_, c)| c).collect(),
            cut: inner.cut,
            held: inner.held.take(),
        }
    }
}

/// Correlation id → the open call log of a recorded request.
#[derive(Debug, Default)]
pub struct Open {
    map: Mutex<HashMap<Arc<str>, Arc<CallLog>>>,
    /// Entries in `map`, read without the lock.
    len: AtomicUsize,
}

impl Open {
    pub fn new() -> Arc<Self> {
        Arc::new(Open::default())
    }

    /// The open log of the recorded request `id` names, if any.
    pub fn get(&self, id: &str) -> Option<Arc<CallLog>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.map.lock().get(id).cloned()
    }

    /// Open logs now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, ids: &[Arc<str>], log: &Arc<CallLog>) {
        let mut map = self.map.lock();
        for id in ids {
            map.insert(id.clone(), log.clone());
        }
        self.len.store(map.len(), Ordering::Release);
    }

    fn remove(&self, ids: &[Arc<str>], log: &Arc<CallLog>) {
        let mut map = self.map.lock();
        for id in ids {
            // Another request may have taken the same id since.
            if map.get(id).is_some_and(|l| Arc::ptr_eq(l, log)) {
                map.remove(id);
            }
        }
        self.len.store(map.len(), Ordering::Release);
    }
}

/// What a recorded request holds while its calls may come: its entries in
/// [`Open`] go when it is dropped, whatever way the request ended.
#[derive(Debug)]
pub(super) struct Expecting {
    open: Arc<Open>,
    ids: Vec<Arc<str>>,
    log: Arc<CallLog>,
}

impl Expecting {
    pub(super) fn new(
        open: &Arc<Open>,
        ids: &[&str],
        memory: &Arc<MemoryBudget>,
        max_body: usize,
        max_calls: usize,
    ) -> Option<Self> {
        let mut ids: Vec<Arc<str>> = ids
            .iter()
            .filter(|id| !id.is_empty())
            .map(|id| Arc::from(*id))
            .collect();
        ids.dedup();
        if ids.is_empty() {
            return None;
        }
        let log = Arc::new(CallLog::new(memory, max_body, max_calls));
        open.insert(&ids, &log);
        Some(Expecting {
            open: open.clone(),
            ids,
            log,
        })
    }

    /// The answer has ended: the calls made so far.
    pub(super) fn close(self) -> RecordedCalls {
        self.log.close()
    }
}

impl Drop for Expecting {
    fn drop(&mut self) {
        self.open.remove(&self.ids, &self.log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(n: u8, body: usize) -> OutboundCall {
        OutboundCall {
            service: Arc::from("payments"),
            method: Method::POST,
            uri: Uri::from_static("/charges"),
            request_headers: HeaderMap::new(),
            request_body: capped(&Bytes::from(vec![n; body]), true, 1 << 20),
            status: 200,
            response_headers: HeaderMap::new(),
            response_body: CapturedBody::default(),
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn calls_in_order_made_bounded_and_gone_after_close() {
        let memory = MemoryBudget::new(1 << 20, None);
        let open = Open::new();
        let e = Expecting::new(&open, &["t1", "r1", ""], &memory, 64, 2).unwrap();
        assert_eq!(open.len(), 2);
        let log = open.get("t1").unwrap();
        let (a, b, c) = (log.begin(), log.begin(), log.begin());
        log.add(b, call(2, 10));
        log.add(a, call(1, 10));
        log.add(c, call(3, 10));
        assert!(memory.in_use() > 0);
        let got = e.close();
        assert_eq!(open.len(), 0, "entries go with the request");
        assert!(open.get("t1").is_none());
        let bodies: Vec<u8> = got.list.iter().map(|c| c.request_body.bytes[0]).collect();
        assert_eq!(bodies, vec![1, 2], "in the order made");
        assert_eq!(got.cut, 1, "over max_calls");
        log.add(9, call(9, 10));
        drop(got);
        assert_eq!(memory.in_use(), 0, "all returned");
    }

    #[test]
    fn over_budget_is_cut_and_long_bodies_are_marked() {
        let memory = MemoryBudget::new(4 * HEAD_COST, None);
        let open = Open::new();
        let e = Expecting::new(&open, &["t"], &memory, 64, 10).unwrap();
        let log = open.get("t").unwrap();
        for _ in 0..5 {
            let n = log.begin();
            log.add(n, call(0, 100));
        }
        let got = e.close();
        assert!(got.cut >= 2, "{got:?}");
        let long = capped(&Bytes::from(vec![0; 65]), true, 64);
        assert!(long.truncated && long.bytes.is_empty());
        assert!(capped(&Bytes::from_static(b"ab"), false, 64).truncated);
    }
}
