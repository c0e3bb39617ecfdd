//! Prometheus metrics. Families are registered once; the request path holds
//! pre-resolved handles (`TargetMetrics`) so recording is a few atomic adds.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::window::{Window, LATENCY_EDGES_SECONDS};

/// The part a backend plays for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Role {
    #[allow(non_camel_case_types)]
    primary,
    #[allow(non_camel_case_types)]
    mirror,
    /// A second instance of the primary's version, for noise learning.
    #[allow(non_camel_case_types)]
    secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::primary => "primary",
            Role::mirror => "mirror",
            Role::secondary => "secondary",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub backend: String,
    pub role: Role,
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TargetLabels {
    pub route: String,
    pub backend: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MirrorLabels {
    pub route: String,
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub route: String,
    pub backend: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub route: String,
    pub backend: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CompareLabels {
    pub route: String,
    pub backend: String,
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PromotionLabels {
    pub route: String,
    pub action: String,
    pub trigger: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcLabels {
    pub route: String,
    pub backend: String,
    pub role: Role,
    pub grpc_status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Egress calls: service (or `unlisted`), side (`live` / `shadow`), outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EgressLabels {
    pub service: String,
    pub side: String,
    pub outcome: String,
}

/// Egress call durations: service and side.
/// Labels of the records written (`routes[].record`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RecordLabels {
    pub route: String,
}

/// Labels of an admin-side listener: `admin` or `metrics` (`metrics.listen`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

/// Labels of the records dropped (`routes[].record`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RecordDropLabels {
    pub route: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EgressSideLabels {
    pub service: String,
    pub side: String,
}

fn duration_histogram() -> Histogram {
    // The windows' edges (0.1 ms … 62 s, about 1.1× apart), so Grafana's
    // p99 and the promotion gates' p99 come from the same buckets.
    Histogram::new(LATENCY_EDGES_SECONDS)
}

/// Every metric family shadowgate exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<TargetLabels, Histogram, fn() -> Histogram>,
    pub mirror_dropped: Family<ReasonLabels, Counter>,
    pub mirror_errors: Family<KindLabels, Counter>,
    pub mirror_in_flight: Family<MirrorLabels, Gauge>,
    pub grpc_errors: Family<GrpcLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub promotions: Family<PromotionLabels, Counter>,
    pub compare: Family<CompareLabels, Counter>,
    pub access_log_dropped: Counter,
    /// Bytes held for shadows now (body copies, captures, comparison queue).
    pub shadow_memory: Gauge,
    /// Egress calls by service, side and outcome.
    pub egress_requests: Family<EgressLabels, Counter>,
    /// Egress call durations by service and side.
    pub egress_duration: Family<EgressSideLabels, Histogram, fn() -> Histogram>,
    /// Live exchanges kept for replay.
    pub egress_kept: Gauge,
    /// Kept exchanges evicted to stay within the bounds.
    pub egress_evicted: Counter,

    /// Retries of primary requests (`routes[].retries`), by the outcome retried.
    pub retries: Family<ReasonLabels, Counter>,
    /// Records written to a route's `record` file.
    pub record_written: Family<RecordLabels, Counter>,
    /// Records not written, by route and reason.
    pub record_dropped: Family<RecordDropLabels, Counter>,
    /// Admin (or metrics) connections closed at once, over the connection cap.
    pub admin_refused: Family<ListenerLabels, Counter>,

    /// Outbound calls left out of records (over `max_calls` or the budget).
    pub record_calls_cut: Family<RecordLabels, Counter>,
    /// Sliding windows per target; kept across reloads.
    windows: parking_lot::Mutex<HashMap<TargetLabels, Arc<Window>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shadowgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, backend, role and status code",
            requests.clone(),
        );
        let duration = Family::<TargetLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to the end of the backend's response",
            duration.clone(),
        );
        let mirror_dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "mirror_dropped",
            "Mirror copies not sent, by reason",
            mirror_dropped.clone(),
        );
        let mirror_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "mirror_errors",
            "Mirror copies that failed, by kind",
            mirror_errors.clone(),
        );
        let mirror_in_flight = Family::<MirrorLabels, Gauge>::default();
        registry.register(
            "mirror_in_flight",
            "Mirror copies in flight",
            mirror_in_flight.clone(),
        );
        let grpc_errors = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_errors",
            "gRPC calls answered with a non-zero grpc-status, by route, backend, role and status (above 16 counted as 2, UNKNOWN)",
            grpc_errors.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            config_reloads.clone(),
        );
        let promotions = Family::<PromotionLabels, Counter>::default();
        registry.register(
            "promotions",
            "Promotions, steps and rollbacks, by trigger",
            promotions.clone(),
        );
        let compare = Family::<CompareLabels, Counter>::default();
        registry.register(
            "compare",
            "Shadow responses compared with the primary's, by result (compared, equal, different, noise_only, truncated, dropped, primary_failed, memory)",
            compare.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let shadow_memory = Gauge::default();
        registry.register(
            "shadow_memory_bytes",
            "Bytes held for shadow traffic (request-body copies, captured responses, queued comparisons), bounded by limits.shadow_memory",
            shadow_memory.clone(),
        );
        let egress_requests = Family::<EgressLabels, Counter>::default();
        registry.register(
            "egress_requests",
            "Outbound calls through the egress, by service, side (live, shadow) and outcome (forwarded, replayed, unmatched, denied, failed)",
            egress_requests.clone(),
        );
        let egress_duration =
            Family::<EgressSideLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "egress_request_duration_seconds",
            "Time from receiving an outbound call to its answer's head, by service and side",
            egress_duration.clone(),
        );
        let egress_kept = Gauge::default();
        registry.register(
            "egress_kept_exchanges",
            "Live outbound exchanges kept for replay (bounded by egress.max_exchanges and egress.max_bytes)",
            egress_kept.clone(),
        );
        let egress_evicted = Counter::default();
        registry.register(
            "egress_evicted_exchanges",
            "Kept live exchanges evicted before `keep` was over, to stay within the bounds",
            egress_evicted.clone(),
        );
        let record_written = Family::<RecordLabels, Counter>::default();
        registry.register(
            "record_written",
            "Records written to the route's record file (routes[].record)",
            record_written.clone(),
        );
        let record_dropped = Family::<RecordDropLabels, Counter>::default();
        registry.register(
            "record_dropped",
            "Records not written, by route and reason (queue_full: the writer is behind, write_failed: the file could not be opened or written, over_budget: the bodies did not fit in limits.shadow_memory, incomplete: the answer did not complete)",
            record_dropped.clone(),
        );
        let record_calls_cut = Family::<RecordLabels, Counter>::default();
        registry.register(
            "record_calls_cut",
            "Outbound calls left out of a route's records (over record.max_calls, or over limits.shadow_memory); each record also says how many in calls_cut",
            record_calls_cut.clone(),
        );
        let retries = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "retries",
            "Primary requests retried under the route's retries, by route, backend and the outcome retried (a status code, connect_failure, timeout or reset); mirrors are never retried",
            retries.clone(),
        );
        let admin_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "admin_connections_refused",
            "Connections to the admin server (listener admin) or the metrics listener (listener metrics) closed as soon as accepted because admin_max_connections were open",
            admin_refused.clone(),
        );
        Metrics {
            registry,
            admin_refused,
            retries,
            shadow_memory,
            record_written,
            record_dropped,
            record_calls_cut,
            egress_requests,
            egress_duration,
            egress_kept,
            egress_evicted,
            requests,
            duration,
            mirror_dropped,
            mirror_errors,
            mirror_in_flight,
            grpc_errors,
            config_reloads,
            promotions,
            compare,
            access_log_dropped,
            windows: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a retry of a route's primary request (`shadowgate_retries_total`).
    pub fn retried(&self, route: &str, backend: &str, reason: &str) {
        self.retries
            .get_or_create(&ReasonLabels {
                route: route.to_string(),
                backend: backend.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Route and backend label of requests that matched no route.
    pub const UNROUTED: &'static str = "none";

    /// Counts a request that matched no route (`route="none"`).
    pub fn unrouted(&self, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: Self::UNROUTED.to_string(),
                backend: Self::UNROUTED.to_string(),
                role: Role::primary,
                code,
            })
            .inc();
    }

    /// Creates the `mirror_dropped` series of one reason (at zero if new).
    pub fn touch_dropped(&self, route: &str, backend: &str, reason: &str) {
        let _ = self.mirror_dropped.get_or_create(&ReasonLabels {
            route: route.to_string(),
            backend: backend.to_string(),
            reason: reason.to_string(),
        });
    }

    /// Creates the `mirror_errors` series of one kind (at zero if new).
    pub fn touch_error(&self, route: &str, backend: &str, kind: &str) {
        let _ = self.mirror_errors.get_or_create(&KindLabels {
            route: route.to_string(),
            backend: backend.to_string(),
            kind: kind.to_string(),
        });
    }

    /// Handles for one (route, backend, role).
    pub fn target(self: &Arc<Self>, route: &str, backend: &str, role: Role) -> TargetMetrics {
        let labels = TargetLabels {
            route: route.to_string(),
            backend: backend.to_string(),
            role,
        };
        let in_flight = (role != Role::primary).then(|| {
            self.mirror_in_flight
                .get_or_create(&MirrorLabels {
                    route: route.to_string(),
                    backend: backend.to_string(),
                })
                .clone()
        });
        let window = self
            .windows
            .lock()
            .entry(labels.clone())
            .or_default()
            .clone();
        TargetMetrics {
            window,
            duration: self.duration.get_or_create(&labels).clone(),
            codes: (0..CODES).map(|_| OnceLock::new()).collect(),
            in_flight,
            labels,
            metrics: self.clone(),
        }
    }
}

const CODES: usize = 600;

/// Pre-resolved metric handles of one route × backend × role.
pub struct TargetMetrics {
    pub labels: TargetLabels,
    /// Sliding-window statistics for the API and dashboard.
    pub window: Arc<Window>,
    duration: Histogram,
    codes: Box<[OnceLock<Counter>]>,
    pub in_flight: Option<Gauge>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TargetMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetMetrics")
            .field("labels", &self.labels)
            .finish()
    }
}

