//! Gateway API `HTTPRoute` and `GRPCRoute` (gateway.networking.k8s.io).

use crate::config::raw::{
    RawHeaderMatch, RawHeaderOps, RawHeaderRule, RawMatch, RawRetries, RawRouteHeaders,
};

use super::build::parse_k8s_duration;
use super::model::{
    Dest, Family, MatchEntry, MirrorDest, PathRewriteSpec, Rule, RuleRewrite, WeightedDest,
};
use super::node::{Cx, Obj, NOT_SUPPORTED};
use super::{check_header, check_method, check_regex, Meta};

/// Which route kind is being read.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Http,
    Grpc,
}

/// Reads an HTTPRoute or a GRPCRoute.
pub fn route(cx: &mut Cx, meta: &Meta, spec: &Obj, kind: Kind, rules: &mut Vec<Rule>) {
    spec.fields(cx, &["hostnames", "rules"], &["parentRefs"]);
    let mut hosts: Vec<Option<String>> = Vec::new();
    for (path, h) in spec.strs(cx, "hostnames") {
        let h = h.to_ascii_lowercase();
        let valid = !h.is_empty()
            && h.strip_prefix("*.")
                .unwrap_or(&h)
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            cx.fail(
                &path,
                format!("`{h}` is not a hostname like `example.com` or `*.example.com`"),
            );
            continue;
        }
        if !hosts.contains(&Some(h.clone())) {
            hosts.push(Some(h));
        }
    }
    if hosts.is_empty() {
        hosts.push(None);
    }
    for (i, r) in spec.objs(cx, "rules").into_iter().enumerate() {
        if let Some(rule) = route_rule(cx, meta, &r, i, &hosts, kind) {
            rules.push(rule);
        }
    }
}

