//! The `routes:` section: each route's name, its match conditions (host,
//! path, method, headers), its weighted split, and the mirrors, comparison
//! rules and promotion it carries (checked in [`super::mirrors`] and
//! [`super::promotion`]).

use super::check::Check;
use super::mirrors::{mirror, route_compare};
use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderValue;

use super::model::{
    CorsPolicy, HostMatch, PathMatch, PathRewrite, RetryOn, RetryPolicy, Rewrite, RouteConfig,
    RouteHeaders, RouteMatch, ValueMatch,
};
use super::promotion::promotion;
use super::raw::{
    RawCors, RawHeaderMatch, RawHeaderOps, RawHeaderRule, RawMatch, RawRetries, RawRewrite,
    RawRoute, RawRouteHeaders,
};
use crate::protocol::headers::HeaderEdits;

pub(super) fn route(c: &mut Check, path: &str, raw: &RawRoute) -> Option<RouteConfig> {
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        c.fail(
            format!("{path}.name"),
            "must be non-empty and use only letters, digits, `-`, `_` and `.`",
        );
    }
    let matcher = raw
        .match_
        .as_ref()
        .map(|m| route_match(c, &format!("{path}.match"), m))
        .unwrap_or_default();
    let mirrors = raw
        .mirrors
        .iter()
        .enumerate()
        .map(|(i, m)| mirror(c, &format!("{path}.mirrors[{i}]"), m))
        .collect();
    let compare = route_compare(c, path, raw);
    let promotion = raw
        .promotion
        .as_ref()
        .and_then(|p| promotion(c, &format!("{path}.promotion"), p, raw));
    if !raw.split.is_empty() && raw.split.iter().all(|s| s.weight == 0) {
        c.fail(
            format!("{path}.split"),
            "at least one weight must be more than 0",
        );
    }
    let headers = raw
        .headers
        .as_ref()
        .map(|h| route_headers(c, &format!("{path}.headers"), h))
        .unwrap_or_default();
    let mut backend_headers = BTreeMap::new();
    for (j, s) in raw.split.iter().enumerate() {
        if let Some(h) = &s.headers {
            let h = route_headers(c, &format!("{path}.split[{j}].headers"), h);
            backend_headers.insert(s.backend.clone(), h);
        }
    }
    let retries = raw
        .retries
        .as_ref()
        .map(|r| retries(c, &format!("{path}.retries"), r));
    let rewrite = raw
        .rewrite
        .as_ref()
        .map(|r| rewrite(c, &format!("{path}.rewrite"), r, raw.match_.as_ref()));
    let cors = raw
        .cors
        .as_ref()
        .map(|r| cors(c, &format!("{path}.cors"), r));
    let record = raw
        .record
        .as_ref()
        .and_then(|r| super::record::record(c, &format!("{path}.record"), r))
        .map(std::sync::Arc::new);
    Some(RouteConfig {
        record,
        cors,
        rewrite,
        headers,
        backend_headers,
        retries,
        name: raw.name.clone(),
        matcher,
        backend: raw.backend.clone(),
        split: raw
            .split
            .iter()
            .map(|s| (s.backend.clone(), s.weight))
            .collect(),
        mirrors,
        promotion,
        compare,
        secondary: raw.secondary.clone(),
        max_body_bytes: raw
            .max_body_bytes
            .as_ref()
            .map(|_| c.size(&format!("{path}.max_body_bytes"), &raw.max_body_bytes, 0)),
    })
}

