//! Listeners: accept client connections, serve HTTP/1.1 and HTTP/2
//! (prior knowledge, or ALPN `h2` over TLS) on each, and drain them on
//! shutdown. On a TLS listener the handshake runs in the connection's own
//! task, bounded by `limits.header_read_timeout`, with the certificates of
//! the current configuration generation (so a reload rotates them).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::phases::{handle, ConnInfo};
use crate::config::Limits;
use crate::runtime::Shared;

/// Builds the connection builder with the configured limits.
fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .auto_date_header(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .auto_date_header(false);
    builder
}

/// Where a TLS listener finds its certificates: the listener of the current
/// configuration with the same address, or (when a reload dropped or moved
/// it, which only takes effect on restart) the last one it had.
#[derive(Debug, Clone)]
pub struct TlsSource {
    /// The address as configured (before binding; may have port 0).
    pub configured: SocketAddr,
    pub last: Arc<ServerConfig>,
}

impl TlsSource {
    fn current(&mut self, shared: &Shared) -> TlsAcceptor {
        let runtime = shared.runtime.load();
        let found = runtime
            .config
            .listeners
            .iter()
            .find(|l| l.address == self.configured)
            .and_then(|l| l.tls.as_ref());
        if let Some(tls) = found {
            if !Arc::ptr_eq(&tls.server_config, &self.last) {
                self.last = tls.server_config.clone();
            }
        }
        TlsAcceptor::from(self.last.clone())
    }
}

/// Accepts connections on `listener` until `stop` turns true; each
/// connection is watched by `watcher` so shutdown can drain it.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    mut tls: Option<TlsSource>,
    mut stop: watch::Receiver<bool>,
    graceful: &GracefulShutdown,
) {
    let builder = Arc::new(connection_builder(&limits));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tls.as_mut().map(|t| t.current(&shared));
        let conn_info = ConnInfo {
            peer,
            tls: acceptor.is_some(),
        };
        let (shared, builder) = (shared.clone(), builder.clone());
        let watcher = graceful.watcher();
        let handshake_timeout = limits.header_read_timeout;
        let head_limits = limits.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve(stream, conn_info, shared, &builder, watcher, &head_limits).await,
                Some(acceptor) => {
                    let Some(stream) = handshake(acceptor, stream, peer, handshake_timeout).await
                    else {
                        return;
                    };
                    serve(stream, conn_info, shared, &builder, watcher, &head_limits).await
                }
            }
        });
    }
}

/// The server side of a TLS handshake, bounded in time. Failures are the
/// client's business (scanners, wrong names, old TLS versions): logged at
/// debug level only.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, ?timeout, "TLS handshake timed out");
            None
        }
    }
}

async fn serve<S>(
    stream: S,
    conn_info: ConnInfo,
    shared: Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    limits: &Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, conn_info, req).await) }
    });
    // The framing guard refuses smuggling shapes before hyper parses them.
    let io = TokioIo::new(super::guard::FramingGuard::with_limits(
        stream,
        limits.max_header_bytes,
        Some(limits.header_read_timeout),
    ));
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(peer = %conn_info.peer, error = %e, "client connection ended with error");
    }
}
