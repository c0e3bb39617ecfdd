//! Test kit for end-to-end tests: builder-style backends on 127.0.0.1:0
//! that record what they receive, a proxy started in-process, and a client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use shadowgate::app::{self, Running, StartOptions};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A request as a backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request's trailer fields, when its body ended with some.
    pub trailers: Option<HeaderMap>,
    /// Whether the body was read to its end (false: the connection closed
    /// or failed mid-body, `body` is then empty).
    pub complete: bool,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a test backend behaves.
#[derive(Debug, Clone)]
pub struct TestBackend {
    status: u16,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    delay: Duration,
    blackhole: bool,
    echo_host: bool,
    random_token: bool,
    /// The first `.0` requests are answered with status `.1`.
    fail_first: (usize, u16),
}

impl Default for TestBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBackend {
    pub fn new() -> Self {
        TestBackend {
            status: 200,
            body: Bytes::from_static(b"ok"),
            headers: Vec::new(),
            delay: Duration::ZERO,
            blackhole: false,
            echo_host: false,
            random_token: false,
            fail_first: (0, 200),
        }
    }
    /// Answer the first `n` requests with `status`, the later ones as usual.
    pub fn fail_first(mut self, n: usize, status: u16) -> Self {
        self.fail_first = (n, status);
        self
    }
    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }
    pub fn body(mut self, b: impl Into<Bytes>) -> Self {
        self.body = b.into();
        self
    }
    pub fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers
            .push((HeaderName::from_static(k), HeaderValue::from_static(v)));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Accept connections, read nothing, never answer.
    pub fn blackhole(mut self) -> Self {
        self.blackhole = true;
        self
    }
    /// Replace `{rand}` in the body with a fresh random number per request.
    pub fn random_token(mut self) -> Self {
        self.random_token = true;
        self
    }
    /// Answer with the Host header the request carried.
    pub fn echo_host(mut self) -> Self {
        self.echo_host = true;
        self
    }

    pub async fn spawn(self) -> BackendHandle {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(self.status));
        let status_now = status.clone();
        let this = Arc::new(self);
        let counter = count.clone();
        let complete = Arc::new(AtomicUsize::new(0));
        let completed = complete.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                if this.blackhole {
                    held.push(stream);
                    continue;
                }
                let (this, tx, counter, status_now, completed) = (
                    this.clone(),
                    tx.clone(),
                    counter.clone(),
                    status_now.clone(),
                    completed.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (this, tx, counter, status_now, completed) = (
                            this.clone(),
                            tx.clone(),
                            counter.clone(),
                            status_now.clone(),
                            completed.clone(),
                        );
                        async move {
                            let (parts, body) = req.into_parts();
                            let (body, trailers, complete) = match body.collect().await {
                                Ok(c) => {
                                    let trailers = c.trailers().cloned();
                                    completed.fetch_add(1, Ordering::SeqCst);
                                    (c.to_bytes(), trailers, true)
                                }
                                Err(_) => (Bytes::new(), None, false),
                            };
                            let rec = Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                                trailers,
                                complete,
                            };
                            let host = rec.header("host").unwrap_or("").to_string();
                            let nth = counter.fetch_add(1, Ordering::SeqCst);
                            let _ = tx.send(rec);
                            if !this.delay.is_zero() {
                                tokio::time::sleep(this.delay).await;
                            }
                            let body = if this.echo_host {
                                Bytes::from(host)
                            } else if this.random_token {
                                let text = String::from_utf8_lossy(&this.body)
                                    .replace("{rand}", &fastrand::u64(..).to_string());
                                Bytes::from(text)
                            } else {
                                this.body.clone()
                            };
                            let mut resp = Response::new(Full::new(body));
                            let status = if nth < this.fail_first.0 {
                                this.fail_first.1
                            } else {
                                status_now.load(Ordering::SeqCst)
                            };
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            for (k, v) in &this.headers {
                                resp.headers_mut().append(k.clone(), v.clone());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        BackendHandle {
            addr,
            rx,
            count,
            complete,
            connections,
            task,
            status,
        }
    }
}

