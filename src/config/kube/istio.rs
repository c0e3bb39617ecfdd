//! Istio `VirtualService` and `DestinationRule` (networking.istio.io
//! v1, v1beta1 and v1alpha3).

use std::collections::BTreeMap;

use crate::config::raw::{
    RawCors, RawHeaderMatch, RawHeaderOps, RawHeaderRule, RawMatch, RawRetries, RawRouteHeaders,
};

use super::build::{istio_hosts, parse_k8s_duration, Registry, Target};
use super::model::{
    Dest, Family, MatchEntry, MirrorDest, PathRewriteSpec, Rule, RuleRewrite, WeightedDest,
};
use super::node::{join, Cx, Obj, NOT_SUPPORTED};
use super::{check_header, check_method, check_regex, Meta};

/// An Istio `StringMatch`.
enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
    /// `{}`: for headers, the header is present.
    Present,
}

impl StringMatch {
    /// The native match: a prefix becomes an anchored regex, `{}` any value.
    fn into_raw(self) -> RawHeaderMatch {
        let regex = match self {
            StringMatch::Exact(v) => return RawHeaderMatch::Exact(v),
            StringMatch::Prefix(p) => format!("{}.*", regex::escape(&p)),
            StringMatch::Regex(r) => r,
            StringMatch::Present => ".*".into(),
        };
        RawHeaderMatch::Rule(RawHeaderRule {
            exact: None,
            regex: Some(regex),
        })
    }
}

