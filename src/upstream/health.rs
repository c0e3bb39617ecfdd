//! Passive health of a backend's endpoints: round robin over the healthy
//! ones, ejection (`eject_for`) of an endpoint that failed, and the errors
//! that name the endpoint at fault.

use std::sync::atomic::Ordering;

use super::{Backend, UpstreamError, MODE_UNKNOWN};
use crate::body::BoxError;

impl Backend {
    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True when every endpoint is being passed over after refusing
    /// connections. Mirrors skip such a backend rather than knock again.
    pub fn all_ejected(&self) -> bool {
        let now = self.now_ms();
        !self.endpoints.is_empty()
            && self
                .endpoints
                .iter()
                .all(|e| e.ejected_until.load(Ordering::Relaxed) > now)
    }

    /// Picks the next healthy endpoint round robin, skipping `avoid`; when
    /// every endpoint is ejected, the next one is tried anyway.
    pub(super) fn pick(&self, avoid: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut fallback = None;
        for i in 0..n {
            let idx = (start + i) % n;
            if Some(idx) == avoid {
                continue;
            }
            if self.endpoints[idx].ejected_until.load(Ordering::Relaxed) <= now {
                return Some(idx);
            }
            fallback.get_or_insert(idx);
        }
        fallback
    }

    pub(super) fn eject(&self, idx: usize, why: &str) {
        let until = self.now_ms() + self.config.eject_for.as_millis() as u64;
        let endpoint = &self.endpoints[idx];
        endpoint.ejected_until.store(until, Ordering::Relaxed);
        endpoint.mode.store(MODE_UNKNOWN, Ordering::Relaxed);
        tracing::warn!(
            backend = %self.config.name,
            endpoint = %endpoint.authority,
            eject_for = ?self.config.eject_for,
            why,
            "endpoint failed; passing it over"
        );
    }

    pub(super) fn connect_error(&self, idx: usize, source: BoxError) -> UpstreamError {
        self.eject(idx, "connection failed");
        UpstreamError::Connect {
            backend: self.config.name.clone(),
            endpoint: self.endpoints[idx].authority.to_string(),
            source,
        }
    }

    pub(super) fn exchange_error(&self, idx: usize, source: impl Into<BoxError>) -> UpstreamError {
        UpstreamError::Exchange {
            backend: self.config.name.clone(),
            endpoint: self.endpoints[idx].authority.to_string(),
            source: source.into(),
        }
    }
}
