//! Test kit for end-to-end tests: builder-style backends on 127.0.0.1:0
//! that record what they receive, a proxy started in-process, and a client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        }
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
        let this = Arc::new(self);
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if this.blackhole {
                    held.push(stream);
                    continue;
                }
                let (this, tx, counter) = (this.clone(), tx.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (this, tx, counter) = (this.clone(), tx.clone(), counter.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            };
                            let host = rec.header("host").unwrap_or("").to_string();
                            counter.fetch_add(1, Ordering::SeqCst);
                            let _ = tx.send(rec);
                            if !this.delay.is_zero() {
                                tokio::time::sleep(this.delay).await;
                            }
                            let body = if this.echo_host {
                                Bytes::from(host)
                            } else {
                                this.body.clone()
                            };
                            let mut resp = Response::new(Full::new(body));
                            *resp.status_mut() = StatusCode::from_u16(this.status).unwrap();
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
            task,
        }
    }
}

/// A running test backend.
pub struct BackendHandle {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Recorded>,
    count: Arc<AtomicUsize>,
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
}

/// An address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Starts the proxy with `body` (backends and routes) plus test defaults.
pub async fn start_proxy(body: &str) -> Running {
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

/// The admin server's metrics text.
pub async fn metrics(running: &Running) -> String {
    let a = get(&client(), running.admin_addr, "admin", "/metrics").await;
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
