//! Hot reload (API, SIGHUP-equivalent, file watch), SIGTERM drain, and the
//! binary's commands: `check` with config errors, `run`, `demo`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shadowgate::app::{self, StartOptions};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_shadowgate");

fn routed_to(
    backend: &str,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    extra: &str,
) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\n{extra}backends:\n  a: {{ endpoints: [\"{a}\"] }}\n  b: {{ endpoints: [\"{b}\"] }}\nroutes:\n  - {{ name: r, backend: {backend} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request_and_bad_config_keeps_the_old_one() {
    let a = TestBackend::new().body("a").spawn().await;
    let b = TestBackend::new().body("b").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shadowgate.yaml");
    std::fs::write(
        &file,
        routed_to("a", a.addr, b.addr, "watch_interval: 0s\n"),
    )
    .unwrap();
    let config = shadowgate::config::load_files(std::slice::from_ref(&file)).unwrap();
    let running = app::start(config, StartOptions::default()).await.unwrap();
    let addr = running.listen_addrs[0];

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (stop, served) = (stop.clone(), served.clone());
            tokio::spawn(async move {
                let c = client();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 5_000 {
                    let ans = get(&c, addr, "x", "/").await;
                    assert_eq!(
                        ans.status,
                        200,
                        "request failed during reload: {}",
                        ans.text()
                    );
                    assert!(ans.text() == "a" || ans.text() == "b");
                    n += 1;
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..20 {
        let target = if i % 2 == 0 { "b" } else { "a" };
        std::fs::write(
            &file,
            routed_to(target, a.addr, b.addr, "watch_interval: 0s\n"),
        )
        .unwrap();
        running.reload().expect("valid config reloads");
        // Let some requests through on this generation before the next swap.
        let seen = served.load(Ordering::Relaxed);
        while served.load(Ordering::Relaxed) < seen + 20 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(a.received() > 0 && b.received() > 0);

    // Last reload routed to "a". A bad config is rejected; "a" keeps serving.
    std::fs::write(&file, "routes: [{ name: r, backend: nowhere }]\n").unwrap();
    let err = running.reload().unwrap_err().to_string();
    assert!(
        err.contains("routes[0].backend: no backend named `nowhere`"),
        "{err}"
    );
    assert_eq!(get(&client(), addr, "x", "/").await.text(), "a");
    let m = metrics(&running).await;
    assert_eq!(
        metric(&m, r#"shadowgate_config_reloads_total{result="success"}"#),
        20.0
    );
    assert_eq!(
        metric(&m, r#"shadowgate_config_reloads_total{result="failure"}"#),
        1.0
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_changed_file_is_picked_up_by_the_watch() {
    let a = TestBackend::new().body("a").spawn().await;
    let b = TestBackend::new().body("b").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    // Like a ConfigMap: the file is a symlink that gets swapped.
    let v1 = dir.path().join("v1.yaml");
    let v2 = dir.path().join("v2.yaml");
    let link = dir.path().join("shadowgate.yaml");
    std::fs::write(
        &v1,
        routed_to("a", a.addr, b.addr, "watch_interval: 50ms\n"),
    )
    .unwrap();
    std::fs::write(
        &v2,
        routed_to("b", a.addr, b.addr, "watch_interval: 50ms\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&v1, &link).unwrap();
    let config = shadowgate::config::load_files(std::slice::from_ref(&link)).unwrap();
    let running = app::start(config, StartOptions::default()).await.unwrap();
    let addr = running.listen_addrs[0];
    assert_eq!(get(&client(), addr, "x", "/").await.text(), "a");
    let tmp = dir.path().join("tmp-link");
    std::os::unix::fs::symlink(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if get(&client(), addr, "x", "/").await.text() == "b" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch did not pick up the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0() {
    let mut slow = TestBackend::new()
        .delay(Duration::from_millis(1500))
        .body("finished")
        .spawn()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nbackends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n", slow.addr),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (addr, _) = serving_addrs(&mut stderr);
    let in_flight = tokio::spawn(async move { get(&client(), addr, "x", "/").await });
    slow.next().await; // the request reached the backend
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // New connections are refused while the in-flight request is still running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the in-flight request is still being served"
    );
    let ans = in_flight.await.unwrap();
    assert_eq!(ans.status, 200);
    assert_eq!(ans.text(), "finished");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

fn check(files: &[&Path]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("check")
        .args(
            files
                .iter()
                .flat_map(|f| ["--config".as_ref(), f.as_os_str()]),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_name_file_key_path_and_reason_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let base = "backends:\n  v1: { endpoints: [\"127.0.0.1:1\"] }\n  v2: { endpoints: [\"127.0.0.1:2\"] }\n";
    let cases: &[(&str, &str)] = &[
        (
            "routes:\n  - name: r\n    backend: v1\n    mirrors:\n      - { backend: v2 }\n      - { backend: v2, percent: 150 }\n",
            "routes[1]",
        ),
        ("routes: [{ name: r, backend: v1, mirrors: [{ backend: v2, percent: 150 }] }]\n", "routes[0].mirrors[0].percent: 150 is not between 0 and 100"),
        ("routes: [{ name: r, backend: v1, mirrors: [{ backend: v2, timeout: 5 parsecs }] }]\n", "routes[0].mirrors[0].timeout: `5 parsecs` has an unknown unit"),
        ("routes: [{ name: r, backend: v1, mirrors: [{ backend: v2, max_body_bytes: 1 potato }] }]\n", "routes[0].mirrors[0].max_body_bytes: `1 potato` has an unknown unit"),
        ("routes: [{ name: r, backend: v9 }]\n", "routes[0].backend: no backend named `v9` (defined: v1, v2)"),
        ("routes: [{ name: r, backend: v1, colour: red }]\n", "routes[0].colour: unknown field `colour`, expected one of"),
        ("routes: [{ name: r, backend: v1, match: { path_regex: \"(\" } }]\n", "routes[0].match.path_regex: invalid regular expression"),
        ("routes: [{ name: r, backend: v1 }, { name: r, backend: v2 }]\n", "routes[1].name: route `r` is also defined in"),
        ("admin: 0.0.0.0:9901\nroutes: [{ name: r, backend: v1 }]\n", "admin: 0.0.0.0:9901 is not a loopback address; set admin_token"),
        ("listen: nowhere\nroutes: [{ name: r, backend: v1 }]\n", "listen: `nowhere` is not a socket address"),
    ];
    for (i, (routes, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&f, format!("{base}{routes}")).unwrap();
        let (code, err) = check(&[&f]);
        if *want == "routes[1]" {
            // The first case is valid apart from the second mirror's percent.
            assert_eq!(code, 2);
            assert!(
                err.contains("routes[0].mirrors[1].percent: 150 is not between 0 and 100"),
                "{err}"
            );
            continue;
        }
        assert_eq!(code, 2, "case {i}: {err}");
        let expected = format!("{}: {want}", f.display());
        assert!(
            err.contains(&expected),
            "case {i}: expected `{expected}` in:\n{err}"
        );
    }
    // Unknown endpoint format.
    let f = dir.path().join("ep.yaml");
    std::fs::write(
        &f,
        "backends: { v1: { endpoints: [\"ftp://x:1\"] } }\nroutes: [{ name: r, backend: v1 }]\n",
    )
    .unwrap();
    let (code, err) = check(&[&f]);
    assert_eq!(code, 2);
    assert!(
        err.contains("ep.yaml: backends.v1.endpoints[0]: scheme `ftp` is not supported"),
        "{err}"
    );

    // A name defined in two files names both files.
    let (f1, f2) = (dir.path().join("one.yaml"), dir.path().join("two.yaml"));
    std::fs::write(&f1, base).unwrap();
    std::fs::write(
        &f2,
        "backends: { v1: { endpoints: [\"127.0.0.1:3\"] } }\nroutes: [{ name: r, backend: v1 }]\n",
    )
    .unwrap();
    let (code, err) = check(&[&f1, &f2]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "{}: backends.v1: backend `v1` is also defined in {} at backends.v1",
            f2.display(),
            f1.display()
        )),
        "{err}"
    );

    // Files merge: backends from one, routes from another.
    let f3 = dir.path().join("routes.yaml");
    std::fs::write(
        &f3,
        "routes: [{ name: r, backend: v1, mirrors: [{ backend: v2, percent: 0.5 }] }]\n",
    )
    .unwrap();
    let (code, err) = check(&[&f1, &f3]);
    assert_eq!(code, 0, "{err}");

    // `run` with a bad config exits 2 too, before binding anything.
    let bad = dir.path().join("bad1.yaml");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("percent: 150 is not between 0 and 100"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_and_answers_through_the_proxy() {
    // Killed when the test ends, also when an assertion fails halfway.
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--v1",
                "127.0.0.1:0",
                "--v2",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let proxy = loop {
        let line = next_line(&mut rx).await;
        if let Some(rest) = line.trim().strip_prefix("proxy   http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let ans = get(&client(), proxy.parse().unwrap(), "my-app.local", "/hello").await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.text(), "Host: my-app.local, Version: v1.0.0\n");
    let (mut v2_saw_shadow, mut primary_id, mut mirror_id) = (false, None, None);
    while !(v2_saw_shadow && primary_id.is_some() && mirror_id.is_some()) {
        let line = next_line(&mut rx).await;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["version"] == "v2.0.0" {
            assert_eq!(v["host"], "my-app.local-shadow");
            v2_saw_shadow = true;
        }
        // The demo's shop story (egress) logs its own orders alongside:
        // only the my-app route's lines are this request's.
        if v["route"] != "my-app" {
            continue;
        }
        match v["role"].as_str() {
            Some("primary") => primary_id = Some(v["request_id"].clone()),
            Some("mirror") => {
                assert_eq!(v["status"], 200);
                assert_eq!(v["backend"], "v2");
                mirror_id = Some(v["request_id"].clone())
            }
            _ => {}
        }
    }
    assert_eq!(
        primary_id, mirror_id,
        "access-log lines of both copies pair up by request id"
    );
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("demo output")
        .expect("demo ended")
}