/// A running test backend.
pub struct BackendHandle {
    pub addr: SocketAddr,
    /// The status answered now; change it to make the backend turn bad.
    pub status: Arc<AtomicU16>,
    rx: mpsc::UnboundedReceiver<Recorded>,
    count: Arc<AtomicUsize>,
    complete: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BackendHandle {
    /// The next request received (waits up to 10 s).
    pub async fn next(&mut self) -> Recorded {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("backend received nothing within 10s")
            .expect("backend channel closed")
    }
    /// A request already received, if any.
    pub fn try_next(&mut self) -> Option<Recorded> {
        self.rx.try_recv().ok()
    }
    pub fn received(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    /// Requests received whose body was read to its end (a copy abandoned
    /// mid-body is received, never completed).
    pub fn completed(&self) -> usize {
        self.complete.load(Ordering::SeqCst)
    }
}

/// An address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Starts the proxy with `body` (backends and routes) plus test defaults.
pub async fn start_proxy(body: &str) -> Running {
    // The binary sizes its descriptor table before it starts (see
    // `shadowgate::process`); the in-process proxy gets the same set-up.
    static FDS: std::sync::Once = std::sync::Once::new();
    FDS.call_once(|| {
        shadowgate::process::prepare_file_descriptors(shadowgate::process::FD_TABLE_SLOTS);
    });
    let yaml =
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\n{body}");
    let config =
        shadowgate::config::from_yaml("test.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    app::start(config, StartOptions::default()).await.unwrap()
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A buffered response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends a request through `client` to `addr` with the given Host.
pub async fn send(
    client: &TestClient,
    addr: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("proxy did not answer within 20s")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(client: &TestClient, addr: SocketAddr, host: &str, path: &str) -> Answer {
    send(client, addr, Method::GET, host, path, &[], Bytes::new()).await
}

/// A GET to the admin API of an in-process proxy, as `localhost`.
pub async fn api_get(proxy: &Running, path: &str) -> Answer {
    get(&client(), proxy.admin_addr, "localhost", path).await
}

/// A call to the admin API of an in-process proxy with a JSON body, as
/// `localhost` (state-changing calls need the JSON content type).
pub async fn api_call(proxy: &Running, method: Method, path: &str, body: &str) -> Answer {
    send(
        &client(),
        proxy.admin_addr,
        method,
        "localhost",
        path,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
}

/// Waits until the route's comparisons (shadow side) reach `n`, at most
/// 20 s, and returns the route's diff report.
pub async fn compared(proxy: &Running, route: &str, n: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = api_get(proxy, &format!("/api/v1/diffs/{route}"))
            .await
            .json();
        let total: u64 = report["endpoints"]
            .as_array()
            .map(|e| e.iter().map(|x| x["compared"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if total >= n {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {total} of {n} compared: {report}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One field of a diff report's endpoint, by its path.
pub fn field<'a>(endpoint: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    endpoint["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["path"] == path))
        .unwrap_or_else(|| panic!("no field {path} in {endpoint}"))
}

/// The admin server's metrics text.
pub async fn metrics(running: &Running) -> String {
    let a = get(&client(), running.admin_addr, "localhost", "/metrics").await;
    a.text()
}

/// The value of one sample line in the metrics text, or 0.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Waits until every admitted mirror copy of every route is finished
/// (its in-flight permit returned), at most 20 s.
pub async fn mirrors_settled(running: &Running) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rt = running.shared.runtime.load();
        let busy = rt
            .routes
            .iter()
            .flat_map(|r| r.mirrors.iter())
            .any(|m| m.in_flight.available_permits() != m.config.max_in_flight);
        if !busy {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mirrors still in flight after 20s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Percentile (0–100) of durations in milliseconds.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let idx = ((p / 100.0) * (samples.len() as f64 - 1.0)).round() as usize;
    samples[idx]
}

/// Sends one HTTP/2 (prior knowledge) request to `addr` for `uri`, whose
/// authority becomes `:authority`.
pub async fn h2_get(addr: SocketAddr, uri: &str) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

// ---- TLS: a test CA, certificates on disk, TLS clients and backends ----

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate authority made for one test, writing PEM files to a
/// temporary directory.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_cert: rcgen::Certificate,
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
}

/// A certificate and key written to disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestPki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "shadowgate test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let pki = TestPki {
            dir: tempfile::tempdir().unwrap(),
            ca_cert,
            ca_params: params,
            ca_key,
        };
        std::fs::write(pki.ca_path(), pki.ca_cert.pem()).unwrap();
        pki
    }

    /// The CA certificate's PEM file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by the
    /// CA, written as `<stem>.pem` and `<stem>-key.pem`.
    pub fn issue(&self, stem: &str, names: &[&str], client: bool) -> CertFiles {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or(stem),
        );
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let files = CertFiles {
            cert: self.path(&format!("{stem}.pem")),
            key: self.path(&format!("{stem}-key.pem")),
            der: cert.der().clone(),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_cert.der().clone()).unwrap();
        Arc::new(roots)
    }

    /// A client configuration trusting this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(self.roots())
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }

    /// A server configuration for `files`, offering `alpn`; with
    /// `require_client_cert`, clients must present a certificate of this CA.
    pub fn server_config(
        &self,
        files: &CertFiles,
        alpn: &[&[u8]],
        require_client_cert: bool,
    ) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = vec![files.der.clone()];
        let key = read_key(&files.key);
        let mut c = builder.with_single_cert(chain, key).unwrap();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn read_key(path: &Path) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).unwrap()
}

/// Opens a TLS connection to `addr` asking for `server_name`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake took more than 10s")
    .expect("TLS handshake failed")
}

/// One GET over an established connection (HTTP/2 when ALPN said `h2`).
pub async fn get_over<S>(stream: S, host: &str, path: &str) -> Answer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    get_over_as(stream, false, host, path).await
}

/// One GET over an established connection, HTTP/2 when `h2`.
pub async fn get_over_as<S>(stream: S, h2: bool, host: &str, path: &str) -> Answer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// What a TLS test backend saw of one request.
#[derive(Debug, Clone)]
pub struct TlsRecorded {
    pub version: http::Version,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// ALPN the handshake settled on.
    pub alpn: Option<Vec<u8>>,
    /// Whether the client presented a certificate.
    pub client_cert: bool,
}

/// A TLS backend answering 200 `tls-ok` to everything, recording requests.
pub struct TlsBackend {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<TlsRecorded>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    pub async fn spawn(config: Arc<rustls::ServerConfig>) -> TlsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let (alpn, client_cert) = {
                        let c = tls.get_ref().1;
                        (
                            c.alpn_protocol().map(|p| p.to_vec()),
                            c.peer_certificates().is_some_and(|p| !p.is_empty()),
                        )
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let rec = TlsRecorded {
                            version: req.version(),
                            uri: req.uri().clone(),
                            headers: req.headers().clone(),
                            alpn: alpn.clone(),
                            client_cert,
                        };
                        let _ = tx.send(rec);
                        async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"tls-ok",
                            ))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsBackend { addr, rx, task }
    }

    /// The next request received (waits up to 10 s).
    pub async fn next(&mut self) -> TlsRecorded {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("TLS backend received nothing within 10s")
            .expect("TLS backend channel closed")
    }
}

