//! `shadowgate status`: the per-route, side-by-side view of primary and
//! mirrors, as text for a terminal.

use std::fmt::Write;

use super::api::{StatsResponse, WindowStats};

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1000.0 => format!("{:.2}s", v / 1000.0),
        Some(v) if v >= 10.0 => format!("{v:.0}ms"),
        Some(v) => format!("{v:.1}ms"),
        None => "-".into(),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}%")).unwrap_or_else(|| "-".into())
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders the stats of `window` (`1m`, `5m` or `15m`) as an aligned table.
/// In a fleet (shared store) a REPLICA column names whose figures a row
/// holds: the replica reached, then `fleet` (every live replica merged).
pub fn render(stats: &StatsResponse, window: &str) -> String {
    let fleet = !stats.fleet.is_empty();
    let mut header = vec![
        "ROUTE", "BACKEND", "ROLE", "REQ/S", "REQUESTS", "ERR%", "P50", "P90", "P99", "DIFF%",
        "DROPPED", "FAILED",
    ];
    if fleet {
        header.insert(0, "REPLICA");
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let empty = WindowStats {
        seconds: 0.0,
        requests: 0,
        rate: 0.0,
        errors: 0,
        error_percent: None,
        p50_ms: None,
        p90_ms: None,
        p99_ms: None,
        dropped: Default::default(),
        failed: Default::default(),
        compared: 0,
        different: 0,
        diff_percent: None,
    };
    let sets: Vec<(&str, &Vec<super::api::RouteStats>)> = if fleet {
        vec![
            (stats.replica.as_str(), &stats.routes),
            ("fleet", &stats.fleet),
        ]
    } else {
        vec![("", &stats.routes)]
    };
    for (replica, routes) in sets {
        for route in routes {
            for t in &route.targets {
                let w = t.windows.get(window).unwrap_or(&empty);
                let mut row = vec![
                    route.route.clone(),
                    t.backend.clone(),
                    t.role.clone(),
                    format!("{:.1}", w.rate),
                    w.requests.to_string(),
                    pct(w.error_percent),
                    ms(w.p50_ms),
                    ms(w.p90_ms),
                    ms(w.p99_ms),
                    pct(w.diff_percent),
                    counts(&w.dropped),
                    counts(&w.failed),
                ];
                if fleet {
                    row.insert(0, replica.to_string());
                }
                rows.push(row);
            }
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("window: last {window}\n");
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// One line per route on promotion: state, share, verdict, gate figures, last change.
pub fn render_promotion(p: &crate::promote::ops::PromotionStatus) -> String {
    let verdict = serde_json::to_value(p.verdict)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut line = format!(
        "promotion {}: {} (primary {}, candidate {} at {}%), verdict {} — {}",
        p.route,
        p.state,
        p.primary,
        p.candidate,
        p.share,
        verdict,
        p.judgement.describe()
    );
    if !p.configured {
        line.push_str("; no promotion block: default gates");
    }
    if let Some(last) = p.history.last() {
        line.push_str(&format!(
            "; last: {} {} -> {} ({}) at {}",
            last.action, last.from, last.to, last.trigger, last.at
        ));
    }
    if p.auto_held {
        line.push_str("; automatic promotion paused after an automatic rollback");
    }
    line
}

/// The line `shadowgate status` prints when a reload read settings that
/// take effect only on restart; `None` when there are none.
pub fn render_restart_pending(status: &super::api::StatusResponse) -> Option<String> {
    if status.restart_pending.is_empty() {
        return None;
    }
    Some(format!(
        "restart pending: {} changed in the configuration but take effect only on restart; the running values stay in force",
        status.restart_pending.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::{RouteStats, TargetStats};

    #[test]
    fn renders_primary_and_mirror_side_by_side() {
        let w = |requests, errors, p50, p99, dropped: &[(&str, u64)]| WindowStats {
            seconds: 60.0,
            requests,
            rate: requests as f64 / 60.0,
            errors,
            error_percent: Some(errors as f64 * 100.0 / requests as f64),
            p50_ms: Some(p50),
            p90_ms: Some(p50 * 2.0),
            p99_ms: Some(p99),
            dropped: dropped.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            failed: Default::default(),
            compared: 0,
            different: 0,
            diff_percent: None,
        };
        let stats = StatsResponse {
            routes: vec![RouteStats {
                route: "my-app".into(),
                targets: vec![
                    TargetStats {
                        backend: "v1".into(),
                        role: "primary".into(),
                        windows: [("1m".to_string(), w(600, 6, 1.25, 12.0, &[]))].into(),
                    },
                    TargetStats {
                        backend: "v2".into(),
                        role: "mirror".into(),
                        windows: [(
                            "1m".to_string(),
                            w(590, 0, 2.0, 1500.0, &[("overload", 10)]),
                        )]
                        .into(),
                    },
                ],
            }],
            fleet: Vec::new(),
            replica: String::new(),
        };
        let text = render(&stats, "1m");
        let expected = "\
window: last 1m
ROUTE   BACKEND  ROLE     REQ/S  REQUESTS  ERR%   P50    P90    P99    DIFF%  DROPPED      FAILED
my-app  v1       primary  10.0   600       1.00%  1.2ms  2.5ms  12ms   -      -            -
my-app  v2       mirror   9.8    590       0.00%  2.0ms  4.0ms  1.50s  -      overload=10  -
";
        assert_eq!(text, expected);
    }
}
