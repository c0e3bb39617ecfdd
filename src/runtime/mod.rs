//! The live state built from a validated `Config`: routes with their
//! backends and mirrors, ready for the request path. A reload builds a new
//! `Runtime` and swaps it in atomically; requests in flight keep the one
//! they started with. Backends whose settings did not change are carried
//! over, so their connection pools and health survive a reload.
//!
//! `switch`: the promotion switches (who answers a route's traffic) that a
//! build applies; `promote` decides them, the runtime only applies them.

pub mod switch;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::compare::{Engine, RouteComparison};
use crate::config::{Config, MirrorConfig, RouteConfig, RouteMatch};
use crate::memory::MemoryBudget;
use crate::mirror::bound::MirrorBounds;
pub use crate::mirror::{Mirror, RouteShadows};
use crate::telemetry::{Metrics, Role, TargetMetrics};
use crate::upstream::Backend;
use switch::Book;

/// Everything the request path needs, for one configuration generation.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: Vec<Route>,
    pub backends: HashMap<String, Arc<Backend>>,
    /// The byte budget for shadow traffic; the same across generations.
    pub memory: Arc<MemoryBudget>,
    /// The in-flight bound of every mirror; the same across generations.
    pub bounds: Arc<MirrorBounds>,
}

/// A route ready to serve.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub primary: Arc<Backend>,
    pub primary_metrics: Arc<TargetMetrics>,
    /// Weighted answerers (backend, cumulative weight), when the route splits traffic.
    pub split: Vec<(Arc<Backend>, Arc<TargetMetrics>, u32)>,
    pub mirrors: Vec<Arc<Mirror>>,
    /// Comparison rules and endpoints, when a mirror compares.
    pub comparison: Option<Arc<RouteComparison>>,
    /// The secondary (noise learning), when configured.
    pub secondary: Option<Arc<Mirror>>,
    /// The route as it serves now (switches applied).
    pub config: RouteConfig,
    /// The byte budget for shadow traffic (the primary's capture is
    /// reserved from it).
    pub memory: Arc<MemoryBudget>,
}

impl Route {
    /// What the mirrors' admission needs of this route.
    pub fn shadows(&self) -> RouteShadows<'_> {
        RouteShadows {
            mirrors: &self.mirrors,
            secondary: self.secondary.as_ref(),
            splits: !self.split.is_empty(),
        }
    }
}

impl Runtime {
    /// Builds the runtime for `config` with `book`'s switches applied,
    /// reusing unchanged backends of `previous`.
    pub fn build(
        config: Config,
        book: &Book,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
    ) -> Runtime {
        let mut backends: HashMap<String, Arc<Backend>> = HashMap::new();
        for (name, bc) in &config.backends {
            let reused = previous
                .and_then(|p| p.backends.get(name))
                .filter(|b| b.config == *bc)
                .cloned();
            backends.insert(
                name.clone(),
                reused.unwrap_or_else(|| Arc::new(Backend::new(bc.clone()))),
            );
        }
        // One budget and one set of in-flight bounds for the process:
        // copies of older generations count against the new limits.
        let memory = match previous {
            Some(p) => {
                p.memory.set_limit(config.limits.shadow_memory);
                p.memory.clone()
            }
            None => MemoryBudget::new(
                config.limits.shadow_memory,
                Some(metrics.shadow_memory.clone()),
            ),
        };
        let bounds = previous.map(|p| p.bounds.clone()).unwrap_or_default();
        let shadow = Shadow {
            memory: &memory,
            bounds: &bounds,
        };
        let routes = book
            .effective_routes(&config)
            .into_iter()
            .map(|r| build_route(r, &backends, metrics, &shadow))
            .collect();
        Runtime {
            config: Arc::new(config),
            routes,
            backends,
            memory,
            bounds,
        }
    }

    /// The first route whose conditions all hold (`query`: the request's
    /// query string, without `?`).
    pub fn select(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.routes.iter().find(|r| {
            matches(&r.matcher, host, path, method, headers) && query_matches(&r.matcher, query)
        })
    }
}

/// What mirrors share across generations.
struct Shadow<'a> {
    memory: &'a Arc<MemoryBudget>,
    bounds: &'a MirrorBounds,
}

