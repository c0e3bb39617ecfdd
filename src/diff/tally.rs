//! In-memory aggregation of comparison outcomes, per route, mirror and
//! endpoint, with per-field counts, noise counts learned from a secondary,
//! and a few example pairs. Every collection is bounded.
//!
//! Fields are counted under [`Difference::field_key`](super::Difference::field_key)
//! (JSON array indices folded to `[*]`) and at most once per comparison.
//! The noise data of a route's endpoint (primary vs secondary) is shared by
//! all its mirrors.
//!
//! A [`Tally`] is plain data: wrap it in a lock to share it. Reports and
//! the persisted state are serde types, so an API can serve them and a CLI
//! or store can read them back.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::difference::Difference;
use super::example::Example;
use super::noise::{is_noise, NoiseThresholds, Rate};
use super::outcome::Outcome;
use super::redact::Redactor;

/// Field name under which paths beyond `max_fields` are counted.
pub const OTHER_FIELD: &str = "(other)";
/// Endpoint name under which endpoints beyond `max_endpoints` are counted.
pub const OTHER_ENDPOINT: &str = "(other)";

/// How the names of outbound-call endpoints (the egress's side effects)
/// start.
pub const EGRESS_PREFIX: &str = "egress ";

/// Bounds of a [`Tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TallyLimits {
    /// Endpoints per route and mirror (and per route for the secondary);
    /// more are counted under [`OTHER_ENDPOINT`].
    pub max_endpoints: usize,
    /// Field paths per endpoint; more are counted under [`OTHER_FIELD`].
    pub max_fields: usize,
    /// Example pairs kept per endpoint (the first ones with a real
    /// difference).
    pub max_examples: usize,
}

impl Default for TallyLimits {
    fn default() -> Self {
        TallyLimits {
            max_endpoints: 1000,
            max_fields: 200,
            max_examples: 5,
        }
    }
}

/// How one primary-vs-shadow comparison was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairVerdict {
    /// No differences.
    Equal,
    /// At least one real difference.
    Different,
    /// Differences, all of them noise.
    NoiseOnly,
}

// ---------------------------------------------------------------------------
// Reports and state (serde)

/// One field of an endpoint report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FieldReport {
    pub path: String,
    /// Primary-vs-shadow comparisons that differed at this field.
    pub different: u64,
    /// Primary-vs-secondary comparisons that differed at this field.
    pub noise_count: u64,
    /// The field's differences are judged noise.
    pub noise: bool,
}

/// One endpoint of one mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointReport {
    pub endpoint: String,
    /// `egress` for an outbound call of the route's requests (issue #13:
    /// endpoints named `egress <service> <METHOD> <path>`); absent for the
    /// route's own answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub mirror: String,
    pub compared: u64,
    pub equal: u64,
    pub different: u64,
    pub noise_only: u64,
    pub truncated: u64,
    /// Primary-vs-secondary comparisons of this endpoint.
    pub secondary_compared: u64,
    /// By `different`, most first, then by path.
    pub fields: Vec<FieldReport>,
}

/// A route's endpoints: `{"endpoints":[...]}`, sorted by endpoint then
/// mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteReport {
    pub endpoints: Vec<EndpointReport>,
}

/// Totals of one route and mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub route: String,
    pub mirror: String,
    pub compared: u64,
    pub equal: u64,
    pub different: u64,
    pub noise_only: u64,
    pub truncated: u64,
}

/// A path and a count, for persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FieldCount {
    pub path: String,
    pub count: u64,
}

/// Persisted state of one (route, mirror, endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointTallyState {
    pub route: String,
    pub mirror: String,
    pub endpoint: String,
    pub compared: u64,
    pub equal: u64,
    pub different: u64,
    pub noise_only: u64,
    pub truncated: u64,
    pub fields: Vec<FieldCount>,
    pub examples: Vec<Example>,
}

/// Persisted noise data of one (route, endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecondaryState {
    pub route: String,
    pub endpoint: String,
    pub compared: u64,
    pub fields: Vec<FieldCount>,
}

/// Everything a [`Tally`] knows, as plain data: persist it, and rebuild the
/// tally with [`Tally::restore`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TallyState {
    pub shadow: Vec<EndpointTallyState>,
    pub secondary: Vec<SecondaryState>,
}

// ---------------------------------------------------------------------------
// The tally

#[derive(Debug, Clone, Default)]
struct Fields {
    counts: HashMap<String, u64>,
    other: u64,
}