impl TargetMetrics {
    /// Counts one answered request and its duration.
    pub fn answered(&self, code: u16, seconds: f64) {
        self.answered_as(code, seconds, code >= 500);
    }

    /// Counts one answered request and its duration, `error` or not.
    pub fn answered_as(&self, code: u16, seconds: f64, error: bool) {
        self.duration.observe(seconds);
        self.window.record_seconds(seconds.max(0.0), error);
        let counter = match self.codes.get(code as usize) {
            Some(slot) => slot.get_or_init(|| self.code_counter(code)),
            None => &self.code_counter(code),
        };
        counter.inc();
    }

    fn code_counter(&self, code: u16) -> Counter {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                route: self.labels.route.clone(),
                backend: self.labels.backend.clone(),
                role: self.labels.role,
                code,
            })
            .clone()
    }

    /// Counts a mirror copy not sent.
    pub fn dropped(&self, reason: &str) {
        self.window.record_drop(reason);
        self.metrics
            .mirror_dropped
            .get_or_create(&ReasonLabels {
                route: self.labels.route.clone(),
                backend: self.labels.backend.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a gRPC call answered with a non-zero `grpc-status`.
    pub fn grpc_error(&self, grpc_status: u16) {
        self.metrics
            .grpc_errors
            .get_or_create(&GrpcLabels {
                route: self.labels.route.clone(),
                backend: self.labels.backend.clone(),
                role: self.labels.role,
                grpc_status: if grpc_status > 16 { 2 } else { grpc_status },
            })
            .inc();
    }

    /// Counts a mirror copy that failed.
    pub fn failed(&self, kind: &str) {
        self.window.record_failure(kind);
        self.metrics
            .mirror_errors
            .get_or_create(&KindLabels {
                route: self.labels.route.clone(),
                backend: self.labels.backend.clone(),
                kind: kind.to_string(),
            })
            .inc();
    }
}
