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
/// Mantissas of the E24 preferred-number series (×10): 24 steps per decade,
/// each 1.07–1.15× the one before (about 1.1×).
const E24: [u64; 24] = [
    10, 11, 12, 13, 15, 16, 18, 20, 22, 24, 27, 30, 33, 36, 39, 43, 47, 51, 56, 62, 68, 75, 82, 91,
];
/// How many latency bucket edges there are: 0.1 ms to 62 s.
pub const LATENCY_EDGES: usize = 5 * 24 + 20;

const fn latency_edges_us() -> [u64; LATENCY_EDGES] {
    let mut out = [0u64; LATENCY_EDGES];
    let mut i = 0;
    let mut scale = 10; // mantissa 10 × 10 µs = 100 µs = 0.1 ms
    while i < LATENCY_EDGES {
        out[i] = E24[i % 24] * scale;
        i += 1;
        if i % 24 == 0 {
            scale *= 10;
        }
    }
    out
}

/// The latency bucket edges (inclusive upper bounds), in microseconds:
/// 100, 110, 120, 130, 150, … 56 000 000, 62 000 000. The one set of edges
/// shared by the sliding windows (the promotion gates' p99) and the
/// Prometheus histogram `shadowgate_request_duration_seconds`, so Grafana's
/// `histogram_quantile` and the gates see the same buckets, and window
/// counts from any replica can be added bucket by bucket.
pub const LATENCY_EDGES_US: [u64; LATENCY_EDGES] = latency_edges_us();

const fn latency_edges_seconds() -> [f64; LATENCY_EDGES] {
    let mut out = [0f64; LATENCY_EDGES];
    let mut i = 0;
    while i < LATENCY_EDGES {
        out[i] = LATENCY_EDGES_US[i] as f64 / 1e6;
        i += 1;
    }
    out
}

/// [`LATENCY_EDGES_US`] in seconds, exactly as the Prometheus histogram
/// exports them (`le` labels) and as recording compares against them.
pub const LATENCY_EDGES_SECONDS: [f64; LATENCY_EDGES] = latency_edges_seconds();

/// Counters per slot: one per edge plus one for anything above the last.
const LATENCY_BUCKETS: usize = LATENCY_EDGES + 1;

/// Drop reasons tracked per slot (index = position).
pub const DROP_REASONS: [&str; 7] = [
    "overload",
    "body_too_large",
    "method",
    "body_incomplete",
    "backend_unhealthy",
    "memory",
    "shadow_slow",
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

/// `Slot::period` while one thread clears the slot for a new period.
const CLEARING: u64 = u64::MAX;

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

/// The bucket of a duration in seconds: the first edge it does not exceed
/// (the Prometheus `le` rule), or the overflow bucket.
fn bucket_of(seconds: f64) -> usize {
    LATENCY_EDGES_SECONDS.partition_point(|edge| *edge < seconds)
}

/// Upper bound of bucket `i` in milliseconds (the last edge for the overflow bucket).
fn bound_of(i: usize) -> f64 {
    LATENCY_EDGES_US[i.min(LATENCY_EDGES - 1)] as f64 / 1000.0
}

impl Window {
    fn period_now(&self) -> u64 {
        self.epoch.elapsed().as_secs() / SLOT_SECS + 1
    }

    /// The slot of the current period, cleared first if it held an older one.
    ///
    /// The thread that takes a slot over marks it `CLEARING` while it zeroes
    /// the counters and publishes the period only afterwards; the others
    /// wait for that (it is a few hundred stores). Publishing the period
    /// first, as before, let another thread count into the slot before the
    /// clear wiped its count: with several requests at once on a new period,
    /// a request could go missing from the window (seen as a promotion test
    /// that counted 9 of 10 requests for ever).
    fn slot(&self) -> &Slot {
        let period = self.period_now();
        let slot = &self.slots[(period as usize) % SLOTS];
        let mut spins = 0u32;
        loop {
            let seen = slot.period.load(Ordering::Acquire);
            // `seen > period`: this thread was held up past a whole ring
            // turn; count into the newer period rather than wipe it.
            if seen == period || (seen > period && seen != CLEARING) {
                return slot;
            }
            if seen == CLEARING {
                spins += 1;
                if spins.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            if slot
                .period
                .compare_exchange(seen, CLEARING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.clear();
                slot.period.store(period, Ordering::Release);
                return slot;
            }
        }
    }

    /// One answered request (or exchange) and its duration; `error` for 5xx
    /// and failed exchanges.
    pub fn record(&self, duration: Duration, error: bool) {
        self.record_seconds(duration.as_secs_f64(), error);
    }

    /// As [`Window::record`], with the duration in seconds (the value the
    /// Prometheus histogram observes, so both put it in the same bucket).
    pub fn record_seconds(&self, seconds: f64, error: bool) {
        let slot = self.slot();
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[bucket_of(seconds)].fetch_add(1, Ordering::Relaxed);
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
        let mut latency = vec![0u64; LATENCY_BUCKETS];
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
        s.latency = latency;
        s.update_percentiles();
        s
    }
}

/// Quantile `q` of bucket counts, interpolated linearly inside the bucket
/// that holds it (from the previous edge, or 0 for the first bucket) — the
/// arithmetic of Prometheus' `histogram_quantile`, which reads the same
/// edges; above the last edge it answers the last edge, as it does.
fn percentile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, c) in counts.iter().enumerate() {
        let c = *c as f64;
        if c > 0.0 && seen + c >= rank {
            if i >= LATENCY_EDGES {
                return Some(bound_of(LATENCY_EDGES - 1));
            }
            let lower = if i == 0 { 0.0 } else { bound_of(i - 1) };
            let upper = bound_of(i);
            let within = ((rank - seen) / c).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        seen += c;
    }
    Some(bound_of(LATENCY_EDGES - 1))
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
    /// Requests per latency bucket ([`LATENCY_EDGES_US`], then one for
    /// anything slower). The same edges everywhere, so summaries (of other
    /// spans, targets or replicas) add up with [`WindowSummary::merge`].
    #[serde(skip)]
    pub latency: Vec<u64>,
}

/// A [`WindowSummary`]'s counts as plain data, for a fleet's shared store:
/// each replica publishes its own, and the others merge them exactly (the
/// same bucket edges everywhere).
#[derive(Debug, Default, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SummaryRecord {
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub compared: u64,
    pub different: u64,
    pub dropped: Vec<u64>,
    pub failed: Vec<u64>,
    pub latency: Vec<u64>,
}

