//! A replay's outcome: the counts, the rates the CI gate judges, the
//! printed summary and the per-route reports (the JSON shape of
//! `GET /api/v1/diffs/{route}`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::diff::{render_route, ReportOptions, RouteReport};

use super::judge::{Judge, Judged, MIRROR};
use super::ReplayError;

/// What the reading side counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Exchanges read (lines that parsed).
    pub read: u64,
    /// Lines that did not parse.
    pub bad_lines: u64,
    /// The first few bad lines (`file:line: reason`) and unsendable
    /// exchanges.
    pub bad_examples: Vec<String>,
    /// The file failed part-way (reading stopped there).
    pub fatal: Option<String>,
    /// Left out by `--filter`.
    pub filtered: u64,
    /// Not sent: the recorded request body was cut at `max_body_bytes`.
    pub skipped_truncated: u64,
    /// Not sent: no valid method or path.
    pub skipped_invalid: u64,
    /// Not sent: HAR entries that cannot be replayed (failed in the
    /// browser, not http, websocket).
    pub skipped_unreplayable: u64,
    pub sent: u64,
}

/// The CI gate's thresholds (`None`: not judged).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gate {
    /// Percent of compared pairs with a real difference.
    pub max_diff_rate: Option<f64>,
    /// Percent of requests without an answer or with a new 5xx.
    pub max_error_rate: Option<f64>,
    /// Outbound calls not recorded plus recorded calls not made.
    pub max_call_diffs: Option<u64>,
}

/// A finished replay.
#[derive(Debug, Clone)]
pub struct Summary {
    pub counts: Counts,
    pub judged: Judged,
    /// Pairs compared, and of those equal, different (a real difference)
    /// and noise only, over every route.
    pub compared: u64,
    pub equal: u64,
    pub different: u64,
    pub noise_only: u64,
    pub elapsed: Duration,
    /// Per route seen, sorted by name.
    pub reports: Vec<(String, RouteReport)>,
    /// With `--egress-listen`: the target's outbound calls.
    pub egress: Option<EgressCounts>,
}

/// The target's outbound calls, answered from the recording.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressCounts {
    /// Per service (or host): answered with the recorded answer, and not
    /// (a call the recorded version did not make: 503 `no_recorded_call`).
    pub services: std::collections::BTreeMap<String, crate::egress::offline::Counts>,
    /// Recorded calls the target did not make.
    pub missing: u64,
}

impl Summary {
    pub(super) fn new(counts: Counts, judge: Judge, elapsed: Duration) -> Summary {
        let mut s = Summary {
            counts,
            judged: judge.judged.clone(),
            compared: 0,
            equal: 0,
            different: 0,
            noise_only: 0,
            elapsed,
            reports: Vec::new(),
            egress: None,
        };
        for t in judge.tally.totals().iter().filter(|t| t.mirror == MIRROR) {
            s.compared += t.compared;
            s.equal += t.equal;
            s.different += t.different;
            s.noise_only += t.noise_only;
        }
        // Every route seen, also one where nothing got an answer (an
        // empty report).
        s.reports = judge
            .route_names()
            .into_iter()
            .map(|r| {
                let report = judge.tally.route_report(&r);
                (r, report)
            })
            .collect();
        s
    }

    /// Percent of the compared pairs with a real difference (noise-only
    /// pairs do not count), as live comparison's diff rate.
    pub fn diff_rate(&self) -> f64 {
        percent(self.different, self.compared)
    }

    /// Percent of the requests sent that failed on the target: no answer
    /// (refused, reset, malformed, timed out) or a 5xx answer where the
    /// recording has a status below 500.
    pub fn error_rate(&self) -> f64 {
        percent(
            self.judged.transport_errors + self.judged.new_5xx,
            self.counts.sent,
        )
    }

