//! Mirrors copy the chosen share of requests and never hurt the primary:
//! sampling, keyed sampling, slow / down / black-holed shadows, the
//! in-flight bound and the body cap.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_sampling_is_within_a_statistical_bound() {
    let v1 = TestBackend::new().spawn().await;
    let v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&shadow_config(v1.addr, &[(v2.addr, ", percent: 12.5")])).await;
    load(proxy.listen_addrs[0], 10_000, 16, no_headers).await;
    mirrors_settled(&proxy).await;
    let got = v2.received();
    // 12.5% of 10,000 = 1250; sd = sqrt(10000 * .125 * .875) ≈ 33; allow 6 sd.
    assert!(
        (1052..=1448).contains(&got),
        "mirrored {got} of 10000 at 12.5%"
    );
    assert_eq!(v1.received(), 10_000);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_key_mirrors_all_or_none_of_a_users_requests() {
    let v1 = TestBackend::new().spawn().await;
    let mut a = TestBackend::new().spawn().await;
    let mut b = TestBackend::new().spawn().await;
    let proxy = start_proxy(&shadow_config(
        v1.addr,
        &[
            (a.addr, ", percent: 30, sample_key: x-user"),
            (b.addr, ", percent: 30, sample_key: x-user"),
        ],
    ))
    .await;
    // 200 users × 5 requests each, interleaved.
    fn user_header(i: usize) -> Vec<(String, String)> {
        vec![("x-user".to_string(), format!("user-{}", i % 200))]
    }
    load(proxy.listen_addrs[0], 1000, 10, user_header).await;
    mirrors_settled(&proxy).await;
    let count = |h: &mut BackendHandle| {
        let mut per_user = std::collections::BTreeMap::new();
        while let Some(r) = h.try_next() {
            *per_user
                .entry(r.header("x-user").unwrap().to_string())
                .or_insert(0) += 1;
        }
        per_user
    };
    let (ca, cb) = (count(&mut a), count(&mut b));
    assert!(
        ca.values().all(|&n| n == 5),
        "every sampled user has all 5 requests mirrored: {ca:?}"
    );
    assert_eq!(
        ca, cb,
        "two mirrors with the same percent pick the same users"
    );
    // 30% of 200 users = 60, sd ≈ 6.5; allow 6 sd.
    assert!((21..=99).contains(&ca.len()), "{} users sampled", ca.len());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_shadow_adds_no_latency() {
    let slow = TestBackend::new()
        .delay(Duration::from_secs(2))
        .spawn()
        .await;
    // At most 128 copies held at once: with 1000 copies of 2 s each, the
    // storm of new connections to a backend that shares this test's two
    // runtime threads cost the primary over 10 ms of p99 (also on main, when
    // this test runs alone); a bound is what a deployment sets anyway.
    let (without, with) = primary_p99_with(", timeout: 3s, max_in_flight: 128", slow.addr).await;
    assert!(
        with <= 2.0 * without + 5.0,
        "p99 {with:.2}ms with slow shadow vs {without:.2}ms without"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_shadow_adds_no_latency_and_is_counted() {
    let dead = dead_addr().await;
    let v1 = TestBackend::new().spawn().await;
    let (without, with) = primary_p99_with("", dead).await;
    assert!(
        with <= 2.0 * without + 5.0,
        "p99 {with:.2}ms with down shadow vs {without:.2}ms without"
    );
    let proxy = start_proxy(&shadow_config(v1.addr, &[(dead, "")])).await;
    load(proxy.listen_addrs[0], 20, 2, no_headers).await;
    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    let refused = metric(
        &m,
        r#"shadowgate_mirror_errors_total{route="r",backend="m0",kind="connect"}"#,
    );
    let skipped = metric(
        &m,
        r#"shadowgate_mirror_dropped_total{route="r",backend="m0",reason="backend_unhealthy"}"#,
    );
    // Every copy is accounted for: the first ones knock and are refused;
    // once the only endpoint is passed over, the rest are skipped.
    assert_eq!(
        refused + skipped,
        20.0,
        "refused {refused}, skipped {skipped}"
    );
    assert!(
        refused >= 1.0 && skipped >= 10.0,
        "refused {refused}, skipped {skipped}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_shadow_adds_no_latency_and_overload_is_bounded() {
    let hole = TestBackend::new().blackhole().spawn().await;
    let (without, with) = primary_p99_with(", timeout: 10s, max_in_flight: 8", hole.addr).await;
    assert!(
        with <= 2.0 * without + 5.0,
        "p99 {with:.2}ms with black-holed shadow vs {without:.2}ms without"
    );

    let v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&shadow_config(
        v1.addr,
        &[(hole.addr, ", timeout: 300ms, max_in_flight: 8")],
    ))
    .await;
    load(proxy.listen_addrs[0], 100, 4, no_headers).await;
    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    let dropped = metric(
        &m,
        r#"shadowgate_mirror_dropped_total{route="r",backend="m0",reason="overload"}"#,
    );
    let timeouts = metric(
        &m,
        r#"shadowgate_mirror_errors_total{route="r",backend="m0",kind="timeout"}"#,
    );
    assert_eq!(
        dropped + timeouts,
        100.0,
        "every copy is either dropped (overload) or timed out"
    );
    assert!(dropped >= 1.0, "the in-flight bound dropped copies");
    assert!(metric(&m, r#"shadowgate_mirror_in_flight{route="r",backend="m0"}"#) == 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_cap_reach_the_primary_but_not_the_mirror() {
    let mut v1 = TestBackend::new().spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&shadow_config(
        v1.addr,
        &[(v2.addr, ", max_body_bytes: 1KiB")],
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();

    // Small body: mirrored whole.
    let small = Bytes::from(vec![b'a'; 1024]);
    send(&c, addr, Method::POST, "app", "/", &[], small.clone()).await;
    assert_eq!(v1.next().await.body, small);
    assert_eq!(v2.next().await.body, small);

    // Declared length over the cap: not mirrored, primary gets all of it.
    let big = Bytes::from(vec![b'b'; 4096]);
    let a = send(&c, addr, Method::POST, "app", "/", &[], big.clone()).await;
    assert_eq!(a.status, 200);
    assert_eq!(v1.next().await.body, big);

    // Chunked body (no length) that grows over the cap: the tee gives up.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..8)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'c'; 512]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/")
        .header("host", "app")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = v1.next().await;
    assert_eq!(got.body.len(), 4096);
    assert_eq!(got.header("content-length"), None, "streamed as chunked");

    mirrors_settled(&proxy).await;
    // The copy streams until the cap, then is cut: the mirror may have
    // seen its head, never a complete request.
    while let Some(r) = v2.try_next() {
        assert!(!r.complete, "a copy over the cap reached the mirror whole");
    }
    assert_eq!(v2.completed(), 1, "only the small body was mirrored whole");
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_mirror_dropped_total{route="r",backend="m0",reason="body_too_large"}"#
        ),
        2.0
    );
    proxy.shutdown().await;
}
