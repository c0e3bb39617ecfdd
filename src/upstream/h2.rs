//! HTTP/2 to a backend's endpoints: a few multiplexed connections per
//! endpoint (`H2Pool`), opened when every open one carries
//! `STREAMS_PER_CONNECTION` streams; ALPN `h2` over TLS (or both ids for
//! `auto`, remembering the answer), prior knowledge over TCP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{header, Request, Response, Version};
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;

use super::h1::back_to_h1;
use super::stream::UpstreamStream;
use super::{Backend, ResponseBody, UpstreamError, MODE_H1, MODE_H2};
use crate::body::UpstreamBody;
use crate::config::UpstreamProtocol;

/// Streams carried by one HTTP/2 connection before another is opened.
const STREAMS_PER_CONNECTION: usize = 100;

/// HTTP/2 flow control towards a backend: what one stream may receive
/// before the proxy has passed it on to its client.
pub(super) const H2_STREAM_WINDOW: u32 = 1 << 20;

/// HTTP/2 flow control of a whole upstream connection: room for every
/// stream it may carry to hold a full stream window at once, and one more.
/// Data a stalled client has not read stays charged to the connection
/// window too; were it smaller than the sum of the stream windows (hyper's
/// default is 5 MiB against 2 MiB per stream), three clients that stop
/// reading would exhaust it and every other response on the connection
/// would stop after its status line (issue #19 item 2).
pub(super) const H2_CONNECTION_WINDOW: u32 = (STREAMS_PER_CONNECTION as u32 + 1) * H2_STREAM_WINDOW;

impl Backend {
    /// Whether requests to endpoint `idx` go over HTTP/2 right now.
    pub(super) fn uses_h2(&self, idx: usize) -> bool {
        match self.config.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::H2 => true,
            UpstreamProtocol::Auto => {
                self.scheme == Scheme::HTTPS
                    && self.endpoints[idx].mode.load(Ordering::Relaxed) != MODE_H1
            }
        }
    }
    /// HTTP/2 over one of the endpoint's connections, opening one if none
    /// has room. A request refused by a connection that was closing (never
    /// sent) is tried once more on a fresh connection.
    pub(super) async fn send_h2(
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
    pub(super) async fn connect_h2(&self, idx: usize) -> Result<Connected2, UpstreamError> {
        let endpoint = &self.endpoints[idx];
        let started = self.now_ms();
        let uri = self.uri(endpoint.authority.clone(), None)?;
        let stream = self
            .h2_connector
            .connect(uri)
            .await
            .map_err(|e| self.connect_error(idx, started, e))?;
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
            .map_err(|e| self.connect_error(idx, started, e.into()))?;
        self.alive(idx);
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
    /// The HTTP/2 form of a request: `:authority` from `Host` (the endpoint
    /// when there is none), `:scheme` from the endpoint, no `Host` field.
    pub(super) fn to_h2(
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
}

/// A new connection, by what it speaks.
pub(super) enum Connected2 {
    H2((http2::SendRequest<UpstreamBody>, StreamGuard)),
    H1(UpstreamStream),
}

/// The HTTP/2 connections of one endpoint.
#[derive(Debug, Default)]
pub(super) struct H2Pool {
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
    pub(super) fn pick(&self) -> Option<(http2::SendRequest<UpstreamBody>, StreamGuard)> {
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.sender.is_closed());
        conns
            .iter()
            .min_by_key(|c| c.active.load(Ordering::Relaxed))
            .filter(|c| c.active.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION)
            .map(|c| (c.sender.clone(), StreamGuard::new(c.active.clone())))
    }

    pub(super) fn add(
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::Uri;

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
