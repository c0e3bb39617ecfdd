//! HAR 1.2 interop (issue #17): a HAR recorded from a real browser session
//! (Debian's headless Chromium driven by PyPI `playwright`, which writes
//! the HAR itself) reads through `record::open` into the exchanges the page
//! made, and they replay against the same backend; a recording made by the
//! proxy exports with `shadowgate record export --har` to a file that the
//! npm `har-validator` accepts and that reads back as the same exchanges.
//!
//! `./scripts/test` installs Playwright (pip; no browser download: the
//! system Chromium is used) and `har-validator` (npm) when missing.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use shadowgate::record::read::Exchange;
use support::*;
use tokio::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

/// One browser at a time: the machine has two cores.
static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The page the browser loads: four `fetch` calls (a GET with a query, a
/// POST with a JSON body, a PUT to the id the POST gave, a GET of an
/// id-shaped path), three that cannot be replayed (to the address in
/// `?dead=`, where nothing listens; `data:`; `blob:`), then
/// `window.__done`.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>shop</title><link rel="icon" href="data:,"></head>
<body><p id="state">running</p>
<script>
(async () => {
  const json = r => r.json();
  const list = await fetch('/api/items?colour=red&limit=2').then(json);
  const made = await fetch('/api/items', {
    method: 'POST', headers: {'content-type': 'application/json'},
    body: JSON.stringify({name: 'lamp', price: 12})
  }).then(json);
  await fetch('/api/items/' + made.id, {
    method: 'PUT', headers: {'content-type': 'application/json'},
    body: JSON.stringify({name: 'lamp', price: 15})
  }).then(json);
  await fetch('/api/users/4f9c2a1e-8b7d-4c3e-9a21-7d5e6f0b1c2d').then(json);
  // Not replayable: a request that fails (nothing listens there), a data:
  // URL and a blob: URL.
  const dead = new URLSearchParams(location.search).get('dead');
  await fetch('http://' + dead + '/gone').catch(() => null);
  await fetch('data:text/plain,hello').then(r => r.text());
  await fetch(URL.createObjectURL(new Blob(['bytes']))).then(r => r.text());
  document.getElementById('state').textContent = 'done ' + list.items.length;
  window.__done = true;
})().catch(e => { window.__error = String(e); window.__done = true; });
</script></body></html>
"#;

/// The backend the page talks to: deterministic answers, so the same
/// request sent again gets the same answer.
fn shop() -> Router {
    async fn list(Query(q): Query<std::collections::BTreeMap<String, String>>) -> Json<Value> {
        let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
        let colour = q.get("colour").cloned().unwrap_or_default();
        let items: Vec<Value> = (1..=limit)
            .map(|i| json!({"id": i, "colour": colour}))
            .collect();
        Json(json!({"items": items}))
    }
    async fn create(Json(body): Json<Value>) -> impl IntoResponse {
        (
            StatusCode::CREATED,
            Json(json!({"id": 42, "name": body["name"], "price": body["price"]})),
        )
    }
    async fn replace(UrlPath(id): UrlPath<u64>, Json(body): Json<Value>) -> Json<Value> {
        Json(json!({"id": id, "name": body["name"], "price": body["price"], "updated": true}))
    }
    async fn user(UrlPath(id): UrlPath<String>) -> Json<Value> {
        Json(json!({"id": id, "name": "Ada"}))
    }
    async fn blob(body: Bytes) -> impl IntoResponse {
        let mut out = body.to_vec();
        out.reverse();
        ([("content-type", "application/octet-stream")], out)
    }
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/items", get(list).post(create))
        .route("/api/items/{id}", put(replace))
        .route("/api/users/{id}", get(user))
        .route("/api/blobs/{id}", put(blob))
}

async fn start_shop() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, shop()).await;
    });
    addr
}

