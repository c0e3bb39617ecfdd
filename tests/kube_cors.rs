//! CORS (#15): Istio `corsPolicy` and the native `routes[].cors` — a
//! preflight from an allowed origin is answered by the proxy (reaching no
//! backend and no mirror), answers to allowed origins carry the CORS
//! headers, other origins pass untouched; and what `convert` writes.

mod support;

use bytes::Bytes;
use http::Method;
use shadowgate::app::{self, StartOptions};
use shadowgate::config::load::load_texts;
use std::path::Path;
use support::*;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube/cors")
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn istio_cors_policy_answers_preflights_and_decorates_answers() {
    let mut api = TestBackend::new().body("api").spawn().await;
    let mut next = TestBackend::new().body("next").spawn().await;
    let vs = fixture_dir().join("web-virtualservice.yaml");
    let files = vec![
        (
            vs.display().to_string(),
            std::fs::read_to_string(&vs).expect("fixture"),
        ),
        (
            "generated.yaml".to_string(),
            format!(
                "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\nservices:\n  api: [\"{}\"]\n  api-next: [\"{}\"]\n",
                api.addr, next.addr
            ),
        ),
    ];
    let config = load_texts(&files).unwrap_or_else(|e| panic!("{e}"));
    let running = app::start(config, StartOptions::default())
        .await
        .expect("start");
    let addr = running.listen_addrs[0];
    let c = client();

    // Preflights from each kind of allowed origin: answered here.
    for origin in [
        "https://example.com",
        "https://app.example.org",
        "https://qa.test.example.com",
    ] {
        let a = send(
            &c,
            addr,
            Method::OPTIONS,
            "api.example.com",
            "/items",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ],
            Bytes::new(),
        )
        .await;
        assert_eq!(a.status, 200, "{origin}");
        assert_eq!(header(&a, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(&a, "access-control-allow-methods"), Some("POST,GET"));
        assert_eq!(
            header(&a, "access-control-allow-headers"),
            Some("X-Foo-Bar")
        );
        assert_eq!(header(&a, "access-control-max-age"), Some("86400"));
        assert_eq!(header(&a, "access-control-allow-credentials"), None);
    }
    mirrors_settled(&running).await;
    assert_eq!(api.received(), 0, "preflights reach no backend");
    assert_eq!(next.received(), 0, "nor any mirror");

    // An actual request from an allowed origin: the primary answers with
    // the CORS headers added; the mirror gets its copy.
    let a = send(
        &c,
        addr,
        Method::GET,
        "api.example.com",
        "/items",
        &[("origin", "https://example.com")],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.text(), "api");
    assert_eq!(
        header(&a, "access-control-allow-origin"),
        Some("https://example.com")
    );
    assert_eq!(
        header(&a, "access-control-expose-headers"),
        Some("X-Request-Id")
    );
    api.next().await;
    next.next().await;

    // Another origin: untouched, its preflight forwarded (and mirrored).
    for method in [Method::OPTIONS, Method::GET] {
        let a = send(
            &c,
            addr,
            method.clone(),
            "api.example.com",
            "/items",
            &[
                ("origin", "https://evil.example.net"),
                ("access-control-request-method", "POST"),
            ],
            Bytes::new(),
        )
        .await;
        assert_eq!(a.text(), "api", "{method}");
        assert_eq!(header(&a, "access-control-allow-origin"), None);
        assert_eq!(api.next().await.method, method);
    }
    mirrors_settled(&running).await;
    assert_eq!(next.received(), 3);
    running.shutdown().await;
}

/// The native `cors`: `"*"` allows any origin; credentials announced.
#[tokio::test]
async fn native_cors_any_origin_with_credentials() {
    let mut v1 = TestBackend::new().spawn().await;
    let config = format!(
        r#"
backends:
  v1: {{ endpoints: ["{}"] }}
routes:
  - name: r
    backend: v1
    cors: {{ allow_origins: ["*"], allow_methods: [PUT], allow_credentials: true }}
"#,
        v1.addr
    );
    let running = start_proxy(&config).await;
    let addr = running.listen_addrs[0];
    let a = send(
        &client(),
        addr,
        Method::OPTIONS,
        "x",
        "/",
        &[
            ("origin", "https://any.example"),
            ("access-control-request-method", "PUT"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        header(&a, "access-control-allow-origin"),
        Some("https://any.example")
    );
    assert_eq!(header(&a, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&a, "access-control-allow-methods"), Some("PUT"));
    // A request without Origin is not a CORS request.
    let b = send(&client(), addr, Method::GET, "x", "/", &[], Bytes::new()).await;
    assert_eq!(header(&b, "access-control-allow-origin"), None);
    v1.next().await;
    assert_eq!(v1.received(), 1);
    running.shutdown().await;
}

#[test]
fn convert_writes_the_cors_policy() {
    let dir = fixture_dir();
    let files = vec![
        dir.join("services.yaml"),
        dir.join("web-virtualservice.yaml"),
    ];
    let out = shadowgate::config::kube::convert_files(&files).unwrap_or_else(|e| panic!("{e}"));
    let expected = "  cors:\n    allow_origins:\n    - https://example.com\n    - regex: https://app\\..*\n    - regex: https://[a-z]+\\.test\\.example\\.com\n    allow_methods:\n    - POST\n    - GET\n    allow_headers:\n    - X-Foo-Bar\n    expose_headers:\n    - X-Request-Id\n    max_age: 86400s\n";
    assert!(out.contains(expected), "{out}");
    let yaml = format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstore: memory\n{out}");
    let config = shadowgate::config::from_yaml("converted.yaml", &yaml)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert!(config.routes[0].cors.is_some());
}
