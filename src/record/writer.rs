//! The writer thread: the records' lines from the queue (encoded by the
//! threads that served them, `line`) are written to their route's file
//! through a buffer, flushed at
//! least every second and when asked (shutdown), rotated by size keeping
//! `max_files`, zstd-compressed when the file name ends in `.zst`. A file
//! that cannot be opened or written drops its records, counted
//! (`write_failed`); opening is retried at most once a second.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::queue::{Batch, Queue, Run, LINGER};
use super::{dropped, written};
use crate::config::record::RecordConfig;
use crate::telemetry::metrics::Metrics;

/// Longest time a written record waits in a buffer.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Least time between two attempts to open a file that failed.
const RETRY_OPEN: Duration = Duration::from_secs(1);

/// Counts the bytes that reach the file.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Out {
    Plain(Counting<BufWriter<File>>),
    Zstd(zstd::Encoder<'static, Counting<BufWriter<File>>>),
}

impl Out {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.write_all(data),
            Out::Zstd(w) => w.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.flush(),
            Out::Zstd(w) => w.flush(),
        }
    }

    /// Bytes in the file (written so far, and what it held when opened).
    fn size(&self) -> u64 {
        match self {
            Out::Plain(w) => w.bytes,
            Out::Zstd(w) => w.get_ref().bytes,
        }
    }

    /// Flushed and, compressed, its frame ended (so the file decodes).
    fn close(self) -> std::io::Result<()> {
        match self {
            Out::Plain(mut w) => w.flush(),
            Out::Zstd(w) => w.finish()?.flush(),
        }
    }
}

/// One record file.
struct Sink {
    path: PathBuf,
    config: Arc<RecordConfig>,
    out: Option<Out>,
    failed_at: Option<Instant>,
    /// Records written to the buffer since the last flush, by route.
    unflushed: HashMap<Arc<str>, u64>,
}

impl Sink {
    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let bytes = file.metadata()?.len();
        let w = Counting {
            inner: BufWriter::with_capacity(64 << 10, file),
            bytes,
        };
        self.out = Some(if self.config.zstd {
            Out::Zstd(zstd::Encoder::new(w, 3)?)
        } else {
            Out::Plain(w)
        });
        Ok(())
    }

    fn write(&mut self, metrics: &Metrics, route: &Arc<str>, line: &[u8]) {
        if self.out.is_none() {
            if self.failed_at.is_some_and(|t| t.elapsed() < RETRY_OPEN) {
                dropped(metrics, route, "write_failed");
                return;
            }
            if let Err(e) = self.open() {
                tracing::warn!(file = %self.path.display(), error = %e, "record file cannot be opened; records are dropped");
                self.failed_at = Some(Instant::now());
                dropped(metrics, route, "write_failed");
                return;
            }
        }
        let full = self.out.as_ref().is_some_and(|o| {
            o.size() > 0 && o.size() + line.len() as u64 > self.config.max_file_bytes
        });
        if full {
            self.rotate(metrics);
            if self.out.is_none() {
                dropped(metrics, route, "write_failed");
                return;
            }
        }
        let res = match self.out.as_mut() {
            Some(out) => out.write_all(line),
            None => return,
        };
        match res {
            Ok(()) => *self.unflushed.entry(route.clone()).or_default() += 1,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "record file write failed; records are dropped");
                dropped(metrics, route, "write_failed");
                self.fail(metrics);
            }
        }
    }

    /// A run of lines: written with one call when the file is open and
    /// takes them all without rotating (the buffer then passes a large
    /// run straight to the file instead of copying it), else line by line.
    fn write_run(&mut self, metrics: &Metrics, run: &Run<'_>) {
        let fits = self
            .out
            .as_ref()
            .is_some_and(|o| o.size() + run.bytes.len() as u64 <= self.config.max_file_bytes);
        if !fits {
            for (entry, line) in run.lines() {
                self.write(metrics, &entry.route, line);
            }
            return;
        }
        let res = match self.out.as_mut() {
            Some(out) => out.write_all(run.bytes),
            None => return,
        };
        match res {
            Ok(()) => {
                // Counted per route, once per stretch of the same route.
                let mut entries = run.entries;
                while let Some(first) = entries.first() {
                    let n = entries
                        .iter()
                        .take_while(|e| Arc::ptr_eq(&e.route, &first.route))
                        .count();
                    *self.unflushed.entry(first.route.clone()).or_default() += n as u64;
                    entries = &entries[n..];
                }
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "record file write failed; records are dropped");
                for entry in run.entries {
                    dropped(metrics, &entry.route, "write_failed");
                }
                self.fail(metrics);
            }
        }
    }

    /// The file is closed; what its buffer held is counted as dropped.
    fn fail(&mut self, metrics: &Metrics) {
        self.out = None;
        self.failed_at = Some(Instant::now());
        for (route, n) in self.unflushed.drain() {
            for _ in 0..n {
                dropped(metrics, &route, "write_failed");
            }
        }
    }

    /// Flushes (and with `close`, ends the file so it decodes whole).
    fn flush(&mut self, metrics: &Metrics, close: bool) {
        let res = match (self.out.take(), close) {
            (None, _) => Ok(()),
            (Some(out), true) => out.close(),
            (Some(mut out), false) => {
                let r = out.flush();
                self.out = Some(out);
                r
            }
        };
        match res {
            Ok(()) => {
                for (route, n) in self.unflushed.drain() {
                    written(metrics, &route, n);
                }
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "record file flush failed; records are dropped");
                self.fail(metrics);
            }
        }
    }

    /// The file becomes `<file>.1` (older ones shifted up, the oldest
    /// beyond `max_files` deleted) and a new one is opened.
    fn rotate(&mut self, metrics: &Metrics) {
        self.flush(metrics, true);
        let keep = self.config.max_files.max(1);
        if keep == 1 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(numbered(&self.path, keep - 1));
            for i in (1..keep - 1).rev() {
                let _ = std::fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1));
            }
            let _ = std::fs::rename(&self.path, numbered(&self.path, 1));
        }
        if let Err(e) = self.open() {
            tracing::warn!(file = %self.path.display(), error = %e, "record file cannot be opened; records are dropped");
            self.failed_at = Some(Instant::now());
        }
    }
}

