//! The primary's upstream client: a backend's endpoints, their health and
//! their connections. Round robin over a backend's endpoints (ejected ones
//! skipped; when every endpoint is ejected the next one is tried anyway),
//! a timeout on the response head, and passive health (`health`):
//!
//! * primary requests (`Backend::send`): an endpoint that refuses the
//!   connection, or takes the request and then fails it (reset, garbage,
//!   or — for a request without body — no head in time), is passed over
//!   for `eject_for`. A request that failed to connect is retried once on
//!   another endpoint when it is idempotent and has no body;
//! * mirror copies (`crate::mirror::client`, through `Backend::pick_endpoint`):
//!   only a refused connection passes an endpoint over, and there is no
//!   retry on another endpoint (a failed copy is counted, not repeated).
//!
//! Ejecting an endpoint also forgets its `auto` protocol choice.
//!
//! How requests travel, by the backend's `protocol` and endpoint scheme:
//!
//! * `http1` — hyper-util's pooled client (keep-alive, `max_idle_per_endpoint`),
//!   over TCP or TLS (ALPN `http/1.1`). The client's `Host` is forwarded (`h1`).
//! * `h2` — a few multiplexed HTTP/2 connections per endpoint, kept here
//!   (`h2::H2Pool`): prior knowledge over TCP, ALPN `h2` over TLS. A new
//!   connection is opened only when every open one carries
//!   `STREAMS_PER_CONNECTION` streams. The connection's flow-control
//!   window holds a full stream window for each of them, so clients that
//!   stop reading never starve the others (`H2_CONNECTION_WINDOW`). `:authority` is the client's
//!   `Host` (so a mirror's suffixed authority arrives as such).
//! * `auto` — over TLS, the first connection to an endpoint offers both
//!   ALPN ids; the answer is remembered per endpoint until it is ejected or
//!   the backend is rebuilt. Over TCP it is `http1`.
//!
//! Dedicated connections (`connect`: upgrades, CONNECT, and the mirrors'
//! own HTTP/1.1 client) skip hyper's client; the copies' idle ones wait in
//! the endpoint's list (`idle`: `max_idle_per_endpoint`, 90 s at most).
//!
//! TLS: SNI and certificate verification use the endpoint host, or
//! `tls_server_name`; the `Host` / `:authority` the backend sees is still
//! the client's, as for cleartext endpoints.

