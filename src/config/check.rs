//! The error collector every check of the configuration writes to, with
//! the value checks shared by all sections (durations, sizes, file paths,
//! regular expressions, methods, header names): each problem is recorded
//! with the file, the key path and the reason, and checking goes on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use regex::Regex;

use super::error::ConfigError;
use super::raw::RawSize;
use super::units::{parse_duration, parse_size};

/// Collects errors while validating one file's items.
pub(super) struct Check<'a> {
    pub(super) file: &'a str,
    pub(super) errors: &'a mut Vec<ConfigError>,
}

impl Check<'_> {
    pub(super) fn fail(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(self.file, path, reason));
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        raw: &Option<String>,
        default: Duration,
    ) -> Duration {
        match raw {
            None => default,
            Some(t) => parse_duration(t).unwrap_or_else(|e| {
                self.fail(path, e);
                default
            }),
        }
    }

    pub(super) fn size(&mut self, path: &str, raw: &Option<RawSize>, default: u64) -> u64 {
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
    pub(super) fn resolve(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        match Path::new(self.file).parent() {
            Some(dir) if p.is_relative() && !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    pub(super) fn regex(&mut self, path: &str, pattern: &str) -> Option<Regex> {
        compile_regex(pattern).map_err(|r| self.fail(path, r)).ok()
    }

    pub(super) fn method(&mut self, path: &str, raw: &str) -> Option<Method> {
        parse_method(raw).map_err(|r| self.fail(path, r)).ok()
    }

    pub(super) fn header_name(&mut self, path: &str, raw: &str) -> Option<HeaderName> {
        parse_header_name(raw).map_err(|r| self.fail(path, r)).ok()
    }
}

/// A regular expression of a match condition, anchored as routing uses it
/// (the Kubernetes importer checks its patterns with it too).
pub(super) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regular expression: {e}"))
}

/// An HTTP method, in any case.
pub(super) fn parse_method(raw: &str) -> Result<Method, String> {
    Method::from_bytes(raw.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{raw}` is not an HTTP method"))
}

/// A header name (lower-cased by `http`).
pub(super) fn parse_header_name(raw: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(raw.as_bytes())
        .map_err(|_| format!("`{raw}` is not a valid header name"))
}

/// Where a named item was defined, for duplicate errors.
pub(super) struct Origin {
    pub(super) file: String,
    pub(super) path: String,
}

/// Runs `f` with a collector for the file `conf/test.yaml`; the problems
/// it recorded as `path: reason` lines.
#[cfg(test)]
pub(super) fn checked<T>(f: impl FnOnce(&mut Check) -> T) -> (T, Vec<String>) {
    let mut errors = Vec::new();
    let out = f(&mut Check {
        file: "conf/test.yaml",
        errors: &mut errors,
    });
    let lines = errors
        .iter()
        .map(|e| {
            assert_eq!(e.file, "conf/test.yaml");
            format!("{}: {}", e.path, e.reason)
        })
        .collect();
    (out, lines)
}

/// The key paths of `checked`'s problem lines.
#[cfg(test)]
pub(super) fn key_paths(errors: &[String]) -> Vec<&str> {
    errors
        .iter()
        .map(|e| e.split_once(": ").expect("path: reason").0)
        .collect()
}

/// A raw struct from YAML text, for the section checks' tests.
#[cfg(test)]
pub(super) fn raw<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_norway::from_str(yaml).expect("test YAML has the expected shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_files_resolve_beside_the_config() {
        let ((timeout, size, file, absolute), errors) = checked(|c| {
            (
                c.duration("t", &Some("250ms".into()), Duration::ZERO),
                c.size("s", &Some(RawSize::Text("2KiB".into())), 0),
                c.resolve("certs/a.pem"),
                c.resolve("/etc/a.pem"),
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(timeout, Duration::from_millis(250));
        assert_eq!(size, 2048);
        assert_eq!(file, PathBuf::from("conf/certs/a.pem"));
        assert_eq!(absolute, PathBuf::from("/etc/a.pem"));
    }

    #[test]
    fn bad_values_are_refused_with_their_key_path_and_the_default_kept() {
        let ((timeout, regex, method, header), errors) = checked(|c| {
            (
                c.duration(
                    "limits.header_read_timeout",
                    &Some("soon".into()),
                    Duration::from_secs(3),
                ),
                c.regex("routes[0].match.path_regex", "(unclosed"),
                c.method("routes[0].match.method", "GE T"),
                c.header_name("routes[0].match.headers.bad name", "bad name"),
            )
        });
        assert_eq!(timeout, Duration::from_secs(3));
        assert!(regex.is_none() && method.is_none() && header.is_none());
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].starts_with("limits.header_read_timeout: "),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("routes[0].match.path_regex: invalid regular expression"),
            "{errors:?}"
        );
        assert_eq!(
            errors[2],
            "routes[0].match.method: `GE T` is not an HTTP method"
        );
        assert_eq!(
            errors[3],
            "routes[0].match.headers.bad name: `bad name` is not a valid header name"
        );
    }
}
