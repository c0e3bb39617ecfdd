//! Shadow-side memory is bounded in bytes (`limits.shadow_memory`): body
//! copies and captured answers over the budget are dropped and counted
//! (`memory`), the primary answers every request, and the bytes in use go
//! back to 0 after the load. The in-flight bound of a mirror holds across
//! reloads, and a copy's `timeout` covers the wait for the client's body.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use shadowgate::app::Running;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Sends `n` requests at once (each a fresh client); asserts every answer is 200.
async fn burst(addr: std::net::SocketAddr, n: usize, method: Method, body: Bytes) {
    let tasks = (0..n).map(|_| {
        let (method, body) = (method.clone(), body.clone());
        tokio::spawn(async move {
            let a = send(&client(), addr, method, "app", "/x", &[], body).await;
            assert_eq!(a.status, 200, "client saw {}: {}", a.status, a.text());
        })
    });
    for t in futures_util::future::join_all(tasks).await {
        t.unwrap();
    }
}

/// Uploads `size` bytes chunked (64 KiB chunks, length unknown to the
/// proxy) and returns the answer's status line.
async fn chunked_upload(addr: std::net::SocketAddr, size: usize) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /x HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let piece = vec![b'x'; 64 * 1024];
    let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
    frame.extend_from_slice(&piece);
    frame.extend_from_slice(b"\r\n");
    for _ in 0..size / piece.len() {
        s.write_all(&frame).await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
        .await
        .expect("no answer within 30s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_copies_over_the_memory_budget_are_dropped_and_the_bytes_come_back() {
    let v1 = TestBackend::new().spawn().await;
    // The shadow accepts and never reads: what its sockets do not take
    // waits in the copies' queues, budgeted (copies stream: they no longer
    // hold a body while waiting for the answer).
    let shadow = TestBackend::new().blackhole().spawn().await;
    // 256 KiB: buffers get 192 KiB, less than one copy's queue bound
    // (`QUEUE_BYTES`), so the budget refuses before any queue is full.
    let cfg = format!(
        "limits: {{ shadow_memory: 256KiB }}\n{}",
        shadow_config(
            v1.addr,
            &[(shadow.addr, ", timeout: 10s, max_body_bytes: 16MiB")]
        )
    );
    let proxy = start_proxy(&cfg).await;
    // 4 bodies of 8 MiB at once, of unknown length (admitted while the
    // budget has room; refused by the tee as they grow): far more than the
    // sockets and the budget take.
    let n = 4;
    let addr = proxy.listen_addrs[0];
    let uploads = (0..n).map(|_| tokio::spawn(chunked_upload(addr, 8 << 20)));
    for status in futures_util::future::join_all(uploads).await {
        let status = status.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    assert_eq!(v1.received(), n, "the primary got every request");
    let used = proxy.shared.runtime.load().memory.in_use();
    assert!(
        used <= 256 << 10,
        "{used} bytes in use over a 256 KiB budget"
    );
    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    let dropped = metric(
        &m,
        r#"shadowgate_mirror_dropped_total{route="r",backend="m0",reason="memory"}"#,
    );
    assert_eq!(dropped, n as f64, "every copy dropped for memory\n{m}");
    assert!(
        shadow.connections() >= 1,
        "no copy was admitted: the budget refused them all before the body"
    );
    memory_returns_to_zero(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_over_the_memory_budget_are_dropped_and_the_bytes_come_back() {
    // 768 KiB answers that differ: a compared pair holds 1.5 MiB.
    let big = |c: u8| Bytes::from(vec![c; 768 * 1024]);
    let v1 = TestBackend::new().body(big(b'a')).spawn().await;
    let shadow = TestBackend::new()
        .body(big(b'b'))
        .delay(Duration::from_millis(500))
        .spawn()
        .await;
    let cfg = format!(
        "limits: {{ shadow_memory: 2MiB }}\n{}",
        shadow_config(v1.addr, &[(shadow.addr, ", timeout: 10s, compare: true")])
    );
    let proxy = start_proxy(&cfg).await;
    let n = 8;
    burst(proxy.listen_addrs[0], n, Method::GET, Bytes::new()).await;
    assert_eq!(v1.received(), n);
    mirrors_settled(&proxy).await;
    let compare = |m: &str, result: &str| {
        metric(
            m,
            &format!(r#"shadowgate_compare_total{{route="r",backend="m0",result="{result}"}}"#),
        )
    };
    // Judged pairs are counted by the workers: wait for every pair's fate.
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = metrics(&proxy).await;
        let settled = compare(&m, "compared") + compare(&m, "memory") + compare(&m, "dropped");
        if settled >= n as f64 {
            break m;
        }
        assert!(Instant::now() < deadline, "comparisons unsettled\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(compare(&m, "memory") >= 1.0, "no capture refused\n{m}");
    memory_returns_to_zero(&proxy).await;
    // With the budget free again, a pair is compared as before.
    let before = compare(&m, "compared");
    burst(proxy.listen_addrs[0], 1, Method::GET, Bytes::new()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics(&proxy).await;
        if compare(&m, "compared") > before {
            assert_eq!(compare(&m, "different"), compare(&m, "compared"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last pair was not compared\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    memory_returns_to_zero(&proxy).await;
    proxy.shutdown().await;
}

/// The admin API's `in_flight` of route `r`'s first mirror.
async fn api_in_flight(proxy: &Running) -> u64 {
    let a = get(&client(), proxy.admin_addr, "localhost", "/api/v1/routes").await;
    a.json()["routes"][0]["mirrors"][0]["in_flight"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_holds_across_reloads() {
    let v1 = TestBackend::new().spawn().await;
    let slow = TestBackend::new()
        .delay(Duration::from_secs(3))
        .spawn()
        .await;
    let body = shadow_config(v1.addr, &[(slow.addr, ", timeout: 10s, max_in_flight: 4")]);
    let proxy = start_proxy(&body).await;
    let addr = proxy.listen_addrs[0];
    load(addr, 4, 4, no_headers).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.received() < 4 {
        assert!(Instant::now() < deadline, "copies did not reach the shadow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A new generation (as a reload or a promotion step builds), then more
    // requests while the first four copies are still held by the shadow.
    proxy.shared.rebuild();
    load(addr, 4, 4, no_headers).await;
    assert_eq!(
        api_in_flight(&proxy).await,
        4,
        "in flight over all generations"
    );
    // A reload that lowers the bound: still nothing new admitted.
    let lower = shadow_config(v1.addr, &[(slow.addr, ", timeout: 10s, max_in_flight: 2")]);
    let yaml =
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\n{lower}");
    proxy
        .shared
        .apply(shadowgate::config::from_yaml("test.yaml", &yaml).unwrap());
    load(addr, 2, 2, no_headers).await;
    assert_eq!(api_in_flight(&proxy).await, 4);
    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    let overload = metric(
        &m,
        r#"shadowgate_mirror_dropped_total{route="r",backend="m0",reason="overload"}"#,
    );
    assert_eq!(
        slow.received(),
        4,
        "copies over max_in_flight reached the shadow"
    );
    assert_eq!(overload, 6.0);
    assert_eq!(api_in_flight(&proxy).await, 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_waiting_for_a_trickling_body_is_cut_by_the_mirror_timeout() {
    let v1 = TestBackend::new().spawn().await;
    let shadow = TestBackend::new().spawn().await;
    let proxy = start_proxy(&shadow_config(
        v1.addr,
        &[(shadow.addr, ", timeout: 300ms")],
    ))
    .await;
    // A chunked body in 8 pieces, one every 150 ms: 1.2 s in all, four
    // times the mirror's timeout.
    let mut s = tokio::net::TcpStream::connect(proxy.listen_addrs[0])
        .await
        .unwrap();
    s.write_all(
        b"POST /x HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..8 {
        s.write_all(b"4\r\nslow\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("no answer within 10s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    let timeouts = metric(
        &m,
        r#"shadowgate_mirror_errors_total{route="r",backend="m0",kind="timeout"}"#,
    );
    assert_eq!(timeouts, 1.0, "the copy was not cut by its timeout\n{m}");
    // The copy streams (its head went out at once), and was cut: the
    // shadow never got a complete request.
    assert_eq!(
        shadow.completed(),
        0,
        "the copy was completed after its timeout"
    );
    proxy.shutdown().await;
}

/// A JSON list of `n` small objects; the first one's name is `first`.
fn json_list(n: usize, first: &str) -> Bytes {
    let items: Vec<String> = (0..n)
        .map(|i| {
            let name = if i == 0 {
                first.to_string()
            } else {
                format!("item-{i}")
            };
            format!(r#"{{"id":{i},"name":"{name}"}}"#)
        })
        .collect();
    Bytes::from(format!("[{}]", items.join(",")))
}

/// The fields of route `r`'s first endpoint after one compared pair.
async fn fields_after_one_pair(
    shadow_memory: &str,
    v1: &BackendHandle,
    v2: &BackendHandle,
) -> String {
    let cfg = format!(
        "limits: {{ shadow_memory: {shadow_memory} }}\n{}",
        shadow_config(v1.addr, &[(v2.addr, ", compare: true")])
    );
    let proxy = start_proxy(&cfg).await;
    burst(proxy.listen_addrs[0], 1, Method::GET, Bytes::new()).await;
    let report = compared(&proxy, "r", 1).await;
    let fields = report["endpoints"][0]["fields"].to_string();
    memory_returns_to_zero(&proxy).await;
    proxy.shutdown().await;
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_trees_larger_than_the_workers_share_are_compared_by_digest() {
    // ~100 KB documents whose trees take several times that: they fit a
    // 2 MiB budget's buffers (1.5 MiB) but not its workers' share (512 KiB).
    let v1 = TestBackend::new()
        .header("content-type", "application/json")
        .body(json_list(3000, "a"))
        .spawn()
        .await;
    let v2 = TestBackend::new()
        .header("content-type", "application/json")
        .body(json_list(3000, "b"))
        .spawn()
        .await;
    let roomy = fields_after_one_pair("64MiB", &v1, &v2).await;
    assert!(
        roomy.contains(r#""$[*].name""#),
        "compared structurally with room: {roomy}"
    );
    let tight = fields_after_one_pair("2MiB", &v1, &v2).await;
    assert!(
        tight.contains(r#""path":"body""#) && !tight.contains("$["),
        "compared by digest past the share: {tight}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answer_heads_are_read_into_a_bounded_buffer() {
    // An HTTP/1.1 upstream connection buffers about 64 KiB while reading
    // (not hyper's ~400 KiB, which let 64 connections hold 68 MiB in
    // bench/memory.py): a 60 KiB head passes untouched, a 200 KiB one is a
    // clear 502 (one read may take a little more than 64 KiB, so heads just
    // over it can still pass).
    let fits: &'static str = Box::leak("f".repeat(60 * 1024).into_boxed_str());
    let over: &'static str = Box::leak("o".repeat(200 * 1024).into_boxed_str());
    for (value, status) in [(fits, 200), (over, 502)] {
        let v1 = TestBackend::new().header("x-big", value).spawn().await;
        let proxy = start_proxy(&shadow_config(v1.addr, &[])).await;
        let a = send(
            &client(),
            proxy.listen_addrs[0],
            Method::GET,
            "app",
            "/x",
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(
            a.status,
            status,
            "{} byte header ({:?} arrived): {}",
            value.len(),
            a.headers.get("x-big").map(|v| v.len()),
            a.text()
        );
        if status == 200 {
            assert_eq!(a.headers["x-big"].len(), value.len());
        } else {
            assert!(a.text().starts_with('{'), "a short JSON body: {}", a.text());
        }
        proxy.shutdown().await;
    }
}
