//! `shadowgate replay` end to end (issue #17): a live route recorded by a
//! real proxy, replayed by the real binary against builds of the app
//! (v1 with a secondary: passes; v2 with a seeded change: fails, the field
//! named on its endpoint, the noise marked noise), the report in the live
//! API's shape; `--limit`, `--filter`, `--rate`, Host, bad lines, exit 2
//! on bad input, the error-rate gate; memory that does not grow with the
//! capture (JSON lines and HAR).

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::*;
use tokio::net::TcpListener;

/// The app under test: `GET /items/{id}` and `GET /users/{id}` answer
/// JSON with noise (`generated_at`, `trace`: fresh per answer). Version 2
/// changes one field, `price`, on items only.
async fn spawn_app(version: u8) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let _ = req.into_body().collect().await;
                    let noise = format!(
                        r#""generated_at":"{}","trace":"{:016x}""#,
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_nanos(),
                        fastrand::u64(..)
                    );
                    let id: u64 = path
                        .rsplit('/')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let body = if path.starts_with("/items/") {
                        let price = id * 3 + u64::from(version == 2);
                        format!(r#"{{"id":{id},"name":"item-{id}","price":{price},{noise}}}"#)
                    } else {
                        format!(r#"{{"id":{id},"user":"u-{id}",{noise}}}"#)
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the real binary's `replay` with `args` (the in-process backends
/// keep serving meanwhile).
async fn replay(args: &[&str]) -> Run {
    replay_under(&[], args).await
}

/// [`replay`] started by `wrapper` (a program and its arguments, such as
/// GNU time; none: the binary itself).
async fn replay_under(wrapper: &[&str], args: &[&str]) -> Run {
    let argv: Vec<&str> = wrapper
        .iter()
        .copied()
        .chain([env!("CARGO_BIN_EXE_shadowgate"), "replay"])
        .chain(args.iter().copied())
        .collect();
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(argv[0])
            .args(&argv[1..])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("replay finished within 120 s")
    .unwrap_or_else(|e| panic!("{} ran: {e}", argv[0]));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The structure of a JSON value: object keys (recursively), array
/// element structure (all elements merged), and scalar kinds.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(items) => {
            let mut merged = BTreeMap::new();
            for item in items {
                if let Value::Object(m) = shape(item) {
                    merged.extend(m);
                } else {
                    merged.insert(String::new(), shape(item));
                }
            }
            Value::Array(vec![Value::Object(merged.into_iter().collect())])
        }
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
    }
}

fn endpoint<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|x| x["endpoint"] == name))
        .unwrap_or_else(|| panic!("no endpoint {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_live_route_replays_clean_on_v1_and_fails_on_a_seeded_change() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("items.jsonl");
    let (v1, _t1) = spawn_app(1).await;
    let (v1b, _t2) = spawn_app(1).await;
    let (v2, _t3) = spawn_app(2).await;
    let (v1c, _t4) = spawn_app(1).await;
    // Live: v1 answers, a compared mirror (v2) and a secondary (v1c), so
    // the admin API has a real report to compare the replay's with.
    let yaml = format!(
        "backends:\n  v1: {{ endpoints: [\"{v1}\"] }}\n  v2: {{ endpoints: [\"{v2}\"] }}\n  v1c: {{ endpoints: [\"{v1c}\"] }}\nroutes:\n  - name: items\n    backend: v1\n    secondary: v1c\n    mirrors: [{{ backend: v2, compare: true }}]\n    record: {{ file: {} }}\n",
        capture.display()
    );
    let proxy = start_proxy(&yaml).await;
    let addr = proxy.listen_addrs[0];
    let n = 1000usize;
    let c = client();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                let path = if i % 4 == 3 {
                    format!("/users/{i}")
                } else {
                    format!("/items/{i}")
                };
                let a = get(&c, addr, "shop.example", &path).await;
                assert_eq!(a.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while line_count(&capture) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} recorded",
            line_count(&capture)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = compared(&proxy, "items", 50).await;
    proxy.shutdown().await;
    assert_eq!(line_count(&capture), n);
    let file = capture.to_str().unwrap();

    // v1 with a v1 secondary: only noise differs.
    let (url1, url1b, url2) = (
        format!("http://{v1}"),
        format!("http://{v1b}"),
        format!("http://{v2}"),
    );
    let clean_report = dir.path().join("clean.json");
    let run = replay(&[
        file,
        "--target",
        &url1,
        "--secondary",
        &url1b,
        "--concurrency",
        "16",
        "--max-diff-rate",
        "0",
        "--max-error-rate",
        "0",
        "--report",
        clean_report.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("replayed {n} of {n}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("different 0,"), "{}", run.stdout);
    let clean: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&clean_report).unwrap()).unwrap();
    let items = endpoint(&clean, "GET /items/{id}");
    assert_eq!(items["mirror"], "target");
    assert_eq!(items["compared"], 750);
    assert_eq!(items["different"], 0, "{items}");
    assert_eq!(field(items, "$.generated_at")["noise"], true, "{items}");
    assert_eq!(field(items, "$.trace")["noise"], true, "{items}");

    // v2 (price changed on items) with the v1 secondary: exit 1, the
    // price reported on GET /items/{id} only, the noise still noise.
    let report = dir.path().join("v2-{route}.json");
    let run = replay(&[
        file,
        "--target",
        &url2,
        "--secondary",
        &url1b,
        "--concurrency",
        "16",
        "--max-diff-rate",
        "1",
        "--report",
        report.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("FAIL: diff rate 75.00%"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("$.price"),
        "the table names the field: {}",
        run.stdout
    );
    let v2_report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("v2-items.json")).unwrap()).unwrap();
    let items = endpoint(&v2_report, "GET /items/{id}");
    assert_eq!(items["different"], 750, "{items}");
    let price = field(items, "$.price");
    assert_eq!(
        (price["different"].as_u64(), price["noise"].as_bool()),
        (Some(750), Some(false))
    );
    assert_eq!(field(items, "$.generated_at")["noise"], true, "{items}");
    let users = endpoint(&v2_report, "GET /users/{id}");
    assert_eq!(users["different"], 0, "{users}");
    assert!(
        users["fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["path"] != "$.price"),
        "{users}"
    );

    // The report has the live API's shape.
    assert_eq!(
        shape(&v2_report),
        shape(&live),
        "replay {v2_report}\nlive {live}"
    );

    // --config: the route's compare rules and endpoint templates apply.
    let cfg = dir.path().join("rules.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nstore: memory\nbackends:\n  v1: {{ endpoints: [\"{v1}\"] }}\nroutes:\n  - name: items\n    backend: v1\n    compare: {{ endpoints: [\"/items/{{item}}\"], ignore_paths: [\"$.generated_at\", \"$.trace\"] }}\n"
        ),
    )
    .unwrap();
    let cfg_report = dir.path().join("cfg.json");
    let run = replay(&[
        file,
        "--target",
        &url1,
        "--config",
        cfg.to_str().unwrap(),
        "--limit",
        "100",
        "--max-diff-rate",
        "0",
        "--report",
        cfg_report.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_report).unwrap()).unwrap();
    let items = endpoint(&r, "GET /items/{item}");
    assert_eq!(items["equal"], items["compared"], "{items}");
}

/// One recorded line, as the recorder writes it.
fn line(route: &str, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> String {
    serde_json::json!({
        "v": 1,
        "time": "2026-11-30T02:41:59.123Z",
        "route": route,
        "request_id": "r",
        "request": {"method": method, "uri": uri, "headers": headers, "body": body, "body_truncated": false},
        "response": {"status": 200, "headers": [["content-type", "text/plain"]], "body": "ok", "body_truncated": false},
        "duration_ms": 1.0
    })
    .to_string()
}

fn write_capture(dir: &tempfile::TempDir, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[tokio::test]
async fn limit_sends_at_most_n() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..10)
        .map(|i| line("r", "GET", &format!("/n/{i}"), &[], ""))
        .collect();
    let file = write_capture(&dir, "c.jsonl", &lines);
    let backend = TestBackend::new().spawn().await;
    let target = format!("http://{}", backend.addr);
    let run = replay(&[file.to_str().unwrap(), "--target", &target, "--limit", "3"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(backend.received(), 3);
    assert!(run.stdout.contains("replayed 3 of"), "{}", run.stdout);
}

#[tokio::test]
async fn filters_pick_by_route_method_and_path_and_the_recorded_host_and_traceparent_go_out() {
    let dir = tempfile::tempdir().unwrap();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [("host", "shop.example"), ("traceparent", trace)];
    let lines = vec![
        line("items", "GET", "/items/1", &headers, ""),
        line("items", "POST", "/items/2", &headers, "x"),
        line("items", "GET", "/other/3", &headers, ""),
        line("users", "GET", "/items/4", &headers, ""),
        line("items", "GET", "/items/5?q=1", &headers, ""),
    ];
    let file = write_capture(&dir, "c.jsonl", &lines);
    let mut backend = TestBackend::new().spawn().await;
    let target = format!("http://{}", backend.addr);
    let file = file.to_str().unwrap();
    let run = replay(&[
        file,
        "--target",
        &target,
        "--filter",
        "route=items",
        "--filter",
        "method=GET",
        "--filter",
        "path=/items/*",
    ])
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(backend.received(), 2, "{}", run.stdout);
    let mut paths = Vec::new();
    while let Some(r) = backend.try_next() {
        assert_eq!(r.method, Method::GET);
        assert_eq!(r.header("host"), Some("shop.example"));
        assert_eq!(r.header("traceparent"), Some(trace));
        paths.push(r.uri.to_string());
    }
    paths.sort();
    assert_eq!(paths, ["/items/1", "/items/5?q=1"]);
    assert!(run.stdout.contains("filtered out 3"), "{}", run.stdout);

    // --target-host sends the target's authority instead.
    let run = replay(&[
        file,
        "--target",
        &target,
        "--filter",
        "route=users",
        "--target-host",
    ])
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = backend.next().await;
    assert_eq!(r.header("host"), Some(backend.addr.to_string().as_str()));

    // Two routes: a report path without {route} is refused (exit 2), one
    // with it writes a file a route.
    let out = dir.path().join("out.json");
    let run = replay(&[file, "--target", &target, "--report", out.to_str().unwrap()]).await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("{route}"), "{}", run.stderr);
    let per_route = dir.path().join("out-{route}.json");
    let run = replay(&[
        file,
        "--target",
        &target,
        "--report",
        per_route.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(dir.path().join("out-items.json").exists());
    assert!(dir.path().join("out-users.json").exists());
}

#[tokio::test]
async fn a_zstd_recording_replays_like_a_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..3)
        .map(|i| line("r", "GET", &format!("/z/{i}"), &[], "") + "\n")
        .collect();
    let file = dir.path().join("c.jsonl.zst");
    std::fs::write(&file, zstd::stream::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
    let backend = TestBackend::new().spawn().await;
    let target = format!("http://{}", backend.addr);
    let run = replay(&[file.to_str().unwrap(), "--target", &target]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(backend.received(), 3);
    assert!(run.stdout.contains("bad lines 0"), "{}", run.stdout);
}

#[tokio::test]
async fn rate_paces_the_requests() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..10)
        .map(|i| line("r", "GET", &format!("/n/{i}"), &[], ""))
        .collect();
    let file = write_capture(&dir, "c.jsonl", &lines);
    let backend = TestBackend::new().spawn().await;
    let target = format!("http://{}", backend.addr);
    let run = replay(&[file.to_str().unwrap(), "--target", &target, "--rate", "20"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(backend.received(), 10);
    // The 10th request is due 9/20 s after the first: a lower bound only.
    assert!(
        run.elapsed >= Duration::from_millis(450),
        "{:?}",
        run.elapsed
    );
}

#[tokio::test]
async fn speed_keeps_the_recorded_gaps_scaled() {
    let dir = tempfile::tempdir().unwrap();
    // Recorded over 1.2 s; at 2x the last is due 0.6 s after the first.
    let lines: Vec<String> = [0, 400, 1200]
        .iter()
        .map(|ms| {
            let mut v: serde_json::Value =
                serde_json::from_str(&line("r", "GET", "/", &[], "")).unwrap();
            v["time"] = format!("2026-11-30T02:41:5{}.{:03}Z", ms / 1000, ms % 1000).into();
            v.to_string()
        })
        .collect();
    let file = write_capture(&dir, "c.jsonl", &lines);
    let backend = TestBackend::new().spawn().await;
    let target = format!("http://{}", backend.addr);
    let run = replay(&[file.to_str().unwrap(), "--target", &target, "--speed", "2x"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(backend.received(), 3);
    assert!(
        run.elapsed >= Duration::from_millis(600),
        "{:?}",
        run.elapsed
    );
}

#[tokio::test]
async fn bad_lines_are_counted_and_named_but_do_not_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut truncated: serde_json::Value =
        serde_json::from_str(&line("r", "POST", "/big", &[], "")).unwrap();
    truncated["request"]["body_truncated"] = true.into();
    let lines = vec![
        line("r", "GET", "/a", &[], ""),
        "this is not json".to_string(),
        line("r", "GET", "/b", &[], ""),
        r#"{"v":1,"request":{},"response":{}}"#.to_string(),
        truncated.to_string(),
        line("r", "GET", "/c", &[], ""),
    ];
    let file = write_capture(&dir, "c.jsonl", &lines);
    let backend = TestBackend::new()
        .body("ok")
        .header("content-type", "text/plain")
        .spawn()
        .await;
    let target = format!("http://{}", backend.addr);
    let run = replay(&[
        file.to_str().unwrap(),
        "--target",
        &target,
        "--max-diff-rate",
        "0",
    ])
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(backend.received(), 3);
    assert!(run.stdout.contains("bad lines 2"), "{}", run.stdout);
    assert!(
        run.stdout.contains("request body truncated 1"),
        "{}",
        run.stdout
    );
    let name = file.display().to_string();
    assert!(run.stdout.contains(&format!("{name}:2:")), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("{name}:4:")), "{}", run.stdout);

    // Only bad lines: nothing to judge, an input error.
    let bad = write_capture(&dir, "bad.jsonl", &["nope".to_string(), "{}".to_string()]);
    let run = replay(&[bad.to_str().unwrap(), "--target", &target]).await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("no readable exchange"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_missing_file_or_a_bad_url_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let run = replay(&[missing.to_str().unwrap(), "--target", "http://127.0.0.1:9"]).await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("nope.jsonl"), "{}", run.stderr);

    let file = write_capture(&dir, "c.jsonl", &[line("r", "GET", "/", &[], "")]);
    let file = file.to_str().unwrap();
    for url in ["not a url", "127.0.0.1:8080", "ftp://h/"] {
        let run = replay(&[file, "--target", url]).await;
        assert_eq!(run.code, 2, "{url}: {}\n{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("--target"), "{}", run.stderr);
    }
    let run = replay(&[
        file,
        "--target",
        "http://127.0.0.1:9",
        "--secondary",
        "nope",
    ])
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let no_ca = dir.path().join("no-ca.pem");
    let run = replay(&[
        file,
        "--target",
        "https://127.0.0.1:9",
        "--ca-file",
        no_ca.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--ca-file") && run.stderr.contains("no-ca.pem"),
        "{}",
        run.stderr
    );
    let run = replay(&[
        file,
        "--target",
        "http://127.0.0.1:9",
        "--filter",
        "colour=red",
    ])
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[tokio::test]
async fn the_error_rate_gate_counts_requests_without_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..4)
        .map(|i| line("r", "GET", &format!("/n/{i}"), &[], ""))
        .collect();
    let file = write_capture(&dir, "c.jsonl", &lines);
    let file = file.to_str().unwrap();
    let dead = format!("http://{}", dead_addr().await);
    let run = replay(&[file, "--target", &dead, "--max-error-rate", "50"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("error rate 100.00%"), "{}", run.stdout);
    // 5xx answers the recording did not have count too.
    let failing = TestBackend::new().status(503).spawn().await;
    let target = format!("http://{}", failing.addr);
    let run = replay(&[file, "--target", &target, "--max-error-rate", "50"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("new 5xx 4"), "{}", run.stdout);
    // Without thresholds there is nothing to fail; the route's report is
    // written, empty.
    let report = dir.path().join("r.json");
    let run = replay(&[
        file,
        "--target",
        &dead,
        "--report",
        report.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r, serde_json::json!({ "endpoints": [] }));
}

/// A checkout app that pays through its egress proxy: `POST /checkout/{n}`
/// calls `POST http://payments.example/charges` through the proxy at
/// `egress` (propagating `traceparent` and `x-request-id`) and answers the
/// charge id it got. Version 2 calls `/refunds` instead (a changed side
/// effect).
async fn spawn_checkout(version: u8, egress: Egress) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let egress = egress.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let egress = egress.clone();
                    async move {
                        let order = req
                            .uri()
                            .path()
                            .rsplit('/')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        let mut call = Request::builder()
                            .method(Method::POST)
                            .uri(if version == 2 {
                                "http://payments.example/refunds"
                            } else {
                                "http://payments.example/charges"
                            })
                            .header("host", "payments.example");
                        for name in ["traceparent", "x-request-id"] {
                            if let Some(v) = req.headers().get(name) {
                                call = call.header(name, v.clone());
                            }
                        }
                        let call = call
                            .body(Full::new(Bytes::from(format!(
                                r#"{{"order":"o-{order}"}}"#
                            ))))
                            .unwrap();
                        // The replay tells its egress address on stderr
                        // just before it sends (bounded wait).
                        let mut told = egress.subscribe();
                        let proxy = tokio::time::timeout(
                            Duration::from_secs(10),
                            told.wait_for(Option::is_some),
                        )
                        .await
                        .expect("the replay's egress address")
                        .unwrap()
                        .unwrap();
                        let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
                        let (mut sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                                .await
                                .unwrap();
                        tokio::spawn(conn);
                        let paid = sender.send_request(call).await.unwrap();
                        let status = paid.status().as_u16();
                        let paid = paid.into_body().collect().await.unwrap().to_bytes();
                        let charge = serde_json::from_slice::<serde_json::Value>(&paid)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_string));
                        let body = serde_json::json!({"order": format!("o-{order}"), "charge": charge, "payment_status": status});
                        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Where the replay's egress listens, once its stderr has told. (A
/// `OnceCell` was used first: a request that came before the address had
/// been read took the cell's initialisation with a future that never
/// ended, the address could then not be set, and the test waited its
/// 10 s bound; seen once, run beside another test binary.)
type Egress = std::sync::Arc<tokio::sync::watch::Sender<Option<SocketAddr>>>;

fn egress_address() -> Egress {
    std::sync::Arc::new(tokio::sync::watch::Sender::new(None))
}

/// Runs `replay` with `--egress-listen 127.0.0.1:0`, telling `egress` the
/// address it printed.
async fn replay_with_egress(args: &[&str], egress: Egress) -> Run {
    use tokio::io::AsyncBufReadExt;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shadowgate"))
        .arg("replay")
        .args(args)
        .args(["--egress-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("replay ran");
    let stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let lines = tokio::spawn(async move {
        let mut all = String::new();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("shadowgate replay: egress listening on ") {
                egress.send_replace(Some(addr.trim().parse().unwrap()));
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut s).await;
        s
    });
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("replay finished within 60 s")
        .unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.await.unwrap(),
        stderr: lines.await.unwrap(),
        elapsed: started.elapsed(),
    }
}

/// `--egress-listen`: the replayed build's outbound calls are answered
/// from the recorded ones (nothing leaves the machine: payments.example
/// is never resolved), matched by the recorded trace id the request
/// carries; a build that makes other calls gets 503s, and the summary
/// counts the calls not recorded and the recorded ones not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_listen_answers_the_builds_outbound_calls_from_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..3)
        .map(|n| {
            let trace = format!("{n:032x}");
            serde_json::json!({
                "v": 1,
                "time": "2026-11-30T02:41:59.123Z",
                "route": "checkout",
                "request_id": format!("req-{n}"),
                "trace_id": trace,
                "request": {"method": "POST", "uri": format!("/checkout/{n}"),
                            "headers": [["traceparent", format!("00-{trace}-00000000000000{n:02x}-01")], ["x-request-id", format!("req-{n}")]],
                            "body": "", "body_truncated": false},
                "response": {"status": 200, "headers": [["content-type", "application/json"]],
                             "body": format!(r#"{{"order":"o-{n}","charge":"ch_{n}","payment_status":200}}"#), "body_truncated": false},
                "duration_ms": 2.0,
                "calls": [{"service": "payments",
                           "request": {"method": "POST", "uri": "/charges", "headers": [["host", "payments.example"]],
                                       "body": format!(r#"{{"order":"o-{n}"}}"#), "body_truncated": false},
                           "response": {"status": 200, "headers": [["content-type", "application/json"]],
                                        "body": format!(r#"{{"id":"ch_{n}"}}"#), "body_truncated": false},
                           "duration_ms": 1.0}]
            })
            .to_string()
        })
        .collect();
    let file = write_capture(&dir, "checkout.jsonl", &lines);
    let file = file.to_str().unwrap();

    let egress = egress_address();
    let v1 = spawn_checkout(1, egress.clone()).await;
    let target = format!("http://{v1}");
    let run = replay_with_egress(
        &[
            file,
            "--target",
            &target,
            "--max-diff-rate",
            "0",
            "--max-call-diffs",
            "0",
        ],
        egress,
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("outbound calls: answered from the recording 3, not recorded 0 (answered 503), recorded but not made 0"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("different 0"), "{}", run.stdout);

    let egress = egress_address();
    let v2 = spawn_checkout(2, egress.clone()).await;
    let target = format!("http://{v2}");
    let run =
        replay_with_egress(&[file, "--target", &target, "--max-diff-rate", "0"], egress).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("outbound calls: answered from the recording 0, not recorded 3 (answered 503), recorded but not made 3"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("$.charge"), "{}", run.stdout);

    // The outbound-call gate alone: 6 calls differ (3 new, 3 not made).
    for (max, code) in [("5", 1), ("6", 0)] {
        let egress = egress_address();
        let v2 = spawn_checkout(2, egress.clone()).await;
        let target = format!("http://{v2}");
        let run = replay_with_egress(
            &[file, "--target", &target, "--max-call-diffs", max],
            egress,
        )
        .await;
        assert_eq!(run.code, code, "{max}: {}\n{}", run.stdout, run.stderr);
        if code == 1 {
            assert!(
                run.stdout
                    .contains("FAIL: 6 outbound calls differ from the recording"),
                "{}",
                run.stdout
            );
        }
    }
    // Without --egress-listen there are no calls to judge: a usage error.
    let run = replay(&[
        file,
        "--target",
        "http://127.0.0.1:9",
        "--max-call-diffs",
        "0",
    ])
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    eprintln!("{:?}", run.elapsed);
}

#[tokio::test]
async fn an_https_target_is_trusted_through_ca_file_or_insecure() {
    let pki = TestPki::new();
    let files = pki.issue("build", &["localhost"], false);
    let mut build = TlsBackend::spawn(pki.server_config(&files, &[b"http/1.1"], false)).await;
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..3)
        .map(|i| {
            serde_json::json!({
                "v": 1,
                "time": "2026-11-30T02:41:59.123Z",
                "route": "r",
                "request_id": format!("r{i}"),
                "request": {"method": "GET", "uri": format!("/items/{i}"), "headers": [["host", "shop.example"]], "body": "", "body_truncated": false},
                "response": {"status": 200, "headers": [], "body": "tls-ok", "body_truncated": false},
                "duration_ms": 1.0
            })
            .to_string()
        })
        .collect();
    let file = write_capture(&dir, "c.jsonl", &lines);
    let file = file.to_str().unwrap();
    let target = format!("https://localhost:{}", build.addr.port());
    let ca = pki.ca_path();
    let gate = ["--max-error-rate", "0", "--max-diff-rate", "0"];

    let mut args = vec![file, "--target", &target, "--ca-file", ca.to_str().unwrap()];
    args.extend(gate);
    let run = replay(&args).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for _ in 0..3 {
        let seen = build.next().await;
        assert!(seen.uri.path().starts_with("/items/"), "{:?}", seen.uri);
        assert_eq!(seen.headers["host"], "shop.example");
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    // The build's certificate is not trusted by the system's roots: no
    // answer at all, over the error gate.
    let mut args = vec![file, "--target", &target];
    args.extend(gate);
    let run = replay(&args).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("certificate") || run.stderr.contains("certificate"),
        "the reason is shown: {}\n{}",
        run.stdout,
        run.stderr
    );

    let mut args = vec![file, "--target", &target, "--insecure"];
    args.extend(gate);
    let run = replay(&args).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}

/// Peak resident memory (KiB, GNU time's `%M`; Debian `time`) of the real
/// binary's `replay` of `file` against `target`, after checking that it
/// sent all `n` exchanges and passed.
async fn replay_peak_kib(file: &Path, target: &str, n: usize) -> u64 {
    let time = ["/usr/bin/time", "-f", "peak-rss-kib %M"];
    let run = replay_under(&time, &[file.to_str().unwrap(), "--target", target]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("replayed {n} of {n}")),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    run.stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak-rss-kib ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak in {}", run.stderr))
}

/// "Large captures stream": replaying a capture eight times larger (about
/// 52 MB of JSON lines, and as a HAR) takes no more memory than a small
/// one, give or take the allocator's slack. A reader that held the file,
/// or a report that kept every exchange, would grow by the file's size.
#[tokio::test]
async fn memory_does_not_grow_with_the_capture() {
    const BODY: usize = 32 << 10;
    const SMALL: usize = 200;
    const LARGE: usize = 1600;
    let body = "a".repeat(BODY);
    let dir = tempfile::tempdir().unwrap();
    let jsonl = |name: &str, n: usize| {
        let lines: Vec<String> = (0..n)
            .map(|i| line("r", "POST", &format!("/big/{i}"), &[], &body))
            .collect();
        write_capture(&dir, name, &lines)
    };
    let small = jsonl("small.jsonl", SMALL);
    let large = jsonl("large.jsonl", LARGE);
    let entries: Vec<serde_json::Value> = (0..LARGE)
        .map(|i| {
            serde_json::json!({
                "startedDateTime": "2026-11-30T02:41:59.123Z",
                "time": 1.0,
                "request": {"method": "POST", "url": format!("http://h.test/big/{i}"),
                            "httpVersion": "HTTP/1.1", "headers": [], "queryString": [],
                            "cookies": [], "headersSize": -1, "bodySize": BODY,
                            "postData": {"mimeType": "text/plain", "text": body}},
                "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                             "headers": [{"name": "content-type", "value": "text/plain"}],
                             "cookies": [],
                             "content": {"size": 2, "mimeType": "text/plain", "text": "ok"},
                             "redirectURL": "", "headersSize": -1, "bodySize": 2},
                "cache": {}, "timings": {"send": 0, "wait": 1, "receive": 0}
            })
        })
        .collect();
    let har = dir.path().join("large.har");
    let doc = serde_json::json!({"log": {"version": "1.2",
        "creator": {"name": "test", "version": "1"}, "entries": entries}});
    std::fs::write(&har, serde_json::to_vec(&doc).unwrap()).unwrap();
    drop(doc);
    let file_mib = std::fs::metadata(&large).unwrap().len() >> 20;
    assert!(file_mib >= 48, "the large capture is {file_mib} MiB");

    let backend = TestBackend::new().spawn().await;
    let target = format!("http://{}", backend.addr);
    let small_kib = replay_peak_kib(&small, &target, SMALL).await;
    let large_kib = replay_peak_kib(&large, &target, LARGE).await;
    let har_kib = replay_peak_kib(&har, &target, LARGE).await;
    assert_eq!(backend.received(), SMALL + 2 * LARGE);
    eprintln!(
        "peak: {small_kib} KiB ({SMALL} exchanges), {large_kib} KiB ({LARGE}, {file_mib} MiB), \
         {har_kib} KiB (HAR)"
    );
    // The allowance is well under the 45 MiB the large file adds.
    let allowance = 16 << 10;
    for (what, kib) in [("JSON lines", large_kib), ("HAR", har_kib)] {
        assert!(
            kib <= small_kib + allowance,
            "{what}: {kib} KiB at peak replaying {LARGE} exchanges ({file_mib} MiB), \
             {small_kib} KiB replaying {SMALL}"
        );
    }
}
