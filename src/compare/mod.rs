//! Comparison at run time: the captured primary and shadow (or secondary)
//! responses of one request meet here and are judged by a bounded pool of
//! worker threads, off the request path. Results are tallied per route ×
//! mirror × endpoint (`diff::Tally`), counted in metrics and the
//! windows, and persisted to the store by a background task.
//!
//! Never on the request path: `submit` only pushes onto a bounded queue;
//! when the queue is full the pair is dropped and counted. Workers take
//! pairs in batches: a worker is woken when the queue turns non-empty and
//! then lets up to `BATCH` pairs gather (at most `LINGER`), so a busy
//! proxy wakes a worker a few hundred times a second instead of once per
//! pair (with one worker per pair, the thread switches alone cost a
//! quarter of the throughput on a single core).

pub mod capture;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use tokio::sync::watch;

use crate::config::{ComparisonSettings, RouteCompareConfig};
use crate::diff::{
    self, Captured, CompareRules, EndpointTemplater, ExampleLimits, PairVerdict, Tally,
    TallyLimits, TallyState,
};
use crate::memory::MemoryBudget;
use crate::store::Store;
use crate::telemetry::metrics::CompareLabels;
use crate::telemetry::window::Window;
use crate::telemetry::Metrics;

/// Store key of the persisted tally.
const TALLY_KEY: &str = "compare:tally";

/// Pairs a worker takes at once; also the queue length that wakes a
/// worker early.
const BATCH: usize = 64;

/// How long a woken worker lets pairs gather before it takes them.
const LINGER: Duration = Duration::from_millis(5);

/// The bounded queue between the request path and the workers.
///
/// Hand-written rather than a channel (e.g. `crossbeam-channel`) on
/// purpose: a bounded channel's `try_send` would keep the refusal and the
/// never-waiting push, but it wakes a parked receiver on every send, while
/// this queue wakes a worker only when it turns non-empty or reaches a
/// `BATCH`, and a woken worker lingers to take a batch at once (see the
/// module comment: per-pair wake-ups cost a quarter of the throughput on
/// one core). Rebuilding that on a channel (`recv` then `recv_timeout`
/// loops) would be no shorter and would still wake per pair.
struct JobQueue {
    jobs: parking_lot::Mutex<VecDeque<Job>>,
    ready: parking_lot::Condvar,
    capacity: usize,
    closed: AtomicBool,
}

impl JobQueue {
    fn new(capacity: usize) -> Self {
        JobQueue {
            jobs: parking_lot::Mutex::new(VecDeque::new()),
            ready: parking_lot::Condvar::new(),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues `job`, or gives it back when the queue is full.
    fn push(&self, job: Job) -> Option<Job> {
        let queued = {
            let mut jobs = self.jobs.lock();
            if jobs.len() >= self.capacity {
                return Some(job);
            }
            jobs.push_back(job);
            jobs.len()
        };
        if queued == 1 || queued == BATCH {
            self.ready.notify_one();
        }
        None
    }

    /// Moves the next batch (up to `BATCH` pairs) into `batch`; false once
    /// the engine is gone.
    fn take(&self, batch: &mut Vec<Job>) -> bool {
        let mut jobs = self.jobs.lock();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if jobs.is_empty() {
                self.ready.wait(&mut jobs);
                continue;
            }
            if jobs.len() < BATCH {
                self.ready.wait_for(&mut jobs, LINGER);
            }
            let n = jobs.len().min(BATCH);
            batch.extend(jobs.drain(..n));
            let more = !jobs.is_empty();
            drop(jobs);
            if more {
                // Another worker takes the rest meanwhile.
                self.ready.notify_one();
            }
            return true;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _jobs = self.jobs.lock();
        self.ready.notify_all();
    }
}

/// A route's comparison rules and endpoint templater, built once per runtime.
pub struct RouteComparison {
    pub route: Arc<str>,
    pub rules: CompareRules,
    pub templater: parking_lot::Mutex<EndpointTemplater>,
}

impl std::fmt::Debug for RouteComparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteComparison")
            .field("route", &self.route)
            .finish()
    }
}

impl RouteComparison {
    /// Builds from a validated config (rules were checked at load).
    pub fn new(route: &str, cfg: &RouteCompareConfig) -> Option<Self> {
        Some(RouteComparison {
            route: Arc::from(route),
            rules: CompareRules::new(&cfg.rules).ok()?,
            templater: parking_lot::Mutex::new(
                EndpointTemplater::new(&cfg.endpoints, cfg.max_endpoints).ok()?,
            ),
        })
    }
}

