//! The queue between the request path and the record writer: one shared
//! batch of encoded lines under a short lock. Hand-written rather than a
//! channel on purpose:
//!
//! - a channel (std's `sync_channel` was used first) wakes the parked
//!   writer thread on every record, and at `percent: 100` those wake-ups
//!   (a futex call and a thread switch per request) were most of
//!   recording's cost (`bench/record.py`: 0.73× throughput). Here the
//!   writer wakes when `WAKE_AT` records have gathered, when asked to
//!   flush, or by its own timer every `LINGER`, and takes the whole batch
//!   at once (the two batches are swapped, so neither is reallocated);
//! - each line is copied into the batch's one byte buffer, so no
//!   allocation made on a serving thread is freed on the writer thread.
//!   Sending each line as its own `Vec` did that, and glibc then takes the
//!   owning arena's lock for every free (`_int_free`, futex waits: 0.86
//!   futex calls per recorded POST against 0.55 without recording).

use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use crate::config::record::RecordConfig;
use crate::memory::Reservation;

/// Records gathered that wake the writer before its timer.
const WAKE_AT: usize = 256;

/// How long the writer lets records gather.
pub(super) const LINGER: Duration = Duration::from_millis(20);

/// Bytes of buffer a batch keeps between uses; a larger one (after a
/// burst of large records) is freed once written.
const KEEP_BYTES: usize = 4 << 20;

/// One line in a batch: where it goes, and its bytes reserved from the
/// shadow memory budget until written.
pub(super) struct Entry {
    pub(super) route: Arc<str>,
    pub(super) config: Arc<RecordConfig>,
    /// Where the line ends in the batch's bytes.
    end: usize,
    _held: Reservation,
}

/// Lines (their bytes back to back) and flush requests, in the order
/// they were queued.
#[derive(Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    pub(super) flushes: Vec<SyncSender<()>>,
}

/// Lines in a row for the same file: their bytes are one slice.
pub(super) struct Run<'a> {
    pub(super) entries: &'a [Entry],
    pub(super) bytes: &'a [u8],
    /// Where `bytes` starts in the batch.
    base: usize,
}

impl Run<'_> {
    /// Each line with its bytes.
    pub(super) fn lines(&self) -> impl Iterator<Item = (&Entry, &[u8])> {
        let mut start = 0;
        self.entries.iter().map(move |e| {
            let end = e.end - self.base;
            let line = &self.bytes[start..end];
            start = end;
            (e, line)
        })
    }
}

impl Batch {
    /// The lines, as runs of lines in a row for the same file.
    pub(super) fn runs(&self) -> impl Iterator<Item = Run<'_>> {
        let mut entries = &self.entries[..];
        let mut base = 0;
        std::iter::from_fn(move || {
            let first = entries.first()?;
            let n = entries
                .iter()
                .take_while(|e| Arc::ptr_eq(&e.config, &first.config))
                .count();
            let (run, rest) = entries.split_at(n);
            entries = rest;
            let end = run.last().map_or(base, |e| e.end);
            let out = Run {
                entries: run,
                bytes: &self.bytes[base..end],
                base,
            };
            base = end;
            Some(out)
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.flushes.is_empty()
    }

    /// Empties the batch (its reservations returned), keeping a buffer of
    /// up to `KEEP_BYTES` for the next use.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.flushes.clear();
        self.bytes.clear();
        if self.bytes.capacity() > KEEP_BYTES {
            self.bytes = Vec::new();
        }
    }
}

#[derive(Default)]
struct Inner {
    batch: Batch,
    closed: bool,
}