fn route_rule(
    cx: &mut Cx,
    meta: &Meta,
    r: &Obj,
    index: usize,
    hosts: &[Option<String>],
    kind: Kind,
) -> Option<Rule> {
    match kind {
        Kind::Http => r.fields(
            cx,
            &[
                "name",
                "matches",
                "filters",
                "backendRefs",
                "timeouts",
                "retry",
            ],
            &[],
        ),
        Kind::Grpc => r.fields(cx, &["name", "matches", "filters", "backendRefs"], &[]),
    }
    let before = cx.errors.len();

    let mut matches = Vec::new();
    for (j, m) in r.objs(cx, "matches").into_iter().enumerate() {
        let raw = match kind {
            Kind::Http => http_match(cx, &m),
            Kind::Grpc => grpc_match(cx, &m),
        };
        if let Some(raw) = raw {
            matches.push(MatchEntry {
                index: j,
                raw,
                prefix: None,
            });
        }
    }

    let mut mirrors = Vec::new();
    let mut rule_headers = RawRouteHeaders::default();
    let mut rewrite = None;
    for f in r.objs(cx, "filters") {
        let Some(t) = f.req_str(cx, "type") else {
            continue;
        };
        if header_filter(cx, &f, &t, &mut rule_headers) {
            continue;
        }
        if t == "URLRewrite" && kind == Kind::Http {
            if rewrite.is_some() {
                cx.fail(&f.at("type"), "only one URLRewrite filter is allowed");
            }
            rewrite = url_rewrite(cx, &f, &matches);
            continue;
        }
        if t != "RequestMirror" {
            cx.fail(
                &f.at("type"),
                format!("filter type `{t}` is {NOT_SUPPORTED}"),
            );
            continue;
        }
        f.fields(cx, &["type", "requestMirror"], &[]);
        let Some(rm) = f.obj(cx, "requestMirror") else {
            cx.fail(&f.at("requestMirror"), "is required");
            continue;
        };
        rm.fields(cx, &["backendRef", "percent", "fraction"], &[]);
        let percent = mirror_percent(cx, &rm);
        let Some(b) = rm.obj(cx, "backendRef") else {
            cx.fail(&rm.at("backendRef"), "is required");
            continue;
        };
        b.fields(cx, &["group", "kind", "name", "namespace", "port"], &[]);
        if let Some(dest) = backend_ref(cx, meta, &b) {
            mirrors.push(MirrorDest { dest, percent });
        }
    }

    let mut dests = Vec::new();
    let refs = r.objs(cx, "backendRefs");
    if refs.is_empty() {
        cx.fail(
            &r.at("backendRefs"),
            "needs at least one backend (rules that only answer with an error are not supported)",
        );
    }
    for b in &refs {
        b.fields(
            cx,
            &[
                "group",
                "kind",
                "name",
                "namespace",
                "port",
                "weight",
                "filters",
            ],
            &[],
        );
        let mut dest_headers = RawRouteHeaders::default();
        for f in b.objs(cx, "filters") {
            let Some(t) = f.req_str(cx, "type") else {
                continue;
            };
            if !header_filter(cx, &f, &t, &mut dest_headers) {
                cx.fail(
                    &f.at("type"),
                    format!("filter type `{t}` on a backendRef is {NOT_SUPPORTED} (use RequestHeaderModifier or ResponseHeaderModifier)"),
                );
            }
        }
        let weight = b
            .uint(cx, "weight", 1_000_000)
            .map(|w| w as u32)
            .unwrap_or(1);
        if let Some(dest) = backend_ref(cx, meta, b) {
            dests.push(WeightedDest {
                dest,
                weight,
                headers: (dest_headers != RawRouteHeaders::default()).then_some(dest_headers),
            });
        }
    }
    if !refs.is_empty() && dests.len() == refs.len() && dests.iter().all(|d| d.weight == 0) {
        cx.fail(&r.at("backendRefs"), "the weights add up to 0");
    }

    // `request` bounds the whole exchange (every try); `backendRequest`
    // each try: the retries' `per_try_timeout`, or the one try's timeout.
    let mut timeout = None;
    let mut backend_request = None;
    if let Some(t) = r.obj(cx, "timeouts") {
        t.fields(cx, &["request", "backendRequest"], &[]);
        for (key, slot) in [
            ("request", &mut timeout),
            ("backendRequest", &mut backend_request),
        ] {
            let Some(text) = t.str(cx, key) else {
                continue;
            };
            let path = t.at(key);
            match parse_k8s_duration(&text) {
                Ok(d) if d.is_zero() => cx.fail(
                    &path,
                    "0s (no timeout) is not supported by shadowgate; give a duration",
                ),
                Ok(d) => *slot = Some((path, d)),
                Err(e) => cx.fail(&path, e),
            }
        }
        if let (Some((_, whole)), Some((path, each))) = (&timeout, &backend_request) {
            if each > whole {
                cx.fail(
                    path,
                    format!(
                        "{} is longer than timeouts.request ({}); it must not be",
                        super::build::format_duration(*each),
                        super::build::format_duration(*whole)
                    ),
                );
            }
        }
    }

    let mut retries = r.obj(cx, "retry").and_then(|o| retry(cx, &o));
    if let Some((path, each)) = backend_request {
        match retries.as_mut() {
            Some(policy) => {
                policy.per_try_timeout = Some(super::build::format_duration(each));
            }
            // One try: its timeout is the exchange's.
            None => {
                if timeout.as_ref().is_none_or(|(_, whole)| each < *whole) {
                    timeout = Some((path, each));
                }
            }
        }
    }

    if cx.errors.len() > before {
        return None;
    }
    Some(Rule {
        headers: (rule_headers != RawRouteHeaders::default()).then_some(rule_headers),
        retries,
        rewrite,
        cors: None,
        origin: meta.object,
        base: meta.base(),
        index,
        hosts: hosts.to_vec(),
        matches,
        dests,
        mirrors,
        timeout,
        grpc: matches!(kind, Kind::Grpc),
        family: Family::Gateway {
            object: format!("{}/{}", meta.namespace, meta.name),
        },
    })
}

