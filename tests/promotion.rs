//! Promotion: gates refuse a bad candidate, promote and roll back under
//! load with no failed request, `auto` mode promotes a good v2 and rolls
//! back one that turns bad (and stays paused after a restart), and the
//! state survives a restart.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use shadowgate::app::{self, Running, StartOptions};
use support::*;

fn config(v1: std::net::SocketAddr, v2: std::net::SocketAddr, promotion: &str) -> String {
    format!(
        "backends:\n  v1: {{ endpoints: [\"{v1}\"] }}\n  v2: {{ endpoints: [\"{v2}\"] }}\nroutes:\n  - name: shop\n    backend: v1\n    mirrors: [{{ backend: v2 }}]\n{promotion}"
    )
}

/// The explicit opt-out: without a `promotion:` block the default gates
/// (and `min_requests` 100) apply.
const NO_GATES: &str = "    promotion: { gates: none, min_requests: 0 }\n";

/// Sends `n` requests; returns how many each body answered.
async fn traffic(proxy: &Running, n: usize) -> (usize, usize) {
    let c = client();
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let ans = get(&c, proxy.listen_addrs[0], "shop", "/").await;
        match ans.text().as_str() {
            "v1" => a += 1,
            "v2" => b += 1,
            other => panic!("unexpected answer {other} ({})", ans.status),
        }
    }
    (a, b)
}

