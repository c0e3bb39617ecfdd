//! Window summaries shared by a fleet (PostgreSQL store): every second each
//! replica publishes its own summaries (requests, errors, compared pairs,
//! latency bucket counts) per route, target and span, and reads the other
//! live replicas', merged exactly ([`WindowSummary::merge`]: the same bucket
//! edges everywhere). The gates (`ops`) and `/api/v1/stats` add them to
//! this replica's own, so the leader judges the whole fleet's traffic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::runtime::{Runtime, Shared};
use crate::telemetry::metrics::TargetMetrics;
use crate::telemetry::window::{SummaryRecord, WindowSummary};

/// The spans `/api/v1/stats` reports (1m, 5m, 15m); a route's promotion
/// window is published too.
const STAT_SPANS: [Duration; 3] = [
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(900),
];

/// How often summaries are published and read.
const EVERY: Duration = Duration::from_secs(1);

/// The key of one summary: route, role (`primary` / `mirror`), backend, span.
pub fn window_key(route: &str, role: &str, backend: &str, span: Duration) -> String {
    format!("{route}\t{role}\t{backend}\t{}", span.as_secs())
}

fn targets(rt: &Runtime) -> Vec<(&str, &TargetMetrics, Vec<Duration>)> {
    let mut out = Vec::new();
    for r in &rt.routes {
        let mut spans = STAT_SPANS.to_vec();
        if let Some(p) = &r.config.promotion {
            spans.push(p.window);
        }
        out.push((&*r.name, &*r.primary_metrics, spans.clone()));
        for (_, m, _) in &r.split {
            out.push((&*r.name, &**m, spans.clone()));
        }
        for m in &r.mirrors {
            out.push((&*r.name, &m.metrics, spans.clone()));
        }
    }
    out
}

/// This replica's summaries, by key.
fn own(rt: &Runtime) -> BTreeMap<String, SummaryRecord> {
    let mut out = BTreeMap::new();
    for (route, m, spans) in targets(rt) {
        for span in spans {
            let key = window_key(route, m.labels.role.as_str(), &m.labels.backend, span);
            out.entry(key)
                .or_insert_with(|| SummaryRecord::from(&m.window.summary(span)));
        }
    }
    out
}

/// One round: publish ours, read and merge the others'.
fn exchange(shared: &Shared) {
    let store = &shared.store;
    let rt = shared.runtime.load_full();
    if let Err(e) = store.put_replica_windows(&own(&rt)) {
        tracing::debug!(error = %e, "cannot publish window summaries");
    }
    let Ok(others) = store.other_replica_windows::<BTreeMap<String, SummaryRecord>>() else {
        // Unreachable: the last known figures stay.
        return;
    };
    let mut merged: HashMap<String, WindowSummary> = HashMap::new();
    for replica in others {
        for (key, record) in replica {
            merged.entry(key).or_default().merge(&record.summary());
        }
    }
    *shared.fleet_windows.lock() = merged;
}

/// Runs until `stop` (only with a shared store).
pub async fn share_windows(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if !shared.store.is_shared() {
        return;
    }
    loop {
        let sh = shared.clone();
        let _ = tokio::task::spawn_blocking(move || exchange(&sh)).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// `local` (this replica's summary of a target) with the other replicas'
/// for the same key added.
pub fn with_fleet(shared: &Shared, local: WindowSummary, key: &str) -> WindowSummary {
    match shared.fleet_windows.lock().get(key) {
        Some(others) => {
            let mut s = local;
            s.merge(others);
            s
        }
        None => local,
    }
}