fn string_match(cx: &mut Cx, o: &Obj) -> Option<StringMatch> {
    o.fields(cx, &["exact", "prefix", "regex"], &[]);
    let exact = o.str(cx, "exact");
    let prefix = o.str(cx, "prefix");
    let regex = o.str(cx, "regex");
    let given = [&exact, &prefix, &regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given > 1 {
        cx.fail(&o.path, "give only one of exact, prefix and regex");
        return None;
    }
    if let Some(r) = &regex {
        if !check_regex(cx, &o.at("regex"), r) {
            return None;
        }
    }
    Some(match (exact, prefix, regex) {
        (Some(e), _, _) => StringMatch::Exact(e),
        (_, Some(p), _) => StringMatch::Prefix(p),
        (_, _, Some(r)) => StringMatch::Regex(r),
        _ => StringMatch::Present,
    })
}

/// Reads a DestinationRule into the registry of subsets.
pub fn destination_rule(cx: &mut Cx, meta: &Meta, spec: &Obj, registry: &mut Registry) {
    spec.fields(cx, &["host", "subsets"], &["exportTo"]);
    let Some(host) = spec.req_str(cx, "host") else {
        return;
    };
    let target = Target::parse(&host, &meta.namespace);
    let mut found = BTreeMap::new();
    for s in spec.objs(cx, "subsets") {
        s.fields(cx, &["name", "labels"], &[]);
        let Some(name) = s.req_str(cx, "name") else {
            continue;
        };
        let labels = match s.obj(cx, "labels") {
            Some(l) => l
                .map
                .iter()
                .map(|(k, v)| {
                    let show = |v: &serde_norway::Value| match v {
                        serde_norway::Value::String(s) => s.clone(),
                        other => serde_norway::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    format!("{}={}", show(k), show(v))
                })
                .collect::<Vec<_>>()
                .join(", "),
            None => String::new(),
        };
        if found.contains_key(&name) {
            cx.fail(&s.at("name"), format!("subset `{name}` is defined twice"));
            continue;
        }
        found.insert(name, labels);
    }
    let all = registry.subsets.entry(target).or_default();
    for (name, labels) in found {
        all.entry(name).or_insert(labels);
    }
}

/// Reads a VirtualService's HTTP rules.
pub fn virtual_service(cx: &mut Cx, meta: &Meta, spec: &Obj, rules: &mut Vec<Rule>) {
    spec.fields(cx, &["hosts", "http"], &["gateways", "exportTo"]);
    let mut hosts: Vec<Option<String>> = Vec::new();
    for (_, h) in spec.strs(cx, "hosts") {
        for form in istio_hosts(&h, &meta.namespace) {
            if !hosts.contains(&form) {
                hosts.push(form);
            }
        }
    }
    if hosts.is_empty() {
        cx.fail(&spec.at("hosts"), "needs at least one host");
        return;
    }
    for (i, http) in spec.objs(cx, "http").into_iter().enumerate() {
        if let Some(rule) = http_route(cx, meta, &http, i, &hosts) {
            rules.push(rule);
        }
    }
}

fn http_route(
    cx: &mut Cx,
    meta: &Meta,
    http: &Obj,
    index: usize,
    hosts: &[Option<String>],
) -> Option<Rule> {
    http.fields(
        cx,
        &[
            "name",
            "match",
            "route",
            "timeout",
            "mirror",
            "mirrors",
            "mirrorPercentage",
            "mirror_percent",
            "mirrorPercent",
            "headers",
            "retries",
            "rewrite",
            "corsPolicy",
        ],
        &[],
    );
    let before = cx.errors.len();
    let mut matches = Vec::new();
    for (j, m) in http.objs(cx, "match").into_iter().enumerate() {
        if let Some((raw, prefix)) = http_match(cx, &m) {
            matches.push(MatchEntry {
                index: j,
                raw,
                prefix,
            });
        }
    }

    let mut dests = Vec::new();
    let routes = http.objs(cx, "route");
    if routes.is_empty() {
        let other_action = ["redirect", "directResponse", "delegate"]
            .iter()
            .any(|k| http.has(k));
        if !other_action {
            cx.fail(&http.at("route"), "needs at least one destination");
        }
    }
    let single = routes.len() == 1;
    for r in &routes {
        r.fields(cx, &["destination", "weight", "headers"], &[]);
        let dest_headers = r.obj(cx, "headers").and_then(|h| headers(cx, &h));
        let weight = r.uint(cx, "weight", u32::MAX as u64).map(|w| w as u32);
        let Some(d) = r.obj(cx, "destination") else {
            cx.fail(&r.at("destination"), "is required");
            continue;
        };
        let Some(dest) = destination(cx, meta, &d) else {
            continue;
        };
        // One destination takes all traffic whatever its weight; with
        // several, an unset weight is 0.
        let weight = if single { 100 } else { weight.unwrap_or(0) };
        dests.push(WeightedDest {
            dest,
            weight,
            headers: dest_headers,
        });
    }
    if routes.len() > 1 && dests.len() == routes.len() && dests.iter().all(|d| d.weight == 0) {
        cx.fail(&http.at("route"), "the weights add up to 0");
    }

    let mut mirrors = Vec::new();
    if http.has("mirror") && http.has("mirrors") {
        cx.fail(&http.path, "give either mirror or mirrors, not both");
    }
    if let Some(m) = http.obj(cx, "mirror") {
        let percent = mirror_percent(cx, http);
        if let Some(dest) = destination(cx, meta, &m) {
            mirrors.push(MirrorDest { dest, percent });
        }
    } else {
        for key in ["mirrorPercentage", "mirror_percent", "mirrorPercent"] {
            if http.has(key) {
                cx.fail(&http.at(key), "has no effect without `mirror`");
            }
        }
    }
    for m in http.objs(cx, "mirrors") {
        m.fields(cx, &["destination", "percentage"], &[]);
        let percent = m.obj(cx, "percentage").and_then(|p| percentage(cx, &p));
        match m.obj(cx, "destination") {
            Some(d) => {
                if let Some(dest) = destination(cx, meta, &d) {
                    mirrors.push(MirrorDest { dest, percent });
                }
            }
            None => cx.fail(&m.at("destination"), "is required"),
        }
    }

    let timeout = http.str(cx, "timeout").and_then(|t| {
        let path = http.at("timeout");
        match parse_k8s_duration(&t) {
            Ok(d) if d.is_zero() => {
                cx.fail(
                    &path,
                    "0s (no timeout) is not supported by shadowgate; give a duration",
                );
                None
            }
            Ok(d) => Some((path, d)),
            Err(e) => {
                cx.fail(&path, e);
                None
            }
        }
    });

    let rule_headers = http.obj(cx, "headers").and_then(|h| headers(cx, &h));
    let retries = http.obj(cx, "retries").and_then(|r| retries(cx, &r));
    let rewrite = http.obj(cx, "rewrite").and_then(|r| rewrite(cx, &r));
    let cors = http.obj(cx, "corsPolicy").and_then(|c| cors_policy(cx, &c));

    if cx.errors.len() > before {
        return None;
    }
    Some(Rule {
        headers: rule_headers,
        retries,
        rewrite,
        cors,
        origin: meta.object,
        base: meta.base(),
        index,
        hosts: hosts.to_vec(),
        matches,
        dests,
        mirrors,
        timeout,
        grpc: false,
        family: Family::Istio {
            object: meta.object,
        },
    })
}

/// `mirrorPercentage: {value: 12.5}`, or the deprecated integer
/// `mirror_percent` / `mirrorPercent`.
fn mirror_percent(cx: &mut Cx, http: &Obj) -> Option<f64> {
    let keys: Vec<&str> = ["mirrorPercentage", "mirror_percent", "mirrorPercent"]
        .into_iter()
        .filter(|k| http.has(k))
        .collect();
    if keys.len() > 1 {
        cx.fail(&http.path, format!("give only one of {}", keys.join(", ")));
        return None;
    }
    match keys.first() {
        Some(&"mirrorPercentage") => http
            .obj(cx, "mirrorPercentage")
            .and_then(|p| percentage(cx, &p)),
        Some(key) => http.uint(cx, key, 100).map(|v| v as f64),
        None => None,
    }
}

/// An Istio `Percent`: `{value: 0..100}`.
fn percentage(cx: &mut Cx, p: &Obj) -> Option<f64> {
    p.fields(cx, &["value"], &[]);
    let v = p.f64(cx, "value")?;
    if !(0.0..=100.0).contains(&v) {
        cx.fail(&p.at("value"), format!("{v} is not between 0 and 100"));
        return None;
    }
    Some(v)
}

/// An Istio `Destination`: `{host, subset, port: {number}}`.
fn destination(cx: &mut Cx, meta: &Meta, d: &Obj) -> Option<Dest> {
    d.fields(cx, &["host", "subset", "port"], &[]);
    let host = d.req_str(cx, "host");
    let subset = d.str(cx, "subset").filter(|s| !s.is_empty());
    let mut port = None;
    if let Some(p) = d.obj(cx, "port") {
        p.fields(cx, &["number"], &[]);
        port = p.uint(cx, "number", 65535).map(|n| n as u16);
        if p.map.is_empty() {
            cx.fail(&p.at("number"), "is required");
        }
    }
    Some(Dest {
        path: d.path.clone(),
        host: host?,
        namespace: meta.namespace.clone(),
        subset,
        port,
    })
}

/// An Istio `Headers`: `{request: {set, add, remove}, response: {…}}`.
fn headers(cx: &mut Cx, h: &Obj) -> Option<RawRouteHeaders> {
    h.fields(cx, &["request", "response"], &[]);
    let request = h.obj(cx, "request").map(|o| header_ops(cx, &o));
    let response = h.obj(cx, "response").map(|o| header_ops(cx, &o));
    (request.is_some() || response.is_some()).then_some(RawRouteHeaders { request, response })
}

/// An Istio `HeaderOperations`: `set` and `add` maps, a `remove` list.
fn header_ops(cx: &mut Cx, o: &Obj) -> RawHeaderOps {
    o.fields(cx, &["set", "add", "remove"], &[]);
    let mut ops = RawHeaderOps::default();
    for key in ["set", "add"] {
        let Some(map) = o.obj(cx, key) else {
            continue;
        };
        for (k, v) in map.map {
            let Some(name) = k.as_str() else {
                cx.fail(&map.path, "keys must be strings");
                continue;
            };
            let path = join(&map.path, name);
            let Some(name) = check_header(cx, &path, name) else {
                continue;
            };
            let Some(value) = v.as_str() else {
                cx.fail(&path, "must be a string");
                continue;
            };
            let out = if key == "set" {
                &mut ops.set
            } else {
                &mut ops.add
            };
            out.insert(name, value.to_string());
        }
    }
    for (path, name) in o.strs(cx, "remove") {
        if let Some(name) = check_header(cx, &path, &name) {
            ops.remove.push(name);
        }
    }
    ops
}

/// An Istio `HTTPRetry`: `attempts`, `perTryTimeout`, `retryOn` (Envoy's
/// conditions, comma-separated; status codes allowed), `backoff`.
/// `attempts: 0` turns retries off.
fn retries(cx: &mut Cx, r: &Obj) -> Option<RawRetries> {
    r.fields(
        cx,
        &["attempts", "perTryTimeout", "retryOn", "backoff"],
        &["retryRemoteLocalities"],
    );
    let attempts = r.uint(cx, "attempts", 10)? as u32;
    let duration = |cx: &mut Cx, key: &str| {
        let text = r.str(cx, key)?;
        match parse_k8s_duration(&text) {
            Ok(d) if d.is_zero() => {
                cx.fail(&r.at(key), "must be more than 0s");
                None
            }
            Ok(d) => Some(super::build::format_duration(d)),
            Err(e) => {
                cx.fail(&r.at(key), e);
                None
            }
        }
    };
    let per_try_timeout = duration(cx, "perTryTimeout");
    let backoff = duration(cx, "backoff");
    let mut retry_on = Vec::new();
    if let Some(list) = r.str(cx, "retryOn") {
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if !super::RETRY_CONDITIONS.contains(&word) && word.parse::<u16>().is_err() {
                cx.fail(
                    &r.at("retryOn"),
                    format!("retry condition `{word}` is {NOT_SUPPORTED}"),
                );
                continue;
            }
            retry_on.push(word.to_string());
        }
    }
    (attempts > 0).then_some(RawRetries {
        attempts,
        per_try_timeout,
        retry_on,
        retriable_status_codes: Vec::new(),
        backoff,
    })
}

/// An Istio `CorsPolicy`: `allowOrigins` (`exact`, `prefix`, `regex`; the
/// deprecated `allowOrigin` list is exact), `allowMethods`,
/// `allowHeaders`, `exposeHeaders`, `maxAge`, `allowCredentials`;
/// `unmatchedPreflights: FORWARD` (the default) is what shadowgate does.
fn cors_policy(cx: &mut Cx, c: &Obj) -> Option<RawCors> {
    c.fields(
        cx,
        &[
            "allowOrigins",
            "allowOrigin",
            "allowMethods",
            "allowHeaders",
            "exposeHeaders",
            "maxAge",
            "allowCredentials",
            "unmatchedPreflights",
        ],
        &[],
    );
    let before = cx.errors.len();
    let mut out = RawCors::default();
    for o in c.objs(cx, "allowOrigins") {
        match string_match(cx, &o) {
            Some(StringMatch::Present) => cx.fail(&o.path, "give one of exact, prefix and regex"),
            Some(m) => out.allow_origins.push(m.into_raw()),
            None => {}
        }
    }
    for (_, o) in c.strs(cx, "allowOrigin") {
        out.allow_origins.push(RawHeaderMatch::Exact(o));
    }
    if out.allow_origins.is_empty() && cx.errors.len() == before {
        cx.fail(&c.at("allowOrigins"), "needs at least one origin");
    }
    for (key, list, header) in [
        ("allowMethods", &mut out.allow_methods, false),
        ("allowHeaders", &mut out.allow_headers, true),
        ("exposeHeaders", &mut out.expose_headers, true),
    ] {
        for (path, v) in c.strs(cx, key) {
            let ok = v == "*"
                || if header {
                    check_header(cx, &path, &v).is_some()
                } else {
                    check_method(cx, &path, &v).is_some()
                };
            if ok {
                list.push(v);
            }
        }
    }
    if let Some(text) = c.str(cx, "maxAge") {
        match parse_k8s_duration(&text) {
            Ok(d) => out.max_age = Some(super::build::format_duration(d)),
            Err(e) => cx.fail(&c.at("maxAge"), e),
        }
    }
    out.allow_credentials = c.bool(cx, "allowCredentials").filter(|b| *b);
    if let Some(u) = c.str(cx, "unmatchedPreflights") {
        if !matches!(u.as_str(), "FORWARD" | "UNSPECIFIED") {
            cx.fail(
                &c.at("unmatchedPreflights"),
                format!("`{u}` is {NOT_SUPPORTED} (preflights from other origins are forwarded)"),
            );
        }
    }
    (cx.errors.len() == before).then_some(out)
}

/// An Istio `HTTPRewrite`: `uri` (replaces the matched prefix, or the
/// whole path after an exact or regex match) and `authority`.
fn rewrite(cx: &mut Cx, r: &Obj) -> Option<RuleRewrite> {
    r.fields(cx, &["uri", "authority"], &[]);
    let uri = r.str(cx, "uri").filter(|u| {
        let ok = u.starts_with('/') && !u.contains(['?', '#']);
        if !ok {
            cx.fail(
                &r.at("uri"),
                "must be a path starting with `/`, without `?` or `#`",
            );
        }
        ok
    });
    let authority = r.str(cx, "authority").filter(|a| {
        let ok = super::valid_authority(a);
        if !ok {
            cx.fail(
                &r.at("authority"),
                "must be a host, with an optional `:port`",
            );
        }
        ok
    });
    (uri.is_some() || authority.is_some()).then(|| RuleRewrite {
        path: uri.map(PathRewriteSpec::Istio),
        authority,
    })
}

/// An Istio `HTTPMatchRequest` → native match conditions (ANDed), and the
/// `uri.prefix` as written.
fn http_match(cx: &mut Cx, m: &Obj) -> Option<(RawMatch, Option<String>)> {
    m.fields(
        cx,
        &[
            "name",
            "uri",
            "method",
            "headers",
            "ignoreUriCase",
            "queryParams",
        ],
        &[],
    );
    let before = cx.errors.len();
    let mut raw = RawMatch::default();
    let mut prefix = None;
    let ignore_case = m.bool(cx, "ignoreUriCase").unwrap_or(false);
    if let Some(u) = m.obj(cx, "uri") {
        let case = if ignore_case { "(?i)" } else { "" };
        match string_match(cx, &u) {
            Some(StringMatch::Exact(p)) if !ignore_case => raw.path_exact = Some(p),
            Some(StringMatch::Exact(p)) => {
                raw.path_regex = Some(format!("{case}{}", regex::escape(&p)))
            }
            // Istio's prefix is a plain string prefix (`/api` also takes
            // `/apix`); the native prefix works on path segments, so only
            // `/` maps to it directly.
            Some(StringMatch::Prefix(p)) if p == "/" && !ignore_case => {
                prefix = Some(p.clone());
                raw.path_prefix = Some(p)
            }
            Some(StringMatch::Prefix(p)) => {
                raw.path_regex = Some(format!("{case}{}.*", regex::escape(&p)));
                prefix = Some(p);
            }
            Some(StringMatch::Regex(r)) => raw.path_regex = Some(format!("{case}{r}")),
            Some(StringMatch::Present) => cx.fail(&u.path, "give one of exact, prefix and regex"),
            None => {}
        }
    }
    if let Some(meth) = m.obj(cx, "method") {
        match string_match(cx, &meth) {
            Some(StringMatch::Exact(v)) => raw.method = check_method(cx, &meth.at("exact"), &v),
            Some(StringMatch::Prefix(_)) => cx.unsupported(&meth.at("prefix")),
            Some(StringMatch::Regex(_)) => cx.unsupported(&meth.at("regex")),
            Some(StringMatch::Present) => cx.fail(&meth.path, "give the method with `exact`"),
            None => {}
        }
    }
    for (name, h) in m.entries(cx, "headers") {
        let path = join(&m.at("headers"), &name);
        let Some(name) = check_header(cx, &path, &name) else {
            continue;
        };
        let Some(rule) = string_match(cx, &h).map(StringMatch::into_raw) else {
            continue;
        };
        if raw.headers.insert(name.clone(), rule).is_some() {
            cx.fail(&path, format!("header `{name}` is matched twice"));
        }
    }
    for (name, q) in m.entries(cx, "queryParams") {
        let path = join(&m.at("queryParams"), &name);
        let rule = match string_match(cx, &q) {
            Some(StringMatch::Present) => {
                cx.fail(&path, "give one of exact, prefix and regex");
                continue;
            }
            Some(m) => m.into_raw(),
            None => continue,
        };
        raw.query_params.insert(name, rule);
    }
    (cx.errors.len() == before).then_some((raw, prefix))
}
