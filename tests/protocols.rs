//! Protocols end to end over real sockets on 127.0.0.1: TLS listeners (ALPN,
//! SNI, certificate rotation, bad files), HTTP/2 to backends (h2c and over
//! TLS), upstream TLS with a private CA and with mTLS, gRPC (unary,
//! server- and client-streaming, non-OK statuses, mirroring) and an
//! upgraded connection through a TLS listener.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

fn yaml_path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Starts the proxy with one TLS listener (cert for `localhost`) in front of `body`.
async fn start_tls_proxy(pki: &TestPki, body: &str) -> shadowgate::app::Running {
    let cert = pki.issue("listener", &["localhost", "app.test"], false);
    start_with_listener(
        &format!(
            "listen: [{{ address: 127.0.0.1:0, tls: {{ cert: {}, key: {} }} }}]\n",
            yaml_path(&cert.cert),
            yaml_path(&cert.key)
        ),
        body,
    )
    .await
}

async fn start_with_listener(listen: &str, body: &str) -> shadowgate::app::Running {
    let yaml = format!("{listen}admin: 127.0.0.1:0\naccess_log: off\nstore: memory\n{body}");
    let config =
        shadowgate::config::from_yaml("test.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    shadowgate::app::start(config, shadowgate::app::StartOptions::default())
        .await
        .unwrap()
}

// ---------------------------------------------------------------- TLS in

#[tokio::test]
async fn tls_listener_speaks_http1_and_h2_by_alpn() {
    let pki = TestPki::new();
    let mut v1 = TestBackend::new().body("from-v1").spawn().await;
    let proxy = start_tls_proxy(
        &pki,
        &format!(
            "backends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
            v1.addr
        ),
    )
    .await;
    let addr = proxy.listen_addrs[0];

    let tls = tls_connect(addr, pki.client_config(&[H1]), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(H1));
    let a = get_over(tls, "app.test", "/one").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "from-v1");
    let rec = v1.next().await;
    assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
    assert_eq!(rec.header("host"), Some("app.test"));

    let tls = tls_connect(addr, pki.client_config(&[H2, H1]), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(H2));
    let a = get_over_as(tls, true, "app.test", "/two").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "from-v1");
    let rec = v1.next().await;
    assert_eq!(rec.uri.path(), "/two");
    assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
    assert_eq!(rec.header("host"), Some("app.test"));

    // A client that never finishes its handshake is cut off, and plain
    // HTTP on the TLS port gets nothing.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("the proxy closes a non-TLS connection")
        .unwrap_or(0);
    assert!(!buf[..n].starts_with(b"HTTP/1.1 200"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn tls_handshake_times_out_with_header_read_timeout() {
    let pki = TestPki::new();
    let cert = pki.issue("listener", &["localhost"], false);
    let proxy = start_with_listener(
        &format!(
            "listen: [{{ address: 127.0.0.1:0, tls: {{ cert: {}, key: {} }} }}]\nlimits: {{ header_read_timeout: 300ms }}\n",
            yaml_path(&cert.cert),
            yaml_path(&cert.key)
        ),
        "backends: { v1: { endpoints: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, backend: v1 }]\n",
    )
    .await;
    let mut idle = TcpStream::connect(proxy.listen_addrs[0]).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("an idle TLS connection is closed after header_read_timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    proxy.shutdown().await;
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let pki = TestPki::new();
    let a = pki.issue("a", &["a.test"], false);
    let b = pki.issue("b", &["b.test", "*.b.test"], false);
    let v1 = TestBackend::new().spawn().await;
    let proxy = start_with_listener(
        &format!(
            "listen:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\n        - {{ cert: {}, key: {}, server_names: [b.test, \"*.b.test\"] }}\n",
            yaml_path(&a.cert),
            yaml_path(&a.key),
            yaml_path(&b.cert),
            yaml_path(&b.key)
        ),
        &format!(
            "backends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
            v1.addr
        ),
    )
    .await;
    let addr = proxy.listen_addrs[0];
    let served = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let config = pki.client_config(&[H1]);
    let tls = tls_connect(addr, config.clone(), "b.test").await;
    assert_eq!(served(&tls), b.der);
    let tls = tls_connect(addr, config.clone(), "api.b.test").await;
    assert_eq!(served(&tls), b.der);
    let tls = tls_connect(addr, config.clone(), "a.test").await;
    assert_eq!(served(&tls), a.der);
    assert_eq!(get_over(tls, "a.test", "/").await.status, StatusCode::OK);
    proxy.shutdown().await;
}

#[tokio::test]
async fn certificates_are_reread_when_they_change() {
    let pki = TestPki::new();
    let first = pki.issue("first", &["localhost"], false);
    let v1 = TestBackend::new().spawn().await;
    let config_path = pki.path("shadowgate.yaml");
    // Relative paths are relative to the configuration file.
    std::fs::write(
        &config_path,
        format!(
            "listen: [{{ address: 127.0.0.1:0, tls: {{ cert: live.pem, key: live-key.pem }} }}]\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\nwatch_interval: 50ms\nbackends: {{ v1: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
            v1.addr
        ),
    )
    .unwrap();
    std::fs::copy(&first.cert, pki.path("live.pem")).unwrap();
    std::fs::copy(&first.key, pki.path("live-key.pem")).unwrap();
    let config = shadowgate::config::load_files(std::slice::from_ref(&config_path)).unwrap();
    let proxy = shadowgate::app::start(config, shadowgate::app::StartOptions::default())
        .await
        .unwrap();
    let addr = proxy.listen_addrs[0];
    let client = pki.client_config(&[H1]);
    let served = |tls: tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(
        served(tls_connect(addr, client.clone(), "localhost").await),
        first.der
    );

    // Rotate: the file watch notices the certificate files themselves.
    let second = pki.issue("second", &["localhost"], false);
    std::fs::copy(&second.key, pki.path("live-key.pem")).unwrap();
    std::fs::copy(&second.cert, pki.path("live.pem")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = served(tls_connect(addr, client.clone(), "localhost").await);
        if now == second.der {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotated certificate not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken certificate on reload is refused; the last good one stays.
    std::fs::write(pki.path("live.pem"), "not a certificate").unwrap();
    let err = proxy.reload().unwrap_err().to_string();
    assert!(err.contains("live.pem"), "{err}");
    assert_eq!(
        served(tls_connect(addr, client.clone(), "localhost").await),
        second.der
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn bad_certificate_or_key_is_a_config_error_naming_the_file() {
    let pki = TestPki::new();
    let good = pki.issue("good", &["localhost"], false);
    let other = pki.issue("other", &["localhost"], false);
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "nothing here\n").unwrap();
    let missing = pki.path("missing.pem");
    let check = |cert: &std::path::Path, key: &std::path::Path| -> String {
        let yaml = format!(
            "listen: [{{ address: 127.0.0.1:0, tls: {{ cert: {}, key: {} }} }}]\nbackends: {{ v1: {{ endpoints: [\"127.0.0.1:1\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
            yaml_path(cert),
            yaml_path(key)
        );
        shadowgate::config::from_yaml("test.yaml", &yaml)
            .unwrap_err()
            .to_string()
    };
    let e = check(&garbage, &good.key);
    assert!(
        e.contains("listen[0].tls.cert") && e.contains("garbage.pem"),
        "{e}"
    );
    let e = check(&empty, &good.key);
    assert!(
        e.contains("empty.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = check(&missing, &good.key);
    assert!(
        e.contains("missing.pem") && e.contains("cannot read"),
        "{e}"
    );
    let e = check(&good.cert, &empty);
    assert!(
        e.contains("listen[0].tls.key") && e.contains("no PEM private key"),
        "{e}"
    );
    let e = check(&good.cert, &other.key);
    assert!(e.contains("does not match"), "{e}");

    // Upstream files too.
    let yaml = format!(
        "backends: {{ v1: {{ endpoints: [\"https://127.0.0.1:1\"], ca_file: {} }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        yaml_path(&empty)
    );
    let e = shadowgate::config::from_yaml("test.yaml", &yaml)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backends.v1.ca_file") && e.contains("empty.pem"),
        "{e}"
    );
    let yaml = "backends: { v1: { endpoints: [\"127.0.0.1:1\"], protocol: h3, ca_file: x.pem } }\nroutes: [{ name: r, backend: v1 }]\n";
    let e = shadowgate::config::from_yaml("test.yaml", yaml)
        .unwrap_err()
        .to_string();
    assert!(e.contains("backends.v1.protocol"), "{e}");
    assert!(
        e.contains("backends.v1.ca_file") && e.contains("https"),
        "{e}"
    );
}

// ------------------------------------------------------------- HTTP/2 out

#[tokio::test]
async fn h2c_client_to_h2c_backend_keeps_authority() {
    let mut v1 = TestBackend::new().body("h2-ok").spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{}\"], protocol: h2 }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        v1.addr
    ))
    .await;
    let a = h2_get(proxy.listen_addrs[0], "http://app.test/x?y=1").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "h2-ok");
    let rec = v1.next().await;
    // HTTP/2 upstream: the URI carries :authority (HTTP/1.1 would be origin-form).
    assert_eq!(rec.uri.authority().map(|a| a.as_str()), Some("app.test"));
    assert_eq!(rec.uri.path_and_query().unwrap().as_str(), "/x?y=1");
    assert!(rec.header("host").is_none());

    // HTTP/1.1 clients are carried over HTTP/2 too, multiplexed on one connection.
    let c = client();
    let mut answers = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let addr = proxy.listen_addrs[0];
        answers.push(tokio::spawn(async move {
            get(&c, addr, "app.test", &format!("/n{i}")).await
        }));
    }
    for a in answers {
        assert_eq!(a.await.unwrap().status, StatusCode::OK);
    }
    for _ in 0..20 {
        let rec = v1.next().await;
        assert_eq!(rec.uri.authority().map(|a| a.as_str()), Some("app.test"));
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_tls_with_a_private_ca_and_each_protocol() {
    let pki = TestPki::new();
    let cert = pki.issue("backend", &["backend.test", "127.0.0.1"], false);
    let mut b_h2 = TlsBackend::spawn(pki.server_config(&cert, &[H2, H1], false)).await;
    let mut b_h1 = TlsBackend::spawn(pki.server_config(&cert, &[H1], false)).await;
    let ca = yaml_path(&pki.ca_path());
    let proxy = start_proxy(&format!(
        "backends:\n  by_ip: {{ endpoints: [\"https://127.0.0.1:{p2}\"], ca_file: {ca} }}\n  named_h2: {{ endpoints: [\"https://127.0.0.1:{p2}\"], ca_file: {ca}, protocol: h2, tls_server_name: backend.test }}\n  auto_h2: {{ endpoints: [\"https://127.0.0.1:{p2}\"], ca_file: {ca}, protocol: auto }}\n  auto_h1: {{ endpoints: [\"https://127.0.0.1:{p1}\"], ca_file: {ca}, protocol: auto }}\n  untrusted: {{ endpoints: [\"https://127.0.0.1:{p2}\"] }}\nroutes:\n  - {{ name: a, match: {{ path_prefix: /by_ip }}, backend: by_ip }}\n  - {{ name: b, match: {{ path_prefix: /named_h2 }}, backend: named_h2 }}\n  - {{ name: c, match: {{ path_prefix: /auto_h2 }}, backend: auto_h2 }}\n  - {{ name: d, match: {{ path_prefix: /auto_h1 }}, backend: auto_h1 }}\n  - {{ name: e, match: {{ path_prefix: /untrusted }}, backend: untrusted }}\n",
        p2 = b_h2.addr.port(),
        p1 = b_h1.addr.port(),
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();

    let a = get(&c, addr, "app.test", "/by_ip").await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "tls-ok"));
    let rec = b_h2.next().await;
    assert_eq!(rec.version, Version::HTTP_11);
    assert_eq!(rec.alpn.as_deref(), Some(H1));
    assert_eq!(rec.headers["host"], "app.test");

    let a = get(&c, addr, "app.test", "/named_h2").await;
    assert_eq!(a.status, StatusCode::OK);
    let rec = b_h2.next().await;
    assert_eq!(rec.version, Version::HTTP_2);
    assert_eq!(rec.alpn.as_deref(), Some(H2));
    assert_eq!(rec.uri.authority().map(|a| a.as_str()), Some("app.test"));
    assert_eq!(rec.uri.scheme_str(), Some("https"));

    let a = get(&c, addr, "app.test", "/auto_h2").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(b_h2.next().await.version, Version::HTTP_2);

    // auto against an HTTP/1.1-only server: the first request goes over the
    // connection that found out, later ones through the HTTP/1.1 pool.
    for _ in 0..3 {
        let a = get(&c, addr, "app.test", "/auto_h1").await;
        assert_eq!(a.status, StatusCode::OK);
        let rec = b_h1.next().await;
        assert_eq!(rec.version, Version::HTTP_11);
        assert_eq!(rec.headers["host"], "app.test");
    }

    // The system roots do not trust the test CA: 502, never a silent pass.
    let a = get(&c, addr, "app.test", "/untrusted").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_mtls() {
    let pki = TestPki::new();
    let cert = pki.issue("backend", &["127.0.0.1"], false);
    let client_cert = pki.issue("proxy-client", &["shadowgate.test"], true);
    let mut backend = TlsBackend::spawn(pki.server_config(&cert, &[H2, H1], true)).await;
    let ca = yaml_path(&pki.ca_path());
    let proxy = start_proxy(&format!(
        "backends:\n  with_cert: {{ endpoints: [\"https://127.0.0.1:{p}\"], ca_file: {ca}, client_cert: {c}, client_key: {k}, protocol: auto }}\n  without_cert: {{ endpoints: [\"https://127.0.0.1:{p}\"], ca_file: {ca}, retry: false }}\n  insecure: {{ endpoints: [\"https://127.0.0.1:{p}\"], insecure_skip_verify: true, client_cert: {c}, client_key: {k} }}\nroutes:\n  - {{ name: a, match: {{ path_prefix: /with }}, backend: with_cert }}\n  - {{ name: b, match: {{ path_prefix: /without }}, backend: without_cert }}\n  - {{ name: c, match: {{ path_prefix: /insecure }}, backend: insecure }}\n",
        p = backend.addr.port(),
        c = yaml_path(&client_cert.cert),
        k = yaml_path(&client_cert.key),
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    let a = get(&c, addr, "app.test", "/with").await;
    assert_eq!(a.status, StatusCode::OK);
    let rec = backend.next().await;
    assert!(rec.client_cert);
    assert_eq!(rec.version, Version::HTTP_2);

    let a = get(&c, addr, "app.test", "/without").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());

    let a = get(&c, addr, "app.test", "/insecure").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(backend.next().await.client_cert);
    proxy.shutdown().await;
}

// ------------------------------------------------------------------ gRPC

/// `echo.EchoRequest` of proto/echo.proto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
    #[prost(int32, tag = "3")]
    pub fail_with: i32,
}

/// `echo.EchoReply` of proto/echo.proto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub server: String,
}

/// What an Echo server saw of one call.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    authority: Option<String>,
    request_id: Option<String>,
}

/// The `echo.Echo` service, written by hand the way tonic's code
/// generator would.
#[derive(Clone)]
struct EchoServer {
    name: &'static str,
    calls: mpsc::UnboundedSender<Call>,
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "echo.Echo";
}

type ServerCodec = tonic_prost::ProstCodec<EchoReply, EchoRequest>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let _ = self.calls.send(Call {
            path: req.uri().path().to_string(),
            authority: req.uri().authority().map(|a| a.to_string()),
            request_id: req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        });
        let name = self.name;
        let mut grpc = tonic::server::Grpc::new(ServerCodec::default());
        match req.uri().path() {
            "/echo.Echo/Unary" => Box::pin(async move {
                let svc = tower::service_fn(move |r: tonic::Request<EchoRequest>| async move {
                    let r = r.into_inner();
                    if r.fail_with != 0 {
                        return Err(tonic::Status::new(
                            tonic::Code::from(r.fail_with),
                            format!("{name} refuses {}", r.message),
                        ));
                    }
                    Ok(tonic::Response::new(EchoReply {
                        message: r.message,
                        server: name.to_string(),
                    }))
                });
                Ok(grpc.unary(svc, req).await)
            }),
            "/echo.Echo/ServerStream" => Box::pin(async move {
                let svc = tower::service_fn(move |r: tonic::Request<EchoRequest>| async move {
                    let r = r.into_inner();
                    let replies: Vec<Result<EchoReply, tonic::Status>> = (0..r.count)
                        .map(|i| {
                            Ok(EchoReply {
                                message: format!("{} #{i}", r.message),
                                server: name.to_string(),
                            })
                        })
                        .collect();
                    Ok::<_, tonic::Status>(tonic::Response::new(tokio_stream::iter(replies)))
                });
                Ok(grpc.server_streaming(svc, req).await)
            }),
            "/echo.Echo/ClientStream" => Box::pin(async move {
                let svc = tower::service_fn(
                    move |r: tonic::Request<tonic::Streaming<EchoRequest>>| async move {
                        let mut stream = r.into_inner();
                        let mut all = Vec::new();
                        while let Some(m) = stream.message().await? {
                            all.push(m.message);
                        }
                        Ok::<_, tonic::Status>(tonic::Response::new(EchoReply {
                            message: all.join(","),
                            server: name.to_string(),
                        }))
                    },
                );
                Ok(grpc.client_streaming(svc, req).await)
            }),
            _ => Box::pin(
                async move { Ok(tonic::Status::unimplemented("no such method").into_http()) },
            ),
        }
    }
}

/// A running Echo server (h2c) and the calls it received.
struct EchoHandle {
    addr: SocketAddr,
    calls: mpsc::UnboundedReceiver<Call>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoHandle {
    async fn next(&mut self) -> Call {
        tokio::time::timeout(Duration::from_secs(10), self.calls.recv())
            .await
            .expect("no gRPC call within 10s")
            .unwrap()
    }
}

async fn echo_server(name: &'static str) -> EchoHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, calls) = mpsc::unbounded_channel();
    let svc = EchoServer { name, calls: tx };
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let mut svc = svc.clone();
                    tower::Service::call(&mut svc, req.map(tonic::body::Body::new))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    EchoHandle { addr, calls, task }
}

type GrpcClient = tonic::client::Grpc<tonic::transport::Channel>;

/// A tonic client whose `:authority` is `authority`, connected over h2c to `proxy`.
async fn grpc_client(proxy: SocketAddr, authority: &str) -> GrpcClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            TcpStream::connect(proxy).await.map(TokioIo::new)
        }))
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

