//! Replay (issue #17): send recorded requests to a build and judge its
//! answers against the recorded ones with the live comparison engine
//! (`docs/replay.md`, "Replaying").
//!
//! The recording is streamed: a reader thread parses lines into a small
//! bounded channel; the dispatcher filters, paces and starts at most
//! `concurrency` exchanges at once ([`Replayer::replay_one`]: one recorded
//! exchange sent to the target and the secondary); a judge thread compares
//! the answers and tallies them. Memory depends on `concurrency` and the
//! body limits, never on the file's size.

mod judge;
mod select;
mod send;
mod summary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::config::Config;
use crate::egress::offline::{self, Book};
use crate::record::read::{Exchange, LineError, OpenError};

pub use judge::{recorded, Done, Judged, MAX_ROUTES, MIRROR};
pub use select::{glob, parse_rate, parse_speed, selected, Filter, FilterKey, Pace, Pacer};
pub use send::{
    prepare, BadUrl, Prepared, SendError, SendOptions, Sender, Target, TlsOptions, Unsendable,
};
pub use summary::{render, write_reports, Gate, Summary};

/// Bad lines quoted in the summary (all are counted).
pub const BAD_LINES_SHOWN: usize = 5;

/// What to replay, where, and how.
pub struct Options {
    pub file: PathBuf,
    pub target: String,
    /// A second instance of the recorded version: its differences from the
    /// recording are the noise.
    pub secondary: Option<String>,
    pub concurrency: usize,
    pub pace: Pace,
    /// At most this many exchanges sent.
    pub limit: Option<u64>,
    pub filters: Vec<Filter>,
    pub send: SendOptions,
    /// Compare rules, endpoint templates, noise thresholds and `redact` of
    /// the routes of the same names.
    pub config: Option<Config>,
    /// Called after each judged exchange (e.g. a progress bar).
    pub progress: Option<ProgressFn>,
    /// `--egress-listen`: serve the target's outbound calls from the
    /// recorded ones on this address (`egress::offline`); told the bound
    /// address once it listens.
    pub egress_listen: Option<(std::net::SocketAddr, Option<EgressReadyFn>)>,
}

/// Told the address the offline egress listens on.
pub type EgressReadyFn = Box<dyn FnOnce(std::net::SocketAddr) + Send>;

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("file", &self.file)
            .field("target", &self.target)
            .field("secondary", &self.secondary)
            .finish_non_exhaustive()
    }
}

/// Told where a replay stands, after each judged exchange.
pub type ProgressFn = Box<dyn Fn(&Progress) + Send>;

/// Where a replay stands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub judged: u64,
    pub answered: u64,
    pub errors: u64,
}

/// A replay that cannot run (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read the recording: {0}")]
    Open(#[from] OpenError),
    #[error("bad --target: {0}")]
    BadTarget(BadUrl),
    #[error("bad --secondary: {0}")]
    BadSecondary(BadUrl),
    #[error("{path}: no readable exchange ({bad} bad lines)")]
    NothingReadable { path: PathBuf, bad: u64 },
    #[error("{path}: no exchange to send ({read} read; {reason})")]
    NothingSent {
        path: PathBuf,
        read: u64,
        reason: String,
    },
    #[error("--report {path}: {reason}")]
    Report { path: String, reason: String },
    #[error("the replay failed: {0}")]
    Failed(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("--egress-listen {addr}: {reason}")]
    EgressListen {
        addr: std::net::SocketAddr,
        reason: String,
    },
}

/// Sends one recorded exchange to the target (and the secondary): the
/// unit the replay loop runs `concurrency` of at once. With
/// `--egress-listen`, the exchange's recorded outbound `calls` are put in
/// the offline egress's book under its recorded trace id and request id
/// (sent unchanged in `traceparent` and `x-request-id`, which the target
/// propagates to its calls) for as long as the exchange is in flight.
#[derive(Debug, Clone)]
pub struct Replayer {
    pub target: Sender,
    pub secondary: Option<Sender>,
    pub send: Arc<SendOptions>,
    pub egress: Option<Arc<EgressBook>>,
}

/// The offline egress's book and what it found missing.
#[derive(Debug)]
pub struct EgressBook {
    pub book: Arc<Book>,
    /// Recorded calls the target did not make.
    pub missing: std::sync::atomic::AtomicU64,
}