mod connect;
mod error;
mod h1;
mod h2;
mod health;
mod idle;
mod stream;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::{BoxError, UpstreamBody};
use crate::config::{self, BackendConfig, UpstreamProtocol};
use crate::protocol::{ALPN_H2, ALPN_HTTP11};
use connect::Connector;
pub use error::{AnsweredBy, UpstreamError};
use h2::{H2Pool, StreamGuard, H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use idle::IdleConns;
pub use stream::UpstreamStream;

/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What an endpoint answered over ALPN (`auto` over TLS).
const MODE_UNKNOWN: u8 = 0;
const MODE_H1: u8 = 1;
const MODE_H2: u8 = 2;

/// One endpoint and its health.
#[derive(Debug)]
struct EndpointState {
    authority: Authority,
    /// Milliseconds since `Backend::epoch` until which the endpoint is passed over.
    ejected_until: AtomicU64,
    /// Milliseconds since `Backend::epoch` when the endpoint last answered
    /// or took a new connection (`NEVER` before that): a connect that
    /// times out meanwhile means busy, not gone (`health.rs`).
    last_ok: AtomicU64,
    /// HTTP/2 connections (protocols `h2` and `auto`).
    h2: H2Pool,
    /// `auto` over TLS: what ALPN settled on last time.
    mode: AtomicU8,
    /// Idle HTTP/1.1 connections of mirror copies.
    idle: IdleConns,
}

/// A backend: endpoints, health, and connections.
#[derive(Debug)]
pub struct Backend {
    pub config: BackendConfig,
    endpoints: Vec<EndpointState>,
    next: AtomicUsize,
    epoch: Instant,
    scheme: Scheme,
    /// HTTP/1.1 (pooled by hyper-util), and its connector for dedicated
    /// connections (tunnels).
    client: Client<Connector, UpstreamBody>,
    h1_connector: Connector,
    /// Opens HTTP/2 connections (ALPN `h2`, or `h2` and `http/1.1` for `auto`).
    h2_connector: Connector,
    h2_builder: http2::Builder<TokioExecutor>,
}

impl Backend {
    pub fn new(config: BackendConfig) -> Self {
        let tls = config.tls.as_ref();
        if tls.is_some_and(|t| t.insecure_skip_verify) {
            tracing::warn!(
                backend = %config.name,
                "INSECURE: insecure_skip_verify is set; this backend's TLS certificates are NOT verified. Use it for tests only."
            );
        }
        let alpn_h1: &[&[u8]] = &[ALPN_HTTP11];
        let alpn_h2: &[&[u8]] = match config.protocol {
            UpstreamProtocol::Auto => &[ALPN_H2, ALPN_HTTP11],
            _ => &[ALPN_H2],
        };
        let connector = Connector::new(&config, alpn_h1);
        let h2_connector = Connector::new(&config, alpn_h2);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(config.max_idle_per_endpoint)
            .set_host(false)
            .retry_canceled_requests(true)
            .http1_max_buf_size(h1::READ_BUFFER)
            .build(connector.clone());
        let mut h2_builder = http2::Builder::new(TokioExecutor::new());
        h2_builder
            .timer(TokioTimer::new())
            // Fixed windows (not adaptive: BDP sizing would set both to the
            // same value and bring the starvation back).
            .adaptive_window(false)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW);
        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|e| {
                Some(EndpointState {
                    authority: e.authority.parse().ok()?,
                    ejected_until: AtomicU64::new(0),
                    last_ok: AtomicU64::new(health::NEVER),
                    h2: H2Pool::default(),
                    mode: AtomicU8::new(MODE_UNKNOWN),
                    idle: IdleConns::default(),
                })
            })
            .collect();
        let scheme = match config.endpoints.first().map(|e| e.scheme) {
            Some(config::Scheme::Https) => Scheme::HTTPS,
            _ => Scheme::HTTP,
        };
        Backend {
            config,
            endpoints,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            scheme,
            client,
            h1_connector: connector,
            h2_connector,
            h2_builder,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }
    /// Sends `req` (origin-form URI, `Host` set) to an endpoint of this
    /// backend and waits (at most `timeout`) for the response head. A
    /// request that failed to connect is retried once on another endpoint
    /// when `retry_head` holds a copy of it (idempotent, no body). The
    /// request's version is set here to match the connection.
    ///
    /// An endpoint that refuses the connection, or takes the request and
    /// then fails it (reset, garbage, or no head in time for a request
    /// without body), is passed over for `eject_for`. (Mirror copies go
    /// through `crate::mirror::client`, where only a refused connection does
    /// that.)
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        timeout: Duration,
        retry_head: Option<http::request::Parts>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let idx = self.pick_endpoint()?.idx;
        // A request with a body may time out because the client uploads
        // slowly; only a bodiless one times out for the endpoint alone.
        let bodiless = req.body().is_end_stream();
        let fault = |e: &UpstreamError| {
            if e.is_timeout() && !bodiless {
                None
            } else {
                e.endpoint_fault()
            }
        };
        let result = self.exchange(idx, req, timeout).await;
        if let Some(why) = result.as_ref().err().and_then(fault) {
            // Connect failures eject where they happen.
            self.eject(idx, why);
        }
        match result {
            Err(e) if e.is_connect() && self.endpoints.len() > 1 => {
                let Some(head) = retry_head else {
                    return Err(e);
                };
                let Some(other) = self.pick(Some(idx)) else {
                    return Err(e);
                };
                tracing::debug!(backend = %self.config.name, "retrying on another endpoint after connect failure");
                let req = Request::from_parts(head, UpstreamBody::buffered(Bytes::new()));
                let retried = self.exchange(other, req, timeout).await;
                if let Some(why) = retried.as_ref().err().and_then(fault) {
                    self.eject(other, why);
                }
                retried
            }
            other => other,
        }
    }

    async fn exchange(
        &self,
        idx: usize,
        req: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let exchange = async {
            if self.uses_h2(idx) {
                self.send_h2(idx, req).await
            } else {
                self.send_h1(idx, req).await
            }
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                backend: self.config.name.clone(),
                endpoint: self.endpoints[idx].authority.to_string(),
                timeout,
            }),
        };
        result.map(|mut resp| {
            self.alive(idx);
            let endpoint = AnsweredBy(self.endpoints[idx].authority.to_string());
            resp.extensions_mut().insert(endpoint);
            resp
        })
    }

    fn uri(&self, authority: Authority, path: Option<&PathAndQuery>) -> Result<Uri, UpstreamError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        parts.path_and_query = Some(
            path.cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).map_err(|e| UpstreamError::Uri {
            backend: self.config.name.clone(),
            reason: e.to_string(),
        })
    }

    /// Picks the next endpoint (round robin, ejected ones passed over) for
    /// one exchange the caller runs itself: the mirrors' copies
    /// (`crate::mirror::client`).
    pub fn pick_endpoint(&self) -> Result<Picked<'_>, UpstreamError> {
        let idx = self.pick(None).ok_or_else(|| UpstreamError::Uri {
            backend: self.config.name.clone(),
            reason: "no endpoints".into(),
        })?;
        Ok(Picked { backend: self, idx })
    }

    /// Whether the backend speaks HTTP/1.1 without asking ALPN: `http1`, or
    /// `auto` over TCP. (HTTP/2 and `auto` over TLS go through the HTTP/2
    /// pool and its ALPN handling.)
    pub fn speaks_plain_http1(&self) -> bool {
        match self.config.protocol {
            UpstreamProtocol::Http1 => true,
            UpstreamProtocol::H2 => false,
            UpstreamProtocol::Auto => self.scheme == Scheme::HTTP,
        }
    }

    /// Closes mirror copies' idle connections that expired or that the
    /// server closed (the pool itself only looks at them when a copy
    /// comes). Returns how many stay open.
    pub fn sweep_idle(&self) -> usize {
        self.endpoints
            .iter()
            .map(|e| e.idle.sweep(IDLE_TIMEOUT))
            .sum()
    }

    /// An endpoint address for a dedicated connection (upgrades, CONNECT).
    pub fn pick_authority(&self) -> Option<Authority> {
        self.pick(None).map(|i| self.endpoints[i].authority.clone())
    }

    /// A dedicated HTTP/1.1 connection to `authority` (upgrades, CONNECT):
    /// TCP, or TLS with ALPN `http/1.1` for `https://` backends.
    pub async fn connect_dedicated(
        &self,
        authority: &Authority,
    ) -> Result<UpstreamStream, BoxError> {
        let uri = self
            .uri(authority.clone(), None)
            .map_err(|e| -> BoxError { e.to_string().into() })?;
        self.h1_connector.connect(uri).await
    }
}

