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
        match Regex::new(&format!("^(?:{pattern})$")) {
            Ok(r) => Some(r),
            Err(e) => {
                self.fail(path, format!("invalid regular expression: {e}"));
                None
            }
        }
    }

    pub(super) fn method(&mut self, path: &str, raw: &str) -> Option<Method> {
        match Method::from_bytes(raw.to_ascii_uppercase().as_bytes()) {
            Ok(m) => Some(m),
            Err(_) => {
                self.fail(path, format!("`{raw}` is not an HTTP method"));
                None
            }
        }
    }

    pub(super) fn header_name(&mut self, path: &str, raw: &str) -> Option<HeaderName> {
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
pub(super) struct Origin {
    pub(super) file: String,
    pub(super) path: String,
}
