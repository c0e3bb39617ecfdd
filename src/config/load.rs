//! Reading configuration files: parse each file (native YAML), merge them,
//! validate the result. Each step reports problems with the file, the key
//! path and the reason.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde::Deserialize;

use super::error::{ConfigError, ConfigErrors};
use super::model::*;
use super::raw::*;
use super::units::{parse_duration, parse_size};
use crate::proxy::tls;

/// Default listener address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// Default most admin connections open at once.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;

/// Reads, merges and validates the given files. Files may hold Kubernetes
/// manifests (Istio, Gateway API) beside native config: see [`super::kube`].
///
/// A file that holds no settings at all (empty, or only comments: what a
/// truncate-then-write editor leaves for a moment) and a configuration
/// without any route (every request would be answered 404) are refused, so
/// a reload never swaps such a file in.
pub fn load_files(paths: &[PathBuf]) -> Result<Config, ConfigErrors> {
    let files = super::kube::parse_files(paths)?;
    let mut errors: Vec<ConfigError> = files
        .iter()
        .filter(|(_, raw)| *raw == RawConfig::default())
        .map(|(file, _)| {
            ConfigError::new(
                file.as_str(),
                "",
                "the file holds no settings (empty, or truncated while being written)",
            )
        })
        .collect();
    match validate(files) {
        Ok(mut config) if errors.is_empty() => {
            if config.routes.is_empty() {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                return Err(ConfigError::new(
                    names.join(", "),
                    "routes",
                    "no routes are defined; every request would be answered 404",
                )
                .into());
            }
            config.sources = paths.to_vec();
            Ok(config)
        }
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            errors.extend(e.0);
            Err(ConfigErrors(errors))
        }
    }
}

/// Like [`load_files`], for files already read: `(name, text)` pairs.
/// Kubernetes objects of all files are converted together, with the
/// `services:` map of all native documents, and merged as one more file.
pub fn load_texts(files: &[(String, String)]) -> Result<Config, ConfigErrors> {
    validate(super::kube::parse_texts(files)?)
}

/// Parses one file's text into the raw structs.
pub fn parse_text(file: &str, text: &str) -> Result<RawConfig, ConfigErrors> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    let de = serde_norway::Deserializer::from_str(text);
    RawConfig::deserialize_with_path(de)
        .map_err(|(path, reason)| ConfigError::new(file, path, reason).into())
}

trait DeserializeWithPath: Sized {
    fn deserialize_with_path(de: serde_norway::Deserializer<'_>) -> Result<Self, (String, String)>;
}

impl<T: for<'de> Deserialize<'de>> DeserializeWithPath for T {
    fn deserialize_with_path(de: serde_norway::Deserializer<'_>) -> Result<Self, (String, String)> {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let mut reason = e.into_inner().to_string();
            // The YAML library prefixes its own, coarser path: keep ours only.
            if let Some((prefix, rest)) = reason.split_once(": ") {
                if !prefix.contains(' ') && path.starts_with(prefix) {
                    reason = rest.to_string();
                }
            }
            (path, reason)
        })
    }
}

/// Collects errors while validating one file's items.
struct Check<'a> {
    file: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl Check<'_> {
    fn fail(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(self.file, path, reason));
    }

    fn duration(&mut self, path: &str, raw: &Option<String>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(t) => parse_duration(t).unwrap_or_else(|e| {
                self.fail(path, e);
                default
            }),
        }
    }

    fn size(&mut self, path: &str, raw: &Option<RawSize>, default: u64) -> u64 {
        match raw {
            None => default,
            Some(s) => parse_size(s).unwrap_or_else(|e| {
                self.fail(path, e);
                default
            }),
        }
    }

    /// A file named in the configuration: relative paths are relative to the
    /// configuration file's directory.
    fn resolve(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        match Path::new(self.file).parent() {
            Some(dir) if p.is_relative() && !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn regex(&mut self, path: &str, pattern: &str) -> Option<Regex> {
        match Regex::new(&format!("^(?:{pattern})$")) {
            Ok(r) => Some(r),
            Err(e) => {
                self.fail(path, format!("invalid regular expression: {e}"));
                None
            }
        }
    }

    fn method(&mut self, path: &str, raw: &str) -> Option<Method> {
        match Method::from_bytes(raw.to_ascii_uppercase().as_bytes()) {
            Ok(m) => Some(m),
            Err(_) => {
                self.fail(path, format!("`{raw}` is not an HTTP method"));
                None
            }
        }
    }

    fn header_name(&mut self, path: &str, raw: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(raw.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.fail(path, format!("`{raw}` is not a valid header name"));
                None
            }
        }
    }
}

