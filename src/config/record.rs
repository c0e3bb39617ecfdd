//! A route's `record:` block (issue #17, recording): a share of the
//! route's requests and the primary's answers written as JSON lines to a
//! file (docs/replay.md). Raw shape and validation with key paths; the
//! running part is `crate::record`.

use std::path::PathBuf;

use super::check::Check;
use super::raw::RawRecord;
use http::Method;

/// A validated `routes[].record`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordConfig {
    /// The file, resolved against the configuration file's directory.
    pub file: PathBuf,
    /// Written zstd-compressed (the name ends in `.zst`).
    pub zstd: bool,
    pub percent: f64,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    pub max_body_bytes: usize,
    pub max_file_bytes: u64,
    pub max_files: u32,
    /// Outbound calls kept in one record (with `egress:` on).
    pub max_calls: usize,
}

#[cfg(test)]
impl RecordConfig {
    /// Every route's defaults, writing to `file` (unit tests).
    pub(crate) fn for_tests(file: &str) -> Self {
        RecordConfig {
            file: file.into(),
            zstd: false,
            percent: 100.0,
            methods: None,
            max_body_bytes: 1024,
            max_file_bytes: 1 << 20,
            max_files: 1,
            max_calls: 0,
        }
    }
}

/// Checks `{path}` (a route's `record:`).
pub(super) fn record(c: &mut Check, path: &str, raw: &RawRecord) -> Option<RecordConfig> {
    if raw.file.trim().is_empty() {
        c.fail(format!("{path}.file"), "must name a file");
    }
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
            .collect::<Vec<_>>()
    });
    let max_body_bytes = c.size(
        &format!("{path}.max_body_bytes"),
        &raw.max_body_bytes,
        1 << 20,
    );
    let max_file_bytes = c.size(
        &format!("{path}.max_file_bytes"),
        &raw.max_file_bytes,
        64 << 20,
    );
    if max_file_bytes < 1024 {
        c.fail(format!("{path}.max_file_bytes"), "must be at least 1KiB");
    }
    let max_files = raw.max_files.unwrap_or(5);
    if max_files == 0 {
        c.fail(format!("{path}.max_files"), "must be at least 1");
    }
    Some(RecordConfig {
        file: c.resolve(raw.file.trim()),
        zstd: raw.file.trim().ends_with(".zst"),
        percent,
        methods,
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        max_file_bytes,
        max_files: max_files.max(1),
        max_calls: raw.max_calls.unwrap_or(64),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::from_yaml;

    const BASE: &str =
        "store: memory\nbackends:\n  shop: { endpoints: [\"127.0.0.1:9000\"] }\nroutes:\n";

    #[test]
    fn record_is_read_with_defaults_and_a_relative_file() {
        let yaml = format!("{BASE}  - {{ name: r, backend: shop, record: {{ file: captures/r.jsonl.zst, methods: [get] }} }}\n");
        let c = from_yaml("/etc/sg/t.yaml", &yaml).expect("valid");
        let r = c.routes[0].record.clone().expect("record");
        assert_eq!(
            r.file,
            std::path::PathBuf::from("/etc/sg/captures/r.jsonl.zst")
        );
        assert!(r.zstd);
        assert_eq!(r.percent, 100.0);
        assert_eq!(r.max_body_bytes, 1 << 20);
        assert_eq!(r.max_file_bytes, 64 << 20);
        assert_eq!(r.max_files, 5);
        assert_eq!(r.max_calls, 64);
        assert_eq!(r.methods, Some(vec![http::Method::GET]));
    }

    #[test]
    fn bad_record_names_file_key_and_reason() {
        let yaml = format!("{BASE}  - {{ name: r, backend: shop, record: {{ file: \"\", percent: 150, methods: [\"g t\"], max_body_bytes: lots, max_files: 0 }} }}\n");
        let err = from_yaml("t.yaml", &yaml).expect_err("refused").to_string();
        for want in [
            "t.yaml: routes[0].record.file: must name a file",
            "t.yaml: routes[0].record.percent: 150 is not between 0 and 100",
            "t.yaml: routes[0].record.methods[0]:",
            "t.yaml: routes[0].record.max_body_bytes:",
            "t.yaml: routes[0].record.max_files: must be at least 1",
        ] {
            assert!(err.contains(want), "{want}\n{err}");
        }
    }
}
