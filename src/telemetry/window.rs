//! Sliding-window statistics per route × backend × role, for the API and the
//! dashboard: request and error counts, latency percentiles, dropped and
//! failed mirrors, over the last 1, 5 and 15 minutes.
//!
//! Time is cut into 10-second slots kept in a ring of 90 (15 minutes).
//! Recording is a handful of relaxed atomic adds on the current slot; a slot
//! is cleared when the ring comes round to it again. Reads sum the slots of
//! a window. Counts may be off by the few requests that race a slot change,
//! which a dashboard can live with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Seconds per slot.
const SLOT_SECS: u64 = 10;
/// Slots in the ring: 15 minutes.
const SLOTS: usize = 90;
/// Latency bucket upper bounds grow by this factor from `FIRST_BOUND_MS`.
const GROWTH: f64 = 1.4;
const FIRST_BOUND_MS: f64 = 0.1;
const LATENCY_BUCKETS: usize = 48;

/// Drop reasons tracked per slot (index = position).
pub const DROP_REASONS: [&str; 5] = [
    "overload",
    "body_too_large",
    "method",
    "body_incomplete",
    "backend_unhealthy",
];
/// Mirror error kinds tracked per slot.
pub const ERROR_KINDS: [&str; 6] = [
    "connect",
    "timeout",
    "reset",
    "protocol",
    "status_5xx",
    "grpc_status",
];

