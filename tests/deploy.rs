//! What the shipped deploy/ relies on: Prometheus scrapes `/metrics` on the
//! metrics listener without the admin token while the API still wants it,
//! and every manifest in `deploy/kubernetes/` validates strictly offline
//! (PyPI `kubernetes-validate`, installed by `scripts/test`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const TOKEN: &str = "a-test-token-long-enough";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_metrics_without_the_token_while_the_api_needs_it() {
    let backend = TestBackend::new().body("v1").spawn().await;
    let running = start_proxy(&format!(
        "admin_token: {TOKEN}\nmetrics: {{ listen: 127.0.0.1:0 }}\nbackends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        backend.addr
    ))
    .await;
    let metrics_addr = running.metrics_addr.expect("metrics listener bound");
    assert_ne!(metrics_addr, running.admin_addr);
    assert_eq!(
        get(&client(), running.listen_addrs[0], "x", "/")
            .await
            .status,
        200
    );

    // Prometheus, no token: the metrics, with the request just served.
    let scraped = get(&client(), metrics_addr, "10.0.0.7:9090", "/metrics").await;
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        scraped.headers
    );
    let text = scraped.text();
    assert!(
        text.contains("shadowgate_") && text.trim_end().ends_with("# EOF"),
        "{text}"
    );
    // Only /metrics there; the API is not reachable through it.
    for path in ["/api/v1/status", "/api/v1/routes", "/", "/readyz"] {
        let ans = get(&client(), metrics_addr, "localhost", path).await;
        assert_eq!(ans.status, 404, "{path}");
    }
    // The same host check as the admin server (DNS rebinding).
    let foreign = get(&client(), metrics_addr, "evil.example", "/metrics").await;
    assert_eq!(foreign.status, 421);

    // The admin server still wants the token, for /metrics and the API.
    for path in ["/metrics", "/api/v1/status"] {
        assert_eq!(api_get(&running, path).await.status, 401, "{path}");
        let with = send(
            &client(),
            running.admin_addr,
            http::Method::GET,
            "localhost",
            path,
            &[("authorization", &format!("Bearer {TOKEN}"))],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(with.status, 200, "{path}");
    }
    running.shutdown().await;
}

/// Every YAML file under `deploy/kubernetes/`.
fn manifests() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut out = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("deploy directory") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Kinds without a schema in `kubernetes-validate` (custom resources and
/// kustomize's own file); `tests/kube_deploy.rs` checks them against the
/// objects they point at.
const NO_SCHEMA: &[&str] = &["Kustomization", "ServiceMonitor", "PodMonitor"];

#[test]
fn deploy_manifests_validate_strictly_offline() {
    let files = manifests();
    assert!(files.len() >= 8, "{files:?}");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate not found ({e}): scripts/test installs it (pip install kubernetes-validate)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let mut passed = 0;
    for line in text.lines() {
        if line.contains(" passed for resource ") {
            passed += 1;
            continue;
        }
        // A kind without a schema is only a warning to the tool: allow
        // the listed ones and nothing else.
        if line.contains("Couldn't find schema for kind") {
            assert!(
                NO_SCHEMA
                    .iter()
                    .any(|k| line.contains(&format!("for kind {k} with"))),
                "{line}"
            );
            continue;
        }
        assert!(
            !line.starts_with("WARN") && !line.starts_with("ERROR"),
            "{line}"
        );
    }
    assert!(passed >= 14, "{text}");
}
