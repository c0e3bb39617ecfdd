//! Gate arithmetic: is the candidate as good as the baseline? Pure
//! functions over window statistics, no I/O.
//!
//! - error rate delta: candidate errors % − baseline errors % (5xx and
//!   failed exchanges), in percentage points; default limit 1;
//! - p99 ratio: candidate p99 / baseline p99; default limit 1.5; a
//!   candidate p99 within `p99_slack` (default 2 ms) of the baseline's
//!   passes whatever the ratio (sub-millisecond p99s double on jitter);
//! - diff rate: real differences (after noise) in percent of compared
//!   pairs; default limit 1 when the mirror compares.
//!
//! A gate left out of the configuration has its default limit; only an
//! explicit `off` (or `gates: none`) turns it off, and the judgement lists
//! the gates that are off so `status` and the dashboard can show it. A
//! diff-rate gate with no compared pair in the window (once each side has
//! its `min_requests`) fails: "no comparison" is not "no difference".
//!
//! Before a promotion the candidate is the mirror and the baseline the
//! primary; after it, the new primary is the candidate and the old one,
//! now a mirror, the baseline.

use serde::{Deserialize, Serialize};

use crate::config::{GateLimit, PromotionConfig};
use crate::telemetry::window::WindowSummary;

/// Default `max_error_rate_delta`, in percentage points.
pub const DEFAULT_MAX_ERROR_RATE_DELTA: f64 = 1.0;
/// Default `max_p99_ratio`.
pub const DEFAULT_MAX_P99_RATIO: f64 = 1.5;
/// Default `max_diff_rate`, in percent of compared pairs (when the mirror compares).
pub const DEFAULT_MAX_DIFF_RATE: f64 = 1.0;

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every gate in force passes.
    Ready,
    /// At least one gate fails.
    NotReady,
    /// Not enough traffic yet to judge.
    InsufficientData,
}

/// Where a gate's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GateSource {
    /// The built-in default (the configuration does not name the gate).
    #[default]
    Default,
    /// The route's `promotion:` block.
    Configured,
}

/// One gate's measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub name: String,
    /// The measured value; null when it cannot be computed yet.
    pub value: Option<f64>,
    pub limit: f64,
    /// null when the value is missing.
    pub pass: Option<bool>,
    /// `default` or `configured`.
    #[serde(default)]
    pub source: GateSource,
    /// Why the value is missing, when that fails the gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A gate not in force, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateOff {
    pub name: String,
    pub reason: String,
}

/// All gates and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub baseline_requests: u64,
    pub candidate_requests: u64,
    pub min_requests: u64,
    /// The gates in force.
    pub gates: Vec<Gate>,
    /// The gates not in force: turned off in the configuration, or (the
    /// diff rate) not applicable because the mirror does not compare.
    #[serde(default)]
    pub off: Vec<GateOff>,
}

/// Reason given for a gate turned off by `off` or `gates: none`.
pub const OFF_IN_CONFIG: &str = "turned off in the configuration";
/// Reason given for the default diff-rate gate when the mirror does not compare.
pub const OFF_NO_COMPARE: &str = "the mirror does not compare (compare: false)";

impl Judgement {
    /// The gates that fail.
    pub fn failing(&self) -> Vec<&Gate> {
        self.gates
            .iter()
            .filter(|g| g.pass == Some(false))
            .collect()
    }

    /// `name=value (limit)` for each gate, the gates that are off, and the
    /// request counts, for logs and `status`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .gates
            .iter()
            .map(|g| {
                let source = match g.source {
                    GateSource::Default => ", default",
                    GateSource::Configured => "",
                };
                let value = match g.value {
                    Some(v) => format!("{v:.3}"),
                    None => "n/a".into(),
                };
                let note = g
                    .note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default();
                format!("{}={value} (limit {}{source}){note}", g.name, g.limit)
            })
            .collect();
        if self.gates.is_empty() {
            parts.push("no gates".into());
        }
        for off in &self.off {
            parts.push(format!("{} off ({})", off.name, off.reason));
        }
        parts.push(format!(
            "requests baseline={} candidate={} (min {})",
            self.baseline_requests, self.candidate_requests, self.min_requests
        ));
        parts.join(", ")
    }
}

