//! Loading the manifest fixtures with `--config` files, as `shadowgate run`
//! does: the resulting native `Config` is asserted exactly.

use std::path::{Path, PathBuf};

use shadowgate::config::load::load_texts;
use shadowgate::config::{load_files, Config, HostMatch, PathMatch, ValueMatch};

fn fixtures(scenario: &str, skip: &[&str]) -> Vec<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(scenario);
    if path.is_file() {
        return vec![path];
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .expect("fixture directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !skip.iter().any(|s| p.ends_with(s)))
        .collect();
    files.sort();
    files
}

fn load(scenario: &str, skip: &[&str]) -> Config {
    let files = fixtures(scenario, skip);
    match load_files(&files) {
        Ok(c) => c,
        Err(e) => panic!("{scenario}: {e}"),
    }
}

/// One line per route: name, conditions, backend, mirrors.
fn routes(config: &Config) -> Vec<String> {
    config
        .routes
        .iter()
        .map(|r| {
            let mut parts = vec![r.name.clone()];
            let m = &r.matcher;
            match &m.host {
                Some(HostMatch::Exact(h)) => parts.push(format!("host={h}")),
                Some(HostMatch::Suffix(s)) => parts.push(format!("host=*{s}")),
                None => {}
            }
            match &m.path {
                Some(PathMatch::Prefix(p)) => parts.push(format!("prefix={p}")),
                Some(PathMatch::Exact(p)) => parts.push(format!("exact={p}")),
                Some(PathMatch::Regex(r)) => parts.push(format!("regex={}", r.as_str())),
                None => {}
            }
            if let Some(meth) = &m.method {
                parts.push(format!("method={meth}"));
            }
            for (name, v) in &m.headers {
                match v {
                    ValueMatch::Exact(x) => parts.push(format!("{name}=={x}")),
                    ValueMatch::Regex(x) => parts.push(format!("{name}~{}", x.as_str())),
                }
            }
            parts.push(format!("-> {}", r.backend));
            if !r.split.is_empty() {
                let shares: Vec<String> = r.split.iter().map(|(b, w)| format!("{b}:{w}")).collect();
                parts.push(format!("split {}", shares.join(" ")));
            }
            for mi in &r.mirrors {
                parts.push(format!(
                    "mirror {} {}% host+{}",
                    mi.backend, mi.percent, mi.host_suffix
                ));
            }
            parts.join(" ")
        })
        .collect()
}

/// One line per backend: name, endpoints, timeout.
fn backends(config: &Config) -> Vec<String> {
    config
        .backends
        .values()
        .map(|b| {
            let eps: Vec<&str> = b.endpoints.iter().map(|e| e.authority.as_str()).collect();
            format!("{} [{}] timeout={:?}", b.name, eps.join(", "), b.timeout)
        })
        .collect()
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn istio_mirroring_task() {
    let c = load("istio-mirroring", &["route-all-v1.yaml"]);
    let m = "mirror httpbin.default-v2-8000 100% host+-shadow";
    assert_eq!(
        routes(&c),
        vec![
            format!("httpbin-0-0-0 host=httpbin -> httpbin.default-v1-8000 {m}"),
            format!("httpbin-0-0-1 host=httpbin.default -> httpbin.default-v1-8000 {m}"),
            format!("httpbin-0-0-2 host=httpbin.default.svc -> httpbin.default-v1-8000 {m}"),
            format!(
                "httpbin-0-0-3 host=httpbin.default.svc.cluster.local -> httpbin.default-v1-8000 {m}"
            ),
        ]
    );
    assert_eq!(
        backends(&c),
        lines(&[
            "httpbin.default-v1-8000 [127.0.0.1:18081] timeout=30s",
            "httpbin.default-v2-8000 [127.0.0.1:18082] timeout=30s",
        ])
    );
    assert_eq!(c.sources.len(), 4);
}

#[test]
fn istio_mirroring_without_services_map_explains_subsets() {
    let files = fixtures("istio-mirroring", &["route-all-v1.yaml", "services.yaml"]);
    let err = load_files(&files).expect_err("subsets need services");
    let msgs: Vec<String> = err
        .0
        .iter()
        .map(|e| format!("{}: {}", e.path, e.reason))
        .collect();
    assert_eq!(
        msgs,
        lines(&[
            "document 1 (VirtualService httpbin) spec.http[0].route[0].destination.subset: \
             subset `v1` of `httpbin.default.svc.cluster.local` selects pods by labels (version=v1), \
             which shadowgate cannot do through DNS; give its endpoints in the `services:` map: \
             `services: {httpbin: {v1: [\"host:port\"]}}`",
            "document 1 (VirtualService httpbin) spec.http[0].mirror.subset: \
             subset `v2` of `httpbin.default.svc.cluster.local` selects pods by labels (version=v2), \
             which shadowgate cannot do through DNS; give its endpoints in the `services:` map: \
             `services: {httpbin: {v2: [\"host:port\"]}}`",
        ])
    );
    assert!(err.0[0].file.ends_with("istio-mirroring/mirror.yaml"));
}

#[test]
fn both_istio_steps_together_are_a_duplicate() {
    let files = fixtures("istio-mirroring", &[]);
    let err = load_files(&files).expect_err("same VirtualService twice");
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].file.ends_with("route-all-v1.yaml"), "{err}");
    assert_eq!(
        err.0[0].path,
        "document 1 (VirtualService httpbin) metadata.name"
    );
    assert!(err.0[0]
        .reason
        .starts_with("VirtualService default/httpbin is also defined in "));
}