fn build_route(
    r: RouteConfig,
    backends: &HashMap<String, Arc<Backend>>,
    metrics: &Arc<Metrics>,
    shadow: &Shadow<'_>,
) -> Route {
    let name: Arc<str> = Arc::from(r.name.as_str());
    let primary = backends[&r.backend].clone();
    let mut cumulative = 0;
    let split = r
        .split
        .iter()
        .map(|(backend, weight)| {
            cumulative += weight;
            (
                backends[backend].clone(),
                Arc::new(metrics.target(&r.name, backend, Role::primary)),
                cumulative,
            )
        })
        .collect();
    let make_mirror = |m: &MirrorConfig, role: Role| {
        let target = metrics.target(&r.name, &m.backend, role);
        crate::telemetry::Telemetry::init_mirror_series(metrics, &target);
        Arc::new(Mirror {
            route: name.clone(),
            config: m.clone(),
            backend: backends[&m.backend].clone(),
            metrics: target,
            in_flight: shadow
                .bounds
                .get(&r.name, &m.backend, role, m.max_in_flight),
            memory: shadow.memory.clone(),
        })
    };
    let mirrors: Vec<Arc<Mirror>> = r
        .mirrors
        .iter()
        .map(|m| make_mirror(m, Role::mirror))
        .collect();
    let first_compared = r.mirrors.iter().find(|m| m.compare);
    let comparison = first_compared
        .and_then(|_| RouteComparison::new(&r.name, &r.compare))
        .map(Arc::new);
    // The secondary is sent what the compared mirrors are sent, with the
    // same bounds, and never answers clients.
    let secondary = match (&r.secondary, first_compared) {
        (Some(backend), Some(template)) => {
            let mut cfg = template.clone();
            cfg.backend = backend.clone();
            cfg.percent = 100.0;
            cfg.methods = None;
            Some(make_mirror(&cfg, Role::secondary))
        }
        _ => None,
    };
    Route {
        comparison,
        secondary,
        primary_metrics: Arc::new(metrics.target(&r.name, &r.backend, Role::primary)),
        name,
        matcher: r.matcher.clone(),
        primary,
        split,
        mirrors,
        config: r,
        memory: shadow.memory.clone(),
    }
}

impl Route {
    /// The backend that answers this request: the primary, or a weighted pick.
    pub fn answerer(&self) -> (&Arc<Backend>, &Arc<TargetMetrics>) {
        match self.split.last() {
            Some((_, _, total)) if *total > 0 => {
                let point = fastrand::u32(0..*total);
                self.split
                    .iter()
                    .find(|(_, _, upto)| point < *upto)
                    .map(|(b, m, _)| (b, m))
                    .unwrap_or((&self.primary, &self.primary_metrics))
            }
            _ => (&self.primary, &self.primary_metrics),
        }
    }
}

