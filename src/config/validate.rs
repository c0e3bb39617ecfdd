//! Merging the parsed files into one configuration and validating the
//! whole: top-level settings set in one file only, backend and route names
//! unique across files, every backend a route names defined somewhere, the
//! defaults filled in (listener, admin address, store beside the first
//! file). Each section's own checks are in the files beside this one.

use std::collections::BTreeMap;
use std::time::Duration;

use super::backends::backend;
use super::check::{Check, Origin};
use super::error::{ConfigError, ConfigErrors};
use super::listen::{listeners, socket_addr};
use super::model::*;
use super::raw::RawConfig;
use super::routes::route;
use super::settings::{
    admin_hosts, comparison, limits, location_from, redact, store, trusted_proxies,
    DEFAULT_STORE_FILE,
};

/// Default listener address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// Default most admin connections open at once.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;

/// Merges the parsed files and validates the whole.
pub fn validate(files: Vec<(String, RawConfig)>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut config = Config {
        listeners: Vec::new(),
        admin: DEFAULT_ADMIN.parse().expect("default admin address parses"),
        admin_token: None,
        admin_hosts: Vec::new(),
        admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        metrics_listen: None,
        backends: BTreeMap::new(),
        routes: Vec::new(),
        access_log: true,
        limits: Limits::default(),
        shutdown_grace: Duration::from_secs(30),
        shutdown_delay: Duration::ZERO,
        watch_interval: Duration::from_secs(1),
        store: StoreLocation::File(DEFAULT_STORE_FILE.into()),
        fleet_heartbeat: Duration::from_secs(1),
        comparison: ComparisonSettings::default(),
        sources: Vec::new(),
        normalize_path: true,
        trusted_proxies: Vec::new(),

        redact: crate::diff::Redactor::default(),
        egress: None,
    };
    let mut scalar_origin: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut backend_origin: BTreeMap<String, Origin> = BTreeMap::new();
    let mut route_origin: BTreeMap<String, Origin> = BTreeMap::new();
    // Route references are checked after every file's backends are known.
    let mut route_refs: Vec<(String, String, String)> = Vec::new(); // (file, path, backend)

    for (file, raw) in &files {
        let mut c = Check {
            file,
            errors: &mut errors,
        };
        let mut once = |key: &'static str, present: bool, c: &mut Check| -> bool {
            if !present {
                return false;
            }
            if let Some(first) = scalar_origin.get(key) {
                c.fail(
                    key,
                    format!("is also set in {first}; set it in one file only"),
                );
                return false;
            }
            scalar_origin.insert(key, c.file.to_string());
            true
        };

        if once("listen", raw.listen.is_some(), &mut c) {
            config.listeners = listeners(&mut c, raw.listen.as_ref().expect("checked"));
        }
        if once("admin", raw.admin.is_some(), &mut c) {
            if let Some(a) = socket_addr(&mut c, "admin", raw.admin.as_deref().unwrap_or_default())
            {
                config.admin = a;
            }
        }
        if once("admin_token", raw.admin_token.is_some(), &mut c) {
            let t = raw.admin_token.clone().unwrap_or_default();
            if t.len() < 16 {
                c.fail("admin_token", "must be at least 16 characters");
            }
            config.admin_token = Some(t);
        }
        if once("admin_hosts", !raw.admin_hosts.is_empty(), &mut c) {
            config.admin_hosts = admin_hosts(&mut c, &raw.admin_hosts);
        }
        if once(
            "admin_max_connections",
            raw.admin_max_connections.is_some(),
            &mut c,
        ) {
            let n = raw.admin_max_connections.unwrap_or_default();
            if n == 0 {
                c.fail("admin_max_connections", "must be at least 1");
            }
            config.admin_max_connections = n.max(1);
        }
        if once("metrics", raw.metrics.is_some(), &mut c) {
            let text = raw.metrics.as_ref().map_or("", |m| m.listen.as_str());
            config.metrics_listen = socket_addr(&mut c, "metrics.listen", text);
        }
        if once("access_log", raw.access_log.is_some(), &mut c) {
            match raw.access_log.as_deref() {
                Some("stdout") => config.access_log = true,
                Some("off") => config.access_log = false,
                Some(other) => c.fail(
                    "access_log",
                    format!("`{other}` is not one of: stdout, off"),
                ),
                None => {}
            }
        }
        if once("limits", raw.limits.is_some(), &mut c) {
            config.limits = limits(&mut c, &raw.limits.clone().unwrap_or_default());
        }
        if once("shutdown_grace", raw.shutdown_grace.is_some(), &mut c) {
            config.shutdown_grace =
                c.duration("shutdown_grace", &raw.shutdown_grace, config.shutdown_grace);
        }
        if once("shutdown_delay", raw.shutdown_delay.is_some(), &mut c) {
            config.shutdown_delay =
                c.duration("shutdown_delay", &raw.shutdown_delay, config.shutdown_delay);
        }
        if once("store", raw.store.is_some(), &mut c) {
            config.store = store(&mut c, &raw.store.clone().unwrap_or_default());
        }
        if once("fleet_heartbeat", raw.fleet_heartbeat.is_some(), &mut c) {
            config.fleet_heartbeat = c.duration(
                "fleet_heartbeat",
                &raw.fleet_heartbeat,
                config.fleet_heartbeat,
            );
            if config.fleet_heartbeat.is_zero() {
                c.fail("fleet_heartbeat", "must be more than 0s");
            }
        }
        if once("comparison", raw.comparison.is_some(), &mut c) {
            config.comparison = comparison(&mut c, &raw.comparison.clone().unwrap_or_default());
        }
        if once("redact", raw.redact.is_some(), &mut c) {
            config.redact = redact(&mut c, &raw.redact.clone().unwrap_or_default());
        }
        if once("watch_interval", raw.watch_interval.is_some(), &mut c) {
            config.watch_interval =
                c.duration("watch_interval", &raw.watch_interval, config.watch_interval);
        }

        if once("egress", raw.egress.is_some(), &mut c) {
            let mut refs = Vec::new();
            config.egress = raw
                .egress
                .as_ref()
                .and_then(|e| super::egress::egress(&mut c, e, &mut refs));
            route_refs.extend(refs.into_iter().map(|(p, b)| (file.clone(), p, b)));
        }
        if once("normalize_path", raw.normalize_path.is_some(), &mut c) {
            config.normalize_path = raw.normalize_path.unwrap_or(true);
        }
        if once("trusted_proxies", !raw.trusted_proxies.is_empty(), &mut c) {
            config.trusted_proxies = trusted_proxies(&mut c, &raw.trusted_proxies);
        }

        for (name, b) in &raw.backends {
            let path = format!("backends.{name}");
            if let Some(first) = backend_origin.get(name) {
                c.fail(
                    &path,
                    format!(
                        "backend `{name}` is also defined in {} at {}",
                        first.file, first.path
                    ),
                );
                continue;
            }
            backend_origin.insert(
                name.clone(),
                Origin {
                    file: file.clone(),
                    path: path.clone(),
                },
            );
            if let Some(backend) = backend(&mut c, &path, name, b) {
                config.backends.insert(name.clone(), backend);
            }
        }

        for (i, r) in raw.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if let Some(first) = route_origin.get(&r.name) {
                c.fail(
                    format!("{path}.name"),
                    format!(
                        "route `{}` is also defined in {} at {}",
                        r.name, first.file, first.path
                    ),
                );
                continue;
            }
            route_origin.insert(
                r.name.clone(),
                Origin {
                    file: file.clone(),
                    path: path.clone(),
                },
            );
            route_refs.push((file.clone(), format!("{path}.backend"), r.backend.clone()));
            for (j, s) in r.split.iter().enumerate() {
                route_refs.push((
                    file.clone(),
                    format!("{path}.split[{j}].backend"),
                    s.backend.clone(),
                ));
            }
            if let Some(s) = &r.secondary {
                route_refs.push((file.clone(), format!("{path}.secondary"), s.clone()));
            }
            for (j, m) in r.mirrors.iter().enumerate() {
                route_refs.push((
                    file.clone(),
                    format!("{path}.mirrors[{j}].backend"),
                    m.backend.clone(),
                ));
            }
            if let Some(route) = route(&mut c, &path, r) {
                config.routes.push(route);
            }
        }
    }

    for (file, path, name) in route_refs {
        if !backend_origin.contains_key(&name) {
            let known: Vec<&str> = backend_origin.keys().map(String::as_str).collect();
            errors.push(ConfigError::new(
                file,
                path,
                format!(
                    "no backend named `{name}` (defined: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }

    if config.listeners.is_empty() {
        config.listeners.push(Listener {
            address: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            tls: None,
        });
    }
    if !config.admin.ip().is_loopback() && config.admin_token.is_none() {
        let file = scalar_origin
            .get("admin")
            .cloned()
            .unwrap_or_else(|| "<defaults>".into());
        errors.push(ConfigError::new(
            file,
            "admin",
            format!(
                "{} is not a loopback address; set admin_token to expose the admin server",
                config.admin
            ),
        ));
    }

    // The default store lives beside the first config file (as documented),
    // not in whatever directory the process happens to start in.
    if !scalar_origin.contains_key("store") {
        if let Some((first, _)) = files.first() {
            let base = std::path::Path::new(first)
                .parent()
                .filter(|p| !p.as_os_str().is_empty());
            config.store = location_from(DEFAULT_STORE_FILE, base);
        }
    }

    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse::parse_text;

    fn files(texts: &[(&str, &str)]) -> Vec<(String, RawConfig)> {
        texts
            .iter()
            .map(|(f, t)| (f.to_string(), parse_text(f, t).expect("parses")))
            .collect()
    }

    #[test]
    fn files_merge_into_one_config_with_defaults() {
        let config = validate(files(&[
            (
                "conf/a.yaml",
                "backends:\n  v1: { endpoints: [\"127.0.0.1:9000\"] }\n",
            ),
            (
                "conf/b.yaml",
                "access_log: off\nroutes:\n  - { name: r, backend: v1 }\n",
            ),
        ]))
        .expect("valid");
        assert_eq!(config.backends.len(), 1);
        assert_eq!(config.routes[0].name, "r");
        assert!(!config.access_log);
        assert_eq!(config.listeners[0].address, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.admin, DEFAULT_ADMIN.parse().unwrap());
        assert_eq!(
            config.store,
            StoreLocation::File(std::path::PathBuf::from("conf").join(DEFAULT_STORE_FILE))
        );
    }

    #[test]
    fn conflicts_across_files_are_refused_with_file_and_key_path() {
        let err = validate(files(&[
            ("a.yaml", "access_log: off\nbackends:\n  v1: { endpoints: [\"127.0.0.1:9000\"] }\n"),
            ("b.yaml", "access_log: stdout\nbackends:\n  v1: { endpoints: [\"127.0.0.1:9001\"] }\nroutes:\n  - { name: r, backend: v9 }\n"),
            ("c.yaml", "admin: 0.0.0.0:9901\n"),
        ]))
        .expect_err("refused");
        let lines: Vec<String> = err.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "b.yaml: access_log: is also set in a.yaml; set it in one file only",
                "b.yaml: backends.v1: backend `v1` is also defined in a.yaml at backends.v1",
                "b.yaml: routes[0].backend: no backend named `v9` (defined: v1)",
                "c.yaml: admin: 0.0.0.0:9901 is not a loopback address; set admin_token to expose the admin server",
            ]
        );
    }
}
