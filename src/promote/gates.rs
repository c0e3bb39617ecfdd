//! Gate arithmetic: is the candidate as good as the baseline? Pure
//! functions over window statistics, no I/O.
//!
//! - error rate delta: candidate errors % − baseline errors % (5xx and
//!   failed exchanges), in percentage points;
//! - p99 ratio: candidate p99 / baseline p99;
//! - diff rate: real differences (after noise) in percent of compared pairs.
//!
//! Before a promotion the candidate is the mirror and the baseline the
//! primary; after it, the new primary is the candidate and the old one,
//! now a mirror, the baseline.

use serde::{Deserialize, Serialize};

use crate::config::PromotionConfig;
use crate::telemetry::window::WindowSummary;

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every configured gate passes.
    Ready,
    /// At least one gate fails.
    NotReady,
    /// Not enough traffic yet to judge.
    InsufficientData,
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
}

/// All gates and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub baseline_requests: u64,
    pub candidate_requests: u64,
    pub min_requests: u64,
    pub gates: Vec<Gate>,
}

impl Judgement {
    /// The gates that fail.
    pub fn failing(&self) -> Vec<&Gate> {
        self.gates
            .iter()
            .filter(|g| g.pass == Some(false))
            .collect()
    }

    /// `name=value (limit)` for each gate, for logs.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .gates
            .iter()
            .map(|g| match g.value {
                Some(v) => format!("{}={v:.3} (limit {})", g.name, g.limit),
                None => format!("{}=n/a (limit {})", g.name, g.limit),
            })
            .collect();
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

/// Judges `candidate` against `baseline`; `compared`/`different` are the
/// comparison counts between them over the same window.
pub fn judge(
    cfg: &PromotionConfig,
    baseline: &WindowSummary,
    candidate: &WindowSummary,
    compared: u64,
    different: u64,
) -> Judgement {
    let mut gates = Vec::new();
    if let Some(limit) = cfg.max_error_rate_delta {
        let value = error_percent(candidate)
            .zip(error_percent(baseline))
            .map(|(c, b)| c - b);
        gates.push(Gate {
            name: "error_rate_delta".into(),
            value,
            limit,
            pass: value.map(|v| v <= limit),
        });
    }
    if let Some(limit) = cfg.max_p99_ratio {
        let value = match (candidate.p99_ms, baseline.p99_ms) {
            (Some(c), Some(b)) if b > 0.0 => Some(c / b),
            _ => None,
        };
        gates.push(Gate {
            name: "p99_ratio".into(),
            value,
            limit,
            pass: value.map(|v| v <= limit),
        });
    }
    if let Some(limit) = cfg.max_diff_rate {
        let value = (compared > 0).then(|| different as f64 * 100.0 / compared as f64);
        gates.push(Gate {
            name: "diff_rate".into(),
            value,
            limit,
            pass: value.map(|v| v <= limit),
        });
    }
    let enough = baseline.requests >= cfg.min_requests && candidate.requests >= cfg.min_requests;
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
            max_error_rate_delta: Some(0.5),
            max_p99_ratio: Some(1.2),
            max_diff_rate: Some(1.0),
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
                "p99 exactly at limit passes",
                side(2000, 0, 10.0),
                side(2000, 0, 12.0),
                1000,
                10,
                Verdict::Ready,
                vec![],
            ),
            (
                "no comparisons yet",
                side(2000, 0, 10.0),
                side(2000, 0, 10.0),
                0,
                0,
                Verdict::InsufficientData,
                vec![],
            ),
            (
                "failing gate with a missing one still fails",
                side(2000, 0, 10.0),
                side(2000, 100, 10.0),
                0,
                0,
                Verdict::NotReady,
                vec!["error_rate_delta"],
            ),
        ];
        for (name, b, c, compared, different, verdict, failing) in cases {
            let j = judge(&cfg(), &b, &c, compared, different);
            assert_eq!(j.verdict, verdict, "{name}: {j:?}");
            let names: Vec<&str> = j.failing().iter().map(|g| g.name.as_str()).collect();
            assert_eq!(names, failing, "{name}");
        }
    }

    #[test]
    fn gates_are_optional() {
        let mut c = cfg();
        c.max_error_rate_delta = None;
        c.max_p99_ratio = None;
        c.max_diff_rate = None;
        let j = judge(&c, &side(2000, 500, 10.0), &side(2000, 1000, 99.0), 0, 0);
        assert_eq!(j.verdict, Verdict::Ready);
        assert!(j.gates.is_empty());
        let j = judge(&c, &side(2, 0, 10.0), &side(2000, 0, 10.0), 0, 0);
        assert_eq!(j.verdict, Verdict::InsufficientData);
    }

    #[test]
    fn measured_values() {
        let j = judge(&cfg(), &side(2000, 20, 10.0), &side(4000, 60, 15.0), 500, 5);
        let value = |n: &str| j.gates.iter().find(|g| g.name == n).unwrap().value.unwrap();
        assert!((value("error_rate_delta") - 0.5).abs() < 1e-9);
        assert!((value("p99_ratio") - 1.5).abs() < 1e-9);
        assert!((value("diff_rate") - 1.0).abs() < 1e-9);
    }
}