/// Where a named item was defined, for duplicate errors.
struct Origin {
    file: String,
    path: String,
}

/// Merges the parsed files and validates the whole.
pub fn validate(files: Vec<(String, RawConfig)>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut config = Config {
        listeners: Vec::new(),
        admin: DEFAULT_ADMIN.parse().expect("default admin address parses"),
        admin_token: None,
        admin_hosts: Vec::new(),
        admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        backends: BTreeMap::new(),
        routes: Vec::new(),
        access_log: true,
        limits: Limits::default(),
        shutdown_grace: Duration::from_secs(30),
        watch_interval: Duration::from_secs(1),
        store: crate::store::StoreLocation::File(crate::store::DEFAULT_FILE.into()),
        comparison: ComparisonSettings::default(),
        sources: Vec::new(),
        normalize_path: true,
        trusted_proxies: Vec::new(),

        redact: crate::diff::Redactor::default(),
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
            for (i, h) in raw.admin_hosts.iter().enumerate() {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                if h.is_empty()
                    || h.contains(':')
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    c.fail(
                        format!("admin_hosts[{i}]"),
                        format!("`{h}` is not a host name like shadowgate-admin.default.svc (no port, no scheme)"),
                    );
                } else {
                    config.admin_hosts.push(h);
                }
            }
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
            let l = raw.limits.clone().unwrap_or_default();
            let d = Limits::default();
            config.limits = Limits {
                header_read_timeout: c.duration(
                    "limits.header_read_timeout",
                    &l.header_read_timeout,
                    d.header_read_timeout,
                ),
                max_header_bytes: c.size(
                    "limits.max_header_bytes",
                    &l.max_header_bytes,
                    d.max_header_bytes as u64,
                ) as usize,
                max_headers: l.max_headers.unwrap_or(d.max_headers),
                shadow_memory: usize::try_from(c.size(
                    "limits.shadow_memory",
                    &l.shadow_memory,
                    d.shadow_memory as u64,
                ))
                .unwrap_or(usize::MAX),
            };
            if config.limits.max_header_bytes < 8192 {
                c.fail("limits.max_header_bytes", "must be at least 8KiB");
            }
            if config.limits.max_headers == 0 {
                c.fail("limits.max_headers", "must be at least 1");
            }
        }
        if once("shutdown_grace", raw.shutdown_grace.is_some(), &mut c) {
            config.shutdown_grace =
                c.duration("shutdown_grace", &raw.shutdown_grace, config.shutdown_grace);
        }
        if once("store", raw.store.is_some(), &mut c) {
            let value = raw.store.clone().unwrap_or_default();
            if value.is_empty() {
                c.fail("store", "give a file path or `memory`");
            }
            let base = std::path::Path::new(file)
                .parent()
                .filter(|p| !p.as_os_str().is_empty());
            config.store = crate::store::location_from(&value, base);
        }
        if once("comparison", raw.comparison.is_some(), &mut c) {
            let r = raw.comparison.clone().unwrap_or_default();
            let d = ComparisonSettings::default();
            config.comparison = ComparisonSettings {
                workers: r.workers.unwrap_or(d.workers),
                queue: r.queue.unwrap_or(d.queue),
                max_examples: r.max_examples.unwrap_or(d.max_examples),
                example_max_age: c.duration(
                    "comparison.example_max_age",
                    &r.example_max_age,
                    d.example_max_age,
                ),
            };
            if config.comparison.workers == 0 || config.comparison.workers > 64 {
                c.fail("comparison.workers", "must be between 1 and 64");
            }
            if config.comparison.queue == 0 {
                c.fail("comparison.queue", "must be at least 1");
            }
        }
        if once("redact", raw.redact.is_some(), &mut c) {
            let r = raw.redact.clone().unwrap_or_default();
            for (i, h) in r.headers.iter().enumerate() {
                if http::HeaderName::from_bytes(h.trim().as_bytes()).is_err() {
                    c.fail(
                        format!("redact.headers[{i}]"),
                        format!("`{h}` is not a header name"),
                    );
                }
            }
            for (i, q) in r.query_params.iter().enumerate() {
                if q.trim().is_empty() {
                    c.fail(format!("redact.query_params[{i}]"), "must not be empty");
                }
            }
            config.redact = crate::diff::Redactor::new(&r.headers, &r.query_params);
        }
        if once("watch_interval", raw.watch_interval.is_some(), &mut c) {
            config.watch_interval =
                c.duration("watch_interval", &raw.watch_interval, config.watch_interval);
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
            config.store = crate::store::location_from(crate::store::DEFAULT_FILE, base);
        }
    }

    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn socket_addr(c: &mut Check, path: &str, text: &str) -> Option<SocketAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    match text.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            c.fail(
                path,
                format!("`{text}` is not a socket address like 127.0.0.1:8080"),
            );
            None
        }
    }
}

