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