impl From<&WindowSummary> for SummaryRecord {
    fn from(s: &WindowSummary) -> Self {
        SummaryRecord {
            seconds: s.seconds,
            requests: s.requests,
            errors: s.errors,
            compared: s.compared,
            different: s.different,
            dropped: s.dropped.to_vec(),
            failed: s.failed.to_vec(),
            latency: s.latency.clone(),
        }
    }
}

impl SummaryRecord {
    /// Back to a summary (percentiles recomputed from the buckets).
    pub fn summary(&self) -> WindowSummary {
        let mut s = WindowSummary {
            seconds: self.seconds,
            requests: self.requests,
            errors: self.errors,
            compared: self.compared,
            different: self.different,
            ..WindowSummary::default()
        };
        for (a, b) in s.dropped.iter_mut().zip(&self.dropped) {
            *a = *b;
        }
        for (a, b) in s.failed.iter_mut().zip(&self.failed) {
            *a = *b;
        }
        s.latency = vec![0; LATENCY_BUCKETS];
        for (a, b) in s.latency.iter_mut().zip(&self.latency) {
            *a = *b;
        }
        s.update_percentiles();
        s
    }
}

impl WindowSummary {
    /// Adds `other`'s counts to these and recomputes the percentiles from
    /// the summed buckets. `seconds` becomes the longer of the two spans.
    pub fn merge(&mut self, other: &WindowSummary) {
        self.seconds = self.seconds.max(other.seconds);
        self.requests += other.requests;
        self.errors += other.errors;
        self.compared += other.compared;
        self.different += other.different;
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        for (a, b) in self.failed.iter_mut().zip(other.failed) {
            *a += b;
        }
        self.latency.resize(LATENCY_BUCKETS, 0);
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
        self.update_percentiles();
    }

    fn update_percentiles(&mut self) {
        self.p50_ms = percentile(&self.latency, 0.50);
        self.p90_ms = percentile(&self.latency, 0.90);
        self.p99_ms = percentile(&self.latency, 0.99);
    }

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
    fn summaries_survive_the_store_and_merge_exactly() {
        let (a, b) = (Window::default(), Window::default());
        for ms in [1u64, 2, 5, 40, 300] {
            a.record(Duration::from_millis(ms), ms > 100);
            b.record(Duration::from_millis(ms * 2), false);
        }
        b.record_compare(true);
        let span = Duration::from_secs(60);
        let (sa, sb) = (a.summary(span), b.summary(span));
        let text = serde_json::to_string(&SummaryRecord::from(&sb)).unwrap();
        let back: SummaryRecord = serde_json::from_str(&text).unwrap();
        let sb2 = back.summary();
        assert_eq!((sb2.requests, sb2.compared, sb2.different), (5, 1, 1));
        assert_eq!(sb2.latency, sb.latency);
        assert_eq!(sb2.p99_ms, sb.p99_ms);
        let mut merged = sa.clone();
        merged.merge(&sb2);
        let mut exact = sa;
        exact.merge(&sb);
        assert_eq!(merged.requests, 10);
        assert_eq!(merged.errors, 1);
        assert_eq!(merged.latency, exact.latency);
        assert_eq!(merged.p50_ms, exact.p50_ms);
    }

