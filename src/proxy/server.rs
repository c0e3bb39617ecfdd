//! Listeners: accept client connections, serve HTTP/1.1 and HTTP/2
//! (prior knowledge, or ALPN `h2` over TLS) on each, and drain them on
//! shutdown. On a TLS listener the handshake runs in the connection's own
//! task, bounded by `limits.header_read_timeout`, with the certificates of
//! the current configuration generation (so a reload rotates them).
//!
//! Shutdown, so that no client sees a reset: the accept loop takes what is
//! already in the listen queue (those clients completed a handshake and are
//! sending a request) and then closes the socket, so later connections are
//! refused by the kernel. Each connection then finishes: in-flight requests
//! are answered with keep-alive off, idle keep-alive connections close, and
//! a connection that has not delivered its first request yet gets up to a
//! second (at most `limits.header_read_timeout`) to do so and is answered
//! before it closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_rustls::TlsAcceptor;

use super::context::ConnInfo;
use super::guard::{FramingGuard, TunnelVerdicts};
use super::idle::{Activity, Watched};
use super::phases::handle;
use crate::config::Limits;
use crate::runtime::Shared;

/// The most an HTTP/1.1 client connection reads at once (hyper's read
/// buffer; request heads are held to `limits.max_header_bytes` by the
/// framing guard, which answers 431). A body read takes what the socket
/// has, up to this: with 256 KiB uploads mirrored, the 64 KiB this was
/// (the head limit) cut each body into ~5 chunks, each written to the
/// primary and to every copy on its own: 10.8 `writev` per request against
/// nginx's 3, and 0.92× nginx's throughput; at 256 KiB, 6.4 `writev` and
/// 1.19× (`bench/shipped.py --scenarios post`, docs/benchmarks.md).
const READ_BUFFER: usize = 256 * 1024;

/// Builds the connection builder with the configured limits.
fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(READ_BUFFER.max(limits.max_header_bytes))
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

/// At shutdown, how long a connection that has not sent its first request
/// yet is given to send it (at most `limits.header_read_timeout`).
const FIRST_REQUEST_AT_SHUTDOWN: Duration = Duration::from_secs(1);

