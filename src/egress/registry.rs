//! Which inbound request an outbound call belongs to: the proxy writes one
//! entry per mirrored request (its id, and its W3C trace id) when `egress`
//! is configured; the egress reads it to name the route and the mirror an
//! outbound call's differences are counted under. Bounded: the oldest
//! entries go first, and entries older than `keep` are not returned.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::compare::RouteComparison;
use crate::telemetry::window::Window;

/// What the proxy knows of one mirrored inbound request.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub route: Arc<str>,
    /// The compared mirror (the candidate) whose tally and window the
    /// outbound calls' differences go to.
    pub mirror: Arc<str>,
    /// The mirror's window (diff rate of the promotion gate).
    pub window: Arc<Window>,
    /// The route's comparison rules (ignore_paths, tolerance), if any.
    pub rules: Option<Arc<RouteComparison>>,
}

/// The bounded id → inbound request map.
#[derive(Debug)]
pub struct Registry {
    inner: parking_lot::Mutex<Inner>,
    max: usize,
    keep: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each id is allocated once, shared by the map and the order.
    map: HashMap<Arc<str>, (Instant, Inbound)>,
    order: VecDeque<Arc<str>>,
}

impl Registry {
    pub fn new(max: usize, keep: Duration) -> Self {
        Registry {
            inner: parking_lot::Mutex::default(),
            max: max.max(1),
            keep,
        }
    }

    /// Records that requests carrying `ids` were mirrored. Never waits
    /// beyond a short lock.
    pub fn register(&self, ids: &[&str], inbound: &Inbound) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        for id in ids.iter().filter(|id| !id.is_empty()) {
            if let Some(entry) = inner.map.get_mut(*id) {
                *entry = (now, inbound.clone());
                continue;
            }
            let id: Arc<str> = Arc::from(*id);
            inner.map.insert(id.clone(), (now, inbound.clone()));
            inner.order.push_back(id);
        }
        while inner.order.len() > self.max {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
    }

    /// The inbound request of `id`, if it was mirrored within `keep`.
    pub fn get(&self, id: &str) -> Option<Inbound> {
        let inner = self.inner.lock();
        inner
            .map
            .get(id)
            .filter(|(at, _)| at.elapsed() <= self.keep)
            .map(|(_, i)| i.clone())
    }
}
