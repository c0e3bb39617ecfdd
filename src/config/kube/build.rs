//! From rules to native config: resolve destinations to backends (through
//! `services:`, DestinationRule subsets and `Service` ports, or cluster DNS),
//! then write one native route per host and match entry, in an order that
//! keeps the precedence Istio and the Gateway API define.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::error::ConfigError;
use crate::config::raw::{
    RawBackend, RawConfig, RawMatch, RawMirror, RawRewrite, RawRoute, RawService, RawSplit,
};
use crate::config::units::{parse_go_duration, DurationError};

use super::model::{Dest, Family, PathRewriteSpec, Rule, RuleRewrite};
use super::node::{join, Cx};

/// Cluster DNS suffix of Kubernetes services.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// What a destination host names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A Kubernetes service.
    Kube { name: String, namespace: String },
    /// Any other host (only usable through `services:`).
    Other(String),
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Target {
    /// Reads `name`, `name.ns`, `name.ns.svc` or `name.ns.svc.cluster.local`
    /// as a Kubernetes service (short names are relative to `namespace`).
    pub fn parse(host: &str, namespace: &str) -> Target {
        let h = host.to_ascii_lowercase();
        let labels: Vec<&str> = h.split('.').collect();
        let kube = match labels.as_slice() {
            [name] => Some((*name, namespace)),
            [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => {
                Some((*name, *ns))
            }
            _ => None,
        };
        match kube {
            Some((name, ns)) if dns_label(name) && dns_label(ns) => Target::Kube {
                name: name.to_string(),
                namespace: ns.to_string(),
            },
            _ => Target::Other(h),
        }
    }

    /// `name.namespace`, or the host itself.
    pub fn id(&self) -> String {
        match self {
            Target::Kube { name, namespace } => format!("{name}.{namespace}"),
            Target::Other(h) => h.clone(),
        }
    }

    /// `name.namespace.svc.cluster.local`, or the host itself.
    pub fn fqdn(&self) -> String {
        match self {
            Target::Kube { name, namespace } => format!("{name}.{namespace}.{CLUSTER_DOMAIN}"),
            Target::Other(h) => h.clone(),
        }
    }

    /// Every way this host may be written, shortest first.
    pub fn forms(&self) -> Vec<String> {
        match self {
            Target::Kube { name, namespace } => vec![
                name.clone(),
                format!("{name}.{namespace}"),
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.{CLUSTER_DOMAIN}"),
            ],
            Target::Other(h) => vec![h.clone()],
        }
    }
}

/// Host conditions for a host written in a VirtualService's `hosts`:
/// `*` is any host; a Kubernetes service name (`reviews`,
/// `reviews.prod.svc.cluster.local`) matches every form clients use for it;
/// anything else (`my-app.local`, `*.example.com`) is matched as written.
pub fn istio_hosts(host: &str, namespace: &str) -> Vec<Option<String>> {
    let h = host.to_ascii_lowercase();
    if h == "*" {
        return vec![None];
    }
    let service_like = !h.contains('.') || h.ends_with(".svc") || h.ends_with(".svc.cluster.local");
    if service_like {
        if let t @ Target::Kube { .. } = Target::parse(&h, namespace) {
            return t.forms().into_iter().map(Some).collect();
        }
    }
    vec![Some(h)]
}

/// Parses a duration as Kubernetes objects write them (`1h30m`, `500ms`,
/// `1.5s`): the native config's parser ([`parse_go_duration`]), with the
/// reason worded for manifests.
pub fn parse_k8s_duration(text: &str) -> Result<Duration, String> {
    parse_go_duration(text).map_err(|e| match e {
        DurationError::OutOfRange(_) => e.to_string(),
        _ => format!("`{text}` is not a duration like `10s`, `500ms` or `1m30s`"),
    })
}

/// Writes a duration the way the native config reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Where an object came from, for errors found after reading it.
#[derive(Debug, Clone)]
pub struct ObjectOrigin {
    pub file: String,
    pub label: String,
}

/// A `services:` entry and the file it was read from.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    pub file: String,
    pub service: RawService,
}

/// What the other objects say about destinations.
#[derive(Debug, Default)]
pub struct Registry {
    /// The merged native `services:` map.
    pub services: BTreeMap<String, ServiceEntry>,
    /// Ports of `Service` objects, by service.
    pub ports: BTreeMap<Target, Vec<u16>>,
    /// Subsets of DestinationRules: host → subset name → labels (for messages).
    pub subsets: BTreeMap<Target, BTreeMap<String, String>>,
}

