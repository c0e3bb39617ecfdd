//! Passive health of a backend's endpoints: round robin over the healthy
//! ones, ejection (`eject_for`) of an endpoint that failed, and the errors
//! that name the endpoint at fault.

use std::sync::atomic::Ordering;

/// `EndpointState::last_ok` of an endpoint that never answered.
pub(super) const NEVER: u64 = u64::MAX;

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

    /// Notes that endpoint `idx` answered, or took a new connection.
    pub(super) fn alive(&self, idx: usize) {
        self.endpoints[idx]
            .last_ok
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether endpoint `idx` answered or took a connection since `started`
    /// (milliseconds since the epoch: when a connect that failed began).
    fn answered_since(&self, idx: usize, started: u64) -> bool {
        let last = self.endpoints[idx].last_ok.load(Ordering::Relaxed);
        last != NEVER && last >= started
    }

    /// A connection to endpoint `idx` failed. A refused connection, a
    /// failed handshake, or a connect timeout of an endpoint that did not
    /// answer since the attempt began passes the endpoint over for `eject_for`. A connect
    /// timeout of an endpoint that answered meanwhile on other connections
    /// does not: its accept queue is behind (a burst of new connections,
    /// an overloaded box), and passing it over would drop every copy or
    /// request for `eject_for` although it serves (found in the
    /// as-shipped benchmark: one wave of timed-out mirror connects turned
    /// a busy v2 away for five seconds).
    /// `started` is when the exchange that tried to connect began (`now_ms`).
    pub(super) fn connect_error(
        &self,
        idx: usize,
        started: u64,
        source: BoxError,
    ) -> UpstreamError {
        if is_timeout(&*source) && self.answered_since(idx, started) {
            tracing::debug!(
                backend = %self.config.name,
                endpoint = %self.endpoints[idx].authority,
                "connect timed out while the endpoint answers on other connections; not passed over"
            );
        } else {
            self.eject(idx, "connection failed");
        }
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

/// Whether a connect error is a timeout (hyper-util's connect timeout is an
/// `io::ErrorKind::TimedOut` somewhere in the chain).
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::is_timeout;

    #[test]
    fn timeouts_are_found_down_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("tcp connect error")]
        struct Wrapper(#[source] std::io::Error);
        let timed_out = Wrapper(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timeout",
        ));
        assert!(is_timeout(&timed_out));
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!is_timeout(&refused));
    }
}