/// Bounded in records; a flush request is always taken.
pub(super) struct Queue {
    inner: parking_lot::Mutex<Inner>,
    ready: parking_lot::Condvar,
    capacity: usize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Why a line was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    Full,
    Closed,
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            inner: parking_lot::Mutex::new(Inner::default()),
            ready: parking_lot::Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a copy of `line` (its bytes held by `held`) without waiting.
    pub(super) fn push(
        &self,
        line: &[u8],
        route: &Arc<str>,
        config: &Arc<RecordConfig>,
        held: Reservation,
    ) -> Result<(), Refused> {
        let wake = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err(Refused::Closed);
            }
            let batch = &mut inner.batch;
            if batch.entries.len() >= self.capacity {
                return Err(Refused::Full);
            }
            batch.bytes.extend_from_slice(line);
            batch.entries.push(Entry {
                route: route.clone(),
                config: config.clone(),
                end: batch.bytes.len(),
                _held: held,
            });
            batch.entries.len() == WAKE_AT
        };
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Asks the writer to write out everything queued before it and then
    /// to answer on `ack`.
    pub(super) fn flush(&self, ack: SyncSender<()>) -> Result<(), Refused> {
        {
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err(Refused::Closed);
            }
            inner.batch.flushes.push(ack);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Swaps what is queued into `out` (empty), waiting at most `wait` for
    /// something; false once the queue is closed and emptied.
    pub(super) fn take(&self, out: &mut Batch, wait: Duration) -> bool {
        let mut inner = self.inner.lock();
        if inner.batch.is_empty() && !inner.closed {
            self.ready.wait_for(&mut inner, wait);
        }
        std::mem::swap(&mut inner.batch, out);
        !(inner.closed && out.is_empty())
    }

    /// No more messages: the writer finishes what is queued and stops.
    pub(super) fn close(&self) {
        self.inner.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBudget;

    fn config() -> Arc<RecordConfig> {
        Arc::new(RecordConfig::for_tests("/nonexistent/r.jsonl"))
    }

    #[test]
    fn lines_come_out_whole_and_in_order_and_the_bound_holds() {
        let memory = MemoryBudget::new(1 << 20, None);
        let q = Queue::new(2);
        let (route, cfg) = (Arc::<str>::from("r"), config());
        let held = |n| memory.reserve(n).unwrap();
        q.push(b"one\n", &route, &cfg, held(4)).unwrap();
        q.push(b"three\n", &route, &cfg, held(6)).unwrap();
        assert_eq!(
            q.push(b"x\n", &route, &cfg, held(2)),
            Err(Refused::Full),
            "over the bound"
        );
        let mut out = Batch::default();
        assert!(q.take(&mut out, Duration::ZERO));
        let runs: Vec<_> = out.runs().collect();
        assert_eq!(runs.len(), 1, "one file: one run");
        assert_eq!(runs[0].bytes, b"one\nthree\n");
        let lines: Vec<&[u8]> = runs[0].lines().map(|(_, l)| l).collect();
        assert_eq!(lines, [&b"one\n"[..], &b"three\n"[..]]);
        drop(runs);
        assert_eq!(memory.in_use(), 10, "held until written");
        out.clear();
        assert_eq!(memory.in_use(), 0);
        // The swapped-in batch is empty again: room for more.
        q.push(b"x\n", &route, &cfg, held(2)).unwrap();
    }

    #[test]
    fn runs_split_where_the_file_changes() {
        let memory = MemoryBudget::new(1 << 20, None);
        let q = Queue::new(16);
        let route = Arc::<str>::from("r");
        let (a, b) = (config(), config());
        for (line, cfg) in [
            (&b"a1\n"[..], &a),
            (b"a2\n", &a),
            (b"b1\n", &b),
            (b"a3\n", &a),
        ] {
            q.push(line, &route, cfg, memory.reserve(line.len()).unwrap())
                .unwrap();
        }
        let mut out = Batch::default();
        q.take(&mut out, Duration::ZERO);
        let runs: Vec<(usize, &[u8])> = out.runs().map(|r| (r.entries.len(), r.bytes)).collect();
        assert_eq!(
            runs,
            [(2, &b"a1\na2\n"[..]), (1, &b"b1\n"[..]), (1, &b"a3\n"[..])]
        );
        let last: Vec<_> = out
            .runs()
            .last()
            .unwrap()
            .lines()
            .map(|(_, l)| l.to_vec())
            .collect();
        assert_eq!(last, [b"a3\n".to_vec()]);
    }

    #[test]
    fn flushes_are_always_taken_and_a_closed_queue_ends() {
        let q = Queue::new(1);
        let ack = || std::sync::mpsc::sync_channel(1).0;
        // A flush is not a record: it never counts against the bound.
        assert!(q.flush(ack()).is_ok());
        assert!(q.flush(ack()).is_ok());
        let mut out = Batch::default();
        assert!(q.take(&mut out, Duration::ZERO));
        assert_eq!(out.flushes.len(), 2);
        out.clear();
        // Nothing queued: `take` comes back empty after at most `wait`.
        assert!(q.take(&mut out, Duration::from_millis(10)));
        assert!(out.is_empty());
        q.close();
        assert_eq!(q.flush(ack()), Err(Refused::Closed));
        assert!(!q.take(&mut out, Duration::from_secs(5)));
    }
}