    /// The window tracks every reason and kind the events know (a missing
    /// one is silently not counted: `memory` was, when it was added).
    #[test]
    fn the_window_tracks_every_drop_reason_and_error_kind() {
        use crate::telemetry::events::{DropReason, MirrorErrorKind};
        let reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons, DROP_REASONS);
        let kinds: Vec<&str> = MirrorErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, ERROR_KINDS);
    }

    /// Several threads counting at once into a new period lose nothing
    /// (each fresh window's first records take its slot over).
    #[test]
    fn concurrent_records_at_a_new_period_are_all_counted() {
        const THREADS: usize = 4;
        for _ in 0..300 {
            let w = std::sync::Arc::new(Window::default());
            let start = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (w, start) = (w.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        for _ in 0..50 {
                            w.record(Duration::from_millis(1), false);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let s = w.summary(Duration::from_secs(60));
            assert_eq!(s.requests, (THREADS * 50) as u64);
        }
    }

    #[test]
    fn edges_rise_about_1_1x_from_a_tenth_of_a_ms_past_a_minute() {
        assert_eq!(LATENCY_EDGES_US[0], 100);
        assert_eq!(LATENCY_EDGES_US[1], 110);
        assert_eq!(LATENCY_EDGES_US[24], 1000);
        assert_eq!(LATENCY_EDGES_US[LATENCY_EDGES - 1], 62_000_000);
        for w in LATENCY_EDGES_US.windows(2) {
            let ratio = w[1] as f64 / w[0] as f64;
            assert!((1.06..=1.16).contains(&ratio), "{w:?}");
        }
        for (us, s) in LATENCY_EDGES_US.iter().zip(LATENCY_EDGES_SECONDS) {
            // The `le` label prints the edge as written, not a rounding of it.
            let written = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
            let written = written.trim_end_matches('0').trim_end_matches('.');
            assert_eq!(format!("{s}"), written);
        }
    }

    #[test]
    fn buckets_are_monotonic_and_inclusive_like_prometheus() {
        assert_eq!(bucket_of(0.000_05), 0);
        assert_eq!(
            bucket_of(0.0001),
            0,
            "an edge belongs to its own bucket (le)"
        );
        assert_eq!(bucket_of(0.000_100_1), 1);
        let mut last = 0;
        for ms in [0.2, 1.0, 5.0, 20.0, 100.0, 1000.0, 10_000.0, 60_000.0] {
            let b = bucket_of(ms / 1000.0);
            assert!(b > last, "{ms}");
            assert!(
                bound_of(b) >= ms && (b == 0 || bound_of(b - 1) < ms),
                "{ms}"
            );
            last = b;
        }
        assert_eq!(bucket_of(100.0), LATENCY_EDGES, "overflow bucket");
    }

    #[test]
    fn summaries_merge_bucket_by_bucket() {
        let a = Window::default();
        let b = Window::default();
        for _ in 0..90 {
            a.record(Duration::from_millis(2), false);
        }
        for _ in 0..10 {
            b.record(Duration::from_millis(50), true);
        }
        let both = Window::default();
        for _ in 0..90 {
            both.record(Duration::from_millis(2), false);
        }
        for _ in 0..10 {
            both.record(Duration::from_millis(50), true);
        }
        let mut merged = a.summary(Duration::from_secs(60));
        merged.merge(&b.summary(Duration::from_secs(60)));
        let whole = both.summary(Duration::from_secs(60));
        assert_eq!((merged.requests, merged.errors), (100, 10));
        assert_eq!(merged.latency, whole.latency);
        assert_eq!(merged.p99_ms, whole.p99_ms);
        assert_eq!(merged.p50_ms, whole.p50_ms);
        // Merging into an empty summary gives the other one's figures.
        let mut empty = WindowSummary::default();
        empty.merge(&whole);
        assert_eq!(empty.p90_ms, whole.p90_ms);
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
        assert!((1.8..=2.0).contains(&p50), "{p50}");
        let p99 = s.p99_ms.unwrap();
        assert!((47.0..=51.0).contains(&p99), "{p99}");

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