impl Replayer {
    /// Sends `request` (prepared from `exchange`) to the target and the
    /// secondary at once and waits for both answers.
    pub async fn replay_one(&self, exchange: Exchange, request: Prepared) -> Done {
        let egress = self.egress.as_ref().filter(|_| !exchange.calls.is_empty());
        let ids: Vec<&str> = [
            exchange.trace_id.as_deref(),
            Some(exchange.request_id.as_str()),
        ]
        .into_iter()
        .flatten()
        .filter(|id| !id.is_empty())
        .collect();
        if let Some(e) = egress {
            e.book.insert_all(&ids, exchange.calls.clone());
        }
        let done = self.send_both(&request).await;
        if let Some(e) = egress {
            let missing = e.book.finish(&ids) as u64;
            e.missing
                .fetch_add(missing, std::sync::atomic::Ordering::Relaxed);
        }
        let (target, secondary) = done;
        Done {
            exchange,
            request,
            target,
            secondary,
        }
    }

    async fn send_both(
        &self,
        request: &Prepared,
    ) -> (
        Result<crate::diff::Captured, SendError>,
        Option<Result<crate::diff::Captured, SendError>>,
    ) {
        let to_target = self.target.send(request, &self.send);
        match &self.secondary {
            Some(s) => {
                let (t, s) = tokio::join!(to_target, s.send(request, &self.send));
                (t, Some(s))
            }
            None => (to_target.await, None),
        }
    }
}

/// What the dispatcher counted.
#[derive(Debug, Default)]
struct Read {
    read: u64,
    bad_lines: u64,
    bad_examples: Vec<String>,
    filtered: u64,
    skipped_truncated: u64,
    skipped_invalid: u64,
    /// HAR entries that cannot be replayed (failed, not http, websocket).
    skipped_unreplayable: u64,
    sent: u64,
    /// The file itself failed part-way.
    fatal: Option<String>,
}

