//! What the proxy keeps and where (issue #12 items 3, 4 and 7): secrets
//! never reach the store or the admin API, a route's noise thresholds are
//! used, and the default store lives beside the first config file, with
//! `check` opening it like `run` does.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use shadowgate::app::{self, StartOptions};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_shadowgate");

/// Every byte of every file in `dir` (the SQLite file and its WAL).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_secrets_never_reach_the_store_or_the_api_but_the_difference_is_reported() {
    // Every secret value holds `-secret-`; nothing stored or served may.
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .header("set-cookie", "sid=primary-secret-cookie; HttpOnly")
        .header("x-session", "primary-secret-session")
        .header("location", "/next?page=2&token=primary-secret-location")
        .body(r#"{"a":1}"#)
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .header("set-cookie", "sid=shadow-secret-cookie; HttpOnly")
        .header("x-session", "shadow-secret-session")
        .header("location", "/next?page=2&token=shadow-secret-location")
        .body(r#"{"a":2}"#)
        .spawn()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: {}\nredact: {{ headers: [X-Session], query_params: [session_id] }}\nbackends:\n  v1: {{ endpoints: [\"{}\"] }}\n  v2: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: shop, backend: v1, mirrors: [{{ backend: v2, compare: true }}] }}\n",
        dir.path().join("results.db").display(),
        v1.addr,
        v2.addr
    );
    let proxy = app::start(
        shadowgate::config::from_yaml("t.yaml", &yaml).unwrap(),
        StartOptions::default(),
    )
    .await
    .unwrap();
    let c = client();
    for i in 0..5 {
        let a = send(
            &c,
            proxy.listen_addrs[0],
            Method::GET,
            "shop",
            &format!("/items/{i}?token=query-secret-token&page=2&session_id=query-secret-session"),
            &[
                ("authorization", "Bearer request-secret-auth"),
                ("cookie", "sid=request-secret-cookie"),
            ],
            Bytes::new(),
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.headers["set-cookie"], "sid=primary-secret-cookie; HttpOnly",
            "the client still gets its cookie"
        );
    }
    let report = compared(&proxy, "shop", 5).await;
    let e = &report["endpoints"][0];
    // The differences are still counted and reported.
    for path in [
        "header.set-cookie",
        "header.x-session",
        "header.location",
        "$.a",
    ] {
        assert_eq!(field(e, path)["different"], 5, "{path}: {e}");
    }
    let examples = api_get(
        &proxy,
        "/api/v1/diffs/shop/examples?endpoint=GET%20%2Fitems%2F%7Bid%7D&mirror=v2",
    )
    .await
    .json();
    let text = examples.to_string();
    assert!(!text.contains("-secret-"), "a secret is served: {text}");
    let ex = &examples["examples"][0];
    assert_eq!(
        ex["request"]["path"]
            .as_str()
            .unwrap()
            .split_once('?')
            .unwrap()
            .1,
        "token=<redacted>&page=2&session_id=<redacted>"
    );
    let diff = |path: &str| {
        ex["differences"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["path"] == path)
            .unwrap_or_else(|| panic!("no difference at {path}: {ex}"))
            .clone()
    };
    for path in ["header.set-cookie", "header.x-session"] {
        let d = diff(path);
        assert_eq!(d["kind"], "value_changed", "{d}");
        assert_eq!(d["primary"], "<redacted>", "{d}");
        assert_eq!(d["other"], "values differ (redacted)", "{d}");
    }
    assert_eq!(
        diff("header.location")["other"],
        "/next?page=2&token=<redacted>"
    );
    assert_eq!(ex["primary"]["headers"]["set-cookie"], "<redacted>");
    assert_eq!(ex["shadow"]["headers"]["x-session"], "<redacted>");
    assert_eq!(ex["request"]["headers"]["cookie"], "<redacted>");
    proxy.shutdown().await;

    // The SQLite file (and its write-ahead log), byte for byte.
    let stored = all_bytes(dir.path());
    assert!(
        contains(&stored, "values differ (redacted)"),
        "the examples were stored ({} bytes)",
        stored.len()
    );
    for secret in [
        "-secret-",
        "primary-secret-cookie",
        "shadow-secret-session",
        "query-secret-token",
        "request-secret-auth",
    ] {
        assert!(!contains(&stored, secret), "{secret} is in the store file");
    }
}

/// Primary `{"x":1}`, shadow `{"x":2}` (differs every time), and a
/// secondary whose two endpoints answer in turn `{"x":1}` and `{"x":3}`:
/// the field differs in 100 % of shadow pairs and 50 % of secondary pairs.
/// Diffy's arithmetic: relative 33.3 %, absolute 50 points.
async fn noise_run(noise: &str) -> serde_json::Value {
    let json = |b: &'static str| {
        TestBackend::new()
            .header("content-type", "application/json")
            .body(b)
    };
    let v1 = json(r#"{"x":1}"#).spawn().await;
    let v2 = json(r#"{"x":2}"#).spawn().await;
    let same = json(r#"{"x":1}"#).spawn().await;
    let other = json(r#"{"x":3}"#).spawn().await;
    let proxy = start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{}\"] }}\n  v2: {{ endpoints: [\"{}\"] }}\n  v1b: {{ endpoints: [\"{}\", \"{}\"] }}\nroutes:\n  - name: shop\n    backend: v1\n    secondary: v1b\n{noise}    mirrors: [{{ backend: v2, compare: true }}]\n",
        v1.addr, v2.addr, same.addr, other.addr
    ))
    .await;
    let c = client();
    for _ in 0..24 {
        get(&c, proxy.listen_addrs[0], "shop", "/q").await;
        // One pair at a time, so the secondary alternates endpoints.
        mirrors_settled(&proxy).await;
    }
    let report = compared(&proxy, "shop", 24).await;
    // The secondary's pairs too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut report = report;
    while report["endpoints"][0]["secondary_compared"].as_u64() < Some(24) {
        assert!(tokio::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        report = compared(&proxy, "shop", 24).await;
    }
    proxy.shutdown().await;
    report["endpoints"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_noise_thresholds_decide_what_is_noise() {
    // Default thresholds (20 %, 0.03 points): 33 % and 50 points are real.
    let e = noise_run("").await;
    assert_eq!(field(&e, "$.x")["noise"], false, "{e}");
    assert_eq!(field(&e, "$.x")["noise_count"], 12, "{e}");
    assert_eq!(e["noise_only"], 0, "{e}");
    assert_eq!(e["different"], 24, "{e}");

    // relative 50: a 33 % relative difference is noise.
    let e = noise_run("    noise: { relative: 50 }\n").await;
    assert_eq!(field(&e, "$.x")["noise"], true, "{e}");
    assert!(
        e["noise_only"].as_u64().unwrap() >= 10,
        "once the secondary has 10 pairs, the shadow's pairs are noise only: {e}"
    );

    // absolute 60: a 50-point absolute difference is noise.
    let e = noise_run("    noise: { absolute: 60 }\n").await;
    assert_eq!(field(&e, "$.x")["noise"], true, "{e}");
    assert!(e["noise_only"].as_u64().unwrap() >= 10, "{e}");
}

fn check(config: &Path, cwd: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_default_store_is_beside_the_first_config_file_not_in_the_working_directory() {
    let configs = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let file = configs.path().join("shadowgate.yaml");
    std::fs::write(
        &file,
        "backends: { v1: { endpoints: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, backend: v1 }]\n",
    )
    .unwrap();
    let second = configs.path().join("more.yaml");
    std::fs::write(&second, "access_log: off\n").unwrap();

    let loaded = shadowgate::config::load_files(&[file.clone(), second]).unwrap();
    assert_eq!(
        loaded.store,
        shadowgate::config::StoreLocation::File(configs.path().join("shadowgate.db"))
    );

    // `check` opens it where `run` would.
    let (code, err) = check(&file, cwd.path());
    assert_eq!(code, 0, "{err}");
    assert!(configs.path().join("shadowgate.db").is_file());
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "nothing is written to the working directory"
    );
}

#[test]
fn check_and_run_exit_2_naming_a_store_they_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file cannot be created, whoever runs the test
    // (root ignores directory permissions).
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstore: not-a-dir/results.db\nbackends: { v1: { endpoints: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, backend: v1 }]\n",
    )
    .unwrap();
    let want = dir.path().join("not-a-dir/results.db");
    let (code, err) = check(&file, dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&want.display().to_string()) && err.contains("store"),
        "names the store path: {err}"
    );

    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&want.display().to_string()), "{err}");
}

#[test]
fn the_store_waits_for_a_busy_writer_instead_of_failing() {
    use shadowgate::config::StoreLocation;
    use shadowgate::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let loc = StoreLocation::File(dir.path().join("s.db"));
    let a = Store::open(&loc).unwrap();
    let b = Store::open(&loc).unwrap();
    // Two connections to one file writing at once (two processes, or two
    // proxies in one test binary): both succeed.
    std::thread::scope(|s| {
        for (n, store) in [&a, &b].into_iter().enumerate() {
            s.spawn(move || {
                for i in 0..200 {
                    store.put(&format!("k{n}-{i}"), &i).unwrap();
                }
            });
        }
    });
    assert_eq!(a.keys("k").unwrap().len(), 400);
    assert!(shadowgate::store::BUSY_TIMEOUT >= Duration::from_secs(5));
}
