//! Comparison end to end: real backends that differ in one JSON field, in
//! a random field (noise, cancelled by a secondary), in status, in a
//! header, in gzip-encoded bodies; results across a restart; a full queue
//! drops and counts without failing clients.

mod support;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use shadowgate::app::{self, StartOptions};
use support::*;

fn config(
    v1: std::net::SocketAddr,
    v2: std::net::SocketAddr,
    extra_route: &str,
    extra_mirror: &str,
) -> String {
    format!(
        "backends:\n  v1: {{ endpoints: [\"{v1}\"] }}\n  v2: {{ endpoints: [\"{v2}\"] }}\n{{SECONDARY}}routes:\n  - name: shop\n    backend: v1\n    mirrors: [{{ backend: v2, compare: true{extra_mirror} }}]\n{extra_route}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_differing_json_field_is_reported_per_endpoint_with_examples() {
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"id":1,"price":10,"name":"lamp","tags":["a","b"]}"#)
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"id":1,"price":12,"name":"lamp","tags":["a","b"]}"#)
        .spawn()
        .await;
    let proxy = start_proxy(&config(v1.addr, v2.addr, "", "").replace("{SECONDARY}", "")).await;
    let c = client();
    for i in 0..20 {
        let a = send(
            &c,
            proxy.listen_addrs[0],
            Method::GET,
            "shop",
            &format!("/items/{i}"),
            &[
                ("authorization", "Bearer secret"),
                ("cookie", "session=secret-cookie"),
                ("x-api-key", "secret-key"),
            ],
            Bytes::new(),
        )
        .await;
        assert_eq!(
            a.text(),
            r#"{"id":1,"price":10,"name":"lamp","tags":["a","b"]}"#,
            "the client gets v1"
        );
    }
    let report = compared(&proxy, "shop", 20).await;
    let e = &report["endpoints"][0];
    assert_eq!(e["endpoint"], "GET /items/{id}");
    assert_eq!(e["mirror"], "v2");
    assert_eq!(
        (
            e["compared"].as_u64(),
            e["different"].as_u64(),
            e["equal"].as_u64()
        ),
        (Some(20), Some(20), Some(0))
    );
    let price = field(e, "$.price");
    assert_eq!(price["different"], 20);
    assert_eq!(price["noise"], false);
    assert_eq!(
        e["fields"].as_array().unwrap().len(),
        1,
        "only the price differs: {e}"
    );

    let examples = api_get(
        &proxy,
        "/api/v1/diffs/shop/examples?endpoint=GET%20%2Fitems%2F%7Bid%7D&mirror=v2",
    )
    .await
    .json();
    let ex = &examples["examples"][0];
    assert_eq!(ex["request"]["method"], "GET");
    assert!(ex["request"]["path"]
        .as_str()
        .unwrap()
        .starts_with("/items/"));
    assert_eq!(ex["differences"][0]["path"], "$.price");
    assert_eq!(ex["primary"]["status"], 200);
    assert!(ex["shadow"]["body"].as_str().unwrap().contains("12"));
    let stored_auth = ex["request"]["headers"]["authorization"]
        .as_str()
        .unwrap_or("");
    assert!(
        !stored_auth.contains("secret"),
        "credentials never reach stored examples: {stored_auth}"
    );
    assert!(
        !examples.to_string().contains("secret"),
        "no credential (authorization, cookie, x-api-key) anywhere in the examples: {examples}"
    );

    let totals = api_get(&proxy, "/api/v1/diffs").await.json();
    assert_eq!(totals["routes"][0]["route"], "shop");
    assert_eq!(totals["routes"][0]["different"], 20);
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_compare_total{route="shop",backend="v2",result="compared"}"#
        ),
        20.0
    );
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_compare_total{route="shop",backend="v2",result="different"}"#
        ),
        20.0
    );
    let stats = api_get(&proxy, "/api/v1/stats").await.json();
    let mirror_window = &stats["routes"][0]["targets"][1]["windows"]["1m"];
    assert_eq!(mirror_window["compared"], 20);
    assert_eq!(mirror_window["diff_percent"], 100.0);

    // The terminal view.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadowgate"))
        .args(["diffs", "--admin", &format!("http://{}", proxy.admin_addr)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("GET /items/{id}") && text.contains("$.price"),
        "{text}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_field_is_noise_when_a_secondary_shows_it_differs_too() {
    let body = r#"{"price":10,"request_ts":"{rand}"}"#;
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(body)
        .random_token()
        .spawn()
        .await;
    let v1b = TestBackend::new()
        .header("content-type", "application/json")
        .body(body)
        .random_token()
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"price":11,"request_ts":"{rand}"}"#)
        .random_token()
        .spawn()
        .await;
    let yaml = config(v1.addr, v2.addr, "    secondary: v1b\n", "").replace(
        "{SECONDARY}",
        &format!("  v1b: {{ endpoints: [\"{}\"] }}\n", v1b.addr),
    );
    let proxy = start_proxy(&yaml).await;
    let c = client();
    for _ in 0..60 {
        get(&c, proxy.listen_addrs[0], "shop", "/quote").await;
        // Pace the pairs so the secondary's noise data keeps up.
        mirrors_settled(&proxy).await;
    }
    let report = compared(&proxy, "shop", 60).await;
    let e = &report["endpoints"][0];
    assert_eq!(field(e, "$.request_ts")["noise"], true, "{e}");
    assert_eq!(field(e, "$.price")["noise"], false, "{e}");
    assert_eq!(
        e["different"], 60,
        "the price makes every pair really different"
    );
    assert!(e["secondary_compared"].as_u64().unwrap() >= 50, "{e}");
    proxy.shutdown().await;

    // Without the price difference the pairs are noise only.
    let v3 = TestBackend::new()
        .header("content-type", "application/json")
        .body(body)
        .random_token()
        .spawn()
        .await;
    let yaml = config(v1.addr, v3.addr, "    secondary: v1b\n", "").replace(
        "{SECONDARY}",
        &format!("  v1b: {{ endpoints: [\"{}\"] }}\n", v1b.addr),
    );
    let proxy = start_proxy(&yaml).await;
    for _ in 0..40 {
        get(&c, proxy.listen_addrs[0], "shop", "/quote").await;
        mirrors_settled(&proxy).await;
    }
    let report = compared(&proxy, "shop", 40).await;
    let e = &report["endpoints"][0];
    assert!(
        e["noise_only"].as_u64().unwrap() >= 25,
        "most pairs are noise only once the secondary has spoken: {e}"
    );
    assert_eq!(
        e["different"].as_u64().unwrap() + e["noise_only"].as_u64().unwrap(),
        40
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_header_differences_are_fields_too() {
    let v1 = TestBackend::new()
        .header("x-version", "1")
        .body("same")
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .status(503)
        .header("x-version", "2")
        .body("same")
        .spawn()
        .await;
    let proxy = start_proxy(&config(v1.addr, v2.addr, "", "").replace("{SECONDARY}", "")).await;
    for _ in 0..5 {
        get(&client(), proxy.listen_addrs[0], "shop", "/x").await;
    }
    let report = compared(&proxy, "shop", 5).await;
    let e = &report["endpoints"][0];
    assert_eq!(field(e, "status")["different"], 5);
    assert_eq!(field(e, "header.x-version")["different"], 5);
    assert_eq!(
        e["fields"].as_array().unwrap().len(),
        2,
        "date, server and the like are ignored: {e}"
    );
    proxy.shutdown().await;
}

fn gzip(data: &[u8], level: u32) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(data).unwrap();
    Bytes::from(enc.finish().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_compared_after_decoding() {
    let doc = br#"{"items":[{"id":1,"qty":2},{"id":2,"qty":5}],"total":7}"#;
    let changed = br#"{"items":[{"id":1,"qty":2},{"id":2,"qty":6}],"total":7}"#;
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(doc, 1))
        .spawn()
        .await;
    let same = TestBackend::new()
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(doc, 9))
        .spawn()
        .await;
    let proxy = start_proxy(&config(v1.addr, same.addr, "", "").replace("{SECONDARY}", "")).await;
    for _ in 0..3 {
        get(&client(), proxy.listen_addrs[0], "shop", "/cart").await;
    }
    let e = &compared(&proxy, "shop", 3).await["endpoints"][0];
    assert_eq!(e["equal"], 3, "same JSON, different gzip bytes: equal: {e}");
    proxy.shutdown().await;

    let other = TestBackend::new()
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(changed, 6))
        .spawn()
        .await;
    let proxy = start_proxy(&config(v1.addr, other.addr, "", "").replace("{SECONDARY}", "")).await;
    for _ in 0..3 {
        get(&client(), proxy.listen_addrs[0], "shop", "/cart").await;
    }
    let e = &compared(&proxy, "shop", 3).await["endpoints"][0];
    assert_eq!(field(e, "$.items[*].qty")["different"], 3, "{e}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_survive_a_restart() {
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"a":2}"#)
        .spawn()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: {}\n{}",
        dir.path().join("results.db").display(),
        config(v1.addr, v2.addr, "", "").replace("{SECONDARY}", "")
    );
    let start = || async {
        app::start(
            shadowgate::config::from_yaml("t.yaml", &yaml).unwrap(),
            StartOptions::default(),
        )
        .await
        .unwrap()
    };
    let first = start().await;
    for _ in 0..7 {
        get(&client(), first.listen_addrs[0], "shop", "/a").await;
    }
    compared(&first, "shop", 7).await;
    first.shutdown().await;
    let second = start().await;
    let report = api_get(&second, "/api/v1/diffs/shop").await.json();
    assert_eq!(report["endpoints"][0]["compared"], 7, "{report}");
    assert_eq!(field(&report["endpoints"][0], "$.a")["different"], 7);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_compare_queue_drops_and_counts_without_failing_clients() {
    // Large JSON documents keep the single worker busy.
    let big: String = format!(
        "[{}]",
        (0..20_000)
            .map(|i| format!("{{\"i\":{i},\"v\":\"x{i}\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(big.clone())
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .body(big.replace("\"x1\"", "\"y1\""))
        .spawn()
        .await;
    let yaml = format!(
        "comparison: {{ workers: 1, queue: 1 }}\n{}",
        config(v1.addr, v2.addr, "", "").replace("{SECONDARY}", "")
    );
    let proxy = start_proxy(&yaml).await;
    let addr = proxy.listen_addrs[0];
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let c = client();
                for _ in 0..15 {
                    let a = get(&c, addr, "shop", "/big").await;
                    assert_eq!(a.status, 200);
                    assert_eq!(a.body.len(), big_len());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    mirrors_settled(&proxy).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(&proxy).await;
        let compared = metric(
            &m,
            r#"shadowgate_compare_total{route="shop",backend="v2",result="compared"}"#,
        );
        let dropped = metric(
            &m,
            r#"shadowgate_compare_total{route="shop",backend="v2",result="dropped"}"#,
        );
        if compared + dropped == 120.0 {
            assert!(
                dropped >= 1.0,
                "a queue of 1 must overflow: compared {compared}, dropped {dropped}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "compared {compared} + dropped {dropped} != 120"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
}

fn big_len() -> usize {
    format!(
        "[{}]",
        (0..20_000)
            .map(|i| format!("{{\"i\":{i},\"v\":\"x{i}\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    )
    .len()
}
