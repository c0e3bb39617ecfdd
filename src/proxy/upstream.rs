//! Upstream backends: round-robin over a backend's endpoints (ejected ones
//! skipped; when every endpoint is ejected the next one is tried anyway),
//! a timeout on the response head, and passive health:
//!
//! * primary requests (`Backend::send`): an endpoint that refuses the
//!   connection, or takes the request and then fails it (reset, garbage,
//!   or — for a request without body — no head in time), is passed over
//!   for `eject_for`. A request that failed to connect is retried once on
//!   another endpoint when it is idempotent and has no body;
//! * mirror copies (`Backend::send_copy`): only a refused connection
//!   passes an endpoint over, and there is no retry on another endpoint (a
//!   failed copy is counted, not repeated).
//!
//! Ejecting an endpoint also forgets its `auto` protocol choice.
//!
//! How requests travel, by the backend's `protocol` and endpoint scheme:
//!
//! * `http1` — hyper-util's pooled client (keep-alive, `max_idle_per_endpoint`),
//!   over TCP or TLS (ALPN `http/1.1`). The client's `Host` is forwarded.
//! * `h2` — a few multiplexed HTTP/2 connections per endpoint, kept here
//!   (`H2Pool`): prior knowledge over TCP, ALPN `h2` over TLS. A new
//!   connection is opened only when every open one carries
//!   `STREAMS_PER_CONNECTION` streams. The connection's flow-control
//!   window holds a full stream window for each of them, so clients that
//!   stop reading never starve the others (`H2_CONNECTION_WINDOW`). `:authority` is the client's
//!   `Host` (so a mirror's suffixed authority arrives as such).
//! * `auto` — over TLS, the first connection to an endpoint offers both
//!   ALPN ids; the answer is remembered per endpoint until it is ejected or
//!   the backend is rebuilt. Over TCP it is `http1`.
//!
//! Mirror copies over HTTP/1.1 (TCP or TLS) skip hyper's client: the copy's
//! task owns a connection for its exchange (`wire`), and idle connections
//! wait in the endpoint's list (`max_idle_per_endpoint`, 90 s at most).
//!
//! TLS: SNI and certificate verification use the endpoint host, or
//! `tls_server_name`; the `Host` / `:authority` the backend sees is still
//! the client's, as for cleartext endpoints.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::tls::UpstreamStream;
use super::wire::{self, Answered, IdleConns, Sink, WireError};
use crate::body::{BoxError, UpstreamBody};
use crate::config::{self, BackendConfig, UpstreamProtocol};
use crate::tls::{ALPN_H2, ALPN_HTTP11};

/// Streams carried by one HTTP/2 connection before another is opened.
const STREAMS_PER_CONNECTION: usize = 100;

/// HTTP/2 flow control towards a backend: what one stream may receive
/// before the proxy has passed it on to its client.
const H2_STREAM_WINDOW: u32 = 1 << 20;

/// HTTP/2 flow control of a whole upstream connection: room for every
/// stream it may carry to hold a full stream window at once, and one more.
/// Data a stalled client has not read stays charged to the connection
/// window too; were it smaller than the sum of the stream windows (hyper's
/// default is 5 MiB against 2 MiB per stream), three clients that stop
/// reading would exhaust it and every other response on the connection
/// would stop after its status line (issue #19 item 2).
const H2_CONNECTION_WINDOW: u32 = (STREAMS_PER_CONNECTION as u32 + 1) * H2_STREAM_WINDOW;

/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("backend `{backend}`: cannot connect to {endpoint}: {source}")]
    Connect {
        backend: String,
        endpoint: String,
        source: BoxError,
    },
    #[error("backend `{backend}`: no answer from {endpoint} within {timeout:?}")]
    Timeout {
        backend: String,
        endpoint: String,
        timeout: Duration,
    },
    #[error("backend `{backend}`: exchange with {endpoint} failed: {source}")]
    Exchange {
        backend: String,
        endpoint: String,
        source: BoxError,
    },
    #[error("backend `{backend}`: tunnel to {endpoint} failed: {reason}")]
    Tunnel {
        backend: String,
        endpoint: String,
        reason: String,
    },
    #[error("backend `{backend}`: invalid request URI: {reason}")]
    Uri { backend: String, reason: String },
}

