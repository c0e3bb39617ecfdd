//! Reading configuration files: the entry points. Each file is parsed
//! (native YAML, or Kubernetes manifests converted by [`super::kube`]), the
//! files are merged and validated ([`super::validate`]); every problem is
//! reported with the file, the key path and the reason.

use std::path::PathBuf;

use super::error::{ConfigError, ConfigErrors};
use super::model::Config;
use super::parse::parse_text;
use super::raw::RawConfig;
use super::validate::validate;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_file_is_loaded_and_summarised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("shadowgate.yaml");
        std::fs::write(
            &file,
            "backends:\n  v1: { endpoints: [\"127.0.0.1:9000\"] }\n  v2: { endpoints: [\"127.0.0.1:9001\"] }\nroutes:\n  - { name: r, backend: v1, mirrors: [{ backend: v2 }] }\n",
        )
        .expect("write");
        let config = load_files(std::slice::from_ref(&file)).expect("valid");
        assert_eq!(config.sources, [file]);
        assert_eq!(
            summary(&config),
            "1 listener(s), 2 backend(s), 1 route(s), 1 mirror(s)"
        );
    }

    #[test]
    fn empty_files_and_configs_without_routes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.yaml");
        let no_routes = dir.path().join("backends.yaml");
        std::fs::write(&empty, "# nothing yet\n").expect("write");
        std::fs::write(
            &no_routes,
            "backends:\n  v1: { endpoints: [\"127.0.0.1:9000\"] }\n",
        )
        .expect("write");
        let err = load_files(std::slice::from_ref(&empty)).expect_err("empty");
        assert_eq!(err.0[0].file, empty.display().to_string());
        assert_eq!(err.0[0].path, "");
        assert!(err.0[0].reason.contains("holds no settings"), "{err}");
        let err = load_files(std::slice::from_ref(&no_routes)).expect_err("no routes");
        assert_eq!(err.0[0].path, "routes");
        assert!(
            err.0[0].reason.starts_with("no routes are defined"),
            "{err}"
        );
    }
}
