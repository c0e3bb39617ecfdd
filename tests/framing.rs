//! Request and response framing over real sockets: the framing guard stays
//! on after requests that may start a tunnel but do not; obs-text in field
//! values; pipelined requests before a refused one are answered; oversized
//! `Content-Length`; the body limit on the tunnel path; primary responses
//! with both `Content-Length` and `Transfer-Encoding`; trailers.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One HTTP/1.1 response as read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Field names lowercased, in order.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Trailer fields (chunked responses).
    trailers: Vec<(String, Vec<u8>)>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A raw client connection with its read buffer.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Reads more; false at end of stream (or error, or 5 s without data).
    async fn fill(&mut self) -> bool {
        let mut b = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            _ => false,
        }
    }

    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..p].to_vec();
                self.buf.drain(..p + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn fields(&mut self) -> Option<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Some(out);
            }
            let colon = line.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            let value = line[colon + 1..].trim_ascii().to_vec();
            out.push((name, value));
        }
    }

    /// The next complete response (to a request that is not HEAD), or
    /// None when the connection ends first.
    async fn response(&mut self) -> Option<RawResponse> {
        let status_line = self.line().await?;
        let status = String::from_utf8_lossy(&status_line)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let headers = self.fields().await?;
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        if status == 101 || status == 204 || status == 304 {
            return Some(resp);
        }
        if chunked {
            loop {
                let size_line = self.line().await?;
                let size = String::from_utf8_lossy(&size_line);
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    resp.trailers = self.fields().await?;
                    return Some(resp);
                }
                resp.body.extend(self.exact(size).await?);
                self.exact(2).await?;
            }
        } else if let Some(len) = resp.header("content-length") {
            resp.body = self.exact(len.parse().ok()?).await?;
        } else {
            while self.fill().await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    /// Whether the proxy closes the connection (within 5 s) without
    /// sending anything more.
    async fn closes(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&b[..n]);
                false
            }
            Err(_) => false,
        }
    }
}

/// The malformed request shapes the framing guard refuses (each a
/// complete request for `/smuggled`, which no backend may ever see).
fn malformed() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "two different Content-Lengths",
            b"POST /smuggled HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                .to_vec(),
        ),
        (
            "Content-Length and Transfer-Encoding",
            b"POST /smuggled HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "obs-fold",
            b"GET /smuggled HTTP/1.1\r\nHost: app\r\nX-A: b\r\n  folded\r\n\r\n".to_vec(),
        ),
        (
            "a Transfer-Encoding other than chunked",
            b"POST /smuggled HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "two Transfer-Encodings",
            b"POST /smuggled HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "space before the colon of Content-Length",
            b"POST /smuggled HTTP/1.1\r\nHost: app\r\nContent-Length : 4\r\n\r\nabcd".to_vec(),
        ),
        (
            "bare LF line ends",
            b"GET /smuggled HTTP/1.1\nHost: app\n\n".to_vec(),
        ),
        (
            "Content-Length of 2^64-1",
            b"POST /smuggled HTTP/1.1\r\nHost: app\r\nContent-Length: 18446744073709551615\r\n\r\nabcd"
                .to_vec(),
        ),
        (
            "Content-Length over 2^64",
            b"POST /smuggled HTTP/1.1\r\nHost: app\r\nContent-Length: 18446744073709551616\r\n\r\nabcd"
                .to_vec(),
        ),
    ]
}

fn one_backend(v1: SocketAddr) -> String {
    format!(
        "backends: {{ v1: {{ endpoints: [\"{v1}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n"
    )
}