#[derive(Debug)]
struct Slot {
    /// Which 10-second period this slot holds (seconds / SLOT_SECS + 1; 0 = never used).
    period: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    compared: AtomicU64,
    different: AtomicU64,
    drops: [AtomicU64; DROP_REASONS.len()],
    failures: [AtomicU64; ERROR_KINDS.len()],
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            period: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            compared: AtomicU64::new(0),
            different: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Slot {
    fn clear(&self) {
        for c in [
            &self.requests,
            &self.errors,
            &self.compared,
            &self.different,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for c in self.drops.iter().chain(&self.failures).chain(&self.latency) {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The window statistics of one target.
#[derive(Debug)]
pub struct Window {
    epoch: Instant,
    slots: Box<[Slot]>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            epoch: Instant::now(),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

fn bucket_of(ms: f64) -> usize {
    if ms <= FIRST_BOUND_MS {
        return 0;
    }
    let i = ((ms / FIRST_BOUND_MS).ln() / GROWTH.ln()).ceil() as usize;
    i.min(LATENCY_BUCKETS - 1)
}

fn bound_of(i: usize) -> f64 {
    FIRST_BOUND_MS * GROWTH.powi(i as i32)
}

impl Window {
    fn period_now(&self) -> u64 {
        self.epoch.elapsed().as_secs() / SLOT_SECS + 1
    }

    fn slot(&self) -> &Slot {
        let period = self.period_now();
        let slot = &self.slots[(period as usize) % SLOTS];
        let seen = slot.period.load(Ordering::Acquire);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.clear();
        }
        slot
    }

    /// One answered request (or exchange) and its duration; `error` for 5xx
    /// and failed exchanges.
    pub fn record(&self, duration: Duration, error: bool) {
        let slot = self.slot();
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = duration.as_secs_f64() * 1000.0;
        slot.latency[bucket_of(ms)].fetch_add(1, Ordering::Relaxed);
    }

    /// A mirror copy not sent.
    pub fn record_drop(&self, reason: &str) {
        if let Some(i) = DROP_REASONS.iter().position(|r| *r == reason) {
            self.slot().drops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A mirror copy that failed (counted as an error, without latency when it has none).
    pub fn record_failure(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.slot().failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A compared pair, and whether it really differed.
    pub fn record_compare(&self, different: bool) {
        let slot = self.slot();
        slot.compared.fetch_add(1, Ordering::Relaxed);
        if different {
            slot.different.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sums the last `span` (rounded up to whole slots, the current one included).
    pub fn summary(&self, span: Duration) -> WindowSummary {
        let now = self.period_now();
        let n = span.as_secs().div_ceil(SLOT_SECS).clamp(1, SLOTS as u64);
        let oldest = now.saturating_sub(n - 1);
        let mut s = WindowSummary::default();
        let mut latency = [0u64; LATENCY_BUCKETS];
        for slot in self.slots.iter() {
            let p = slot.period.load(Ordering::Acquire);
            if p == 0 || p < oldest || p > now {
                continue;
            }
            s.requests += slot.requests.load(Ordering::Relaxed);
            s.errors += slot.errors.load(Ordering::Relaxed);
            s.compared += slot.compared.load(Ordering::Relaxed);
            s.different += slot.different.load(Ordering::Relaxed);
            for (i, c) in slot.drops.iter().enumerate() {
                s.dropped[i] += c.load(Ordering::Relaxed);
            }
            for (i, c) in slot.failures.iter().enumerate() {
                s.failed[i] += c.load(Ordering::Relaxed);
            }
            for (i, c) in slot.latency.iter().enumerate() {
                latency[i] += c.load(Ordering::Relaxed);
            }
        }
        // Seconds actually covered: the process may be younger than the span.
        let elapsed = self.epoch.elapsed().as_secs_f64();
        s.seconds = span.as_secs_f64().min(elapsed.max(1.0));
        s.p50_ms = percentile(&latency, 0.50);
        s.p90_ms = percentile(&latency, 0.90);
        s.p99_ms = percentile(&latency, 0.99);
        s
    }
}

/// Upper bound of the bucket holding quantile `q`, interpolated inside it.
fn percentile(counts: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, c) in counts.iter().enumerate() {
        let c = *c as f64;
        if c > 0.0 && seen + c >= rank {
            let lower = if i == 0 { 0.0 } else { bound_of(i - 1) };
            let upper = bound_of(i);
            let within = ((rank - seen) / c).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        seen += c;
    }
    Some(bound_of(LATENCY_BUCKETS - 1))
}

/// Totals of one window.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WindowSummary {
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub compared: u64,
    pub different: u64,
    #[serde(skip)]
    pub dropped: [u64; DROP_REASONS.len()],
    #[serde(skip)]
    pub failed: [u64; ERROR_KINDS.len()],
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl WindowSummary {
    pub fn rate_per_sec(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1.0)
    }
    /// Errors as a percentage of requests.
    pub fn error_percent(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 * 100.0 / self.requests as f64)
    }
    /// Real differences as a percentage of compared pairs.
    pub fn diff_percent(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.different as f64 * 100.0 / self.compared as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_a_minute() {
        assert_eq!(bucket_of(0.05), 0);
        let mut last = 0;
        for ms in [0.2, 1.0, 5.0, 20.0, 100.0, 1000.0, 10_000.0] {
            let b = bucket_of(ms);
            assert!(b > last, "{ms}");
            assert!(
                bound_of(b) >= ms && (b == 0 || bound_of(b - 1) < ms),
                "{ms}"
            );
            last = b;
        }
        assert!(bound_of(LATENCY_BUCKETS - 1) > 60_000.0);
    }

    #[tokio::test(start_paused = true)]
    async fn windows_count_and_forget() {
        let w = Window::default();
        for i in 0..100 {
            w.record(
                Duration::from_millis(if i < 90 { 2 } else { 50 }),
                i % 10 == 0,
            );
        }
        w.record_drop("overload");
        w.record_failure("timeout");
        let s = w.summary(Duration::from_secs(60));
        assert_eq!((s.requests, s.errors), (100, 10));
        assert_eq!(s.dropped[0], 1);
        assert_eq!(s.failed[1], 1);
        let p50 = s.p50_ms.unwrap();
        assert!((1.4..=2.8).contains(&p50), "{p50}");
        let p99 = s.p99_ms.unwrap();
        assert!((35.0..=70.0).contains(&p99), "{p99}");

        // Two minutes later the 1-minute window is empty, the 5-minute one is not.
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(w.summary(Duration::from_secs(60)).requests, 0);
        assert_eq!(w.summary(Duration::from_secs(300)).requests, 100);
        // After 15 minutes the ring has come round: everything is forgotten.
        tokio::time::advance(Duration::from_secs(900)).await;
        w.record(Duration::from_millis(1), false);
        assert_eq!(w.summary(Duration::from_secs(900)).requests, 1);
    }
}