/// Held by every connection task; shutdown waits until all are dropped.
#[derive(Debug, Clone)]
pub struct DrainToken(#[allow(dead_code)] mpsc::Sender<()>);

/// Waits for every `DrainToken` to be dropped.
#[derive(Debug)]
pub struct Drained(mpsc::Receiver<()>);

impl Drained {
    pub async fn wait(mut self) {
        let _ = self.0.recv().await;
    }
}

/// A token for connection tasks and the waiter for all of them.
pub fn drain_pair() -> (DrainToken, Drained) {
    let (tx, rx) = mpsc::channel(1);
    (DrainToken(tx), Drained(rx))
}

/// Accepts connections on `listener` until `stop` turns true, then takes
/// the connections already queued and closes the listener. Every
/// connection task holds a clone of `drain` until it ends.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut limits: Limits,
    mut tls: Option<TlsSource>,
    stop: watch::Receiver<bool>,
    drain: DrainToken,
) {
    let mut builder = Arc::new(connection_builder(&limits));
    let mut stopping = stop.clone();
    let mut stopped = false;
    loop {
        let accepted = if stopped {
            // Shutting down: only what is queued already, without waiting
            // (and without tokio's cooperative budget cutting it short).
            match tokio::task::unconstrained(listener.accept()).now_or_never() {
                Some(a) => a,
                None => break,
            }
        } else {
            tokio::select! {
                biased;
                _ = stopping.wait_for(|s| *s) => {
                    stopped = true;
                    continue;
                }
                a = listener.accept() => a,
            }
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if stopped => {
                tracing::debug!(error = %e, "accept failed while shutting down");
                break;
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // `limits` as the configuration says now: a reload applies them
        // from the next connection on.
        {
            let runtime = shared.runtime.load();
            if runtime.config.limits != limits {
                limits = runtime.config.limits.clone();
                builder = Arc::new(connection_builder(&limits));
            }
        }
        let acceptor = tls.as_mut().map(|t| t.current(&shared));
        let conn_info = ConnInfo {
            peer,
            tls: acceptor.is_some(),
        };
        let (shared, builder) = (shared.clone(), builder.clone());
        let handshake_timeout = limits.header_read_timeout;
        let (limits, stop, drain) = (limits.clone(), stop.clone(), drain.clone());
        tokio::spawn(async move {
            let _drain = drain;
            match acceptor {
                None => serve(stream, conn_info, shared, &builder, stop, &limits).await,
                Some(acceptor) => {
                    let Some(stream) = handshake(acceptor, stream, peer, handshake_timeout).await
                    else {
                        return;
                    };
                    serve(stream, conn_info, shared, &builder, stop, &limits).await
                }
            }
        });
    }
    // The listener is closed here: from now on connections are refused.
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
    mut stop: watch::Receiver<bool>,
    limits: &Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Told when the connection's first request has arrived.
    let first_request = Arc::new(Notify::new());
    let arrived = first_request.clone();
    // The guard stays on after a request that may start a tunnel until the
    // answer to it is known: only a 101, or a 2xx to CONNECT, switches it off.
    let verdicts = Arc::new(TunnelVerdicts::default());
    let told = verdicts.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        arrived.notify_one();
        let verdict = TunnelVerdict {
            n: told.request(),
            connect: req.method() == Method::CONNECT,
            verdicts: told.clone(),
        };
        async move {
            let resp = handle(shared, conn_info, req).await;
            verdict.tell(resp.status());
            Ok::<_, Infallible>(resp)
        }
    });
    // The framing guard refuses smuggling shapes before hyper parses them.
    let activity = Activity::new();
    let io = TokioIo::new(
        FramingGuard::with_limits(
            Watched::new(stream, activity.clone()),
            limits.max_header_bytes,
            Some(limits.header_read_timeout),
        )
        .with_verdicts(verdicts),
    );
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    let stopping = async {
        if stop.wait_for(|s| *s).await.is_err() {
            // The proxy was dropped without a shutdown: serve on.
            std::future::pending::<()>().await;
        }
    };
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        _ = stopping => None,
        _ = activity.silent_for(limits.idle_timeout) => {
            // Silent for `limits.idle_timeout`: closed gracefully (HTTP/2:
            // GOAWAY; what is in flight finishes).
            tracing::debug!(peer = %conn_info.peer, idle = ?limits.idle_timeout, "idle client connection closed");
            conn.as_mut().graceful_shutdown();
            Some(conn.as_mut().await)
        }
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            // Shutting down. A connection that has not delivered its first
            // request yet may have one on its way: closing it now would reset
            // a client that did nothing wrong. It gets a moment (a request
            // sent just before SIGTERM arrives within a round trip); a pooled
            // connection that a client opened ahead of need is not kept long.
            let wait = limits.header_read_timeout.min(FIRST_REQUEST_AT_SHUTDOWN);
            let first = tokio::time::timeout(wait, first_request.notified());
            let ended = tokio::select! {
                ended = conn.as_mut() => Some(ended),
                _ = first => None,
            };
            match ended {
                Some(ended) => ended,
                None => {
                    // In-flight requests finish with keep-alive off; an idle
                    // connection closes.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(peer = %conn_info.peer, error = %e, "client connection ended with error");
    }
}

/// Tells the connection's guard how one request was answered; a request
/// whose handling is dropped unanswered counts as no tunnel.
struct TunnelVerdict {
    n: u64,
    connect: bool,
    verdicts: Arc<TunnelVerdicts>,
}

impl TunnelVerdict {
    fn tell(self, status: StatusCode) {
        let tunnel =
            status == StatusCode::SWITCHING_PROTOCOLS || (self.connect && status.is_success());
        self.verdicts.decide(self.n, tunnel);
    }
}

impl Drop for TunnelVerdict {
    fn drop(&mut self) {
        // After `tell` this changes nothing (the verdict is kept).
        self.verdicts.decide(self.n, false);
    }
}