// ---- Mirror isolation: the primary's latency with and without a shadow ----

/// A config with primary `v1` on route `r` and one mirror per entry, on
/// backends `m0`, `m1`, …; each entry's text is appended inside the
/// mirror's braces (e.g. `", timeout: 1s"`).
pub fn shadow_config(v1: SocketAddr, mirrors: &[(SocketAddr, &str)]) -> String {
    let mut backends = format!("backends:\n  v1: {{ endpoints: [\"{v1}\"] }}\n");
    let mut ms = String::new();
    for (i, (addr, extra)) in mirrors.iter().enumerate() {
        backends.push_str(&format!(
            "  m{i}: {{ endpoints: [\"{addr}\"], connect_timeout: 200ms }}\n"
        ));
        ms.push_str(&format!("      - {{ backend: m{i}{extra} }}\n"));
    }
    if ms.is_empty() {
        format!("{backends}routes:\n  - name: r\n    backend: v1\n")
    } else {
        format!("{backends}routes:\n  - name: r\n    backend: v1\n    mirrors:\n{ms}")
    }
}

/// Sends `n` GETs for `app/x` with `concurrency` workers, each asserting a
/// 200; returns each latency in ms.
pub async fn load(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    headers: fn(usize) -> Vec<(String, String)>,
) -> Vec<f64> {
    let per = n / concurrency;
    let tasks = (0..concurrency).map(|w| {
        tokio::spawn(async move {
            let c = client();
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let hs = headers(w * per + i);
                let hs: Vec<(&str, &str)> =
                    hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let t = tokio::time::Instant::now();
                let a = send(&c, addr, Method::GET, "app", "/x", &hs, Bytes::new()).await;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(a.status, 200, "client saw {} : {}", a.status, a.text());
            }
            lat
        })
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect()
}

pub fn no_headers(_: usize) -> Vec<(String, String)> {
    Vec::new()
}

/// The primary's p99 without a mirror and with `shadow` as mirror (with
/// `shadow_cfg` appended to its settings), and the metrics of the second
/// proxy once every copy has settled.
#[derive(Debug)]
pub struct Isolation {
    pub without_p99: f64,
    pub with_p99: f64,
    pub requests: usize,
    pub metrics: String,
}

impl Isolation {
    /// The isolation bound: p99 with the shadow within 2× + 5 ms of without.
    pub fn assert_isolated(&self, what: &str) {
        assert!(
            self.with_p99 <= 2.0 * self.without_p99 + 5.0,
            "p99 {:.2}ms with {what} vs {:.2}ms without",
            self.with_p99,
            self.without_p99
        );
    }
}

/// Measures the primary's p99 over 1000 requests (4 workers) without and
/// with `shadow` as route `r`'s mirror `m0`. Both proxies run at once and
/// the load alternates between them in rounds of 100 requests, so a burst of
/// foreign load on the shared machine weighs on both sides alike.
pub async fn isolation(shadow_cfg: &str, shadow: SocketAddr) -> Isolation {
    let requests = 1000;
    let rounds = 10;
    let v1 = TestBackend::new().spawn().await;
    let base = start_proxy(&shadow_config(v1.addr, &[])).await;
    let with_proxy = start_proxy(&shadow_config(v1.addr, &[(shadow, shadow_cfg)])).await;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        without.extend(load(base.listen_addrs[0], requests / rounds, 4, no_headers).await);
        with.extend(load(with_proxy.listen_addrs[0], requests / rounds, 4, no_headers).await);
    }
    base.shutdown().await;
    mirrors_settled(&with_proxy).await;
    let metrics = metrics(&with_proxy).await;
    with_proxy.shutdown().await;
    Isolation {
        without_p99: percentile(&mut without, 99.0),
        with_p99: percentile(&mut with, 99.0),
        requests,
        metrics,
    }
}

