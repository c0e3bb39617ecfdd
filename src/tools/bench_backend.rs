//! A small, fast HTTP server used as v1/v2 in benchmarks (`shadowgate bench-backend`).
//!
//! It speaks HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on one port,
//! reads every request body to the end, optionally waits, and answers with a
//! fixed body. A second, optional listener reports what arrived
//! (`GET /stats`) and zeroes it (`POST /reset`), so a benchmark can check
//! that mirrors reached the shadow and with which Host.
//!
//! `--mode blackhole` accepts connections and never answers: it reads and
//! discards whatever comes in and holds the connection until the peer
//! closes it.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::RwLock;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Most distinct Host values counted one by one; further hosts are counted
/// together under `(other)`.
pub const MAX_HOSTS: usize = 64;

/// Longest Host value kept; longer ones are cut.
const MAX_HOST_LEN: usize = 200;

/// What the backend does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Answer every request.
    Normal,
    /// Accept connections, read and discard what arrives, never answer.
    Blackhole,
}

/// Options of `shadowgate bench-backend`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchBackendArgs {
    /// Address to listen on (HTTP/1.1 and h2c with prior knowledge).
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub listen: String,
    /// Time to wait before answering each request, after its body was read
    /// (`0ms`, `200ms`, `1s`).
    #[arg(long, default_value = "0ms", value_parser = shadowgate::config::units::parse_duration)]
    pub delay: Duration,
    /// Size of every response body in bytes.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Answer a JSON document of about `--body-bytes` (content-type
    /// `application/json`) instead of plain bytes, for comparison benchmarks.
    #[arg(long)]
    pub json: bool,
    /// `normal` answers; `blackhole` accepts connections and never answers.
    #[arg(long, value_enum, default_value_t = Mode::Normal)]
    pub mode: Mode,
    /// Address of a second listener answering `GET /stats` (JSON counters)
    /// and `POST /reset`.
    #[arg(long)]
    pub stats: Option<String>,
}

/// How the backend answers; the part of the options that is not an address.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Wait before each answer.
    pub delay: Duration,
    /// Response body size.
    pub body_bytes: usize,
    /// Answer, or hold connections silently.
    pub mode: Mode,
    /// JSON bodies instead of plain bytes.
    pub json: bool,
}

/// Counters of what arrived, shared by every connection.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    request_body_bytes: AtomicU64,
    connections: AtomicU64,
    hosts: RwLock<HashMap<Box<str>, AtomicU64>>,
    hosts_other: AtomicU64,
}

impl Stats {
    fn count_host(&self, host: &str) {
        let host = cut(host, MAX_HOST_LEN);
        {
            let map = self.hosts.read();
            if let Some(n) = map.get(host) {
                n.fetch_add(1, Relaxed);
                return;
            }
        }
        let mut map = self.hosts.write();
        if let Some(n) = map.get(host) {
            n.fetch_add(1, Relaxed);
        } else if map.len() < MAX_HOSTS {
            map.insert(host.into(), AtomicU64::new(1));
        } else {
            self.hosts_other.fetch_add(1, Relaxed);
        }
    }

    fn reset(&self) {
        self.hosts.write().clear();
        self.requests.store(0, Relaxed);
        self.request_body_bytes.store(0, Relaxed);
        self.connections.store(0, Relaxed);
        self.hosts_other.store(0, Relaxed);
    }

    /// The counters as the JSON document `GET /stats` answers.
    pub fn to_json(&self) -> serde_json::Value {
        let mut hosts: BTreeMap<String, u64> = self
            .hosts
            .read()
            .iter()
            .map(|(k, v)| (k.to_string(), v.load(Relaxed)))
            .collect();
        let other = self.hosts_other.load(Relaxed);
        if other > 0 {
            hosts.insert("(other)".to_string(), other);
        }
        serde_json::json!({
            "requests": self.requests.load(Relaxed),
            "request_body_bytes": self.request_body_bytes.load(Relaxed),
            "connections": self.connections.load(Relaxed),
            "hosts": hosts,
        })
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct BackendState {
    stats: Arc<Stats>,
    body: Bytes,
    content_type: http::HeaderValue,
    delay: Duration,
}

/// Runs the bench backend until the process ends.
pub async fn run(args: BenchBackendArgs) -> io::Result<()> {
    let listener = bind(&args.listen).await?;
    let stats_listener = match &args.stats {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    eprintln!(
        "bench-backend: {:?} on {}{}, delay {:?}, body {} bytes",
        args.mode,
        listener.local_addr()?,
        match &stats_listener {
            Some(l) => format!(", stats on {}", l.local_addr()?),
            None => String::new(),
        },
        args.delay,
        args.body_bytes,
    );
    let opts = BackendOptions {
        delay: args.delay,
        body_bytes: args.body_bytes,
        json: args.json,
        mode: args.mode,
    };
    serve(listener, stats_listener, opts).await
}

async fn bind(addr: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serves on already bound listeners until the process ends (or an
/// unrecoverable accept error). The stats listener, if any, runs as a task.
pub async fn serve(
    listener: TcpListener,
    stats_listener: Option<TcpListener>,
    opts: BackendOptions,
) -> io::Result<()> {
    let stats = Arc::new(Stats::default());
    if let Some(sl) = stats_listener {
        tokio::spawn(serve_stats(sl, stats.clone()));
    }
    let shared = Arc::new(BackendState {
        stats,
        body: if opts.json {
            json_body(opts.body_bytes)
        } else {
            Bytes::from(vec![b'x'; opts.body_bytes])
        },
        content_type: http::HeaderValue::from_static(if opts.json {
            "application/json"
        } else {
            "text/plain"
        }),
        delay: opts.delay,
    });
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = match accept(&listener).await {
            Some(s) => s,
            None => continue,
        };
        shared.stats.connections.fetch_add(1, Relaxed);
        match opts.mode {
            Mode::Blackhole => {
                tokio::spawn(swallow(stream));
            }
            Mode::Normal => {
                let shared = shared.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, shared.clone()));
                    // Errors here are clients going away; nothing to report.
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }
    }
}

/// Accepts one connection; on a transient error (e.g. out of descriptors)
/// waits a moment and returns `None` so the loop goes on.
async fn accept(listener: &TcpListener) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((stream, _)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Err(e) => {
            eprintln!("bench-backend: accept: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            None
        }
    }
}

/// Black hole: read and discard until the peer closes; never write.
async fn swallow(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<BackendState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let stats = &shared.stats;
    stats.requests.fetch_add(1, Relaxed);
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    stats.count_host(host);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    stats
                        .request_body_bytes
                        .fetch_add(data.len() as u64, Relaxed);
                }
            }
            Err(_) => break,
        }
    }
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    let mut resp = Response::new(Full::new(shared.body.clone()));
    resp.headers_mut()
        .insert(CONTENT_TYPE, shared.content_type.clone());
    Ok(resp)
}