/// Turns rules into native backends and routes.
pub struct Builder<'a> {
    registry: &'a Registry,
    origins: &'a [ObjectOrigin],
    errors: &'a mut Vec<ConfigError>,
    /// Never filled: the builder reads no manifest fields.
    ignored: Vec<String>,
    backends: BTreeMap<String, RawBackend>,
    used_services: BTreeSet<String>,
}

type SortKey = (
    (u8, Reverse<usize>, String),
    u8,
    (u8, Reverse<usize>, u8, Reverse<usize>, Reverse<usize>),
    Family,
    usize,
    usize,
    usize,
);

impl<'a> Builder<'a> {
    pub fn new(
        registry: &'a Registry,
        origins: &'a [ObjectOrigin],
        errors: &'a mut Vec<ConfigError>,
    ) -> Self {
        Builder {
            registry,
            origins,
            errors,
            ignored: Vec::new(),
            backends: BTreeMap::new(),
            used_services: BTreeSet::new(),
        }
    }

    fn cx(&mut self, origin: usize) -> Cx<'_> {
        let o = &self.origins[origin];
        Cx {
            file: o.file.clone(),
            label: o.label.clone(),
            errors: &mut *self.errors,
            ignored: &mut self.ignored,
        }
    }

    /// Builds the native config for all rules; the mirrors get
    /// `host_suffix` when one is given (`kube.host_suffix`).
    pub fn build(mut self, rules: &[Rule], host_suffix: Option<String>) -> RawConfig {
        let mut routes: Vec<(SortKey, RawRoute)> = Vec::new();
        for rule in rules {
            // Mirrors are resolved even when the primary failed, so that
            // every problem is reported at once.
            let primary = self.primary(rule);
            let mirrors: Vec<RawMirror> = rule
                .mirrors
                .iter()
                .filter_map(|m| {
                    let name = self.resolve(rule.origin, &m.dest, None, rule.grpc)?;
                    Some(RawMirror {
                        backend: name,
                        percent: m.percent,
                        sample_key: None,
                        host_suffix: host_suffix.clone(),
                        methods: None,
                        headers: None,
                        max_body_bytes: None,
                        timeout: None,
                        max_in_flight: None,
                        compare: None,
                        compare_max_body_bytes: None,
                    })
                })
                .collect();
            let Some((backend, split)) = primary else {
                continue;
            };
            if mirrors.len() != rule.mirrors.len() {
                continue;
            }
            let entries: Vec<(usize, RawMatch, Option<String>)> = if rule.matches.is_empty() {
                vec![(0, RawMatch::default(), None)]
            } else {
                rule.matches
                    .iter()
                    .map(|m| (m.index, m.raw.clone(), m.prefix.clone()))
                    .collect()
            };
            for (k, host) in rule.hosts.iter().enumerate() {
                for (j, raw, prefix) in &entries {
                    let rewrite = rule
                        .rewrite
                        .as_ref()
                        .map(|r| entry_rewrite(r, raw, prefix.as_deref()));
                    let name = if rule.hosts.len() > 1 {
                        format!("{}-{}-{}-{}", rule.base, rule.index, j, k)
                    } else {
                        format!("{}-{}-{}", rule.base, rule.index, j)
                    };
                    let mut m = raw.clone();
                    m.host = host.clone();
                    let key = sort_key(rule, host.as_deref(), &m, k, *j);
                    routes.push((
                        key,
                        RawRoute {
                            name,
                            match_: (m != RawMatch::default()).then_some(m),
                            backend: backend.clone(),
                            split: split.clone(),
                            mirrors: mirrors.clone(),
                            promotion: None,
                            compare: None,
                            secondary: None,
                            noise: None,
                            max_body_bytes: None,
                            headers: rule.headers.clone(),
                            retries: rule.retries.clone(),
                            rewrite,
                            cors: rule.cors.clone(),
                            record: None,
                        },
                    ));
                }
            }
        }
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut seen = BTreeSet::new();
        let routes = routes
            .into_iter()
            .map(|(_, mut r)| {
                if seen.contains(&r.name) {
                    let mut n = 2;
                    while seen.contains(&format!("{}-{n}", r.name)) {
                        n += 1;
                    }
                    r.name = format!("{}-{n}", r.name);
                }
                seen.insert(r.name.clone());
                r
            })
            .collect();
        for key in self.registry.services.keys() {
            if !self.used_services.contains(key) {
                tracing::info!(service = %key, "services: entry not used by any manifest");
            }
        }
        RawConfig {
            backends: self.backends,
            routes,
            ..RawConfig::default()
        }
    }

    /// The rule's primary backend (highest weight, first on ties) and its
    /// split when live traffic goes to more than one backend.
    fn primary(&mut self, rule: &Rule) -> Option<(String, Vec<RawSplit>)> {
        let mut shares: Vec<RawSplit> = Vec::new();
        let mut ok = true;
        for d in &rule.dests {
            if d.weight == 0 {
                continue;
            }
            let timeout = rule.timeout.as_ref().map(|(_, t)| *t);
            let Some(name) = self.resolve(rule.origin, &d.dest, timeout, rule.grpc) else {
                ok = false;
                continue;
            };
            match shares.iter_mut().find(|s| s.backend == name) {
                Some(s) => {
                    s.weight = s.weight.saturating_add(d.weight);
                    if s.headers.is_none() {
                        s.headers = d.headers.clone();
                    }
                }
                None => shares.push(RawSplit {
                    backend: name,
                    weight: d.weight,
                    headers: d.headers.clone(),
                }),
            }
        }
        if !ok || shares.is_empty() {
            return None;
        }
        let mut best = 0;
        for (i, s) in shares.iter().enumerate() {
            if s.weight > shares[best].weight {
                best = i;
            }
        }
        let backend = shares[best].backend.clone();
        // One destination without header changes of its own needs no split.
        if shares.len() == 1 && shares[0].headers.is_none() {
            shares.clear();
        }
        Some((backend, shares))
    }

    /// Finds (or creates) the backend of a destination; `None` after an
    /// error. A destination reached with a request timeout gets a backend of
    /// its own (named with a `-t<timeout>` suffix), as timeouts are per
    /// backend in the native config.
    fn resolve(
        &mut self,
        origin: usize,
        dest: &Dest,
        timeout: Option<Duration>,
        grpc: bool,
    ) -> Option<String> {
        let target = Target::parse(&dest.host, &dest.namespace);
        let registry = self.registry;
        if let Some(subset) = &dest.subset {
            let defined = registry
                .subsets
                .get(&target)
                .is_some_and(|s| s.contains_key(subset));
            if !defined {
                self.cx(origin).fail(
                    &join(&dest.path, "subset"),
                    format!(
                        "no DestinationRule for `{}` defines subset `{subset}`",
                        target.fqdn()
                    ),
                );
                return None;
            }
        }
        let service_ports = registry.ports.get(&target);
        let port = match (dest.port, service_ports.map(Vec::as_slice)) {
            (Some(p), _) => Some(p),
            (None, Some([p])) => Some(*p),
            (None, Some(_)) => None,
            (None, None) => Some(80),
        };
        let mut name = target.id();
        if let Some(s) = &dest.subset {
            name = format!("{name}-{s}");
        }
        if let Some(p) = port {
            name = format!("{name}-{p}");
        }
        if let Some(t) = timeout {
            name = format!("{name}-t{}", format_duration(t));
        }
        if grpc {
            name = format!("{name}-h2");
        }
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if self.backends.contains_key(&name) {
            return Some(name);
        }
        let endpoints = match self.service_entry(dest, &target) {
            Some((key, entry)) => {
                self.used_services.insert(key.clone());
                match (&entry.service, &dest.subset) {
                    (RawService::Endpoints(list), None) => list.clone(),
                    (RawService::Subsets(map), None) => {
                        let mut all: Vec<String> = Vec::new();
                        for e in map.values().flatten() {
                            if !all.contains(e) {
                                all.push(e.clone());
                            }
                        }
                        all
                    }
                    (RawService::Subsets(map), Some(s)) => match map.get(s) {
                        Some(list) => list.clone(),
                        None => {
                            let have: Vec<&str> = map.keys().map(String::as_str).collect();
                            self.cx(origin).fail(
                                &join(&dest.path, "subset"),
                                format!(
                                    "`services: {key}` in {} has no subset `{s}` (it has: {})",
                                    entry.file,
                                    have.join(", ")
                                ),
                            );
                            return None;
                        }
                    },
                    (RawService::Endpoints(_), Some(s)) => {
                        self.cx(origin).fail(
                            &join(&dest.path, "subset"),
                            format!(
                                "`services: {key}` in {} lists endpoints without subsets; give subset `{s}` its own list: `{key}: {{{s}: [\"host:port\"]}}`",
                                entry.file
                            ),
                        );
                        return None;
                    }
                }
            }
            None => match (&target, &dest.subset, port) {
                (Target::Kube { name: svc, .. }, Some(s), _) => {
                    let labels = registry
                        .subsets
                        .get(&target)
                        .and_then(|m| m.get(s))
                        .cloned()
                        .unwrap_or_default();
                    self.cx(origin).fail(
                        &join(&dest.path, "subset"),
                        format!(
                            "subset `{s}` of `{}` selects pods by labels ({labels}), which shadowgate cannot do through DNS; give its endpoints in the `services:` map: `services: {{{svc}: {{{s}: [\"host:port\"]}}}}`",
                            target.fqdn()
                        ),
                    );
                    return None;
                }
                (Target::Kube { .. }, None, Some(p)) => vec![format!("{}:{p}", target.fqdn())],
                (Target::Kube { .. }, None, None) => {
                    let ports: Vec<String> = service_ports
                        .map(|ps| ps.iter().map(u16::to_string).collect())
                        .unwrap_or_default();
                    self.cx(origin).fail(
                        &dest.path,
                        format!(
                            "service `{}` has several ports ({}); name one with the destination's port",
                            target.id(),
                            ports.join(", ")
                        ),
                    );
                    return None;
                }
                (Target::Other(h), _, _) => {
                    self.cx(origin).fail(
                        &join(&dest.path, "host"),
                        format!(
                            "unknown destination `{h}`: not a Kubernetes service name (`name`, `name.namespace` or `name.namespace.svc.cluster.local`) and not in the `services:` map"
                        ),
                    );
                    return None;
                }
            },
        };
        self.backends.insert(
            name.clone(),
            RawBackend {
                endpoints,
                connect_timeout: None,
                timeout: timeout.map(format_duration),
                eject_for: None,
                max_idle_per_endpoint: None,
                retry: None,
                // gRPC needs HTTP/2 to the backend (prior knowledge in cleartext).
                protocol: grpc.then(|| "h2".to_string()),
                ca_file: None,
                client_cert: None,
                client_key: None,
                insecure_skip_verify: None,
                tls_server_name: None,
            },
        );
        Some(name)
    }

    /// The `services:` entry for a destination: the host as written first,
    /// then its other forms.
    fn service_entry(&self, dest: &Dest, target: &Target) -> Option<(String, &'a ServiceEntry)> {
        let mut keys = vec![dest.host.clone(), dest.host.to_ascii_lowercase()];
        if let Target::Kube { .. } = target {
            keys.extend(target.forms().into_iter().skip(1));
        }
        keys.into_iter()
            .find_map(|k| self.registry.services.get(&k).map(|e| (k, e)))
    }
}