/// Waits (bounded) until `backend` has received `n` requests, then checks
/// that none of them was for `/smuggled`.
async fn none_smuggled(backend: &mut BackendHandle, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.received() < n {
        assert!(
            Instant::now() < deadline,
            "backend saw {} of {n}",
            backend.received()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while let Some(r) = backend.try_next() {
        assert_ne!(
            r.uri.path(),
            "/smuggled",
            "a refused request reached the backend"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_is_refused_on_a_fresh_connection_and_after_requests_that_start_no_tunnel(
) {
    let mut v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&one_backend(v1.addr)).await;
    let addr = proxy.listen_addrs[0];

    // What comes first on the connection: nothing, or a request that
    // might have started a tunnel but did not.
    let openers: &[(&str, &[u8], u16)] = &[
        ("a fresh connection", b"", 0),
        (
            "a request with Upgrade but no Connection: upgrade",
            b"GET /opener HTTP/1.1\r\nHost: app\r\nUpgrade: foo\r\n\r\n",
            200,
        ),
        (
            "a declined upgrade (the backend answers 200)",
            b"GET /opener HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
            200,
        ),
        (
            "a refused CONNECT (the backend answers 403)",
            b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n",
            403,
        ),
    ];
    let mut reached = 0;
    for (opener, first, first_status) in openers {
        for (shape, bad) in malformed() {
            let what = format!("{shape}, after {opener}");
            let mut c = Raw::connect(addr).await;
            if !first.is_empty() {
                v1.status
                    .store(*first_status, std::sync::atomic::Ordering::SeqCst);
                c.send(first).await;
                let r = c
                    .response()
                    .await
                    .unwrap_or_else(|| panic!("{what}: no answer to the opener"));
                assert_eq!(r.status, *first_status, "{what}");
                reached += 1;
                v1.status.store(200, std::sync::atomic::Ordering::SeqCst);
            }
            c.send(&bad).await;
            let r = c
                .response()
                .await
                .unwrap_or_else(|| panic!("{what}: closed without an answer"));
            assert_eq!(r.status, 400, "{what}");
            assert!(c.closes().await, "{what}: the connection stays open");
        }
    }
    none_smuggled(&mut v1, reached).await;
    assert_eq!(v1.received(), reached);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_before_a_refused_one_is_answered_first() {
    let mut v1 = TestBackend::new().body("first").spawn().await;
    let proxy = start_proxy(&one_backend(v1.addr)).await;
    let addr = proxy.listen_addrs[0];
    for (shape, bad) in malformed() {
        let mut c = Raw::connect(addr).await;
        let mut both = b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n".to_vec();
        both.extend_from_slice(&bad);
        c.send(&both).await;
        let r = c
            .response()
            .await
            .unwrap_or_else(|| panic!("{shape}: the valid request was dropped unanswered"));
        assert_eq!((r.status, &r.body[..]), (200, &b"first"[..]), "{shape}");
        let r = c
            .response()
            .await
            .unwrap_or_else(|| panic!("{shape}: the refusal was silent"));
        assert_eq!(r.status, 400, "{shape}");
        assert!(c.closes().await, "{shape}: the connection stays open");
    }
    none_smuggled(&mut v1, malformed().len()).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_text_in_a_field_value_is_forwarded_on_http1_as_on_http2() {
    let mut v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&one_backend(v1.addr)).await;
    let addr = proxy.listen_addrs[0];
    let mut c = Raw::connect(addr).await;
    // Twice on one keep-alive connection, the second pipelined after a
    // plain request.
    c.send(b"GET /latin1 HTTP/1.1\r\nHost: app\r\nX-Name: caf\xe9 cr\xe8me\r\n\r\n")
        .await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status, 200);
    c.send(b"GET /plain HTTP/1.1\r\nHost: app\r\n\r\nGET /latin1 HTTP/1.1\r\nHost: app\r\nX-Name: \xff\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(c.response().await.expect("answer").status, 200);
    assert_eq!(c.response().await.expect("answer").status, 200);
    let first = v1.next().await;
    assert_eq!(first.headers["x-name"].as_bytes(), b"caf\xe9 cr\xe8me");
    assert_eq!(v1.next().await.uri.path(), "/plain");
    assert_eq!(v1.next().await.headers["x-name"].as_bytes(), b"\xff");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrepresentable_content_length_is_400_not_431() {
    let v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&one_backend(v1.addr)).await;
    let addr = proxy.listen_addrs[0];
    for length in [
        "18446744073709551615",
        "18446744073709551614",
        "18446744073709551616",
        "99999999999999999999999999",
    ] {
        let mut c = Raw::connect(addr).await;
        c.send(
            format!("POST / HTTP/1.1\r\nHost: app\r\nContent-Length: {length}\r\n\r\nabc")
                .as_bytes(),
        )
        .await;
        let r = c.response().await.expect("answer");
        assert_eq!(r.status, 400, "Content-Length: {length}");
    }
    assert_eq!(v1.received(), 0);
    proxy.shutdown().await;
}

fn body_limited(v1: SocketAddr) -> String {
    format!(
        "backends: {{ v1: {{ endpoints: [\"{v1}\"] }} }}\nroutes: [{{ name: r, backend: v1, max_body_bytes: 1KiB }}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_body_limit_holds_for_requests_with_upgrade_headers() {
    let mut v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&body_limited(v1.addr)).await;
    let addr = proxy.listen_addrs[0];

    // A declared length over the limit: 413 before anything is sent.
    let mut c = Raw::connect(addr).await;
    let mut req = b"POST /up HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: foo\r\nContent-Length: 5000\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'x'; 5000]);
    c.send(&req).await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status, 413);
    assert!(String::from_utf8_lossy(&r.body).contains("body_too_large"));

    // Chunked, going over the limit in its third chunk: cut, 413, and the
    // primary never sees more than the limit.
    let mut c = Raw::connect(addr).await;
    let mut req = b"POST /up HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: foo\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'c'; 512]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.send(&req).await;
    let r = c.response().await;
    assert!(
        r.as_ref().is_none_or(|r| r.status == 413),
        "{r:?}: the cut body is answered 413 or the connection closes"
    );

    // Within the limit: the upgrade request goes through.
    let mut c = Raw::connect(addr).await;
    let mut req = b"POST /up HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: foo\r\nContent-Length: 1024\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'y'; 1024]);
    c.send(&req).await;
    assert_eq!(c.response().await.expect("answer").status, 200);
    // (A cut chunked request may reach the primary as a head and part of
    // a body: never more than the limit.)
    loop {
        let got = v1.next().await;
        assert!(
            got.body.len() <= 1024,
            "{} bytes reached the primary",
            got.body.len()
        );
        if got.body.len() == 1024 && got.body.iter().all(|b| *b == b'y') {
            break;
        }
    }
    proxy.shutdown().await;
}

/// A backend on raw TCP that answers every request head (requests without
/// body) on a connection with `answer`, byte for byte.
async fn raw_backend(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..p + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_response_with_length_and_chunked_coding_is_passed_on_dechunked_without_the_length(
) {
    let v1 = raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = start_proxy(&one_backend(v1)).await;
    let addr = proxy.listen_addrs[0];

    // HTTP/1.1, keep-alive: the whole body, twice on one connection.
    let mut c = Raw::connect(addr).await;
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
        let r = c.response().await.expect("answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), None, "{r:?}");
        assert_eq!(String::from_utf8_lossy(&r.body), "hello");
    }
    // HTTP/2: no stream error.
    let a = h2_get(addr, "http://app/").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "hello");
    assert!(!a.headers.contains_key("content-length"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_response_with_a_transfer_coding_other_than_chunked_is_502() {
    let v1 = raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
    )
    .await;
    let proxy = start_proxy(&one_backend(v1)).await;
    let addr = proxy.listen_addrs[0];
    let mut c = Raw::connect(addr).await;
    c.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("upstream_failed"));
    let a = h2_get(addr, "http://app/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"], "upstream_failed");
    proxy.shutdown().await;
}

/// A backend that records each request's body and trailer fields, and
/// answers `ok` followed by the trailer field `x-resp-sum: 7` (announced
/// in `Trailer`; hyper sends it to clients that sent `TE: trailers`).
async fn trailer_backend() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(bytes::Bytes, Option<http::HeaderMap>)>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let collected = req.into_body().collect().await;
                            let (body, trailers) = match collected {
                                Ok(c) => {
                                    let t = c.trailers().cloned();
                                    (c.to_bytes(), t)
                                }
                                Err(_) => (bytes::Bytes::new(), None),
                            };
                            let _ = tx.send((body, trailers));
                            let mut t = http::HeaderMap::new();
                            t.insert("x-resp-sum", http::HeaderValue::from_static("7"));
                            // No length known up front: sent chunked, with the trailers.
                            let frames: Vec<Result<_, std::convert::Infallible>> = vec![
                                Ok(http_body::Frame::data(bytes::Bytes::from_static(b"ok"))),
                                Ok(http_body::Frame::trailers(t)),
                            ];
                            let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
                            let resp = http::Response::builder()
                                .header("trailer", "x-resp-sum")
                                .body(body)
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_the_primary_the_client_and_the_mirrored_body() {
    let (v1, mut seen) = trailer_backend().await;
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{v1}\"] }}, v2: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: v2 }}] }}]\n",
        v2.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let mut c = Raw::connect(addr).await;
    c.send(b"POST /t HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nTE: trailers\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n")
        .await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), "ok");
    assert_eq!(
        r.trailers,
        vec![("x-resp-sum".to_string(), b"7".to_vec())],
        "the primary's trailers reach an HTTP/1.1 client that sent TE: trailers: {r:?}"
    );
    let (body, trailers) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("the primary got the request")
        .unwrap();
    assert_eq!(&body[..], b"hello world");
    assert_eq!(
        trailers
            .as_ref()
            .and_then(|t| t.get("x-sum"))
            .map(|v| v.as_bytes()),
        Some(&b"42"[..]),
        "the request's trailers reach the primary"
    );
    // The body is mirrored, not counted incomplete.
    let copy = v2.next().await;
    assert_eq!(&copy.body[..], b"hello world");
    assert_eq!(
        copy.header("trailer"),
        Some("x-sum"),
        "a copy announces the trailer it carries"
    );
    assert_eq!(
        copy.trailers
            .as_ref()
            .and_then(|t| t.get("x-sum"))
            .map(|v| v.as_bytes()),
        Some(&b"42"[..]),
        "the request's trailers reach the copy: {copy:?}"
    );
    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_mirror_dropped_total{route="r",backend="v2",reason="body_incomplete"}"#
        ),
        0.0
    );
    proxy.shutdown().await;
}