#[test]
fn sa_logic_subsets() {
    let c = load("sa-logic", &[]);
    let m = "mirror sa-logic.default-v2-80 100% host+-shadow";
    assert_eq!(
        routes(&c),
        vec![
            format!("sa-logic-0-0-0 host=sa-logic -> sa-logic.default-v1-80 {m}"),
            format!("sa-logic-0-0-1 host=sa-logic.default -> sa-logic.default-v1-80 {m}"),
            format!("sa-logic-0-0-2 host=sa-logic.default.svc -> sa-logic.default-v1-80 {m}"),
            format!(
                "sa-logic-0-0-3 host=sa-logic.default.svc.cluster.local -> sa-logic.default-v1-80 {m}"
            ),
        ]
    );
    assert_eq!(
        backends(&c),
        lines(&[
            "sa-logic.default-v1-80 [127.0.0.1:15001, 127.0.0.1:15002] timeout=30s",
            "sa-logic.default-v2-80 [127.0.0.1:15003] timeout=30s",
        ])
    );
}

#[test]
fn k8s_shadow_gateway_host() {
    let c = load("k8s-shadow", &["virtualservice-wildcard.yaml"]);
    assert_eq!(
        routes(&c),
        lines(&["vs-wildcard-my-app.ns-shadow-0-0 host=shadow.aks.aliez.tw -> svc-my-app-v1.ns-shadow-80 \
             mirror svc-my-app-v2.ns-shadow-80 100% host+-shadow"])
    );
    assert_eq!(
        backends(&c),
        lines(&[
            "svc-my-app-v1.ns-shadow-80 [127.0.0.1:18081] timeout=30s",
            "svc-my-app-v2.ns-shadow-80 [127.0.0.1:18082] timeout=30s",
        ])
    );
}

#[test]
fn k8s_shadow_through_cluster_dns() {
    let c = load(
        "k8s-shadow",
        &["virtualservice-mirror.yaml", "services.yaml"],
    );
    assert_eq!(
        routes(&c),
        lines(&["vs-wildcard-my-app.ns-shadow-0-0 host=shadow.aks.aliez.tw -> svc-my-app-v1.ns-shadow-80"])
    );
    assert_eq!(
        backends(&c),
        lines(&[
            "svc-my-app-v1.ns-shadow-80 [svc-my-app-v1.ns-shadow.svc.cluster.local:80] timeout=30s"
        ])
    );
}