/// p99 of the primary with `shadow` configured as mirror vs. without mirror.
pub async fn primary_p99_with(shadow_cfg: &str, shadow: SocketAddr) -> (f64, f64) {
    let i = isolation(shadow_cfg, shadow).await;
    (i.without_p99, i.with_p99)
}

// ---- Misbehaving backends over raw TCP ----

/// How a `FaultyBackend` answers each request it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A head promising 1000 bytes and 100 of them, a short pause, then a
    /// TCP reset (SO_LINGER 0 and close).
    ResetMidBody,
    /// A TCP reset right after the request is read: nothing is answered.
    ResetBeforeAnswer,
    /// A status line that is not HTTP.
    GarbageStatus,
    /// A valid answer, one byte a second (its head alone takes ~40 s).
    Trickle,
    /// A complete head promising 100 bytes, then a clean close (FIN).
    CloseAfterHeaders,
}

/// A raw-TCP backend that reads each request head (and a declared body)
/// and then misbehaves as told. Every connection ends after one request.
pub struct FaultyBackend {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyBackend {
    pub async fn spawn(fault: Fault) -> FaultyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                // Connection tasks end with the backend (the set aborts them).
                conns.spawn(misbehave(stream, fault, counter));
                while conns.try_join_next().is_some() {}
            }
        });
        FaultyBackend {
            addr,
            requests,
            task,
        }
    }

    /// Request heads read so far.
    pub fn received(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request (head, and a body declared by Content-Length); false
/// when the peer went away first.
async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return false;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => have += n,
        }
    }
    true
}