/// Which side the other response came from.
#[derive(Debug)]
pub enum Side {
    /// A mirror (the candidate); its window records the comparison.
    Shadow { mirror: String, window: Arc<Window> },
    /// The secondary: a second instance of the primary's version (noise).
    Secondary,
}

/// One pair to judge.
#[derive(Debug)]
pub struct Job {
    pub route: Arc<RouteComparison>,
    pub side: Side,
    pub method: Method,
    pub uri: Uri,
    pub request_headers: HeaderMap,
    pub primary: Arc<Captured>,
    pub other: Captured,
}

/// The primary's response as captured for comparison, once it has ended.
pub type PrimaryCapture = watch::Receiver<Option<PrimaryAnswer>>;

/// What the primary's capture came to.
#[derive(Debug, Clone)]
pub enum PrimaryAnswer {
    Captured(Arc<Captured>),
    /// Its body did not fit in the shadow memory budget.
    OverBudget,
}

/// The comparison engine: queue, workers, tally.
pub struct Engine {
    queue: Arc<JobQueue>,
    example_max_age: Duration,
    pub tally: Arc<parking_lot::Mutex<Tally>>,
    metrics: Arc<Metrics>,
    dirty: Arc<AtomicBool>,
    /// With a shared store: the other replicas' tallies as last read, and
    /// the fleet's tally (this one's live counts plus theirs) that the
    /// admin API reports.
    fleet: parking_lot::Mutex<Option<(Vec<TallyState>, Arc<Tally>)>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

impl Engine {
    /// Starts the workers; restores the tally from the store.
    pub fn start(
        settings: &ComparisonSettings,
        metrics: Arc<Metrics>,
        store: &Store,
        memory: &Arc<MemoryBudget>,
    ) -> Arc<Engine> {
        let limits = TallyLimits {
            max_examples: settings.max_examples,
            ..TallyLimits::default()
        };
        let thresholds = diff::NoiseThresholds::default();
        let stored = if store.is_shared() {
            // A restarted pod keeps its id (pod name, pid 1): its own row.
            store.replica_states::<TallyState>().map(|states| {
                states
                    .into_iter()
                    .find(|(id, _)| id == store.replica_id())
                    .map(|(_, s)| s)
            })
        } else {
            store.get::<TallyState>(TALLY_KEY)
        };
        let tally = match stored {
            Ok(Some(state)) => Tally::restore(state, limits, thresholds),
            Ok(None) => Tally::new(limits, thresholds),
            Err(e) => {
                tracing::error!(error = %e, "cannot read stored comparison results; starting empty");
                Tally::new(limits, thresholds)
            }
        };
        let tally = Arc::new(parking_lot::Mutex::new(tally));
        let queue = Arc::new(JobQueue::new(settings.queue));
        let dirty = Arc::new(AtomicBool::new(false));
        // Examples always have credentials redacted (see diff::tally).
        let example_limits = ExampleLimits::default();
        let workers = settings.workers.max(1);
        for i in 0..workers {
            let (queue, tally, metrics, dirty) =
                (queue.clone(), tally.clone(), metrics.clone(), dirty.clone());
            let work = WorkMemory {
                budget: memory.clone(),
                workers,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("compare-{i}"))
                .spawn(move || worker(&queue, tally, metrics, dirty, example_limits, &work));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a comparison worker");
            }
        }
        Arc::new(Engine {
            queue,
            example_max_age: settings.example_max_age,
            tally,
            metrics,
            dirty,
            fleet: parking_lot::Mutex::new(None),
        })
    }

    /// Runs `f` on the tally to report: the fleet's with a shared store
    /// (once read), this process's otherwise.
    pub fn with_report<R>(&self, f: impl FnOnce(&Tally) -> R) -> R {
        let fleet = self.fleet.lock().as_ref().map(|(_, t)| t.clone());
        match fleet {
            Some(t) => f(&t),
            None => f(&self.tally.lock()),
        }
    }

    /// Queues a pair; never waits for a worker. A full queue drops the
    /// pair (counted).
    pub fn submit(&self, job: Job) {
        if let Some(job) = self.queue.push(job) {
            self.count(&job.route.route, &side_name(&job.side), "dropped");
        }
    }

