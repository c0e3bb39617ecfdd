//! Listeners: accept client connections, serve HTTP/1.1 and HTTP/2
//! (prior knowledge) on each, and drain them on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

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

/// Accepts connections on `listener` until `stop` turns true; each
/// connection is watched by `watcher` so shutdown can drain it.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    tls: bool,
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
        serve_connection(stream, peer, tls, &shared, &builder, graceful);
    }
}

fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
    shared: &Arc<Shared>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
) {
    let conn_info = ConnInfo { peer, tls };
    let shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, conn_info, req).await) }
    });
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::debug!(peer = %peer, error = %e, "client connection ended with error");
        }
    });
}
