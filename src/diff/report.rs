//! The human-readable table of a route's endpoints, as printed by
//! `shadowgate diffs`: one row per endpoint and mirror, worst first, each
//! followed by its most differing fields. Plain text, no colours; control
//! characters from the network are replaced so they cannot drive the
//! terminal.

use std::fmt::Write as _;

use super::tally::{EndpointReport, FieldReport, RouteReport};

/// Presentation options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOptions {
    /// Fields listed under each endpoint.
    pub top_fields: usize,
    /// Longest field path shown, in characters.
    pub max_path_chars: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            top_fields: 3,
            max_path_chars: 60,
        }
    }
}

fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect();
    if s.chars().nth(max).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Renders a route's report as a table. Endpoints are ordered by their
/// share of real differences, highest first, then by name.
pub fn render_route(route: &str, report: &RouteReport, options: &ReportOptions) -> String {
    let mut out = String::new();
    let route = clean(route, 80);
    if report.endpoints.is_empty() {
        let _ = writeln!(out, "route {route}: nothing compared yet");
        return out;
    }
    let mut endpoints: Vec<&EndpointReport> = report.endpoints.iter().collect();
    let rate = |e: &EndpointReport| {
        if e.compared == 0 {
            0.0
        } else {
            e.different as f64 / e.compared as f64
        }
    };
    endpoints.sort_by(|a, b| {
        rate(b)
            .total_cmp(&rate(a))
            .then_with(|| a.endpoint.cmp(&b.endpoint))
            .then_with(|| a.mirror.cmp(&b.mirror))
    });

    let compared: u64 = endpoints.iter().map(|e| e.compared).sum();
    let different: u64 = endpoints.iter().map(|e| e.different).sum();
    let noise_only: u64 = endpoints.iter().map(|e| e.noise_only).sum();
    let _ = writeln!(
        out,
        "route {route}: {compared} compared, {different} different ({}), {noise_only} noise only",
        percent(different, compared)
    );

    let header = [
        "ENDPOINT",
        "MIRROR",
        "COMPARED",
        "DIFFERENT",
        "NOISE ONLY",
        "TRUNCATED",
    ];
    let rows: Vec<[String; 6]> = endpoints
        .iter()
        .map(|e| {
            [
                clean(&e.endpoint, 80),
                clean(&e.mirror, 40),
                e.compared.to_string(),
                format!("{} ({})", e.different, percent(e.different, e.compared)),
                e.noise_only.to_string(),
                e.truncated.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(width);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(width(cell));
            if i > 0 {
                s.push_str("  ");
            }
            // Text columns left-aligned, numbers right-aligned.
            if i < 2 {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', pad));
            } else {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            }
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(header));
    for (e, row) in endpoints.iter().zip(&rows) {
        let _ = writeln!(
            out,
            "{}",
            line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]])
        );
        let shown: Vec<(String, String, &FieldReport)> = e
            .fields
            .iter()
            .take(options.top_fields)
            .map(|f| {
                (
                    clean(&f.path, options.max_path_chars),
                    format!("{} ({})", f.different, percent(f.different, e.compared)),
                    f,
                )
            })
            .collect();
        let path_width = shown.iter().map(|(p, _, _)| width(p)).max().unwrap_or(0);
        let count_width = shown.iter().map(|(_, c, _)| width(c)).max().unwrap_or(0);
        for (path, count, f) in &shown {
            let mut s = format!(
                "    {path}{}  {}{count}",
                " ".repeat(path_width - width(path)),
                " ".repeat(count_width - width(count)),
            );
            if f.noise {
                let _ = write!(
                    s,
                    "  noise (secondary {}/{})",
                    f.noise_count, e.secondary_compared
                );
            }
            let _ = writeln!(out, "{s}");
        }
        match e.fields.len() - shown.len() {
            0 => {}
            1 => {
                let _ = writeln!(out, "    … 1 more field");
            }
            n => {
                let _ = writeln!(out, "    … {n} more fields");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{
        BodyMode, DiffKind, Difference, Example, NoiseThresholds, Outcome, Tally, TallyLimits,
    };

    fn outcome(paths: &[&str]) -> Outcome {
        Outcome {
            differences: paths
                .iter()
                .map(|p| Difference {
                    path: p.to_string(),
                    kind: DiffKind::ValueChanged,
                    primary: None,
                    other: None,
                })
                .collect(),
            differences_cut: false,
            truncated: false,
            body: BodyMode::Json,
            notes: Vec::new(),
        }
    }

    fn sample() -> Tally {
        let mut t = Tally::new(TallyLimits::default(), NoiseThresholds::default());
        for i in 0..40 {
            let o = if i % 2 == 0 {
                outcome(&["$.meta.ts"])
            } else {
                outcome(&[])
            };
            t.record_secondary("api", "GET /items/{id}", &o);
        }
        for i in 0..200 {
            let mut paths = vec![];
            if i % 2 == 0 {
                paths.push("$.meta.ts");
            }
            if i % 10 == 0 {
                paths.push("$.items[3].price");
            }
            if i % 50 == 0 {
                paths.push("header.cache-control");
                paths.push("$.user[\"odd key\"]");
            }
            t.record_shadow(
                "api",
                "v2",
                "GET /items/{id}",
                &outcome(&paths),
                Example::default,
            );
        }
        for i in 0..30 {
            let o = if i < 3 {
                outcome(&["status"])
            } else {
                outcome(&[])
            };
            t.record_shadow("api", "v2", "POST /orders", &o, Example::default);
        }
        for _ in 0..5 {
            t.record_shadow(
                "api",
                "v3-canary",
                "GET /items/{id}",
                &outcome(&[]),
                Example::default,
            );
        }
        let mut cut = outcome(&[]);
        cut.truncated = true;
        t.record_shadow(
            "api",
            "v3-canary",
            "GET /items/{id}",
            &cut,
            Example::default,
        );
        t
    }

    #[test]
    fn route_table() {
        let t = sample();
        let text = render_route("api", &t.route_report("api"), &ReportOptions::default());
        insta::assert_snapshot!("route_table", text);
    }

    #[test]
    fn route_table_one_field() {
        let t = sample();
        let text = render_route(
            "api",
            &t.route_report("api"),
            &ReportOptions {
                top_fields: 1,
                max_path_chars: 6,
            },
        );
        insta::assert_snapshot!("route_table_one_field", text);
    }

    #[test]
    fn empty_route_and_control_characters() {
        assert_eq!(
            render_route(
                "api\u{1b}[2J",
                &RouteReport::default(),
                &ReportOptions::default()
            ),
            "route api?[2J: nothing compared yet\n"
        );
    }
}