/// A tonic client over TLS (ALPN h2) to `proxy`.
async fn grpc_tls_client(pki: &TestPki, proxy: SocketAddr, authority: &str) -> GrpcClient {
    let config = pki.client_config(&[H2]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let config = config.clone();
            async move {
                let s = tls_connect(proxy, config, "localhost").await;
                assert_eq!(s.get_ref().1.alpn_protocol(), Some(H2));
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn codec() -> tonic_prost::ProstCodec<EchoRequest, EchoReply> {
    tonic_prost::ProstCodec::default()
}

async fn unary(
    client: &mut GrpcClient,
    message: &str,
    fail_with: i32,
) -> Result<EchoReply, tonic::Status> {
    client.ready().await.unwrap();
    let req = tonic::Request::new(EchoRequest {
        message: message.into(),
        count: 0,
        fail_with,
    });
    client
        .unary(
            req,
            http::uri::PathAndQuery::from_static("/echo.Echo/Unary"),
            codec(),
        )
        .await
        .map(|r| r.into_inner())
}

async fn client_stream(
    client: &mut GrpcClient,
    messages: Vec<String>,
) -> Result<EchoReply, tonic::Status> {
    client.ready().await.unwrap();
    let stream = tokio_stream::iter(messages.into_iter().map(|m| EchoRequest {
        message: m,
        count: 0,
        fail_with: 0,
    }));
    client
        .client_streaming(
            tonic::Request::new(stream),
            http::uri::PathAndQuery::from_static("/echo.Echo/ClientStream"),
            codec(),
        )
        .await
        .map(|r| r.into_inner())
}

fn grpc_config(v1: SocketAddr, v2: SocketAddr, max_body: &str) -> String {
    format!(
        "backends:\n  v1: {{ endpoints: [\"{v1}\"], protocol: h2 }}\n  v2: {{ endpoints: [\"{v2}\"], protocol: h2 }}\nroutes:\n  - {{ name: grpc, backend: v1, mirrors: [{{ backend: v2, max_body_bytes: {max_body} }}] }}\n"
    )
}

#[tokio::test]
async fn grpc_passes_through_with_trailers_and_is_mirrored() {
    let mut v1 = echo_server("v1").await;
    let mut v2 = echo_server("v2").await;
    let proxy = start_proxy(&grpc_config(v1.addr, v2.addr, "1MiB")).await;
    let mut client = grpc_client(proxy.listen_addrs[0], "grpc.test").await;

    // Unary: the answer is v1's; v2 gets the copy with the suffixed authority.
    let reply = unary(&mut client, "hello", 0).await.unwrap();
    assert_eq!(
        (reply.message.as_str(), reply.server.as_str()),
        ("hello", "v1")
    );
    let primary = v1.next().await;
    assert_eq!(primary.path, "/echo.Echo/Unary");
    assert_eq!(primary.authority.as_deref(), Some("grpc.test"));
    let copy = v2.next().await;
    assert_eq!(copy.path, "/echo.Echo/Unary");
    assert_eq!(copy.authority.as_deref(), Some("grpc.test-shadow"));
    assert_eq!(copy.request_id, primary.request_id);

    // A non-OK status crosses the proxy in the trailers, code and message intact.
    let status = unary(&mut client, "this", 5).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "v1 refuses this");
    let _ = (v1.next().await, v2.next().await);

    // Server streaming: every message, then the status.
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            tonic::Request::new(EchoRequest {
                message: "tick".into(),
                count: 5,
                fail_with: 0,
            }),
            http::uri::PathAndQuery::from_static("/echo.Echo/ServerStream"),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.message);
    }
    assert_eq!(
        got,
        (0..5).map(|i| format!("tick #{i}")).collect::<Vec<_>>()
    );
    assert_eq!(v1.next().await.path, "/echo.Echo/ServerStream");
    assert_eq!(v2.next().await.path, "/echo.Echo/ServerStream");

    // Client streaming: the whole stream fits the mirror's cap, so v2 gets it too.
    let reply = client_stream(&mut client, vec!["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    assert_eq!(reply.message, "a,b,c");
    assert_eq!(v1.next().await.path, "/echo.Echo/ClientStream");
    let copy = v2.next().await;
    assert_eq!(copy.path, "/echo.Echo/ClientStream");
    assert_eq!(copy.authority.as_deref(), Some("grpc.test-shadow"));

    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "shadowgate_grpc_errors_total{route=\"grpc\",backend=\"v1\",role=\"primary\",grpc_status=\"5\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "shadowgate_mirror_errors_total{route=\"grpc\",backend=\"v2\",kind=\"grpc_status\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "shadowgate_requests_total{route=\"grpc\",backend=\"v2\",role=\"mirror\",code=\"200\"}"
        ),
        4.0,
        "{m}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn grpc_client_stream_larger_than_the_mirror_cap_is_not_mirrored() {
    let mut v1 = echo_server("v1").await;
    let v2 = echo_server("v2").await;
    let proxy = start_proxy(&grpc_config(v1.addr, v2.addr, "64")).await;
    let mut client = grpc_client(proxy.listen_addrs[0], "grpc.test").await;
    let messages: Vec<String> = (0..10)
        .map(|i| format!("message-{i:02}-xxxxxxxx"))
        .collect();
    let reply = client_stream(&mut client, messages.clone()).await.unwrap();
    assert_eq!(reply.message, messages.join(","));
    assert_eq!(v1.next().await.path, "/echo.Echo/ClientStream");
    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "shadowgate_mirror_dropped_total{route=\"grpc\",backend=\"v2\",reason=\"body_too_large\"}"
        ),
        1.0,
        "{m}"
    );
    drop(v2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn grpc_through_a_tls_listener() {
    let pki = TestPki::new();
    let mut v1 = echo_server("v1").await;
    let v2 = echo_server("v2").await;
    let proxy = start_tls_proxy(&pki, &grpc_config(v1.addr, v2.addr, "1MiB")).await;
    let mut client = grpc_tls_client(&pki, proxy.listen_addrs[0], "grpc.test").await;
    let reply = unary(&mut client, "secure", 0).await.unwrap();
    assert_eq!(reply.server, "v1");
    assert_eq!(v1.next().await.authority.as_deref(), Some("grpc.test"));
    let status = unary(&mut client, "x", 7).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "v1 refuses x");
    proxy.shutdown().await;
}

// -------------------------------------------------------------- upgrades

/// A backend that accepts `Upgrade: websocket` and then echoes bytes; over
/// TLS when given a server configuration.
async fn upgrade_echo_backend(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = upgrade.await {
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    let resp = Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let http1 = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http1
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    }
                    Some(config) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                        else {
                            return;
                        };
                        let _ = http1
                            .serve_connection(TokioIo::new(s), service)
                            .with_upgrades()
                            .await;
                    }
                }
            });
        }
    });
    addr
}

