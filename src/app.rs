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
    /// Bound address of the metrics listener (`metrics.listen`), if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Bound addresses of the egress listeners (`egress:`), if any.
    pub egress_addrs: Option<crate::egress::EgressAddrs>,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    drained: Drained,
    persisting: JoinHandle<()>,
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
    let sources = config.sources.clone();
    let listeners = config.listeners.clone();
    let limits = config.limits.clone();
    let admin = config.admin;
    let config_metrics = config.metrics_listen;
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
    let metrics_listener = match config_metrics {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind { address, source })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let egress_listeners = match (&shared.egress, shared.started.egress.as_ref()) {
        (Some(_), Some(ec)) => Some(
            crate::egress::bind(ec)
                .await
                .map_err(|(address, source)| StartError::Bind { address, source })?,
        ),
        _ => None,
    };

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
    let mut egress_addrs = None;
    if let (Some(eg), Some(listeners)) = (&shared.egress, egress_listeners) {
        egress_addrs = Some(crate::egress::EgressAddrs {
            live: listeners[0].1,
            shadow: listeners[1].1,
        });
        let grace = shared.started.shutdown_grace;
        accept_tasks.extend(crate::egress::serve(
            eg.clone(),
            listeners,
            stop_rx.clone(),
            grace,
        ));
        tracing::info!(live = %listeners_addr(egress_addrs), "egress is serving");
    }

    let router = crate::admin::router(shared.clone());
    tokio::spawn(crate::admin::serve::serve(
        "admin",
        admin_listener,
        shared.clone(),
        router,
        stop_rx.clone(),
    ));

    if let Some(listener) = metrics_listener {
        tokio::spawn(crate::admin::serve::serve(
            "metrics",
            listener,
            shared.clone(),
            crate::admin::metrics_router(shared.clone()),
            stop_rx.clone(),
        ));
    }

    // A shared store (PostgreSQL): register, follow the fleet's switches.
    shared
        .store
        .join_fleet(admin_addr.to_string(), shared.started.fleet_heartbeat);
    tokio::spawn(crate::promote::controller::follow(
        shared.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::promote::fleet::share_windows(
        shared.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::promote::controller::run(
        shared.clone(),
        stop_rx.clone(),
    ));
    // Shared: about one write a second per replica, so the fleet's report
    // is current; local: every 5 s.
    let persist_every = if shared.store.is_shared() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let persisting = tokio::spawn(crate::compare::persist_loop(
        shared.comparison.clone(),
        shared.store.clone(),
        persist_every,
        stop_rx.clone(),
    ));

    tokio::spawn(sweep_idle_copies(shared.clone(), stop_rx.clone()));

    if !sources.is_empty() {
        // Also with `watch_interval: 0s`: a reload may turn the watch on.
        // The files as this configuration was read from them (before `start`
        // returns, so a change right after it is seen).
        let first = if shared.runtime.load().config.watch_interval.is_zero() {
            None
        } else {
            snapshot_off_runtime(&shared, &sources).await
        };
        tokio::spawn(watch_files(
            shared.clone(),
            sources.clone(),
            first,
            stop_rx.clone(),
        ));
    }

    shared.ready.store(true, Ordering::Release);
    if let Some(metrics) = metrics_addr {
        tracing::info!(metrics = %metrics, "serving /metrics without the admin token");
    }
    tracing::info!(listen = ?listen_addrs, admin = %admin_addr, "shadowgate is serving");
    Ok(Running {
        listen_addrs,
        admin_addr,
        metrics_addr,
        egress_addrs,
        shared,
        stop,
        accept_tasks,
        drained,
        persisting,
        sources,
    })
}

impl Running {
    /// Re-reads the configuration files and swaps the new config in. On any
    /// error the old configuration keeps serving. This reads files and
    /// parses certificates on the calling thread: from async code use
    /// [`Running::reload_off_runtime`].
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        reload(&self.shared, &self.sources)
    }

    /// [`Running::reload`] on the blocking pool, so no runtime worker waits
    /// on the file system.
    pub async fn reload_off_runtime(&self) -> Result<(), ConfigErrors> {
        match self.reload_in_background().await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "reload task failed; the previous configuration keeps serving");
                Ok(())
            }
        }
    }

    /// Starts [`Running::reload`] on the blocking pool and returns at once
    /// (SIGHUP: the signal loop must stay free to hear SIGTERM).
    pub fn reload_in_background(&self) -> JoinHandle<Result<(), ConfigErrors>> {
        let (shared, sources) = (self.shared.clone(), self.sources.clone());
        tokio::task::spawn_blocking(move || reload(&shared, &sources))
    }

    /// Marks the proxy not ready (`/readyz` answers 503) and keeps serving
    /// for `shutdown_delay`; then stops accepting (the listeners close, so
    /// new connections are refused), lets every connection finish its
    /// requests (at most the grace period), and returns.
    pub async fn shutdown(self) {
        self.shutdown_or_skip(std::future::pending()).await;
    }

    /// [`Running::shutdown`], where `skip` ending cuts the rest of
    /// `shutdown_delay` short (a second SIGTERM or Ctrl-C in the binary).
    pub async fn shutdown_or_skip(self, skip: impl std::future::Future<Output = ()>) {
        // `shutdown_delay` and `shutdown_grace` as the configuration says
        // now (reloads apply them).
        let (delay, grace) = {
            let rt = self.shared.runtime.load();
            (rt.config.shutdown_delay, rt.config.shutdown_grace)
        };
        self.shared.ready.store(false, Ordering::Release);
        if !delay.is_zero() {
            tracing::info!(delay = ?delay, "not ready; still serving until shutdown_delay is over");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = skip => tracing::info!("shutdown_delay cut short"),
            }
        }
        let _ = self.stop.send(true);
        for task in self.accept_tasks {
            let _ = task.await;
        }
        if tokio::time::timeout(grace, self.drained.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?grace, "grace period over; closing remaining connections");
        } else {
            tracing::info!("drained; all in-flight requests finished");
        }
        // The persist loop writes the comparison results once more on stop.
        let _ = self.persisting.await;
        // The last access-log lines, before the process exits.
        self.shared.telemetry.access.flush();
        // The last records (`routes[].record`), their files ended.
        self.shared
            .recorder
            .flush(std::time::Duration::from_secs(5));
    }
}