/// The files still configured (`None`: all), shared with the recorder.
pub(super) type Wanted = Arc<parking_lot::Mutex<Option<HashSet<PathBuf>>>>;

/// Closes the files no route records to any more (after a reload).
fn close_unwanted(sinks: &mut HashMap<PathBuf, Sink>, metrics: &Metrics, wanted: &Wanted) {
    let wanted = wanted.lock();
    let Some(files) = wanted.as_ref() else {
        return;
    };
    sinks.retain(|path, sink| {
        let keep = files.contains(path);
        if !keep {
            sink.flush(metrics, true);
        }
        keep
    });
}

/// `<file>.<n>`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The writer loop; ends when every sender is gone.
pub(super) fn run(queue: &Queue, metrics: Arc<Metrics>, wanted: Wanted) {
    let mut sinks: HashMap<PathBuf, Sink> = HashMap::new();
    let mut last_flush = Instant::now();
    let mut spare = Batch::default();
    let mut flushes = Vec::new();
    loop {
        let wait = FLUSH_EVERY.saturating_sub(last_flush.elapsed()).min(LINGER);
        let open = queue.take(wait, &mut spare, &mut flushes, |batch| {
            for run in batch.runs() {
                write(&mut sinks, &metrics, &run);
            }
        });
        // A flush follows every line queued before it (they were handed
        // over by this take or an earlier one).
        if !flushes.is_empty() {
            sinks.values_mut().for_each(|s| s.flush(&metrics, true));
            last_flush = Instant::now();
            for ack in flushes.drain(..) {
                let _ = ack.send(());
            }
        }
        if !open {
            sinks.values_mut().for_each(|s| s.flush(&metrics, true));
            return;
        }
        if last_flush.elapsed() >= FLUSH_EVERY {
            sinks.values_mut().for_each(|s| s.flush(&metrics, false));
            close_unwanted(&mut sinks, &metrics, &wanted);
            last_flush = Instant::now();
        }
    }
}

fn write(sinks: &mut HashMap<PathBuf, Sink>, metrics: &Metrics, run: &Run<'_>) {
    let Some(first) = run.entries.first() else {
        return;
    };
    let config = &first.config;
    let sink = sinks.entry(config.file.clone()).or_insert_with(|| Sink {
        path: config.file.clone(),
        config: config.clone(),
        out: None,
        failed_at: None,
        unflushed: HashMap::new(),
    });
    if sink.config != *config && sink.config.zstd == config.zstd {
        sink.config = config.clone();
    }
    sink.write_run(metrics, run);
}
