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
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENT {
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut answers = Vec::new();
            let mut n = w + 1;
            while n <= ORDERS {
                let a = send(&client, addr, Method::POST, "shop.local", "/checkout", &[("content-type", "application/json")], order(n)).await;
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
            v1_charges.insert(format!("o-{n}"), body["charge"].as_str().unwrap().to_string());
        }
    }
    let elapsed = started.elapsed();
    until("v2 charged every order", || c2.lock().len() as u64 == ORDERS).await;
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
        assert!(tokio::time::Instant::now() < deadline, "egress comparisons: {report}");
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
    assert!(m.contains("shadowgate_egress_request_duration_seconds_count{service=\"payments\",side=\"live\"}"));
    println!("{ORDERS} checkouts at {CONCURRENT} concurrent in {elapsed:?}");
}
