//! Prometheus metrics. Families are registered once; the request path holds
//! pre-resolved handles (`TargetMetrics`) so recording is a few atomic adds.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

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

/// A label set that names a route, and maybe one of its backends.
pub trait RouteLabel {
    fn route(&self) -> &str;
    /// The backend named, for label sets that name one.
    fn backend(&self) -> Option<&str> {
        None
    }
}

/// `RouteLabel` for label sets whose `route` field is the route (and, in
/// the first list, whose `backend` field is one of its backends).
macro_rules! route_labels {
    (with backend: $($with:ty),* ; route only: $($only:ty),* $(,)?) => {
        $(impl RouteLabel for $with {
            fn route(&self) -> &str {
                &self.route
            }
            fn backend(&self) -> Option<&str> {
                Some(&self.backend)
            }
        })*
        $(impl RouteLabel for $only {
            fn route(&self) -> &str {
                &self.route
            }
        })*
    };
}

route_labels!(
    with backend: RequestLabels, TargetLabels, MirrorLabels, ReasonLabels, KindLabels,
        CompareLabels, GrpcLabels;
    route only: PromotionLabels, RecordLabels, RecordDropLabels,
);

/// A metric family whose label sets each name a route. It remembers the
/// label sets it has made, so that a route's series can be removed once
/// the route, or the backend they name, is no longer configured
/// (`Metrics::keep_routes`):
/// prometheus-client's `Family` can remove a label set but not list them.
/// Remembering costs nothing on the usual path: a series that exists is
/// found as before, and only its first use takes the extra lock.
pub struct RouteFamily<S, M, C = fn() -> M> {
    family: Family<S, M, C>,
    made: Arc<parking_lot::Mutex<HashSet<S>>>,
}

impl<S, M, C: Clone> Clone for RouteFamily<S, M, C> {
    fn clone(&self) -> Self {
        RouteFamily {
            family: self.family.clone(),
            made: self.made.clone(),
        }
    }
}

impl<S: Clone + Hash + Eq, M: Default> Default for RouteFamily<S, M> {
    fn default() -> Self {
        RouteFamily {
            family: Family::default(),
            made: Arc::default(),
        }
    }
}

impl<S, M, C> RouteFamily<S, M, C>
where
    S: Clone + Hash + Eq + RouteLabel,
    C: MetricConstructor<M> + Clone,
{
    fn new_with_constructor(constructor: C) -> Self {
        RouteFamily {
            family: Family::new_with_constructor(constructor),
            made: Arc::default(),
        }
    }

    /// The series of `labels`, made on first use.
    pub fn get_or_create(&self, labels: &S) -> impl Deref<Target = M> + '_ {
        if let Some(metric) = self.family.get(labels) {
            return metric;
        }
        // Made and remembered under one lock, which `retain_routes` takes
        // too: a series is never made unremembered.
        let mut made = self.made.lock();
        made.insert(labels.clone());
        self.family.get_or_create(labels)
    }
}

/// What `Metrics::keep_routes` asks of each route-labelled family.
trait Routed: Send + Sync {
    /// Removes the series whose route and backend `keep` refuses.
    fn retain_routes(&self, keep: &dyn Fn(&str, Option<&str>) -> bool);
}

impl<S, M, C> Routed for RouteFamily<S, M, C>
where
    S: Clone + Hash + Eq + RouteLabel + Send + Sync,
    M: Send + Sync,
    C: MetricConstructor<M> + Clone + Send + Sync,
{
    fn retain_routes(&self, keep: &dyn Fn(&str, Option<&str>) -> bool) {
        self.made.lock().retain(|labels| {
            let kept = keep(labels.route(), labels.backend());
            if !kept {
                self.family.remove(labels);
            }
            kept
        });
    }
}

/// Registers a route-labelled family and adds it to those `keep_routes`
/// sweeps, so that no such family can be left out of the sweep.
fn register_routed<S, M, C>(
    registry: &mut Registry,
    routed: &mut Vec<Box<dyn Routed>>,
    name: &str,
    help: &str,
    family: RouteFamily<S, M, C>,
) -> RouteFamily<S, M, C>
where
    Family<S, M, C>: Metric,
    RouteFamily<S, M, C>: Routed + 'static,
    C: Clone,
{
    registry.register(name, help, family.family.clone());
    routed.push(Box::new(family.clone()));
    family
}

fn duration_histogram() -> Histogram {
    // The windows' edges (0.1 ms … 62 s, about 1.1× apart), so Grafana's
    // p99 and the promotion gates' p99 come from the same buckets.
    Histogram::new(LATENCY_EDGES_SECONDS)
}