/// A `URLRewrite` filter: `hostname`, and `path` with `ReplaceFullPath`
/// or `ReplacePrefixMatch` (which needs every match to be a `PathPrefix`).
fn url_rewrite(cx: &mut Cx, f: &Obj, matches: &[MatchEntry]) -> Option<RuleRewrite> {
    f.fields(cx, &["type", "urlRewrite"], &[]);
    let Some(u) = f.obj(cx, "urlRewrite") else {
        cx.fail(&f.at("urlRewrite"), "is required");
        return None;
    };
    u.fields(cx, &["hostname", "path"], &[]);
    let authority = u.str(cx, "hostname").filter(|h| {
        let ok = !h.contains(':') && super::valid_authority(h);
        if !ok {
            cx.fail(&u.at("hostname"), "must be a hostname like `example.com`");
        }
        ok
    });
    let mut path = None;
    if let Some(p) = u.obj(cx, "path") {
        p.fields(cx, &["type", "replaceFullPath", "replacePrefixMatch"], &[]);
        let t = p.req_str(cx, "type").unwrap_or_default();
        let key = match t.as_str() {
            "ReplaceFullPath" => "replaceFullPath",
            "ReplacePrefixMatch" => "replacePrefixMatch",
            "" => return None,
            other => {
                cx.fail(
                    &p.at("type"),
                    format!("path rewrite type `{other}` is {NOT_SUPPORTED} (use ReplaceFullPath or ReplacePrefixMatch)"),
                );
                return None;
            }
        };
        let value = p.str(cx, key);
        let Some(value) = value else {
            cx.fail(&p.at(key), "is required");
            return None;
        };
        if !value.starts_with('/') || value.contains(['?', '#']) {
            cx.fail(
                &p.at(key),
                "must be a path starting with `/`, without `?` or `#`",
            );
            return None;
        }
        if key == "replacePrefixMatch" {
            let not_prefix = matches
                .iter()
                .any(|m| m.raw.path_exact.is_some() || m.raw.path_regex.is_some());
            if not_prefix {
                cx.fail(
                    &p.at("type"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                );
                return None;
            }
            path = Some(PathRewriteSpec::PrefixMatch(value));
        } else {
            path = Some(PathRewriteSpec::Full(value));
        }
    }
    (path.is_some() || authority.is_some()).then_some(RuleRewrite { path, authority })
}

/// A `RequestHeaderModifier` or `ResponseHeaderModifier` filter, read
/// into `out`; `false` when the filter is of another type.
fn header_filter(cx: &mut Cx, f: &Obj, t: &str, out: &mut RawRouteHeaders) -> bool {
    let (key, slot) = match t {
        "RequestHeaderModifier" => ("requestHeaderModifier", &mut out.request),
        "ResponseHeaderModifier" => ("responseHeaderModifier", &mut out.response),
        _ => return false,
    };
    f.fields(cx, &["type", key], &[]);
    let Some(m) = f.obj(cx, key) else {
        cx.fail(&f.at(key), "is required");
        return true;
    };
    if slot.is_some() {
        cx.fail(&f.at("type"), format!("only one {t} filter is allowed"));
        return true;
    }
    m.fields(cx, &["set", "add", "remove"], &[]);
    let mut ops = RawHeaderOps::default();
    for key in ["set", "add"] {
        for h in m.objs(cx, key) {
            h.fields(cx, &["name", "value"], &[]);
            let (Some(name), Some(value)) = (h.req_str(cx, "name"), h.str(cx, "value")) else {
                if !h.has("value") {
                    cx.fail(&h.at("value"), "is required");
                }
                continue;
            };
            let Some(name) = check_header(cx, &h.at("name"), &name) else {
                continue;
            };
            let map = if key == "set" {
                &mut ops.set
            } else {
                &mut ops.add
            };
            if map.insert(name.clone(), value).is_some() {
                cx.fail(&h.at("name"), format!("header `{name}` is given twice"));
            }
        }
    }
    for (path, name) in m.strs(cx, "remove") {
        if let Some(name) = check_header(cx, &path, &name) {
            ops.remove.push(name);
        }
    }
    *slot = Some(ops);
    true
}

/// An HTTPRoute rule's `retry` (GEP-1731): `attempts` retries, on the
/// status `codes` and on connection errors (which the GEP says are always
/// retried), with `backoff` between tries.
fn retry(cx: &mut Cx, r: &Obj) -> Option<RawRetries> {
    r.fields(cx, &["attempts", "backoff", "codes"], &[]);
    let attempts = match r.uint(cx, "attempts", 10) {
        Some(a) => a as u32,
        // Unset: implementation-specific; shadowgate retries once.
        None if !r.has("attempts") => 1,
        None => return None,
    };
    let backoff = r
        .str(cx, "backoff")
        .and_then(|t| match parse_k8s_duration(&t) {
            Ok(d) => Some(super::build::format_duration(d)),
            Err(e) => {
                cx.fail(&r.at("backoff"), e);
                None
            }
        });
    let mut codes = Vec::new();
    for (path, n) in r.list(cx, "codes") {
        match n.value.as_u64() {
            Some(c) if (400..=599).contains(&c) => codes.push(c as u16),
            _ => cx.fail(&path, "must be a status code between 400 and 599"),
        }
    }
    let mut retry_on = vec!["connect-failure".to_string(), "reset".to_string()];
    if !codes.is_empty() {
        retry_on.push("retriable-status-codes".to_string());
    }
    (attempts > 0).then_some(RawRetries {
        attempts,
        per_try_timeout: None,
        retry_on,
        retriable_status_codes: codes,
        backoff,
    })
}

/// A header's or query parameter's `Exact` / `RegularExpression` match
/// (`kind` names which in the refusal); `None` once refused.
fn value_match(cx: &mut Cx, m: &Obj, kind: &str, t: &str, value: String) -> Option<RawHeaderMatch> {
    match t {
        "Exact" => Some(RawHeaderMatch::Exact(value)),
        "RegularExpression" => {
            check_regex(cx, &m.at("value"), &value).then_some(RawHeaderMatch::Rule(RawHeaderRule {
                exact: None,
                regex: Some(value),
            }))
        }
        other => {
            cx.fail(
                &m.at("type"),
                format!("{kind} match type `{other}` is {NOT_SUPPORTED} (use Exact or RegularExpression)"),
            );
            None
        }
    }
}

/// Query parameter matches of an HTTPRoute: `Exact` (the default) or
/// `RegularExpression`; the first entry of a name wins.
fn query_matches(cx: &mut Cx, m: &Obj, raw: &mut RawMatch) {
    for q in m.objs(cx, "queryParams") {
        q.fields(cx, &["type", "name", "value"], &[]);
        let t = q.str(cx, "type").unwrap_or_else(|| "Exact".into());
        let (Some(name), Some(value)) = (q.req_str(cx, "name"), q.str(cx, "value")) else {
            if !q.has("value") {
                cx.fail(&q.at("value"), "is required");
            }
            continue;
        };
        let Some(rule) = value_match(cx, &q, "query", &t, value) else {
            continue;
        };
        raw.query_params.entry(name).or_insert(rule);
    }
}

/// `percent: 0..100` or `fraction: {numerator, denominator}`; absent = 100.
fn mirror_percent(cx: &mut Cx, rm: &Obj) -> Option<f64> {
    if rm.has("percent") && rm.has("fraction") {
        cx.fail(&rm.path, "give either percent or fraction, not both");
        return None;
    }
    if rm.has("percent") {
        return rm.uint(cx, "percent", 100).map(|p| p as f64);
    }
    let f = rm.obj(cx, "fraction")?;
    f.fields(cx, &["numerator", "denominator"], &[]);
    let numerator = f.uint(cx, "numerator", u32::MAX as u64);
    if numerator.is_none() && !f.has("numerator") {
        cx.fail(&f.at("numerator"), "is required");
    }
    let denominator = f.uint(cx, "denominator", u32::MAX as u64).or(
        // The Gateway API's default denominator.
        (!f.has("denominator")).then_some(100),
    );
    let (n, d) = (numerator?, denominator?);
    if d == 0 {
        cx.fail(&f.at("denominator"), "must be at least 1");
        return None;
    }
    if n > d {
        cx.fail(
            &f.path,
            format!("numerator {n} is larger than denominator {d}"),
        );
        return None;
    }
    Some(n as f64 * 100.0 / d as f64)
}

/// A `backendRef` to a Kubernetes Service.
fn backend_ref(cx: &mut Cx, meta: &Meta, b: &Obj) -> Option<Dest> {
    let group = b.str(cx, "group").unwrap_or_default();
    let kind = b.str(cx, "kind").unwrap_or_else(|| "Service".into());
    if !(group.is_empty() || group == "core") || kind != "Service" {
        let what = if group.is_empty() {
            format!("kind `{kind}`")
        } else {
            format!("kind `{kind}` of group `{group}`")
        };
        cx.fail(
            &b.at("kind"),
            format!("backends of {what} are {NOT_SUPPORTED}; use a Kubernetes Service"),
        );
        return None;
    }
    let name = b.req_str(cx, "name")?;
    let namespace = b.str(cx, "namespace").filter(|n| !n.is_empty());
    let port = b.uint(cx, "port", 65535).map(|p| p as u16);
    let host = match &namespace {
        Some(ns) => format!("{name}.{ns}"),
        None => name,
    };
    Some(Dest {
        path: b.path.clone(),
        host,
        namespace: meta.namespace.clone(),
        subset: None,
        port,
    })
}

/// Header matches shared by HTTPRoute and GRPCRoute. The first entry of a
/// name wins, as the Gateway API specifies.
fn header_matches(cx: &mut Cx, m: &Obj, raw: &mut RawMatch) {
    for h in m.objs(cx, "headers") {
        h.fields(cx, &["type", "name", "value"], &[]);
        let t = h.str(cx, "type").unwrap_or_else(|| "Exact".into());
        let (Some(name), Some(value)) = (h.req_str(cx, "name"), h.str(cx, "value")) else {
            if !h.has("value") {
                cx.fail(&h.at("value"), "is required");
            }
            continue;
        };
        let Some(name) = check_header(cx, &h.at("name"), &name) else {
            continue;
        };
        let Some(rule) = value_match(cx, &h, "header", &t, value) else {
            continue;
        };
        if raw.headers.contains_key(&name) {
            tracing::info!(
                file = %cx.file,
                object = %cx.label,
                field = %h.path,
                "header `{name}` is matched more than once; the first match applies"
            );
            continue;
        }
        raw.headers.insert(name, rule);
    }
}

/// An `HTTPRouteMatch` → native match conditions (ANDed).
fn http_match(cx: &mut Cx, m: &Obj) -> Option<RawMatch> {
    m.fields(cx, &["path", "headers", "queryParams", "method"], &[]);
    let before = cx.errors.len();
    let mut raw = RawMatch::default();
    if let Some(p) = m.obj(cx, "path") {
        p.fields(cx, &["type", "value"], &[]);
        let t = p.str(cx, "type").unwrap_or_else(|| "PathPrefix".into());
        let value = p.str(cx, "value").unwrap_or_else(|| "/".into());
        match t.as_str() {
            "PathPrefix" | "Exact" if !value.starts_with('/') => {
                cx.fail(&p.at("value"), "must start with `/`")
            }
            // A trailing slash does not count in a Gateway API prefix.
            "PathPrefix" if value.len() > 1 => {
                let v = value.trim_end_matches('/');
                raw.path_prefix = Some(if v.is_empty() { "/".into() } else { v.into() });
            }
            "PathPrefix" => raw.path_prefix = Some(value),
            "Exact" => raw.path_exact = Some(value),
            "RegularExpression" => {
                if check_regex(cx, &p.at("value"), &value) {
                    raw.path_regex = Some(value);
                }
            }
            other => cx.fail(
                &p.at("type"),
                format!("path match type `{other}` is {NOT_SUPPORTED} (use PathPrefix, Exact or RegularExpression)"),
            ),
        }
    }
    header_matches(cx, m, &mut raw);
    query_matches(cx, m, &mut raw);
    if let Some(method) = m.str(cx, "method") {
        raw.method = check_method(cx, &m.at("method"), &method);
    }
    (cx.errors.len() == before).then_some(raw)
}

/// A `GRPCRouteMatch`: service and method become the request path
/// `/<service>/<method>`.
fn grpc_match(cx: &mut Cx, m: &Obj) -> Option<RawMatch> {
    m.fields(cx, &["method", "headers"], &[]);
    let before = cx.errors.len();
    let mut raw = RawMatch::default();
    if let Some(gm) = m.obj(cx, "method") {
        gm.fields(cx, &["type", "service", "method"], &[]);
        let t = gm.str(cx, "type").unwrap_or_else(|| "Exact".into());
        let service = gm.str(cx, "service").filter(|s| !s.is_empty());
        let method = gm.str(cx, "method").filter(|s| !s.is_empty());
        if service.is_none() && method.is_none() {
            cx.fail(&gm.path, "give a service, a method or both");
        }
        match t.as_str() {
            "Exact" => {
                for (key, v) in [("service", &service), ("method", &method)] {
                    if v.as_deref().is_some_and(|v| v.contains('/')) {
                        cx.fail(&gm.at(key), "must not contain `/`");
                    }
                }
                match (&service, &method) {
                    (Some(s), Some(me)) => raw.path_exact = Some(format!("/{s}/{me}")),
                    (Some(s), None) => raw.path_prefix = Some(format!("/{s}")),
                    (None, Some(me)) => {
                        raw.path_regex = Some(format!("/[^/]+/{}", regex::escape(me)))
                    }
                    (None, None) => {}
                }
            }
            "RegularExpression" => {
                let mut ok = true;
                for (key, v) in [("service", &service), ("method", &method)] {
                    if let Some(v) = v {
                        ok &= check_regex(cx, &gm.at(key), v);
                    }
                }
                if ok {
                    raw.path_regex = Some(format!(
                        "/(?:{})/(?:{})",
                        service.as_deref().unwrap_or("[^/]+"),
                        method.as_deref().unwrap_or("[^/]+")
                    ));
                }
            }
            other => cx.fail(
                &gm.at("type"),
                format!("method match type `{other}` is {NOT_SUPPORTED} (use Exact or RegularExpression)"),
            ),
        }
    }
    header_matches(cx, m, &mut raw);
    (cx.errors.len() == before).then_some(raw)
}