/// An HTTP/2 shadow (hyper's client, not the HTTP/1.1 copy client) gets the
/// request's trailers after the body; fields that must not be trailers
/// (framing, routing) are left out.
#[tokio::test]
async fn trailers_reach_an_h2_shadow() {
    let mut v1 = TestBackend::new().spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{}\"] }}, v2: {{ endpoints: [\"{}\"], protocol: h2 }} }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: v2 }}] }}]\n",
        v1.addr, v2.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let mut c = Raw::connect(addr).await;
    c.send(b"POST /t HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 42\r\nhost: evil\r\ncontent-length: 9\r\n\r\n")
        .await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status, 200);
    let primary = v1.next().await;
    assert_eq!(&primary.body[..], b"hello");
    let copy = v2.next().await;
    assert_eq!(&copy.body[..], b"hello");
    let trailers = copy.trailers.clone().unwrap_or_default();
    assert_eq!(
        trailers.get("x-sum").map(|v| v.as_bytes()),
        Some(&b"42"[..]),
        "the h2 shadow gets the trailers: {copy:?}"
    );
    assert!(
        trailers.get("host").is_none() && trailers.get("content-length").is_none(),
        "framing and routing fields are never sent as trailers: {trailers:?}"
    );
    proxy.shutdown().await;
}