/// The endpoint (`host:port`) that answered, in a response's extensions.
#[derive(Debug, Clone)]
pub struct AnsweredBy(pub String);

impl UpstreamError {
    /// The endpoint the failed exchange was with, when one was picked.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            UpstreamError::Connect { endpoint, .. }
            | UpstreamError::Timeout { endpoint, .. }
            | UpstreamError::Exchange { endpoint, .. }
            | UpstreamError::Tunnel { endpoint, .. } => Some(endpoint),
            UpstreamError::Uri { .. } => None,
        }
    }

    /// True when the request never reached the backend.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. })
    }

    /// Why the endpoint itself is to blame for a failed exchange (it took
    /// the request, then reset, closed, answered garbage or timed out);
    /// `None` for connect failures (ejected where they happen) and for
    /// failures of our side, such as the client's request body failing.
    pub fn endpoint_fault(&self) -> Option<&'static str> {
        match self {
            UpstreamError::Timeout { .. } => Some("no answer in time"),
            UpstreamError::Exchange { .. } => match self.hyper_error() {
                Some(h) if h.is_user() || h.is_canceled() || h.is_body_write_aborted() => None,
                Some(h) if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() => {
                    Some("invalid response")
                }
                _ if self.request_body_failed() => None,
                _ => Some("exchange failed"),
            },
            _ => None,
        }
    }

    /// True when the request body sent upstream failed (the client's side).
    pub fn request_body_failed(&self) -> bool {
        let UpstreamError::Exchange { source, .. } = self else {
            return false;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = next {
            if e.is::<crate::body::BodyTooLarge>() {
                return true;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_user() {
                    return true;
                }
            }
            next = e.source();
        }
        false
    }

    /// True when the endpoint answered something that is not HTTP.
    pub fn is_protocol(&self) -> bool {
        if let Some(h) = self.hyper_error() {
            return h.is_parse() || h.is_parse_status() || h.is_parse_too_large();
        }
        matches!(self.wire_error(), Some(WireError::Protocol(_)))
    }

    /// The error of a copy's HTTP/1.1 exchange, if that is what failed.
    pub fn wire_error(&self) -> Option<&WireError> {
        match self {
            UpstreamError::Exchange { source, .. } => source.downcast_ref::<WireError>(),
            _ => None,
        }
    }

    /// The hyper error behind a failed exchange, if there is one.
    pub fn hyper_error(&self) -> Option<&hyper::Error> {
        let UpstreamError::Exchange { source, .. } = self else {
            return None;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = next {
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                return Some(h);
            }
            next = e.source();
        }
        None
    }
}

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

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Picks the next healthy endpoint round robin, skipping `avoid`; when
    /// every endpoint is ejected, the next one is tried anyway.
    /// True when every endpoint is being passed over after refusing
    /// connections. Mirrors skip such a backend rather than knock again.
    pub fn all_ejected(&self) -> bool {
        let now = self.now_ms();
        !self.endpoints.is_empty()
            && self
                .endpoints
                .iter()
                .all(|e| e.ejected_until.load(Ordering::Relaxed) > now)
    }

    fn pick(&self, avoid: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut fallback = None;
        for i in 0..n {
            let idx = (start + i) % n;
            if Some(idx) == avoid {
                continue;
            }
            if self.endpoints[idx].ejected_until.load(Ordering::Relaxed) <= now {
                return Some(idx);
            }
            fallback.get_or_insert(idx);
        }
        fallback
    }

    fn eject(&self, idx: usize, why: &str) {
        let until = self.now_ms() + self.config.eject_for.as_millis() as u64;
        let endpoint = &self.endpoints[idx];
        endpoint.ejected_until.store(until, Ordering::Relaxed);
        endpoint.mode.store(MODE_UNKNOWN, Ordering::Relaxed);
        tracing::warn!(
            backend = %self.config.name,
            endpoint = %endpoint.authority,
            eject_for = ?self.config.eject_for,
            why,
            "endpoint failed; passing it over"
        );
    }

    fn connect_error(&self, idx: usize, source: BoxError) -> UpstreamError {
        self.eject(idx, "connection failed");
        UpstreamError::Connect {
            backend: self.config.name.clone(),
            endpoint: self.endpoints[idx].authority.to_string(),
            source,
        }
    }

    fn exchange_error(&self, idx: usize, source: impl Into<BoxError>) -> UpstreamError {
        UpstreamError::Exchange {
            backend: self.config.name.clone(),
            endpoint: self.endpoints[idx].authority.to_string(),
            source: source.into(),
        }
    }

    /// Whether requests to endpoint `idx` go over HTTP/2 right now.
    fn uses_h2(&self, idx: usize) -> bool {
        match self.config.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::H2 => true,
            UpstreamProtocol::Auto => {
                self.scheme == Scheme::HTTPS
                    && self.endpoints[idx].mode.load(Ordering::Relaxed) != MODE_H1
            }
        }
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
    /// through `send_copy`, where only a refused connection does that.)
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        timeout: Duration,
        retry_head: Option<http::request::Parts>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let idx = self.pick(None).ok_or_else(|| UpstreamError::Uri {
            backend: self.config.name.clone(),
            reason: "no endpoints".into(),
        })?;
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

    /// Sends a mirror copy and reads its whole answer into `sink` (the
    /// caller bounds it in time). Only a refused connection passes the
    /// endpoint over; there is no retry on another endpoint.
    pub async fn send_copy(
        &self,
        copy: CopyRequest,
        timeout: Duration,
        sink: &mut (dyn Sink + Send),
    ) -> Result<Answered, UpstreamError> {
        let idx = self.pick(None).ok_or_else(|| UpstreamError::Uri {
            backend: self.config.name.clone(),
            reason: "no endpoints".into(),
        })?;
        if self.copies_over_wire() {
            return self.copy_over_wire(idx, copy, sink).await;
        }
        let resp = self.exchange(idx, copy.into_request(), timeout).await?;
        let status = resp.status();
        sink.head(status, resp.headers());
        let mut body = resp.into_body();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.exchange_error(idx, e))?;
            match frame.into_data() {
                Ok(data) => {
                    body_bytes += data.len() as u64;
                    sink.data(&data);
                }
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref() {
                        sink.trailers(t);
                    }
                }
            }
        }
        Ok(Answered {
            status,
            body_bytes,
            reusable: true,
        })
    }

    /// Whether copies travel over `wire`: backends that speak HTTP/1.1
    /// (`http1`, or `auto` over TCP). HTTP/2 and `auto` over TLS go through
    /// the HTTP/2 pool and its ALPN handling.
    fn copies_over_wire(&self) -> bool {
        match self.config.protocol {
            UpstreamProtocol::Http1 => true,
            UpstreamProtocol::H2 => false,
            UpstreamProtocol::Auto => self.scheme == Scheme::HTTP,
        }
    }

    /// A copy over HTTP/1.1 on a connection of its own (see `wire`). A
    /// reused connection that ends before any answer (the server closed it
    /// while idle) is replaced by a fresh one once, for idempotent methods.
    async fn copy_over_wire(
        &self,
        idx: usize,
        copy: CopyRequest,
        sink: &mut (dyn Sink + Send),
    ) -> Result<Answered, UpstreamError> {
        let endpoint = &self.endpoints[idx];
        let target = copy.uri.path_and_query().map_or("/", |p| p.as_str());
        let (head, tail) = match &copy.trailers {
            Some(t) => wire::chunked_request(
                &copy.method,
                target,
                &copy.headers,
                copy.body.len(),
                t.fields(),
            ),
            None => (
                wire::request_head(&copy.method, target, &copy.headers),
                Vec::new(),
            ),
        };
        let (mut stream, mut reused) = match endpoint.idle.take(IDLE_TIMEOUT) {
            Some(s) => (s, true),
            None => (self.connect_wire(idx).await?, false),
        };
        loop {
            match wire::exchange(&mut stream, &head, &copy.body, &tail, &copy.method, sink).await {
                Ok(answered) => {
                    if answered.reusable {
                        endpoint
                            .idle
                            .put(stream, self.config.max_idle_per_endpoint, IDLE_TIMEOUT);
                    }
                    return Ok(answered);
                }
                Err(e) if reused && e.nothing_received() && copy.method.is_idempotent() => {
                    tracing::debug!(backend = %self.config.name, error = %e, "idle connection was closed; sending the copy on a new one");
                    stream = self.connect_wire(idx).await?;
                    reused = false;
                }
                Err(e) => return Err(self.exchange_error(idx, e)),
            }
        }
    }

    async fn connect_wire(&self, idx: usize) -> Result<UpstreamStream, UpstreamError> {
        let uri = self.uri(self.endpoints[idx].authority.clone(), None)?;
        self.h1_connector
            .connect(uri)
            .await
            .map_err(|e| self.connect_error(idx, e))
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
            let endpoint = AnsweredBy(self.endpoints[idx].authority.to_string());
            resp.extensions_mut().insert(endpoint);
            resp
        })
    }

    /// HTTP/1.1 through the pooled client: absolute URI naming the
    /// endpoint (the client connects there and sends origin-form).
    async fn send_h1(
        &self,
        idx: usize,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        *req.uri_mut() = self.uri(
            self.endpoints[idx].authority.clone(),
            req.uri().path_and_query(),
        )?;
        *req.version_mut() = Version::HTTP_11;
        match self.client.request(req).await {
            Ok(resp) => Ok(resp.map(ResponseBody::h1)),
            Err(e) if e.is_connect() => Err(self.connect_error(idx, e.into())),
            Err(e) => Err(self.exchange_error(idx, e)),
        }
    }

    /// HTTP/2 over one of the endpoint's connections, opening one if none
    /// has room. A request refused by a connection that was closing (never
    /// sent) is tried once more on a fresh connection.
    async fn send_h2(
        &self,
        idx: usize,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let endpoint = &self.endpoints[idx];
        let mut req = req;
        for attempt in 0..2 {
            let (mut sender, guard) = match endpoint.h2.pick() {
                Some(found) => found,
                None => {
                    let opened = {
                        let _one_at_a_time = endpoint.h2.connecting.lock().await;
                        if !self.uses_h2(idx) {
                            // `auto`: the connection opened while we waited found HTTP/1.1.
                            None
                        } else if let Some(found) = endpoint.h2.pick() {
                            Some(Connected2::H2(found))
                        } else {
                            Some(self.connect_h2(idx).await?)
                        }
                    };
                    match opened {
                        Some(Connected2::H2(found)) => found,
                        Some(Connected2::H1(stream)) => {
                            return self.send_h1_once(idx, stream, back_to_h1(req)).await;
                        }
                        None => return self.send_h1(idx, back_to_h1(req)).await,
                    }
                }
            };
            let h2_req = self.to_h2(idx, req)?;
            match sender.try_send_request(h2_req).await {
                Ok(resp) => return Ok(resp.map(|b| ResponseBody::h2(b, guard))),
                Err(mut e) => match e.take_message() {
                    Some(back) if attempt == 0 => {
                        tracing::debug!(backend = %self.config.name, error = %e.error(), "HTTP/2 connection was closing; retrying on a new one");
                        req = back_to_h1(back);
                    }
                    _ => return Err(self.exchange_error(idx, e.into_error())),
                },
            }
        }
        Err(self.exchange_error(idx, "HTTP/2 connections kept closing"))
    }

    /// Opens an HTTP/2 connection to endpoint `idx` and adds it to the
    /// pool. With `auto`, the server may pick HTTP/1.1 instead: the endpoint
    /// is then remembered as HTTP/1.1 and the fresh connection returned.
    async fn connect_h2(&self, idx: usize) -> Result<Connected2, UpstreamError> {
        let endpoint = &self.endpoints[idx];
        let uri = self.uri(endpoint.authority.clone(), None)?;
        let stream = self
            .h2_connector
            .connect(uri)
            .await
            .map_err(|e| self.connect_error(idx, e))?;
        let auto = self.config.protocol == UpstreamProtocol::Auto;
        if auto && !stream.negotiated_h2() {
            endpoint.mode.store(MODE_H1, Ordering::Relaxed);
            tracing::debug!(backend = %self.config.name, endpoint = %endpoint.authority, "ALPN chose HTTP/1.1");
            return Ok(Connected2::H1(stream));
        }
        let (sender, connection) = self
            .h2_builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.connect_error(idx, e.into()))?;
        let (backend, authority) = (self.config.name.clone(), endpoint.authority.clone());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(backend = %backend, endpoint = %authority, error = %e, "HTTP/2 upstream connection ended with error");
            }
        });
        if auto {
            endpoint.mode.store(MODE_H2, Ordering::Relaxed);
        }
        Ok(Connected2::H2(endpoint.h2.add(sender)))
    }

    /// `auto`: the one request that found out an endpoint speaks HTTP/1.1
    /// goes over the connection that found out; later ones use the pool.
    async fn send_h1_once(
        &self,
        idx: usize,
        stream: UpstreamStream,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.connect_error(idx, e.into()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *req.version_mut() = Version::HTTP_11;
        sender
            .send_request(req)
            .await
            .map(|resp| resp.map(ResponseBody::h1))
            .map_err(|e| self.exchange_error(idx, e))
    }

    /// The HTTP/2 form of a request: `:authority` from `Host` (the endpoint
    /// when there is none), `:scheme` from the endpoint, no `Host` field.
    fn to_h2(
        &self,
        idx: usize,
        mut req: Request<UpstreamBody>,
    ) -> Result<Request<UpstreamBody>, UpstreamError> {
        let authority = req
            .headers_mut()
            .remove(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| self.endpoints[idx].authority.clone());
        *req.uri_mut() = self.uri(authority, req.uri().path_and_query())?;
        *req.version_mut() = Version::HTTP_2;
        Ok(req)
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

/// A mirror copy: the whole request, body in memory.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    pub method: http::Method,
    /// Origin-form (or absolute) target; only path and query are sent.
    pub uri: Uri,
    /// Every field to send, `Host` and `Content-Length` included.
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The request's trailer fields, sent after the body (then chunked
    /// over HTTP/1.1); `Trailer` in `headers` names them.
    pub trailers: Option<std::sync::Arc<crate::mirror::tee::Trailers>>,
}

impl CopyRequest {
    fn into_request(self) -> Request<UpstreamBody> {
        let body = match &self.trailers {
            Some(t) => UpstreamBody::with_trailers(self.body, t.fields().clone()),
            None => UpstreamBody::buffered(self.body),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Undoes `Backend::to_h2` for a request that must go over HTTP/1.1 after
/// all: `Host` from the authority, origin-form URI. A request that never
/// was in HTTP/2 form passes unchanged.
fn back_to_h1(mut req: Request<UpstreamBody>) -> Request<UpstreamBody> {
    if req.version() != Version::HTTP_2 {
        return req;
    }
    if let Some(a) = req.uri().authority() {
        if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = req.uri().path_and_query().cloned();
    if let Ok(u) = Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
    *req.version_mut() = Version::HTTP_11;
    req
}

/// A new connection, by what it speaks.
enum Connected2 {
    H2((http2::SendRequest<UpstreamBody>, StreamGuard)),
    H1(UpstreamStream),
}

/// The HTTP/2 connections of one endpoint.
#[derive(Debug, Default)]
struct H2Pool {
    conns: parking_lot::Mutex<Vec<H2Conn>>,
    /// Held while a connection is being opened, so a burst of requests to
    /// a new endpoint shares one connection instead of opening one each.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    /// Streams open on this connection (request sent, response not yet over).
    active: Arc<AtomicUsize>,
}

impl H2Pool {
    /// The open connection with the fewest streams, if it has room.
    fn pick(&self) -> Option<(http2::SendRequest<UpstreamBody>, StreamGuard)> {
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.sender.is_closed());
        conns
            .iter()
            .min_by_key(|c| c.active.load(Ordering::Relaxed))
            .filter(|c| c.active.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION)
            .map(|c| (c.sender.clone(), StreamGuard::new(c.active.clone())))
    }

    fn add(
        &self,
        sender: http2::SendRequest<UpstreamBody>,
    ) -> (http2::SendRequest<UpstreamBody>, StreamGuard) {
        let active = Arc::new(AtomicUsize::new(0));
        let guard = StreamGuard::new(active.clone());
        self.conns.lock().push(H2Conn {
            sender: sender.clone(),
            active,
        });
        (sender, guard)
    }
}

/// Counts one open stream on an HTTP/2 connection until dropped.
#[derive(Debug)]
pub struct StreamGuard(Arc<AtomicUsize>);

impl StreamGuard {
    fn new(active: Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        StreamGuard(active)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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

/// Opens connections to endpoints: TCP (hyper-util's connector: connect
/// timeout, nodelay, keep-alive), then TLS for `https://` backends. Also
/// the connector of the pooled HTTP/1.1 client.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: Option<TlsSettings>,
    timeout: Duration,
}

#[derive(Clone)]
struct TlsSettings {
    connector: TlsConnector,
    /// `tls_server_name`, else the endpoint host.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    fn new(config: &BackendConfig, alpn: &[&[u8]]) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.enforce_http(false);
        let tls = config.tls.as_ref().map(|t| {
            let mut client = (*t.client_config).clone();
            client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsSettings {
                connector: TlsConnector::from(Arc::new(client)),
                server_name: t
                    .server_name
                    .as_ref()
                    .and_then(|n| ServerName::try_from(n.clone()).ok()),
            }
        });
        Connector {
            http,
            tls,
            timeout: config.connect_timeout,
        }
    }

    async fn connect(&self, uri: Uri) -> Result<UpstreamStream, BoxError> {
        let mut http = self.http.clone();
        let tcp = tower::Service::call(&mut http, uri.clone())
            .await?
            .into_inner();
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => {
                let host = uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_string())
                    .map_err(|e| format!("`{host}` cannot be a TLS server name: {e}"))?
            }
        };
        match tokio::time::timeout(self.timeout, tls.connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(UpstreamStream::Tls(Box::new(s))),
            Ok(Err(e)) => Err(format!("TLS handshake: {e}").into()),
            Err(_) => Err(format!("TLS handshake not done within {:?}", self.timeout).into()),
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        let c = crate::config::from_yaml(
            "t.yaml",
            "backends: { b: { endpoints: [\"https://127.0.0.1:8443\"], protocol: h2, insecure_skip_verify: true } }\nroutes: [{ name: r, backend: b }]\n",
        )
        .unwrap();
        Backend::new(c.backends["b"].clone())
    }

    fn request(host: Option<&str>) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::buffered(Bytes::new()));
        *req.uri_mut() = Uri::from_static("/p?q=1");
        if let Some(h) = host {
            req.headers_mut().insert(header::HOST, h.parse().unwrap());
        }
        req
    }

    #[test]
    fn h2_form_carries_the_client_authority_and_undoes_cleanly() {
        let b = backend();
        let h2 = b.to_h2(0, request(Some("app.test-shadow"))).unwrap();
        assert_eq!(h2.version(), Version::HTTP_2);
        assert_eq!(h2.uri().to_string(), "https://app.test-shadow/p?q=1");
        assert!(h2.headers().get(header::HOST).is_none());
        let h1 = back_to_h1(h2);
        assert_eq!(h1.version(), Version::HTTP_11);
        assert_eq!(h1.uri().to_string(), "/p?q=1");
        assert_eq!(h1.headers()[header::HOST], "app.test-shadow");
        // Without a Host (HTTP/1.0 client), :authority is the endpoint.
        let h2 = b.to_h2(0, request(None)).unwrap();
        assert_eq!(h2.uri().authority().unwrap().as_str(), "127.0.0.1:8443");
    }

    #[test]
    fn stream_guards_count_open_streams() {
        let active = Arc::new(AtomicUsize::new(0));
        let a = StreamGuard::new(active.clone());
        let b = StreamGuard::new(active.clone());
        assert_eq!(active.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(active.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(active.load(Ordering::Relaxed), 0);
    }
}