fn listeners(c: &mut Check, raw: &RawListen) -> Vec<Listener> {
    match raw {
        RawListen::One(addr) => socket_addr(c, "listen", addr)
            .map(|address| vec![Listener { address, tls: None }])
            .unwrap_or_default(),
        RawListen::Many(list) => {
            if list.is_empty() {
                c.fail("listen", "needs at least one listener");
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let path = format!("listen[{i}]");
                    let address = socket_addr(c, &format!("{path}.address"), &l.address)?;
                    let tls = match &l.tls {
                        Some(t) => Some(listener_tls(c, &format!("{path}.tls"), t)?),
                        None => None,
                    };
                    Some(Listener { address, tls })
                })
                .collect()
        }
    }
}

/// Reads and parses a listener's certificates and keys now, so a bad file
/// is reported at load (and on reload) instead of at the first handshake.
fn listener_tls(c: &mut Check, path: &str, raw: &RawTls) -> Option<ListenerTls> {
    let mut entries: Vec<(String, &str, &str, &[String])> = Vec::new();
    match (&raw.cert, &raw.key, raw.certificates.is_empty()) {
        (Some(cert), Some(key), true) => entries.push((path.to_string(), cert, key, &[])),
        (None, None, false) => {
            for (i, e) in raw.certificates.iter().enumerate() {
                entries.push((
                    format!("{path}.certificates[{i}]"),
                    &e.cert,
                    &e.key,
                    &e.server_names,
                ));
            }
        }
        (None, None, true) => {
            c.fail(path, "give `cert` and `key`, or a list of `certificates`");
            return None;
        }
        (_, _, false) => {
            c.fail(
                path,
                "give either `cert` and `key` or `certificates`, not both",
            );
            return None;
        }
        (Some(_), None, true) => {
            c.fail(format!("{path}.key"), "`cert` needs a `key`");
            return None;
        }
        (None, Some(_), true) => {
            c.fail(format!("{path}.cert"), "`key` needs a `cert`");
            return None;
        }
    }
    let mut certificates = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, (epath, cert, key, names)) in entries.into_iter().enumerate() {
        let mut server_names = Vec::new();
        for (j, n) in names.iter().enumerate() {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            let npath = format!("{epath}.server_names[{j}]");
            if !tls::valid_server_name(&n) {
                c.fail(
                    npath,
                    format!("`{n}` is not a DNS name like example.com or *.example.com"),
                );
            } else if let Some(first) = seen.get(&n) {
                c.fail(npath, format!("`{n}` is already listed at {first}"));
            } else {
                seen.insert(n.clone(), npath);
                server_names.push(n);
            }
        }
        if i > 0 && names.is_empty() {
            c.fail(
                format!("{epath}.server_names"),
                "every certificate but the first needs server_names",
            );
        }
        let (cert, key) = (c.resolve(cert), c.resolve(key));
        match tls::certified_key(&cert, &key) {
            Ok(k) => certificates.push(ServerCertificate {
                cert,
                key,
                server_names,
                certified: Arc::new(k),
            }),
            Err((part, reason)) => {
                let key = match part {
                    tls::PairPart::Cert => "cert",
                    tls::PairPart::Key => "key",
                };
                c.fail(format!("{epath}.{key}"), reason)
            }
        }
    }
    let sni: Vec<tls::SniCertificate> = certificates
        .iter()
        .map(|s| tls::SniCertificate {
            server_names: s.server_names.clone(),
            key: s.certified.clone(),
        })
        .collect();
    if sni.is_empty() {
        return None;
    }
    match tls::server_config(&sni) {
        Ok(server_config) => Some(ListenerTls {
            certificates,
            server_config,
        }),
        Err(reason) => {
            c.fail(path, reason);
            None
        }
    }
}