/// Runs `cmd` to its end, at most `within`; panics with its output when it
/// fails.
async fn run_to_end(mut cmd: Command, what: &str, within: Duration) -> String {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let out = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {within:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// The Playwright script: loads `base_url`, waits for the page's fetch
/// calls to end, and closes the context, which writes the HAR.
const RECORD_HAR: &str = r#"
import asyncio, sys
from playwright.async_api import async_playwright

async def main(chromium, base_url, har_path):
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--no-first-run"])
        context = await browser.new_context(record_har_path=har_path,
                                            record_har_content="embed")
        page = await context.new_page()
        await page.goto(base_url)
        await page.wait_for_function("window.__done === true", timeout=30000)
        error = await page.evaluate("window.__error || null")
        await context.close()
        await browser.close()
        if error:
            sys.exit("the page failed: " + error)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"#;

/// Records, in headless Chromium, a session of the page served at
/// `base_url` (an address of [`shop`]) and returns the HAR that Playwright
/// wrote into `dir`. Reusable: the replay end-to-end test replays it.
pub async fn record_browser_har(dir: &Path, base_url: &str) -> PathBuf {
    let dead = dead_addr().await;
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run ./scripts/test, which installs Debian's chromium"
    );
    let probe = std::process::Command::new("python3")
        .args(["-c", "import playwright"])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "PyPI playwright is missing: run ./scripts/test (or: python3 -m pip install playwright)"
    );
    let script = dir.join("record_har.py");
    std::fs::write(&script, RECORD_HAR).unwrap();
    let har = dir.join("session.har");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(CHROMIUM)
        .arg(format!("{base_url}/?dead={dead}"))
        .arg(&har)
        // Never a browser download: the system Chromium is given.
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("PLAYWRIGHT_BROWSERS_PATH", dir.join("no-browsers"));
    run_to_end(cmd, "the Playwright session", Duration::from_secs(120)).await;
    assert!(har.exists(), "Playwright wrote no HAR");
    har
}

