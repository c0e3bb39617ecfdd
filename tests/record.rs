//! Recording (issue #17, part 1): a route's `record:` writes its sampled
//! requests and the primary's answers as JSON lines, secrets hidden,
//! rotated, compressed when asked, never failing or delaying a request
//! when the file cannot be written, and flushed at shutdown.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use shadowgate::app::Running;
use support::*;

/// A proxy with one route `r` to a backend answering `body`, recording
/// with `record` (the inside of the `record:` flow mapping).
async fn proxy_recording(body: &'static str, record: &str) -> (Running, BackendHandle) {
    let v1 = TestBackend::new()
        .body(body)
        .header("content-type", "application/json")
        .header("set-cookie", "session=s3cret")
        .spawn()
        .await;
    let proxy = start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: r\n    backend: v1\n    record: {{ {record} }}\n",
        v1.addr
    ))
    .await;
    (proxy, v1)
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits (at most 10 s) until `path` holds at least `n` lines.
async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = lines(path);
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn file_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[tokio::test]
async fn records_carry_the_exchange_with_secrets_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "captures/items.jsonl");
    let (proxy, _v1) = proxy_recording(
        "{\"id\":7,\"name\":\"lamp\"}",
        &format!("file: {}, max_body_bytes: 16", file.display()),
    )
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    let a = send(
        &c,
        addr,
        Method::POST,
        "shop.example",
        "/items?token=abc123&colour=red",
        &[
            ("authorization", "Bearer hunter2"),
            ("x-request-id", "req-1"),
            ("content-type", "text/plain"),
        ],
        "small body",
    )
    .await;
    assert_eq!(a.status, 200);
    let big = send(
        &c,
        addr,
        Method::PUT,
        "shop.example",
        "/items/7",
        &[("x-request-id", "req-2")],
        Bytes::from(vec![b'x'; 100]),
    )
    .await;
    assert_eq!(big.status, 200);

    let got = wait_lines(&file, 2).await;
    assert_eq!(got.len(), 2, "two records: {got:?}");
    let r = got
        .iter()
        .find(|l| l["request_id"] == "req-1")
        .expect("the first request's record");
    assert_eq!(r["v"], 1);
    assert_eq!(r["route"], "r");
    assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    assert_eq!(r["request"]["method"], "POST");
    let uri = r["request"]["uri"].as_str().unwrap();
    assert!(uri.contains("colour=red"), "{uri}");
    assert!(!uri.contains("abc123"), "query secret kept: {uri}");
    assert_eq!(r["request"]["body"], "small body");
    assert_eq!(r["request"]["body_truncated"], false);
    let headers = r["request"]["headers"].as_array().unwrap();
    let auth = headers
        .iter()
        .find(|h| h[0] == "authorization")
        .expect("authorization listed");
    assert_eq!(auth[1], "<redacted>");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("hunter2"), "a credential reached the file");
    assert!(!text.contains("s3cret"), "a cookie reached the file");
    assert_eq!(r["response"]["status"], 200);
    // Over `max_body_bytes` (16): the answer's body is kept out, marked.
    assert_eq!(r["response"]["body_truncated"], true);
    assert!(r["duration_ms"].as_f64().unwrap() >= 0.0);

    let b = got.iter().find(|l| l["request_id"] == "req-2").unwrap();
    assert_eq!(b["request"]["method"], "PUT");
    assert_eq!(b["request"]["body_truncated"], true);
    assert_eq!(b["request"]["body"], "");

    let m = metrics(&proxy).await;
    assert_eq!(
        metric(&m, "shadowgate_record_written_total{route=\"r\"}"),
        2.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn binary_bodies_are_base64_and_small_ones_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "items.jsonl");
    let (proxy, _v1) = proxy_recording("{\"ok\":true}", &format!("file: {}", file.display())).await;
    let a = send(
        &client(),
        proxy.listen_addrs[0],
        Method::POST,
        "shop.example",
        "/upload",
        &[],
        Bytes::from_static(&[0xff, 0x00, 0xfe]),
    )
    .await;
    assert_eq!(a.status, 200);
    let got = wait_lines(&file, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["request"]["body_b64"], "/wD+");
    assert_eq!(got[0]["response"]["body"], "{\"ok\":true}");
    assert_eq!(got[0]["response"]["body_truncated"], false);
    proxy.shutdown().await;
}

