//! Judging replayed answers: each answer against the recorded primary
//! answer with the live engine (`diff::compare_within`, the route's rules
//! and endpoint templates), into a `diff::Tally` under the mirror name
//! [`MIRROR`]; the secondary's answers feed its noise counts
//! (`record_secondary`), as live.
//!
//! One difference from live, possible because replay is offline: with a
//! secondary, an endpoint's first pairs (until it has `min_secondary`
//! secondary comparisons, when noise data starts to count) are held back
//! and judged once that noise data is there, instead of all being judged
//! real for want of it. At most `min_secondary` outcomes per endpoint are
//! held (the endpoints being bounded by the templater).

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{Config, RouteCompareConfig};
use crate::diff::{
    self, Captured, CompareRules, EndpointTemplater, Example, ExampleLimits, Outcome, Tally,
    TallyLimits, REDACTED,
};
use crate::record::read::{Exchange, Message};

use super::send::{Prepared, SendError};

/// The mirror name replayed answers are tallied under.
pub const MIRROR: &str = "target";

/// Routes judged in one run; exchanges of more routes are not judged
/// (counted as skipped).
pub const MAX_ROUTES: usize = 256;

/// Memory a comparison may use beyond the two bodies (JSON trees, decoded
/// copies); larger bodies are compared by digest.
const WORK_BYTES: usize = 256 << 20;

/// One replayed exchange: the recording and what the target (and the
/// secondary) answered.
#[derive(Debug)]
pub struct Done {
    pub exchange: Exchange,
    pub request: Prepared,
    pub target: Result<Captured, SendError>,
    pub secondary: Option<Result<Captured, SendError>>,
}

/// Counts kept while judging.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judged {
    /// The target answered (any status).
    pub answered: u64,
    /// No answer from the target: refused, reset, garbage, timeout.
    pub transport_errors: u64,
    /// The target answered 5xx where the recording has a status below 500.
    pub new_5xx: u64,
    /// The secondary gave no answer.
    pub secondary_errors: u64,
    /// Exchanges of routes past [`MAX_ROUTES`].
    pub over_route_limit: u64,
    /// The first few transport errors, for the summary.
    pub error_examples: Vec<String>,
}

struct RouteRules {
    rules: CompareRules,
    templater: EndpointTemplater,
    min_secondary: u64,
}

/// An outcome held until its endpoint's noise data is there.
struct Held {
    outcome: Outcome,
    example: Option<Example>,
}

#[derive(Default)]
struct Warmup {
    secondary: u64,
    held: Vec<Held>,
}

/// The judge: rules per route, the tally, the counts.
pub struct Judge {
    config: Option<Config>,
    with_secondary: bool,
    routes: HashMap<String, RouteRules>,
    warmup: HashMap<(String, String), Warmup>,
    example_limits: ExampleLimits,
    pub tally: Tally,
    pub judged: Judged,
}

fn default_compare() -> RouteCompareConfig {
    RouteCompareConfig {
        max_endpoints: diff::DEFAULT_MAX_ENDPOINTS,
        ..RouteCompareConfig::default()
    }
}

impl Judge {
    /// Rules from `config` (routes by name, `redact`, `comparison`), or
    /// the defaults.
    pub fn new(config: Option<Config>, with_secondary: bool) -> Judge {
        let mut limits = TallyLimits::default();
        if let Some(c) = &config {
            limits.max_examples = c.comparison.max_examples;
        }
        let mut tally = Tally::new(limits, diff::NoiseThresholds::default());
        if let Some(c) = &config {
            tally.set_route_thresholds(c.routes.iter().map(|r| (r.name.as_str(), r.compare.noise)));
            tally.set_redactor(c.redact.clone());
        }
        Judge {
            config,
            with_secondary,
            routes: HashMap::new(),
            warmup: HashMap::new(),
            example_limits: ExampleLimits::default(),
            tally,
            judged: Judged::default(),
        }
    }

    fn rules_for(&mut self, route: &str) -> Option<&mut RouteRules> {
        if !self.routes.contains_key(route) {
            if self.routes.len() >= MAX_ROUTES {
                return None;
            }
            let configured = self
                .config
                .as_ref()
                .and_then(|c| c.routes.iter().find(|r| r.name == route))
                .map(|r| r.compare.clone());
            let cfg = configured.unwrap_or_else(default_compare);
            // Checked when the config was loaded; a failure falls back to
            // the defaults.
            let rules = CompareRules::new(&cfg.rules).unwrap_or_default();
            let templater = EndpointTemplater::new(&cfg.endpoints, cfg.max_endpoints.max(1))
                .or_else(|_| EndpointTemplater::new(&[], diff::DEFAULT_MAX_ENDPOINTS))
                .ok()?;
            self.routes.insert(
                route.to_string(),
                RouteRules {
                    rules,
                    templater,
                    min_secondary: cfg.noise.min_secondary,
                },
            );
        }
        self.routes.get_mut(route)
    }

