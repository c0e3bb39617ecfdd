//! `shutdown_delay`: after SIGTERM the proxy says not ready (`/readyz` 503)
//! but keeps accepting and serving for the delay, then drains; a second
//! SIGTERM skips the rest of the delay; and a rolling restart (one instance
//! told to stop while another takes over, clients following readiness as a
//! Kubernetes Service does) loses no request.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_shadowgate");

/// A poll step of the bounded waits below.
const STEP: Duration = Duration::from_millis(10);

/// One GET to `addr` that reports failure instead of panicking: the status,
/// or `None` when the connection or the request failed.
async fn try_get(client: &TestClient, addr: SocketAddr, path: &str) -> Option<u16> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}{path}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// Waits (at most `limit`) until `cond` holds; panics with `what` otherwise.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(STEP).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_shutdown_delay_not_ready_but_new_connections_served_then_refused() {
    let backend = TestBackend::new().body("v1").spawn().await;
    let running = start_proxy(&format!(
        "shutdown_delay: 1s\nbackends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        backend.addr
    ))
    .await;
    let (addr, admin) = (running.listen_addrs[0], running.admin_addr);
    assert_eq!(try_get(&client(), admin, "/readyz").await, Some(200));

    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(running.shutdown());
    wait_until(
        Duration::from_secs(2),
        "/readyz did not turn 503",
        || async { try_get(&client(), admin, "/readyz").await == Some(503) },
    )
    .await;
    // Within the delay: a new client (a new connection) is still served,
    // and readiness stays off.
    let ans = get(&client(), addr, "x", "/").await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.text(), "v1");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the checks above ran within the delay"
    );
    assert_eq!(try_get(&client(), admin, "/readyz").await, Some(503));
    assert!(!stopping.is_finished());

    // After the delay the listener closes: new connections are refused.
    wait_until(
        Duration::from_secs(5),
        "still accepting after shutdown_delay",
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "accepted for the whole delay, refused only after it ({:?})",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("drained")
        .unwrap();
}

/// The binary started with `config` (YAML text written to `dir`), its
/// (listen, admin) addresses from the "serving" log line; the rest of its
/// stderr is drained on a thread of its own.
fn spawn_binary(dir: &Path, name: &str, config: &str) -> (Child, SocketAddr, SocketAddr) {
    let file = dir.join(name);
    std::fs::write(&file, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (listen, admin) = serving_addrs(&mut stderr);
    std::thread::spawn(move || {
        let mut sink = String::new();
        while stderr.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    (child, listen, admin)
}

fn sigterm(child: &Child) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// Waits (at most `limit`) for the child to exit; its exit code.
async fn exit_code(mut child: Child, limit: Duration) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?}");
        }
        tokio::time::sleep(STEP).await;
    }
}

fn binary_config(backend: SocketAddr, delay: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\nshutdown_delay: {delay}\nbackends: {{ v1: {{ endpoints: [\"{backend}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_skips_the_rest_of_shutdown_delay() {
    let backend = TestBackend::new().body("v1").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, admin) =
        spawn_binary(dir.path(), "c.yaml", &binary_config(backend.addr, "60s"));
    sigterm(&child);
    wait_until(
        Duration::from_secs(5),
        "/readyz did not turn 503",
        || async { try_get(&client(), admin, "/readyz").await == Some(503) },
    )
    .await;
    assert_eq!(try_get(&client(), addr, "/").await, Some(200));
    let started = tokio::time::Instant::now();
    sigterm(&child);
    assert_eq!(exit_code(child, Duration::from_secs(10)).await, Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_shutdown_delay_loses_no_request() {
    const CLIENTS: usize = 4;
    const MAX_PER_CLIENT: usize = 2_000;
    let backend = TestBackend::new().body("ok").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(backend.addr, "1s");
    let (a, a_addr, a_admin) = spawn_binary(dir.path(), "a.yaml", &config);

    // The "Service": the listen addresses of the instances whose /readyz
    // says 200, refreshed by a probe loop, as kube-proxy's endpoints are.
    let endpoints: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(vec![a_addr]));
    let instances: Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>> =
        Arc::new(Mutex::new(vec![(a_addr, a_admin)]));
    let done = Arc::new(AtomicBool::new(false));
    let probe = {
        let (endpoints, instances, done) = (endpoints.clone(), instances.clone(), done.clone());
        tokio::spawn(async move {
            let probe_client = client();
            while !done.load(Ordering::Acquire) {
                let list = instances.lock().clone();
                let mut ready = Vec::new();
                for (listen, admin) in list {
                    if try_get(&probe_client, admin, "/readyz").await == Some(200) {
                        ready.push(listen);
                    }
                }
                *endpoints.lock() = ready;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let failed = Arc::new(AtomicUsize::new(0));
    let served: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(Vec::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut load = Vec::new();
    for i in 0..CLIENTS {
        let (endpoints, done, failed, served) = (
            endpoints.clone(),
            done.clone(),
            failed.clone(),
            served.clone(),
        );
        load.push(tokio::spawn(async move {
            let c = client();
            for n in 0..MAX_PER_CLIENT {
                if done.load(Ordering::Acquire) || tokio::time::Instant::now() >= deadline {
                    break;
                }
                let target = {
                    let eps = endpoints.lock();
                    if eps.is_empty() {
                        None
                    } else {
                        Some(eps[(i + n) % eps.len()])
                    }
                };
                let Some(target) = target else {
                    // No ready endpoint: a Service would refuse too.
                    failed.fetch_add(1, Ordering::AcqRel);
                    tokio::time::sleep(STEP).await;
                    continue;
                };
                match try_get(&c, target, "/").await {
                    Some(200) => served.lock().push(target),
                    _ => {
                        failed.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
        }));
    }

    // A serves some load, then B starts and A is told to stop.
    wait_until(Duration::from_secs(5), "A served no request", || async {
        served.lock().len() >= 20
    })
    .await;
    let (b, b_addr, b_admin) = {
        let (dir, config) = (dir.path().to_path_buf(), config.clone());
        tokio::task::spawn_blocking(move || spawn_binary(&dir, "b.yaml", &config))
            .await
            .unwrap()
    };
    instances.lock().push((b_addr, b_admin));
    sigterm(&a);
    assert_eq!(exit_code(a, Duration::from_secs(8)).await, Some(0));
    // B keeps serving after A is gone.
    let after = served.lock().len();
    wait_until(Duration::from_secs(5), "B served no request", || async {
        served.lock().len() >= after + 20
    })
    .await;
    done.store(true, Ordering::Release);
    for t in load {
        t.await.unwrap();
    }
    probe.await.unwrap();
    sigterm(&b);
    assert_eq!(exit_code(b, Duration::from_secs(8)).await, Some(0));

    let served = served.lock();
    let by_a = served.iter().filter(|t| **t == a_addr).count();
    let by_b = served.iter().filter(|t| **t == b_addr).count();
    assert_eq!(
        failed.load(Ordering::Acquire),
        0,
        "failed requests during the rolling restart (A served {by_a}, B served {by_b})"
    );
    assert!(by_a >= 20 && by_b >= 20, "A {by_a}, B {by_b}");
}