/// Polls the promotion state until `want(state)` or 20 s, sending traffic meanwhile.
async fn wait_for_state(
    proxy: &Running,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = api_call(proxy, Method::GET, "/api/v1/routes/shop/promotion", "")
            .await
            .json();
        if want(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "state not reached: {s}"
        );
        traffic(proxy, 10).await;
        mirrors_settled(proxy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_roll_back_under_load_with_no_failed_request() {
    let v1 = TestBackend::new().body("v1").spawn().await;
    let v2 = TestBackend::new().body("v2").spawn().await;
    // Gates explicitly off: this test is about switching under load, not judging.
    let proxy = start_proxy(&config(v1.addr, v2.addr, NO_GATES)).await;
    let addr = proxy.listen_addrs[0];
    let stop = Arc::new(AtomicBool::new(false));
    let answered_by_v2 = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (stop, by_v2) = (stop.clone(), answered_by_v2.clone());
            tokio::spawn(async move {
                let c = client();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let ans = get(&c, addr, "shop", "/").await;
                    assert_eq!(ans.status, 200, "a request failed during a switch");
                    if ans.text() == "v2" {
                        by_v2.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for _ in 0..5 {
        let p = api_call(&proxy, Method::POST, "/api/v1/routes/shop/promote", "").await;
        assert_eq!(p.status, 200, "{}", p.text());
        assert_eq!(p.json()["state"], "promoted");
        assert_eq!(p.json()["primary"], "v2");
        let again = api_call(&proxy, Method::POST, "/api/v1/routes/shop/promote", "").await;
        assert_eq!(again.status, 409, "promoting twice is refused");
        let before = answered_by_v2.load(Ordering::Relaxed);
        while answered_by_v2.load(Ordering::Relaxed) < before + 20 {
            tokio::task::yield_now().await;
        }
        let r = api_call(&proxy, Method::POST, "/api/v1/routes/shop/rollback", "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["primary"], "v1");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let r = api_call(&proxy, Method::POST, "/api/v1/routes/shop/rollback", "").await;
    assert_eq!(r.status, 409, "nothing to roll back");
    let status = api_call(&proxy, Method::GET, "/api/v1/routes/shop/promotion", "")
        .await
        .json();
    let history = status["history"].as_array().unwrap();
    assert_eq!(history.len(), 10);
    assert_eq!(history[0]["action"], "promote");
    assert_eq!(history[1]["action"], "rollback");
    assert_eq!(
        api_call(&proxy, Method::GET, "/api/v1/routes/nope/promotion", "")
            .await
            .status,
        404
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn failing_gates_refuse_with_409_unless_forced() {
    let v1 = TestBackend::new().body("v1").spawn().await;
    let v2 = TestBackend::new().body("v2").status(500).spawn().await;
    let proxy = start_proxy(&config(
        v1.addr,
        v2.addr,
        "    promotion: { min_requests: 20, max_error_rate_delta: 0.5, window: 1m }\n",
    ))
    .await;
    let early = api_call(&proxy, Method::POST, "/api/v1/routes/shop/promote", "").await;
    assert_eq!(early.status, 409);
    assert_eq!(early.json()["verdict"], "insufficient_data");
    traffic(&proxy, 30).await;
    mirrors_settled(&proxy).await;
    let refused = api_call(
        &proxy,
        Method::POST,
        "/api/v1/routes/shop/promote",
        r#"{"to":"v2"}"#,
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    let body = refused.json();
    assert_eq!(body["verdict"], "not_ready");
    assert_eq!(body["failing_gates"][0]["name"], "error_rate_delta");
    assert_eq!(body["failing_gates"][0]["value"], 100.0);
    let unknown = api_call(
        &proxy,
        Method::POST,
        "/api/v1/routes/shop/promote",
        r#"{"to":"v9"}"#,
    )
    .await;
    assert_eq!(unknown.status, 400);
    let forced = api_call(
        &proxy,
        Method::POST,
        "/api/v1/routes/shop/promote",
        r#"{"force":true}"#,
    )
    .await;
    assert_eq!(forced.status, 200, "{}", forced.text());
    assert_eq!(forced.json()["history"][0]["forced"], true);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_promotes_a_good_v2_and_rolls_back_when_it_turns_bad() {
    let v1 = TestBackend::new().body("v1").spawn().await;
    let v2 = TestBackend::new().body("v2").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: {}\n{}",
        dir.path().join("state.db").display(),
        config(
            v1.addr,
            v2.addr,
            "    promotion: { mode: auto, min_requests: 30, max_error_rate_delta: 1, max_p99_ratio: off, window: 10s, evaluate_every: 50ms }\n",
        )
    );
    let start = || async {
        let c = shadowgate::config::from_yaml("t.yaml", &yaml).unwrap();
        app::start(c, StartOptions::default()).await.unwrap()
    };
    let proxy = start().await;
    let s = wait_for_state(&proxy, |s| s["state"] == "promoted").await;
    assert_eq!(s["history"][0]["trigger"], "auto");
    assert_eq!(
        traffic(&proxy, 10).await,
        (0, 10),
        "v2 answers after the promotion"
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_promotions_total{route="shop",action="promote",trigger="auto"}"#
        ),
        1.0
    );

    // v2 turns bad: its answers as primary become 500s; the controller rolls back.
    v2.status.store(500, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let c = client();
    loop {
        let s = api_call(&proxy, Method::GET, "/api/v1/routes/shop/promotion", "")
            .await
            .json();
        if s["state"] == "shadowing" {
            assert_eq!(
                s["auto_held"], true,
                "no automatic re-promotion after an automatic rollback"
            );
            let last = s["history"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(last["action"], "rollback");
            assert_eq!(last["trigger"], "auto");
            assert!(
                last["reason"]
                    .as_str()
                    .unwrap()
                    .contains("error_rate_delta="),
                "{last}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no automatic rollback: {s}"
        );
        for _ in 0..10 {
            get(&c, proxy.listen_addrs[0], "shop", "/").await;
        }
    }
    assert_eq!(traffic(&proxy, 10).await, (10, 0), "v1 answers again");
    proxy.shutdown().await;

    // The pause is kept in the stored history: a restarted proxy does not
    // promote v2 again on its own, though v2 is healthy again and its
    // gates pass; a person's promote lifts it.
    v2.status.store(200, Ordering::SeqCst);
    let proxy = start().await;
    let s = wait_for_state(&proxy, |s| s["verdict"] == "ready").await;
    assert_eq!(s["auto_held"], true, "{s}");
    // One pass of the controller, run here so that it surely ran with the
    // gates passing (the proxy's own runs every 250 ms besides).
    let shared = proxy.shared.clone();
    tokio::task::spawn_blocking(move || {
        shadowgate::promote::ops::auto_pass(
            &shared,
            tokio::time::Instant::now(),
            &mut std::collections::HashMap::new(),
        )
    })
    .await
    .unwrap();
    let s = api_call(&proxy, Method::GET, "/api/v1/routes/shop/promotion", "")
        .await
        .json();
    assert_eq!(s["state"], "shadowing", "promoted again on its own: {s}");
    assert_eq!(s["auto_held"], true, "{s}");
    let promoted = api_call(&proxy, Method::POST, "/api/v1/routes/shop/promote", "").await;
    assert_eq!(promoted.status, 200, "{}", promoted.text());
    assert_eq!(promoted.json()["auto_held"], false);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progressive_steps_give_the_candidate_a_growing_share() {
    let v1 = TestBackend::new().body("v1").spawn().await;
    let v2 = TestBackend::new().body("v2").spawn().await;
    let proxy = start_proxy(&config(
        v1.addr,
        v2.addr,
        "    promotion: { mode: auto, min_requests: 20, max_error_rate_delta: 1, max_p99_ratio: off, window: 10s, evaluate_every: 50ms, steps: [25, 100], step_interval: 1s }\n",
    ))
    .await;
    let s = wait_for_state(&proxy, |s| s["state"] == "stepping").await;
    assert_eq!(s["share"], 25);
    let (a, b) = traffic(&proxy, 400).await;
    if api_call(&proxy, Method::GET, "/api/v1/routes/shop/promotion", "")
        .await
        .json()["share"]
        == 25
    {
        // 25% of 400 = 100, sd ≈ 8.7; allow 6 sd.
        assert!((48..=152).contains(&b), "v2 answered {b}, v1 {a}");
    }
    let s = wait_for_state(&proxy, |s| s["state"] == "promoted").await;
    let actions: Vec<&str> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["promote", "step"]);
    assert_eq!(traffic(&proxy, 10).await, (0, 10));
    proxy.shutdown().await;
}

#[tokio::test]
async fn promotion_state_survives_a_restart() {
    let v1 = TestBackend::new().body("v1").spawn().await;
    let v2 = TestBackend::new().body("v2").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: {}\n{}",
        db.display(),
        config(v1.addr, v2.addr, NO_GATES)
    );
    let start = || async {
        let c = shadowgate::config::from_yaml("t.yaml", &yaml).unwrap();
        app::start(c, StartOptions::default()).await.unwrap()
    };
    let first = start().await;
    assert_eq!(
        api_call(&first, Method::POST, "/api/v1/routes/shop/promote", "")
            .await
            .status,
        200
    );
    first.shutdown().await;

    let second = start().await;
    assert_eq!(
        traffic(&second, 5).await,
        (0, 5),
        "v2 is still primary after the restart"
    );
    let s = api_call(&second, Method::GET, "/api/v1/routes/shop/promotion", "")
        .await
        .json();
    assert_eq!(s["state"], "promoted");
    assert_eq!(s["configured_primary"], "v1");
    assert_eq!(s["history"][0]["action"], "promote");
    assert_eq!(
        api_call(&second, Method::POST, "/api/v1/routes/shop/rollback", "")
            .await
            .status,
        200
    );
    second.shutdown().await;

    let third = start().await;
    assert_eq!(
        traffic(&third, 5).await,
        (5, 0),
        "the rollback survived too"
    );
    third.shutdown().await;
}
