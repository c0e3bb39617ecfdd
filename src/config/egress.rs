//! The `egress:` section: shadowgate as the apps' egress proxy (issue #13).
//! The live side (v1, the primaries) has its outbound calls forwarded and
//! kept; the shadow side (v2, the mirrors) is answered with v1's kept
//! answers, so a shadow never charges twice. Raw shape and validation with
//! key paths; the running part is `crate::egress`.

use std::collections::BTreeSet;
use std::time::Duration;

use super::check::Check;
use super::listen::socket_addr;
use super::model::{EgressConfig, EgressService, ShadowMode, Unlisted};
use super::raw::RawEgress;
use super::routes::route_match;

fn unlisted(c: &mut Check, path: &str, raw: &Option<String>, default: Unlisted) -> Unlisted {
    match raw.as_deref() {
        None => default,
        Some("forward") => Unlisted::Forward,
        Some("deny") => Unlisted::Deny,
        Some(other) => {
            c.fail(path, format!("`{other}` is not one of: forward, deny"));
            default
        }
    }
}

/// Checks `egress:`; backend names are checked by the caller once every
/// file's backends are known (`backend_refs` gets `(key path, name)`).
pub(super) fn egress(
    c: &mut Check,
    raw: &RawEgress,
    backend_refs: &mut Vec<(String, String)>,
) -> Option<EgressConfig> {
    let listen = socket_addr(c, "egress.listen", &raw.listen);
    let shadow_listen = socket_addr(c, "egress.shadow_listen", &raw.shadow_listen);
    if let (Some(a), Some(b)) = (listen, shadow_listen) {
        if a == b && a.port() != 0 {
            c.fail(
                "egress.shadow_listen",
                format!("is the same address as egress.listen ({a}); the two sides need their own"),
            );
        }
    }
    let names = raw
        .correlate
        .clone()
        .unwrap_or_else(|| vec!["x-request-id".into(), "traceparent".into()]);
    if names.is_empty() {
        c.fail("egress.correlate", "needs at least one header name");
    }
    let correlate = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| c.header_name(&format!("egress.correlate[{i}]"), n))
        .collect();
    let keep = c.duration("egress.keep", &raw.keep, Duration::from_secs(30));
    if keep.is_zero() {
        c.fail("egress.keep", "must be more than 0s");
    }
    let max_exchanges = raw.max_exchanges.unwrap_or(10_000);
    if max_exchanges == 0 {
        c.fail("egress.max_exchanges", "must be at least 1");
    }
    let max_bytes = c.size("egress.max_bytes", &raw.max_bytes, 64 << 20) as usize;
    let max_body_bytes = c.size("egress.max_body_bytes", &raw.max_body_bytes, 1 << 20) as usize;
    let live_default = unlisted(
        c,
        "egress.live_default",
        &raw.live_default,
        Unlisted::Forward,
    );
    let shadow_default = unlisted(
        c,
        "egress.shadow_default",
        &raw.shadow_default,
        Unlisted::Deny,
    );
    let mut seen = BTreeSet::new();
    let mut services = Vec::new();
    for (i, s) in raw.services.iter().enumerate() {
        let path = format!("egress.services[{i}]");
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            c.fail(
                format!("{path}.name"),
                "must be non-empty and use only letters, digits, `-`, `_` and `.`",
            );
        }
        if !seen.insert(s.name.clone()) {
            c.fail(
                format!("{path}.name"),
                format!("service `{}` is listed twice", s.name),
            );
        }
        let matcher = s
            .match_
            .as_ref()
            .map(|m| route_match(c, &format!("{path}.match"), m))
            .unwrap_or_default();
        backend_refs.push((format!("{path}.backend"), s.backend.clone()));
        let shadow = match s.shadow.as_deref() {
            None | Some("replay") => ShadowMode::Replay,
            Some("forward") => ShadowMode::Forward,
            Some("deny") => ShadowMode::Deny,
            Some(other) => {
                c.fail(
                    format!("{path}.shadow"),
                    format!("`{other}` is not one of: replay, forward, deny"),
                );
                ShadowMode::Replay
            }
        };
        services.push(EgressService {
            name: s.name.clone(),
            matcher,
            backend: s.backend.clone(),
            shadow,
            wait: c.duration(&format!("{path}.wait"), &s.wait, Duration::from_secs(2)),
            compare: s.compare.unwrap_or(false),
        });
    }
    Some(EgressConfig {
        listen: listen?,
        shadow_listen: shadow_listen?,
        correlate,
        keep,
        max_exchanges: max_exchanges.max(1),
        max_bytes,
        max_body_bytes,
        live_default,
        shadow_default,
        services,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::from_yaml;

    const BASE: &str = "store: memory\nbackends:\n  shop: { endpoints: [\"127.0.0.1:9000\"] }\n  provider: { endpoints: [\"127.0.0.1:9001\"] }\nroutes:\n  - { name: r, backend: shop }\n";

    #[test]
    fn egress_is_read_with_defaults() {
        let yaml = format!("{BASE}egress:\n  listen: 127.0.0.1:15001\n  shadow_listen: 127.0.0.1:15002\n  services:\n    - {{ name: payments, match: {{ host: payments.example }}, backend: provider, wait: 1s, compare: true }}\n");
        let c = from_yaml("t.yaml", &yaml).expect("valid");
        let e = c.egress.expect("egress");
        assert_eq!(e.correlate.len(), 2);
        assert_eq!(e.keep, std::time::Duration::from_secs(30));
        assert_eq!(e.services[0].shadow, crate::config::ShadowMode::Replay);
        assert!(e.services[0].compare);
        assert_eq!(e.shadow_default, crate::config::Unlisted::Deny);
    }

    #[test]
    fn bad_egress_names_file_key_and_reason() {
        let yaml = format!("{BASE}egress:\n  listen: 127.0.0.1:15001\n  shadow_listen: 127.0.0.1:15001\n  keep: soon\n  shadow_default: maybe\n  services:\n    - {{ name: payments, backend: nowhere, shadow: mock }}\n");
        let err = from_yaml("t.yaml", &yaml).expect_err("refused").to_string();
        for want in [
            "t.yaml: egress.shadow_listen: is the same address as egress.listen",
            "t.yaml: egress.keep:",
            "t.yaml: egress.shadow_default: `maybe` is not one of: forward, deny",
            "t.yaml: egress.services[0].shadow: `mock` is not one of: replay, forward, deny",
            "t.yaml: egress.services[0].backend: no backend named `nowhere`",
        ] {
            assert!(err.contains(want), "{want}\n{err}");
        }
    }
}
