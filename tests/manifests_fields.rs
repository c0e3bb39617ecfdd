//! Manifest fields people use (#15.1), end to end: the Flagger podinfo
//! VirtualService (route `headers`, `retries`, a mirror) and an HTTPRoute
//! with `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`
//! and a `queryParams` match, loaded unchanged from `tests/fixtures/kube/`
//! and sent traffic through the real proxy; plus the native config's own
//! `headers`, `retries` and `query_params`.

mod support;

use bytes::Bytes;
use http::Method;
use shadowgate::app::{self, Running, StartOptions};
use shadowgate::config::load::load_texts;
use std::path::Path;
use support::*;

/// The fixture files of a scenario (without its `services.yaml`), plus a
/// generated native file: test listeners and the backends' real ports.
fn files(scenario: &str, services: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(scenario);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("services.yaml"))
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

async fn start(files: Vec<(String, String)>) -> Running {
    let config = load_texts(&files).unwrap_or_else(|e| panic!("{e}"));
    app::start(config, StartOptions::default())
        .await
        .expect("start")
}

async fn request(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    send(
        &client(),
        addr,
        Method::GET,
        host,
        path,
        headers,
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn flagger_podinfo_virtual_service_headers_mirror_and_primary_only_retries() {
    // The primary fails its first try with 503 (gateway-error: retried);
    // the canary always fails, and its copy is never retried.
    let mut primary = TestBackend::new()
        .body("primary")
        .header("x-powered-by", "go")
        .fail_first(1, 503)
        .spawn()
        .await;
    let mut canary = TestBackend::new().body("canary").status(503).spawn().await;
    let services = format!(
        "  podinfo-primary.test: [\"{}\"]\n  podinfo-canary.test: [\"{}\"]\n",
        primary.addr, canary.addr
    );
    let running = start(files("flagger-podinfo", &services)).await;
    let addr = running.listen_addrs[0];

    let a = request(addr, "app.example.com", "/api/info", &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), "primary");
    // headers.response: set x-served-by, remove x-powered-by.
    assert_eq!(
        a.headers.get("x-served-by").map(|v| v.as_bytes()),
        Some(&b"podinfo"[..])
    );
    assert!(a.headers.get("x-powered-by").is_none(), "{:?}", a.headers);

    // Two tries reached the primary, each with headers.request.add.
    for _ in 0..2 {
        let got = primary.next().await;
        assert_eq!(got.uri.path(), "/api/info");
        assert_eq!(got.header("x-some-header"), Some("value"));
    }
    // The mirror got one copy, with the route's request header too.
    let copy = canary.next().await;
    assert_eq!(copy.uri.path(), "/api/info");
    assert_eq!(copy.header("x-some-header"), Some("value"));
    mirrors_settled(&running).await;
    assert_eq!(primary.received(), 2, "the primary is retried once");
    assert_eq!(canary.received(), 1, "a mirror's copy is never retried");

    // The Kubernetes service name is a host of the VirtualService too;
    // the primary now answers at once.
    let b = request(addr, "podinfo.test", "/", &[]).await;
    assert_eq!(b.status, 200);
    assert_eq!(primary.next().await.header("x-some-header"), Some("value"));
    mirrors_settled(&running).await;
    assert_eq!(primary.received(), 3);
    running.shutdown().await;
}

#[tokio::test]
async fn gateway_api_header_modifiers_mirror_and_query_match() {
    let mut primary = TestBackend::new().body("primary").spawn().await;
    let mut canary = TestBackend::new().body("canary").spawn().await;
    let services = format!(
        "  podinfo-primary.test: [\"{}\"]\n  podinfo-canary.test: [\"{}\"]\n",
        primary.addr, canary.addr
    );
    let running = start(files("gateway-api-filters", &services)).await;
    let addr = running.listen_addrs[0];
    let sent = [
        ("x-debug", "1"),
        ("x-route", "client"),
        ("x-canary", "maybe"),
    ];

    // The query match takes the first rule: header changes, a mirror copy.
    let a = request(
        addr,
        "app.example.com",
        "/api/items?version=v2&page=1",
        &sent,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "primary");
    assert_eq!(
        a.headers.get("x-preview").map(|v| v.as_bytes()),
        Some(&b"v2"[..])
    );
    let check = |r: &Recorded| {
        assert_eq!(r.uri.query(), Some("version=v2&page=1"));
        assert_eq!(r.header("x-debug"), None, "removed");
        assert_eq!(r.header("x-route"), Some("canary-preview"), "set");
        let canaries: Vec<_> = r.headers.get_all("x-canary").iter().collect();
        assert_eq!(canaries, ["maybe", "true"], "added after the client's");
    };
    check(&primary.next().await);
    let copy = canary.next().await;
    check(&copy);
    assert_eq!(copy.header("host"), Some("app.example.com-shadow"));

    // Another value, or none: the second rule, untouched and not mirrored.
    for path in [
        "/api/items?version=v1",
        "/api/items",
        "/api/items?xversion=v2",
    ] {
        let b = request(addr, "app.example.com", path, &sent).await;
        assert_eq!(b.status, 200, "{path}");
        assert!(b.headers.get("x-preview").is_none(), "{path}");
        let got = primary.next().await;
        assert_eq!(got.header("x-debug"), Some("1"), "{path}");
        assert_eq!(got.header("x-route"), Some("client"), "{path}");
    }
    mirrors_settled(&running).await;
    assert_eq!(
        canary.received(),
        1,
        "only the query-matched request is mirrored"
    );
    running.shutdown().await;
}

/// The native config's `retries`: a request with a body over the retry
/// buffer (64 KiB) is not retried, a status outside `retry_on` is not
/// retried, `attempts` bounds the tries.
#[tokio::test]
async fn native_retries_bound_and_conditions() {
    let mut flaky = TestBackend::new().fail_first(10, 502).spawn().await;
    let config = format!(
        r#"
backends:
  v1: {{ endpoints: ["{}"] }}
routes:
  - name: r
    backend: v1
    retries: {{ attempts: 2, retry_on: [gateway-error], backoff: 1ms }}
"#,
        flaky.addr
    );
    let running = start_proxy(&config).await;
    let addr = running.listen_addrs[0];
    // Three tries (1 + 2 retries), all 502: the client gets the last one.
    let a = request(addr, "x", "/", &[]).await;
    assert_eq!(a.status, 502);
    for _ in 0..3 {
        flaky.next().await;
    }
    assert_eq!(flaky.received(), 3);
    // A POST with a body over the retry buffer is sent once.
    let big = "p".repeat(64 * 1024 + 1);
    let b = send(&client(), addr, Method::POST, "x", "/", &[], big.clone()).await;
    assert_eq!(b.status, 502);
    assert_eq!(flaky.next().await.body, big);
    // A retry would have reached the backend before the client's answer.
    assert_eq!(flaky.received(), 4);
    running.shutdown().await;
}

/// Istio `route[].headers` (destination level) apply when that destination
/// answers, before the rule's own `headers`: a field both set is the
/// rule's (Envoy's default order), the others add up.
#[tokio::test]
async fn istio_destination_headers_apply_before_the_rule_headers() {
    let mut v1 = TestBackend::new().body("v1").spawn().await;
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - headers:
      request: {set: {x-layer: rule}}
    route:
    - destination: {host: reviews}
      headers:
        request: {set: {x-layer: destination, x-dest: v1}, remove: [x-drop]}
        response: {add: {x-answered-by: v1}}
"#;
    let files = vec![
        ("vs.yaml".to_string(), vs.to_string()),
        (
            "generated.yaml".to_string(),
            format!(
                "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\nservices:\n  reviews: [\"{}\"]\n",
                v1.addr
            ),
        ),
    ];
    let running = start(files).await;
    let addr = running.listen_addrs[0];
    let a = request(addr, "reviews", "/", &[("x-drop", "1")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers.get("x-answered-by").map(|v| v.as_bytes()),
        Some(&b"v1"[..])
    );
    let got = v1.next().await;
    assert_eq!(got.header("x-layer"), Some("rule"));
    assert_eq!(got.header("x-dest"), Some("v1"));
    assert_eq!(got.header("x-drop"), None);
    running.shutdown().await;
}

/// `convert` writes the new fields as native config that loads back, and
/// lists the fields accepted without effect as comments.
#[test]
fn convert_writes_headers_retries_and_query_params_and_lists_ignored_fields() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube");
    let convert = |scenario: &str| {
        let files = vec![
            dir.join(scenario).join("services.yaml"),
            dir.join(scenario).join(match scenario {
                "flagger-podinfo" => "podinfo-virtualservice.yaml",
                _ => "podinfo-httproute.yaml",
            }),
        ];
        shadowgate::config::kube::convert_files(&files).unwrap_or_else(|e| panic!("{e}"))
    };
    let istio = convert("flagger-podinfo");
    assert!(
        istio.contains("(VirtualService podinfo) spec.gateways\n"),
        "{istio}"
    );
    for line in [
        "      add:\n        x-some-header: value\n",
        "  retries:\n    attempts: 3\n    per_try_timeout: 1s\n    retry_on:\n    - gateway-error\n    - connect-failure\n    - refused-stream\n",
        "      remove:\n      - x-powered-by\n",
    ] {
        assert!(istio.contains(line), "{line}\n---\n{istio}");
    }
    let gateway = convert("gateway-api-filters");
    assert!(
        gateway.contains("(HTTPRoute podinfo) spec.parentRefs\n"),
        "{gateway}"
    );
    assert!(
        gateway.contains("    query_params:\n      version: v2\n"),
        "{gateway}"
    );
    // The output is native config: it loads as it is, with the same routes.
    for (text, routes) in [(&istio, 5), (&gateway, 2)] {
        let yaml = format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstore: memory\n{text}");
        let config = shadowgate::config::from_yaml("converted.yaml", &yaml)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(config.routes.len(), routes);
        assert!(config
            .routes
            .iter()
            .all(|r| !r.headers.request.is_empty() || r.matcher.query.is_empty()));
    }
}

/// `per_try_timeout` cuts each try; `reset` retries a try that got no
/// answer; the backend's `timeout` bounds all tries together.
#[tokio::test]
async fn per_try_timeout_and_reset_retry_a_silent_backend() {
    let silent = TestBackend::new().blackhole().spawn().await;
    let config = format!(
        r#"
backends:
  v1: {{ endpoints: ["{}"], timeout: 5s }}
routes:
  - name: r
    backend: v1
    retries: {{ attempts: 2, per_try_timeout: 150ms, retry_on: [reset], backoff: 1ms }}
"#,
        silent.addr
    );
    let running = start_proxy(&config).await;
    let started = tokio::time::Instant::now();
    let a = request(running.listen_addrs[0], "x", "/", &[]).await;
    let took = started.elapsed();
    assert_eq!(a.status, 504);
    // Three tries of 150 ms each, far from the 5 s of one untried request.
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    // The last try's connection may be counted a moment after it opened.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while silent.connections() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(silent.connections(), 3, "one connection per try");
    running.shutdown().await;
}

/// A request with a small body is retried from the retry buffer: every
/// try carries the whole body, the mirror gets one copy, and each retry is
/// counted in `shadowgate_retries_total` with the outcome retried.
#[tokio::test]
async fn small_bodies_are_retried_and_retries_are_counted() {
    let mut flaky = TestBackend::new().fail_first(2, 503).spawn().await;
    let mut shadow = TestBackend::new().spawn().await;
    let config = format!(
        r#"
backends:
  v1: {{ endpoints: ["{}"] }}
  shadow: {{ endpoints: ["{}"] }}
routes:
  - name: r
    backend: v1
    mirrors: [{{ backend: shadow }}]
    retries: {{ attempts: 3, retry_on: ["503"], backoff: 1ms }}
"#,
        flaky.addr, shadow.addr
    );
    let running = start_proxy(&config).await;
    let addr = running.listen_addrs[0];
    let body = "x".repeat(10_000);
    let a = send(
        &client(),
        addr,
        Method::POST,
        "x",
        "/orders",
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    for _ in 0..3 {
        let got = flaky.next().await;
        assert_eq!(got.body, body, "every try carries the whole body");
    }
    assert_eq!(shadow.next().await.body, body);
    mirrors_settled(&running).await;
    assert_eq!(flaky.received(), 3);
    assert_eq!(shadow.received(), 1, "a mirror's copy is never retried");
    let text = metrics(&running).await;
    assert_eq!(
        metric(
            &text,
            "shadowgate_retries_total{route=\"r\",backend=\"v1\",reason=\"503\"}"
        ),
        2.0,
        "{text}"
    );
    running.shutdown().await;
}
