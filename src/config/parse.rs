//! Reading one file's text (native YAML) into the raw structs. A file that
//! does not have the expected shape is refused with the key path serde
//! stopped at and the reason.

use serde::Deserialize;

use super::error::{ConfigError, ConfigErrors};
use super::raw::RawConfig;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_into_the_raw_structs() {
        let raw = parse_text(
            "a.yaml",
            "admin: 127.0.0.1:9000\nroutes:\n  - name: r\n    backend: b\n",
        )
        .expect("valid");
        assert_eq!(raw.admin.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(raw.routes[0].name, "r");
        assert_eq!(
            parse_text("a.yaml", "  \n").expect("empty"),
            RawConfig::default()
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_path() {
        let err = parse_text(
            "a.yaml",
            "routes:\n  - name: r\n    backend: b\n    mirorrs: []\n",
        )
        .expect_err("unknown key");
        assert_eq!(err.0.len(), 1);
        let e = &err.0[0];
        assert_eq!(
            (e.file.as_str(), e.path.as_str()),
            ("a.yaml", "routes[0].mirorrs")
        );
        assert!(e.reason.contains("unknown field `mirorrs`"), "{e}");
    }
}
