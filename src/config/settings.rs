//! The top-level settings that are one value or one small block each:
//! `admin_hosts`, `limits`, `store`, `comparison`, `redact` and
//! `trusted_proxies`. (`listen` and `admin` are in [`super::listen`]; the
//! one-line scalars are checked where the files are merged.)

use std::path::{Path, PathBuf};

use super::check::Check;
use super::model::{ComparisonSettings, Limits, StoreLocation};
use super::raw::{RawComparison, RawLimits, RawRedact};

/// The store file used when the configuration names none, relative to the
/// directory of the first configuration file.
pub const DEFAULT_STORE_FILE: &str = "shadowgate.db";

/// `admin_hosts:` entries, lower-cased, without a trailing dot.
pub(super) fn admin_hosts(c: &mut Check, raw: &[String]) -> Vec<String> {
    let mut hosts = Vec::new();
    for (i, h) in raw.iter().enumerate() {
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
            hosts.push(h);
        }
    }
    hosts
}

/// The `limits:` block; what is not written keeps its default.
pub(super) fn limits(c: &mut Check, l: &RawLimits) -> Limits {
    let d = Limits::default();
    let limits = Limits {
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
        idle_timeout: c.duration("limits.idle_timeout", &l.idle_timeout, d.idle_timeout),
    };
    if limits.max_header_bytes < 8192 {
        c.fail("limits.max_header_bytes", "must be at least 8KiB");
    }
    if limits.max_headers == 0 {
        c.fail("limits.max_headers", "must be at least 1");
    }
    limits
}

/// The `store:` value: a file path (relative to the file that sets it) or
/// `memory`.
pub(super) fn store(c: &mut Check, value: &str) -> StoreLocation {
    if value.is_empty() {
        c.fail("store", "give a file path, `memory` or a postgres:// URL");
    }
    if is_postgres_url(value) {
        if let Err(reason) = postgres_config(value) {
            c.fail("store", format!("not a usable PostgreSQL URL: {reason}"));
        }
    }
    let base = Path::new(c.file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty());
    location_from(value, base)
}

/// Interprets the `store:` config value.
pub fn location_from(value: &str, base: Option<&Path>) -> StoreLocation {
    if value == "memory" {
        return StoreLocation::Memory;
    }
    if is_postgres_url(value) {
        return StoreLocation::Postgres(value.to_string());
    }
    let p = PathBuf::from(value);
    match base {
        Some(dir) if p.is_relative() => StoreLocation::File(dir.join(p)),
        _ => StoreLocation::File(p),
    }
}

/// Whether a `store:` value names a PostgreSQL database.
pub fn is_postgres_url(value: &str) -> bool {
    value.starts_with("postgres://") || value.starts_with("postgresql://")
}

/// Parses a PostgreSQL URL into the driver's settings. `sslmode=verify-ca`
/// and `verify-full` are read as `require`: with TLS the server's
/// certificate is always verified against the system's roots.
pub fn postgres_config(url: &str) -> Result<tokio_postgres::Config, String> {
    let url = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| e.to_string())
}

/// The `comparison:` block: workers, queue and example retention.
pub(super) fn comparison(c: &mut Check, r: &RawComparison) -> ComparisonSettings {
    let d = ComparisonSettings::default();
    let comparison = ComparisonSettings {
        workers: r.workers.unwrap_or(d.workers),
        queue: r.queue.unwrap_or(d.queue),
        max_examples: r.max_examples.unwrap_or(d.max_examples),
        example_max_age: c.duration(
            "comparison.example_max_age",
            &r.example_max_age,
            d.example_max_age,
        ),
    };
    if comparison.workers == 0 || comparison.workers > 64 {
        c.fail("comparison.workers", "must be between 1 and 64");
    }
    if comparison.queue == 0 {
        c.fail("comparison.queue", "must be at least 1");
    }
    comparison
}

/// The `redact:` block: header names and query parameters hidden in stored
/// and served comparison examples.
pub(super) fn redact(c: &mut Check, r: &RawRedact) -> crate::diff::Redactor {
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
    crate::diff::Redactor::new(&r.headers, &r.query_params)
}

/// `trusted_proxies:` entries: CIDR blocks, or single addresses.
pub(super) fn trusted_proxies(c: &mut Check, raw: &[String]) -> Vec<ipnet::IpNet> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::{checked, key_paths, raw};

    #[test]
    fn sections_take_their_values_and_keep_defaults() {
        let ((hosts, l, cmp, store, nets), errors) = checked(|c| {
            (
                admin_hosts(c, &["Admin.Example.".into()]),
                limits(c, &raw("max_header_bytes: 16KiB\nshadow_memory: 1MiB\n")),
                comparison(c, &raw("workers: 4\nexample_max_age: 1h\n")),
                store(c, "results.db"),
                trusted_proxies(c, &["10.0.0.0/8".into(), "::1".into()]),
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(hosts, vec!["admin.example".to_string()]);
        assert_eq!(l.max_header_bytes, 16 * 1024);
        assert_eq!(l.shadow_memory, 1 << 20);
        assert_eq!(l.max_headers, Limits::default().max_headers);
        assert_eq!(cmp.workers, 4);
        assert_eq!(cmp.example_max_age, std::time::Duration::from_secs(3600));
        assert_eq!(cmp.queue, ComparisonSettings::default().queue);
        assert_eq!(store, StoreLocation::File(PathBuf::from("conf/results.db")));
        assert_eq!(nets.len(), 2);
    }

    #[test]
    fn bad_values_are_refused_with_their_key_path() {
        let (_, errors) = checked(|c| {
            admin_hosts(c, &["admin:9901".into()]);
            limits(c, &raw("max_header_bytes: 1024\nmax_headers: 0\n"));
            comparison(c, &raw("workers: 65\nqueue: 0\n"));
            store(c, "");
            redact(
                c,
                &raw("headers: [\"bad header\"]\nquery_params: [\" \"]\n"),
            );
            trusted_proxies(c, &["10.0.0.0/33".into()]);
        });
        assert_eq!(
            key_paths(&errors),
            [
                "admin_hosts[0]",
                "limits.max_header_bytes",
                "limits.max_headers",
                "comparison.workers",
                "comparison.queue",
                "store",
                "redact.headers[0]",
                "redact.query_params[0]",
                "trusted_proxies[0]",
            ],
            "{errors:?}"
        );
        assert!(errors.contains(&"limits.max_header_bytes: must be at least 8KiB".to_string()));
        assert!(errors.contains(&"comparison.workers: must be between 1 and 64".to_string()));
    }

    #[test]
    fn store_values_become_locations() {
        assert_eq!(location_from("memory", None), StoreLocation::Memory);
        assert_eq!(
            location_from("x.db", Some(Path::new("/etc/sg"))),
            StoreLocation::File(PathBuf::from("/etc/sg/x.db"))
        );
        let url = "postgresql://sg:pw@db:5432/shadowgate?sslmode=require";
        assert_eq!(
            location_from(url, None),
            StoreLocation::Postgres(url.into())
        );
        let (_, errors) = checked(|c| store(c, "postgres://sg@db:notaport/x"));
        assert_eq!(key_paths(&errors), ["store"], "{errors:?}");
        assert!(postgres_config("postgres://a@h/d?sslmode=verify-full").is_ok());
    }
}