/// A backend's response body: hyper's, plus (over HTTP/2) the count of the
/// stream it occupies, released when the body ends or is dropped.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    stream: Option<StreamGuard>,
}

impl ResponseBody {
    fn h1(inner: Incoming) -> Self {
        ResponseBody {
            inner,
            stream: None,
        }
    }

    fn h2(inner: Incoming, guard: StreamGuard) -> Self {
        ResponseBody {
            inner,
            stream: Some(guard),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.stream = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One endpoint of a backend, picked for an exchange that the caller runs
/// itself (the mirrors' own HTTP/1.1 client). Failures it reports go to the
/// endpoint's health as those of `Backend::send` do, except that only a
/// refused connection passes the endpoint over.
#[derive(Debug, Clone, Copy)]
pub struct Picked<'a> {
    backend: &'a Backend,
    idx: usize,
}

impl Picked<'_> {
    pub fn backend(&self) -> &Backend {
        self.backend
    }

    /// The request through the backend's own clients (HTTP/2 pool or
    /// hyper's HTTP/1.1 pool), waiting at most `timeout` for the head.
    pub async fn exchange(
        &self,
        req: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        self.backend.exchange(self.idx, req, timeout).await
    }

    /// A failed exchange with this endpoint, as an `UpstreamError`.
    pub fn exchange_error(&self, source: impl Into<BoxError>) -> UpstreamError {
        self.backend.exchange_error(self.idx, source)
    }

    /// A new HTTP/1.1 connection (TCP, or TLS with ALPN `http/1.1`); a
    /// refused connection passes the endpoint over.
    pub async fn connect(&self) -> Result<UpstreamStream, UpstreamError> {
        let b = self.backend;
        let started = b.now_ms();
        let uri = b.uri(b.endpoints[self.idx].authority.clone(), None)?;
        let stream = b
            .h1_connector
            .connect(uri)
            .await
            .map_err(|e| b.connect_error(self.idx, started, e))?;
        b.alive(self.idx);
        Ok(stream)
    }

    /// The endpoint's most recently used idle connection, if one is still
    /// open and not expired.
    pub fn take_idle(&self) -> Option<UpstreamStream> {
        self.backend.endpoints[self.idx].idle.take(IDLE_TIMEOUT)
    }

    /// Keeps `stream` for the next exchange (at most
    /// `max_idle_per_endpoint` are kept).
    pub fn keep_idle(&self, stream: UpstreamStream) {
        let b = self.backend;
        // Kept after a complete exchange: the endpoint answered.
        b.alive(self.idx);
        b.endpoints[self.idx]
            .idle
            .put(stream, b.config.max_idle_per_endpoint, IDLE_TIMEOUT);
    }
}
