//! The running proxy as a whole: bind listeners and the admin server,
//! watch configuration files, reload, and drain on shutdown. The binary
//! and the end-to-end tests both start shadowgate through `start`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigErrors};
use crate::proxy::server::{accept_loop, drain_pair, Drained, TlsSource};
use crate::runtime::Shared;
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::ResultLabels;
use crate::telemetry::{AccessLog, LogFormat, Metrics, Telemetry};

/// Starting failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
    accept_tasks: Vec<JoinHandle<()>>,
    drained: Drained,
    persisting: JoinHandle<()>,
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
    let store = Arc::new(Store::open(&config.store)?);
    let book = crate::promote::ops::load_book(&store, &config);
    let shared = Shared::new(config, book, telemetry, store);

    let (stop, stop_rx) = watch::channel(false);
    let mut bound = Vec::new();
    for l in &listeners {
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|source| StartError::Bind {
                address: l.address,
                source,
            })?;
        let tls = l.tls.as_ref().map(|t| TlsSource {
            configured: l.address,
            last: t.server_config.clone(),
        });
        bound.push((listener, tls));
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
    let (drain, drained) = drain_pair();
    for (listener, tls) in bound {
        listen_addrs.push(listener.local_addr().unwrap_or(listeners[0].address));
        let (shared, limits, stop_rx) = (shared.clone(), limits.clone(), stop_rx.clone());
        let drain = drain.clone();
        accept_tasks.push(tokio::spawn(async move {
            accept_loop(listener, shared, limits, tls, stop_rx, drain).await;
        }));
    }
    drop(drain);

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

    tokio::spawn(crate::promote::controller::run(
        shared.clone(),
        stop_rx.clone(),
    ));
    let persisting = tokio::spawn(crate::comparison::persist_loop(
        shared.comparison.clone(),
        shared.store.clone(),
        Duration::from_secs(5),
        stop_rx.clone(),
    ));

    tokio::spawn(sweep_idle_copies(shared.clone(), stop_rx.clone()));

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
        drained,
        persisting,
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

    /// Stops accepting (the listeners close, so new connections are
    /// refused), lets every connection finish its requests (at most the
    /// grace period), and returns.
    pub async fn shutdown(self) {
        self.shared.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        for task in self.accept_tasks {
            let _ = task.await;
        }
        if tokio::time::timeout(self.grace, self.drained.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "grace period over; closing remaining connections");
        } else {
            tracing::info!("drained; all in-flight requests finished");
        }
        // The persist loop writes the comparison results once more on stop.
        let _ = self.persisting.await;
    }
}

/// Loads `sources` and applies them; counts and logs the result.
pub fn reload(shared: &Shared, sources: &[PathBuf]) -> Result<(), ConfigErrors> {
    let metrics = &shared.telemetry.metrics;
    match config::load_files(sources) {
        Ok(new) => {
            let old = shared.runtime.load();
            // Certificates may change (they are re-read on every reload and
            // used from the next handshake on); addresses and TLS on/off may not.
            let shape = |c: &Config| -> Vec<(SocketAddr, bool)> {
                c.listeners
                    .iter()
                    .map(|l| (l.address, l.tls.is_some()))
                    .collect()
            };
            if shape(&new) != shape(&old.config) || new.admin != old.config.admin {
                tracing::warn!(
                    "listener addresses, listener TLS on/off and the admin address change only on restart; keeping the current ones"
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
/// which arrive as symlink swaps. The TLS files the current configuration
/// names (listener certificates and keys, backend CA and client files) are
/// watched too, so a rotated certificate is picked up without a SIGHUP.
async fn watch_files(
    shared: Arc<Shared>,
    sources: Vec<PathBuf>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let snapshot = |shared: &Shared| -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut paths = sources.clone();
        paths.extend(tls_files(&shared.runtime.load().config));
        paths
            .into_iter()
            .map(|p| {
                let content = std::fs::read(&p).ok();
                (p, content)
            })
            .collect()
    };
    let mut last = snapshot(&shared);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        if snapshot(&shared) != last {
            let _ = reload(&shared, &sources);
            // The set of TLS files may have changed with the configuration.
            last = snapshot(&shared);
        }
    }
}

/// Every TLS file a configuration names.
fn tls_files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for l in &config.listeners {
        for c in l.tls.iter().flat_map(|t| &t.certificates) {
            files.push(c.cert.clone());
            files.push(c.key.clone());
        }
    }
    for b in config.backends.values() {
        if let Some(t) = &b.tls {
            files.extend(t.ca_file.clone());
            if let Some((cert, key)) = &t.client_cert {
                files.push(cert.clone());
                files.push(key.clone());
            }
        }
    }
    files
}

/// Every 30 s, closes the mirror copies' idle connections that expired or
/// that their server closed, so a shadow that went quiet does not keep
/// sockets in CLOSE_WAIT until the next copy (bounded anyway by
/// `max_idle_per_endpoint`).
async fn sweep_idle_copies(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let runtime = shared.runtime.load();
        for backend in runtime.backends.values() {
            backend.sweep_idle();
        }
    }
}