    /// Requests sent a second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.counts.sent as f64 / secs
        } else {
            0.0
        }
    }

    /// Outbound calls that differ from the recording (with
    /// `--egress-listen`): calls the recording lacks plus recorded calls
    /// not made.
    pub fn call_diffs(&self) -> u64 {
        self.egress.as_ref().map_or(0, |e| {
            e.missing + e.services.values().map(|c| c.unmatched).sum::<u64>()
        })
    }

    /// The thresholds passed over (empty: the gate passes). A threshold
    /// is passed over when the figure is above it.
    pub fn failures(&self, gate: &Gate) -> Vec<String> {
        let Gate {
            max_diff_rate,
            max_error_rate,
            max_call_diffs,
        } = *gate;
        let mut out = Vec::new();
        if let Some(max) = max_call_diffs {
            if self.call_diffs() > max {
                out.push(format!(
                    "{} outbound calls differ from the recording (not recorded or not made), over --max-call-diffs {max}",
                    self.call_diffs()
                ));
            }
        }
        if let Some(max) = max_diff_rate {
            if self.diff_rate() > max {
                out.push(format!(
                    "diff rate {:.2}% is over --max-diff-rate {max}%",
                    self.diff_rate()
                ));
            }
        }
        if let Some(max) = max_error_rate {
            if self.error_rate() > max {
                out.push(format!(
                    "error rate {:.2}% is over --max-error-rate {max}%",
                    self.error_rate()
                ));
            }
        }
        out
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The printed summary, then each route's table as `shadowgate diffs`
/// prints it.
pub fn render(s: &Summary) -> String {
    let c = &s.counts;
    let j = &s.judged;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replayed {} of {} exchanges in {:.2}s ({:.1} req/s)",
        c.sent,
        c.read,
        s.elapsed.as_secs_f64(),
        s.rate()
    );
    let _ = writeln!(
        out,
        "  answered {}, target errors {} (no answer {}, new 5xx {}), error rate {:.2}%",
        j.answered,
        j.transport_errors + j.new_5xx,
        j.transport_errors,
        j.new_5xx,
        s.error_rate()
    );
    let _ = writeln!(
        out,
        "  compared {}: equal {}, different {}, noise only {}; diff rate {:.2}%",
        s.compared,
        s.equal,
        s.different,
        s.noise_only,
        s.diff_rate()
    );
    let skipped =
        c.skipped_truncated + c.skipped_invalid + c.skipped_unreplayable + j.over_route_limit;
    let _ = writeln!(
        out,
        "  skipped {} (request body truncated {}, not sendable {}, not replayable {}, over the route limit {}), filtered out {}, bad lines {}",
        skipped,
        c.skipped_truncated,
        c.skipped_invalid,
        c.skipped_unreplayable,
        j.over_route_limit,
        c.filtered,
        c.bad_lines
    );
    if j.secondary_errors > 0 {
        let _ = writeln!(out, "  secondary errors {}", j.secondary_errors);
    }
    for e in c.bad_examples.iter().chain(&j.error_examples) {
        let _ = writeln!(out, "  {}", clean(e));
    }
    if let Some(f) = &c.fatal {
        let _ = writeln!(out, "  reading stopped: {}", clean(f));
    }
    if let Some(e) = &s.egress {
        let served: u64 = e.services.values().map(|c| c.served).sum();
        let unmatched: u64 = e.services.values().map(|c| c.unmatched).sum();
        let _ = writeln!(
            out,
            "  outbound calls: answered from the recording {served}, not recorded {unmatched} (answered 503), recorded but not made {}",
            e.missing
        );
        for (service, c) in &e.services {
            let _ = writeln!(
                out,
                "    {}: answered {}, not recorded {}",
                clean(service),
                c.served,
                c.unmatched
            );
        }
    }
    for (route, report) in &s.reports {
        out.push('\n');
        out.push_str(&render_route(route, report, &ReportOptions::default()));
    }
    out
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(300)
        .collect()
}

/// A route name made safe as part of a file name.
fn file_part(route: &str) -> String {
    let mut out: String = route
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

/// Writes each route's report as JSON to `template` (`{route}` replaced by
/// the route's name, made safe for a file name). A capture of several
/// routes needs `{route}` in the path.
pub fn write_reports(s: &Summary, template: &str) -> Result<Vec<PathBuf>, ReplayError> {
    let err = |reason: String| ReplayError::Report {
        path: template.to_string(),
        reason,
    };
    if s.reports.len() > 1 && !template.contains("{route}") {
        let names: Vec<&str> = s.reports.iter().map(|(r, _)| r.as_str()).collect();
        return Err(err(format!(
            "the recording holds {} routes ({}): put {{route}} in the path (one file a route) or pick one with --filter route=NAME",
            names.len(),
            clean(&names.join(", "))
        )));
    }
    let mut written = Vec::new();
    for (route, report) in &s.reports {
        let path = PathBuf::from(template.replace("{route}", &file_part(route)));
        let json = serde_json::to_vec_pretty(report).map_err(|e| err(e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| err(format!("{}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_parts_stay_in_their_directory() {
        assert_eq!(file_part("items"), "items");
        assert_eq!(file_part("../etc/passwd"), "_.._etc_passwd");
        assert_eq!(file_part(""), "_");
        assert_eq!(file_part(".hidden"), "_.hidden");
    }

    #[test]
    fn rates_and_gate() {
        let s = Summary {
            counts: Counts {
                sent: 200,
                ..Counts::default()
            },
            judged: Judged {
                transport_errors: 1,
                new_5xx: 1,
                ..Judged::default()
            },
            compared: 198,
            equal: 190,
            different: 2,
            noise_only: 6,
            elapsed: Duration::from_secs(2),
            reports: Vec::new(),
            egress: None,
        };
        assert!((s.error_rate() - 1.0).abs() < 1e-9);
        assert!((s.diff_rate() - 2.0 / 198.0 * 100.0).abs() < 1e-9);
        assert_eq!(s.rate(), 100.0);
        let gate = |d, e, c| Gate {
            max_diff_rate: d,
            max_error_rate: e,
            max_call_diffs: c,
        };
        assert!(s.failures(&gate(Some(1.1), Some(1.0), None)).is_empty());
        assert_eq!(s.failures(&gate(Some(1.0), Some(0.5), None)).len(), 2);
        assert!(s.failures(&Gate::default()).is_empty());

        let mut calls = s.clone();
        let mut services = std::collections::BTreeMap::new();
        services.insert(
            "payments".to_string(),
            crate::egress::offline::Counts {
                served: 5,
                unmatched: 2,
            },
        );
        calls.egress = Some(EgressCounts {
            services,
            missing: 1,
        });
        assert_eq!(calls.call_diffs(), 3);
        assert!(calls.failures(&gate(None, None, Some(3))).is_empty());
        assert_eq!(calls.failures(&gate(None, None, Some(2))).len(), 1);
        assert_eq!(s.call_diffs(), 0, "no egress: nothing to differ");
    }
}