/// Parses `host:port`, `http://host:port` or `https://host:port`.
pub fn endpoint(text: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((other, _)) => {
            return Err(format!(
                "scheme `{other}` is not supported (use http or https)"
            ))
        }
        None => (Scheme::Http, text),
    };
    let rest = rest.trim_end_matches('/');
    let uri: http::uri::Authority = rest
        .parse()
        .map_err(|_| format!("`{text}` is not host:port"))?;
    if uri.port_u16().is_none() {
        return Err(format!("`{text}` has no port; write it as host:port"));
    }
    if rest.contains('@') {
        return Err(format!("`{text}` must not carry user information"));
    }
    Ok(Endpoint {
        scheme,
        authority: uri.as_str().to_string(),
    })
}

fn backend(c: &mut Check, path: &str, name: &str, raw: &RawBackend) -> Option<BackendConfig> {
    if raw.endpoints.is_empty() {
        c.fail(format!("{path}.endpoints"), "needs at least one endpoint");
    }
    let endpoints: Vec<Endpoint> = raw
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            endpoint(e)
                .map_err(|reason| c.fail(format!("{path}.endpoints[{i}]"), reason))
                .ok()
        })
        .collect();
    let b = BackendConfig {
        name: name.to_string(),
        endpoints,
        connect_timeout: c.duration(
            &format!("{path}.connect_timeout"),
            &raw.connect_timeout,
            Duration::from_secs(1),
        ),
        timeout: c.duration(
            &format!("{path}.timeout"),
            &raw.timeout,
            Duration::from_secs(30),
        ),
        eject_for: c.duration(
            &format!("{path}.eject_for"),
            &raw.eject_for,
            Duration::from_secs(5),
        ),
        max_idle_per_endpoint: raw.max_idle_per_endpoint.unwrap_or(256),
        retry: raw.retry.unwrap_or(true),
        protocol: match raw.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2") => UpstreamProtocol::H2,
            Some("auto") => UpstreamProtocol::Auto,
            Some(other) => {
                c.fail(
                    format!("{path}.protocol"),
                    format!("`{other}` is not one of: http1, h2, auto"),
                );
                UpstreamProtocol::Http1
            }
        },
        tls: None,
    };
    let https = b
        .endpoints
        .iter()
        .filter(|e| e.scheme == Scheme::Https)
        .count();
    if https > 0 && https < b.endpoints.len() {
        c.fail(
            format!("{path}.endpoints"),
            "mixes http and https endpoints; use one scheme per backend",
        );
    }
    let mut b = b;
    if https > 0 {
        b.tls = upstream_tls(c, path, raw);
    } else {
        for (key, set) in [
            ("ca_file", raw.ca_file.is_some()),
            ("client_cert", raw.client_cert.is_some()),
            ("client_key", raw.client_key.is_some()),
            ("insecure_skip_verify", raw.insecure_skip_verify.is_some()),
            ("tls_server_name", raw.tls_server_name.is_some()),
        ] {
            if set {
                c.fail(
                    format!("{path}.{key}"),
                    "applies to https:// endpoints only, and this backend has none",
                );
            }
        }
    }
    if b.connect_timeout.is_zero() {
        c.fail(format!("{path}.connect_timeout"), "must be more than 0");
    }
    if b.timeout.is_zero() {
        c.fail(format!("{path}.timeout"), "must be more than 0");
    }
    Some(b)
}