    /// Judges one replayed exchange.
    pub fn judge(&mut self, done: Done) {
        let Done {
            exchange,
            request,
            target,
            secondary,
        } = done;
        match &target {
            Ok(answer) => {
                self.judged.answered += 1;
                if answer.status >= 500 && exchange.response.status.unwrap_or(0) < 500 {
                    self.judged.new_5xx += 1;
                }
            }
            Err(e) => {
                self.judged.transport_errors += 1;
                if self.judged.error_examples.len() < 3 {
                    self.judged.error_examples.push(format!(
                        "line {}: {} {}: {e}",
                        exchange.line, request.method, request.path_and_query
                    ));
                }
            }
        }
        if matches!(secondary, Some(Err(_))) {
            self.judged.secondary_errors += 1;
        }
        let route = exchange.route.as_str();
        let example_limits = self.example_limits;
        let with_secondary = self.with_secondary;
        let Some(rules) = self.rules_for(route) else {
            self.judged.over_route_limit += 1;
            return;
        };
        let endpoint = rules
            .templater
            .endpoint(&request.method, &request.path_and_query)
            .to_string();
        let min_secondary = rules.min_secondary;
        let primary = recorded(&exchange.response);
        let secondary_outcome = match secondary {
            Some(Ok(answer)) => Some(compare(&primary, answer, &rules.rules)),
            _ => None,
        };
        let target_outcome = target
            .ok()
            .map(|answer| (compare(&primary, answer.clone(), &rules.rules), answer));
        let key = (route.to_string(), endpoint.clone());
        if let Some(outcome) = &secondary_outcome {
            self.tally.record_secondary(route, &endpoint, outcome);
        }
        let Some((outcome, answer)) = target_outcome else {
            self.count_secondary(&key, secondary_outcome.is_some(), min_secondary);
            return;
        };
        let example = || {
            Example::new(
                &request.method,
                &request.path_and_query,
                &request.headers,
                &primary,
                &masked(&primary, answer.clone()),
                &outcome,
                &example_limits,
            )
        };
        let warm = self.warmup.get(&key).map_or(0, |w| w.secondary)
            + u64::from(secondary_outcome.is_some());
        if with_secondary && warm < min_secondary {
            let example = (!outcome.is_equal()).then(example);
            let w = self.warmup.entry(key.clone()).or_default();
            w.held.push(Held { outcome, example });
            self.count_secondary(&key, secondary_outcome.is_some(), min_secondary);
            return;
        }
        self.count_secondary(&key, secondary_outcome.is_some(), min_secondary);
        self.tally
            .record_shadow(route, MIRROR, &endpoint, &outcome, example);
    }

    /// Counts a secondary comparison; at `min_secondary` the endpoint's
    /// held outcomes are judged.
    fn count_secondary(&mut self, key: &(String, String), counted: bool, min_secondary: u64) {
        if !self.with_secondary {
            return;
        }
        let w = self.warmup.entry(key.clone()).or_default();
        if counted {
            w.secondary += 1;
        }
        if w.secondary >= min_secondary && !w.held.is_empty() {
            let held = std::mem::take(&mut w.held);
            self.release(key, held);
        }
    }

    fn release(&mut self, (route, endpoint): &(String, String), held: Vec<Held>) {
        for h in held {
            let example = h.example;
            self.tally
                .record_shadow(route, MIRROR, endpoint, &h.outcome, || {
                    example.unwrap_or_else(|| empty_example(&h.outcome))
                });
        }
    }

    /// The routes seen (judged or not), sorted.
    pub fn route_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routes.keys().cloned().collect();
        names.sort();
        names
    }

    /// Judges whatever is still held (endpoints whose noise data never
    /// reached `min_secondary`: judged without it, as live).
    pub fn finish(&mut self) {
        let keys: Vec<(String, String)> = self.warmup.keys().cloned().collect();
        for key in keys {
            let held = self
                .warmup
                .get_mut(&key)
                .map(|w| std::mem::take(&mut w.held))
                .unwrap_or_default();
            self.release(&key, held);
        }
    }
}