/// Upgrades `conn` (a connection to the proxy) and checks bytes echo back.
async fn upgrade_and_echo<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::builder()
        .uri("/ws")
        .header("host", "app.test")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    for msg in [&b"hello"[..], b"over tls", b"bye"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test]
async fn websocket_style_upgrade_through_a_tls_listener() {
    let pki = TestPki::new();
    let backend = upgrade_echo_backend(None).await;
    let proxy = start_tls_proxy(
        &pki,
        &format!(
            "backends: {{ v1: {{ endpoints: [\"{backend}\"] }} }}\nroutes: [{{ name: r, backend: v1 }}]\n"
        ),
    )
    .await;
    let tls = tls_connect(proxy.listen_addrs[0], pki.client_config(&[H1]), "localhost").await;
    upgrade_and_echo(tls).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn upgrade_to_an_https_backend() {
    let pki = TestPki::new();
    let cert = pki.issue("backend", &["127.0.0.1"], false);
    let backend = upgrade_echo_backend(Some(pki.server_config(&cert, &[H1], false))).await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"https://{backend}\"], ca_file: {} }} }}\nroutes: [{{ name: r, backend: v1 }}]\n",
        yaml_path(&pki.ca_path())
    ))
    .await;
    let plain = TcpStream::connect(proxy.listen_addrs[0]).await.unwrap();
    upgrade_and_echo(plain).await;
    proxy.shutdown().await;
}
