//! Smoke test of the importer with the proxy: the seed manifests, unchanged,
//! serve from v1 and mirror to v2 with the `-shadow` Host suffix. Backends
//! listen on port 0; the `services:` map is written with their real ports.

mod support;

use std::path::Path;

use shadowgate::app::{self, StartOptions};
use shadowgate::config::load::load_texts;
use support::*;

/// The fixture files of a scenario (without its `services.yaml`), plus a
/// generated native file: test listeners and `services`.
fn files(scenario: &str, skip: &[&str], services: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(scenario);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("services.yaml") && !skip.iter().any(|s| p.ends_with(s)))
        .collect();
    paths.sort();
    let mut out: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(p).expect("read"),
            )
        })
        .collect();
    out.push((
        "generated.yaml".into(),
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\nservices:\n{services}"),
    ));
    out
}

#[tokio::test]
async fn istio_mirroring_task_serves_v1_and_mirrors_to_v2() {
    let mut v1 = TestBackend::new().body("v1").spawn().await;
    let mut v2 = TestBackend::new().body("v2").spawn().await;
    let services = format!(
        "  httpbin:\n    v1: [\"{}\"]\n    v2: [\"{}\"]\n",
        v1.addr, v2.addr
    );
    let config = load_texts(&files("istio-mirroring", &["route-all-v1.yaml"], &services))
        .unwrap_or_else(|e| panic!("{e}"));
    let running = app::start(config, StartOptions::default())
        .await
        .expect("start");
    let addr = running.listen_addrs[0];

    let a = get(&client(), addr, "httpbin:8000", "/headers").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "v1");
    assert_eq!(v1.next().await.uri.path(), "/headers");
    let copy = v2.next().await;
    assert_eq!(copy.uri.path(), "/headers");
    let host = copy.header("host").unwrap_or_default().to_string();
    assert!(host.contains("-shadow"), "mirrored Host: {host}");

    // A host the VirtualService does not name is not routed to httpbin.
    let other = get(&client(), addr, "elsewhere.example", "/headers").await;
    assert_eq!(other.status, 404);
    mirrors_settled(&running).await;
    assert_eq!(v1.received(), 1);
    running.shutdown().await;
}

#[tokio::test]
async fn gateway_api_request_mirror_keeps_the_gateway_host() {
    let mut primary = TestBackend::new().body("primary").spawn().await;
    let mut shadow = TestBackend::new().body("shadow").spawn().await;
    let services = format!(
        "  httpbin.httpbin: [\"{}\"]\n  httpbin.shadow: [\"{}\"]\n",
        primary.addr, shadow.addr
    );
    let config =
        load_texts(&files("gateway-api", &[], &services)).unwrap_or_else(|e| panic!("{e}"));
    let running = app::start(config, StartOptions::default())
        .await
        .expect("start");
    let addr = running.listen_addrs[0];

    let a = get(&client(), addr, "shadowing.example", "/headers").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "primary");
    assert_eq!(
        primary.next().await.header("host"),
        Some("shadowing.example")
    );
    assert_eq!(
        shadow.next().await.header("host"),
        Some("shadowing.example-shadow")
    );
    running.shutdown().await;
}