/// Every metric family shadowgate exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: RouteFamily<RequestLabels, Counter>,
    pub duration: RouteFamily<TargetLabels, Histogram, fn() -> Histogram>,
    pub mirror_dropped: RouteFamily<ReasonLabels, Counter>,
    pub mirror_errors: RouteFamily<KindLabels, Counter>,
    pub mirror_in_flight: RouteFamily<MirrorLabels, Gauge>,
    pub grpc_errors: RouteFamily<GrpcLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub promotions: RouteFamily<PromotionLabels, Counter>,
    pub compare: RouteFamily<CompareLabels, Counter>,
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
    pub retries: RouteFamily<ReasonLabels, Counter>,
    /// Records written to a route's `record` file.
    pub record_written: RouteFamily<RecordLabels, Counter>,
    /// Records not written, by route and reason.
    pub record_dropped: RouteFamily<RecordDropLabels, Counter>,
    /// Admin (or metrics) connections closed at once, over the connection cap.
    pub admin_refused: Family<ListenerLabels, Counter>,

    /// Outbound calls left out of records (over `max_calls` or the budget).
    pub record_calls_cut: RouteFamily<RecordLabels, Counter>,
    /// Sliding windows per target; kept across reloads.
    windows: parking_lot::Mutex<HashMap<TargetLabels, Arc<Window>>>,
    /// The routes configured now (`keep_routes`); `None` until first set.
    routes: parking_lot::Mutex<Option<HashMap<String, HashSet<String>>>>,
    /// Every route-labelled family above (`register_routed`).
    routed: Vec<Box<dyn Routed>>,
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
        let mut routed = Vec::new();
        let requests = register_routed(
            &mut registry,
            &mut routed,
            "requests",
            "Requests answered, by route, backend, role and status code",
            RouteFamily::<RequestLabels, Counter>::default(),
        );
        let duration = register_routed(
            &mut registry,
            &mut routed,
            "request_duration_seconds",
            "Time from receiving a request to the end of the backend's response",
            RouteFamily::<TargetLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            ),
        );
        let mirror_dropped = register_routed(
            &mut registry,
            &mut routed,
            "mirror_dropped",
            "Mirror copies not sent, by reason",
            RouteFamily::<ReasonLabels, Counter>::default(),
        );
        let mirror_errors = register_routed(
            &mut registry,
            &mut routed,
            "mirror_errors",
            "Mirror copies that failed, by kind",
            RouteFamily::<KindLabels, Counter>::default(),
        );
        let mirror_in_flight = register_routed(
            &mut registry,
            &mut routed,
            "mirror_in_flight",
            "Mirror copies in flight",
            RouteFamily::<MirrorLabels, Gauge>::default(),
        );
        let grpc_errors = register_routed(
            &mut registry,
            &mut routed,
            "grpc_errors",
            "gRPC calls answered with a non-zero grpc-status, by route, backend, role and status (above 16 counted as 2, UNKNOWN)",
            RouteFamily::<GrpcLabels, Counter>::default(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            config_reloads.clone(),
        );
        let promotions = register_routed(
            &mut registry,
            &mut routed,
            "promotions",
            "Promotions, steps and rollbacks, by trigger",
            RouteFamily::<PromotionLabels, Counter>::default(),
        );
        let compare = register_routed(
            &mut registry,
            &mut routed,
            "compare",
            "Shadow responses compared with the primary's, by result (compared, equal, different, noise_only, truncated, dropped, primary_failed, memory)",
            RouteFamily::<CompareLabels, Counter>::default(),
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
        let record_written = register_routed(
            &mut registry,
            &mut routed,
            "record_written",
            "Records written to the route's record file (routes[].record)",
            RouteFamily::<RecordLabels, Counter>::default(),
        );
        let record_dropped = register_routed(
            &mut registry,
            &mut routed,
            "record_dropped",
            "Records not written, by route and reason (queue_full: the writer is behind, write_failed: the file could not be opened or written, over_budget: the bodies did not fit in limits.shadow_memory, incomplete: the answer did not complete)",
            RouteFamily::<RecordDropLabels, Counter>::default(),
        );
        let record_calls_cut = register_routed(
            &mut registry,
            &mut routed,
            "record_calls_cut",
            "Outbound calls left out of a route's records (over record.max_calls, or over limits.shadow_memory); each record also says how many in calls_cut",
            RouteFamily::<RecordLabels, Counter>::default(),
        );
        let retries = register_routed(
            &mut registry,
            &mut routed,
            "retries",
            "Primary requests retried under the route's retries, by route, backend and the outcome retried (a status code, connect_failure, timeout or reset); mirrors are never retried",
            RouteFamily::<ReasonLabels, Counter>::default(),
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
            routes: parking_lot::Mutex::new(None),
            routed,
        }
    }

    /// The routes configured from now on, each with its backends (primary,
    /// split, mirrors, secondary): every series and latency window of any
    /// other route, or of a backend a kept route no longer has, is removed,
    /// now and at each scrape (a request still in flight on the previous
    /// configuration may make a series again), so a removed or renamed
    /// route or backend leaves `/metrics`. Series of unrouted requests
    /// (`route="none"`) stay.
    pub fn keep_routes<'a, B>(&self, routes: impl IntoIterator<Item = (&'a str, B)>)
    where
        B: IntoIterator<Item = &'a str>,
    {
        let routes = routes
            .into_iter()
            .map(|(route, backends)| {
                let backends = backends.into_iter().map(str::to_string).collect();
                (route.to_string(), backends)
            })
            .collect();
        *self.routes.lock() = Some(routes);
        self.forget_other_routes();
    }

    fn forget_other_routes(&self) {
        let routes = self.routes.lock();
        let Some(routes) = routes.as_ref() else {
            return;
        };
        let keep = |route: &str, backend: Option<&str>| {
            route == Self::UNROUTED
                || routes.get(route).is_some_and(|backends: &HashSet<String>| {
                    backend.is_none_or(|b| b == Self::UNROUTED || backends.contains(b))
                })
        };
        for family in &self.routed {
            family.retain_routes(&keep);
        }
        self.windows
            .lock()
            .retain(|labels, _| keep(&labels.route, Some(&labels.backend)));
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        self.forget_other_routes();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of the text with every one of `labels`.
    fn count_with(text: &str, labels: &[&str]) -> usize {
        text.lines()
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .count()
    }

    fn series_of(text: &str, route: &str) -> usize {
        count_with(text, &[&format!("route=\"{route}\"")])
    }

    /// A series in each route-labelled family, for `route`.
    fn touch_all(m: &Arc<Metrics>, route: &str) -> TargetMetrics {
        let t = m.target(route, "v2", Role::mirror);
        t.answered(200, 0.01);
        t.dropped("overload");
        t.failed("timeout");
        t.grpc_error(5);
        m.retried(route, "v1", "503");
        let r = || route.to_string();
        m.promotions
            .get_or_create(&PromotionLabels {
                route: r(),
                action: "promote".into(),
                trigger: "api".into(),
            })
            .inc();
        m.compare
            .get_or_create(&CompareLabels {
                route: r(),
                backend: "v2".into(),
                result: "equal".into(),
            })
            .inc();
        m.record_written
            .get_or_create(&RecordLabels { route: r() })
            .inc();
        m.record_calls_cut
            .get_or_create(&RecordLabels { route: r() })
            .inc();
        m.record_dropped
            .get_or_create(&RecordDropLabels {
                route: r(),
                reason: "queue_full".into(),
            })
            .inc();
        t
    }

    #[test]
    fn keeping_routes_removes_every_series_and_window_of_the_others() {
        let m = Arc::new(Metrics::new());
        let _a = touch_all(&m, "a");
        let b = touch_all(&m, "b");
        m.unrouted(404);
        let text = m.encode();
        // requests, duration (buckets, sum, count), in flight, dropped,
        // errors, gRPC, retries, promotions, compare, three record ones.
        assert!(series_of(&text, "b") > 12, "{text}");
        let before_a = series_of(&text, "a");

        m.keep_routes([("a", ["v1", "v2"])]);
        let text = m.encode();
        assert_eq!(series_of(&text, "b"), 0, "{text}");
        assert_eq!(series_of(&text, "a"), before_a);
        assert_eq!(series_of(&text, Metrics::UNROUTED), 1);
        assert!(m.windows.lock().keys().all(|k| k.route == "a"));

        // A request still in flight on `b` makes a series again: the next
        // scrape removes it.
        b.failed("reset");
        assert_eq!(series_of(&m.encode(), "b"), 0);
    }

    #[test]
    fn a_backend_a_kept_route_no_longer_has_leaves_and_the_routes_other_series_stay() {
        let m = Arc::new(Metrics::new());
        let _t = touch_all(&m, "a");
        let text = m.encode();
        let with_v2 = |text: &str| count_with(text, &["route=\"a\"", "backend=\"v2\""]);
        assert!(with_v2(&text) > 8, "{text}");
        let without_v2 = series_of(&text, "a") - with_v2(&text);
        assert!(without_v2 > 0, "{text}");

        // The mirror `v2` is taken off route `a`: its series leave; the
        // primary's retries and the route's own series stay.
        m.keep_routes([("a", ["v1"])]);
        let text = m.encode();
        assert_eq!(with_v2(&text), 0, "{text}");
        assert_eq!(series_of(&text, "a"), without_v2, "{text}");
        assert!(text.contains("backend=\"v1\""), "{text}");
        assert!(m.windows.lock().keys().all(|k| k.backend != "v2"));

        // Back again: it counts from zero.
        m.keep_routes([("a", ["v1", "v2"])]);
        m.compare
            .get_or_create(&CompareLabels {
                route: "a".into(),
                backend: "v2".into(),
                result: "equal".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(r#"shadowgate_compare_total{route="a",backend="v2",result="equal"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_kept_series_keeps_counting_and_a_route_back_again_starts_at_zero() {
        let m = Arc::new(Metrics::new());
        let labels = |route: &str| RecordLabels {
            route: route.into(),
        };
        m.record_written.get_or_create(&labels("a")).inc_by(2);
        m.record_written.get_or_create(&labels("b")).inc_by(5);
        m.keep_routes([("a", ["v1"])]);
        m.record_written.get_or_create(&labels("a")).inc();
        assert_eq!(m.record_written.get_or_create(&labels("a")).get(), 3);
        m.keep_routes([("a", ["v1"]), ("b", ["v1"])]);
        assert_eq!(m.record_written.get_or_create(&labels("b")).get(), 0);
    }
}