/// The native rewrite of one match entry of a rule: Istio's `rewrite.uri`
/// replaces the matched prefix (the whole path after an exact or regex
/// match; `/` without a path match); the Gateway API's `ReplacePrefixMatch`
/// replaces the matched path segments (a trailing `/` of the replacement
/// does not double the next one).
fn entry_rewrite(r: &RuleRewrite, m: &RawMatch, istio_prefix: Option<&str>) -> RawRewrite {
    let mut out = RawRewrite {
        authority: r.authority.clone(),
        ..RawRewrite::default()
    };
    // The replaced prefix is written only where the native default (the
    // route's `match.path_prefix`, else `/`) is not it already.
    let default_prefix = m
        .path_prefix
        .clone()
        .or_else(|| (m.path_exact.is_none() && m.path_regex.is_none()).then(|| "/".to_string()));
    let prefix_or_default = |p: String| (Some(&p) != default_prefix.as_ref()).then_some(p);
    match &r.path {
        None => {}
        Some(PathRewriteSpec::Istio(uri)) => match istio_prefix {
            Some(p) => {
                out.prefix = prefix_or_default(p.to_string());
                out.path_prefix = Some(uri.clone());
            }
            None if default_prefix.is_some() => out.path_prefix = Some(uri.clone()),
            None => out.path = Some(uri.clone()),
        },
        Some(PathRewriteSpec::Full(p)) => out.path = Some(p.clone()),
        Some(PathRewriteSpec::PrefixMatch(with)) => {
            let base = with.trim_end_matches('/');
            let matched = m.path_prefix.as_deref().unwrap_or("/");
            out.path_prefix = Some(if matched == "/" {
                format!("{base}/")
            } else {
                base.to_string()
            });
        }
    }
    out
}

