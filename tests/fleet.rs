//! A fleet: three `shadowgate run` processes (the real binary) on one
//! PostgreSQL store (a throwaway cluster, `support/postgres.rs`), traffic
//! spread over them. One report, one switch, one judge, and database
//! trouble that never reaches a client.

#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use parking_lot::Mutex;
use support::{client, send, TestBackend, TestClient};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_shadowgate");

struct Replica {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn spawn(dir: &std::path::Path, name: &str, yaml: &str) -> Replica {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&file)
            .env("HOSTNAME", name)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("shadowgate is serving") {
                    let _ = tx.send(line.clone());
                }
                lines.lock().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name} did not start: {}", log.lock().join("\n")));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let listen = v["listen"].as_str().unwrap();
        Replica {
            child,
            listen: listen
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .unwrap(),
            admin: v["admin"].as_str().unwrap().parse().unwrap(),
            log,
        }
    }

    async fn api(
        &self,
        c: &TestClient,
        method: Method,
        path: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let a = send(
            c,
            self.admin,
            method,
            &self.admin.to_string(),
            path,
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
        )
        .await;
        let v = serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
        (a.status.as_u16(), v)
    }

    async fn get(&self, c: &TestClient, path: &str) -> serde_json::Value {
        self.api(c, Method::GET, path, "").await.1
    }

    /// Who answers a request for the route now: the backend's body.
    async fn answer(&self, c: &TestClient) -> String {
        let a = send(
            c,
            self.listen,
            Method::GET,
            "shop",
            "/item",
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(a.status, 200, "client saw {}: {}", a.status, a.text());
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        v["v"].to_string()
    }
}

fn fleet_yaml(store: &str, v1: SocketAddr, v2: SocketAddr, promotion: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: \"{store}\"\n\
         backends:\n  v1: {{ endpoints: [\"{v1}\"] }}\n  v2: {{ endpoints: [\"{v2}\"] }}\n\
         routes:\n  - name: shop\n    backend: v1\n    mirrors: [{{ backend: v2, compare: true }}]\n{promotion}"
    )
}

async fn backends() -> (support::BackendHandle, support::BackendHandle) {
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"v":1,"price":10}"#)
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .body(r#"{"v":2,"price":11}"#)
        .spawn()
        .await;
    (v1, v2)
}

