//! Upstream backends: a pooled HTTP client per backend, round-robin over
//! its endpoints, passive health (an endpoint that refuses connections is
//! passed over for `eject_for`), per-request timeout, and one retry on
//! another endpoint when a request never left the proxy.
//!
//! The client is built from a connector so that TLS and HTTP/2 upstreams
//! slot in by changing how `Backend::new` builds it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::UpstreamBody;
use crate::config::BackendConfig;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("backend `{backend}`: cannot connect to {endpoint}: {source}")]
    Connect {
        backend: String,
        endpoint: String,
        source: hyper_util::client::legacy::Error,
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
        source: hyper_util::client::legacy::Error,
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

impl UpstreamError {
    /// True when the request never reached the backend.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. })
    }
}

/// One endpoint and its health.
#[derive(Debug)]
struct EndpointState {
    authority: Authority,
    /// Milliseconds since `Backend::epoch` until which the endpoint is passed over.
    ejected_until: AtomicU64,
}

/// A backend: endpoints, health, and a connection pool.
#[derive(Debug)]
pub struct Backend {
    pub config: BackendConfig,
    endpoints: Vec<EndpointState>,
    next: AtomicUsize,
    epoch: Instant,
    client: Client<HttpConnector, UpstreamBody>,
}

impl Backend {
    pub fn new(config: BackendConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.max_idle_per_endpoint)
            .set_host(false)
            .retry_canceled_requests(true)
            .build(connector);
        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|e| {
                Some(EndpointState {
                    authority: e.authority.parse().ok()?,
                    ejected_until: AtomicU64::new(0),
                })
            })
            .collect();
        Backend {
            config,
            endpoints,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            client,
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

    fn eject(&self, idx: usize) {
        let until = self.now_ms() + self.config.eject_for.as_millis() as u64;
        self.endpoints[idx]
            .ejected_until
            .store(until, Ordering::Relaxed);
        tracing::warn!(
            backend = %self.config.name,
            endpoint = %self.endpoints[idx].authority,
            eject_for = ?self.config.eject_for,
            "endpoint refused a connection; passing it over"
        );
    }

    fn uri(&self, idx: usize, path: Option<&PathAndQuery>) -> Result<Uri, UpstreamError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.endpoints[idx].authority.clone());
        parts.path_and_query = Some(
            path.cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).map_err(|e| UpstreamError::Uri {
            backend: self.config.name.clone(),
            reason: e.to_string(),
        })
    }

    /// Sends `req` to an endpoint of this backend and waits (at most
    /// `timeout`) for the response head. A request that failed to connect is
    /// retried once on another endpoint when `retry_head` holds a copy of it
    /// (idempotent, no body).
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
        timeout: Duration,
        retry_head: Option<http::request::Parts>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path = req.uri().path_and_query().cloned();
        let idx = self.pick(None).ok_or_else(|| UpstreamError::Uri {
            backend: self.config.name.clone(),
            reason: "no endpoints".into(),
        })?;
        *req.uri_mut() = self.uri(idx, path.as_ref())?;
        match self.exchange(idx, req, timeout).await {
            Err(e) if e.is_connect() && self.endpoints.len() > 1 => {
                let Some(mut head) = retry_head else {
                    return Err(e);
                };
                let Some(other) = self.pick(Some(idx)) else {
                    return Err(e);
                };
                head.uri = self.uri(other, path.as_ref())?;
                tracing::debug!(backend = %self.config.name, "retrying on another endpoint after connect failure");
                let req = Request::from_parts(head, UpstreamBody::buffered(bytes::Bytes::new()));
                self.exchange(other, req, timeout).await
            }
            other => other,
        }
    }

    async fn exchange(
        &self,
        idx: usize,
        req: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let endpoint = &self.endpoints[idx];
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => {
                self.eject(idx);
                Err(UpstreamError::Connect {
                    backend: self.config.name.clone(),
                    endpoint: endpoint.authority.to_string(),
                    source: e,
                })
            }
            Ok(Err(e)) => Err(UpstreamError::Exchange {
                backend: self.config.name.clone(),
                endpoint: endpoint.authority.to_string(),
                source: e,
            }),
            Err(_) => Err(UpstreamError::Timeout {
                backend: self.config.name.clone(),
                endpoint: endpoint.authority.to_string(),
                timeout,
            }),
        }
    }

    /// An endpoint address for a dedicated connection (upgrades, CONNECT).
    pub fn pick_authority(&self) -> Option<Authority> {
        self.pick(None).map(|i| self.endpoints[i].authority.clone())
    }
}
