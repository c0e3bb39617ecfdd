//! Rewrites (#15): Istio `rewrite.uri` / `rewrite.authority`, the Gateway
//! API's `URLRewrite`, and the native `routes[].rewrite` — on the primary's
//! request and on the mirror's copy; the Gateway API's
//! `timeouts.backendRequest`; `kube.host_suffix` for imported routes; and
//! what `convert` writes for them.

mod support;

use bytes::Bytes;
use http::Method;
use shadowgate::app::{self, Running, StartOptions};
use shadowgate::config::load::load_texts;
use std::path::Path;
use std::time::Duration;
use support::*;

fn fixture(name: &str) -> (String, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube/rewrites")
        .join(name);
    (
        p.display().to_string(),
        std::fs::read_to_string(&p).expect("fixture"),
    )
}

/// The manifests given, plus a native file with test listeners and the
/// backends' real ports (and `extra` native keys).
fn files(manifests: Vec<(String, String)>, services: &str, extra: &str) -> Vec<(String, String)> {
    let mut out = manifests;
    out.push((
        "generated.yaml".into(),
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\n{extra}services:\n{services}"),
    ));
    out
}

async fn start(files: Vec<(String, String)>) -> Running {
    let config = load_texts(&files).unwrap_or_else(|e| panic!("{e}"));
    app::start(config, StartOptions::default())
        .await
        .expect("start")
}

async fn get_at(addr: std::net::SocketAddr, host: &str, path: &str) -> Answer {
    send(&client(), addr, Method::GET, host, path, &[], Bytes::new()).await
}

async fn istio_rewrite(extra: &str, copy_host: &str) {
    let mut v1 = TestBackend::new().body("v1").spawn().await;
    let mut next = TestBackend::new().body("next").spawn().await;
    let services = format!(
        "  ratings: [\"{}\"]\n  ratings-next: [\"{}\"]\n",
        v1.addr, next.addr
    );
    let running = start(files(
        vec![fixture("ratings-virtualservice.yaml")],
        &services,
        extra,
    ))
    .await;
    let addr = running.listen_addrs[0];

    // Prefix match (case ignored): the matched prefix is replaced, the
    // rest of the path and the query kept; the Host is the rewritten one.
    let a = get_at(addr, "ratings.example.com", "/RATINGS/7?full=1").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let got = v1.next().await;
    assert_eq!(got.uri.path(), "/v1/bookRatings/7");
    assert_eq!(got.uri.query(), Some("full=1"));
    assert_eq!(got.header("host"), Some("ratings-v1.internal"));
    let copy = next.next().await;
    assert_eq!(copy.uri.path(), "/v1/bookRatings/7");
    assert_eq!(copy.uri.query(), Some("full=1"));
    assert_eq!(copy.header("host"), Some(copy_host));

    // Exact match: the whole path is replaced.
    let b = get_at(addr, "ratings.example.com", "/legacy").await;
    assert_eq!(b.status, 200);
    assert_eq!(v1.next().await.uri.path(), "/v1/bookRatings");
    assert_eq!(next.next().await.uri.path(), "/v1/bookRatings");

    // The other rule: nothing rewritten, nothing mirrored.
    let c = get_at(addr, "ratings.example.com", "/other").await;
    assert_eq!(c.status, 200);
    let got = v1.next().await;
    assert_eq!(got.uri.path(), "/other");
    assert_eq!(got.header("host"), Some("ratings.example.com"));
    mirrors_settled(&running).await;
    assert_eq!(next.received(), 2);
    running.shutdown().await;
}

#[tokio::test]
async fn istio_rewrite_reaches_the_primary_and_the_mirror_copy() {
    istio_rewrite("", "ratings-v1.internal-shadow").await;
}

/// `kube: {host_suffix: ""}`: copies of imported routes keep the Host.
#[tokio::test]
async fn kube_host_suffix_turns_the_shadow_suffix_off_for_imported_routes() {
    istio_rewrite("kube: {host_suffix: \"\"}\n", "ratings-v1.internal").await;
}