/// Replays `options.file` and judges the answers.
pub async fn run(options: Options) -> Result<Summary, ReplayError> {
    let target = Target::parse(&options.target).map_err(ReplayError::BadTarget)?;
    let secondary = options
        .secondary
        .as_deref()
        .map(Target::parse)
        .transpose()
        .map_err(ReplayError::BadSecondary)?;
    let tls = options.send.tls.client_config().map_err(ReplayError::Tls)?;
    let source = crate::record::open(&options.file)?;
    let concurrency = options.concurrency.clamp(1, usize::from(u16::MAX));
    let started = tokio::time::Instant::now();

    // The reader thread: parsing is blocking work, and the channel bounds
    // what is read ahead.
    let (lines_tx, mut lines) = mpsc::channel::<Result<Exchange, LineError>>(concurrency * 2);
    let reader = std::thread::Builder::new()
        .name("replay-read".into())
        .spawn(move || {
            for item in source {
                if lines_tx.blocking_send(item).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ReplayError::Failed(format!("cannot start the reader: {e}")))?;

    // The judge thread: comparisons are CPU work, kept off the runtime.
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(concurrency);
    let egress_config = options.config.as_ref().and_then(|c| c.egress.clone());
    let mut judge = judge::Judge::new(options.config, secondary.is_some());
    let progress = options.progress;
    let judging = tokio::task::spawn_blocking(move || {
        let mut n = 0;
        while let Some(done) = done_rx.blocking_recv() {
            judge.judge(done);
            n += 1;
            if let Some(p) = &progress {
                p(&Progress {
                    judged: n,
                    answered: judge.judged.answered,
                    errors: judge.judged.transport_errors + judge.judged.new_5xx,
                });
            }
        }
        judge.finish();
        judge
    });

    // The offline egress: the target's outbound calls answered from the
    // recorded ones, nothing leaving the machine.
    let (egress_stop, egress_stopped) = tokio::sync::watch::channel(false);
    let mut egress_server = None;
    let egress = match options.egress_listen {
        None => None,
        Some((addr, ready)) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                ReplayError::EgressListen {
                    addr,
                    reason: e.to_string(),
                }
            })?;
            let bound = listener.local_addr().unwrap_or(addr);
            let book = match &egress_config {
                Some(egress) => Book::with_services(egress),
                None => Book::new(),
            };
            egress_server = Some(offline::serve(listener, book.clone(), egress_stopped));
            if let Some(ready) = ready {
                ready(bound);
            }
            Some(Arc::new(EgressBook {
                book,
                missing: std::sync::atomic::AtomicU64::new(0),
            }))
        }
    };
    let replayer = Replayer {
        target: Sender::new(target, concurrency, tls.clone()),
        secondary: secondary.map(|s| Sender::new(s, concurrency, tls)),
        send: Arc::new(options.send),
        egress: egress.clone(),
    };
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut pacer = Pacer::new(options.pace);
    let mut read = Read::default();
    while let Some(item) = lines.recv().await {
        if options.limit.is_some_and(|l| read.sent >= l) {
            break;
        }
        let exchange = match item {
            Ok(e) => e,
            Err(e) if e.skipped().is_some() => {
                read.skipped_unreplayable += 1;
                continue;
            }
            Err(e) => {
                read.bad_lines += 1;
                if read.bad_examples.len() < BAD_LINES_SHOWN {
                    read.bad_examples.push(e.to_string());
                }
                if e.fatal {
                    read.fatal = Some(e.to_string());
                }
                continue;
            }
        };
        read.read += 1;
        if !selected(&options.filters, &exchange) {
            read.filtered += 1;
            continue;
        }
        let request = match prepare(&exchange, &replayer.send) {
            Ok(r) => r,
            Err(Unsendable::BodyTruncated) => {
                read.skipped_truncated += 1;
                continue;
            }
            Err(Unsendable::Invalid(why)) => {
                read.skipped_invalid += 1;
                if read.bad_examples.len() < BAD_LINES_SHOWN {
                    read.bad_examples.push(format!(
                        "{}:{}: not sendable: {why}",
                        options.file.display(),
                        exchange.line
                    ));
                }
                continue;
            }
        };
        if let Some(offset) = pacer.due(exchange.time.as_deref()) {
            tokio::time::sleep_until(started + offset).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        read.sent += 1;
        let (replayer, done_tx) = (replayer.clone(), done_tx.clone());
        tokio::spawn(async move {
            let done = replayer.replay_one(exchange, request).await;
            let _ = done_tx.send(done).await;
            drop(permit);
        });
    }
    // Stops the reader (at `--limit`) and waits for the last exchanges.
    drop(lines);
    let _ = permits
        .acquire_many(u32::try_from(concurrency).unwrap_or(u32::MAX))
        .await;
    drop(done_tx);
    let judge = judging
        .await
        .map_err(|e| ReplayError::Failed(format!("the judge stopped: {e}")))?;
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    let elapsed = started.elapsed();
    let _ = egress_stop.send(true);
    if let Some(server) = egress_server {
        let _ = server.await;
    }

    if read.read == 0 {
        return Err(ReplayError::NothingReadable {
            path: options.file,
            bad: read.bad_lines,
        });
    }
    if read.sent == 0 {
        let reason = if read.filtered == read.read {
            "none matched the filters".to_string()
        } else {
            "every one was skipped".to_string()
        };
        return Err(ReplayError::NothingSent {
            path: options.file,
            read: read.read,
            reason,
        });
    }
    let mut summary = Summary::new(read_counts(&read), judge, elapsed);
    summary.egress = egress.map(|e| summary::EgressCounts {
        services: e.book.counts(),
        missing: e.missing.load(std::sync::atomic::Ordering::Relaxed),
    });
    Ok(summary)
}

fn read_counts(read: &Read) -> summary::Counts {
    summary::Counts {
        read: read.read,
        bad_lines: read.bad_lines,
        bad_examples: read.bad_examples.clone(),
        fatal: read.fatal.clone(),
        filtered: read.filtered,
        skipped_truncated: read.skipped_truncated,
        skipped_invalid: read.skipped_invalid,
        skipped_unreplayable: read.skipped_unreplayable,
        sent: read.sent,
    }
}

/// `Duration` from seconds given on the command line (`--timeout`).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}`: {e} (e.g. 10s, 500ms)"))
        .and_then(|d| {
            if d.is_zero() {
                Err(format!("`{s}`: must be above 0"))
            } else {
                Ok(d)
            }
        })
}
