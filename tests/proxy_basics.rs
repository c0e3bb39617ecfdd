//! The client gets exactly what the primary sent; the mirror gets the same
//! request with the Host suffixed; a proxy's manners; failures as 502/504.

mod support;

use bytes::Bytes;
use http::Method;
use support::*;

fn mirrored_config(v1: std::net::SocketAddr, v2: std::net::SocketAddr) -> String {
    format!(
        r#"
backends:
  v1: {{ endpoints: ["{v1}"] }}
  v2: {{ endpoints: ["{v2}"] }}
routes:
  - name: my-app
    match: {{ host: my-app.local, path_prefix: / }}
    backend: v1
    mirrors:
      - backend: v2
        percent: 100
"#
    )
}

#[tokio::test]
async fn client_gets_the_primary_answer_and_the_mirror_gets_a_copy() {
    let mut v1 = TestBackend::new()
        .status(201)
        .body("from v1")
        .header("x-custom", "kept")
        .header("date", "Mon, 01 Jan 2024 00:00:00 GMT")
        .spawn()
        .await;
    let mut v2 = TestBackend::new()
        .status(500)
        .body("from v2 (never seen)")
        .spawn()
        .await;
    let proxy = start_proxy(&mirrored_config(v1.addr, v2.addr)).await;
    let addr = proxy.listen_addrs[0];

    let answer = send(
        &client(),
        addr,
        Method::POST,
        "my-app.local",
        "/orders/7?expand=items&x=1",
        &[
            ("content-type", "application/json"),
            ("x-trace", "abc"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "must not pass"),
        ],
        Bytes::from_static(b"{\"qty\":2}"),
    )
    .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.text(), "from v1");
    assert_eq!(answer.headers["x-custom"], "kept");
    assert_eq!(
        answer.headers["date"], "Mon, 01 Jan 2024 00:00:00 GMT",
        "the primary's Date passes untouched"
    );

    let primary = v1.next().await;
    let shadow = v2.next().await;
    for r in [&primary, &shadow] {
        assert_eq!(r.method, Method::POST);
        assert_eq!(
            r.uri.path_and_query().unwrap().as_str(),
            "/orders/7?expand=items&x=1"
        );
        assert_eq!(r.body, Bytes::from_static(b"{\"qty\":2}"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-trace"), Some("abc"));
        assert_eq!(
            r.header("x-hop"),
            None,
            "hop-by-hop header named in Connection is removed"
        );
        assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(r.header("x-forwarded-proto"), Some("http"));
        assert_eq!(r.header("x-forwarded-host"), Some("my-app.local"));
        assert_eq!(r.header("via"), Some("1.1 shadowgate"));
    }
    assert_eq!(primary.header("host"), Some("my-app.local"));
    assert_eq!(shadow.header("host"), Some("my-app.local-shadow"));
    let id = primary
        .header("x-request-id")
        .expect("request id generated");
    assert_eq!(id.len(), 32);
    assert_eq!(
        shadow.header("x-request-id"),
        Some(id),
        "both copies carry the same request id"
    );

    // A client-supplied request id is kept.
    send(
        &client(),
        addr,
        Method::GET,
        "my-app.local",
        "/",
        &[("x-request-id", "client-id-1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(v1.next().await.header("x-request-id"), Some("client-id-1"));
    assert_eq!(v2.next().await.header("x-request-id"), Some("client-id-1"));
    mirrors_settled(&proxy).await;

    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="my-app",backend="v1",role="primary",code="201"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="my-app",backend="v2",role="mirror",code="500"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_mirror_errors_total{route="my-app",backend="v2",kind="status_5xx"}"#
        ),
        2.0
    );
    proxy.shutdown().await;
}

/// Copies to an HTTP/1.1 shadow go over the copy client's own keep-alive
/// connection: one connection for 200 copies sent one after another, every
/// copy answered.
#[tokio::test]
async fn copies_reuse_keep_alive_connections_to_the_shadow() {
    let v1 = TestBackend::new().spawn().await;
    let v2 = TestBackend::new().body("x".repeat(3000)).spawn().await;
    let proxy = start_proxy(&mirrored_config(v1.addr, v2.addr)).await;
    let c = client();
    let requests = 200;
    for i in 0..requests {
        let a = send(
            &c,
            proxy.listen_addrs[0],
            if i % 2 == 0 {
                Method::GET
            } else {
                Method::POST
            },
            "my-app.local",
            "/x",
            &[],
            Bytes::from(if i % 2 == 0 { "" } else { "a body" }),
        )
        .await;
        assert_eq!(a.status, 200);
        // The copy has ended (its connection is back in the idle list)
        // before the next request, so the next copy can take it.
        mirrors_settled(&proxy).await;
    }
    assert_eq!(v2.received(), requests);
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="my-app",backend="v2",role="mirror",code="200"}"#
        ),
        requests as f64,
        "{m}"
    );
    assert!(
        v2.connections() == 1,
        "{} connections for {requests} copies",
        v2.connections()
    );
    proxy.shutdown().await;
}

