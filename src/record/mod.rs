//! Recording (issue #17, part 1): a sampled share of a route's requests
//! and the primary's answers, written as JSON lines (`docs/replay.md`).
//!
//! On the request path a sampling decision is made, the line's first part
//! (the request's method, target and headers, redacted) is written at once
//! into a buffer held from `limits.shadow_memory` (`line::request_part`;
//! keeping clones of the header maps until the end cost more), and two
//! bounded copies are taken: the request body as the primary reads it
//! (`tap::RequestTap`) and the answer's body as the client reads it
//! (`tap::ResponseTap`), both reserved from `limits.shadow_memory`. The
//! answer's head is added to the buffer when it comes
//! (`line::response_part`), and its body after it. When the answer has
//! ended the line is finished on that thread (`line::finish_into`;
//! everything freed where it was allocated), written straight into that
//! thread's lane of a bounded queue and held there by the buffer's
//! reservation (`queue`: a full lane drops it, counted, never waits); a
//! dedicated
//! writer thread (`writer`) batches, flushes at least every second, rotates
//! and compresses. Encoding on the writer thread instead, with every
//! record's parts freed there, cost 24 µs of proxy CPU per recorded GET
//! against 13 µs this way (`bench/record.py`, session 6).

pub mod calls;
pub mod export;
pub mod har;
mod line;
mod queue;
pub mod read;
mod tap;
mod writer;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::config::record::RecordConfig;
use crate::config::Config;
use crate::memory::{MemoryBudget, Reservation};
use crate::telemetry::metrics::{Metrics, RecordDropLabels, RecordLabels};

pub use tap::Pending;

/// Records waiting for the writer per serving thread; more are dropped
/// (`queue_full`).
const QUEUE: usize = 4096;

/// Bytes of line buffer a serving thread keeps between records.
const SCRATCH_KEEP: usize = 256 << 10;

thread_local! {
    /// The line being encoded on this thread (kept: no allocation per record).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's encoding buffer, emptied first (and freed
/// afterwards when a large record grew it past `SCRATCH_KEEP`).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        let out = f(&mut buf);
        if buf.capacity() > SCRATCH_KEEP {
            *buf = Vec::new();
        }
        out
    })
}

/// One captured body.
#[derive(Debug, Clone, Default)]
pub struct CapturedBody {
    pub bytes: Bytes,
    pub truncated: bool,
}

/// The recording of every route: the queue into the writer thread.
#[derive(Debug)]
pub struct Recorder {
    queue: Arc<queue::Queue>,
    metrics: Arc<Metrics>,
    /// The files the configuration in force records to (`None` until a
    /// reload says): the writer closes the others.
    wanted: writer::Wanted,
}

/// What `admit` needs of the request.
pub struct RequestHead<'a> {
    pub route: &'a Arc<str>,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub request_id: &'a HeaderValue,
    pub trace_id: Option<&'a str>,
}