fn listeners_addr(a: Option<crate::egress::EgressAddrs>) -> String {
    a.map(|a| format!("{} (shadow side {})", a.live, a.shadow))
        .unwrap_or_default()
}

/// Loads `sources` and applies them; counts and logs the result.
///
/// Settings that change only on restart (listener addresses and TLS on/off,
/// `admin`, `admin_token`, `store`, `comparison.*`) keep the values the
/// process started with; the keys whose files now say otherwise are logged
/// and listed in `restart_pending` (`/api/v1/status`, `shadowgate status`).
/// A reload can therefore never drop or change the admin token in force.
/// Everything else applies from the next connection or request on.
///
/// Blocking (file reads, certificate parsing): call it off the runtime's
/// worker threads.
pub fn reload(shared: &Shared, sources: &[PathBuf]) -> Result<(), ConfigErrors> {
    let _one_at_a_time = shared.reloading.lock();
    let metrics = &shared.telemetry.metrics;
    match config::load_files(sources) {
        Ok(mut new) => {
            let pending = keep_restart_only(&shared.started, &mut new);
            if !pending.is_empty() {
                tracing::warn!(
                    keys = %pending.join(", "),
                    "these settings change only on restart; the running values stay in force until then"
                );
            }
            *shared.restart_pending.lock() = pending;
            shared.telemetry.access.set_enabled(new.access_log);
            shared.apply(new);
            // Files no route records to any more are closed.
            shared.recorder.retain(&shared.runtime.load().config);
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

/// Puts the values the process started with back into `new` for every
/// setting that changes only on restart; returns the keys that differed.
pub fn keep_restart_only(started: &Config, new: &mut Config) -> Vec<String> {
    let mut pending = Vec::new();
    // Certificates may change (they are re-read on every reload and used
    // from the next handshake on); addresses and TLS on/off may not.
    let shape = |c: &Config| -> Vec<(SocketAddr, bool)> {
        c.listeners
            .iter()
            .map(|l| (l.address, l.tls.is_some()))
            .collect()
    };
    if shape(new) != shape(started) {
        pending.push("listen".to_string());
    }
    if new.admin != started.admin {
        pending.push("admin".into());
        new.admin = started.admin;
    }
    if new.metrics_listen != started.metrics_listen {
        pending.push("metrics".into());
        new.metrics_listen = started.metrics_listen;
    }
    if new.admin_token != started.admin_token {
        pending.push("admin_token".into());
        new.admin_token = started.admin_token.clone();
    }
    if new.store != started.store {
        pending.push("store".into());
        new.store = started.store.clone();
    }
    if new.fleet_heartbeat != started.fleet_heartbeat {
        pending.push("fleet_heartbeat".into());
        new.fleet_heartbeat = started.fleet_heartbeat;
    }
    let (n, s) = (&new.comparison, &started.comparison);
    for (key, differs) in [
        ("comparison.workers", n.workers != s.workers),
        ("comparison.queue", n.queue != s.queue),
        ("comparison.max_examples", n.max_examples != s.max_examples),
        (
            "comparison.example_max_age",
            n.example_max_age != s.example_max_age,
        ),
    ] {
        if differs {
            pending.push(key.into());
        }
    }
    new.comparison = started.comparison.clone();
    // The egress is built at start (listeners, kept exchanges, clients).
    if format!("{:?}", new.egress) != format!("{:?}", started.egress) {
        pending.push("egress".into());
        new.egress = started.egress.clone();
    }
    pending
}

/// Polls the files' contents every `watch_interval` (as the current
/// configuration says; `0s`: not at all); any change triggers a reload.
/// Reading the content (not just mtimes) also catches Kubernetes ConfigMap
/// updates, which arrive as symlink swaps. The TLS files the current
/// configuration names (listener certificates and keys, backend CA and
/// client files) are watched too, so a rotated certificate is picked up
/// without a SIGHUP. Reading and reloading run on the blocking pool.
async fn watch_files(
    shared: Arc<Shared>,
    sources: Vec<PathBuf>,
    first: Option<Snapshot>,
    mut stop: watch::Receiver<bool>,
) {
    /// How often a turned-off watch looks whether a reload turned it on.
    const OFF_RECHECK: Duration = Duration::from_secs(1);
    let mut was_off = first.is_none();
    let mut last = first;
    loop {
        let every = shared.runtime.load().config.watch_interval;
        if every.is_zero() {
            // Off: no reading at all.
            last = None;
            was_off = true;
        } else if last.is_none() {
            if was_off {
                // A reload turned the watch on: the files may have changed
                // since that reload read them, so read them once more.
                was_off = false;
                let (sh, src) = (shared.clone(), sources.clone());
                let _ = tokio::task::spawn_blocking(move || reload(&sh, &src)).await;
            }
            last = snapshot_off_runtime(&shared, &sources).await;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(if every.is_zero() { OFF_RECHECK } else { every }) => {}
        }
        let Some(before) = last.take() else { continue };
        if shared.runtime.load().config.watch_interval.is_zero() {
            continue;
        }
        let (sh, src) = (shared.clone(), sources.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let now = snapshot(&sh, &src);
            if now == before {
                return now;
            }
            let _ = reload(&sh, &src);
            // The set of TLS files may have changed with the configuration.
            snapshot(&sh, &src)
        })
        .await;
        last = checked.ok();
    }
}

/// Each watched file and its content (`None`: unreadable).
type Snapshot = Vec<(PathBuf, Option<Vec<u8>>)>;

async fn snapshot_off_runtime(shared: &Arc<Shared>, sources: &[PathBuf]) -> Option<Snapshot> {
    let (sh, src) = (shared.clone(), sources.to_vec());
    tokio::task::spawn_blocking(move || snapshot(&sh, &src))
        .await
        .ok()
}

/// The contents of the config files and the TLS files they name.
fn snapshot(shared: &Shared, sources: &[PathBuf]) -> Snapshot {
    let mut paths = sources.to_vec();
    paths.extend(tls_files(&shared.runtime.load().config));
    paths
        .into_iter()
        .map(|p| {
            let content = std::fs::read(&p).ok();
            (p, content)
        })
        .collect()
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