#[tokio::test]
async fn gateway_url_rewrite_reaches_the_primary_and_the_mirror_copy() {
    let mut store = TestBackend::new().body("store").spawn().await;
    let mut next = TestBackend::new().body("next").spawn().await;
    let services = format!(
        "  store: [\"{}\"]\n  store-next: [\"{}\"]\n",
        store.addr, next.addr
    );
    let running = start(files(vec![fixture("store-httproute.yaml")], &services, "")).await;
    let addr = running.listen_addrs[0];

    // ReplacePrefixMatch `/`: `/shop` is taken off, segment-wise.
    for (sent, upstream) in [
        ("/shop/items/1?x=y", "/items/1?x=y"),
        ("/shop", "/"),
        ("/shop/", "/"),
    ] {
        let a = get_at(addr, "store.example.com", sent).await;
        assert_eq!(a.status, 200, "{sent}");
        let got = store.next().await;
        assert_eq!(got.uri.to_string(), upstream, "{sent}");
        assert_eq!(got.header("host"), Some("store.internal"), "{sent}");
        let copy = next.next().await;
        assert_eq!(copy.uri.to_string(), upstream, "{sent}");
        assert_eq!(copy.header("host"), Some("store.internal-shadow"), "{sent}");
    }
    // `/shopping` is not under the `/shop` prefix (segments).
    let b = get_at(addr, "store.example.com", "/shopping").await;
    assert_eq!(b.status, 404);

    // ReplaceFullPath on an exact match; the client's Host kept.
    let c = get_at(addr, "store.example.com", "/old-checkout?cart=3").await;
    assert_eq!(c.status, 200);
    let got = store.next().await;
    assert_eq!(got.uri.to_string(), "/checkout?cart=3");
    assert_eq!(got.header("host"), Some("store.example.com"));
    mirrors_settled(&running).await;
    assert_eq!(next.received(), 3);
    running.shutdown().await;
}

/// The native `rewrite`: `path_prefix` replaces the route's
/// `match.path_prefix` (or a given `prefix`), `path` the whole path.
#[tokio::test]
async fn native_rewrite_of_path_and_authority() {
    let mut v1 = TestBackend::new().spawn().await;
    let mut shadow = TestBackend::new().spawn().await;
    let config = format!(
        r#"
backends:
  v1: {{ endpoints: ["{}"] }}
  shadow: {{ endpoints: ["{}"] }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    backend: v1
    mirrors: [{{ backend: shadow }}]
    rewrite: {{ path_prefix: /internal/v2, authority: "api.internal:8443" }}
  - name: health
    match: {{ path_regex: "/health.*" }}
    backend: v1
    rewrite: {{ path: /ready }}
  - name: rest
    backend: v1
    rewrite: {{ prefix: /old, path_prefix: /new }}
"#,
        v1.addr, shadow.addr
    );
    let running = start_proxy(&config).await;
    let addr = running.listen_addrs[0];
    let a = get_at(addr, "x", "/api/users?id=1").await;
    assert_eq!(a.status, 200);
    let got = v1.next().await;
    assert_eq!(got.uri.to_string(), "/internal/v2/users?id=1");
    assert_eq!(got.header("host"), Some("api.internal:8443"));
    let copy = shadow.next().await;
    assert_eq!(copy.uri.to_string(), "/internal/v2/users?id=1");
    assert_eq!(copy.header("host"), Some("api.internal-shadow:8443"));

    get_at(addr, "x", "/healthz").await;
    assert_eq!(v1.next().await.uri.path(), "/ready");
    get_at(addr, "x", "/old/a").await;
    assert_eq!(v1.next().await.uri.path(), "/new/a");
    // A path without the prefix goes as it is.
    get_at(addr, "x", "/other").await;
    assert_eq!(v1.next().await.uri.path(), "/other");
    running.shutdown().await;
}

/// `timeouts.backendRequest` bounds each try (the retries'
/// `per_try_timeout`); without `retry`, the one try.
#[tokio::test]
async fn gateway_backend_request_timeout_bounds_each_try() {
    let silent = TestBackend::new().blackhole().spawn().await;
    let route = |retry: &str| {
        format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: slow}}
spec:
  rules:
  - backendRefs: [{{name: slow, port: 80}}]
    timeouts: {{request: 20s, backendRequest: 150ms}}
{retry}"#
        )
    };
    let services = format!("  slow: [\"{}\"]\n", silent.addr);
    for (retry, tries) in [
        ("    retry: {attempts: 2, backoff: 1ms}\n", 3usize),
        ("", 1),
    ] {
        let before = silent.connections();
        let running = start(files(
            vec![("route.yaml".into(), route(retry))],
            &services,
            "",
        ))
        .await;
        let started = tokio::time::Instant::now();
        let a = get_at(running.listen_addrs[0], "x", "/").await;
        let took = started.elapsed();
        assert_eq!(a.status, 504, "{retry}");
        assert!(took < Duration::from_secs(3), "{retry}: {took:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while silent.connections() < before + tries && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(silent.connections(), before + tries, "{retry}");
        running.shutdown().await;
    }
}

