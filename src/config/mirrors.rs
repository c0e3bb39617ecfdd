//! A route's `mirrors:` (share, sampling key, methods, header rewrites,
//! body and time limits) and its comparison rules (`compare:`, `noise:`,
//! `secondary:`), checked as the comparison will use them.

use std::time::Duration;

use http::HeaderValue;

use super::check::Check;
use super::model::{MirrorConfig, RouteCompareConfig};
use super::raw::{RawMirror, RawRoute};

pub(super) fn mirror(c: &mut Check, path: &str, raw: &RawMirror) -> MirrorConfig {
    let percent = raw.percent.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&percent) {
        c.fail(
            format!("{path}.percent"),
            format!("{percent} is not between 0 and 100"),
        );
    }
    let methods = raw.methods.as_ref().map(|ms| {
        ms.iter()
            .enumerate()
            .filter_map(|(i, m)| c.method(&format!("{path}.methods[{i}]"), m))
            .collect()
    });
    let mut set_headers = Vec::new();
    let mut remove_headers = Vec::new();
    if let Some(rules) = &raw.headers {
        for (name, value) in &rules.set {
            let hpath = format!("{path}.headers.set.{name}");
            let Some(h) = c.header_name(&hpath, name) else {
                continue;
            };
            match HeaderValue::from_str(value) {
                Ok(v) => set_headers.push((h, v)),
                Err(_) => c.fail(hpath, "is not a valid header value"),
            }
        }
        for (i, name) in rules.remove.iter().enumerate() {
            if let Some(h) = c.header_name(&format!("{path}.headers.remove[{i}]"), name) {
                remove_headers.push(h);
            }
        }
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(1024);
    if max_in_flight == 0 {
        c.fail(format!("{path}.max_in_flight"), "must be at least 1");
    }
    let host_suffix = raw
        .host_suffix
        .clone()
        .unwrap_or_else(|| "-shadow".to_string());
    if !host_suffix
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "-._".contains(ch))
    {
        c.fail(
            format!("{path}.host_suffix"),
            "may use only letters, digits, `-`, `_` and `.`",
        );
    }
    if let Some(k) = &raw.sample_key {
        c.header_name(&format!("{path}.sample_key"), k);
    }
    let compare_max_body_bytes = c.size(
        &format!("{path}.compare_max_body_bytes"),
        &raw.compare_max_body_bytes,
        1 << 20,
    );
    let timeout = c.duration(
        &format!("{path}.timeout"),
        &raw.timeout,
        Duration::from_secs(5),
    );
    if timeout.is_zero() {
        c.fail(format!("{path}.timeout"), "must be more than 0");
    }
    MirrorConfig {
        backend: raw.backend.clone(),
        percent,
        sample_key: raw.sample_key.as_ref().map(|k| k.to_ascii_lowercase()),
        host_suffix,
        methods,
        set_headers,
        remove_headers,
        max_body_bytes: c.size(
            &format!("{path}.max_body_bytes"),
            &raw.max_body_bytes,
            1 << 20,
        ),
        timeout,
        max_in_flight,
        compare: raw.compare.unwrap_or(false),
        compare_max_body_bytes,
    }
}

pub(super) fn route_compare(c: &mut Check, path: &str, raw: &RawRoute) -> RouteCompareConfig {
    let r = raw.compare.clone().unwrap_or_default();
    let rules = crate::diff::RulesConfig {
        ignore_headers: r.ignore_headers,
        ignore_paths: r.ignore_paths,
        unordered_paths: r.unordered_paths,
        numeric_tolerance: r.numeric_tolerance,
    };
    if let Err(e) = crate::diff::CompareRules::new(&rules) {
        c.fail(format!("{path}.compare"), e.to_string());
    }
    let max_endpoints = r
        .max_endpoints
        .unwrap_or(crate::diff::DEFAULT_MAX_ENDPOINTS);
    if let Err(e) = crate::diff::EndpointTemplater::new(&r.endpoints, max_endpoints) {
        c.fail(format!("{path}.compare.endpoints"), e.to_string());
    }
    let mut noise = crate::diff::NoiseThresholds::default();
    if let Some(n) = &raw.noise {
        for (key, value, slot) in [
            ("relative", n.relative, &mut noise.relative),
            ("absolute", n.absolute, &mut noise.absolute),
        ] {
            if let Some(v) = value {
                if !(0.0..=100.0).contains(&v) {
                    c.fail(
                        format!("{path}.noise.{key}"),
                        format!("{v} is not between 0 and 100"),
                    );
                }
                *slot = v;
            }
        }
    }
    if raw.secondary.is_some() && !raw.mirrors.iter().any(|m| m.compare == Some(true)) {
        c.fail(
            format!("{path}.secondary"),
            "is only used with a mirror that has `compare: true`",
        );
    }
    RouteCompareConfig {
        rules,
        endpoints: r.endpoints,
        max_endpoints,
        noise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::{checked, raw};

    #[test]
    fn a_mirror_and_the_routes_compare_rules() {
        let route: RawRoute = raw("name: shop\nbackend: v1\nmirrors:\n  - backend: v2\n    percent: 25\n    methods: [get]\n    headers: { set: { x-shadow: \"1\" }, remove: [authorization] }\n    compare: true\ncompare:\n  ignore_headers: [date]\n  endpoints: [\"/items/{id}\"]\nnoise: { relative: 5 }\nsecondary: v1b\n");
        let ((m, cmp), errors) = checked(|c| {
            (
                mirror(c, "routes[0].mirrors[0]", &route.mirrors[0]),
                route_compare(c, "routes[0]", &route),
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(m.percent, 25.0);
        assert_eq!(m.methods, Some(vec![http::Method::GET]));
        assert_eq!(m.set_headers.len(), 1);
        assert_eq!(m.remove_headers.len(), 1);
        assert_eq!(m.host_suffix, "-shadow");
        assert_eq!(m.timeout, Duration::from_secs(5));
        assert!(m.compare);
        assert_eq!(cmp.rules.ignore_headers, ["date"]);
        assert_eq!(cmp.noise.relative, 5.0);
    }

    #[test]
    fn bad_mirrors_and_rules_are_refused_with_their_key_path() {
        let route: RawRoute = raw("name: shop\nbackend: v1\nmirrors:\n  - backend: v2\n    percent: 150\n    max_in_flight: 0\n    host_suffix: \"/x\"\n    timeout: 0s\nnoise: { absolute: -1 }\nsecondary: v1b\n");
        let (_, errors) = checked(|c| {
            mirror(c, "routes[0].mirrors[0]", &route.mirrors[0]);
            route_compare(c, "routes[0]", &route);
        });
        assert_eq!(
            errors,
            [
                "routes[0].mirrors[0].percent: 150 is not between 0 and 100",
                "routes[0].mirrors[0].max_in_flight: must be at least 1",
                "routes[0].mirrors[0].host_suffix: may use only letters, digits, `-`, `_` and `.`",
                "routes[0].mirrors[0].timeout: must be more than 0",
                "routes[0].noise.absolute: -1 is not between 0 and 100",
                "routes[0].secondary: is only used with a mirror that has `compare: true`",
            ]
        );
    }
}
