//! The web dashboard in a real headless Chromium, driven over WebDriver
//! (chromedriver on 127.0.0.1): live numbers that agree with
//! `/api/v1/stats`, the window selector, the admin token, no console errors,
//! no layout shifts, the diff explorer against its API contract (served by
//! a stand-in), and the Grafana dashboard's expressions against `/metrics`.
//!
//! Screenshots are written to `target/test-artifacts/`.

#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get as serve_get;
use axum::{Json, Router};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use support::*;
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "dash-token-0123456789abcdef";

/// One browser at a time: the machine has two cores.
static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require_chromium() {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing, so the dashboard cannot be tested in a browser. \
             Run ./scripts/test, which installs Debian's `chromium` and `chromium-driver` \
             (or: apt-get install {package})."
        );
    }
}

fn artifacts_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

// --- a small WebDriver client ------------------------------------------------

/// Collects errors from the page before any of its scripts run.
const ERROR_HOOK: &str = r#"
(function () {
  window.__errors = [];
  window.__layoutShift = 0;
  var original = console.error;
  console.error = function () {
    window.__errors.push('console.error: ' + Array.prototype.map.call(arguments, String).join(' '));
    return original.apply(console, arguments);
  };
  window.addEventListener('error', function (e) {
    var what = e.message || (e.target && (e.target.src || e.target.href)) || 'resource';
    window.__errors.push('error: ' + what);
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    window.__errors.push('unhandled rejection: ' + (e.reason && e.reason.stack || e.reason));
  });
  document.addEventListener('securitypolicyviolation', function (e) {
    window.__errors.push('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI);
  });
  try {
    new PerformanceObserver(function (list) {
      list.getEntries().forEach(function (entry) {
        if (!entry.hadRecentInput) window.__layoutShift += entry.value;
      });
    }).observe({ type: 'layout-shift', buffered: true });
  } catch (e) {}
})();
"#;

struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: TestClient,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        require_chromium();
        let client = client();
        let logs = tempfile::tempdir().unwrap();
        let log_path = logs.path().join("chromedriver.log");
        // The port is found free and then handed to chromedriver, so another
        // process may take it in between: a driver that exits (it could not
        // bind) is started again on a fresh port, at most three times.
        let mut attempt = 0;
        let (driver, base) = 'started: loop {
            attempt += 1;
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let log = std::fs::File::create(&log_path).unwrap();
            // Its own process group, which the browser it starts joins: a test
            // that fails half-way still ends them all (see Drop).
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .expect("start chromedriver");
            let base = format!("http://127.0.0.1:{port}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok((200, v)) =
                    raw_call(&client, Method::GET, &format!("{base}/status"), None).await
                {
                    if v["value"]["ready"] == true {
                        break 'started (driver, base);
                    }
                }
                if let Ok(Some(exit)) = driver.try_wait() {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    assert!(
                        attempt < 3,
                        "chromedriver exited ({exit}) on {base}, attempt {attempt}: {log}"
                    );
                    continue 'started;
                }
                if tokio::time::Instant::now() >= deadline {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("chromedriver did not come up on {base} within 20s; its log: {log}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage",
                        "--window-size=1366,768",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
            }},
        });
        let (status, v) = raw_call(
            &client,
            Method::POST,
            &format!("{base}/session"),
            Some(caps),
        )
        .await
        .expect("chromedriver answered");
        assert_eq!(status, 200, "new session: {v}");
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        let b = Browser {
            driver,
            base,
            session,
            client,
            _profile: profile,
        };
        b.cmd(
            Method::POST,
            "goog/cdp/execute",
            json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": ERROR_HOOK}}),
        )
        .await;
        // A laptop screen's viewport, whatever window the browser made.
        b.cmd(
            Method::POST,
            "goog/cdp/execute",
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": false
            }}),
        )
        .await;
        b
    }

    async fn cmd(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let body = (method != Method::GET).then_some(body);
        let (status, v) = raw_call(&self.client, method, &url, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        assert_eq!(status, 200, "WebDriver {path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(Method::POST, "url", json!({ "url": url })).await;
    }

    async fn url(&self) -> String {
        self.cmd(Method::GET, "url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `body` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, body: &str, args: Value) -> Value {
        self.cmd(
            Method::POST,
            "execute/sync",
            json!({ "script": body, "args": args }),
        )
        .await
    }

    async fn click(&self, css: &str) {
        let found = self
            .cmd(
                Method::POST,
                "element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string();
        self.cmd(Method::POST, &format!("element/{id}/click"), json!({}))
            .await;
    }

    /// Waits until `body` returns something truthy; returns it.
    async fn wait_for(&self, what: &str, body: &str, args: Value) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.js(body, args.clone()).await;
            let truthy = !(v.is_null()
                || v == false
                || v == 0
                || v.as_str() == Some("")
                || v.as_array().is_some_and(|a| a.is_empty()));
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let page = self
                    .js(
                        "return document.body ? document.body.innerText : ''",
                        json!([]),
                    )
                    .await;
                panic!("timed out waiting for {what}; the page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn polls(&self) -> u64 {
        self.js("return Number(document.body.dataset.polls || 0)", json!([]))
            .await
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits for `n` more rounds of polling than now.
    async fn wait_polls(&self, n: u64) {
        let target = self.polls().await + n;
        self.wait_for(
            &format!("{n} more polls"),
            "return Number(document.body.dataset.polls || 0) >= arguments[0]",
            json!([target]),
        )
        .await;
    }

    /// Errors the page reported, plus severe browser-log entries that are
    /// not the expected probes of optional endpoints.
    async fn errors(&self, allowed_404: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = self
            .js("return window.__errors || []", json!([]))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        let log = self
            .cmd(Method::POST, "se/log", json!({"type": "browser"}))
            .await;
        for entry in log.as_array().cloned().unwrap_or_default() {
            if entry["level"] != "SEVERE" {
                continue;
            }
            let msg = entry["message"].as_str().unwrap_or_default().to_string();
            let expected = msg.contains("404") && allowed_404.iter().any(|p| msg.contains(p))
                || msg.contains("401") && allowed_404.contains(&"401");
            if !expected {
                out.push(format!("browser log: {msg}"));
            }
        }
        out
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd(Method::GET, "screenshot", Value::Null).await;
        let png = base64_decode(b64.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let path = artifacts_dir().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Closes the browser and stops chromedriver.
    async fn quit(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = raw_call(&self.client, Method::DELETE, &url, None).await;
        let _ = raw_call(
            &self.client,
            Method::GET,
            &format!("{}/shutdown", self.base),
            None,
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.driver.wait()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Whatever is left of chromedriver's process group: the browser too.
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn raw_call(
    client: &TestClient,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut req = Request::builder().method(method).uri(url);
    let payload = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(payload)).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .map_err(|_| "no answer within 60s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, v))
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

// --- helpers for the admin server -------------------------------------------

async fn admin_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    send(
        &client(),
        addr,
        Method::GET,
        "localhost",
        path,
        &headers,
        Bytes::new(),
    )
    .await
}

/// The numbers the page shows for `field` in its current window:
/// (route, backend, role) → (data-window, data-value, text).
const READ_FIELD: &str = r#"
return Array.from(document.querySelectorAll('.num[data-field="' + arguments[0] + '"]')).map(function (e) {
  return [e.dataset.route, e.dataset.backend, e.dataset.role, e.dataset.window, e.dataset.value, e.textContent];
});
"#;

/// Waits until every target's `requests` on the page equals the API's for
/// `window`; returns the API's stats.
async fn page_agrees_with_api(browser: &Browser, admin: SocketAddr, window: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let shown = browser.js(READ_FIELD, json!(["requests"])).await;
        let stats = admin_get(admin, "/api/v1/stats", Some(TOKEN)).await.json();
        let mut want = Vec::new();
        for route in stats["routes"].as_array().unwrap() {
            for t in route["targets"].as_array().unwrap() {
                let n = t["windows"][window]["requests"].as_u64().unwrap();
                want.push(json!([
                    route["route"],
                    t["backend"],
                    t["role"],
                    window,
                    n.to_string(),
                    n.to_string()
                ]));
            }
        }
        let mut got: Vec<Value> = shown.as_array().cloned().unwrap_or_default();
        // The text may group digits (1,234).
        for row in &mut got {
            if let Some(t) = row[5].as_str() {
                row[5] = json!(t.replace(',', ""));
            }
        }
        let sort = |v: &mut Vec<Value>| v.sort_by_key(|r| r.to_string());
        sort(&mut got);
        sort(&mut want);
        if got == want {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page's request counts never matched /api/v1/stats ({window}):\npage: {got:?}\napi:  {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// --- the tests ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_stats_that_agree_with_the_api() {
    require_chromium();
    let _one_browser = BROWSER_LOCK.lock().await;
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"id":1,"price":10}"#)
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .delay(Duration::from_millis(3))
        .spawn()
        .await;
    let v3 = TestBackend::new().status(503).spawn().await;
    let proxy = start_proxy(&format!(
        r#"
admin_token: {TOKEN}
backends:
  v1: {{ endpoints: ["{}"] }}
  v2: {{ endpoints: ["{}"] }}
  v3: {{ endpoints: ["{}"] }}
routes:
  - name: shop
    match: {{ host: shop }}
    backend: v1
    mirrors:
      - {{ backend: v2 }}
      - {{ backend: v3, methods: [GET] }}
  - name: search
    match: {{ host: search }}
    backend: v2
    mirrors:
      - {{ backend: v1 }}
"#,
        v1.addr, v2.addr, v3.addr
    ))
    .await;
    let admin = proxy.admin_addr;
    let listen = proxy.listen_addrs[0];

    // Plain HTTP first: the token guards the page and its assets, and the
    // content types are right.
    let page = admin_get(admin, "/", None).await;
    assert_eq!(page.status, 401);
    assert!(
        page.text().contains("Admin token required"),
        "{}",
        page.text()
    );
    assert_eq!(
        admin_get(admin, "/assets/dashboard.js", None).await.status,
        401
    );
    let page = admin_get(admin, &format!("/?token={TOKEN}"), None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    for (file, ctype) in [
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("chart.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
    ] {
        let a = admin_get(admin, &format!("/assets/{file}"), Some(TOKEN)).await;
        assert_eq!(a.status, 200, "{file}");
        assert_eq!(a.headers["content-type"], ctype, "{file}");
        assert_eq!(
            shadowgate::admin::dashboard::asset_content_type(file),
            Some(ctype)
        );
    }
    assert_eq!(
        admin_get(admin, "/assets/nothing.js", Some(TOKEN))
            .await
            .status,
        404
    );

    // Known traffic before the page opens.
    let c = client();
    let shop = |path: &'static str, method: Method| {
        let c = c.clone();
        async move {
            let body = if method == Method::POST { "{}" } else { "" };
            send(&c, listen, method, "shop", path, &[], Bytes::from(body)).await
        }
    };
    for _ in 0..20 {
        assert_eq!(shop("/items/1", Method::GET).await.status, 200);
    }
    for _ in 0..4 {
        assert_eq!(shop("/cart", Method::POST).await.status, 200);
    }
    for _ in 0..5 {
        assert_eq!(get(&c, listen, "search", "/q?x=1").await.status, 200);
    }
    mirrors_settled(&proxy).await;

    let browser = Browser::start().await;
    browser
        .goto(&format!("http://{admin}/?token={TOKEN}&interval=1000"))
        .await;
    browser
        .wait_for(
            "the first poll",
            "return Number(document.body.dataset.polls || 0) >= 1",
            json!([]),
        )
        .await;
    // The token left the address bar and stays with the tab.
    let url = browser.url().await;
    assert!(!url.contains("token"), "{url}");
    assert!(url.contains("interval=1000"), "{url}");
    assert_eq!(
        browser
            .js(
                "return sessionStorage.getItem('shadowgate.adminToken')",
                json!([])
            )
            .await,
        TOKEN
    );
    let viewport = browser
        .js("return [window.innerWidth, window.innerHeight]", json!([]))
        .await;
    assert_eq!(viewport, json!([1366, 768]), "the laptop-sized viewport");

    // Both routes, each target in its own column.
    let heads = browser
        .js(
            "return Array.from(document.querySelectorAll('.target-head')).map(function (e) { return [e.dataset.route, e.dataset.backend, e.dataset.role]; })",
            json!([]),
        )
        .await;
    assert_eq!(
        heads,
        json!([
            ["shop", "v1", "primary"],
            ["shop", "v2", "mirror"],
            ["shop", "v3", "mirror"],
            ["search", "v2", "primary"],
            ["search", "v1", "mirror"]
        ])
    );

    // Live traffic while the page polls, so the charts have lines.
    for _ in 0..12 {
        for _ in 0..3 {
            shop("/items/2", Method::GET).await;
        }
        shop("/cart", Method::POST).await;
        get(&c, listen, "search", "/q?x=2").await;
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    mirrors_settled(&proxy).await;
    let layout_before = browser
        .js(
            "return Array.from(document.querySelectorAll('.route, .chart, table.targets')).map(function (e) { var r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })",
            json!([]),
        )
        .await;
    browser.wait_polls(2).await;

    // The numbers agree with the API, and with what was sent.
    let stats = page_agrees_with_api(&browser, admin, "1m").await;
    let shop_stats = &stats["routes"][0]["targets"];
    assert_eq!(shop_stats[0]["windows"]["1m"]["requests"], 20 + 4 + 12 * 4);
    assert_eq!(shop_stats[1]["windows"]["1m"]["requests"], 20 + 4 + 12 * 4);
    assert_eq!(shop_stats[2]["windows"]["1m"]["requests"], 20 + 12 * 3);
    let dropped = browser.js(READ_FIELD, json!(["dropped"])).await;
    assert!(
        dropped
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[1] == "v3" && r[4] == "16"),
        "{dropped}"
    );
    let v3_sub = browser
        .js(
            "return document.querySelector('.sub[data-route=\"shop\"][data-backend=\"v3\"][data-sub=\"dropped\"]').textContent + ' | ' + document.querySelector('.sub[data-route=\"shop\"][data-backend=\"v3\"][data-sub=\"failed\"]').textContent",
            json!([]),
        )
        .await;
    assert_eq!(v3_sub, "method 16 | status 5xx 56");
    let errors = browser.js(READ_FIELD, json!(["error_percent"])).await;
    assert!(
        errors
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[1] == "v3" && r[5] == "100.0%"),
        "{errors}"
    );

    // Nothing moved while the numbers and charts were updating.
    let layout_after = browser
        .js(
            "return Array.from(document.querySelectorAll('.route, .chart, table.targets')).map(function (e) { var r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })",
            json!([]),
        )
        .await;
    assert_eq!(
        layout_before, layout_after,
        "the layout moved between polls"
    );
    let shift = browser
        .js("return window.__layoutShift", json!([]))
        .await
        .as_f64()
        .unwrap_or(0.0);
    assert!(shift < 0.01, "cumulative layout shift {shift}");

    // The charts drew lines in the targets' colours.
    let coloured = browser
        .js(
            r#"
var canvas = document.querySelector('.chart[data-route="shop"][data-chart="rate"] canvas');
var data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
var blue = 0, orange = 0;
for (var i = 0; i < data.length; i += 4) {
  if (Math.abs(data[i] - 37) < 30 && Math.abs(data[i + 1] - 99) < 30 && data[i + 2] > 200) blue++;
  if (data[i] > 200 && Math.abs(data[i + 1] - 88) < 30 && data[i + 2] < 60) orange++;
}
return [blue, orange];
"#,
            json!([]),
        )
        .await;
    assert!(
        coloured[0].as_u64().unwrap() > 20 && coloured[1].as_u64().unwrap() > 20,
        "the request-rate chart has no primary and mirror lines: {coloured}"
    );

    // The window selector switches every number.
    browser
        .click(".window-select button[data-window=\"15m\"]")
        .await;
    browser
        .wait_for(
            "numbers for 15m",
            "return Array.from(document.querySelectorAll('.num[data-field=\"requests\"]')).every(function (e) { return e.dataset.window === '15m'; })",
            json!([]),
        )
        .await;
    page_agrees_with_api(&browser, admin, "15m").await;
    browser
        .click(".window-select button[data-window=\"1m\"]")
        .await;
    page_agrees_with_api(&browser, admin, "1m").await;

    // The promotion panel shows each route's state and verdict as the API has them.
    let api_promotion = admin_get(admin, "/api/v1/routes/shop/promotion", Some(TOKEN))
        .await
        .json();
    let shown = browser
        .wait_for(
            "the promotion panel",
            "var p = document.querySelector('[data-panel=\"promotion\"][data-route=\"shop\"]'); if (!p || p.hidden) return null; var s = p.querySelector('[data-field=\"promotion-state\"]'); var v = p.querySelector('[data-field=\"promotion-verdict\"]'); return s && v ? [s.textContent, v.textContent] : null",
            json!([]),
        )
        .await;
    assert_eq!(
        shown[0], api_promotion["state"],
        "{shown} vs {api_promotion}"
    );
    assert_eq!(
        shown[1].as_str().unwrap(),
        api_promotion["verdict"].as_str().unwrap().replace('_', " ")
    );
    browser.click(".tab[data-view=\"diffs\"]").await;
    let disabled = browser
        .wait_for(
            "the comparison notice",
            "var e = document.querySelector('[data-state=\"comparison-disabled\"]'); return e && e.offsetParent !== null && e.textContent",
            json!([]),
        )
        .await;
    assert!(
        disabled
            .as_str()
            .unwrap()
            .contains("Comparison not enabled"),
        "{disabled}"
    );
    browser.screenshot("dashboard-no-comparison.png").await;
    browser.click(".tab[data-view=\"traffic\"]").await;
    browser.wait_polls(1).await;

    let errors = browser.errors(&["/api/v1/diffs", "/promotion"]).await;
    assert!(errors.is_empty(), "the page reported errors:\n{errors:#?}");
    let shot = browser.screenshot("dashboard.png").await;
    eprintln!("screenshot: {}", shot.display());

    // A reload without ?token= resends the token the tab holds.
    browser.goto(&format!("http://{admin}/")).await;
    browser
        .wait_for(
            "the dashboard after a reload",
            "return location.search === '' && Number(document.body.dataset.polls || 0) >= 1",
            json!([]),
        )
        .await;
    // A wrong token is refused and forgotten.
    browser
        .goto(&format!("http://{admin}/?token=wrong-token-000000000"))
        .await;
    browser
        .wait_for(
            "the refused-token page",
            "var e = document.getElementById('refused'); return e && !e.hidden && sessionStorage.getItem('shadowgate.adminToken') === null",
            json!([]),
        )
        .await;
    let errors = browser
        .errors(&["/api/v1/diffs", "/promotion", "401"])
        .await;
    assert!(errors.is_empty(), "the page reported errors:\n{errors:#?}");

    browser.quit().await;
    proxy.shutdown().await;
}

/// The diff explorer and promotion panel against the API contract, served
/// by a stand-in beside the real dashboard assets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_explorer_shows_endpoints_fields_and_highlighted_examples() {
    require_chromium();
    let _one_browser = BROWSER_LOCK.lock().await;
    let seen_queries = std::sync::Arc::new(tokio::sync::Mutex::new(
        Vec::<HashMap<String, String>>::new(),
    ));
    let seen = seen_queries.clone();
    let app: Router = shadowgate::admin::dashboard::pages()
        .route("/api/v1/stats", serve_get(|| async { Json(fake_stats()) }))
        .route(
            "/api/v1/routes",
            serve_get(|| async {
                Json(json!({"routes": [
                    {"name": "shop", "backend": "v1", "mirrors": [{"backend": "v2", "percent": 100.0, "max_in_flight": 1024, "in_flight": 3}]},
                    {"name": "search", "backend": "s1", "mirrors": []}
                ]}))
            }),
        )
        .route(
            "/api/v1/diffs",
            serve_get(|| async {
                Json(json!({"routes": [
                    {"route": "shop", "mirror": "v2", "compared": 200, "equal": 180, "different": 12, "noise_only": 6, "truncated": 2}
                ]}))
            }),
        )
        .route(
            "/api/v1/diffs/{route}",
            serve_get(|axum::extract::Path(route): axum::extract::Path<String>| async move {
                if route != "shop" {
                    return Err(StatusCode::NOT_FOUND);
                }
                Ok(Json(json!({"endpoints": [
                    {"endpoint": "GET /items/{id}", "mirror": "v2", "compared": 150, "equal": 135, "different": 10, "noise_only": 5, "truncated": 0,
                     "fields": [
                        {"path": "$.price", "different": 9, "noise_count": 0, "noise": false},
                        {"path": "$.tags[1]", "different": 4, "noise_count": 0, "noise": false},
                        {"path": "$.meta.generated_at", "different": 150, "noise_count": 148, "noise": true}
                     ]},
                    {"endpoint": "POST /cart", "mirror": "v2", "compared": 50, "equal": 45, "different": 2, "noise_only": 1, "truncated": 2,
                     "fields": [{"path": "status", "different": 2, "noise_count": 0, "noise": false}]}
                ]})))
            }),
        )
        .route(
            "/api/v1/diffs/{route}/examples",
            serve_get(move |Query(q): Query<HashMap<String, String>>| {
                let seen = seen.clone();
                async move {
                    seen.lock().await.push(q.clone());
                    Json(fake_examples(q.get("endpoint").map(String::as_str).unwrap_or("")))
                }
            }),
        )
        .route(
            "/api/v1/routes/{route}/promotion",
            serve_get(|axum::extract::Path(route): axum::extract::Path<String>| async move {
                if route == "shop" {
                    Ok(Json(json!({"state": "observing", "mirror": "v2", "since": "2026-01-01T00:00:00Z", "steps": [1, 2]})))
                } else {
                    Err(StatusCode::NOT_FOUND)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/?interval=1000")).await;
    browser
        .wait_for(
            "the first poll",
            "return Number(document.body.dataset.polls || 0) >= 1",
            json!([]),
        )
        .await;

    // The promotion panel shows where the endpoint answers, and only there.
    let promotion = browser
        .js(
            "return Array.from(document.querySelectorAll('[data-panel=\"promotion\"]')).map(function (e) { return [e.dataset.route, e.hidden, e.textContent]; })",
            json!([]),
        )
        .await;
    assert_eq!(promotion[0][0], "shop");
    assert_eq!(promotion[0][1], false);
    assert!(
        promotion[0][2].as_str().unwrap().contains("observing"),
        "{promotion}"
    );
    assert_eq!(promotion[1], json!(["search", true, ""]));
    // Diff rate comes from the stats' compare counts.
    let diff = browser.js(READ_FIELD, json!(["diff_percent"])).await;
    assert!(
        diff.as_array()
            .unwrap()
            .iter()
            .any(|r| r[1] == "v2" && r[5] == "6.00%"),
        "{diff}"
    );
    browser.screenshot("dashboard-compare-traffic.png").await;

    browser.click(".tab[data-view=\"diffs\"]").await;
    // The busiest endpoint is picked first, with its fields; noise marked.
    let chips = browser
        .wait_for(
            "the endpoint list",
            "return Array.from(document.querySelectorAll('.chip')).map(function (e) { return [e.dataset.endpoint, e.dataset.path, e.dataset.noise]; })",
            json!([]),
        )
        .await;
    assert_eq!(
        chips,
        json!([
            ["GET /items/{id}", "$.price", "false"],
            ["GET /items/{id}", "$.tags[1]", "false"],
            ["GET /items/{id}", "$.meta.generated_at", "true"],
            ["POST /cart", "status", "false"]
        ])
    );
    // The example pair, side by side, differing lines highlighted.
    let marked = browser
        .wait_for(
            "highlighted lines",
            r#"
var out = {};
document.querySelectorAll('.side').forEach(function (side) {
  out[side.dataset.side] = {
    lines: Array.from(side.querySelectorAll('.ln.diff')).map(function (l) { return l.querySelector('.tx').textContent.trim(); }),
    near: Array.from(side.querySelectorAll('.ln.diff-near')).map(function (l) { return l.dataset.path; }),
    headers: Array.from(side.querySelectorAll('tr.diff')).map(function (r) { return r.dataset.header; }),
    status: side.querySelector('.status-line').classList.contains('diff'),
  };
});
return out.primary && out.shadow ? out : null;
"#,
            json!([]),
        )
        .await;
    assert_eq!(
        marked["primary"],
        json!({"lines": ["\"price\": 10.50,"], "near": ["$.tags"], "headers": ["x-version"], "status": false})
    );
    assert_eq!(
        marked["shadow"],
        json!({"lines": ["\"price\": 12,", "\"b\""], "near": [], "headers": ["x-version"], "status": false})
    );
    let queries = seen_queries.lock().await.clone();
    assert_eq!(queries[0]["endpoint"], "GET /items/{id}");
    assert_eq!(queries[0]["mirror"], "v2");
    // Backend bodies are text, never markup.
    assert_eq!(
        browser
            .js(
                "return document.querySelectorAll('.side img, .side script').length",
                json!([])
            )
            .await,
        0
    );
    let shot = browser.screenshot("dashboard-diffs.png").await;
    eprintln!("screenshot: {}", shot.display());

    // The second endpoint: a status difference and a text body.
    browser
        .click("tr.endpoint[data-endpoint=\"POST /cart\"]")
        .await;
    let status = browser
        .wait_for(
            "the status difference",
            "var s = document.querySelectorAll('.status-line.diff'); var l = document.querySelectorAll('.code[data-kind=\"text\"] .ln.diff'); return s.length === 2 && l.length === 2 ? [s[0].textContent, s[1].textContent, l[0].dataset.path] : null",
            json!([]),
        )
        .await;
    assert_eq!(status, json!(["HTTP 200", "HTTP 500", "line[2]"]));

    browser.wait_polls(2).await;
    let errors = browser.errors(&["/promotion"]).await;
    assert!(errors.is_empty(), "the page reported errors:\n{errors:#?}");
    browser.quit().await;
    server.abort();
}

/// The diff explorer against a real proxy comparing real backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_explorer_renders_a_real_example_pair() {
    require_chromium();
    let _one_browser = BROWSER_LOCK.lock().await;
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"id":7,"price":10,"name":"lamp"}"#)
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"id":7,"price":12,"name":"lamp"}"#)
        .spawn()
        .await;
    let proxy = start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{}\"] }}\n  v2: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: shop\n    backend: v1\n    mirrors: [{{ backend: v2, compare: true }}]\n",
        v1.addr, v2.addr
    ))
    .await;
    let c = client();
    for i in 0..10 {
        get(&c, proxy.listen_addrs[0], "shop", &format!("/items/{i}")).await;
    }
    // Wait until the engine has compared all ten.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let totals = admin_get(proxy.admin_addr, "/api/v1/diffs", None)
            .await
            .json();
        if totals["routes"][0]["compared"] == 10 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{totals}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let browser = Browser::start().await;
    browser
        .goto(&format!("http://{}/?interval=1000", proxy.admin_addr))
        .await;
    browser
        .wait_for(
            "the first poll",
            "return Number(document.body.dataset.polls || 0) >= 1",
            json!([]),
        )
        .await;
    browser.click(".tab[data-view=\"diffs\"]").await;
    let chips = browser
        .wait_for(
            "the endpoint list",
            "var c = Array.from(document.querySelectorAll('.chip')).map(function (e) { return [e.dataset.endpoint, e.dataset.path, e.dataset.noise]; }); return c.length ? c : null",
            json!([]),
        )
        .await;
    assert_eq!(chips, json!([["GET /items/{id}", "$.price", "false"]]));
    let marked = browser
        .wait_for(
            "highlighted lines",
            "var out = {}; document.querySelectorAll('.side').forEach(function (side) { out[side.dataset.side] = Array.from(side.querySelectorAll('.ln.diff')).map(function (l) { return l.querySelector('.tx').textContent.trim(); }); }); return out.primary && out.shadow && out.primary.length ? out : null",
            json!([]),
        )
        .await;
    assert_eq!(
        marked,
        json!({"primary": ["\"price\": 10,"], "shadow": ["\"price\": 12,"]})
    );
    let shot = browser.screenshot("dashboard-diffs-live.png").await;
    eprintln!("screenshot: {}", shot.display());
    let errors = browser.errors(&[]).await;
    assert!(errors.is_empty(), "the page reported errors:\n{errors:#?}");
    browser.quit().await;
    proxy.shutdown().await;
}

fn fake_window(requests: u64, errors: u64, compared: u64, different: u64, mirror: bool) -> Value {
    json!({
        "seconds": 60.0, "requests": requests, "rate": requests as f64 / 60.0, "errors": errors,
        "error_percent": errors as f64 * 100.0 / requests as f64,
        "p50_ms": if mirror { 6.5 } else { 4.2 }, "p90_ms": 9.0, "p99_ms": if mirror { 48.0 } else { 21.0 },
        "dropped": if mirror { json!({"overload": 3}) } else { json!({}) },
        "failed": if mirror { json!({"timeout": 2}) } else { json!({}) },
        "compared": compared, "different": different,
        "diff_percent": if compared > 0 { json!(different as f64 * 100.0 / compared as f64) } else { Value::Null },
    })
}

fn fake_stats() -> Value {
    let windows = |mirror: bool| {
        json!({
            "1m": fake_window(1200, if mirror { 14 } else { 3 }, if mirror { 200 } else { 0 }, if mirror { 12 } else { 0 }, mirror),
            "5m": fake_window(6000, 20, if mirror { 1000 } else { 0 }, if mirror { 55 } else { 0 }, mirror),
            "15m": fake_window(18000, 50, if mirror { 3000 } else { 0 }, if mirror { 150 } else { 0 }, mirror),
        })
    };
    json!({"routes": [
        {"route": "shop", "targets": [
            {"backend": "v1", "role": "primary", "windows": windows(false)},
            {"backend": "v2", "role": "mirror", "windows": windows(true)}
        ]},
        {"route": "search", "targets": [
            {"backend": "s1", "role": "primary", "windows": windows(false)}
        ]}
    ]})
}

fn fake_examples(endpoint: &str) -> Value {
    if endpoint == "POST /cart" {
        return json!({"examples": [{
            "mirror": "v2",
            "request": {"method": "POST", "path": "/cart", "headers": {"content-type": "application/json"}},
            "primary": {"status": 200, "headers": {"content-type": "text/plain"}, "body": "cart saved\nitems: 2\n"},
            "shadow": {"status": 500, "headers": {"content-type": "text/plain"}, "body": "cart saved\nerror: db down\n"},
            "differences": [
                {"path": "status", "kind": "value_changed", "primary": "200", "other": "500"},
                {"path": "line[2]", "kind": "value_changed", "primary": "items: 2", "other": "error: db down"}
            ]
        }]});
    }
    json!({"examples": [{
        "mirror": "v2",
        "request": {"method": "GET", "path": "/items/7", "headers": {"accept": "application/json"}},
        "primary": {
            "status": 200,
            "headers": {"content-type": "application/json", "x-version": "v1.0.0"},
            "body": "{\"id\":7,\"name\":\"<img src=x onerror=alert(1)>\",\"price\":10.50,\"tags\":[\"a\"],\"meta\":{\"generated_at\":\"2026-01-01T00:00:00Z\"}}"
        },
        "shadow": {
            "status": 200,
            "headers": {"content-type": "application/json", "x-version": "v2.0.0"},
            "body": "{\"id\":7,\"name\":\"<img src=x onerror=alert(1)>\",\"price\":12,\"tags\":[\"a\",\"b\"],\"meta\":{\"generated_at\":\"2026-01-01T00:00:09Z\"}}"
        },
        "differences": [
            {"path": "header.x-version", "kind": "value_changed", "primary": "v1.0.0", "other": "v2.0.0"},
            {"path": "$.price", "kind": "value_changed", "primary": "10.50", "other": "12"},
            {"path": "$.tags[1]", "kind": "extra", "primary": null, "other": "\"b\""}
        ]
    }]})
}

/// The Grafana dashboard is valid JSON, has its variables, and every metric
/// its panels query exists in a running proxy's `/metrics` (the comparison
/// counter may still be missing).
#[tokio::test]
async fn grafana_dashboard_queries_existing_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/shadowgate.json"
    ))
    .expect("deploy/grafana/shadowgate.json");
    let dash: Value = serde_json::from_str(&text).expect("the Grafana dashboard is valid JSON");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let route = var("route");
    assert_eq!(route["type"], "query");
    let route_query = route["query"]["query"]
        .as_str()
        .or_else(|| route["query"].as_str())
        .or_else(|| route["definition"].as_str())
        .unwrap();
    assert_eq!(
        route_query,
        "label_values(shadowgate_requests_total, route)"
    );

    // Metrics a proxy exports once it has seen primary and mirror traffic,
    // drops and failures.
    let v1 = TestBackend::new().spawn().await;
    let v2 = TestBackend::new().status(503).spawn().await;
    let proxy = start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{}\"] }}\n  v2: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: shop\n    backend: v1\n    mirrors: [{{ backend: v2, methods: [GET] }}]\n",
        v1.addr, v2.addr
    ))
    .await;
    let c = client();
    get(&c, proxy.listen_addrs[0], "shop", "/").await;
    send(
        &c,
        proxy.listen_addrs[0],
        Method::POST,
        "shop",
        "/",
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    mirrors_settled(&proxy).await;
    let exported: BTreeSet<String> = metrics(&proxy)
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    proxy.shutdown().await;

    let mut panels: Vec<&Value> = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        panels.push(p);
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
    }
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    let mut used = BTreeSet::new();
    let name = regex::Regex::new(r"\bshadowgate_[a-z_]+\b").unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().expect("panel title");
        titles.push(title.to_string());
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id in {title}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(
                expr.contains("$route"),
                "{title}: {expr} ignores the route variable"
            );
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{title}: {expr}"
            );
            for m in name.find_iter(expr) {
                used.insert(m.as_str().to_string());
                assert!(
                    exported.contains(m.as_str()) || m.as_str() == "shadowgate_compare_total",
                    "{title}: {} is not exported; /metrics has {exported:?}",
                    m.as_str()
                );
            }
        }
    }
    for metric in [
        "shadowgate_requests_total",
        "shadowgate_request_duration_seconds_bucket",
        "shadowgate_mirror_dropped_total",
        "shadowgate_mirror_errors_total",
        "shadowgate_compare_total",
    ] {
        assert!(used.contains(metric), "no panel uses {metric}");
    }
    let all = titles.join(" | ").to_lowercase();
    for word in [
        "success",
        "latency",
        "request rate",
        "drop",
        "error",
        "diff",
    ] {
        assert!(all.contains(word), "no panel about {word}: {all}");
    }
}