pub(super) fn route_match(c: &mut Check, path: &str, raw: &RawMatch) -> RouteMatch {
    let host = raw.host.as_ref().map(|h| {
        let h = h.to_ascii_lowercase();
        match h.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') && rest.len() > 1 => {
                HostMatch::Suffix(rest.to_string())
            }
            Some(_) => {
                c.fail(
                    format!("{path}.host"),
                    "a wildcard host is written `*.example.com`",
                );
                HostMatch::Exact(h)
            }
            None => HostMatch::Exact(h),
        }
    });
    let paths = [&raw.path_prefix, &raw.path_exact, &raw.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if paths > 1 {
        c.fail(
            path,
            "use only one of path_prefix, path_exact and path_regex",
        );
    }
    let path_match = if let Some(p) = &raw.path_prefix {
        if !p.starts_with('/') {
            c.fail(format!("{path}.path_prefix"), "must start with `/`");
        }
        Some(PathMatch::Prefix(p.clone()))
    } else if let Some(p) = &raw.path_exact {
        if !p.starts_with('/') {
            c.fail(format!("{path}.path_exact"), "must start with `/`");
        }
        Some(PathMatch::Exact(p.clone()))
    } else if let Some(p) = &raw.path_regex {
        c.regex(&format!("{path}.path_regex"), p)
            .map(PathMatch::Regex)
    } else {
        None
    };
    let method = raw
        .method
        .as_ref()
        .and_then(|m| c.method(&format!("{path}.method"), m));
    let mut headers = Vec::new();
    for (name, rule) in &raw.headers {
        let hpath = format!("{path}.headers.{name}");
        let Some(h) = c.header_name(&hpath, name) else {
            continue;
        };
        if let Some(v) = value_match(c, &hpath, rule) {
            headers.push((h, v));
        }
    }
    let mut query = Vec::new();
    for (name, rule) in &raw.query_params {
        let qpath = format!("{path}.query_params.{name}");
        if name.is_empty() {
            c.fail(&qpath, "a query parameter name must not be empty");
            continue;
        }
        if let Some(v) = value_match(c, &qpath, rule) {
            query.push((name.clone(), v));
        }
    }
    RouteMatch {
        host,
        path: path_match,
        method,
        headers,
        query,
    }
}

fn value_match(c: &mut Check, path: &str, rule: &RawHeaderMatch) -> Option<ValueMatch> {
    match rule {
        RawHeaderMatch::Exact(v) => Some(ValueMatch::Exact(v.clone())),
        RawHeaderMatch::Rule(RawHeaderRule {
            exact: Some(v),
            regex: None,
        }) => Some(ValueMatch::Exact(v.clone())),
        RawHeaderMatch::Rule(RawHeaderRule {
            exact: None,
            regex: Some(r),
        }) => c.regex(&format!("{path}.regex"), r).map(ValueMatch::Regex),
        RawHeaderMatch::Rule(_) => {
            c.fail(path, "give exactly one of `exact` and `regex`");
            None
        }
    }
}

fn route_headers(c: &mut Check, path: &str, raw: &RawRouteHeaders) -> RouteHeaders {
    let ops = |c: &mut Check, key: &str, o: &Option<RawHeaderOps>| {
        o.as_ref()
            .map(|o| header_ops(c, &format!("{path}.{key}"), o))
            .unwrap_or_default()
    };
    RouteHeaders {
        request: ops(c, "request", &raw.request),
        response: ops(c, "response", &raw.response),
    }
}

fn header_ops(c: &mut Check, path: &str, raw: &RawHeaderOps) -> HeaderEdits {
    let mut edits = HeaderEdits::default();
    for (key, map, out) in [
        ("set", &raw.set, &mut edits.set),
        ("add", &raw.add, &mut edits.add),
    ] {
        for (name, value) in map {
            let hpath = format!("{path}.{key}.{name}");
            let Some(h) = c.header_name(&hpath, name) else {
                continue;
            };
            if matches!(h.as_str(), "host" | "content-length" | "transfer-encoding") {
                c.fail(&hpath, format!("`{h}` cannot be changed here"));
                continue;
            }
            match HeaderValue::from_str(value) {
                Ok(v) => out.push((h, v)),
                Err(_) => c.fail(&hpath, "is not a valid header value"),
            }
        }
    }
    for (i, name) in raw.remove.iter().enumerate() {
        if let Some(h) = c.header_name(&format!("{path}.remove[{i}]"), name) {
            edits.remove.push(h);
        }
    }
    edits
}

