//! `shadowgate convert` on the manifest fixtures: snapshots of the native
//! config each scenario becomes.

use std::path::{Path, PathBuf};

use shadowgate::config::kube::convert_files;

fn fixture_files(scenario: &str) -> Vec<PathBuf> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube");
    let path = base.join(scenario);
    if path.is_file() {
        return vec![path];
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .expect("fixture directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Converts a scenario, with file names relative to the fixtures directory
/// so that snapshots do not depend on where the repository is.
fn convert(scenario: &str, skip: &[&str]) -> String {
    let files: Vec<PathBuf> = fixture_files(scenario)
        .into_iter()
        .filter(|p| !skip.iter().any(|s| p.ends_with(s)))
        .collect();
    let base = format!("{}/tests/fixtures/kube/", env!("CARGO_MANIFEST_DIR"));
    match convert_files(&files) {
        Ok(out) => out.replace(&base, ""),
        Err(e) => panic!("{scenario}: {}", e.to_string().replace(&base, "")),
    }
}

#[test]
fn istio_mirroring() {
    insta::assert_snapshot!(convert("istio-mirroring", &["route-all-v1.yaml"]));
}

#[test]
fn istio_mirroring_step_one() {
    insta::assert_snapshot!(convert("istio-mirroring", &["mirror.yaml"]));
}

#[test]
fn k8s_shadow() {
    insta::assert_snapshot!(convert("k8s-shadow", &["virtualservice-wildcard.yaml"]));
}

#[test]
fn k8s_shadow_minikube() {
    insta::assert_snapshot!(convert("k8s-shadow-minikube.yaml", &[]));
}

#[test]
fn sa_logic() {
    insta::assert_snapshot!(convert("sa-logic", &[]));
}

#[test]
fn gateway_api() {
    insta::assert_snapshot!(convert("gateway-api", &[]));
}

#[test]
fn gateway_api_canary() {
    insta::assert_snapshot!(convert("gateway-api-canary", &[]));
}

#[test]
fn istio_canary() {
    insta::assert_snapshot!(convert("istio-canary", &[]));
}

#[test]
fn rewrites() {
    insta::assert_snapshot!(convert("rewrites", &[]));
}

#[test]
fn cors() {
    insta::assert_snapshot!(convert("cors", &[]));
}
