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
use crate::record::read::{Exchange, LineError, OpenError};

pub use judge::{recorded, Done, Judged, MAX_ROUTES, MIRROR};
pub use select::{glob, parse_rate, parse_speed, selected, Filter, FilterKey, Pace, Pacer};
pub use send::{prepare, BadUrl, Prepared, SendError, SendOptions, Sender, Target, Unsendable};
pub use summary::{render, write_reports, Summary};

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
}

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
}

/// Sends one recorded exchange to the target (and the secondary): the
/// unit the replay loop runs `concurrency` of at once. A later
/// `--egress-listen` registers the exchange's `calls` (by its recorded
/// `traceparent`, sent unchanged) around this call.
#[derive(Debug, Clone)]
pub struct Replayer {
    pub target: Sender,
    pub secondary: Option<Sender>,
    pub send: Arc<SendOptions>,
}

impl Replayer {
    /// Sends `request` (prepared from `exchange`) to the target and the
    /// secondary at once and waits for both answers.
    pub async fn replay_one(&self, exchange: Exchange, request: Prepared) -> Done {
        let to_target = self.target.send(&request, &self.send);
        let (target, secondary) = match &self.secondary {
            Some(s) => {
                let (t, s) = tokio::join!(to_target, s.send(&request, &self.send));
                (t, Some(s))
            }
            None => (to_target.await, None),
        };
        Done {
            exchange,
            request,
            target,
            secondary,
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

    let replayer = Replayer {
        target: Sender::new(target, concurrency),
        secondary: secondary.map(|s| Sender::new(s, concurrency)),
        send: Arc::new(options.send),
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
    Ok(Summary::new(read_counts(&read), judge, elapsed))
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