/// A JSON document of at least `n` bytes: a list of small items.
fn json_body(n: usize) -> Bytes {
    let mut out = String::from("{\"items\":[");
    let mut i = 0;
    while out.len() + 2 < n || i == 0 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item-{i}\",\"price\":{}.5,\"tags\":[\"a\",\"b\"]}}",
            10 + i % 7
        ));
        i += 1;
    }
    out.push_str("]}");
    Bytes::from(out)
}

async fn serve_stats(listener: TcpListener, stats: Arc<Stats>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = match accept(&listener).await {
            Some(s) => s,
            None => continue,
        };
        let stats = stats.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| stats_handle(req, stats.clone()));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn stats_handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => (StatusCode::OK, stats.to_json().to_string()),
        (&Method::POST, "/reset") => {
            stats.reset();
            (StatusCode::OK, "{\"reset\":true}".to_string())
        }
        _ => (
            StatusCode::NOT_FOUND,
            "{\"error\":\"GET /stats or POST /reset\"}".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod json_tests {
    #[test]
    fn json_bodies_parse_and_have_the_asked_size() {
        for n in [10, 1000, 4096] {
            let b = super::json_body(n);
            assert!(b.len() >= n && b.len() < n + 80, "{n}: {}", b.len());
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert!(!v["items"].as_array().unwrap().is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;
    use std::net::SocketAddr;

    async fn start(mode: Mode, delay: Duration) -> (SocketAddr, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (la, sa) = (l.local_addr().unwrap(), s.local_addr().unwrap());
        let opts = BackendOptions {
            delay,
            body_bytes: 10,
            mode,
            json: false,
        };
        tokio::spawn(serve(l, Some(s), opts));
        (la, sa)
    }

    fn client(h2: bool) -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build_http()
    }

    async fn send(
        c: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> (StatusCode, Bytes) {
        let resp = c.request(req).await.unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    async fn stats(sa: SocketAddr) -> serde_json::Value {
        let c = client(false);
        let req = Request::get(format!("http://{sa}/stats"))
            .body(Full::default())
            .unwrap();
        let (status, body) = send(&c, req).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn answers_http1_and_h2c_and_counts() {
        let (la, sa) = start(Mode::Normal, Duration::ZERO).await;
        let c1 = client(false);
        for _ in 0..3 {
            let req = Request::post(format!("http://{la}/x"))
                .header(HOST, "app-shadow")
                .body(Full::new(Bytes::from(vec![1u8; 1000])))
                .unwrap();
            let (status, body) = send(&c1, req).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body.len(), 10);
        }
        let c2 = client(true);
        let req = Request::get(format!("http://{la}/h2"))
            .body(Full::default())
            .unwrap();
        let (status, body) = send(&c2, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 10);

        let s = stats(sa).await;
        assert_eq!(s["requests"], 4);
        assert_eq!(s["request_body_bytes"], 3000);
        assert_eq!(s["hosts"]["app-shadow"], 3);
        assert_eq!(s["hosts"][la.to_string()], 1);

        let c = client(false);
        let req = Request::post(format!("http://{sa}/reset"))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&c, req).await.0, StatusCode::OK);
        let s = stats(sa).await;
        assert_eq!(s["requests"], 0);
        assert_eq!(s["hosts"].as_object().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn delay_is_applied() {
        let (la, _) = start(Mode::Normal, Duration::from_millis(150)).await;
        let t = tokio::time::Instant::now();
        let req = Request::get(format!("http://{la}/"))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(&client(false), req).await.0, StatusCode::OK);
        assert!(t.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn blackhole_never_answers() {
        let (la, sa) = start(Mode::Blackhole, Duration::ZERO).await;
        let req = Request::get(format!("http://{la}/"))
            .body(Full::default())
            .unwrap();
        let c = client(false);
        let r = tokio::time::timeout(Duration::from_millis(300), c.request(req)).await;
        assert!(r.is_err(), "black hole answered");
        let s = stats(sa).await;
        assert_eq!(s["connections"], 1);
        assert_eq!(s["requests"], 0);
    }

    #[test]
    fn hosts_are_bounded() {
        let st = Stats::default();
        for i in 0..(MAX_HOSTS + 10) {
            st.count_host(&format!("h{i}"));
        }
        st.count_host("h0");
        let j = st.to_json();
        assert_eq!(j["hosts"].as_object().unwrap().len(), MAX_HOSTS + 1);
        assert_eq!(j["hosts"]["(other)"], 10);
        assert_eq!(j["hosts"]["h0"], 2);
    }
}