#[tokio::test]
async fn percent_and_methods_choose_what_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "sampled.jsonl");
    let (proxy, _v1) = proxy_recording(
        "ok",
        &format!("file: {}, percent: 25, methods: [post]", file.display()),
    )
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, addr, "shop.example", "/g").await.status, 200);
    }
    for _ in 0..400 {
        let a = send(&c, addr, Method::POST, "shop.example", "/p", &[], "b").await;
        assert_eq!(a.status, 200);
    }
    proxy.shutdown().await;
    let got = lines(&file);
    assert!(
        got.iter().all(|l| l["request"]["method"] == "POST"),
        "a GET was recorded"
    );
    // 25% of 400 is 100; far outside 50..=160 is not sampling at 25%.
    assert!(
        (50..=160).contains(&got.len()),
        "{} of 400 POSTs recorded at 25%",
        got.len()
    );
}

#[tokio::test]
async fn rotation_keeps_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "rot.jsonl");
    let (proxy, _v1) = proxy_recording(
        "a body of some length to fill the files",
        &format!(
            "file: {}, max_file_bytes: 2KiB, max_files: 3",
            file.display()
        ),
    )
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for i in 0..60 {
        let a = get(&c, addr, "shop.example", &format!("/items/{i}")).await;
        assert_eq!(a.status, 200);
    }
    proxy.shutdown().await;
    let names: Vec<PathBuf> = ["", ".1", ".2", ".3"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", file.display())))
        .collect();
    for n in &names[..3] {
        assert!(n.exists(), "{} missing", n.display());
        let len = std::fs::metadata(n).unwrap().len();
        assert!(len <= 2048, "{} is {len} bytes", n.display());
        assert!(!lines(n).is_empty());
    }
    assert!(!names[3].exists(), "more than max_files kept");
    // The newest records are in the file being written.
    let last = lines(&names[0]);
    assert_eq!(last.last().unwrap()["request"]["uri"], "/items/59");
}

#[tokio::test]
async fn a_zst_file_is_compressed_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "items.jsonl.zst");
    let (proxy, _v1) = proxy_recording("{\"id\":1}", &format!("file: {}", file.display())).await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for i in 0..20 {
        let a = get(&c, addr, "shop.example", &format!("/z/{i}")).await;
        assert_eq!(a.status, 200);
    }
    proxy.shutdown().await;
    let raw = std::fs::read(&file).unwrap();
    assert_eq!(&raw[..4], &[0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");
    let mut text = String::new();
    zstd::stream::read::Decoder::new(&raw[..])
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let got: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 20);
    assert_eq!(got[0]["response"]["body"], "{\"id\":1}");
}

#[tokio::test]
async fn an_unwritable_file_drops_and_counts_without_failing_requests() {
    let dir = tempfile::tempdir().unwrap();
    // The file's directory is a regular file: it can be neither created
    // nor opened, whoever runs the test.
    let blocker = file_in(&dir, "blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let file = blocker.join("items.jsonl");
    let (proxy, _v1) = proxy_recording("ok", &format!("file: {}", file.display())).await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for _ in 0..10 {
        let a = get(&c, addr, "shop.example", "/x").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "ok");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let key = "shadowgate_record_dropped_total{route=\"r\",reason=\"write_failed\"}";
    let mut dropped = 0.0;
    while tokio::time::Instant::now() < deadline {
        dropped = metric(&metrics(&proxy).await, key);
        if dropped >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped, 10.0, "every record counted as dropped");
    assert_eq!(
        metric(
            &metrics(&proxy).await,
            "shadowgate_record_written_total{route=\"r\"}"
        ),
        0.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_the_last_records() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "last.jsonl");
    let (proxy, _v1) = proxy_recording("ok", &format!("file: {}", file.display())).await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for i in 0..3 {
        let a = get(&c, addr, "shop.example", &format!("/last/{i}")).await;
        assert_eq!(a.status, 200);
    }
    // Read at once after the shutdown, within the writer's one-second
    // batch: only the shutdown's flush can have written them.
    proxy.shutdown().await;
    let got = lines(&file);
    assert_eq!(got.len(), 3, "records lost at shutdown: {got:?}");
}
