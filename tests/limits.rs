//! Client-side limits: slow-loris heads cut by `limits.header_read_timeout`
//! while others are served, the header count and size limits, and a
//! route's `max_body_bytes`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Reads until the proxy closes the connection (at most `bound`); returns
/// what it sent and how long it took to close.
async fn until_closed(s: &mut TcpStream, bound: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (
        String::from_utf8_lossy(&out).into_owned(),
        closed.then(|| started.elapsed()),
    )
}

/// Raw request on a fresh connection; the status line's code.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let (out, _) = until_closed(&mut s, Duration::from_secs(3)).await;
    let status = out.split_whitespace().nth(1).unwrap_or("").to_string();
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_heads_are_cut_off_and_others_are_served() {
    let v1 = TestBackend::new().body("fine").spawn().await;
    let proxy = start_proxy(&format!(
        "limits: {{ header_read_timeout: 300ms }}\nbackends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];

    let partial: &[(&str, &[u8])] = &[
        ("nothing at all", b""),
        ("part of the request line", b"GE"),
        (
            "part of a header",
            b"GET / HTTP/1.1\r\nHost: app\r\nX-Slow: ",
        ),
        ("all but the blank line", b"GET / HTTP/1.1\r\nHost: app\r\n"),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
    ];
    // Many at once, plus one that keeps trickling a byte every 50 ms.
    let mut stalled = Vec::new();
    for round in 0..10 {
        for (name, bytes) in partial {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            stalled.push((format!("{name} #{round}"), s));
        }
    }
    let trickler = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for b in b"GET / HTTP/1.1\r\nHost: app\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, closed) = until_closed(&mut s, Duration::from_secs(3)).await;
        (started, closed)
    });

    // Meanwhile a normal client is served promptly.
    let c = client();
    for _ in 0..20 {
        let t = Instant::now();
        let a = get(&c, addr, "app", "/").await;
        assert_eq!(a.status, 200);
        assert!(t.elapsed() < Duration::from_millis(250));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for (name, mut s) in stalled {
        let (out, closed) = until_closed(&mut s, Duration::from_secs(3)).await;
        let closed = closed.unwrap_or_else(|| panic!("{name}: still open after 3 s"));
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 408"),
            "{name}: got {out:?}"
        );
        let _ = closed;
    }
    let (started, closed) = trickler.await.unwrap();
    assert!(
        closed.is_some(),
        "a head trickled byte by byte is cut off too"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        started.elapsed()
    );
    assert_eq!(
        v1.received(),
        20,
        "only the normal requests reached the backend"
    );
    // Still serving after all that.
    assert_eq!(get(&c, addr, "app", "/").await.status, 200);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_count_and_size_limits_apply_as_configured() {
    let v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "limits: {{ max_headers: 20, max_header_bytes: 16KiB }}\nbackends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let with_headers = |n: usize| {
        let mut r = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
        for i in 1..n {
            r.push_str(&format!("X-H{i}: v\r\n"));
        }
        r.push_str("Connection: close\r\n\r\n");
        r
    };
    let with_size = |bytes: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(bytes)
        )
    };
    // `Connection: close` is one of the fields counted.
    assert_eq!(raw_status(addr, with_headers(19).as_bytes()).await.0, "200");
    assert_eq!(raw_status(addr, with_headers(30).as_bytes()).await.0, "431");
    assert_eq!(
        raw_status(addr, with_size(12 * 1024).as_bytes()).await.0,
        "200"
    );
    assert_eq!(
        raw_status(addr, with_size(20 * 1024).as_bytes()).await.0,
        "431"
    );
    // The defaults (100 fields, 64 KiB) on another proxy.
    let defaults = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    let d = defaults.listen_addrs[0];
    // (The test backend allows 100 fields too, and the proxy adds 5.)
    assert_eq!(raw_status(d, with_headers(90).as_bytes()).await.0, "200");
    assert_eq!(raw_status(d, with_headers(101).as_bytes()).await.0, "431");
    assert_eq!(
        raw_status(d, with_size(60 * 1024).as_bytes()).await.0,
        "200"
    );
    assert_eq!(
        raw_status(d, with_size(70 * 1024).as_bytes()).await.0,
        "431"
    );
    assert_eq!(v1.received(), 4);
    proxy.shutdown().await;
    defaults.shutdown().await;
}

