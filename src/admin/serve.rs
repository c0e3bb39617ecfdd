//! The admin server's accept loop and connections. It is exposed like the
//! proxy listeners (the shipped manifests bind it to `0.0.0.0`), so it gets
//! the same cut-offs, and it must never take the descriptors the proxy
//! needs:
//!
//! - Each connection speaks HTTP/1.1 with `limits.header_read_timeout`
//!   (read from the current configuration for each new connection): a
//!   client that sends nothing, sends its head slowly, or keeps an idle
//!   keep-alive connection open is closed when it runs out.
//! - At most `admin_max_connections` connections are open at once, and never
//!   more than a quarter of the process's descriptor limit. A connection over
//!   the cap is closed as soon as it is accepted: admin degrades first.
//! - When `accept` fails (out of descriptors), the loop backs off instead of
//!   spinning, and serves again when descriptors return.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::runtime::Shared;

/// Back-off after a failed `accept` (out of descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning about refused connections per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long open admin connections get to finish at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The cap for the process's descriptor limit: a quarter of the soft
/// `RLIMIT_NOFILE`, at least 8 (`None`: no limit to share).
pub fn descriptor_share() -> Option<usize> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map(|soft| usize::try_from(soft / 4).unwrap_or(usize::MAX).max(8))
}

/// Counts an open admin connection while alive.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `router` on `listener` until `stop` turns true; `name` (`admin`
/// or `metrics`) labels its refused connections.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    shared: Arc<Shared>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let share = descriptor_share();
    let refusals = shared
        .telemetry
        .metrics
        .admin_refused
        .get_or_create(&crate::telemetry::metrics::ListenerLabels {
            listener: name.to_string(),
        })
        .clone();
    let open = Arc::new(AtomicUsize::new(0));
    let mut refused: u64 = 0;
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let config = shared.runtime.load().config.clone();
        let cap = share.map_or(config.admin_max_connections, |s| {
            s.min(config.admin_max_connections)
        });
        if open.load(Ordering::Acquire) >= cap {
            // Over the cap: close at once, so the descriptor is back now.
            drop(stream);
            refused += 1;
            refusals.inc();
            let now = tokio::time::Instant::now();
            if last_warning.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                last_warning = Some(now);
                tracing::warn!(
                    cap,
                    refused,
                    "admin server at its connection cap (admin_max_connections); closing new connections"
                );
            }
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let guard = Open(open.clone());
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stop = stop.clone();
        let header_timeout = config.limits.header_read_timeout;
        let max_buf = config.limits.max_header_bytes.max(8192);
        tokio::spawn(async move {
            let _guard = guard;
            let service = service_fn(move |req: http::Request<Incoming>| {
                let router = router.clone();
                async move {
                    Ok::<_, Infallible>(match router.oneshot(req).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(max_buf)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let ended = tokio::select! {
                ended = conn.as_mut() => Some(ended),
                _ = stopping => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_WAIT, conn.as_mut()).await {
                        Ok(ended) => ended,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(peer = %peer, error = %e, "admin connection ended with error");
            }
        });
    }
}
