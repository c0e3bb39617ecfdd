//! Metrics after known traffic (exact counts), the JSON API, the admin
//! token, and `shadowgate status`.

mod support;

use std::process::Command;

use bytes::Bytes;
use http::Method;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_api_count_known_traffic_exactly() {
    let v1 = TestBackend::new().spawn().await;
    let v2 = TestBackend::new().status(503).spawn().await;
    let dead = dead_addr().await;
    let proxy = start_proxy(&format!(
        r#"
backends:
  v1: {{ endpoints: ["{}"] }}
  v2: {{ endpoints: ["{}"] }}
  v3: {{ endpoints: ["{dead}"], eject_for: 0s }}
routes:
  - name: shop
    backend: v1
    mirrors:
      - {{ backend: v2 }}
      - {{ backend: v3, methods: [GET] }}
"#,
        v1.addr, v2.addr
    ))
    .await;
    let c = client();
    for _ in 0..30 {
        assert_eq!(
            get(&c, proxy.listen_addrs[0], "shop", "/items/1")
                .await
                .status,
            200
        );
    }
    for _ in 0..5 {
        send(
            &c,
            proxy.listen_addrs[0],
            Method::POST,
            "shop",
            "/cart",
            &[],
            Bytes::from_static(b"{}"),
        )
        .await;
    }
    mirrors_settled(&proxy).await;

    let m = metrics(&proxy).await;
    let want = [
        (
            r#"shadowgate_requests_total{route="shop",backend="v1",role="primary",code="200"}"#,
            35.0,
        ),
        (
            r#"shadowgate_requests_total{route="shop",backend="v2",role="mirror",code="503"}"#,
            35.0,
        ),
        (
            r#"shadowgate_mirror_errors_total{route="shop",backend="v2",kind="status_5xx"}"#,
            35.0,
        ),
        (
            r#"shadowgate_mirror_errors_total{route="shop",backend="v3",kind="connect"}"#,
            30.0,
        ),
        (
            r#"shadowgate_mirror_dropped_total{route="shop",backend="v3",reason="method"}"#,
            5.0,
        ),
        (
            r#"shadowgate_request_duration_seconds_count{route="shop",backend="v1",role="primary"}"#,
            35.0,
        ),
        (
            r#"shadowgate_mirror_in_flight{route="shop",backend="v2"}"#,
            0.0,
        ),
    ];
    for (line, value) in want {
        assert_eq!(metric(&m, line), value, "{line}\n{m}");
    }
    assert!(
        !m.contains("/items/1"),
        "metric labels never carry raw paths"
    );

    let stats = get(&c, proxy.admin_addr, "localhost", "/api/v1/stats")
        .await
        .json();
    let targets = &stats["routes"][0]["targets"];
    assert_eq!(stats["routes"][0]["route"], "shop");
    let one_minute = |i: usize| &targets[i]["windows"]["1m"];
    assert_eq!(targets[0]["backend"], "v1");
    assert_eq!(targets[0]["role"], "primary");
    assert_eq!(one_minute(0)["requests"], 35);
    assert_eq!(one_minute(0)["errors"], 0);
    assert_eq!(one_minute(0)["error_percent"], 0.0);
    assert!(one_minute(0)["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(targets[1]["backend"], "v2");
    assert_eq!(one_minute(1)["requests"], 35);
    assert_eq!(one_minute(1)["error_percent"], 100.0);
    assert_eq!(one_minute(1)["failed"]["status_5xx"], 35);
    assert_eq!(one_minute(2)["failed"]["connect"], 30);
    assert_eq!(one_minute(2)["dropped"]["method"], 5);
    assert_eq!(targets[2]["windows"]["15m"]["requests"], 30);

    let routes = get(&c, proxy.admin_addr, "localhost", "/api/v1/routes")
        .await
        .json();
    assert_eq!(routes["routes"][0]["name"], "shop");
    assert_eq!(routes["routes"][0]["backend"], "v1");
    assert_eq!(routes["routes"][0]["mirrors"][0]["backend"], "v2");
    assert_eq!(routes["routes"][0]["mirrors"][0]["percent"], 100.0);

    // The terminal view agrees with the API.
    let out = Command::new(env!("CARGO_BIN_EXE_shadowgate"))
        .args(["status", "--admin", &format!("http://{}", proxy.admin_addr)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v2_line = text.lines().find(|l| l.contains(" v2 ")).expect(&text);
    assert!(
        v2_line.contains("mirror") && v2_line.contains(" 35 ") && v2_line.contains("100.00%"),
        "{text}"
    );
    let v3_line = text.lines().find(|l| l.contains(" v3 ")).expect(&text);
    assert!(
        v3_line.contains("method=5") && v3_line.contains("connect=30"),
        "{text}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn admin_token_guards_everything_but_health() {
    let v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "admin_token: s3cret-token-0123456789\nbackends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    let c = client();
    let admin = proxy.admin_addr;
    assert_eq!(get(&c, admin, "localhost", "/healthz").await.status, 200);
    assert_eq!(get(&c, admin, "localhost", "/readyz").await.status, 200);
    for path in ["/metrics", "/api/v1/stats", "/api/v1/routes"] {
        assert_eq!(
            get(&c, admin, "localhost", path).await.status,
            401,
            "{path}"
        );
        let wrong = send(
            &c,
            admin,
            Method::GET,
            "localhost",
            path,
            &[("authorization", "Bearer nope")],
            Bytes::new(),
        )
        .await;
        assert_eq!(wrong.status, 401, "{path}");
        let right = send(
            &c,
            admin,
            Method::GET,
            "localhost",
            path,
            &[("authorization", "Bearer s3cret-token-0123456789")],
            Bytes::new(),
        )
        .await;
        assert_eq!(right.status, 200, "{path}");
    }
    // The admin API is not reachable through the proxy listener.
    let through_proxy = get(&c, proxy.listen_addrs[0], "admin", "/api/v1/stats").await;
    assert_eq!(
        v1.received(),
        1,
        "the proxy forwarded the path to the backend, not to the admin API"
    );
    assert_eq!(through_proxy.text(), "ok");
    proxy.shutdown().await;
}