impl Recorder {
    /// Starts the writer thread.
    pub fn start(metrics: Arc<Metrics>) -> Arc<Self> {
        let queue = Arc::new(queue::Queue::new(QUEUE));
        let m = metrics.clone();
        let wanted = writer::Wanted::default();
        let w = wanted.clone();
        let q = queue.clone();
        let spawned = std::thread::Builder::new()
            .name("shadowgate-record".into())
            .spawn(move || writer::run(&q, m, w));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the record writer could not start; records will be dropped");
            queue.close();
        }
        Arc::new(Recorder {
            queue,
            metrics,
            wanted,
        })
    }

    /// The configuration in force records to `config`'s routes' files only
    /// (after a reload): the writer closes any other file it holds open
    /// within a second (after writing what is still queued for it).
    pub fn retain(&self, config: &Config) {
        let files = config
            .routes
            .iter()
            .filter_map(|r| r.record.as_ref().map(|c| c.file.clone()))
            .collect();
        *self.wanted.lock() = Some(files);
    }

    /// Whether this request is recorded under `config`: its method and the
    /// sampling share. `None` (nothing to do) for most requests.
    pub fn admit(
        self: &Arc<Self>,
        config: &Arc<RecordConfig>,
        head: RequestHead<'_>,
        settings: &Arc<Config>,
        memory: &Arc<MemoryBudget>,
    ) -> Option<Pending> {
        if let Some(methods) = &config.methods {
            if !methods.contains(head.method) {
                return None;
            }
        }
        if config.percent < 100.0 && fastrand::f64() * 100.0 >= config.percent {
            return None;
        }
        Pending::new(self.clone(), config.clone(), head, settings, memory)
    }

    /// Queues a line without waiting: `encode` writes it into this
    /// thread's lane of the queue and returns the reservation of the parts
    /// it was written from, which then holds the line until it is written
    /// (`queue::Queue::push`). A line that cannot be queued is dropped,
    /// counted.
    fn queue_line(
        &self,
        route: Arc<str>,
        config: Arc<RecordConfig>,
        encode: impl FnOnce(&mut Vec<u8>) -> Reservation,
    ) {
        if let Err((refused, route)) = self.queue.push(route, config, encode) {
            self.dropped(&route, refused.reason());
        }
    }

    fn calls_cut(&self, route: &str, n: u32) {
        self.metrics
            .record_calls_cut
            .get_or_create(&RecordLabels {
                route: route.to_string(),
            })
            .inc_by(u64::from(n));
    }

    pub(crate) fn dropped(&self, route: &str, reason: &str) {
        dropped(&self.metrics, route, reason);
    }

    /// Writes out everything queued so far and waits (at most `within`)
    /// for the writer to confirm; called at shutdown.
    pub fn flush(&self, within: Duration) {
        let (ack, done) = sync_channel(1);
        if self.queue.flush(ack).is_err() {
            return;
        }
        let _ = done.recv_timeout(within);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.queue.close();
    }
}

pub(crate) fn dropped(metrics: &Metrics, route: &str, reason: &str) {
    metrics
        .record_dropped
        .get_or_create(&RecordDropLabels {
            route: route.to_string(),
            reason: reason.to_string(),
        })
        .inc();
}

pub(crate) fn written(metrics: &Metrics, route: &str, n: u64) {
    metrics
        .record_written
        .get_or_create(&RecordLabels {
            route: route.to_string(),
        })
        .inc_by(n);
}

/// Recorded exchanges, one at a time, as read from a file.
pub type Source = Box<dyn Iterator<Item = Result<read::Exchange, read::LineError>> + Send>;

/// Opens a recording for reading, streamed: JSON lines (plain or zstd) or
/// a HAR 1.2 file, whose exchanges are named route `har`
/// (`docs/replay.md`, "HAR").
pub fn open(path: &Path) -> Result<Source, read::OpenError> {
    open_named(path, None)
}

/// As [`open`]; `har_route` names the exchanges of a HAR file (default:
/// the entry's own `_route` when shadowgate wrote it, else `har`).
///
/// A HAR is told by the extension `.har`, or, when the extension is
/// neither that nor one of a recording (`.jsonl`, `.ndjson`, `.zst`), by
/// its first bytes: a JSON object whose first key is `log`. The bytes
/// looked at are the file's first buffer, read once and handed on.
pub fn open_named(path: &Path, har_route: Option<&str>) -> Result<Source, read::OpenError> {
    let io = |source| read::OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::with_capacity(64 << 10, File::open(path).map_err(io)?);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_har = match ext.as_deref() {
        Some("har") => true,
        Some("jsonl" | "ndjson" | "zst") => false,
        _ => har::looks_like_har(file.fill_buf().map_err(io)?),
    };
    if is_har {
        Ok(Box::new(har::Reader::start(
            path,
            Box::new(file),
            har_route,
        )?))
    } else {
        Ok(Box::new(read::Reader::from_file(path, file)?))
    }
}

/// `shadowgate record export FILE --har OUT`: the recording at `input`
/// (JSON lines, plain or zstd; a HAR also reads) written to `out` as one
/// HAR 1.2 document, an entry at a time. The document is written next to
/// `out` and renamed over it when complete.
pub fn export_har(input: &Path, out: &Path) -> Result<export::ExportSummary, export::ExportError> {
    let source = open(input)?;
    let io = |source| export::ExportError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = File::create(&partial).map_err(io)?;
    let mut writer = BufWriter::with_capacity(64 << 10, file);
    let written = export::write_har(source, &mut writer, out).and_then(|summary| {
        drop(writer);
        std::fs::rename(&partial, out).map_err(io)?;
        Ok(summary)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}