fn rewrite(c: &mut Check, path: &str, raw: &RawRewrite, m: Option<&RawMatch>) -> Rewrite {
    let slash = |c: &mut Check, key: &str, v: &str| {
        if !v.starts_with('/') || v.contains(['?', '#']) || HeaderValue::from_str(v).is_err() {
            c.fail(
                format!("{path}.{key}"),
                "must be a path starting with `/`, without `?` or `#`",
            );
        }
    };
    let path_rewrite = match (&raw.path, &raw.path_prefix) {
        (Some(_), Some(_)) => {
            c.fail(path, "give only one of path and path_prefix");
            None
        }
        (Some(p), None) => {
            if raw.prefix.is_some() {
                c.fail(format!("{path}.prefix"), "goes with path_prefix, not path");
            }
            slash(c, "path", p);
            Some(PathRewrite::Full(p.clone()))
        }
        (None, Some(with)) => {
            if !with.is_empty() {
                slash(c, "path_prefix", with);
            }
            let m = m.cloned().unwrap_or_default();
            let prefix = match (&raw.prefix, &m.path_prefix) {
                (Some(p), _) => {
                    slash(c, "prefix", p);
                    Some(p.clone())
                }
                (None, Some(p)) => Some(p.clone()),
                (None, None) if m.path_exact.is_none() && m.path_regex.is_none() => {
                    Some("/".to_string())
                }
                (None, None) => {
                    c.fail(
                        format!("{path}.path_prefix"),
                        "the route matches an exact path or a regex: give the replaced `prefix`, or rewrite the whole `path`",
                    );
                    None
                }
            };
            prefix.map(|prefix| PathRewrite::Prefix {
                prefix,
                with: with.clone(),
            })
        }
        (None, None) => {
            if raw.prefix.is_some() {
                c.fail(format!("{path}.prefix"), "goes with path_prefix");
            }
            None
        }
    };
    let authority = raw.authority.as_ref().and_then(|a| {
        let ok = !a.is_empty()
            && a.parse::<http::uri::Authority>()
                .is_ok_and(|u| u.as_str() == a && !a.contains('@'));
        if !ok {
            c.fail(
                format!("{path}.authority"),
                "must be a host, with an optional `:port`",
            );
            return None;
        }
        HeaderValue::from_str(a).ok()
    });
    Rewrite {
        path: path_rewrite,
        authority,
    }
}

fn cors(c: &mut Check, path: &str, raw: &RawCors) -> CorsPolicy {
    if raw.allow_origins.is_empty() {
        c.fail(
            format!("{path}.allow_origins"),
            "needs at least one origin (`\"*\"` for any)",
        );
    }
    let mut origins = Vec::new();
    for (i, o) in raw.allow_origins.iter().enumerate() {
        if matches!(o, RawHeaderMatch::Exact(e) if e == "*") {
            origins.push(None);
        } else if let Some(v) = value_match(c, &format!("{path}.allow_origins[{i}]"), o) {
            origins.push(Some(v));
        }
    }
    let list = |c: &mut Check, key: &str, items: &[String], names: bool| {
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}.{key}[{i}]");
            let ok = if names {
                item == "*" || c.header_name(&ipath, item).is_some()
            } else {
                item == "*" || c.method(&ipath, item).is_some()
            };
            if !ok {
                return None;
            }
        }
        if items.is_empty() {
            return None;
        }
        HeaderValue::from_str(&items.join(",")).ok()
    };
    let allow_methods = list(c, "allow_methods", &raw.allow_methods, false);
    let allow_headers = list(c, "allow_headers", &raw.allow_headers, true);
    let expose_headers = list(c, "expose_headers", &raw.expose_headers, true);
    let max_age = raw.max_age.as_ref().map(|_| {
        let d = c.duration(&format!("{path}.max_age"), &raw.max_age, Duration::ZERO);
        HeaderValue::from(d.as_secs())
    });
    CorsPolicy {
        origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: raw.allow_credentials.unwrap_or(false),
    }
}

