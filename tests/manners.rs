//! Upgrades and CONNECT go to the primary and are never mirrored; malformed
//! requests get 4xx and never reach a backend.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that accepts upgrades (101) and CONNECT (200), then echoes bytes.
async fn echo_tunnel_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    let mut resp = Response::new(Empty::<Bytes>::new());
                    if req.method() == http::Method::CONNECT {
                        *resp.status_mut() = StatusCode::OK;
                    } else {
                        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        resp.headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        resp.headers_mut()
                            .insert("upgrade", "websocket".parse().unwrap());
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Writes `request` on a fresh connection and returns what comes back
/// until the peer closes or 2 s pass.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "connection closed mid-head"
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn upgrade_and_connect_tunnel_to_the_primary_and_are_not_mirrored() {
    let v1 = echo_tunnel_backend().await;
    let v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{v1}\"] }}, v2: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: v2 }}] }}]\n",
        v2.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    for request in [
        &b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        &b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.starts_with("HTTP/1.1 101") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        for msg in [&b"ping"[..], b"second message"] {
            s.write_all(msg).await.unwrap();
            let mut got = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, msg);
        }
    }
    let m = metrics(&proxy).await;
    assert_eq!(v2.received(), 0, "tunnels are never mirrored");
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="r",backend="v1",role="primary",code="101"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="r",backend="v1",role="primary",code="200"}"#
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_reach_no_backend() {
    let v1 = TestBackend::new().spawn().await;
    let v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{}\"] }}, v2: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: v2 }}] }}]\n",
        v1.addr, v2.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "absolute-form host differs from Host",
            b"GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            &["400"],
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            &["400"],
        ),
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            &["400"],
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                .to_vec(),
            &["400"],
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n".to_vec(),
            &["400"],
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n".to_vec(),
            &["400"],
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n".to_vec(),
            &["400"],
        ),
        (
            "oversized header section",
            huge_header.into_bytes(),
            &["431"],
        ),
        ("too many headers", many_headers.into_bytes(), &["431"]),
        (
            "invalid Host",
            b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n".to_vec(),
            &["400"],
        ),
    ];
    for (name, request, statuses) in cases {
        let out = raw(addr, &request).await;
        let status = out.split_whitespace().nth(1).unwrap_or("");
        assert!(
            statuses.contains(&status),
            "{name}: got `{}`",
            out.lines().next().unwrap_or("")
        );
    }
    assert_eq!(v1.received(), 0, "no malformed request reached the primary");
    assert_eq!(v2.received(), 0, "no malformed request reached the shadow");
    proxy.shutdown().await;
}

#[tokio::test]
async fn empty_lines_before_a_request_are_allowed() {
    let mut v1 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    // RFC 9112 §2.2: a server should ignore at least one empty line before
    // the request line (old clients sent CRLF after a POST body).
    let out = raw(
        proxy.listen_addrs[0],
        b"\r\n\r\nGET /after-empty-lines HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(v1.next().await.uri.path(), "/after-empty-lines");
    proxy.shutdown().await;
}
