//! The kept live exchanges, keyed by (id, service, method, path, ordinal of
//! that signature within the request): what replays v1's answers to v2's
//! calls. An entry is created by whichever side comes first; a shadow call
//! that comes before v1's waits on the entry's watch channel until the live
//! exchange is kept (or the entry goes). Bounded by count and bytes, the
//! oldest signatures evicted first (counted), and nothing older than `keep`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::registry::Inbound;

/// Bytes counted for a kept exchange besides its bodies (heads, key).
const HEAD_COST: usize = 512;

/// One live call and its answer, as kept.
#[derive(Debug)]
pub struct Exchange {
    pub method: Method,
    /// Origin-form: path and query.
    pub uri: Uri,
    pub request_headers: HeaderMap,
    pub request_body: Bytes,
    pub status: StatusCode,
    pub response_headers: HeaderMap,
    /// The whole response body, or empty when it was over the cap.
    pub response_body: Bytes,
    /// The response body was kept whole, so it can be replayed.
    pub replayable: bool,
}

impl Exchange {
    fn cost(&self) -> usize {
        HEAD_COST + self.request_body.len() + self.response_body.len()
    }
}

/// State of one slot (one ordinal of a signature).
#[derive(Debug, Clone)]
pub enum Slot {
    /// v1's call has not been answered yet (or has not come).
    Pending,
    /// v1's call, kept.
    Kept(Arc<Exchange>),
    /// v1's call failed: nothing to replay.
    Failed,
}

/// (id, service, method, path): calls of one request with the same
/// signature are told apart by their ordinal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sig {
    pub id: String,
    pub service: Arc<str>,
    pub method: Method,
    pub path: String,
}

#[derive(Debug)]
struct SlotState {
    tx: Arc<watch::Sender<Slot>>,
    live: bool,
    shadow: bool,
    cost: usize,
}

#[derive(Debug)]
struct SigState {
    at: Instant,
    live_next: usize,
    shadow_next: usize,
    slots: Vec<SlotState>,
    /// The mirrored inbound request, when the live calls are compared.
    compared: Option<Inbound>,
}

/// A live call that was kept but that no shadow call matched within `keep`.
#[derive(Debug)]
pub struct Orphan {
    pub inbound: Inbound,
    pub service: Arc<str>,
    pub exchange: Arc<Exchange>,
}

#[derive(Debug, Default)]
struct Inner {
    sigs: HashMap<Sig, SigState>,
    order: VecDeque<(Sig, Instant)>,
    slots: usize,
    bytes: usize,
}

/// The bounded store.
#[derive(Debug)]
pub struct Kept {
    inner: parking_lot::Mutex<Inner>,
    keep: Duration,
    max_slots: usize,
    max_bytes: usize,
    gauge: Gauge,
    evicted: Counter,
}

/// What a live call holds while it is in flight.
#[derive(Debug)]
pub struct LiveTicket {
    pub ordinal: usize,
    tx: Arc<watch::Sender<Slot>>,
}

impl Kept {
    pub fn new(
        keep: Duration,
        max_slots: usize,
        max_bytes: usize,
        gauge: Gauge,
        evicted: Counter,
    ) -> Self {
        Kept {
            inner: parking_lot::Mutex::default(),
            keep,
            max_slots: max_slots.max(1),
            max_bytes,
            gauge,
            evicted,
        }
    }