/// `convert` writes the rewrites, the per-try timeout and the suffix as
/// native config that loads back with the same routes.
#[test]
fn convert_writes_rewrites_backend_request_and_host_suffix() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube/rewrites");
    let mut texts: Vec<(String, String)> = ["ratings-virtualservice.yaml", "store-httproute.yaml"]
        .iter()
        .map(|f| fixture(f))
        .collect();
    let services = std::fs::read_to_string(dir.join("services.yaml")).expect("services");
    texts.push((
        "services.yaml".into(),
        format!("kube:\n  host_suffix: \"\"\n{services}"),
    ));
    let out = shadowgate::config::kube::convert_texts(&texts).unwrap_or_else(|e| panic!("{e}"));
    for part in [
        "  rewrite:\n    path_prefix: /v1/bookRatings\n    prefix: /ratings\n    authority: ratings-v1.internal\n",
        "    path_exact: /legacy\n  backend: ratings.default-80\n  mirrors:\n  - backend: ratings-next.default-80\n    host_suffix: ''\n  rewrite:\n    path: /v1/bookRatings\n",
        "  rewrite:\n    path: /checkout\n",
        "    per_try_timeout: 2s\n",
        "  rewrite:\n    path_prefix: ''\n    authority: store.internal\n",
        "  store.default-8080-t5s:\n",
    ] {
        assert!(out.contains(part), "{part}\n---\n{out}");
    }
    let yaml = format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstore: memory\n{out}");
    let config = shadowgate::config::from_yaml("converted.yaml", &yaml)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(config.routes.len(), 5);
    assert_eq!(
        config.routes.iter().filter(|r| r.rewrite.is_some()).count(),
        4
    );
}

/// What is not supported, or wrong, is refused in one line naming the field.
#[test]
fn unsupported_rewrites_are_refused_precisely() {
    let refuse = |manifest: &str| -> String {
        let files = vec![
            ("m.yaml".to_string(), manifest.to_string()),
            (
                "n.yaml".to_string(),
                "services: {a: [\"127.0.0.1:1\"]}\n".to_string(),
            ),
        ];
        match shadowgate::config::kube::convert_texts(&files) {
            Ok(out) => panic!("accepted:\n{out}"),
            Err(e) => e.to_string(),
        }
    };
    let vs = |rewrite: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec:\n  hosts: [a]\n  http:\n  - rewrite: {rewrite}\n    route: [{{destination: {{host: a}}}}]\n")
    };
    let e = refuse(&vs("{uriRegexRewrite: {match: x, rewrite: y}}"));
    assert!(e.contains("m.yaml: document 1 (VirtualService a) spec.http[0].rewrite.uriRegexRewrite: not supported by shadowgate"), "{e}");
    let e = refuse(&vs("{authority: \"a b\"}"));
    assert!(
        e.contains("spec.http[0].rewrite.authority: must be a host"),
        "{e}"
    );
    let route = |rule: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: a}}\nspec:\n  rules:\n  - backendRefs: [{{name: a}}]\n{rule}")
    };
    let e = refuse(&route("    matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n"));
    assert!(e.contains("spec.rules[0].filters[0].urlRewrite.path.type: ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"), "{e}");
    let e = refuse(&route("    timeouts: {request: 1s, backendRequest: 2s}\n"));
    assert!(
        e.contains(
            "spec.rules[0].timeouts.backendRequest: 2s is longer than timeouts.request (1s)"
        ),
        "{e}"
    );
    let e = refuse(&route(
        "    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceSomething}}}]\n",
    ));
    assert!(e.contains("urlRewrite.path.type: path rewrite type `ReplaceSomething` is not supported by shadowgate"), "{e}");
}

/// Comparison groups the pairs by the client's path, not the rewritten one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_endpoints_keep_the_clients_path() {
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"id":1}"#)
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"id":1}"#)
        .spawn()
        .await;
    let config = format!(
        r#"
backends:
  v1: {{ endpoints: ["{}"] }}
  v2: {{ endpoints: ["{}"] }}
routes:
  - name: shop
    match: {{ path_prefix: /shop }}
    backend: v1
    mirrors: [{{ backend: v2, compare: true }}]
    rewrite: {{ path_prefix: /internal }}
"#,
        v1.addr, v2.addr
    );
    let running = start_proxy(&config).await;
    for i in 0..5 {
        let a = get_at(running.listen_addrs[0], "x", &format!("/shop/items/{i}")).await;
        assert_eq!(a.status, 200);
    }
    let report = compared(&running, "shop", 5).await;
    assert_eq!(
        report["endpoints"][0]["endpoint"], "GET /shop/items/{id}",
        "{report}"
    );
    running.shutdown().await;
}
