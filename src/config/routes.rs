//! The `routes:` section: each route's name, its match conditions (host,
//! path, method, headers), its weighted split, and the mirrors, comparison
//! rules and promotion it carries (checked in [`super::mirrors`] and
//! [`super::promotion`]).

use super::check::Check;
use super::mirrors::{mirror, route_compare};
use super::model::{HostMatch, PathMatch, RouteConfig, RouteMatch, ValueMatch};
use super::promotion::promotion;
use super::raw::{RawHeaderMatch, RawHeaderRule, RawMatch, RawRoute};

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
    Some(RouteConfig {
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

fn route_match(c: &mut Check, path: &str, raw: &RawMatch) -> RouteMatch {
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
        let value = match rule {
            RawHeaderMatch::Exact(v) => Some(ValueMatch::Exact(v.clone())),
            RawHeaderMatch::Rule(RawHeaderRule {
                exact: Some(v),
                regex: None,
            }) => Some(ValueMatch::Exact(v.clone())),
            RawHeaderMatch::Rule(RawHeaderRule {
                exact: None,
                regex: Some(r),
            }) => c.regex(&format!("{hpath}.regex"), r).map(ValueMatch::Regex),
            RawHeaderMatch::Rule(_) => {
                c.fail(&hpath, "give exactly one of `exact` and `regex`");
                None
            }
        };
        if let Some(v) = value {
            headers.push((h, v));
        }
    }
    RouteMatch {
        host,
        path: path_match,
        method,
        headers,
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
