//! The running proxy as a whole: bind listeners and the admin server,
//! watch configuration files, reload, and drain on shutdown. The binary
//! and the end-to-end tests both start shadowgate through `start`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigErrors};
use crate::proxy::server::accept_loop;
use crate::runtime::{Runtime, Shared};
use crate::telemetry::metrics::ResultLabels;
use crate::telemetry::{AccessLog, LogFormat, Metrics, Telemetry};

/// Starting failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// How to start.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub log_format: LogFormat,
}

/// A started proxy.
pub struct Running {
    /// Bound addresses of the proxy listeners, in config order.
    pub listen_addrs: Vec<SocketAddr>,
    /// Bound address of the admin server.
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<GracefulShutdown>>,
    grace: Duration,
    sources: Vec<PathBuf>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("listen_addrs", &self.listen_addrs)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

/// Binds every listener and the admin server and starts serving.
pub async fn start(config: Config, options: StartOptions) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let access = AccessLog::new(
        config.access_log,
        options.log_format,
        metrics.access_log_dropped.clone(),
    );
    let telemetry = Arc::new(Telemetry::new(metrics.clone(), access));
    let grace = config.shutdown_grace;
    let sources = config.sources.clone();
    let listeners = config.listeners.clone();
    let limits = config.limits.clone();
    let admin = config.admin;
    let watch_interval = config.watch_interval;
    let shared = Shared::new(Runtime::build(config, None, &metrics), telemetry);

    let (stop, stop_rx) = watch::channel(false);
    let mut bound = Vec::new();
    for l in &listeners {
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|source| StartError::Bind {
                address: l.address,
                source,
            })?;
        bound.push((listener, l.tls.is_some()));
    }
    let admin_listener = TcpListener::bind(admin)
        .await
        .map_err(|source| StartError::Bind {
            address: admin,
            source,
        })?;
    let admin_addr = admin_listener.local_addr().unwrap_or(admin);

    let mut listen_addrs = Vec::new();
    let mut accept_tasks = Vec::new();
    for (listener, tls) in bound {
        listen_addrs.push(listener.local_addr().unwrap_or(listeners[0].address));
        let (shared, limits, stop_rx) = (shared.clone(), limits.clone(), stop_rx.clone());
        accept_tasks.push(tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            accept_loop(listener, shared, limits, tls, stop_rx, &graceful).await;
            graceful
        }));
    }

    let router = crate::admin::router(shared.clone());
    let mut admin_stop = stop_rx.clone();
    tokio::spawn(async move {
        let served = axum::serve(admin_listener, router)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    if !sources.is_empty() && !watch_interval.is_zero() {
        tokio::spawn(watch_files(
            shared.clone(),
            sources.clone(),
            watch_interval,
            stop_rx.clone(),
        ));
    }

    shared.ready.store(true, Ordering::Release);
    tracing::info!(listen = ?listen_addrs, admin = %admin_addr, "shadowgate is serving");
    Ok(Running {
        listen_addrs,
        admin_addr,
        shared,
        stop,
        accept_tasks,
        grace,
        sources,
    })
}

impl Running {
    /// Re-reads the configuration files and swaps the new config in. On any
    /// error the old configuration keeps serving.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        reload(&self.shared, &self.sources)
    }

    /// Stops accepting, lets in-flight requests finish (at most the grace
    /// period), and returns.
    pub async fn shutdown(self) {
        self.shared.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        let mut drains = Vec::new();
        for task in self.accept_tasks {
            if let Ok(graceful) = task.await {
                drains.push(graceful.shutdown());
            }
        }
        let all = futures_util::future::join_all(drains);
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!(grace = ?self.grace, "grace period over; closing remaining connections");
        } else {
            tracing::info!("drained; all in-flight requests finished");
        }
    }
}

/// Loads `sources` and applies them; counts and logs the result.
pub fn reload(shared: &Shared, sources: &[PathBuf]) -> Result<(), ConfigErrors> {
    let metrics = &shared.telemetry.metrics;
    match config::load_files(sources) {
        Ok(new) => {
            let old = shared.runtime.load();
            if new.listeners != old.config.listeners || new.admin != old.config.admin {
                tracing::warn!(
                    "listener and admin addresses change only on restart; keeping the current ones"
                );
            }
            shared.apply(new);
            metrics
                .config_reloads
                .get_or_create(&ResultLabels {
                    result: "success".into(),
                })
                .inc();
            tracing::info!("configuration reloaded");
            Ok(())
        }
        Err(e) => {
            metrics
                .config_reloads
                .get_or_create(&ResultLabels {
                    result: "failure".into(),
                })
                .inc();
            tracing::error!(errors = %e, "configuration rejected; the previous one keeps serving");
            Err(e)
        }
    }
}

/// Polls the files' contents; any change triggers a reload. Reading the
/// content (not just mtimes) also catches Kubernetes ConfigMap updates,
/// which arrive as symlink swaps.
async fn watch_files(
    shared: Arc<Shared>,
    sources: Vec<PathBuf>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let fingerprint = |paths: &[PathBuf]| -> Vec<Option<Vec<u8>>> {
        paths.iter().map(|p| std::fs::read(p).ok()).collect()
    };
    let mut last = fingerprint(&sources);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = fingerprint(&sources);
        if now != last {
            last = now;
            let _ = reload(&shared, &sources);
        }
    }
}