    /// Counts a comparison that could not happen (e.g. the primary failed).
    pub fn count(&self, route: &str, backend: &str, result: &str) {
        self.metrics
            .compare
            .get_or_create(&CompareLabels {
                route: route.to_string(),
                backend: backend.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Marks the tally changed (written by someone else than the workers,
    /// e.g. the egress's outbound-call comparison), so it is persisted.
    pub fn mark_changed(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the tally to the store when it changed; called periodically
    /// and at shutdown.
    pub fn persist(&self, store: &Store) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expired = self
            .tally
            .lock()
            .expire_examples(now.saturating_sub(self.example_max_age.as_secs()));
        if expired > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        if store.is_shared() {
            return self.persist_shared(store);
        }
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let state = self.tally.lock().export();
        if let Err(e) = store.put(TALLY_KEY, &state) {
            tracing::error!(error = %e, "cannot store comparison results");
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Shared store: overwrite this replica's cumulative tally (so a retry
    /// after an outage never counts twice; until then the counts wait in
    /// the bounded tally), then read the other replicas' and merge.
    fn persist_shared(&self, store: &Store) {
        if self.dirty.swap(false, Ordering::AcqRel) {
            let state = self.tally.lock().export();
            if let Err(e) = store.put_replica_state(&state) {
                tracing::warn!(error = %e, "cannot store comparison results; kept in memory until the store is back");
                self.dirty.store(true, Ordering::Release);
            }
        }
        let others = match store.replica_states::<TallyState>() {
            Ok(states) => Some(
                states
                    .into_iter()
                    .filter(|(id, _)| id != store.replica_id())
                    .map(|(_, s)| s)
                    .collect::<Vec<_>>(),
            ),
            Err(_) => None,
        };
        let mut fleet = self.fleet.lock();
        let others = others
            .or_else(|| fleet.as_ref().map(|(o, _)| o.clone()))
            .unwrap_or_default();
        let merged = Arc::new(self.tally.lock().merged_with(others.iter().cloned()));
        *fleet = Some((others, merged));
    }
}

fn side_name(side: &Side) -> String {
    match side {
        Side::Shadow { mirror, .. } => mirror.clone(),
        Side::Secondary => "secondary".to_string(),
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// A worker's part of the budget's share for comparison work (JSON trees,
/// decoded bodies): the share split evenly, read per pair so a reload that
/// changes `limits.shadow_memory` applies at once.
struct WorkMemory {
    budget: Arc<MemoryBudget>,
    workers: usize,
}

impl WorkMemory {
    fn per_worker(&self) -> usize {
        self.budget.work_share() / self.workers
    }
}

fn worker(
    queue: &JobQueue,
    tally: Arc<parking_lot::Mutex<Tally>>,
    metrics: Arc<Metrics>,
    dirty: Arc<AtomicBool>,
    example_limits: ExampleLimits,
    work: &WorkMemory,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.take(&mut batch) {
        for job in batch.drain(..) {
            compare_pair(job, &tally, &metrics, &example_limits, work.per_worker());
        }
        dirty.store(true, Ordering::Release);
    }
}

/// Compares one pair and records the outcome.
fn compare_pair(
    job: Job,
    tally: &parking_lot::Mutex<Tally>,
    metrics: &Metrics,
    example_limits: &ExampleLimits,
    work_bytes: usize,
) {
    {
        let endpoint = job
            .route
            .templater
            .lock()
            .endpoint(&job.method, job.uri.path());
        let outcome = diff::compare_within(&job.primary, &job.other, &job.route.rules, work_bytes);
        let route = &*job.route.route;
        match &job.side {
            Side::Shadow { mirror, window } => {
                let verdict =
                    tally
                        .lock()
                        .record_shadow(route, mirror, &endpoint, &outcome, || {
                            diff::Example::new(
                                &job.method,
                                &job.uri.to_string(),
                                &job.request_headers,
                                &job.primary,
                                &job.other,
                                &outcome,
                                example_limits,
                            )
                        });
                let result = match verdict {
                    PairVerdict::Equal => "equal",
                    PairVerdict::Different => "different",
                    PairVerdict::NoiseOnly => "noise_only",
                };
                let count = |result: &str| {
                    metrics
                        .compare
                        .get_or_create(&CompareLabels {
                            route: route.to_string(),
                            backend: mirror.clone(),
                            result: result.to_string(),
                        })
                        .inc();
                };
                count("compared");
                count(result);
                if outcome.truncated {
                    count("truncated");
                }
                window.record_compare(verdict == PairVerdict::Different);
            }
            Side::Secondary => tally.lock().record_secondary(route, &endpoint, &outcome),
        }
    }
}

/// Persists the tally every `every` until `stop` turns true, and once more then.
pub async fn persist_loop(
    engine: Arc<Engine>,
    store: Arc<Store>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = tokio::time::sleep(every) => false,
        };
        let (e, s) = (engine.clone(), store.clone());
        let _ = tokio::task::spawn_blocking(move || e.persist(&s)).await;
        if stopping {
            return;
        }
    }
}
