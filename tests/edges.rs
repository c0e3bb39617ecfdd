//! Request edges and what operators see (issues #19 items 11–12, #12 items
//! 9–12): path normalisation before routing, forwarding fields and trusted
//! proxies, unrouted requests counted and logged, mirror series at zero,
//! access-log and diagnostic-log fields, one duration syntax.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use shadowgate::app::Running;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_shadowgate");

/// Sends `GET {target}` exactly as written (no client-side clean-up of the
/// path) with `extra` header lines; returns the status code.
async fn raw_get(addr: SocketAddr, target: &str, extra: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: app\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("answered within 10s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalised_paths_are_routed_and_sent_to_primary_and_mirror() {
    let mut admin = TestBackend::new().body("admin").spawn().await;
    let mut shadow = TestBackend::new().spawn().await;
    let mut catch = TestBackend::new().body("catch").spawn().await;
    let running = start_proxy(&format!(
        "backends:\n  admin: {{ endpoints: [\"{}\"] }}\n  shadow: {{ endpoints: [\"{}\"] }}\n  catch: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: admin, match: {{ path_prefix: /admin }}, backend: admin, mirrors: [{{ backend: shadow }}] }}\n  - {{ name: rest, backend: catch }}\n",
        admin.addr, shadow.addr, catch.addr
    ))
    .await;
    let addr = running.listen_addrs[0];
    for target in [
        "/api/../admin/x",
        "/%61dmin/x",
        "//admin/x",
        "/./admin/x",
        "/%2e%2e/admin/./x?q=/../%61",
    ] {
        assert_eq!(raw_get(addr, target, "").await, 200, "{target}");
        let got = admin.next().await;
        let want_pq = if target.contains('?') {
            "/admin/x?q=/../%61"
        } else {
            "/admin/x"
        };
        assert_eq!(got.uri.to_string(), want_pq, "primary for {target}");
        let copy = shadow.next().await;
        assert_eq!(copy.uri.to_string(), want_pq, "mirror for {target}");
    }
    // Above the root: stays at the root, as Envoy does.
    assert_eq!(raw_get(addr, "/../x", "").await, 200);
    assert_eq!(catch.next().await.uri.to_string(), "/x");
    // An encoded slash is not a separator: kept, and no `/admin` prefix.
    assert_eq!(raw_get(addr, "/admin%2fx", "").await, 200);
    assert_eq!(catch.next().await.uri.to_string(), "/admin%2Fx");
    assert_eq!(admin.received(), 5);
    assert_eq!(catch.received(), 2);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalize_path_false_routes_the_raw_path() {
    let admin = TestBackend::new().spawn().await;
    let mut catch = TestBackend::new().spawn().await;
    let running = start_proxy(&format!(
        "normalize_path: false\nbackends:\n  admin: {{ endpoints: [\"{}\"] }}\n  catch: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: admin, match: {{ path_prefix: /admin }}, backend: admin }}\n  - {{ name: rest, backend: catch }}\n",
        admin.addr, catch.addr
    ))
    .await;
    assert_eq!(
        raw_get(running.listen_addrs[0], "/%61dmin/x", "").await,
        200
    );
    assert_eq!(catch.next().await.uri.to_string(), "/%61dmin/x");
    assert_eq!(admin.received(), 0);
    running.shutdown().await;
}

const SPOOFED: &str = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_from_an_untrusted_client_are_replaced() {
    let mut v1 = TestBackend::new().spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let routes = format!(
        "backends:\n  v1: {{ endpoints: [\"{}\"] }}\n  v2: {{ endpoints: [\"{}\"] }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: v2 }}] }}]\n",
        v1.addr, v2.addr
    );
    // No trusted proxies (the default), then a list without this peer.
    for trusted in ["", "trusted_proxies: [\"10.0.0.0/8\", \"::1\"]\n"] {
        let running = start_proxy(&format!("{trusted}{routes}")).await;
        assert_eq!(raw_get(running.listen_addrs[0], "/", SPOOFED).await, 200);
        for got in [v1.next().await, v2.next().await] {
            assert_eq!(
                got.header("x-forwarded-for"),
                Some("127.0.0.1"),
                "{trusted}"
            );
            assert_eq!(got.header("x-forwarded-host"), Some("app"), "{trusted}");
            assert_eq!(got.header("x-forwarded-proto"), Some("http"), "{trusted}");
            assert_eq!(got.headers.get_all("x-forwarded-for").iter().count(), 1);
            // The other fields a backend may take for the client's address.
            assert_eq!(got.header("forwarded"), None, "{trusted}");
            assert_eq!(got.header("x-real-ip"), None, "{trusted}");
        }
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_from_a_trusted_proxy_are_kept_and_appended_to() {
    let mut v1 = TestBackend::new().spawn().await;
    let running = start_proxy(&format!(
        "trusted_proxies: [\"127.0.0.0/8\"]\nbackends:\n  v1: {{ endpoints: [\"{}\"] }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    assert_eq!(raw_get(running.listen_addrs[0], "/", SPOOFED).await, 200);
    let got = v1.next().await;
    assert_eq!(got.header("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!(got.header("x-forwarded-host"), Some("evil.example"));
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        got.header("forwarded"),
        Some("for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=app")
    );
    assert_eq!(got.header("x-real-ip"), Some("6.6.6.6"));
    running.shutdown().await;
}

#[test]
fn a_bad_trusted_proxy_names_file_key_and_reason() {
    let err = shadowgate::config::from_yaml(
        "edges.yaml",
        "trusted_proxies: [\"10.0.0.0/8\", \"not-a-net\"]\nbackends: { v1: { endpoints: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, backend: v1 }]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("edges.yaml")
            && err.contains("trusted_proxies[1]")
            && err.contains("`not-a-net` is not a CIDR block or an IP address"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_requests_are_counted() {
    let v1 = TestBackend::new().spawn().await;
    let running = start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{}\"] }}\nroutes: [{{ name: r, match: {{ path_prefix: /api }}, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            raw_get(running.listen_addrs[0], "/elsewhere", "").await,
            404
        );
    }
    let text = metrics(&running).await;
    assert_eq!(
        metric(
            &text,
            "shadowgate_requests_total{route=\"none\",backend=\"none\",role=\"primary\",code=\"404\"}"
        ),
        3.0,
        "{text}"
    );
    assert_eq!(v1.received(), 0);
    running.shutdown().await;
}

/// Whether the metrics text has the sample line `series` (whatever its value).
fn has_series(text: &str, series: &str) -> bool {
    text.lines()
        .any(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
}

/// `backends:` v1 and v2 at the two addresses, then `routes:`.
fn two_backends(v1: SocketAddr, v2: SocketAddr, routes: &str) -> String {
    format!(
        "backends:\n  v1: {{ endpoints: [\"{v1}\"] }}\n  v2: {{ endpoints: [\"{v2}\"] }}\nroutes:\n{routes}"
    )
}

/// The lines of the metrics text that have every one of `labels`.
fn lines_with<'a>(text: &'a str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .collect()
}

/// Backends v1 and v2 and a proxy serving `routes` over them.
struct OverTwoBackends {
    v1: BackendHandle,
    v2: BackendHandle,
    running: Running,
}

impl OverTwoBackends {
    async fn start(routes: &str) -> Self {
        let v1 = TestBackend::new().spawn().await;
        let v2 = TestBackend::new().spawn().await;
        let running = start_proxy(&two_backends(v1.addr, v2.addr, routes)).await;
        OverTwoBackends { v1, v2, running }
    }

    /// Reloads with `routes` over the same backends.
    fn reload(&self, routes: &str) {
        let yaml = two_backends(self.v1.addr, self.v2.addr, routes);
        self.running
            .shared
            .apply(shadowgate::config::from_yaml("test.yaml", &yaml).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_drop_and_error_series_exist_at_zero_from_the_start_and_after_reload() {
    let v1 = TestBackend::new().spawn().await;
    let v2 = TestBackend::new().spawn().await;
    let body = |routes: &str| {
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\n{}",
            two_backends(v1.addr, v2.addr, routes)
        )
    };
    let first = "  - { name: r, backend: v1, mirrors: [{ backend: v2 }] }\n";
    let running = start_proxy(&two_backends(v1.addr, v2.addr, first)).await;
    let text = metrics(&running).await;
    let reasons = [
        "overload",
        "body_too_large",
        "method",
        "body_incomplete",
        "backend_unhealthy",
        "memory",
        "shadow_slow",
    ];
    let kinds = [
        "connect",
        "timeout",
        "reset",
        "protocol",
        "status_5xx",
        "grpc_status",
    ];
    let check = |text: &str, route: &str| {
        for r in reasons {
            let s = format!(
                "shadowgate_mirror_dropped_total{{route=\"{route}\",backend=\"v2\",reason=\"{r}\"}}"
            );
            assert!(has_series(text, &s), "{s} missing:\n{text}");
            assert_eq!(metric(text, &s), 0.0);
        }
        for k in kinds {
            let s = format!(
                "shadowgate_mirror_errors_total{{route=\"{route}\",backend=\"v2\",kind=\"{k}\"}}"
            );
            assert!(has_series(text, &s), "{s} missing:\n{text}");
            assert_eq!(metric(text, &s), 0.0);
        }
    };
    check(&text, "r");
    // A reload that adds a route with a mirror: its series appear too.
    let second = format!("{first}  - {{ name: r2, match: {{ path_prefix: /two }}, backend: v1, mirrors: [{{ backend: v2 }}] }}\n");
    let config = shadowgate::config::from_yaml("test.yaml", &body(&second)).unwrap();
    running.shared.apply(config);
    let text = metrics(&running).await;
    check(&text, "r");
    check(&text, "r2");
    running.shutdown().await;
}

#[tokio::test]
async fn a_removed_routes_series_leave_metrics_and_a_kept_routes_counts_stay() {
    let kept = "  - { name: kept, backend: v1, mirrors: [{ backend: v2 }] }\n";
    let both =
        format!("  - {{ name: gone, match: {{ path_prefix: /gone }}, backend: v1, mirrors: [{{ backend: v2 }}] }}\n{kept}");
    let proxy = OverTwoBackends::start(&both).await;
    let running = &proxy.running;
    let addr = running.listen_addrs[0];
    let c = client();
    for path in ["/gone/a", "/kept/a", "/kept/b"] {
        assert_eq!(get(&c, addr, "x", path).await.status, 200);
    }
    mirrors_settled(running).await;
    let series = |route: &str, role: &str| {
        format!("shadowgate_requests_total{{route=\"{route}\",backend=\"{}\",role=\"{role}\",code=\"200\"}}",
            if role == "primary" { "v1" } else { "v2" })
    };
    let text = metrics(running).await;
    assert_eq!(metric(&text, &series("gone", "primary")), 1.0, "{text}");
    assert_eq!(metric(&text, &series("gone", "mirror")), 1.0, "{text}");
    assert!(text.contains("shadowgate_request_duration_seconds_count{route=\"gone\""));

    // Reloaded without `gone`: none of its series is left, of any family;
    // `kept` keeps its counts (no reset), and the unrouted series stay.
    proxy.reload(kept);
    assert_eq!(
        get(&c, addr, "x", "/gone/b").await.status,
        200,
        "now served by kept"
    );
    mirrors_settled(running).await;
    let text = metrics(running).await;
    let left = lines_with(&text, &["route=\"gone\""]);
    assert!(
        left.is_empty(),
        "{} series of the removed route are left, e.g. {:?}",
        left.len(),
        &left[..left.len().min(3)]
    );
    assert_eq!(metric(&text, &series("kept", "primary")), 3.0, "{text}");
    assert_eq!(metric(&text, &series("kept", "mirror")), 3.0, "{text}");

    // Back again: it starts from zero, like any new route.
    proxy.reload(&both);
    assert_eq!(get(&c, addr, "x", "/gone/c").await.status, 200);
    mirrors_settled(running).await;
    let text = metrics(running).await;
    assert_eq!(metric(&text, &series("gone", "primary")), 1.0, "{text}");
    assert_eq!(metric(&text, &series("kept", "primary")), 3.0, "{text}");
    proxy.running.shutdown().await;
}

#[tokio::test]
async fn a_mirror_taken_off_a_kept_route_leaves_metrics_and_the_primarys_counts_stay() {
    let proxy =
        OverTwoBackends::start("  - { name: items, backend: v1, mirrors: [{ backend: v2 }] }\n")
            .await;
    let running = &proxy.running;
    let addr = running.listen_addrs[0];
    let c = client();
    for path in ["/a", "/b"] {
        assert_eq!(get(&c, addr, "x", path).await.status, 200);
    }
    mirrors_settled(running).await;
    let primary =
        "shadowgate_requests_total{route=\"items\",backend=\"v1\",role=\"primary\",code=\"200\"}";
    let of_v2 = |text: &str| lines_with(text, &["route=\"items\"", "backend=\"v2\""]).len();
    let text = metrics(running).await;
    assert!(of_v2(&text) > 0, "{text}");

    // Reloaded without the mirror: none of v2's series of this route is
    // left, of any family; the primary's keep counting.
    proxy.reload("  - { name: items, backend: v1 }\n");
    assert_eq!(get(&c, addr, "x", "/c").await.status, 200);
    let text = metrics(running).await;
    assert_eq!(of_v2(&text), 0, "{text}");
    assert_eq!(metric(&text, primary), 3.0, "{text}");
    proxy.running.shutdown().await;
}

/// The proxy binary, run with its access log going to a file.
struct Binary {
    child: std::process::Child,
    listen: SocketAddr,
    stdout: std::path::PathBuf,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Binary {
    fn start(dir: &std::path::Path, config: &str) -> Binary {
        let file = dir.join("shadowgate.yaml");
        std::fs::write(&file, config).unwrap();
        let stdout = dir.join("access.log");
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&file)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let listen = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the binary logged `serving` within 10s");
            if line.contains("shadowgate is serving") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                break v["listen"]
                    .as_str()
                    .unwrap()
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse()
                    .unwrap();
            }
        };
        Binary {
            child,
            listen,
            stdout,
            stderr: rx,
        }
    }

    /// The access-log lines, once at least `n` are written (at most 10 s).
    async fn access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut text = String::new();
            std::fs::File::open(&self.stdout)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            let complete: Vec<&str> = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .collect();
            if complete.len() >= n {
                return complete
                    .iter()
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                    .collect();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} access-log lines not written within 10s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next diagnostic line containing `needle` (at most 10 s).
    fn diagnostic(&self, needle: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = self
                .stderr
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no diagnostic line with `{needle}` within 10s"));
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("diagnostic line is not JSON ({e}): {line}"));
            if line.contains(needle) {
                return v;
            }
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_the_binary_carry_client_authority_upstream_trace_id_and_one_time_key() {
    let v1 = TestBackend::new().spawn().await;
    let dead = dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Binary::start(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstore: memory\nbackends:\n  v1: {{ endpoints: [\"{}\"] }}\n  gone: {{ endpoints: [\"{dead}\"] }}\nroutes:\n  - {{ name: broken, match: {{ path_prefix: /broken }}, backend: gone }}\n  - {{ name: ok, match: {{ path_prefix: /ok }}, backend: v1 }}\n",
            v1.addr
        ),
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01\r\n");
    assert_eq!(raw_get(proxy.listen, "/ok/1", &traced).await, 200);
    assert_eq!(
        raw_get(proxy.listen, "/broken", "X-Request-Id: req-broken-1\r\n").await,
        502
    );
    assert_eq!(raw_get(proxy.listen, "/nowhere", "").await, 404);

    let lines = proxy.access_lines(3).await;
    let by_route = |r: &str| {
        lines
            .iter()
            .find(|l| l["route"] == r)
            .unwrap_or_else(|| panic!("no access line of route {r}: {lines:?}"))
    };
    let ok = by_route("ok");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["authority"], "app");
    assert_eq!(ok["upstream"], v1.addr.to_string());
    assert_eq!(ok["trace_id"], trace);
    let client: SocketAddr = ok["client"].as_str().unwrap().parse().unwrap();
    assert!(client.ip().is_loopback(), "{ok}");
    assert!(
        ok["time"].is_string() && ok.get("timestamp").is_none(),
        "{ok}"
    );

    let broken = by_route("broken");
    assert_eq!(broken["status"], 502);
    assert_eq!(broken["upstream"], dead.to_string());
    assert_eq!(broken["request_id"], "req-broken-1");
    assert!(broken.get("trace_id").is_none(), "{broken}");

    let none = by_route("none");
    assert_eq!(none["status"], 404);
    assert_eq!(none["backend"], "none");
    assert_eq!(none["path"], "/nowhere");
    assert_eq!(none["reason"], "no_route");

    // The diagnostic line of the failure: the same time key, the request
    // id once quoted (a JSON string equal to the id).
    let warn = proxy.diagnostic("primary failed");
    assert_eq!(warn["request_id"], "req-broken-1", "{warn}");
    assert!(warn["time"].is_string(), "{warn}");
    assert!(warn.get("timestamp").is_none(), "{warn}");
    assert_eq!(
        warn["time"].as_str().unwrap().len(),
        ok["time"].as_str().unwrap().len(),
        "same time format: {warn} / {ok}"
    );
}

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("durations.yaml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn native_durations_accept_what_manifests_accept() {
    let base = "backends: { v1: { endpoints: [\"127.0.0.1:1\"], timeout: TIMEOUT } }\nroutes: [{ name: r, backend: v1 }]\n";
    for good in ["1m30s", "1.5s", "0.25s", "500ms", "1h", "2s500ms"] {
        let (code, err) = check(&base.replace("TIMEOUT", good));
        assert_eq!(code, 0, "{good}: {err}");
    }
    let c = shadowgate::config::from_yaml("d.yaml", &base.replace("TIMEOUT", "1m30s")).unwrap();
    assert_eq!(c.backends["v1"].timeout, Duration::from_secs(90));
    let (code, err) = check(&base.replace("TIMEOUT", "10 seconds"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("durations.yaml")
            && err.contains("backends.v1.timeout")
            && err.contains("`10 seconds` has an unknown unit `seconds`"),
        "{err}"
    );
}