/// Whether a request meets every condition of `m` (see
/// `RouteMatch::matches`; the egress matches its services with it too).
pub fn matches(
    m: &RouteMatch,
    host: &str,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> bool {
    m.matches(host, path, method, headers)
}

/// Whether the query string meets every query condition of `m` (see
/// `RouteMatch::query_matches`).
pub fn query_matches(m: &RouteMatch, query: Option<&str>) -> bool {
    m.query_matches(query)
}

/// Gives the tally each route's noise thresholds (`routes[].noise`) and
/// what to redact (`redact`).
fn use_route_noise(engine: &Engine, config: &Config) {
    let mut tally = engine.tally.lock();
    tally.set_route_thresholds(
        config
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.compare.noise)),
    );
    tally.set_redactor(config.redact.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml;

    fn runtime(yaml: &str) -> Runtime {
        let c = from_yaml("test.yaml", yaml).unwrap();
        Runtime::build(c, &Book::default(), None, &Arc::new(Metrics::new()))
    }

    #[test]
    fn route_selection_table() {
        let rt = runtime(
            r#"
backends: { a: { endpoints: ["127.0.0.1:1"] } }
routes:
  - { name: exact, match: { host: my-app.local, path_exact: /exact }, backend: a }
  - { name: wild, match: { host: "*.example.com", path_prefix: /api }, backend: a }
  - { name: regex, match: { path_regex: "/items/[0-9]+" }, backend: a }
  - { name: method, match: { method: POST, headers: { x-env: { regex: "can.*" } } }, backend: a }
  - { name: header, match: { headers: { x-env: prod } }, backend: a }
"#,
        );
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        let cases: &[(&str, &str, Method, HeaderMap, Option<&str>)] = &[
            ("my-app.local", "/exact", Method::GET, h(&[]), Some("exact")),
            ("MY-APP.local", "/exact", Method::GET, h(&[]), Some("exact")),
            ("my-app.local", "/exact/x", Method::GET, h(&[]), None),
            ("a.example.com", "/api", Method::GET, h(&[]), Some("wild")),
            (
                "a.b.example.com",
                "/api/v1",
                Method::GET,
                h(&[]),
                Some("wild"),
            ),
            ("a.example.com", "/apix", Method::GET, h(&[]), None),
            ("example.com", "/api", Method::GET, h(&[]), None),
            ("x", "/items/42", Method::GET, h(&[]), Some("regex")),
            ("x", "/items/42/more", Method::GET, h(&[]), None),
            (
                "x",
                "/",
                Method::POST,
                h(&[("x-env", "canary")]),
                Some("method"),
            ),
            ("x", "/", Method::GET, h(&[("x-env", "canary")]), None),
            (
                "x",
                "/",
                Method::GET,
                h(&[("x-env", "prod")]),
                Some("header"),
            ),
        ];
        for (host, path, method, headers, want) in cases {
            let got = rt
                .select(host, path, None, method, headers)
                .map(|r| &*r.name);
            assert_eq!(got, *want, "{host} {method} {path} {headers:?}");
        }
    }

    #[test]
    fn query_parameters_select_routes() {
        let rt = runtime(
            r#"
backends: { a: { endpoints: ["127.0.0.1:1"] } }
routes:
  - { name: exact, match: { query_params: { v: "2", u: { regex: "[0-9]+" } } }, backend: a }
  - { name: flag, match: { query_params: { debug: "" } }, backend: a }
  - { name: rest, backend: a }
"#,
        );
        let h = HeaderMap::new();
        let cases: &[(Option<&str>, &str)] = &[
            (Some("v=2&u=17"), "exact"),
            (Some("u=17&x=1&v=2"), "exact"),
            (Some("v=1&v=2&u=3"), "exact"),
            (Some("v=2&u=x"), "rest"),
            (Some("v=2"), "rest"),
            (Some("V=2&u=1"), "rest"),
            (Some("debug"), "flag"),
            (Some("debug="), "flag"),
            (Some("debugx"), "rest"),
            (None, "rest"),
        ];
        for (query, want) in cases {
            let got = rt
                .select("x", "/", *query, &Method::GET, &h)
                .map(|r| &*r.name);
            assert_eq!(got, Some(*want), "{query:?}");
        }
    }

    #[test]
    fn unchanged_backends_are_reused_on_reload() {
        let yaml = r#"
backends:
  a: { endpoints: ["127.0.0.1:1"] }
  b: { endpoints: ["127.0.0.1:2"] }
routes: [{ name: r, backend: a }]
"#;
        let metrics = Arc::new(Metrics::new());
        let first = Runtime::build(
            from_yaml("t", yaml).unwrap(),
            &Book::default(),
            None,
            &metrics,
        );
        let changed = yaml.replace("127.0.0.1:2", "127.0.0.1:3");
        let second = Runtime::build(
            from_yaml("t", &changed).unwrap(),
            &Book::default(),
            Some(&first),
            &metrics,
        );
        assert!(Arc::ptr_eq(&first.backends["a"], &second.backends["a"]));
        assert!(!Arc::ptr_eq(&first.backends["b"], &second.backends["b"]));
    }
}