/// The `compared` total of route `shop` as `r` reports it.
async fn compared(r: &Replica, c: &TestClient) -> u64 {
    let d = r.get(c, "/api/v1/diffs").await;
    d["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["route"] == "shop")
        .map(|t| t["compared"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits (at most `within`) until every replica reports `n` compared pairs.
async fn until_compared(fleet: &[Replica], c: &TestClient, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for r in fleet {
            seen.push(compared(r, c).await);
        }
        if seen.iter().all(|&s| s == n) {
            return;
        }
        assert!(
            seen.iter().all(|&s| s <= n),
            "counted more than sent ({n}): {seen:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the fleet's report did not reach {n} compared pairs: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `n` requests round robin over the replicas; each must succeed.
async fn spread(fleet: &[Replica], c: &TestClient, n: usize) {
    for i in 0..n {
        fleet[i % fleet.len()].answer(c).await;
    }
}

/// Waits (at most `within`) until every replica in `fleet` answers with `want`.
async fn until_served(
    fleet: &[&Replica],
    c: &TestClient,
    want: &str,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for r in fleet {
            all &= r.answer(c).await == want;
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not every replica serves v{want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn history_actions(status: &serde_json::Value) -> Vec<String> {
    status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_report_one_tally_and_switch_as_one() {
    let pg = pg::Postgres::start();
    let (v1, v2) = backends().await;
    let yaml = fleet_yaml(&pg.url(), v1.addr, v2.addr, "");
    let fleet: Vec<Replica> = (1..=3)
        .map(|i| Replica::spawn(pg.dir(), &format!("replica-{i}"), &yaml))
        .collect();
    let c = client();

    // The report read from any replica is the sum over all three.
    spread(&fleet, &c, 30).await;
    until_compared(&fleet, &c, 30, Duration::from_secs(20)).await;
    let reports: Vec<serde_json::Value> = {
        let mut v = Vec::new();
        for r in &fleet {
            v.push(r.get(&c, "/api/v1/diffs/shop").await);
        }
        v
    };
    for r in &reports {
        assert_eq!(r["endpoints"], reports[0]["endpoints"], "{reports:?}");
    }

    // Window figures: each replica's own, and the fleet's (all three merged).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = fleet[1].get(&c, "/api/v1/stats").await;
        let own = &st["routes"][0]["targets"][0]["windows"]["1m"]["requests"];
        let all = &st["fleet"][0]["targets"][0]["windows"]["1m"]["requests"];
        assert_eq!(own, 10, "{st}");
        if all == 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fleet totals never reached 30: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = Command::new(BIN)
        .args(["status", "--admin", &format!("http://{}", fleet[2].admin)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("window: last 1m\nREPLICA"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("replica-3-") && l.contains(" primary ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("fleet ") && l.contains(" 30 ")),
        "{text}"
    );

    // Every replica is registered and alive.
    let f = fleet[0].get(&c, "/api/v1/fleet").await;
    assert_eq!(f["shared"], true, "{f}");
    let alive: Vec<&str> = f["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["alive"] == true)
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(alive.len(), 3, "{f}");
    assert!(alive.iter().all(|id| id.starts_with("replica-")), "{f}");

    // Promote through replica 1: replicas 2 and 3 serve v2 within 1 s.
    let (status, body) = fleet[0]
        .api(
            &c,
            Method::POST,
            "/api/v1/routes/shop/promote",
            r#"{"force":true}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let took = until_served(&[&fleet[1], &fleet[2]], &c, "2", Duration::from_secs(1)).await;
    eprintln!("promotion reached replicas 2 and 3 in {took:?}");
    until_served(&[&fleet[0]], &c, "2", Duration::from_millis(100)).await;

    // Roll back through replica 3's CLI: all serve v1.
    let out = tokio::process::Command::new(BIN)
        .args([
            "rollback",
            "shop",
            "--admin",
            &format!("http://{}", fleet[2].admin),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let refs: Vec<&Replica> = fleet.iter().collect();
    let took = until_served(&refs, &c, "1", Duration::from_secs(1)).await;
    eprintln!("rollback reached every replica in {took:?}");

    // One history, read from any replica.
    for r in &fleet {
        let s = r.get(&c, "/api/v1/routes/shop/promotion").await;
        assert_eq!(history_actions(&s), ["promote", "rollback"], "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_judges_and_another_takes_over_when_it_dies() {
    let pg = pg::Postgres::start();
    let (v1, v2) = backends().await;
    let yaml = fleet_yaml(
        &pg.url(),
        v1.addr,
        v2.addr,
        "    promotion: { mode: auto, min_requests: 10, max_error_rate_delta: 1, max_p99_ratio: off, \
         max_diff_rate: off, window: 30s, evaluate_every: 100ms, steps: [25, 100], step_interval: 2s }\n",
    );
    let mut fleet: Vec<Replica> = (1..=3)
        .map(|i| Replica::spawn(pg.dir(), &format!("replica-{i}"), &yaml))
        .collect();
    let c = client();

    // Exactly one leader.
    let leaders = |fleet: &[Replica]| {
        let fleet: Vec<(SocketAddr, usize)> = fleet
            .iter()
            .enumerate()
            .map(|(i, r)| (r.admin, i))
            .collect();
        let c = client();
        async move {
            let mut out = Vec::new();
            for (admin, i) in fleet {
                let a = send(
                    &c,
                    admin,
                    Method::GET,
                    &admin.to_string(),
                    "/api/v1/fleet",
                    &[],
                    Bytes::new(),
                )
                .await;
                let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
                if v["leader"] == true {
                    out.push(i);
                }
            }
            out
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let l = leaders(&fleet).await;
        assert!(l.len() <= 1, "two leaders: {l:?}");
        if l.len() == 1 {
            break l[0];
        }
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Traffic to the other replicas only, until the leader's first switch
    // (the first step): it judges the fleet's numbers, not its own (none).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let others: Vec<&Replica> = (0..3).filter(|i| *i != leader).map(|i| &fleet[i]).collect();
        for r in others.iter().cycle().take(30) {
            r.answer(&c).await;
        }
        let s = fleet[(leader + 1) % 3]
            .get(&c, "/api/v1/routes/shop/promotion")
            .await;
        if s["state"] == "stepping" {
            break;
        }
        assert!(Instant::now() < deadline, "no automatic promotion: {s}");
    }

    // Kill the leader: another takes over within 10 s.
    let dead = fleet.remove(leader);
    drop(dead);
    let killed = Instant::now();
    let new_leader = loop {
        let l = leaders(&fleet).await;
        assert!(l.len() <= 1, "two leaders: {l:?}");
        if l.len() == 1 {
            break l[0];
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no new leader within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("a new leader took over in {:?}", killed.elapsed());

    // The new leader goes on from the shared state (traffic to the other
    // replica only): the next step, once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        for _ in 0..20 {
            fleet[1 - new_leader].answer(&c).await;
        }
        let s = fleet[new_leader]
            .get(&c, "/api/v1/routes/shop/promotion")
            .await;
        if s["state"] == "promoted" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader did not step: {s}"
        );
    };
    assert_eq!(history_actions(&s), ["promote", "step"], "{s}");
    let other = fleet[1 - new_leader]
        .get(&c, "/api/v1/routes/shop/promotion")
        .await;
    assert_eq!(history_actions(&other), ["promote", "step"], "{other}");
    let refs: Vec<&Replica> = fleet.iter().collect();
    until_served(&refs, &c, "2", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_never_reaches_clients_and_nothing_counts_twice() {
    let mut pg = pg::Postgres::start();
    let (v1, v2) = backends().await;
    let yaml = fleet_yaml(&pg.url(), v1.addr, v2.addr, "");
    let fleet: Vec<Replica> = (1..=3)
        .map(|i| Replica::spawn(pg.dir(), &format!("replica-{i}"), &yaml))
        .collect();
    let c = client();
    spread(&fleet, &c, 30).await;
    until_compared(&fleet, &c, 30, Duration::from_secs(20)).await;
    let before = fleet[2].get(&c, "/api/v1/fleet").await;
    assert_eq!(before["store"], "ok", "{before}");

    // Stop PostgreSQL under load: every client request still succeeds.
    let addrs: Vec<SocketAddr> = fleet.iter().map(|r| r.listen).collect();
    let load = tokio::spawn(async move {
        let c = client();
        let mut ok = 0;
        for i in 0..90 {
            let a = send(
                &c,
                addrs[i % 3],
                Method::GET,
                "shop",
                "/item",
                &[],
                Bytes::new(),
            )
            .await;
            assert_eq!(a.status, 200, "a client saw {}: {}", a.status, a.text());
            ok += 1;
        }
        ok
    });
    pg.stop();
    assert_eq!(load.await.unwrap(), 90);

    // Admin says so; a switch is refused (no split brain).
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in &fleet {
        loop {
            let s = r.get(&c, "/api/v1/status").await;
            if s["store"] == "degraded" {
                break;
            }
            assert!(Instant::now() < deadline, "store not degraded: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, body) = fleet[0]
        .api(
            &c,
            Method::POST,
            "/api/v1/routes/shop/promote",
            r#"{"force":true}"#,
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("shared store cannot be reached"),
        "{body}"
    );
    assert_eq!(
        fleet[1].answer(&c).await,
        "1",
        "serving goes on with the last state"
    );

    // Restart it: the buffered tallies arrive, each pair counted once
    // (30 before, 90 under load, 1 after).
    pg.resume();
    until_compared(&fleet, &c, 121, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in &fleet {
        loop {
            let s = r.get(&c, "/api/v1/status").await;
            if s["store"] == "ok" {
                break;
            }
            assert!(Instant::now() < deadline, "store not back: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for r in &fleet {
        assert_eq!(compared(r, &c).await, 121, "{}", r.log.lock().join("\n"));
    }
}