async fn misbehave(mut stream: tokio::net::TcpStream, fault: Fault, requests: Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    if !read_request(&mut stream).await {
        return;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::ResetMidBody => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'x'; 100]).await;
            let _ = stream.flush().await;
            // Let the head and the first bytes be read before the reset.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Fault::ResetBeforeAnswer => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Fault::GarbageStatus => {
            let _ = stream
                .write_all(b"HELLO THERE \x01\x02 not http\r\n\r\n")
                .await;
            let _ = stream.shutdown().await;
        }
        Fault::Trickle => {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            for b in answer {
                if stream.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Fault::CloseAfterHeaders => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                .await;
            let _ = stream.shutdown().await;
        }
    }
}

/// How a bounded request failed.
#[derive(Debug)]
pub enum Failure {
    /// No response head (connect, reset, closed).
    Request(hyper_util::client::legacy::Error),
    /// The head arrived but the body was cut.
    Body { status: StatusCode, error: String },
    /// Nothing within the bound.
    TimedOut,
}

/// A GET bounded by `within`, reporting how it failed instead of panicking.
pub async fn try_get(
    client: &TestClient,
    addr: SocketAddr,
    host: &str,
    path: &str,
    within: Duration,
) -> Result<Answer, Failure> {
    let req = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let exchange = async {
        let resp = client.request(req).await.map_err(Failure::Request)?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Failure::Body {
                status: parts.status,
                error: e.to_string(),
            })?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or(Err(Failure::TimedOut))
}

/// Reads a `shadowgate run` child's stderr up to the "serving" log line and
/// returns the addresses it names: (listen, admin).
pub fn serving_addrs(stderr: &mut impl std::io::BufRead) -> (SocketAddr, SocketAddr) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the proxy ended before serving"
        );
        if line.contains("shadowgate is serving") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let listen = v["listen"].as_str().unwrap();
            let listen = listen.trim_matches(|c| c == '[' || c == ']');
            return (
                listen.parse().unwrap(),
                v["admin"].as_str().unwrap().parse().unwrap(),
            );
        }
    }
}

/// A child process that is killed and reaped when dropped, so a test that
/// fails halfway leaves no process behind (the binary's `demo`, say).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most 20 s) until the shadow memory in use is back to 0, in
/// the budget and in its gauge.
pub async fn memory_returns_to_zero(proxy: &Running) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics(proxy).await;
        let used = metric(&m, "shadowgate_shadow_memory_bytes");
        if used == 0.0 && proxy.shared.runtime.load().memory.in_use() == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{used} bytes of shadow memory still in use after 20s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