fn body_limited(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        r#"
backends:
  v1: {{ endpoints: ["{v1}"] }}
  v2: {{ endpoints: ["{v2}"] }}
routes:
  - name: small
    match: {{ path_prefix: /small }}
    backend: v1
    max_body_bytes: 1KiB
    mirrors: [{{ backend: v2 }}]
  - {{ name: open, backend: v1, mirrors: [{{ backend: v2 }}] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_routes_limit_is_413_before_any_backend() {
    let mut v1 = TestBackend::new().spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&body_limited(v1.addr, v2.addr)).await;
    let addr = proxy.listen_addrs[0];
    let c = client();

    let a = send(
        &c,
        addr,
        Method::POST,
        "app",
        "/small",
        &[],
        vec![b'a'; 1025],
    )
    .await;
    assert_eq!(a.status, 413);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.json()["error"], "body_too_large");
    assert_eq!(a.headers["connection"], "close");

    // At the limit: served and mirrored. Other routes: no limit.
    let a = send(
        &c,
        addr,
        Method::POST,
        "app",
        "/small",
        &[],
        vec![b'a'; 1024],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(v1.next().await.body.len(), 1024);
    let a = send(
        &c,
        addr,
        Method::POST,
        "app",
        "/open",
        &[],
        vec![b'a'; 100_000],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(v1.next().await.body.len(), 100_000);
    mirrors_settled(&proxy).await;
    let mut copies = [v2.next().await.body.len(), v2.next().await.body.len()];
    copies.sort();
    assert_eq!(copies, [1024, 100_000]);
    assert_eq!(v1.received(), 2, "the refused request reached no primary");
    assert_eq!(v2.received(), 2, "nor any mirror");
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="small",backend="v1",role="primary",code="413"}"#
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_routes_limit_is_cut_and_answered_413() {
    let v1 = TestBackend::new().spawn().await;
    let v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&body_limited(v1.addr, v2.addr)).await;
    let addr = proxy.listen_addrs[0];

    // 4 chunks of 512 bytes: the third goes over 1 KiB.
    let mut request =
        b"POST /small HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'c'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    let (out, closed) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("\"error\":\"body_too_large\""), "{out}");
    assert!(
        closed.is_some(),
        "the connection is closed after a cut body"
    );

    mirrors_settled(&proxy).await;
    // The primary saw the head and at most the first KiB, never a whole
    // request; nor did the mirror (its copy streams, and is cut too).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut v1 = v1;
    while let Some(r) = v1.try_next() {
        assert!(
            r.body.len() <= 1024,
            "{} bytes reached the primary",
            r.body.len()
        );
    }
    assert_eq!(v2.completed(), 0, "the mirror got a whole request");
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_mirror_dropped_total{route="small",backend="v2",reason="body_too_large"}"#
        ),
        1.0
    );
    // Within the limit, chunked bodies pass whole.
    let mut ok = b"POST /small HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    ok.extend_from_slice(b"200\r\n");
    ok.extend_from_slice(&[b'c'; 512]);
    ok.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(raw_status(addr, &ok).await.0, "200");
    proxy.shutdown().await;
}

/// An HTTP/2 connection that goes silent is closed after
/// `limits.idle_timeout` (hyper has no idle timeout of its own for HTTP/2
/// server connections); one that keeps sending requests is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_connection_is_closed_after_the_idle_timeout() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let v1 = TestBackend::new().body("v1").spawn().await;
    let proxy = start_proxy(&format!(
        "limits: {{ idle_timeout: 400ms }}\nbackends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let open = |_: ()| async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
        let started = Instant::now();
        let ended = tokio::spawn(async move {
            let _ = conn.await;
            started.elapsed()
        });
        (sender, ended)
    };
    let request = || {
        http::Request::builder()
            .uri("http://app/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (mut quiet, quiet_ended) = open(()).await;
    let (mut busy, busy_ended) = open(()).await;
    assert_eq!(quiet.send_request(request()).await.unwrap().status(), 200);
    // The busy one asks every 100 ms for 1.2 s: never silent for 400 ms.
    for _ in 0..12 {
        let answer = busy
            .send_request(request())
            .await
            .expect("busy connection closed");
        assert_eq!(answer.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!busy_ended.is_finished(), "a busy connection was closed");
    // The quiet one was closed meanwhile (bounded wait).
    let closed_after = tokio::time::timeout(Duration::from_secs(5), quiet_ended)
        .await
        .expect("a silent HTTP/2 connection is still open after 5 s")
        .unwrap();
    assert!(
        closed_after >= Duration::from_millis(400),
        "closed after {closed_after:?}"
    );
    drop(busy);
    proxy.shutdown().await;
}