/// Order of native routes: exact hosts first, then wildcards (longest
/// first), then routes for any host; within a host, Istio rules in the
/// order written and Gateway API rules by match precedence (exact path,
/// regular expression, longest prefix; then method; then most headers;
/// then most query parameters),
/// ties going to `namespace/name` and then to rule order.
fn sort_key(rule: &Rule, host: Option<&str>, m: &RawMatch, k: usize, j: usize) -> SortKey {
    // Different exact hosts never take the same request, nor do different
    // wildcards of one length: grouping by host keeps the output readable.
    let host_rank = match host {
        Some(h) if h.starts_with("*.") => (1, Reverse(h.len()), h.to_string()),
        Some(h) => (0, Reverse(0), h.to_string()),
        None => (2, Reverse(0), String::new()),
    };
    match &rule.family {
        Family::Istio { .. } => (
            host_rank,
            0,
            (0, Reverse(0), 0, Reverse(0), Reverse(0)),
            rule.family.clone(),
            k,
            rule.index,
            j,
        ),
        Family::Gateway { .. } => {
            let path = if let Some(p) = &m.path_exact {
                (0, Reverse(p.len()))
            } else if let Some(p) = &m.path_regex {
                (1, Reverse(p.len()))
            } else if let Some(p) = &m.path_prefix {
                (2, Reverse(p.len()))
            } else {
                (2, Reverse(1))
            };
            let method = if m.method.is_some() { 0 } else { 1 };
            (
                host_rank,
                1,
                (
                    path.0,
                    path.1,
                    method,
                    Reverse(m.headers.len()),
                    Reverse(m.query_params.len()),
                ),
                rule.family.clone(),
                k,
                rule.index,
                j,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let k = |n: &str, ns: &str| Target::Kube {
            name: n.into(),
            namespace: ns.into(),
        };
        assert_eq!(Target::parse("httpbin", "default"), k("httpbin", "default"));
        assert_eq!(
            Target::parse("httpbin.shadow", "default"),
            k("httpbin", "shadow")
        );
        assert_eq!(
            Target::parse("httpbin.shadow.svc", "x"),
            k("httpbin", "shadow")
        );
        assert_eq!(
            Target::parse("HTTPBIN.shadow.svc.cluster.local", "x"),
            k("httpbin", "shadow")
        );
        assert_eq!(
            Target::parse("api.example.com", "x"),
            Target::Other("api.example.com".into())
        );
        assert_eq!(Target::parse("*", "x"), Target::Other("*".into()));
    }

    #[test]
    fn hosts() {
        assert_eq!(istio_hosts("*", "default"), vec![None]);
        assert_eq!(
            istio_hosts("my-app.local", "default"),
            vec![Some("my-app.local".to_string())]
        );
        assert_eq!(
            istio_hosts("*.Example.com", "default"),
            vec![Some("*.example.com".to_string())]
        );
        assert_eq!(
            istio_hosts("reviews", "prod"),
            [
                "reviews",
                "reviews.prod",
                "reviews.prod.svc",
                "reviews.prod.svc.cluster.local"
            ]
            .map(|s| Some(s.to_string()))
            .to_vec()
        );
        assert_eq!(istio_hosts("reviews.prod.svc.cluster.local", "x").len(), 4);
    }

    #[test]
    fn durations() {
        let ok = |t: &str| parse_k8s_duration(t).map(format_duration);
        assert_eq!(ok("10s").as_deref(), Ok("10s"));
        assert_eq!(ok("1.5s").as_deref(), Ok("1500ms"));
        assert_eq!(ok("500ms").as_deref(), Ok("500ms"));
        assert_eq!(ok("1m30s").as_deref(), Ok("90s"));
        assert_eq!(ok("1h").as_deref(), Ok("3600s"));
        assert_eq!(ok("0s").as_deref(), Ok("0s"));
        assert!(parse_k8s_duration("10").is_err());
        assert!(parse_k8s_duration("s").is_err());
        assert!(parse_k8s_duration("10d").is_err());
        assert!(parse_k8s_duration("").is_err());
    }
}