/// TLS towards a backend: files read and checked now, client config built.
fn upstream_tls(c: &mut Check, path: &str, raw: &RawBackend) -> Option<UpstreamTls> {
    let insecure = raw.insecure_skip_verify.unwrap_or(false);
    let mut ok = true;
    if insecure && raw.ca_file.is_some() {
        c.fail(
            format!("{path}.ca_file"),
            "has no effect with insecure_skip_verify: true; remove one of them",
        );
        ok = false;
    }
    let ca_file = raw.ca_file.as_deref().map(|f| c.resolve(f));
    let ca = match &ca_file {
        Some(f) => match tls::read_certificates(f) {
            Ok(certs) => Some(certs),
            Err(reason) => {
                c.fail(format!("{path}.ca_file"), reason);
                ok = false;
                None
            }
        },
        None => None,
    };
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => Some((c.resolve(cert), c.resolve(key))),
        (Some(_), None) => {
            c.fail(
                format!("{path}.client_key"),
                "`client_cert` needs a `client_key`",
            );
            ok = false;
            None
        }
        (None, Some(_)) => {
            c.fail(
                format!("{path}.client_cert"),
                "`client_key` needs a `client_cert`",
            );
            ok = false;
            None
        }
        (None, None) => None,
    };
    let mut identity = None;
    let mut key_fingerprint = 0;
    if let Some((cert, key)) = &client_cert {
        let read = tls::read_certificates(cert)
            .map_err(|r| (format!("{path}.client_cert"), r))
            .and_then(|chain| {
                tls::read_private_key(key)
                    .map(|k| (chain, k))
                    .map_err(|r| (format!("{path}.client_key"), r))
            });
        match read {
            Ok((chain, k)) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                k.secret_der().hash(&mut h);
                key_fingerprint = h.finish();
                identity = Some((chain, k));
            }
            Err((p, reason)) => {
                c.fail(p, reason);
                ok = false;
            }
        }
    }
    let server_name = raw.tls_server_name.as_ref().map(|n| n.trim().to_string());
    if let Some(n) = &server_name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            c.fail(
                format!("{path}.tls_server_name"),
                format!("`{n}` is not a DNS name or IP address"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let mut material = ca.clone().unwrap_or_default();
    if let Some((chain, _)) = &identity {
        material.extend(chain.iter().cloned());
    }
    let params = tls::ClientTlsParams {
        ca: ca.as_deref(),
        identity,
        insecure_skip_verify: insecure,
    };
    match tls::client_config(params) {
        Ok(client_config) => Some(UpstreamTls {
            ca_file,
            client_cert,
            server_name,
            insecure_skip_verify: insecure,
            material,
            key_fingerprint,
            client_config,
        }),
        Err((key, reason)) => {
            c.fail(format!("{path}.{key}"), reason);
            None
        }
    }
}

fn route(c: &mut Check, path: &str, raw: &RawRoute) -> Option<RouteConfig> {
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

fn route_compare(c: &mut Check, path: &str, raw: &RawRoute) -> RouteCompareConfig {
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

fn promotion(
    c: &mut Check,
    path: &str,
    raw: &RawPromotion,
    route: &RawRoute,
) -> Option<PromotionConfig> {
    let mirror = match &raw.mirror {
        Some(m) => m.clone(),
        None => match route.mirrors.first() {
            Some(m) => m.backend.clone(),
            None => {
                c.fail(path, "needs a mirror to promote; the route has none");
                return None;
            }
        },
    };
    if !route.mirrors.iter().any(|m| m.backend == mirror) {
        c.fail(
            format!("{path}.mirror"),
            format!("`{mirror}` is not a mirror of this route"),
        );
    }
    let window = c.duration(
        &format!("{path}.window"),
        &raw.window,
        Duration::from_secs(600),
    );
    if window > Duration::from_secs(900) || window < Duration::from_secs(10) {
        c.fail(format!("{path}.window"), "must be between 10s and 15m");
    }
    let none = match raw.gates.as_deref() {
        None | Some("default") => false,
        Some("none") => true,
        Some(other) => {
            c.fail(
                format!("{path}.gates"),
                format!("`{other}` is not one of: default, none"),
            );
            false
        }
    };
    let mut gate = |key: &str, value: &Option<RawGate>| match value {
        None if none => GateLimit::Off,
        None => GateLimit::Default,
        Some(RawGate::Word(w)) if w == "off" => GateLimit::Off,
        Some(RawGate::Limit(v)) if v.is_finite() && *v >= 0.0 => {
            if none {
                c.fail(
                    format!("{path}.{key}"),
                    "is set, but `gates: none` turns every gate off; remove one of them",
                );
            }
            GateLimit::Set(*v)
        }
        Some(_) => {
            c.fail(
                format!("{path}.{key}"),
                "must be a number of 0 or more, or `off`",
            );
            GateLimit::Off
        }
    };
    let max_error_rate_delta = gate("max_error_rate_delta", &raw.max_error_rate_delta);
    let max_p99_ratio = gate("max_p99_ratio", &raw.max_p99_ratio);
    let max_diff_rate = gate("max_diff_rate", &raw.max_diff_rate);
    let mode = match raw.mode.as_deref() {
        None | Some("manual") => PromotionMode::Manual,
        Some("auto") => PromotionMode::Auto,
        Some(other) => {
            c.fail(
                format!("{path}.mode"),
                format!("`{other}` is not one of: manual, auto"),
            );
            PromotionMode::Manual
        }
    };
    let steps = raw.steps.clone().unwrap_or_default();
    if !steps.is_empty()
        && (steps.windows(2).any(|w| w[0] >= w[1])
            || steps.iter().any(|s| *s == 0 || *s > 100)
            || steps.last() != Some(&100))
    {
        c.fail(
            format!("{path}.steps"),
            "must rise strictly from above 0 and end at 100, e.g. [10, 50, 100]",
        );
    }
    Some(PromotionConfig {
        mirror,
        window,
        min_requests: raw.min_requests.unwrap_or(100),
        max_error_rate_delta,
        max_p99_ratio,
        max_diff_rate,
        mode,
        steps,
        step_interval: c.duration(
            &format!("{path}.step_interval"),
            &raw.step_interval,
            Duration::from_secs(300),
        ),
        evaluate_every: c.duration(
            &format!("{path}.evaluate_every"),
            &raw.evaluate_every,
            Duration::from_secs(5),
        ),
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

fn mirror(c: &mut Check, path: &str, raw: &RawMirror) -> MirrorConfig {
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

/// Convenience for tests and the demo: validate one YAML text.
pub fn from_yaml(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let raw = parse_text(file, text)?;
    validate(vec![(file.to_string(), raw)])
}

/// Used by `check`: a short summary of what a valid config holds.
pub fn summary(config: &Config) -> String {
    let mirrors: usize = config.routes.iter().map(|r| r.mirrors.len()).sum();
    format!(
        "{} listener(s), {} backend(s), {} route(s), {} mirror(s)",
        config.listeners.len(),
        config.backends.len(),
        config.routes.len(),
        mirrors
    )
}

/// `trusted_proxies:` entries: CIDR blocks, or single addresses.
fn trusted_proxies(c: &mut Check, raw: &[String]) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        let t = text.trim();
        let parsed = t
            .parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => nets.push(n),
            Err(_) => c.fail(
                format!("trusted_proxies[{i}]"),
                format!(
                    "`{text}` is not a CIDR block or an IP address (like `10.0.0.0/8` or `::1`)"
                ),
            ),
        }
    }
    nets
}