/// State shared by listeners, the admin server and the reloader.
#[derive(Debug)]
pub struct Shared {
    /// The current generation; swapped whole on reload.
    pub runtime: arc_swap::ArcSwap<Runtime>,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Set once every listener is bound.
    pub ready: std::sync::atomic::AtomicBool,
    /// Results and promotion state that survive a restart.
    pub store: Arc<crate::store::Store>,
    /// Promotions in force; applied whenever a runtime is built.
    pub book: parking_lot::Mutex<Book>,
    /// Comparison workers and results.
    pub comparison: Arc<Engine>,
    /// The configuration the process started with: what the settings that
    /// change only on restart (addresses, token, store, comparison workers)
    /// still are.
    pub started: Arc<Config>,
    /// Keys whose new values a reload read but that need a restart (empty
    /// when the running process matches its files).
    pub restart_pending: parking_lot::Mutex<Vec<String>>,
    /// Held while a reload reads and applies files, so two never interleave.
    pub reloading: parking_lot::Mutex<()>,
    /// The egress proxy (`egress:`), built at start; changes only on restart.
    pub egress: Option<Arc<crate::egress::Egress>>,
    /// The writer of the routes' `record:` files.
    pub recorder: Arc<crate::record::Recorder>,
    /// With a shared store: the other live replicas' window summaries,
    /// merged, by `promote::fleet::window_key` (empty otherwise).
    pub fleet_windows: parking_lot::Mutex<
        std::collections::HashMap<String, crate::telemetry::window::WindowSummary>,
    >,
}

impl Shared {
    /// Builds the first runtime for `config` and the shared state around it.
    pub fn new(
        config: Config,
        book: Book,
        telemetry: Arc<crate::telemetry::Telemetry>,
        store: Arc<crate::store::Store>,
    ) -> Arc<Self> {
        let started = Arc::new(config.clone());
        let runtime = Runtime::build(config, &book, None, &telemetry.metrics);
        telemetry
            .metrics
            .keep_routes(route_backends(&runtime.config));
        let comparison = Engine::start(
            &runtime.config.comparison,
            telemetry.metrics.clone(),
            &store,
            &runtime.memory,
        );
        use_route_noise(&comparison, &runtime.config);
        let egress =
            crate::egress::Egress::new(&runtime.config, telemetry.clone(), comparison.clone());
        let recorder = crate::record::Recorder::start(telemetry.metrics.clone());
        Arc::new(Shared {
            recorder,
            egress,
            comparison,
            runtime: arc_swap::ArcSwap::from_pointee(runtime),
            telemetry,
            ready: std::sync::atomic::AtomicBool::new(false),
            store,
            book: parking_lot::Mutex::new(book),
            started,
            restart_pending: parking_lot::Mutex::new(Vec::new()),
            reloading: parking_lot::Mutex::new(()),
            fleet_windows: parking_lot::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Builds a runtime for `config` and swaps it in; in-flight requests
    /// finish on the generation they started with.
    pub fn apply(&self, config: Config) {
        let book = self.book.lock();
        let previous = self.runtime.load_full();
        let next = Runtime::build(config, &book, Some(&previous), &self.telemetry.metrics);
        use_route_noise(&self.comparison, &next.config);
        let next = Arc::new(next);
        self.runtime.store(next.clone());
        // After the swap: a request still on the previous runtime may
        // make a removed route's series again, which the next scrape
        // removes.
        self.telemetry
            .metrics
            .keep_routes(route_backends(&next.config));
    }

    /// Rebuilds the runtime from the current configuration, e.g. after a
    /// switch changed. The book lock is held across build and swap, so two
    /// switches cannot interleave.
    pub fn rebuild(&self) {
        let config = self.runtime.load().config.as_ref().clone();
        self.apply(config);
    }
}

/// The routes `config` serves, each with the backends it names: its
/// primary, its split's shares, its mirrors (a promotion's candidate is
/// one) and its secondary.
fn route_backends(config: &Config) -> impl Iterator<Item = (&str, Vec<&str>)> {
    config.routes.iter().map(|r| {
        let backends = std::iter::once(r.backend.as_str())
            .chain(r.split.iter().map(|(b, _)| b.as_str()))
            .chain(r.mirrors.iter().map(|m| m.backend.as_str()))
            .chain(r.secondary.as_deref())
            .collect();
        (r.name.as_str(), backends)
    })
}