#[test]
fn k8s_shadow_minikube_single_file() {
    let c = load("k8s-shadow-minikube.yaml", &[]);
    assert_eq!(
        routes(&c),
        lines(&["my-app-0-0 host=my-app.local -> my-app-v1.default-80 mirror my-app-v2.default-80 100% host+-shadow"])
    );
    assert_eq!(
        backends(&c),
        lines(&[
            "my-app-v1.default-80 [127.0.0.1:18081] timeout=30s",
            "my-app-v2.default-80 [127.0.0.1:18082] timeout=30s",
        ])
    );
}

#[test]
fn gateway_api_request_mirror() {
    let c = load("gateway-api", &[]);
    assert_eq!(
        routes(&c),
        lines(&[
            "httpbin-shadow.httpbin-0-0 host=shadowing.example -> httpbin.httpbin-8000 \
             mirror httpbin.shadow-8000 100% host+-shadow"
        ])
    );
    assert_eq!(
        backends(&c),
        lines(&[
            "httpbin.httpbin-8000 [127.0.0.1:18081] timeout=30s",
            "httpbin.shadow-8000 [127.0.0.1:18082] timeout=30s",
        ])
    );
}

#[test]
fn gateway_api_canary_with_mirrors() {
    let c = load("gateway-api-canary", &[]);
    let canary = "-> store-v1.default-8080-t90s \
        split store-v1.default-8080-t90s:90 store-v2.default-8080-t90s:10 \
        mirror store-v3.default-8080 25% host+-shadow \
        mirror store-shadow.staging-8080 12.5% host+-shadow";
    let greeter = "-> greeter-v1.grpc-50051 mirror greeter-v2.grpc-50051 50% host+-shadow";
    let rest = "-> store-v1.default-8080 mirror store-v2.default-8080 100% host+-shadow";
    assert_eq!(
        routes(&c),
        vec![
            format!("greeter.grpc-0-0 host=grpc.example.com exact=/helloworld.Greeter/SayHello {greeter}"),
            format!("greeter.grpc-0-1 host=grpc.example.com prefix=/helloworld.Admin {greeter}"),
            format!("store-1-1-0 host=store.example.com exact=/checkout method=POST {canary}"),
            "store-2-0-0 host=store.example.com regex=^(?:/items/[0-9]+)$ x-user~^(?:(alice|bob))$ -> store-v1.default-8080".to_string(),
            format!("store-1-0-0 host=store.example.com prefix=/api x-canary==true {canary}"),
            format!("store-0-0-0 host=store.example.com {rest}"),
            format!("store-1-1-1 host=*.store.example.com exact=/checkout method=POST {canary}"),
            "store-2-0-1 host=*.store.example.com regex=^(?:/items/[0-9]+)$ x-user~^(?:(alice|bob))$ -> store-v1.default-8080".to_string(),
            format!("store-1-0-1 host=*.store.example.com prefix=/api x-canary==true {canary}"),
            format!("store-0-0-1 host=*.store.example.com {rest}"),
        ]
    );
    assert_eq!(
        backends(&c),
        lines(&[
            "greeter-v1.grpc-50051 [greeter-v1.grpc.svc.cluster.local:50051] timeout=30s",
            "greeter-v2.grpc-50051 [greeter-v2.grpc.svc.cluster.local:50051] timeout=30s",
            "store-shadow.staging-8080 [store-shadow.staging.svc.cluster.local:8080] timeout=30s",
            "store-v1.default-8080 [127.0.0.1:18081] timeout=30s",
            "store-v1.default-8080-t90s [127.0.0.1:18081] timeout=90s",
            "store-v2.default-8080 [127.0.0.1:18082] timeout=30s",
            "store-v2.default-8080-t90s [127.0.0.1:18082] timeout=90s",
            "store-v3.default-8080 [127.0.0.1:18083] timeout=30s",
        ])
    );
}

