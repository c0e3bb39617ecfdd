//! The egress proxy (issue #13) end to end, over real sockets, with the
//! project's own shop apps (`src/tools/demo_shop.rs`): a provider that
//! counts charges and a checkout app in two versions.

mod support;

#[allow(dead_code)]
#[path = "../src/tools/demo_shop.rs"]
mod demo_shop;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use demo_shop::{Charges, ProviderBook, PAYMENTS_HOST};

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

async fn start_provider() -> (Arc<ProviderBook>, SocketAddr) {
    let (l, a) = listener().await;
    let book = Arc::new(ProviderBook::default());
    tokio::spawn(demo_shop::provider(l, book.clone()));
    (book, a)
}

fn egress_yaml(extra: &str, service: &str) -> String {
    format!(
        "egress:\n  listen: 127.0.0.1:0\n  shadow_listen: 127.0.0.1:0\n{extra}  services:\n    - {{ name: payments, match: {{ host: {PAYMENTS_HOST} }}, backend: provider{service} }}\n",
    )
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One raw HTTP/1.1 exchange: sends `head` and reads until the head of the
/// answer is complete; returns the status line and the stream.
async fn raw(addr: SocketAddr, head: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    (text.lines().next().unwrap_or("").to_string(), s)
}

fn order(n: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "order": format!("o-{n}"),
            "items": [{ "sku": "tea", "price": 450, "qty": 1 + n % 3 }, { "sku": "cup", "price": 1200, "qty": 1 }],
        })
        .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_checkouts_charge_once_and_v2_gets_v1s_answers() {
    const ORDERS: u64 = 1000;
    const CONCURRENT: u64 = 32;
    let (book, provider) = start_provider().await;
    let (l1, a1) = listener().await;
    let (l2, a2) = listener().await;
    let proxy = start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{a1}\"] }}\n  v2: {{ endpoints: [\"{a2}\"] }}\n  provider: {{ endpoints: [\"{provider}\"] }}\nroutes:\n  - name: shop\n    backend: v1\n    mirrors: [{{ backend: v2, compare: true, max_in_flight: 4096 }}]\n{}",
        egress_yaml("", ", wait: 1s, compare: true")
    ))
    .await;
    let eg = proxy.egress_addrs.expect("egress listeners");
    let (c1, c2): (Charges, Charges) = (Default::default(), Default::default());
    tokio::spawn(demo_shop::checkout(l1, "v1", eg.live, c1.clone()));
    tokio::spawn(demo_shop::checkout(l2, "v2", eg.shadow, c2.clone()));

    let addr = proxy.listen_addrs[0];
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENT {
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut answers = Vec::new();
            let mut n = w + 1;
            while n <= ORDERS {
                let a = send(
                    &client,
                    addr,
                    Method::POST,
                    "shop.local",
                    "/checkout",
                    &[("content-type", "application/json")],
                    order(n),
                )
                .await;
                answers.push((n, a.status, a.json()));
                n += CONCURRENT;
            }
            answers
        }));
    }
    let mut v1_charges = std::collections::HashMap::new();
    for t in tasks {
        for (n, status, body) in t.await.unwrap() {
            assert_eq!(status, 200, "order {n}: {body}");
            v1_charges.insert(
                format!("o-{n}"),
                body["charge"].as_str().unwrap().to_string(),
            );
        }
    }
    let elapsed = started.elapsed();
    until("v2 charged every order", || {
        c2.lock().len() as u64 == ORDERS
    })
    .await;
    mirrors_settled(&proxy).await;

    // The provider saw exactly one charge per checkout; v2's fraud checks
    // never left.
    assert_eq!(book.charges.load(Ordering::Relaxed), ORDERS);
    assert_eq!(book.other.load(Ordering::Relaxed), 0);
    // Every v2 outbound call got v1's kept answer: the same charge id.
    let c2 = c2.lock().clone();
    for (order, charge) in &v1_charges {
        assert_eq!(c2.get(order), Some(charge), "{order}");
    }

    // Side effects compared: the amount v2 charged differs (its pricing
    // bug) on the orders with a quantity above 1; the fraud check is only
    // in the shadow.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = api_get(&proxy, "/api/v1/diffs/shop").await.json();
        let egress_compared: u64 = report["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "egress")
            .map(|e| e["compared"].as_u64().unwrap_or(0))
            .sum();
        if egress_compared >= ORDERS + ORDERS / 100 {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "egress comparisons: {report}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let endpoint = |name: &str| {
        report["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint"] == name)
            .unwrap_or_else(|| panic!("no endpoint {name}: {report}"))
            .clone()
    };
    let charges = endpoint("egress payments POST /charges");
    assert_eq!(charges["kind"], "egress");
    assert_eq!(charges["mirror"], "v2");
    assert_eq!(charges["compared"], ORDERS);
    // qty = 1 + n % 3: two orders in three have a quantity above 1.
    let amount = field(&charges, "$.amount");
    let over_one = (1..=ORDERS).filter(|n| n % 3 != 0).count();
    assert_eq!(amount["different"], over_one as u64);
    let fraud = endpoint("egress payments POST /fraud-checks");
    assert_eq!(fraud["kind"], "egress");
    assert_eq!(field(&fraud, "only in shadow")["different"], ORDERS / 100);
    // The inbound endpoint is not an egress one.
    assert!(report["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["endpoint"] == "POST /checkout" && e.get("kind").is_none()));

    let m = metrics(&proxy).await;
    let egress = |side: &str, outcome: &str| {
        metric(&m, &format!("shadowgate_egress_requests_total{{service=\"payments\",side=\"{side}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(egress("live", "forwarded"), ORDERS as f64);
    assert_eq!(egress("shadow", "replayed"), ORDERS as f64);
    assert_eq!(egress("shadow", "unmatched"), (ORDERS / 100) as f64);
    assert!(m.contains(
        "shadowgate_egress_request_duration_seconds_count{service=\"payments\",side=\"live\"}"
    ));
    println!("{ORDERS} checkouts at {CONCURRENT} concurrent in {elapsed:?}");
}

/// A proxy with the egress in front of the provider only (the outbound
/// calls are made by the test itself, as v1 and v2 would).
async fn egress_only(provider: SocketAddr, extra: &str, service: &str) -> shadowgate::app::Running {
    let (_l, dead) = listener().await;
    start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{dead}\"] }}\n  provider: {{ endpoints: [\"{provider}\"] }}\nroutes:\n  - {{ name: shop, backend: v1 }}\n{}",
        egress_yaml(extra, service)
    ))
    .await
}

async fn charge(addr: SocketAddr, id: &str, amount: u64) -> Answer {
    send(
        &client(),
        addr,
        Method::POST,
        PAYMENTS_HOST,
        "/charges",
        &[("x-request-id", id), ("content-type", "application/json")],
        Bytes::from(serde_json::json!({ "amount": amount }).to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_call_before_live_waits_and_past_wait_gets_the_fallback() {
    let (book, provider) = start_provider().await;
    let proxy = egress_only(provider, "", ", wait: 500ms").await;
    let eg = proxy.egress_addrs.unwrap();
    let egress = proxy.shared.egress.clone().unwrap();

    // v2's call comes first: it waits for v1's.
    let early = tokio::spawn(charge(eg.shadow, "req-1", 700));
    until("the shadow call waits on its slot", || {
        egress.kept.usage().0 == 1
    })
    .await;
    let live = charge(eg.live, "req-1", 700).await;
    assert_eq!(live.status, 200);
    let replayed = early.await.unwrap();
    assert_eq!(replayed.status, 200);
    assert_eq!(replayed.json()["id"], live.json()["id"]);

    // No live call within `wait`: the fallback.
    let started = tokio::time::Instant::now();
    let late = charge(eg.shadow, "req-2", 700).await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(late.status, 503);
    assert_eq!(
        late.json(),
        serde_json::json!({ "error": "no_recorded_call" })
    );
    // A shadow call without a correlation id is unmatched at once.
    let anonymous = send(
        &client(),
        eg.shadow,
        Method::POST,
        PAYMENTS_HOST,
        "/charges",
        &[],
        "{}",
    )
    .await;
    assert_eq!(anonymous.status, 503);

    assert_eq!(book.charges.load(Ordering::Relaxed), 1);
    let m = metrics(&proxy).await;
    let count = |side: &str, outcome: &str| {
        metric(&m, &format!("shadowgate_egress_requests_total{{service=\"payments\",side=\"{side}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(count("shadow", "replayed"), 1.0);
    assert_eq!(count("shadow", "unmatched"), 2.0);
    assert_eq!(count("live", "forwarded"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_side_refuses_connect_and_unlisted_hosts() {
    let (book, provider) = start_provider().await;
    let proxy = egress_only(provider, "", "").await;
    let eg = proxy.egress_addrs.unwrap();

    // CONNECT from the shadow side: refused, it could not be replayed.
    let connect = format!("CONNECT {provider} HTTP/1.1\r\nHost: {provider}\r\n\r\n");
    let (status, _) = raw(eg.shadow, &connect).await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    // From the live side it is tunnelled (unlisted hosts are forwarded there).
    let (status, mut tunnel) = raw(eg.live, &connect).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    tunnel
        .write_all(b"POST /charges HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = String::new();
    tunnel.read_to_string(&mut answer).await.unwrap();
    assert!(answer.contains("ch_000001"), "{answer}");

    // An unlisted host from the shadow side: denied.
    let other = send(
        &client(),
        eg.shadow,
        Method::POST,
        "mail.example",
        "/send",
        &[("x-request-id", "r")],
        "{}",
    )
    .await;
    assert_eq!(other.status, 403);
    // Both listeners speak h2c too.
    let h2 = send(
        &h2_client(),
        eg.shadow,
        Method::POST,
        "mail.example",
        "/send",
        &[("x-request-id", "r")],
        "{}",
    )
    .await;
    assert_eq!(h2.status, 403);
    // Absolute-form, as a client honouring HTTP_PROXY sends it, on the live side.
    let (status, _) = raw(
        eg.live,
        &format!("POST http://{PAYMENTS_HOST}/charges HTTP/1.1\r\nHost: {PAYMENTS_HOST}\r\nx-request-id: abs\r\nContent-Length: 2\r\n\r\n{{}}"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    assert_eq!(book.charges.load(Ordering::Relaxed), 2);
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(&m, "shadowgate_egress_requests_total{service=\"unlisted\",side=\"shadow\",outcome=\"denied\"}"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_exchanges_stay_within_their_bound() {
    const BOUND: usize = 50;
    let (book, provider) = start_provider().await;
    let proxy = egress_only(provider, &format!("  max_exchanges: {BOUND}\n"), "").await;
    let eg = proxy.egress_addrs.unwrap();
    let egress = proxy.shared.egress.clone().unwrap();
    let client = client();
    for i in 0..BOUND * 10 {
        let id = format!("req-{i}");
        let a = send(
            &client,
            eg.live,
            Method::POST,
            PAYMENTS_HOST,
            "/charges",
            &[("x-request-id", &id)],
            "{\"amount\":1}",
        )
        .await;
        assert_eq!(a.status, 200);
        assert!(egress.kept.usage().0 <= BOUND);
    }
    assert_eq!(book.charges.load(Ordering::Relaxed), (BOUND * 10) as u64);
    let m = metrics(&proxy).await;
    assert_eq!(metric(&m, "shadowgate_egress_kept_exchanges"), BOUND as f64);
    assert_eq!(
        metric(&m, "shadowgate_egress_evicted_exchanges_total"),
        (BOUND * 9) as f64
    );
    // The newest are still replayed; the oldest are gone.
    let newest = charge(eg.shadow, &format!("req-{}", BOUND * 10 - 1), 1).await;
    assert_eq!(newest.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_only_v1_made_is_reported_when_its_exchange_expires() {
    let (book, provider) = start_provider().await;
    let (l1, a1) = listener().await;
    // v2 here is a plain backend: it answers, and makes no outbound call.
    let v2 = TestBackend::new().body("{}").spawn().await;
    let proxy = start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{a1}\"] }}\n  v2: {{ endpoints: [\"{}\"] }}\n  provider: {{ endpoints: [\"{provider}\"] }}\nroutes:\n  - name: shop\n    backend: v1\n    mirrors: [{{ backend: v2, compare: true }}]\n{}",
        v2.addr,
        egress_yaml("  keep: 1s\n", ", compare: true")
    ))
    .await;
    let eg = proxy.egress_addrs.unwrap();
    tokio::spawn(demo_shop::checkout(l1, "v1", eg.live, Charges::default()));
    let a = send(
        &client(),
        proxy.listen_addrs[0],
        Method::POST,
        "shop.local",
        "/checkout",
        &[],
        order(1),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(book.charges.load(Ordering::Relaxed), 1);
    // After `keep` (1 s) the sweep reports v1's charge as only in primary.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = api_get(&proxy, "/api/v1/diffs/shop").await.json();
        let found = report["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint"] == "egress payments POST /charges")
            .cloned();
        if let Some(e) = found {
            assert_eq!(e["kind"], "egress");
            assert_eq!(field(&e, "only in primary")["different"], 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no only-in-primary: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_copy_share_one_request_id_and_trace_id() {
    let (_book, provider) = start_provider().await;
    let mut v1 = TestBackend::new().spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{}\"] }}\n  v2: {{ endpoints: [\"{}\"] }}\n  provider: {{ endpoints: [\"{provider}\"] }}\nroutes:\n  - {{ name: shop, backend: v1, mirrors: [{{ backend: v2 }}] }}\n{}",
        v1.addr,
        v2.addr,
        egress_yaml("", "")
    ))
    .await;
    let a = get(&client(), proxy.listen_addrs[0], "shop.local", "/").await;
    assert_eq!(a.status, 200);
    let (p, c) = (v1.next().await, v2.next().await);
    let trace = |r: &Recorded| {
        let tp = r.header("traceparent").expect("traceparent").to_string();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(
            (parts.len(), parts[0], parts[1].len()),
            (4, "00", 32),
            "{tp}"
        );
        parts[1].to_string()
    };
    assert_eq!(trace(&p), trace(&c));
    assert_eq!(p.header("x-request-id"), c.header("x-request-id"));
    // A client's own valid traceparent is kept.
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let a = send(
        &client(),
        proxy.listen_addrs[0],
        Method::GET,
        "shop.local",
        "/",
        &[("traceparent", tp)],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(v1.next().await.header("traceparent"), Some(tp));
    assert_eq!(v2.next().await.header("traceparent"), Some(tp));
}
