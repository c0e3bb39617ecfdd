//! What the request path carries about one client connection (`ConnInfo`)
//! and one request (`RequestContext`), shared by the phases and by the
//! tunnels they hand Upgrade and CONNECT requests to.

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Uri, Version};
use tokio::time::Instant;

use crate::protocol::headers::add_forwarded;
use crate::telemetry::AccessRecord;

/// Facts about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Per-request state carried through the phases.
#[derive(Debug)]
pub struct RequestContext {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub method: Method,
    pub uri: Uri,
    /// The authority the client addressed, as sent (may carry a port).
    pub authority: String,
    /// The client connection's peer.
    pub peer: SocketAddr,
    /// Whether the peer is a configured trusted proxy.
    pub trusted_peer: bool,
    /// The W3C trace id of the request's `traceparent`, if valid.
    pub trace_id: Option<String>,
    /// The endpoint that answered (or failed), once known.
    pub upstream: Option<String>,
}

impl RequestContext {
    /// Adds the forwarding fields (`X-Forwarded-*`, `Via`) of this request,
    /// received on `conn`, to `headers` (sent upstream as `version`).
    pub fn add_forwarded(&self, headers: &mut HeaderMap, conn: ConnInfo, version: Version) {
        add_forwarded(
            headers,
            conn.peer.ip(),
            conn.tls,
            &self.authority,
            version,
            self.trusted_peer,
        );
    }

    /// The access-log record of this request as answered by `backend`.
    pub fn access_record<'a>(
        &'a self,
        route: &'a str,
        backend: &'a str,
        status: u16,
        bytes: u64,
        reason: Option<&'a str>,
    ) -> AccessRecord<'a> {
        AccessRecord {
            route,
            backend,
            role: "primary",
            method: self.method.as_str(),
            path: self.uri.path(),
            status: Some(status),
            bytes,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            request_id: self.request_id.to_str().unwrap_or("-"),
            reason,
            authority: Some(&self.authority),
            trace_id: self.trace_id.as_deref(),
            client: Some(self.peer),
            upstream: self.upstream.as_deref(),
        }
    }
}