fn empty_example(outcome: &Outcome) -> Example {
    Example::new(
        &Method::GET,
        "",
        &HeaderMap::new(),
        &Captured::default(),
        &Captured::default(),
        outcome,
        &ExampleLimits::default(),
    )
}

fn compare(primary: &Captured, answer: Captured, rules: &CompareRules) -> Outcome {
    diff::compare_within(primary, &masked(primary, answer), rules, WORK_BYTES)
}

/// The recorded answer as a capture: a body cut at the recording's limit
/// makes the capture truncated (status and headers compared only).
pub fn recorded(message: &Message) -> Captured {
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    Captured {
        status: message.status.unwrap_or(0),
        headers,
        body: message.body.clone(),
        truncated: message.body_truncated,
    }
}

/// The answer with the values of headers the recording redacted redacted
/// too: of those only presence can be compared.
fn masked(primary: &Captured, mut answer: Captured) -> Captured {
    let redacted: Vec<HeaderName> = primary
        .headers
        .iter()
        .filter(|(_, v)| v.as_bytes() == REDACTED.as_bytes())
        .map(|(n, _)| n.clone())
        .collect();
    for name in redacted {
        let n = answer.headers.get_all(&name).iter().count();
        if n > 0 {
            answer.headers.remove(&name);
            for _ in 0..n {
                answer
                    .headers
                    .append(name.clone(), HeaderValue::from_static(REDACTED));
            }
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn exchange(body: &str) -> Exchange {
        let mut e = Exchange {
            route: "items".into(),
            ..Exchange::default()
        };
        e.request.method = Some("GET".into());
        e.request.uri = Some("/items/7".into());
        e.response.status = Some(200);
        e.response.headers = vec![
            ("content-type".into(), "application/json".into()),
            ("set-cookie".into(), REDACTED.into()),
        ];
        e.response.body = Bytes::from(body.to_string());
        e
    }

    fn answer(body: &str) -> Captured {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("set-cookie", HeaderValue::from_static("s=1"));
        Captured {
            status: 200,
            headers,
            body: Bytes::from(body.to_string()),
            truncated: false,
        }
    }

    fn done(recorded: &str, target: &str, secondary: Option<&str>) -> Done {
        let exchange = exchange(recorded);
        Done {
            request: Prepared {
                method: Method::GET,
                path_and_query: "/items/7".into(),
                headers: HeaderMap::new(),
                body: Bytes::new(),
            },
            exchange,
            target: Ok(answer(target)),
            secondary: secondary.map(|s| Ok(answer(s))),
        }
    }

    #[test]
    fn a_redacted_header_compares_presence_only() {
        let mut j = Judge::new(None, false);
        j.judge(done(r#"{"a":1}"#, r#"{"a":1}"#, None));
        let report = j.tally.route_report("items");
        assert_eq!(report.endpoints[0].equal, 1, "{report:?}");
    }

    #[test]
    fn a_recorded_body_cut_at_the_limit_compares_status_and_headers_only() {
        let mut j = Judge::new(None, false);
        let mut d = done("", r#"{"a":2}"#, None);
        d.exchange.response.body_truncated = true;
        j.judge(d);
        let e = &j.tally.route_report("items").endpoints[0];
        assert_eq!((e.equal, e.truncated), (1, 1), "{e:?}");
        let mut d = done("", r#"{"a":2}"#, None);
        d.exchange.response.body_truncated = true;
        d.exchange.response.status = Some(201);
        j.judge(d);
        assert_eq!(j.tally.route_report("items").endpoints[0].different, 1);
    }

    #[test]
    fn held_pairs_are_judged_with_the_noise_learnt() {
        let mut j = Judge::new(None, true);
        for i in 0..20 {
            let rec = format!(r#"{{"a":1,"ts":{i}}}"#);
            let other = format!(r#"{{"a":1,"ts":{}}}"#, i + 100);
            j.judge(done(&rec, &other, Some(&other)));
        }
        j.finish();
        let e = &j.tally.route_report("items").endpoints[0];
        assert_eq!(e.endpoint, "GET /items/{id}");
        assert_eq!(e.mirror, MIRROR);
        assert_eq!(e.compared, 20);
        assert_eq!(e.different, 0, "{e:?}");
        assert_eq!(e.noise_only, 20);
        // Without a secondary the same differences are real.
        let mut j = Judge::new(None, false);
        j.judge(done(r#"{"ts":1}"#, r#"{"ts":2}"#, None));
        assert_eq!(j.tally.route_report("items").endpoints[0].different, 1);
    }
}