impl Fields {
    fn add(&mut self, key: &str, n: u64, max: usize) {
        if key == OTHER_FIELD {
            self.other = self.other.saturating_add(n);
        } else if let Some(c) = self.counts.get_mut(key) {
            *c = c.saturating_add(n);
        } else if self.counts.len() < max {
            self.counts.insert(key.to_owned(), n);
        } else {
            self.other = self.other.saturating_add(n);
        }
    }

    fn get(&self, key: &str) -> Option<u64> {
        if key == OTHER_FIELD {
            return Some(self.other);
        }
        self.counts.get(key).copied()
    }

    fn export(&self) -> Vec<FieldCount> {
        let mut out: Vec<FieldCount> = self
            .counts
            .iter()
            .map(|(path, &count)| FieldCount {
                path: path.clone(),
                count,
            })
            .collect();
        if self.other > 0 {
            out.push(FieldCount {
                path: OTHER_FIELD.into(),
                count: self.other,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

#[derive(Debug, Clone, Default)]
struct EndpointStats {
    compared: u64,
    equal: u64,
    different: u64,
    noise_only: u64,
    truncated: u64,
    fields: Fields,
    examples: Vec<Example>,
}

#[derive(Debug, Clone, Default)]
struct SecondaryStats {
    compared: u64,
    fields: Fields,
}

#[derive(Debug, Clone, Default)]
struct RouteTally {
    /// mirror → endpoint → stats
    mirrors: BTreeMap<String, BTreeMap<String, EndpointStats>>,
    /// endpoint → noise stats
    secondary: BTreeMap<String, SecondaryStats>,
}

/// Bounded aggregation of outcomes; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    routes: BTreeMap<String, RouteTally>,
    limits: TallyLimits,
    thresholds: NoiseThresholds,
    /// Per-route thresholds (a route's `noise:`), overriding `thresholds`.
    /// Configuration, not data: never exported.
    route_thresholds: HashMap<String, NoiseThresholds>,
    /// Hides secrets in examples before they are kept.
    redactor: Redactor,
}

/// The name an endpoint is counted under in `map`: itself, or
/// [`OTHER_ENDPOINT`] when the map is full.
fn capped<'a, V>(map: &BTreeMap<String, V>, endpoint: &'a str, max: usize) -> &'a str {
    if map.len() < max || map.contains_key(endpoint) {
        endpoint
    } else {
        OTHER_ENDPOINT
    }
}

fn field_keys(outcome: &Outcome) -> Vec<Cow<'_, str>> {
    let mut keys: Vec<Cow<'_, str>> = outcome
        .differences
        .iter()
        .map(Difference::field_key)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl Tally {
    pub fn new(limits: TallyLimits, thresholds: NoiseThresholds) -> Self {
        Tally {
            routes: BTreeMap::new(),
            limits,
            thresholds,
            route_thresholds: HashMap::new(),
            redactor: Redactor::default(),
        }
    }

    pub fn limits(&self) -> &TallyLimits {
        &self.limits
    }

    pub fn thresholds(&self) -> &NoiseThresholds {
        &self.thresholds
    }

    /// Sets the noise thresholds of every configured route (its `noise:`),
    /// replacing those set before; routes not listed use the default ones.
    /// Judgements already made are not revisited; reports use the new ones.
    pub fn set_route_thresholds<'a>(
        &mut self,
        routes: impl IntoIterator<Item = (&'a str, NoiseThresholds)>,
    ) {
        self.route_thresholds = routes
            .into_iter()
            .map(|(route, t)| (route.to_owned(), t))
            .collect();
    }

    /// Sets what examples have redacted (the defaults are always included).
    /// Examples already kept (e.g. restored from the store) are redacted
    /// with it too.
    pub fn set_redactor(&mut self, redactor: Redactor) {
        for rt in self.routes.values_mut() {
            for stats in rt.mirrors.values_mut().flat_map(|m| m.values_mut()) {
                for ex in &mut stats.examples {
                    ex.redact(&redactor);
                }
            }
        }
        self.redactor = redactor;
    }

    /// The noise thresholds `route` is judged with.
    pub fn thresholds_for(&self, route: &str) -> NoiseThresholds {
        self.route_thresholds
            .get(route)
            .copied()
            .unwrap_or(self.thresholds)
    }

    /// Records a primary-vs-shadow outcome and judges it. `example` is only
    /// called when the outcome is [`PairVerdict::Different`] and the endpoint
    /// still has room for an example.
    pub fn record_shadow(
        &mut self,
        route: &str,
        mirror: &str,
        endpoint: &str,
        outcome: &Outcome,
        example: impl FnOnce() -> Example,
    ) -> PairVerdict {
        let limits = self.limits;
        let thresholds = self.thresholds_for(route);
        let rt = self.routes.entry(route.to_owned()).or_default();
        let endpoints = rt.mirrors.entry(mirror.to_owned()).or_default();
        let endpoint = capped(endpoints, endpoint, limits.max_endpoints);
        let stats = endpoints.entry(endpoint.to_owned()).or_default();
        let secondary = rt
            .secondary
            .get(endpoint)
            .filter(|s| s.compared > 0 && s.compared >= thresholds.min_secondary);

        stats.compared = stats.compared.saturating_add(1);
        if outcome.truncated {
            stats.truncated = stats.truncated.saturating_add(1);
        }
        let keys = field_keys(outcome);
        for key in &keys {
            stats.fields.add(key, 1, limits.max_fields);
        }
        let verdict = if keys.is_empty() {
            PairVerdict::Equal
        } else {
            let real = keys.iter().any(|key| {
                // A field counted under "(other)" has no rate of its own.
                let raw = match stats.fields.counts.get(key.as_ref()) {
                    Some(&n) => Rate::new(n, stats.compared),
                    None => return true,
                };
                let noise =
                    secondary.map(|s| Rate::new(s.fields.get(key).unwrap_or(0), s.compared));
                !is_noise(raw, noise, &thresholds)
            });
            if real {
                PairVerdict::Different
            } else {
                PairVerdict::NoiseOnly
            }
        };
        match verdict {
            PairVerdict::Equal => stats.equal = stats.equal.saturating_add(1),
            PairVerdict::Different => {
                stats.different = stats.different.saturating_add(1);
                if stats.examples.len() < limits.max_examples {
                    let mut kept = example();
                    kept.redact(&self.redactor);
                    stats.examples.push(kept);
                }
            }
            PairVerdict::NoiseOnly => stats.noise_only = stats.noise_only.saturating_add(1),
        }
        verdict
    }

    /// Records a primary-vs-secondary outcome (noise data).
    pub fn record_secondary(&mut self, route: &str, endpoint: &str, outcome: &Outcome) {
        let limits = self.limits;
        let rt = self.routes.entry(route.to_owned()).or_default();
        let endpoint = capped(&rt.secondary, endpoint, limits.max_endpoints);
        let stats = rt.secondary.entry(endpoint.to_owned()).or_default();
        stats.compared = stats.compared.saturating_add(1);
        for key in field_keys(outcome) {
            stats.fields.add(&key, 1, limits.max_fields);
        }
    }

    /// Routes with any data, sorted.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// Forgets a route (e.g. after a new deployment of its shadow).
    pub fn clear_route(&mut self, route: &str) {
        self.routes.remove(route);
    }

    /// The per-endpoint report of a route (empty for an unknown route).
    pub fn route_report(&self, route: &str) -> RouteReport {
        let Some(rt) = self.routes.get(route) else {
            return RouteReport::default();
        };
        let thresholds = self.thresholds_for(route);
        let mut endpoints = Vec::new();
        for (mirror, eps) in &rt.mirrors {
            for (endpoint, stats) in eps {
                endpoints.push(endpoint_report(rt, mirror, endpoint, stats, &thresholds));
            }
        }
        endpoints.sort_by(|a, b| {
            a.endpoint
                .cmp(&b.endpoint)
                .then_with(|| a.mirror.cmp(&b.mirror))
        });
        RouteReport { endpoints }
    }
}

fn endpoint_report(
    rt: &RouteTally,
    mirror: &str,
    endpoint: &str,
    stats: &EndpointStats,
    thresholds: &NoiseThresholds,
) -> EndpointReport {
    let secondary = rt.secondary.get(endpoint);
    let secondary_compared = secondary.map_or(0, |s| s.compared);
    let mut fields: Vec<FieldReport> = stats
        .fields
        .counts
        .iter()
        .map(|(path, &different)| {
            let noise_count = secondary.and_then(|s| s.fields.get(path)).unwrap_or(0);
            let noise = is_noise(
                Rate::new(different, stats.compared),
                secondary.map(|s| Rate::new(noise_count, s.compared)),
                thresholds,
            );
            FieldReport {
                path: path.clone(),
                different,
                noise_count,
                noise,
            }
        })
        .collect();
    if stats.fields.other > 0 {
        fields.push(FieldReport {
            path: OTHER_FIELD.into(),
            different: stats.fields.other,
            noise_count: secondary.map_or(0, |s| s.fields.other),
            noise: false,
        });
    }
    fields.sort_by(|a, b| {
        b.different
            .cmp(&a.different)
            .then_with(|| a.path.cmp(&b.path))
    });
    EndpointReport {
        endpoint: endpoint.to_owned(),
        kind: endpoint
            .starts_with(EGRESS_PREFIX)
            .then(|| "egress".to_owned()),
        mirror: mirror.to_owned(),
        compared: stats.compared,
        equal: stats.equal,
        different: stats.different,
        noise_only: stats.noise_only,
        truncated: stats.truncated,
        secondary_compared,
        fields,
    }
}

impl Tally {
    /// Totals per route and mirror, sorted.
    pub fn totals(&self) -> Vec<Totals> {
        self.routes
            .keys()
            .flat_map(|r| self.route_totals(r))
            .collect()
    }

    /// Totals per mirror of one route, sorted by mirror.
    pub fn route_totals(&self, route: &str) -> Vec<Totals> {
        let Some(rt) = self.routes.get(route) else {
            return Vec::new();
        };
        rt.mirrors
            .iter()
            .map(|(mirror, eps)| {
                let mut t = Totals {
                    route: route.to_owned(),
                    mirror: mirror.clone(),
                    ..Totals::default()
                };
                for s in eps.values() {
                    t.compared = t.compared.saturating_add(s.compared);
                    t.equal = t.equal.saturating_add(s.equal);
                    t.different = t.different.saturating_add(s.different);
                    t.noise_only = t.noise_only.saturating_add(s.noise_only);
                    t.truncated = t.truncated.saturating_add(s.truncated);
                }
                t
            })
            .collect()
    }

    /// Removes examples kept before `before` (seconds since the Unix
    /// epoch), making room for fresh ones; returns how many went.
    pub fn expire_examples(&mut self, before: u64) -> usize {
        let mut removed = 0;
        for rt in self.routes.values_mut() {
            for endpoints in rt.mirrors.values_mut() {
                for stats in endpoints.values_mut() {
                    let n = stats.examples.len();
                    stats.examples.retain(|e| e.at >= before);
                    removed += n - stats.examples.len();
                }
            }
        }
        removed
    }

    /// The examples kept for one endpoint of one mirror.
    pub fn examples(&self, route: &str, mirror: &str, endpoint: &str) -> &[Example] {
        self.routes
            .get(route)
            .and_then(|rt| rt.mirrors.get(mirror))
            .and_then(|eps| eps.get(endpoint))
            .map_or(&[], |s| s.examples.as_slice())
    }

    /// Everything, as plain data (sorted, so equal tallies export equal).
    pub fn export(&self) -> TallyState {
        let mut state = TallyState::default();
        for (route, rt) in &self.routes {
            for (mirror, eps) in &rt.mirrors {
                for (endpoint, s) in eps {
                    state.shadow.push(EndpointTallyState {
                        route: route.clone(),
                        mirror: mirror.clone(),
                        endpoint: endpoint.clone(),
                        compared: s.compared,
                        equal: s.equal,
                        different: s.different,
                        noise_only: s.noise_only,
                        truncated: s.truncated,
                        fields: s.fields.export(),
                        examples: s.examples.clone(),
                    });
                }
            }
            for (endpoint, s) in &rt.secondary {
                state.secondary.push(SecondaryState {
                    route: route.clone(),
                    endpoint: endpoint.clone(),
                    compared: s.compared,
                    fields: s.fields.export(),
                });
            }
        }
        state
    }

    /// This tally with other tallies' exported states added (a fleet's
    /// replicas): counts summed, examples bounded per endpoint as when
    /// recording; this tally's thresholds and redaction kept.
    pub fn merged_with(&self, others: impl IntoIterator<Item = TallyState>) -> Tally {
        let mut state = self.export();
        for o in others {
            state.shadow.extend(o.shadow);
            state.secondary.extend(o.secondary);
        }
        let mut merged = Tally::restore(state, self.limits, self.thresholds);
        merged.route_thresholds = self.route_thresholds.clone();
        merged.redactor = self.redactor.clone();
        merged
    }

    /// Rebuilds a tally from [`Tally::export`]ed data, applying `limits`
    /// (excess endpoints, fields and examples are folded or dropped as when
    /// recording). Repeated entries are added up.
    pub fn restore(state: TallyState, limits: TallyLimits, thresholds: NoiseThresholds) -> Tally {
        let mut tally = Tally::new(limits, thresholds);
        for e in state.shadow {
            let rt = tally.routes.entry(e.route).or_default();
            let endpoints = rt.mirrors.entry(e.mirror).or_default();
            let endpoint = capped(endpoints, &e.endpoint, limits.max_endpoints).to_owned();
            let s = endpoints.entry(endpoint).or_default();
            s.compared = s.compared.saturating_add(e.compared);
            s.equal = s.equal.saturating_add(e.equal);
            s.different = s.different.saturating_add(e.different);
            s.noise_only = s.noise_only.saturating_add(e.noise_only);
            s.truncated = s.truncated.saturating_add(e.truncated);
            for f in &e.fields {
                s.fields.add(&f.path, f.count, limits.max_fields);
            }
            for mut ex in e.examples {
                if s.examples.len() >= limits.max_examples {
                    break;
                }
                // Examples stored before redaction existed get it now.
                ex.redact(&tally.redactor);
                s.examples.push(ex);
            }
        }
        for e in state.secondary {
            let rt = tally.routes.entry(e.route).or_default();
            let endpoint = capped(&rt.secondary, &e.endpoint, limits.max_endpoints).to_owned();
            let s = rt.secondary.entry(endpoint).or_default();
            s.compared = s.compared.saturating_add(e.compared);
            for f in &e.fields {
                s.fields.add(&f.path, f.count, limits.max_fields);
            }
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{BodyMode, Captured, DiffKind, ExampleLimits, ExampleRequest};
    use bytes::Bytes;
    use http::{HeaderMap, Method};
    use std::cell::Cell;

    fn outcome(paths: &[&str]) -> Outcome {
        Outcome {
            differences: paths
                .iter()
                .map(|p| Difference {
                    path: p.to_string(),
                    kind: DiffKind::ValueChanged,
                    primary: Some("1".into()),
                    other: Some("2".into()),
                })
                .collect(),
            differences_cut: false,
            truncated: false,
            body: BodyMode::Json,
            notes: Vec::new(),
        }
    }

    fn no_example() -> Example {
        Example::default()
    }

    #[test]
    fn classification_without_secondary() {
        let mut t = Tally::default();
        assert_eq!(
            t.record_shadow("api", "v2", "GET /a", &outcome(&[]), no_example),
            PairVerdict::Equal
        );
        assert_eq!(
            t.record_shadow("api", "v2", "GET /a", &outcome(&["$.x"]), no_example),
            PairVerdict::Different
        );
        let mut truncated = outcome(&[]);
        truncated.truncated = true;
        assert_eq!(
            t.record_shadow("api", "v2", "GET /a", &truncated, no_example),
            PairVerdict::Equal
        );
        let report = t.route_report("api");
        assert_eq!(
            report,
            RouteReport {
                endpoints: vec![EndpointReport {
                    endpoint: "GET /a".into(),
                    kind: None,
                    mirror: "v2".into(),
                    compared: 3,
                    equal: 2,
                    different: 1,
                    noise_only: 0,
                    truncated: 1,
                    secondary_compared: 0,
                    fields: vec![FieldReport {
                        path: "$.x".into(),
                        different: 1,
                        noise_count: 0,
                        noise: false
                    }],
                }]
            }
        );
        assert_eq!(t.route_report("nope"), RouteReport::default());
    }

    #[test]
    fn classification_with_secondary_noise() {
        let mut t = Tally::default();
        // The secondary differs at $.ts every time, never at $.price.
        for _ in 0..20 {
            t.record_secondary("api", "GET /a", &outcome(&["$.ts"]));
        }
        assert_eq!(
            t.record_shadow("api", "v2", "GET /a", &outcome(&["$.ts"]), no_example),
            PairVerdict::NoiseOnly
        );
        assert_eq!(
            t.record_shadow(
                "api",
                "v2",
                "GET /a",
                &outcome(&["$.ts", "$.price"]),
                no_example
            ),
            PairVerdict::Different
        );
        // Noise on another endpoint does not help this one.
        assert_eq!(
            t.record_shadow("api", "v2", "GET /b", &outcome(&["$.ts"]), no_example),
            PairVerdict::Different
        );
        let report = t.route_report("api");
        let a = &report.endpoints[0];
        assert_eq!(
            (a.compared, a.different, a.noise_only, a.secondary_compared),
            (2, 1, 1, 20)
        );
        assert_eq!(
            a.fields,
            vec![
                FieldReport {
                    path: "$.ts".into(),
                    different: 2,
                    noise_count: 20,
                    noise: true
                },
                FieldReport {
                    path: "$.price".into(),
                    different: 1,
                    noise_count: 0,
                    noise: false
                },
            ]
        );
    }

    #[test]
    fn too_little_secondary_data_is_treated_as_real() {
        let mut t = Tally::new(
            TallyLimits::default(),
            NoiseThresholds {
                min_secondary: 5,
                ..NoiseThresholds::default()
            },
        );
        for _ in 0..4 {
            t.record_secondary("api", "GET /a", &outcome(&["$.ts"]));
        }
        assert_eq!(
            t.record_shadow("api", "v2", "GET /a", &outcome(&["$.ts"]), no_example),
            PairVerdict::Different
        );
        t.record_secondary("api", "GET /a", &outcome(&["$.ts"]));
        assert_eq!(
            t.record_shadow("api", "v2", "GET /a", &outcome(&["$.ts"]), no_example),
            PairVerdict::NoiseOnly
        );
    }

    #[test]
    fn shadow_clearly_above_noise_is_real() {
        let mut t = Tally::default();
        // Secondary: $.n differs in 1 of 10.
        for i in 0..10 {
            let o = if i == 0 {
                outcome(&["$.n"])
            } else {
                outcome(&[])
            };
            t.record_secondary("api", "GET /a", &o);
        }
        // Shadow: $.n differs every time: 100 % vs 10 % → real.
        assert_eq!(
            t.record_shadow("api", "v2", "GET /a", &outcome(&["$.n"]), no_example),
            PairVerdict::Different
        );
    }

    #[test]
    fn array_indices_fold_and_count_once() {
        let mut t = Tally::default();
        t.record_shadow(
            "api",
            "v2",
            "GET /a",
            &outcome(&["$.items[0].p", "$.items[7].p", "$.items[3].q"]),
            no_example,
        );
        let fields: Vec<(String, u64)> = t.route_report("api").endpoints[0]
            .fields
            .iter()
            .map(|f| (f.path.clone(), f.different))
            .collect();
        assert_eq!(
            fields,
            vec![("$.items[*].p".into(), 1), ("$.items[*].q".into(), 1)]
        );
    }

    #[test]
    fn old_examples_expire_and_make_room() {
        let mut t = Tally::new(
            TallyLimits {
                max_examples: 2,
                ..TallyLimits::default()
            },
            NoiseThresholds::default(),
        );
        let aged = |at: u64| {
            move || Example {
                at,
                ..Example::default()
            }
        };
        t.record_shadow("api", "v2", "GET /a", &outcome(&["$.a"]), aged(100));
        t.record_shadow("api", "v2", "GET /a", &outcome(&["$.a"]), aged(200));
        t.record_shadow("api", "v2", "GET /a", &outcome(&["$.a"]), aged(300));
        assert_eq!(
            t.examples("api", "v2", "GET /a")
                .iter()
                .map(|e| e.at)
                .collect::<Vec<_>>(),
            vec![100, 200]
        );
        assert_eq!(t.expire_examples(150), 1);
        t.record_shadow("api", "v2", "GET /a", &outcome(&["$.a"]), aged(400));
        assert_eq!(
            t.examples("api", "v2", "GET /a")
                .iter()
                .map(|e| e.at)
                .collect::<Vec<_>>(),
            vec![200, 400]
        );
    }

    #[test]
    fn bounds_fields_examples_endpoints() {
        let limits = TallyLimits {
            max_endpoints: 2,
            max_fields: 2,
            max_examples: 2,
        };
        let mut t = Tally::new(limits, NoiseThresholds::default());
        let calls = Cell::new(0);
        let example = || {
            calls.set(calls.get() + 1);
            Example {
                differences: vec![],
                ..Example::default()
            }
        };
        for _ in 0..5 {
            t.record_shadow(
                "api",
                "v2",
                "GET /a",
                &outcome(&["$.a", "$.b", "$.c", "$.d"]),
                example,
            );
        }
        assert_eq!(
            calls.get(),
            2,
            "examples are built only while there is room"
        );
        assert_eq!(t.examples("api", "v2", "GET /a").len(), 2);
        // Equal outcomes never build an example.
        t.record_shadow("api", "v2", "GET /a", &outcome(&[]), example);
        assert_eq!(calls.get(), 2);
        let r = t.route_report("api");
        let fields: Vec<(String, u64)> = r.endpoints[0]
            .fields
            .iter()
            .map(|f| (f.path.clone(), f.different))
            .collect();
        assert_eq!(
            fields,
            vec![("(other)".into(), 10), ("$.a".into(), 5), ("$.b".into(), 5)]
        );
        t.record_shadow("api", "v2", "GET /b", &outcome(&[]), no_example);
        t.record_shadow("api", "v2", "GET /c", &outcome(&[]), no_example);
        t.record_shadow("api", "v2", "GET /d", &outcome(&[]), no_example);
        t.record_shadow("api", "v3", "GET /c", &outcome(&[]), no_example);
        let names: Vec<(String, String, u64)> = t
            .route_report("api")
            .endpoints
            .iter()
            .map(|e| (e.endpoint.clone(), e.mirror.clone(), e.compared))
            .collect();
        assert_eq!(
            names,
            vec![
                ("(other)".into(), "v2".into(), 2),
                ("GET /a".into(), "v2".into(), 6),
                ("GET /b".into(), "v2".into(), 1),
                ("GET /c".into(), "v3".into(), 1),
            ]
        );
        for i in 0..10 {
            t.record_secondary("api", &format!("GET /{i}"), &outcome(&[]));
        }
        assert_eq!(t.export().secondary.len(), 3);
    }

    #[test]
    fn totals_per_route_and_mirror() {
        let mut t = Tally::default();
        t.record_shadow("api", "v2", "GET /a", &outcome(&[]), no_example);
        t.record_shadow("api", "v2", "GET /b", &outcome(&["$.x"]), no_example);
        t.record_shadow("api", "v3", "GET /a", &outcome(&["$.x"]), no_example);
        t.record_shadow("web", "v2", "GET /", &outcome(&[]), no_example);
        assert_eq!(
            t.totals(),
            vec![
                Totals {
                    route: "api".into(),
                    mirror: "v2".into(),
                    compared: 2,
                    equal: 1,
                    different: 1,
                    noise_only: 0,
                    truncated: 0
                },
                Totals {
                    route: "api".into(),
                    mirror: "v3".into(),
                    compared: 1,
                    equal: 0,
                    different: 1,
                    noise_only: 0,
                    truncated: 0
                },
                Totals {
                    route: "web".into(),
                    mirror: "v2".into(),
                    compared: 1,
                    equal: 1,
                    different: 0,
                    noise_only: 0,
                    truncated: 0
                },
            ]
        );
        assert_eq!(t.route_totals("web").len(), 1);
        assert_eq!(t.routes().collect::<Vec<_>>(), vec!["api", "web"]);
        t.clear_route("web");
        assert_eq!(t.routes().collect::<Vec<_>>(), vec!["api"]);
    }

    #[test]
    fn report_json_shape() {
        let mut t = Tally::default();
        t.record_shadow(
            "api",
            "v2",
            "GET /items/{id}",
            &outcome(&["$.price"]),
            no_example,
        );
        let json = serde_json::to_value(t.route_report("api")).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"endpoints": [{
                "endpoint": "GET /items/{id}",
                "mirror": "v2",
                "compared": 1,
                "equal": 0,
                "different": 1,
                "noise_only": 0,
                "truncated": 0,
                "secondary_compared": 0,
                "fields": [{"path": "$.price", "different": 1, "noise_count": 0, "noise": false}]
            }]})
        );
        // The minimum contract parses back.
        let minimal = r#"{"endpoints":[{"endpoint":"GET /","mirror":"v2","compared":3,"different":1,
            "fields":[{"path":"$.a","different":1,"noise":false}]}]}"#;
        let parsed: RouteReport = serde_json::from_str(minimal).expect("parse");
        assert_eq!(parsed.endpoints[0].compared, 3);
        assert_eq!(parsed.endpoints[0].fields[0].path, "$.a");
    }

    #[test]
    fn merging_replicas_adds_counts_and_bounds_examples() {
        let example = || Example {
            request: ExampleRequest {
                method: "GET".into(),
                uri: "/a".into(),
                headers: vec![],
            },
            ..Example::default()
        };
        let limits = TallyLimits {
            max_examples: 2,
            ..TallyLimits::default()
        };
        let replica = |n: usize| {
            let mut t = Tally::new(limits, NoiseThresholds::default());
            for _ in 0..n {
                t.record_shadow("api", "v2", "GET /a", &outcome(&["$.x"]), example);
            }
            t
        };
        let (a, b, c) = (replica(3), replica(4), replica(5));
        let merged = a.merged_with([b.export(), c.export()]);
        let report = merged.route_report("api");
        let before = a.route_report("api");
        assert_eq!(
            serde_json::to_value(&report).unwrap()["endpoints"][0]["compared"],
            12
        );
        assert_eq!(
            serde_json::to_value(&before).unwrap()["endpoints"][0]["compared"],
            3
        );
        assert_eq!(merged.examples("api", "v2", "GET /a").len(), 2);
    }

    #[test]
    fn export_restore_round_trip() {
        let mut t = Tally::default();
        for _ in 0..12 {
            t.record_secondary("api", "GET /a", &outcome(&["$.ts"]));
        }
        t.record_shadow("api", "v2", "GET /a", &outcome(&["$.ts"]), no_example);
        t.record_shadow("api", "v2", "GET /a", &outcome(&["$.x"]), || Example {
            request: ExampleRequest {
                method: "GET".into(),
                uri: "/a".into(),
                headers: vec![],
            },
            ..Example::default()
        });
        let state = t.export();
        let json = serde_json::to_string(&state).expect("serialize");
        let back: TallyState = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, state);
        let restored = Tally::restore(back, *t.limits(), *t.thresholds());
        assert_eq!(restored.route_report("api"), t.route_report("api"));
        assert_eq!(restored.export(), state);
        assert_eq!(restored.examples("api", "v2", "GET /a").len(), 1);

        // Restoring under smaller limits folds the excess.
        let small = TallyLimits {
            max_endpoints: 1,
            max_fields: 1,
            max_examples: 0,
        };
        let mut state = t.export();
        state.shadow.push(EndpointTallyState {
            route: "api".into(),
            mirror: "v2".into(),
            endpoint: "GET /z".into(),
            compared: 4,
            ..EndpointTallyState::default()
        });
        let r = Tally::restore(state, small, NoiseThresholds::default());
        let report = r.route_report("api");
        assert_eq!(report.endpoints.len(), 2);
        assert_eq!(report.endpoints[0].endpoint, "(other)");
        assert_eq!(report.endpoints[0].compared, 4);
        let a = &report.endpoints[1];
        assert_eq!(
            a.fields.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            vec!["$.ts", "(other)"]
        );
        assert!(r.examples("api", "v2", "GET /a").is_empty());
    }

    #[test]
    fn examples_are_bounded_and_redacted() {
        let mut req = HeaderMap::new();
        req.insert("authorization", "Bearer secret".parse().expect("value"));
        req.insert("accept", "application/json".parse().expect("value"));
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/plain".parse().expect("value"));
        h.insert("set-cookie", "sid=secret".parse().expect("value"));
        let primary = Captured {
            status: 200,
            headers: h.clone(),
            body: Bytes::from(vec![b'a'; 10_000]),
            truncated: false,
        };
        let other = Captured {
            status: 500,
            headers: h,
            body: Bytes::from_static(b"short"),
            truncated: false,
        };
        let out = outcome(&["status"]);
        let ex = Example::new(
            &Method::POST,
            "/x?y=1",
            &req,
            &primary,
            &other,
            &out,
            &ExampleLimits::default(),
        );
        assert_eq!(ex.request.method, "POST");
        assert_eq!(ex.request.uri, "/x?y=1");
        let auth = ex
            .request
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .expect("kept");
        assert_eq!(auth.1, "<redacted>");
        let cookie = ex
            .primary
            .headers
            .iter()
            .find(|(k, _)| k == "set-cookie")
            .expect("kept");
        assert_eq!(cookie.1, "<redacted>");
        assert_eq!(ex.primary.body.len(), 4096);
        assert!(ex.primary.body_truncated);
        assert_eq!(ex.primary.body_bytes, 10_000);
        assert_eq!(ex.other.body, "short");
        assert!(!ex.other.body_truncated);
        assert_eq!(ex.other.status, 500);
        assert_eq!(ex.differences.len(), 1);
    }
}