fn error_percent(s: &WindowSummary) -> Option<f64> {
    (s.requests > 0).then(|| s.errors as f64 * 100.0 / s.requests as f64)
}

/// The limit in force and where it comes from, or `None` when off.
fn limit_of(setting: GateLimit, default: f64) -> Option<(f64, GateSource)> {
    match setting {
        GateLimit::Default => Some((default, GateSource::Default)),
        GateLimit::Set(v) => Some((v, GateSource::Configured)),
        GateLimit::Off => None,
    }
}

/// Judges `candidate` against `baseline`; `compared`/`different` are the
/// comparison counts between them over the same window, and `compares`
/// whether the mirror between them compares answers at all.
pub fn judge(
    cfg: &PromotionConfig,
    baseline: &WindowSummary,
    candidate: &WindowSummary,
    compared: u64,
    different: u64,
    compares: bool,
) -> Judgement {
    let enough = baseline.requests >= cfg.min_requests && candidate.requests >= cfg.min_requests;
    let mut gates = Vec::new();
    let mut off = Vec::new();
    let mut gate = |name: &str, limit: Option<(f64, GateSource)>, value: Option<f64>| match limit {
        Some((limit, source)) => gates.push(Gate {
            name: name.into(),
            value,
            limit,
            pass: value.map(|v| v <= limit),
            source,
            note: None,
        }),
        None => off.push(GateOff {
            name: name.into(),
            reason: OFF_IN_CONFIG.into(),
        }),
    };
    gate(
        "error_rate_delta",
        limit_of(cfg.max_error_rate_delta, DEFAULT_MAX_ERROR_RATE_DELTA),
        error_percent(candidate)
            .zip(error_percent(baseline))
            .map(|(c, b)| c - b),
    );
    gate(
        "p99_ratio",
        limit_of(cfg.max_p99_ratio, DEFAULT_MAX_P99_RATIO),
        match (candidate.p99_ms, baseline.p99_ms) {
            (Some(c), Some(b)) if b > 0.0 => Some(c / b),
            _ => None,
        },
    );
    let diff_limit = match cfg.max_diff_rate {
        // The default diff gate applies where there is something to compare.
        GateLimit::Default if !compares => None,
        other => limit_of(other, DEFAULT_MAX_DIFF_RATE),
    };
    gate(
        "diff_rate",
        diff_limit,
        (compared > 0).then(|| different as f64 * 100.0 / compared as f64),
    );
    if cfg.max_diff_rate == GateLimit::Default && !compares {
        if let Some(o) = off.last_mut().filter(|o| o.name == "diff_rate") {
            o.reason = OFF_NO_COMPARE.into();
        }
    }
    if let (Some(g), Some(c), Some(b)) = (
        gates.iter_mut().find(|g| g.name == "p99_ratio"),
        candidate.p99_ms,
        baseline.p99_ms,
    ) {
        let slack = cfg.p99_slack.as_secs_f64() * 1e3;
        if g.pass == Some(false) && c - b <= slack {
            g.pass = Some(true);
            g.note = Some(format!(
                "p99 {c:.2} ms is within p99_slack ({slack} ms) of the baseline's {b:.2} ms"
            ));
        }
    }
    if enough {
        if let Some(g) = gates
            .iter_mut()
            .find(|g| g.name == "diff_rate" && g.value.is_none())
        {
            // Both sides have their traffic but nothing was compared: the
            // candidate's answers are unjudged, which is not a pass.
            g.pass = Some(false);
            g.note = Some(if compares {
                "no compared pairs in the window".into()
            } else {
                "no compared pairs: the mirror does not compare (compare: false)".into()
            });
        }
    }
    let verdict = if !enough || gates.iter().any(|g| g.pass.is_none()) {
        // A failing gate is reported as soon as it can be computed with
        // enough traffic; missing values mean the data is not there yet.
        if enough && gates.iter().any(|g| g.pass == Some(false)) {
            Verdict::NotReady
        } else {
            Verdict::InsufficientData
        }
    } else if gates.iter().all(|g| g.pass == Some(true)) {
        Verdict::Ready
    } else {
        Verdict::NotReady
    };
    Judgement {
        verdict,
        baseline_requests: baseline.requests,
        candidate_requests: candidate.requests,
        min_requests: cfg.min_requests,
        gates,
        off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PromotionMode;
    use std::time::Duration;

    fn cfg() -> PromotionConfig {
        PromotionConfig {
            mirror: "v2".into(),
            window: Duration::from_secs(600),
            min_requests: 1000,
            max_error_rate_delta: GateLimit::Set(0.5),
            max_p99_ratio: GateLimit::Set(1.2),
            p99_slack: crate::config::DEFAULT_P99_SLACK,
            max_diff_rate: GateLimit::Set(1.0),
            mode: PromotionMode::Manual,
            steps: vec![],
            step_interval: Duration::from_secs(300),
            evaluate_every: Duration::from_secs(5),
        }
    }

    fn side(requests: u64, errors: u64, p99: f64) -> WindowSummary {
        WindowSummary {
            seconds: 600.0,
            requests,
            errors,
            p99_ms: Some(p99),
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        // (name, baseline, candidate, compared, different, verdict, failing gates)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            WindowSummary,
            WindowSummary,
            u64,
            u64,
            Verdict,
            Vec<&str>,
        )> = vec![
            (
                "all pass",
                side(2000, 10, 10.0),
                side(2000, 15, 11.0),
                2000,
                10,
                Verdict::Ready,
                vec![],
            ),
            (
                "too few baseline requests",
                side(999, 0, 10.0),
                side(2000, 0, 10.0),
                2000,
                0,
                Verdict::InsufficientData,
                vec![],
            ),
            (
                "too few candidate requests",
                side(2000, 0, 10.0),
                side(10, 0, 10.0),
                10,
                0,
                Verdict::InsufficientData,
                vec![],
            ),
            (
                "error rate fails alone",
                side(2000, 10, 10.0),
                side(2000, 30, 10.0),
                2000,
                0,
                Verdict::NotReady,
                vec!["error_rate_delta"],
            ),
            (
                "p99 fails alone",
                side(2000, 0, 10.0),
                side(2000, 0, 12.5),
                2000,
                0,
                Verdict::NotReady,
                vec!["p99_ratio"],
            ),
            (
                "diff rate fails alone",
                side(2000, 0, 10.0),
                side(2000, 0, 10.0),
                1000,
                11,
                Verdict::NotReady,
                vec!["diff_rate"],
            ),
            (
                "p99 over the ratio but within p99_slack passes",
                side(2000, 0, 1.0),
                side(2000, 0, 2.9),
                1000,
                10,
                Verdict::Ready,
                vec![],
            ),
            (
                "p99 over the ratio and past p99_slack fails",
                side(2000, 0, 1.0),
                side(2000, 0, 3.1),
                1000,
                10,
                Verdict::NotReady,
                vec!["p99_ratio"],
            ),
            (
                "p99 exactly at limit passes",
                side(2000, 0, 10.0),
                side(2000, 0, 12.0),
                1000,
                10,
                Verdict::Ready,
                vec![],
            ),
            (
                "no comparisons with enough traffic: not ready",
                side(2000, 0, 10.0),
                side(2000, 0, 10.0),
                0,
                0,
                Verdict::NotReady,
                vec!["diff_rate"],
            ),
            (
                "no comparisons before enough traffic: insufficient data",
                side(20, 0, 10.0),
                side(20, 0, 10.0),
                0,
                0,
                Verdict::InsufficientData,
                vec![],
            ),
            (
                "failing gate with a missing comparison still fails",
                side(2000, 0, 10.0),
                side(2000, 100, 10.0),
                0,
                0,
                Verdict::NotReady,
                vec!["error_rate_delta", "diff_rate"],
            ),
        ];
        for (name, b, c, compared, different, verdict, failing) in cases {
            let j = judge(&cfg(), &b, &c, compared, different, true);
            assert_eq!(j.verdict, verdict, "{name}: {j:?}");
            let names: Vec<&str> = j.failing().iter().map(|g| g.name.as_str()).collect();
            assert_eq!(names, failing, "{name}");
        }
    }

    #[test]
    fn gates_turned_off_are_listed_as_off() {
        let mut c = cfg();
        c.max_error_rate_delta = GateLimit::Off;
        c.max_p99_ratio = GateLimit::Off;
        c.max_diff_rate = GateLimit::Off;
        let j = judge(
            &c,
            &side(2000, 500, 10.0),
            &side(2000, 1000, 99.0),
            0,
            0,
            true,
        );
        assert_eq!(j.verdict, Verdict::Ready);
        assert!(j.gates.is_empty());
        let off: Vec<&str> = j.off.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(off, ["error_rate_delta", "p99_ratio", "diff_rate"]);
        assert!(j.off.iter().all(|o| o.reason == OFF_IN_CONFIG));
        assert!(
            j.describe().contains("p99_ratio off (turned off"),
            "{}",
            j.describe()
        );
        let j = judge(&c, &side(2, 0, 10.0), &side(2000, 0, 10.0), 0, 0, true);
        assert_eq!(j.verdict, Verdict::InsufficientData);
    }

    #[test]
    fn left_out_gates_have_default_limits() {
        let mut c = cfg();
        c.max_error_rate_delta = GateLimit::Default;
        c.max_p99_ratio = GateLimit::Default;
        c.max_diff_rate = GateLimit::Default;
        let j = judge(
            &c,
            &side(2000, 0, 10.0),
            &side(2000, 0, 10.0),
            2000,
            2000,
            true,
        );
        let limits: Vec<(&str, f64, GateSource)> = j
            .gates
            .iter()
            .map(|g| (g.name.as_str(), g.limit, g.source))
            .collect();
        assert_eq!(
            limits,
            [
                ("error_rate_delta", 1.0, GateSource::Default),
                ("p99_ratio", 1.5, GateSource::Default),
                ("diff_rate", 1.0, GateSource::Default),
            ]
        );
        assert_eq!(j.verdict, Verdict::NotReady, "every pair differs");
        // Without comparison the default diff gate is not in force, and says why.
        let j = judge(&c, &side(2000, 0, 10.0), &side(2000, 0, 10.0), 0, 0, false);
        assert_eq!(j.verdict, Verdict::Ready);
        assert_eq!(j.off.len(), 1);
        assert_eq!(j.off[0].name, "diff_rate");
        assert_eq!(j.off[0].reason, OFF_NO_COMPARE);
        // A diff limit set explicitly on a mirror that does not compare fails, with a note.
        c.max_diff_rate = GateLimit::Set(5.0);
        let j = judge(&c, &side(2000, 0, 10.0), &side(2000, 0, 10.0), 0, 0, false);
        assert_eq!(j.verdict, Verdict::NotReady);
        assert!(j.failing()[0]
            .note
            .as_deref()
            .unwrap()
            .contains("does not compare"));
    }

    #[test]
    fn measured_values() {
        let j = judge(
            &cfg(),
            &side(2000, 20, 10.0),
            &side(4000, 60, 15.0),
            500,
            5,
            true,
        );
        let value = |n: &str| j.gates.iter().find(|g| g.name == n).unwrap().value.unwrap();
        assert!((value("error_rate_delta") - 0.5).abs() < 1e-9);
        assert!((value("p99_ratio") - 1.5).abs() < 1e-9);
        assert!((value("diff_rate") - 1.0).abs() < 1e-9);
    }
}