    fn slot<'a>(inner: &'a mut Inner, sig: &Sig, ordinal: usize) -> &'a mut SlotState {
        let Inner {
            sigs, order, slots, ..
        } = inner;
        let state = sigs.entry(sig.clone()).or_insert_with(|| {
            let now = Instant::now();
            order.push_back((sig.clone(), now));
            SigState {
                at: now,
                live_next: 0,
                shadow_next: 0,
                slots: Vec::new(),
                compared: None,
            }
        });
        while state.slots.len() <= ordinal {
            state.slots.push(SlotState {
                tx: Arc::new(watch::channel(Slot::Pending).0),
                live: false,
                shadow: false,
                cost: 0,
            });
            *slots += 1;
        }
        &mut state.slots[ordinal]
    }

    /// A live call starts: its ordinal and the slot it will fill.
    pub fn begin_live(&self, sig: &Sig, compared: Option<Inbound>) -> (LiveTicket, Vec<Orphan>) {
        let mut inner = self.inner.lock();
        let orphans = self.expire(&mut inner);
        let ordinal = inner.sigs.get(sig).map_or(0, |s| s.live_next);
        let slot = Self::slot(&mut inner, sig, ordinal);
        slot.live = true;
        let tx = slot.tx.clone();
        if let Some(state) = inner.sigs.get_mut(sig) {
            state.live_next += 1;
            if compared.is_some() {
                state.compared = compared;
            }
        }
        let ticket = LiveTicket { ordinal, tx };
        self.bound(&mut inner);
        self.gauge.set(inner.slots as i64);
        (ticket, orphans)
    }

    /// The live call ended: keep its exchange (or mark it failed) and wake
    /// the shadow calls waiting for it.
    pub fn finish_live(&self, sig: &Sig, ticket: LiveTicket, exchange: Option<Arc<Exchange>>) {
        let cost = exchange.as_ref().map_or(0, |e| e.cost());
        {
            let mut inner = self.inner.lock();
            // The signature may have been evicted meanwhile: then nothing is kept.
            if let Some(slot) = inner
                .sigs
                .get_mut(sig)
                .and_then(|s| s.slots.get_mut(ticket.ordinal))
                .filter(|s| Arc::ptr_eq(&s.tx, &ticket.tx))
            {
                slot.cost = cost;
                inner.bytes += cost;
            }
            self.bound(&mut inner);
            self.gauge.set(inner.slots as i64);
        }
        ticket.tx.send_replace(match exchange {
            Some(e) => Slot::Kept(e),
            None => Slot::Failed,
        });
    }

    /// A shadow call comes: its ordinal and the slot it replays from.
    pub fn shadow(&self, sig: &Sig) -> (usize, watch::Receiver<Slot>, Vec<Orphan>) {
        let mut inner = self.inner.lock();
        let orphans = self.expire(&mut inner);
        let ordinal = inner.sigs.get(sig).map_or(0, |s| s.shadow_next);
        let slot = Self::slot(&mut inner, sig, ordinal);
        slot.shadow = true;
        let rx = slot.tx.subscribe();
        if let Some(state) = inner.sigs.get_mut(sig) {
            state.shadow_next += 1;
        }
        self.bound(&mut inner);
        self.gauge.set(inner.slots as i64);
        (ordinal, rx, orphans)
    }

    /// Whether v1's call of this slot has started (it may still be in flight).
    pub fn live_seen(&self, sig: &Sig, ordinal: usize) -> bool {
        let inner = self.inner.lock();
        inner
            .sigs
            .get(sig)
            .and_then(|s| s.slots.get(ordinal))
            .is_some_and(|s| s.live)
    }

    /// Drops what is older than `keep`; returns the kept live calls no
    /// shadow call matched (for "only in primary").
    pub fn sweep(&self) -> Vec<Orphan> {
        let mut inner = self.inner.lock();
        let orphans = self.expire(&mut inner);
        self.gauge.set(inner.slots as i64);
        orphans
    }

    /// Kept exchanges now (slots, pending or kept) and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.slots, inner.bytes)
    }

    fn remove_front(inner: &mut Inner) -> Option<SigState> {
        let (sig, at) = inner.order.pop_front()?;
        let same = inner.sigs.get(&sig).is_some_and(|s| s.at == at);
        let state = if same { inner.sigs.remove(&sig) } else { None };
        if let Some(s) = &state {
            inner.slots -= s.slots.len();
            inner.bytes -= s.slots.iter().map(|x| x.cost).sum::<usize>();
        }
        state
    }

    fn expire(&self, inner: &mut Inner) -> Vec<Orphan> {
        let mut orphans = Vec::new();
        while let Some((sig, at)) = inner.order.front() {
            if at.elapsed() < self.keep {
                break;
            }
            let service = sig.service.clone();
            let Some(state) = Self::remove_front(inner) else {
                continue;
            };
            let Some(inbound) = state.compared else {
                continue;
            };
            for slot in state.slots.iter().filter(|s| s.live && !s.shadow) {
                if let Slot::Kept(e) = &*slot.tx.borrow() {
                    orphans.push(Orphan {
                        inbound: inbound.clone(),
                        service: service.clone(),
                        exchange: e.clone(),
                    });
                }
            }
        }
        orphans
    }

    fn bound(&self, inner: &mut Inner) {
        while inner.slots > self.max_slots || inner.bytes > self.max_bytes {
            match Self::remove_front(inner) {
                Some(state) => {
                    self.evicted.inc_by(state.slots.len() as u64);
                }
                None if inner.order.is_empty() => break,
                None => {}
            }
        }
    }
}