fn read_all(path: &Path) -> (Vec<Exchange>, Vec<shadowgate::record::read::LineError>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for item in shadowgate::record::open(path).unwrap() {
        match item {
            Ok(x) => ok.push(x),
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

fn find<'a>(xs: &'a [Exchange], method: &str, uri: &str) -> &'a Exchange {
    xs.iter()
        .find(|x| {
            x.request.method.as_deref() == Some(method) && x.request.uri.as_deref() == Some(uri)
        })
        .unwrap_or_else(|| {
            let seen: Vec<_> = xs
                .iter()
                .map(|x| format!("{:?} {:?}", x.request.method, x.request.uri))
                .collect();
            panic!("no {method} {uri} among {seen:?}")
        })
}

fn body_json(b: &Bytes) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// Sends `x`'s request again to `addr` (its recorded headers and body).
async fn resend(c: &TestClient, addr: SocketAddr, x: &Exchange) -> Answer {
    let host = x.request.header("host").expect("a host header");
    let headers: Vec<(&str, &str)> = x
        .request
        .headers
        .iter()
        .filter(|(k, _)| k != "host")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send(
        c,
        addr,
        Method::from_bytes(x.request.method.as_deref().unwrap().as_bytes()).unwrap(),
        host,
        x.request.uri.as_deref().unwrap(),
        &headers,
        x.request.body.clone(),
    )
    .await
}

#[tokio::test]
async fn a_har_exported_from_a_real_browser_session_replays() {
    let _one = BROWSER_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = start_shop().await;
    let har = record_browser_har(dir.path(), &format!("http://{addr}")).await;

    let (xs, errors) = read_all(&har);
    // What cannot be replayed is left out with its reason, and only that.
    let skipped: Vec<&str> = errors.iter().filter_map(|e| e.skipped()).collect();
    assert_eq!(skipped.len(), errors.len(), "{errors:?}");
    assert!(skipped.contains(&"failed"), "{errors:?}");
    assert!(skipped.contains(&"not-http"), "{errors:?}");
    eprintln!(
        "browser HAR: {} exchanges, {} left out: {errors:?}",
        xs.len(),
        errors.len()
    );
    let host = addr.to_string();
    for x in &xs {
        assert_eq!(x.route, "har");
        assert_eq!(x.request.header("host"), Some(host.as_str()), "{x:?}");
        assert!(!x.request.uri.as_deref().unwrap().contains("gone"), "{x:?}");
        assert!(x.time.is_some() && x.duration_ms >= 0.0, "{x:?}");
    }
    let page = xs
        .iter()
        .find(|x| {
            x.request
                .uri
                .as_deref()
                .is_some_and(|u| u.starts_with("/?dead="))
        })
        .expect("the page");
    assert_eq!(page.response.status, Some(200));
    assert!(String::from_utf8_lossy(&page.response.body).contains("window.__done"));

    let list = find(&xs, "GET", "/api/items?colour=red&limit=2");
    assert_eq!(list.response.status, Some(200));
    assert_eq!(
        body_json(&list.response.body),
        json!({"items": [{"id": 1, "colour": "red"}, {"id": 2, "colour": "red"}]})
    );
    let made = find(&xs, "POST", "/api/items");
    assert_eq!(made.response.status, Some(201));
    assert_eq!(
        body_json(&made.request.body),
        json!({"name": "lamp", "price": 12})
    );
    assert_eq!(
        made.request.header("content-type"),
        Some("application/json")
    );
    assert_eq!(
        body_json(&made.response.body),
        json!({"id": 42, "name": "lamp", "price": 12})
    );
    let put = find(&xs, "PUT", "/api/items/42");
    assert_eq!(put.response.status, Some(200));
    assert_eq!(
        body_json(&put.request.body),
        json!({"name": "lamp", "price": 15})
    );
    let user = find(
        &xs,
        "GET",
        "/api/users/4f9c2a1e-8b7d-4c3e-9a21-7d5e6f0b1c2d",
    );
    assert_eq!(user.response.status, Some(200));
    assert_eq!(body_json(&user.response.body)["name"], "Ada");
    for x in &xs {
        // Nothing the replaying client frames itself is carried over.
        for h in ["content-length", "accept-encoding", "connection"] {
            assert_eq!(x.request.header(h), None, "{h} kept: {x:?}");
        }
        assert!(!x.request.headers.iter().any(|(k, _)| k.starts_with(':')));
    }

    // Sent again to the same backend, each gets the recorded answer.
    let c = client();
    for x in [list, made, put, user, page] {
        let again = resend(&c, addr, x).await;
        assert_eq!(Some(again.status.as_u16()), x.response.status, "{x:?}");
        assert_eq!(again.body, x.response.body, "{:?}", x.request.uri);
    }

    // And `shadowgate replay` replays the HAR as it is: every exchange
    // sent and judged equal, the entries a browser could not complete
    // skipped as not replayable, the CI gate passes.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_shadowgate"))
            .arg("replay")
            .arg(&har)
            .args(["--target", &format!("http://{addr}")])
            .args(["--max-diff-rate", "0", "--max-error-rate", "0"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("replay finished within 60 s")
    .expect("replay ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = xs.len();
    assert!(
        stdout.contains(&format!("replayed {n} of {n} exchanges")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("equal {n}, different 0")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("not replayable {}", errors.len())),
        "{stdout}"
    );
}

/// A proxy recording route `shop` (JSON lines at `file`) in front of the
/// shop backend.
async fn proxy_recording(shop: SocketAddr, file: &Path) -> shadowgate::app::Running {
    start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{shop}\"] }}\nroutes:\n  - name: shop\n    backend: v1\n    record: {{ file: {} }}\n",
        file.display()
    ))
    .await
}

/// Waits (at most 10 s) until `path` holds `n` records.
async fn wait_records(path: &Path, n: usize) -> Vec<Exchange> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<Exchange> = if path.exists() {
            read_all(path).0
        } else {
            Vec::new()
        };
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn validate_har(path: &Path) {
    let root = std::process::Command::new("npm")
        .args(["root", "-g"])
        .output()
        .expect("npm");
    let root = String::from_utf8_lossy(&root.stdout).trim().to_string();
    assert!(
        Path::new(&root).join("har-validator").exists(),
        "npm har-validator is missing: run ./scripts/test (or: npm install -g har-validator)"
    );
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(
            "require('har-validator').har(JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8')))\
             .then(() => console.log('valid'))\
             .catch(e => { console.error(JSON.stringify(e.errors || e.message)); process.exit(1); })",
        )
        .arg(path)
        .env("NODE_PATH", &root)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "har-validator rejects {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_recording_exports_as_a_valid_har_that_reads_back_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let shop = start_shop().await;
    let file = dir.path().join("shop.jsonl");
    let proxy = proxy_recording(shop, &file).await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    let json_h = [("content-type", "application/json")];
    type Call<'a> = (Method, &'a str, &'a [(&'a str, &'a str)], Bytes);
    let calls: [Call; 4] = [
        (
            Method::GET,
            "/api/items?colour=blue&limit=1",
            &[],
            Bytes::new(),
        ),
        (
            Method::POST,
            "/api/items",
            &json_h,
            Bytes::from_static(br#"{"name":"desk","price":80}"#),
        ),
        (
            Method::PUT,
            "/api/blobs/3",
            &[("content-type", "application/octet-stream")],
            Bytes::from_static(&[0xff, 0x00, 0x80, 0x7f]),
        ),
        (
            Method::GET,
            "/api/users/0a1b2c3d-0000-4000-8000-000000000001",
            &[],
            Bytes::new(),
        ),
    ];
    for (m, path, headers, body) in calls.iter().cloned() {
        let a = send(&c, addr, m, "shop.test", path, headers, body).await;
        assert!(a.status.is_success(), "{path}: {}", a.status);
    }
    let recorded = wait_records(&file, calls.len()).await;
    assert_eq!(recorded.len(), calls.len());
    proxy.shutdown().await;

    let out = dir.path().join("shop.har");
    let stdout = run_to_end(
        {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowgate"));
            cmd.args(["record", "export"])
                .arg(&file)
                .arg("--har")
                .arg(&out);
            cmd
        },
        "shadowgate record export",
        Duration::from_secs(30),
    )
    .await;
    assert!(stdout.is_empty(), "{stdout}");
    validate_har(&out);
    let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc["log"]["creator"]["name"], "shadowgate");
    assert_eq!(
        doc["log"]["entries"][0]["request"]["url"],
        "http://shop.test/api/items?colour=blue&limit=1"
    );

    let (back, errors) = read_all(&out);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(back.len(), recorded.len());
    let dropped = ["content-length", "accept-encoding"];
    for (b, r) in back.iter().zip(&recorded) {
        assert_eq!(b.route, "shop");
        assert_eq!(b.request_id, r.request_id);
        assert_eq!(b.request.method, r.request.method);
        assert_eq!(b.request.uri, r.request.uri);
        assert_eq!(b.request.body, r.request.body);
        let kept: Vec<_> = r
            .request
            .headers
            .iter()
            .filter(|(k, _)| !dropped.contains(&k.as_str()))
            .cloned()
            .collect();
        assert_eq!(b.request.headers, kept);
        assert_eq!(b.response.status, r.response.status);
        assert_eq!(b.response.body, r.response.body);
    }
    // The HAR's exchanges, sent to the backend, get the recorded answers.
    for x in &back {
        let again = resend(&c, shop, x).await;
        assert_eq!(Some(again.status.as_u16()), x.response.status);
        assert_eq!(again.body, x.response.body, "{:?}", x.request.uri);
    }

    // An unreadable recording is a usage error (exit 2), OUT untouched.
    let missing = run_export_status(&dir.path().join("nothing.jsonl"), &out).await;
    assert_eq!(missing, Some(2));
    validate_har(&out);
}

async fn run_export_status(input: &Path, out: &Path) -> Option<i32> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowgate"));
    cmd.args(["record", "export"])
        .arg(input)
        .arg("--har")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(Duration::from_secs(30), cmd.status())
        .await
        .expect("export finished")
        .unwrap();
    status.code()
}