/// Most retries after the first try.
const MAX_RETRIES: u32 = 10;

fn retries(c: &mut Check, path: &str, raw: &RawRetries) -> RetryPolicy {
    if raw.attempts > MAX_RETRIES {
        c.fail(
            format!("{path}.attempts"),
            format!("{} is more than {MAX_RETRIES}", raw.attempts),
        );
    }
    let per_try_timeout = raw.per_try_timeout.as_ref().map(|_| {
        c.duration(
            &format!("{path}.per_try_timeout"),
            &raw.per_try_timeout,
            Duration::from_secs(30),
        )
    });
    if per_try_timeout.is_some_and(|d| d.is_zero()) {
        c.fail(format!("{path}.per_try_timeout"), "must be more than 0s");
    }
    let backoff = c.duration(
        &format!("{path}.backoff"),
        &raw.backoff,
        Duration::from_millis(25),
    );
    let mut statuses = Vec::new();
    for (i, code) in raw.retriable_status_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            c.fail(
                format!("{path}.retriable_status_codes[{i}]"),
                format!("{code} is not an HTTP status"),
            );
        }
        statuses.push(*code);
    }
    let mut on = Vec::new();
    let words: Vec<&str> = if raw.retry_on.is_empty() {
        if statuses.is_empty() {
            statuses.push(503);
        }
        vec![
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "retriable-status-codes",
        ]
    } else {
        raw.retry_on.iter().map(String::as_str).collect()
    };
    for (i, word) in words.iter().enumerate() {
        let cond = match word.trim() {
            "5xx" => RetryOn::FiveXx,
            "gateway-error" => RetryOn::GatewayError,
            "reset" => RetryOn::Reset,
            "connect-failure" => RetryOn::ConnectFailure,
            "refused-stream" => RetryOn::RefusedStream,
            "retriable-status-codes" => RetryOn::StatusCodes,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "cancelled" => RetryOn::Grpc(1),
            "deadline-exceeded" => RetryOn::Grpc(4),
            "resource-exhausted" => RetryOn::Grpc(8),
            "internal" => RetryOn::Grpc(13),
            "unavailable" => RetryOn::Grpc(14),
            other => match other.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => {
                    statuses.push(code);
                    RetryOn::StatusCodes
                }
                _ => {
                    c.fail(
                        format!("{path}.retry_on[{i}]"),
                        format!("`{other}` is not a retry condition (5xx, gateway-error, reset, connect-failure, refused-stream, retriable-status-codes, retriable-4xx, a gRPC status name, or a status code)"),
                    );
                    continue;
                }
            },
        };
        if !on.contains(&cond) {
            on.push(cond);
        }
    }
    RetryPolicy {
        attempts: raw.attempts.min(MAX_RETRIES),
        per_try_timeout,
        on,
        statuses,
        backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::{checked, raw};

    #[test]
    fn a_route_with_its_conditions() {
        let (r, errors) = checked(|c| {
            route(
                c,
                "routes[0]",
                &raw("name: shop\nbackend: v1\nmatch:\n  host: \"*.Shop.Example\"\n  path_regex: /items/[0-9]+\n  method: get\n  headers:\n    x-env: canary\n    x-user: { regex: \"u[0-9]+\" }\nsplit:\n  - { backend: v1, weight: 90 }\n  - { backend: v2, weight: 10 }\n"),
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        let r = r.expect("route");
        assert!(matches!(&r.matcher.host, Some(HostMatch::Suffix(s)) if s == ".shop.example"));
        assert!(matches!(&r.matcher.path, Some(PathMatch::Regex(re)) if re.is_match("/items/12")));
        assert_eq!(r.matcher.method, Some(http::Method::GET));
        assert_eq!(r.matcher.headers.len(), 2);
        assert_eq!(r.split, [("v1".to_string(), 90), ("v2".to_string(), 10)]);
    }

    #[test]
    fn header_changes_retries_and_query_conditions() {
        let (r, errors) = checked(|c| {
            route(
                c,
                "routes[0]",
                &raw("name: r\nbackend: v1\nmatch:\n  query_params: {v: \"2\", u: {regex: \"[0-9]+\"}}\nheaders:\n  request: {set: {x-a: b}, add: {x-b: c}, remove: [x-c]}\n  response: {remove: [server]}\nsplit:\n  - {backend: v1, weight: 1, headers: {request: {set: {x-s: v1}}}}\nretries: {attempts: 2, per_try_timeout: 500ms, retry_on: [5xx, \"409\"]}\n"),
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        let r = r.expect("route");
        assert_eq!(r.matcher.query.len(), 2);
        assert_eq!(r.headers.request.set.len(), 1);
        assert_eq!(r.headers.request.add.len(), 1);
        assert_eq!(r.headers.request.remove.len(), 1);
        assert_eq!(r.headers.response.remove.len(), 1);
        assert_eq!(r.backend_headers["v1"].request.set.len(), 1);
        let retries = r.retries.expect("retries");
        assert_eq!(retries.attempts, 2);
        assert_eq!(
            retries.per_try_timeout,
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(retries.on, [RetryOn::FiveXx, RetryOn::StatusCodes]);
        assert_eq!(retries.statuses, [409]);
        // Istio's defaults when retry_on is left out.
        let (r, _) = checked(|c| {
            route(
                c,
                "routes[0]",
                &raw("name: r\nbackend: v1\nretries: {attempts: 1}\n"),
            )
        });
        let retries = r.and_then(|r| r.retries).expect("retries");
        assert_eq!(retries.statuses, [503]);
        assert!(retries.on.contains(&RetryOn::Grpc(14)));
    }

    #[test]
    fn bad_header_changes_and_retries_are_refused_with_their_key_path() {
        let (_, errors) = checked(|c| {
            route(
                c,
                "routes[0]",
                &raw("name: r\nbackend: v1\nmatch:\n  query_params: {v: {exact: a, regex: b}}\nheaders:\n  request: {set: {host: x, \"bad name\": y}}\nretries: {attempts: 11, retry_on: [sometimes], per_try_timeout: 0s}\n"),
            )
        });
        assert_eq!(
            errors,
            [
                "routes[0].match.query_params.v: give exactly one of `exact` and `regex`",
                "routes[0].headers.request.set.bad name: `bad name` is not a valid header name",
                "routes[0].headers.request.set.host: `host` cannot be changed here",
                "routes[0].retries.attempts: 11 is more than 10",
                "routes[0].retries.per_try_timeout: must be more than 0s",
                "routes[0].retries.retry_on[0]: `sometimes` is not a retry condition (5xx, gateway-error, reset, connect-failure, refused-stream, retriable-status-codes, retriable-4xx, a gRPC status name, or a status code)",
            ]
        );
    }

    #[test]
    fn bad_routes_are_refused_with_their_key_path() {
        let (_, errors) = checked(|c| {
            route(
                c,
                "routes[1]",
                &raw("name: \"my shop\"\nbackend: v1\nmatch:\n  host: \"*shop\"\n  path_prefix: items\n  headers:\n    x-env: { exact: a, regex: b }\nsplit:\n  - { backend: v1, weight: 0 }\n"),
            )
        });
        assert_eq!(
            errors,
            [
                "routes[1].name: must be non-empty and use only letters, digits, `-`, `_` and `.`",
                "routes[1].match.host: a wildcard host is written `*.example.com`",
                "routes[1].match.path_prefix: must start with `/`",
                "routes[1].match.headers.x-env: give exactly one of `exact` and `regex`",
                "routes[1].split: at least one weight must be more than 0",
            ]
        );
    }
}