#[test]
fn istio_canary_matches_weights_and_mirrors() {
    let c = load("istio-canary", &[]);
    let jason = "-> reviews.bookinfo-v2-9080-t2500ms \
        mirror reviews.bookinfo-v3-9080 12.5% host+-shadow \
        mirror reviews-shadow.staging-9080 100% host+-shadow";
    let first = "regex=^(?:/reviews.*)$ method=GET end-user==jason x-request-id~^(?:abc\\..*)$";
    let second = "regex=^(?:/ratings/[0-9]+)$ x-debug~^(?:.*)$";
    let weighted = "-> reviews.bookinfo-v1-9080 \
        split reviews.bookinfo-v1-9080:75 reviews.bookinfo-v3-9080:25 \
        mirror reviews.bookinfo-v2-9080 5% host+-shadow";
    assert_eq!(
        routes(&c),
        vec![
            format!("reviews.bookinfo-0-0-1 host=reviews.example.com {first} {jason}"),
            format!("reviews.bookinfo-0-1-1 host=reviews.example.com {second} {jason}"),
            format!("reviews.bookinfo-1-0-1 host=reviews.example.com {weighted}"),
            format!("reviews.bookinfo-0-0-0 host=*.example.com {first} {jason}"),
            format!("reviews.bookinfo-0-1-0 host=*.example.com {second} {jason}"),
            format!("reviews.bookinfo-1-0-0 host=*.example.com {weighted}"),
            "ratings.bookinfo-0-0 regex=^(?:(?i)/health)$ -> ratings.bookinfo-9080 \
             mirror ratings-next.bookinfo-9080 20% host+-shadow"
                .to_string(),
        ]
    );
    assert_eq!(
        backends(&c),
        lines(&[
            "ratings-next.bookinfo-9080 [ratings-next.bookinfo.svc.cluster.local:9080] timeout=30s",
            "ratings.bookinfo-9080 [ratings.bookinfo.svc.cluster.local:9080] timeout=30s",
            "reviews-shadow.staging-9080 [127.0.0.1:19090] timeout=30s",
            "reviews.bookinfo-v1-9080 [127.0.0.1:19081] timeout=30s",
            "reviews.bookinfo-v2-9080 [127.0.0.1:19082] timeout=30s",
            "reviews.bookinfo-v2-9080-t2500ms [127.0.0.1:19082] timeout=2.5s",
            "reviews.bookinfo-v3-9080 [127.0.0.1:19083] timeout=30s",
        ])
    );
}

#[test]
fn k8sgateway_as_published_is_refused() {
    let files = fixtures("errors", &[]);
    let err = load_files(&files).expect_err("gloo-specific");
    let msgs: Vec<String> = err
        .0
        .iter()
        .map(|e| format!("{}: {}", e.path, e.reason))
        .collect();
    assert_eq!(
        msgs,
        lines(&[
            "document 3 (HTTPRoute httpbin-shadow) spec.rules[0].filters[0].type: \
             filter type `ExtensionRef` is not supported by shadowgate",
            "document 3 (HTTPRoute httpbin-shadow) spec.rules[0].backendRefs[0].kind: \
             backends of kind `Upstream` of group `gloo.solo.io` are not supported by shadowgate; \
             use a Kubernetes Service",
        ])
    );
}

/// How end-to-end tests use the fixtures: backends on port 0, the
/// `services:` map written with the real ports, passed as text.
#[test]
fn fixtures_with_runtime_ports() {
    let mut files: Vec<(String, String)> =
        fixtures("istio-mirroring", &["route-all-v1.yaml", "services.yaml"])
            .iter()
            .map(|p| {
                (
                    p.display().to_string(),
                    std::fs::read_to_string(p).expect("fixture"),
                )
            })
            .collect();
    let (v1, v2) = ("127.0.0.1:40001", "127.0.0.1:40002");
    files.push((
        "services (generated)".to_string(),
        format!(
            "listen: 127.0.0.1:0\nservices:\n  httpbin:\n    v1: [\"{v1}\"]\n    v2: [\"{v2}\"]\n"
        ),
    ));
    let c = load_texts(&files).expect("valid");
    assert_eq!(
        c.backends["httpbin.default-v1-8000"].endpoints[0].authority,
        v1
    );
    assert_eq!(
        c.backends["httpbin.default-v2-8000"].endpoints[0].authority,
        v2
    );
    assert_eq!(c.listeners[0].address.port(), 0);
}