/// With a shared store (a throwaway PostgreSQL cluster) the traffic view
/// shows the fleet: every replica, this one marked, the store's health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_fleet_and_each_replica() {
    require_chromium();
    let _one_browser = BROWSER_LOCK.lock().await;
    let db = pg::Postgres::start();
    let v1 = TestBackend::new().spawn().await;
    let v2 = TestBackend::new().spawn().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: \"{}\"\n\
         backends:\n  v1: {{ endpoints: [\"{}\"] }}\n  v2: {{ endpoints: [\"{}\"] }}\n\
         routes:\n  - name: shop\n    backend: v1\n    mirrors: [{{ backend: v2, compare: true }}]\n",
        db.url(),
        v1.addr,
        v2.addr
    );
    let config = shadowgate::config::from_yaml("fleet.yaml", &yaml).unwrap();
    let proxy = shadowgate::app::start(config, shadowgate::app::StartOptions::default())
        .await
        .unwrap();
    // A second replica: the real binary under another name.
    let file = db.dir().join("other.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let _other = Command::new(env!("CARGO_BIN_EXE_shadowgate"))
        .args(["run", "--config"])
        .arg(&file)
        .env("HOSTNAME", "other-replica")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let me = admin_get(proxy.admin_addr, "/api/v1/status", None)
        .await
        .json()["replica"]
        .as_str()
        .unwrap()
        .to_string();

    let browser = Browser::start().await;
    browser
        .goto(&format!("http://{}/?interval=500", proxy.admin_addr))
        .await;
    let rows = browser
        .wait_for(
            "both replicas in the fleet table",
            "var r = Array.from(document.querySelectorAll('#fleet tbody tr')).map(function (t) { return [t.dataset.replica, t.dataset.me, t.dataset.alive]; }); return r.length === 2 ? r : null",
            json!([]),
        )
        .await;
    let rows = rows.as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r[0] == me.as_str() && r[1] == "true" && r[2] == "true"),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r[0].as_str().unwrap().starts_with("other-replica-")
                && r[1] == "false"
                && r[2] == "true"),
        "{rows:?}"
    );
    let store = browser
        .js(
            "var s = document.querySelector('#fleet [data-store]'); return s && !document.getElementById('fleet').hidden ? s.dataset.store : null",
            json!([]),
        )
        .await;
    assert_eq!(store, "ok");
    let shot = browser.screenshot("dashboard-fleet.png").await;
    eprintln!("screenshot: {}", shot.display());
    let errors = browser.errors(&[]).await;
    assert!(errors.is_empty(), "the page reported errors:\n{errors:#?}");
    browser.quit().await;
    proxy.shutdown().await;
}