/// An HTTP/2 client's split cookies reach HTTP/1.1 backends, primary and
/// shadow, as one field.
#[tokio::test]
async fn split_cookies_from_an_http2_client_arrive_as_one_field() {
    let mut v1 = TestBackend::new().spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&mirrored_config(v1.addr, v2.addr)).await;
    // h2c with prior knowledge; `:authority` names the route's host.
    let tcp = tokio::net::TcpStream::connect(proxy.listen_addrs[0])
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://my-app.local/c")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let a = sender.send_request(req).await.unwrap();
    assert_eq!(a.status(), 200);
    for got in [v1.next().await, v2.next().await] {
        let cookies: Vec<_> = got.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn host_keeps_its_port_and_suffix_rules_apply() {
    let mut v1 = TestBackend::new().spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let mut v3 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        r#"
backends:
  v1: {{ endpoints: ["{}"] }}
  v2: {{ endpoints: ["{}"] }}
  v3: {{ endpoints: ["{}"] }}
routes:
  - name: r
    backend: v1
    mirrors:
      - backend: v2
        headers: {{ remove: [authorization, cookie], set: {{ x-shadow: "1" }} }}
      - backend: v3
        host_suffix: ""
        methods: [GET]
"#,
        v1.addr, v2.addr, v3.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    send(
        &client(),
        addr,
        Method::GET,
        "app.example:8080",
        "/",
        &[("authorization", "Bearer secret"), ("cookie", "s=1")],
        Bytes::new(),
    )
    .await;
    let p = v1.next().await;
    assert_eq!(p.header("host"), Some("app.example:8080"));
    assert_eq!(
        p.header("authorization"),
        Some("Bearer secret"),
        "the primary gets credentials"
    );
    let s = v2.next().await;
    assert_eq!(s.header("host"), Some("app.example-shadow:8080"));
    assert_eq!(s.header("authorization"), None);
    assert_eq!(s.header("cookie"), None);
    assert_eq!(s.header("x-shadow"), Some("1"));
    let s3 = v3.next().await;
    assert_eq!(
        s3.header("host"),
        Some("app.example:8080"),
        "empty suffix keeps the Host"
    );

    // POST is not in v3's methods: dropped and counted.
    send(
        &client(),
        addr,
        Method::POST,
        "app.example",
        "/",
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    v1.next().await;
    v2.next().await;
    mirrors_settled(&proxy).await;
    assert!(v3.try_next().is_none());
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_mirror_dropped_total{route="r",backend="v3",reason="method"}"#
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn no_route_is_404_with_json() {
    let v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, match: {{ host: a.local }}, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    let a = get(&client(), proxy.listen_addrs[0], "b.local", "/x").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"], "no_route");
    assert_eq!(v1.received(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_primary_is_502_and_slow_primary_is_504() {
    let dead = dead_addr().await;
    let slow = TestBackend::new()
        .delay(std::time::Duration::from_secs(5))
        .spawn()
        .await;
    let proxy = start_proxy(&format!(
        r#"
backends:
  dead: {{ endpoints: ["{dead}"] }}
  slow: {{ endpoints: ["{}"], timeout: 200ms }}
routes:
  - {{ name: dead, match: {{ path_prefix: /dead }}, backend: dead }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, backend: slow }}
"#,
        slow.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let a = get(&client(), addr, "x", "/dead").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"], "upstream_unreachable");
    assert_eq!(a.headers["content-type"], "application/json");
    let started = tokio::time::Instant::now();
    let a = get(&client(), addr, "x", "/slow").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"], "upstream_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="dead",backend="dead",role="primary",code="502"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="slow",backend="slow",role="primary",code="504"}"#
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn refused_endpoint_is_passed_over_and_idempotent_requests_retry() {
    let dead = dead_addr().await;
    let mut alive = TestBackend::new().body("alive").spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{dead}\", \"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        alive.addr
    ))
    .await;
    for _ in 0..6 {
        let a = get(&client(), proxy.listen_addrs[0], "x", "/").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "alive");
        alive.next().await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_cleartext_clients_are_served_and_mirrored() {
    let mut v1 = TestBackend::new().body("h2 ok").spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&mirrored_config(v1.addr, v2.addr)).await;
    for _ in 0..3 {
        let a = h2_get(proxy.listen_addrs[0], "http://my-app.local/h2?q=1").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "h2 ok");
        let p = v1.next().await;
        assert_eq!(p.header("host"), Some("my-app.local"));
        assert_eq!(p.header("via"), Some("2 shadowgate"));
        let s = v2.next().await;
        assert_eq!(s.header("host"), Some("my-app.local-shadow"));
        assert_eq!(s.uri.path_and_query().unwrap().as_str(), "/h2?q=1");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn weighted_split_spreads_live_traffic() {
    let a = TestBackend::new().body("a").spawn().await;
    let b = TestBackend::new().body("b").spawn().await;
    let proxy = start_proxy(&format!(
        r#"
backends:
  a: {{ endpoints: ["{}"] }}
  b: {{ endpoints: ["{}"] }}
routes:
  - name: r
    backend: a
    split: [{{ backend: a, weight: 80 }}, {{ backend: b, weight: 20 }}]
"#,
        a.addr, b.addr
    ))
    .await;
    let c = client();
    for _ in 0..500 {
        assert_eq!(get(&c, proxy.listen_addrs[0], "x", "/").await.status, 200);
    }
    let (na, nb) = (a.received(), b.received());
    assert_eq!(na + nb, 500);
    // 20% of 500 = 100, sd ≈ 9; allow 6 sd.
    assert!((46..=154).contains(&nb), "b got {nb}");
    proxy.shutdown().await;
}
