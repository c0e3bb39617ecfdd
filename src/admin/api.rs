//! The admin JSON API: `/api/v1/routes` and `/api/v1/stats`. The response
//! types are shared with the `shadowgate status` command, which parses them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::runtime::Shared;
use crate::telemetry::window::{WindowSummary, DROP_REASONS, ERROR_KINDS};
use crate::telemetry::TargetMetrics;

/// The windows reported, with their names.
pub const WINDOWS: [(&str, Duration); 3] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("15m", Duration::from_secs(900)),
];

/// `GET /api/v1/routes`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoutesResponse {
    pub routes: Vec<RouteInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteInfo {
    pub name: String,
    /// The primary backend.
    pub backend: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitInfo>,
    pub mirrors: Vec<MirrorInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitInfo {
    pub backend: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MirrorInfo {
    pub backend: String,
    pub percent: f64,
    pub max_in_flight: usize,
    pub in_flight: usize,
}

/// `GET /api/v1/stats`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsResponse {
    pub routes: Vec<RouteStats>,
    /// With a shared store (a fleet): the same figures over every live
    /// replica (this one's and the others', merged); absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet: Vec<RouteStats>,
    /// This replica's id (the `routes` figures are its own).
    #[serde(default)]
    pub replica: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteStats {
    pub route: String,
    /// The primary first, then each mirror in config order.
    pub targets: Vec<TargetStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetStats {
    pub backend: String,
    /// `primary` or `mirror`.
    pub role: String,
    /// Keyed `1m`, `5m`, `15m`.
    pub windows: BTreeMap<String, WindowStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WindowStats {
    /// Seconds the window covers (less than its span while the process is young).
    pub seconds: f64,
    pub requests: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// 5xx answers and failed exchanges.
    pub errors: u64,
    /// Errors in percent of requests; null without requests.
    pub error_percent: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Mirror copies not sent, by reason (mirrors only).
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
    /// Mirror copies that failed, by kind (mirrors only).
    #[serde(default)]
    pub failed: BTreeMap<String, u64>,
    /// Compared pairs and real differences (mirrors with compare on).
    #[serde(default)]
    pub compared: u64,
    #[serde(default)]
    pub different: u64,
    #[serde(default)]
    pub diff_percent: Option<f64>,
}

impl From<&WindowSummary> for WindowStats {
    fn from(s: &WindowSummary) -> Self {
        let named = |names: &[&str], values: &[u64]| -> BTreeMap<String, u64> {
            names
                .iter()
                .zip(values)
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| (k.to_string(), *v))
                .collect()
        };
        WindowStats {
            seconds: s.seconds,
            requests: s.requests,
            rate: s.rate_per_sec(),
            errors: s.errors,
            error_percent: s.error_percent(),
            p50_ms: s.p50_ms,
            p90_ms: s.p90_ms,
            p99_ms: s.p99_ms,
            dropped: named(&DROP_REASONS, &s.dropped),
            failed: named(&ERROR_KINDS, &s.failed),
            compared: s.compared,
            different: s.different,
            diff_percent: s.diff_percent(),
        }
    }
}

/// A target's figures; with `fleet` (shared, route) the other replicas' added.
fn fleet_target_stats(fleet: Option<(&Shared, &str)>, t: &TargetMetrics) -> TargetStats {
    let role = t.labels.role.as_str();
    TargetStats {
        backend: t.labels.backend.clone(),
        role: role.to_string(),
        windows: WINDOWS
            .iter()
            .map(|(name, span)| {
                let mut s = t.window.summary(*span);
                if let Some((shared, route)) = fleet {
                    let key =
                        crate::promote::fleet::window_key(route, role, &t.labels.backend, *span);
                    s = crate::promote::fleet::with_fleet(shared, s, &key);
                }
                (name.to_string(), WindowStats::from(&s))
            })
            .collect(),
    }
}

/// Current statistics of every route.
pub fn stats(shared: &Shared) -> StatsResponse {
    let rt = shared.runtime.load();
    let routes = |fleet: bool| -> Vec<RouteStats> {
        rt.routes
            .iter()
            .map(|r| {
                let with = fleet.then_some((shared, &*r.name));
                let mut targets = vec![fleet_target_stats(with, &r.primary_metrics)];
                for (_, m, _) in &r.split {
                    if m.labels.backend != r.primary_metrics.labels.backend {
                        targets.push(fleet_target_stats(with, m));
                    }
                }
                targets.extend(
                    r.mirrors
                        .iter()
                        .map(|m| fleet_target_stats(with, &m.metrics)),
                );
                RouteStats {
                    route: r.name.to_string(),
                    targets,
                }
            })
            .collect()
    };
    StatsResponse {
        routes: routes(false),
        fleet: if shared.store.is_shared() {
            routes(true)
        } else {
            Vec::new()
        },
        replica: shared.store.replica_id().to_string(),
    }
}

/// The routes as configured now.
pub fn routes(shared: &Shared) -> RoutesResponse {
    let rt = shared.runtime.load();
    RoutesResponse {
        routes: rt
            .routes
            .iter()
            .map(|r| RouteInfo {
                name: r.name.to_string(),
                backend: r.primary.name().to_string(),
                split: r
                    .config
                    .split
                    .iter()
                    .map(|(backend, weight)| SplitInfo {
                        backend: backend.clone(),
                        weight: *weight,
                    })
                    .collect(),
                mirrors: r
                    .mirrors
                    .iter()
                    .map(|m| MirrorInfo {
                        backend: m.backend.name().to_string(),
                        percent: m.config.percent,
                        max_in_flight: m.config.max_in_flight,
                        in_flight: m.in_flight.in_flight(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// `GET /api/v1/status`: the process as a whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusResponse {
    /// Every listener is bound and serving.
    pub ready: bool,
    /// Configuration keys whose new values were read by a reload but take
    /// effect only on restart (the old values stay in force until then).
    #[serde(default)]
    pub restart_pending: Vec<String>,
    /// `ok`, or `degraded` while a shared store (PostgreSQL) cannot be
    /// reached: serving goes on with the last known state.
    #[serde(default)]
    pub store: String,
    /// This replica's id (host or pod name and process id).
    #[serde(default)]
    pub replica: String,
}

/// The process's status now.
pub fn status(shared: &Shared) -> StatusResponse {
    StatusResponse {
        ready: shared.ready.load(std::sync::atomic::Ordering::Acquire),
        restart_pending: shared.restart_pending.lock().clone(),
        store: shared.store.health().to_string(),
        replica: shared.store.replica_id().to_string(),
    }
}

pub async fn get_status(State(shared): State<Arc<Shared>>) -> Json<StatusResponse> {
    Json(status(&shared))
}

pub async fn get_stats(State(shared): State<Arc<Shared>>) -> Json<StatsResponse> {
    Json(stats(&shared))
}

pub async fn get_routes(State(shared): State<Arc<Shared>>) -> Json<RoutesResponse> {
    Json(routes(&shared))
}
