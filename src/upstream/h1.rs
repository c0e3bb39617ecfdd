//! HTTP/1.1 to a backend's endpoints: hyper-util's pooled client
//! (keep-alive, `max_idle_per_endpoint`), and the one request of an `auto`
//! endpoint that found out over ALPN that it speaks HTTP/1.1.

use http::{header, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;

use super::stream::UpstreamStream;
use super::{Backend, ResponseBody, UpstreamError};
use crate::body::UpstreamBody;

/// The most an HTTP/1.1 upstream connection buffers while reading (its
/// answer's head must fit: Envoy's default limit for response headers is
/// 60 KiB). hyper's default (~400 KiB) let each of 64 connections carrying
/// 1 MB answers hold ~400 KiB: 68 MiB of read buffers at the peak in
/// `bench/memory.py` (heaptrack), outside any budget.
pub(super) const READ_BUFFER: usize = 64 * 1024;

impl Backend {
    /// HTTP/1.1 through the pooled client: absolute URI naming the
    /// endpoint (the client connects there and sends origin-form).
    pub(super) async fn send_h1(
        &self,
        idx: usize,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        *req.uri_mut() = self.uri(
            self.endpoints[idx].authority.clone(),
            req.uri().path_and_query(),
        )?;
        *req.version_mut() = Version::HTTP_11;
        let started = self.now_ms();
        match self.client.request(req).await {
            Ok(resp) => Ok(resp.map(ResponseBody::h1)),
            Err(e) if e.is_connect() => Err(self.connect_error(idx, started, e.into())),
            Err(e) => Err(self.exchange_error(idx, e)),
        }
    }

    /// `auto`: the one request that found out an endpoint speaks HTTP/1.1
    /// goes over the connection that found out; later ones use the pool.
    pub(super) async fn send_h1_once(
        &self,
        idx: usize,
        stream: UpstreamStream,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let started = self.now_ms();
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.connect_error(idx, started, e.into()))?;
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
}

/// Undoes `Backend::to_h2` for a request that must go over HTTP/1.1 after
/// all: `Host` from the authority, origin-form URI. A request that never
/// was in HTTP/2 form passes unchanged.
pub(super) fn back_to_h1(mut req: Request<UpstreamBody>) -> Request<UpstreamBody> {
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
