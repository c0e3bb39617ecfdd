//! The queue between the request path and the record writer: a batch of
//! encoded lines per serving thread (a lane), each under its own lock.
//! Hand-written rather than a channel on purpose:
//!
//! - a channel (std's `sync_channel` was used first) wakes the parked
//!   writer thread on every record, and at `percent: 100` those wake-ups
//!   (a futex call and a thread switch per request) were most of
//!   recording's cost (`bench/record.py`: 0.73× throughput). Here the
//!   writer wakes when a lane has gathered `WAKE_AT` records or
//!   `WAKE_BYTES` bytes, when asked
//!   to flush, or by its own timer every `LINGER`, and takes each lane's
//!   whole batch at once (swapped with an empty one, so neither is
//!   reallocated);
//! - a line is encoded straight into its thread's lane (`Queue::push`),
//!   so no allocation made on a serving thread is freed on the writer
//!   thread (sending each line as its own `Vec` did that, and glibc then
//!   takes the owning arena's lock for every free: 0.86 futex calls per
//!   recorded POST against 0.55 without recording), and a line is not
//!   copied again into a shared batch (one batch under one lock for every
//!   thread was used until session 11: per 4 KiB POST record a 5 KiB copy
//!   and a lock whose cache line every serving thread wrote);
//! - a lane's lock is only ever contended by the writer's swap, every
//!   `LINGER` at most. Lines of one lane keep their order; lanes are
//!   written one after another, so a file holds the records of a 20 ms
//!   window grouped by thread (each line carries its own `time`; lines
//!   were already in the order answers ended, not requests began).
//!
//! Lanes are per queue and per thread (tests run many proxies, each with
//! its own queue, in one process): a thread finds its lane for a queue in
//! a short thread-local list, made on its first record. The writer drops
//! the lanes of threads that have ended once they are empty; a thread
//! drops its entries for queues that are gone when it makes a new lane.

use std::cell::RefCell;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::config::record::RecordConfig;
use crate::memory::Reservation;

/// Records gathered in a lane that wake the writer before its timer.
const WAKE_AT: usize = 256;

/// How long the writer lets records gather.
pub(super) const LINGER: Duration = Duration::from_millis(20);

/// Bytes gathered in a lane that wake the writer before its timer: a
/// lane's buffer stays about this size (it is written while still in the
/// cache, and a machine with many serving threads keeps little memory in
/// lanes).
const WAKE_BYTES: usize = 512 << 10;

/// Bytes of buffer a batch keeps between uses (each lane's, and the
/// writer's spare); a larger one (after a large record) is freed once
/// written.
const KEEP_BYTES: usize = 1 << 20;

/// One line in a batch: where it goes, and its bytes reserved from the
/// shadow memory budget until written.
pub(super) struct Entry {
    pub(super) route: Arc<str>,
    pub(super) config: Arc<RecordConfig>,
    /// Where the line ends in the batch's bytes.
    end: usize,
    _held: Reservation,
}

/// Lines, their bytes back to back, in the order they were queued.
#[derive(Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
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
        self.entries.is_empty()
    }

    /// Empties the batch (its reservations returned), keeping a buffer of
    /// up to `KEEP_BYTES` for the next use.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes.clear();
        if self.bytes.capacity() > KEEP_BYTES {
            self.bytes = Vec::new();
        }
    }
}

/// One serving thread's lines for one queue.
#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    batch: Batch,
    /// The writer has taken its last batch: nothing more is taken.
    closed: bool,
}

/// What the writer is woken for, and the lanes it takes from.
#[derive(Default)]
struct Control {
    lanes: Vec<Arc<Lane>>,
    flushes: Vec<SyncSender<()>>,
    /// A lane has gathered `WAKE_AT` records or `WAKE_BYTES` bytes.
    wake: bool,
    closed: bool,
}

thread_local! {
    /// This thread's lane of each queue it has recorded to.
    static LANES: RefCell<Vec<(Weak<Queue>, Arc<Lane>)>> = const { RefCell::new(Vec::new()) };
}

/// Bounded in records per lane (per serving thread); a flush request is
/// always taken.
pub(super) struct Queue {
    control: Mutex<Control>,
    ready: Condvar,
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
    /// This thread's lane holds `capacity` records: the writer is behind.
    Full,
    /// The writer has stopped (or never started).
    Closed,
    /// The line is longer than its reservation, which could not grow.
    OverBudget,
}

impl Refused {
    /// The reason a record dropped for this is counted under.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Refused::Full => "queue_full",
            Refused::Closed => "write_failed",
            Refused::OverBudget => "over_budget",
        }
    }
}

/// `held` made to hold `len` bytes: grown when the line is longer, and
/// the rest given back when it holds more than twice the line (a short
/// line holds at most twice its bytes: the parts start at 1 KiB, a GET's
/// line is ~650 bytes). Taking over the parts' reservation spares a
/// reservation and its return on the budget's shared counter per record.
/// False when it could not grow.
fn fit(held: &mut Reservation, len: usize) -> bool {
    match held.bytes().checked_sub(len) {
        Some(spare) => {
            if spare > len {
                held.shrink_to(len);
            }
            true
        }
        None => held.grow(len - held.bytes()),
    }
}

impl Queue {
    /// Holds up to `capacity` records per serving thread.
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            control: Mutex::new(Control::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a line without waiting: `encode` appends it (newline
    /// included) to this thread's lane and returns the reservation it was
    /// written from, which is fitted to the line and held until it is
    /// written. `encode` is not called when the line is refused for room
    /// or because the queue is closed; the route comes back with a refusal.
    pub(super) fn push(
        self: &Arc<Self>,
        route: Arc<str>,
        config: Arc<RecordConfig>,
        encode: impl FnOnce(&mut Vec<u8>) -> Reservation,
    ) -> Result<(), (Refused, Arc<str>)> {
        let lane = match self.lane() {
            Ok(lane) => lane,
            Err(refused) => return Err((refused, route)),
        };
        let wake = {
            let mut state = lane.state.lock();
            if state.closed {
                return Err((Refused::Closed, route));
            }
            let batch = &mut state.batch;
            if batch.entries.len() >= self.capacity {
                return Err((Refused::Full, route));
            }
            let start = batch.bytes.len();
            let mut held = encode(&mut batch.bytes);
            if !fit(&mut held, batch.bytes.len() - start) {
                batch.bytes.truncate(start);
                return Err((Refused::OverBudget, route));
            }
            batch.entries.push(Entry {
                route,
                config,
                end: batch.bytes.len(),
                _held: held,
            });
            // Each threshold wakes the writer once, when it is crossed.
            let crossed = start < WAKE_BYTES && batch.bytes.len() >= WAKE_BYTES;
            batch.entries.len() == WAKE_AT || crossed
        };
        if wake {
            self.control.lock().wake = true;
            self.ready.notify_one();
        }
        Ok(())
    }

    /// This thread's lane, made on its first line.
    fn lane(self: &Arc<Self>) -> Result<Arc<Lane>, Refused> {
        LANES
            .try_with(|lanes| {
                // Only borrowed here: a failed borrow (or a thread being
                // torn down) is a refusal, not a panic.
                let mut lanes = lanes.try_borrow_mut().map_err(|_| Refused::Closed)?;
                let mine = lanes
                    .iter()
                    .find(|(q, _)| std::ptr::eq(q.as_ptr(), Arc::as_ptr(self)));
                if let Some((_, lane)) = mine {
                    return Ok(lane.clone());
                }
                let lane = self.new_lane()?;
                // A `Weak` keeps its queue's allocation: no address is
                // reused while an entry names it.
                lanes.retain(|(q, _)| q.strong_count() > 0);
                lanes.push((Arc::downgrade(self), lane.clone()));
                Ok(lane)
            })
            .unwrap_or(Err(Refused::Closed))
    }

    /// A lane for this thread, unless the queue is closed.
    fn new_lane(&self) -> Result<Arc<Lane>, Refused> {
        let mut control = self.control.lock();
        if control.closed {
            return Err(Refused::Closed);
        }
        let lane = Arc::<Lane>::default();
        control.lanes.push(lane.clone());
        Ok(lane)
    }

    /// Asks the writer to write out everything queued before it and then
    /// to answer on `ack`.
    pub(super) fn flush(&self, ack: SyncSender<()>) -> Result<(), Refused> {
        {
            let mut control = self.control.lock();
            if control.closed {
                return Err(Refused::Closed);
            }
            control.flushes.push(ack);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Waits at most `wait` for something to do (a lane full enough, a
    /// flush, the close), moves the flush requests made so far into
    /// `flushes`, then hands each lane's lines to `write` in turn: every
    /// line queued before one of those flush requests is among them.
    /// `spare` (empty) is swapped with each lane's batch and emptied after
    /// `write`. False once the queue is closed: then every line queued has
    /// been handed over and no more is taken.
    pub(super) fn take(
        &self,
        wait: Duration,
        spare: &mut Batch,
        flushes: &mut Vec<SyncSender<()>>,
        mut write: impl FnMut(&Batch),
    ) -> bool {
        let (lanes, closed) = {
            let mut control = self.control.lock();
            if !control.wake && control.flushes.is_empty() && !control.closed {
                self.ready.wait_for(&mut control, wait);
            }
            control.wake = false;
            flushes.append(&mut control.flushes);
            // The lanes of threads that have ended (only this list holds
            // them), once written out.
            control
                .lanes
                .retain(|lane| Arc::strong_count(lane) > 1 || !lane.state.lock().batch.is_empty());
            (control.lanes.clone(), control.closed)
        };
        for lane in &lanes {
            {
                let mut state = lane.state.lock();
                std::mem::swap(&mut state.batch, spare);
                if closed {
                    state.closed = true;
                    state.batch = Batch::default();
                }
            }
            if !spare.is_empty() {
                write(spare);
            }
            spare.clear();
        }
        !closed
    }

    /// No more lines: the writer hands over what is queued and stops.
    pub(super) fn close(&self) {
        self.control.lock().closed = true;
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

    /// Queues `line`, its reservation `held` bytes of `memory`.
    fn push(
        q: &Arc<Queue>,
        memory: &Arc<MemoryBudget>,
        line: &[u8],
        held: usize,
        cfg: &Arc<RecordConfig>,
    ) -> Result<(), Refused> {
        let held = memory.reserve(held).unwrap();
        q.push(Arc::from("r"), cfg.clone(), |out| {
            out.extend_from_slice(line);
            held
        })
        .map_err(|(refused, route)| {
            assert_eq!(&*route, "r", "the route comes back");
            refused
        })
    }

    /// Each batch handed to the writer, as its lines.
    fn take_lines(q: &Queue, flushes: &mut Vec<SyncSender<()>>) -> (bool, Vec<Vec<Vec<u8>>>) {
        let mut batches = Vec::new();
        let open = q.take(Duration::ZERO, &mut Batch::default(), flushes, |b| {
            batches.push(
                b.runs()
                    .flat_map(|r| r.lines().map(|(_, l)| l.to_vec()).collect::<Vec<_>>())
                    .collect(),
            );
        });
        (open, batches)
    }

    fn lanes(q: &Queue) -> usize {
        q.control.lock().lanes.len()
    }

    #[test]
    fn lines_come_out_whole_and_in_order_and_the_bound_holds() {
        let memory = MemoryBudget::new(1 << 20, None);
        let q = Arc::new(Queue::new(2));
        let cfg = config();
        push(&q, &memory, b"one\n", 4, &cfg).unwrap();
        // Held with room to spare (not more than twice the line): kept.
        push(&q, &memory, b"three\n", 10, &cfg).unwrap();
        assert_eq!(
            push(&q, &memory, b"x\n", 2, &cfg),
            Err(Refused::Full),
            "over the bound"
        );
        assert_eq!(
            memory.in_use(),
            14,
            "the refused line's held bytes returned"
        );
        let mut writes = 0;
        let open = q.take(
            Duration::ZERO,
            &mut Batch::default(),
            &mut Vec::new(),
            |b| {
                writes += 1;
                let runs: Vec<_> = b.runs().collect();
                assert_eq!(runs.len(), 1, "one file: one run");
                assert_eq!(runs[0].bytes, b"one\nthree\n");
                let lines: Vec<&[u8]> = runs[0].lines().map(|(_, l)| l).collect();
                assert_eq!(lines, [&b"one\n"[..], &b"three\n"[..]]);
                assert_eq!(memory.in_use(), 14, "held until written");
            },
        );
        assert!(open);
        assert_eq!(writes, 1);
        assert_eq!(memory.in_use(), 0, "returned once written");
        // The lane is empty again: room for more.
        push(&q, &memory, b"x\n", 2, &cfg).unwrap();
    }

    #[test]
    fn a_line_is_held_as_long_as_it_is_and_refused_when_that_cannot_be_held() {
        let memory = MemoryBudget::new(100, None);
        let q = Arc::new(Queue::new(16));
        let cfg = config();
        // Twice the line or more: the rest is given back at once.
        push(&q, &memory, b"ab\n", 50, &cfg).unwrap();
        assert_eq!(memory.in_use(), 3);
        // Longer than its reservation: grown.
        push(&q, &memory, &[b'x'; 40], 10, &cfg).unwrap();
        assert_eq!(memory.in_use(), 43);
        // Longer than the budget can grow to: refused, its bytes taken out.
        assert_eq!(
            push(&q, &memory, &[b'y'; 80], 10, &cfg),
            Err(Refused::OverBudget)
        );
        assert_eq!(memory.in_use(), 43);
        push(&q, &memory, b"c\n", 2, &cfg).unwrap();
        let (_, batches) = take_lines(&q, &mut Vec::new());
        assert_eq!(
            batches,
            [vec![b"ab\n".to_vec(), vec![b'x'; 40], b"c\n".to_vec()]]
        );
        assert_eq!(memory.in_use(), 0);
    }

    #[test]
    fn runs_split_where_the_file_changes() {
        let memory = MemoryBudget::new(1 << 20, None);
        let q = Arc::new(Queue::new(16));
        let (a, b) = (config(), config());
        for (line, cfg) in [
            (&b"a1\n"[..], &a),
            (b"a2\n", &a),
            (b"b1\n", &b),
            (b"a3\n", &a),
        ] {
            push(&q, &memory, line, line.len(), cfg).unwrap();
        }
        q.take(
            Duration::ZERO,
            &mut Batch::default(),
            &mut Vec::new(),
            |out| {
                let runs: Vec<(usize, &[u8])> =
                    out.runs().map(|r| (r.entries.len(), r.bytes)).collect();
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
            },
        );
    }

    #[test]
    fn each_thread_has_its_own_lane_and_bound_and_an_ended_threads_lane_goes_once_written() {
        let memory = MemoryBudget::new(1 << 20, None);
        let q = Arc::new(Queue::new(3));
        let cfg = config();
        let pushes = |tag: u8| {
            let (q, memory, cfg) = (q.clone(), memory.clone(), cfg.clone());
            std::thread::spawn(move || {
                (0..4)
                    .map(|i| push(&q, &memory, &[tag, b'0' + i, b'\n'], 3, &cfg).is_ok())
                    .collect::<Vec<_>>()
            })
        };
        let (a, b) = (pushes(b'a'), pushes(b'b'));
        // Three each: the bound is per thread.
        assert_eq!(a.join().unwrap(), [true, true, true, false]);
        assert_eq!(b.join().unwrap(), [true, true, true, false]);
        assert_eq!(lanes(&q), 2);
        let (open, mut batches) = take_lines(&q, &mut Vec::new());
        assert!(open);
        batches.sort();
        let line = |tag: u8, i: u8| vec![tag, b'0' + i, b'\n'];
        assert_eq!(
            batches,
            [
                vec![line(b'a', 0), line(b'a', 1), line(b'a', 2)],
                vec![line(b'b', 0), line(b'b', 1), line(b'b', 2)],
            ],
            "one batch per lane, each in its thread's order"
        );
        // Both threads have ended and their lanes are written: let go.
        take_lines(&q, &mut Vec::new());
        assert_eq!(lanes(&q), 0);
        assert_eq!(memory.in_use(), 0);
    }

    #[test]
    fn a_thread_keeps_a_lane_per_queue_and_forgets_the_queues_that_are_gone() {
        let memory = MemoryBudget::new(1 << 20, None);
        let cfg = config();
        let (q1, q2) = (Arc::new(Queue::new(4)), Arc::new(Queue::new(4)));
        push(&q1, &memory, b"1\n", 2, &cfg).unwrap();
        push(&q2, &memory, b"2\n", 2, &cfg).unwrap();
        assert_eq!(take_lines(&q1, &mut Vec::new()).1, [vec![b"1\n".to_vec()]]);
        assert_eq!(take_lines(&q2, &mut Vec::new()).1, [vec![b"2\n".to_vec()]]);
        let known = || LANES.with_borrow(|l| l.len());
        assert_eq!(known(), 2);
        drop(q1);
        // The next new lane (for a third queue) forgets the dropped one.
        let q3 = Arc::new(Queue::new(4));
        push(&q3, &memory, b"3\n", 2, &cfg).unwrap();
        assert_eq!(known(), 2);
        push(&q2, &memory, b"4\n", 2, &cfg).unwrap();
        assert_eq!(take_lines(&q2, &mut Vec::new()).1, [vec![b"4\n".to_vec()]]);
    }

    #[test]
    fn flushes_are_always_taken_and_a_closed_queue_ends_with_every_line_written() {
        let memory = MemoryBudget::new(1 << 20, None);
        let cfg = config();
        let q = Arc::new(Queue::new(1));
        let ack = || std::sync::mpsc::sync_channel(1).0;
        // A flush is not a record: it never counts against the bound.
        push(&q, &memory, b"x\n", 2, &cfg).unwrap();
        assert!(q.flush(ack()).is_ok());
        assert!(q.flush(ack()).is_ok());
        let mut flushes = Vec::new();
        let (open, batches) = take_lines(&q, &mut flushes);
        assert!(open);
        assert_eq!(flushes.len(), 2);
        assert_eq!(batches, [vec![b"x\n".to_vec()]], "written with its flush");
        flushes.clear();
        // Nothing queued: `take` comes back empty after at most `wait`.
        let started = tokio::time::Instant::now();
        let mut writes = 0;
        assert!(q.take(
            Duration::from_millis(10),
            &mut Batch::default(),
            &mut flushes,
            |_| writes += 1
        ));
        assert!(started.elapsed() >= Duration::from_millis(10));
        assert_eq!((writes, flushes.len()), (0, 0));
        // Queued before the close: handed over by the last take.
        push(&q, &memory, b"y\n", 2, &cfg).unwrap();
        q.close();
        assert_eq!(q.flush(ack()), Err(Refused::Closed));
        let (open, batches) = take_lines(&q, &mut flushes);
        assert!(!open);
        assert_eq!(batches, [vec![b"y\n".to_vec()]]);
        assert_eq!(push(&q, &memory, b"z\n", 2, &cfg), Err(Refused::Closed));
        // A thread that never had a lane is refused too.
        let (q2, m2, c2) = (q.clone(), memory.clone(), cfg.clone());
        let other = std::thread::spawn(move || push(&q2, &m2, b"w\n", 2, &c2));
        assert_eq!(other.join().unwrap(), Err(Refused::Closed));
        assert_eq!(memory.in_use(), 0);
    }

    /// `n` lines of `len` bytes pushed by another thread while the writer
    /// takes with a 60 s timer: the lines and bytes handed over, after
    /// checking the writer was woken long before its timer. Whether the
    /// writer is already waiting when the threshold is crossed (woken by
    /// the notification) or not yet (it finds the flag and does not wait),
    /// it must not sit out its timer.
    fn pushed_while_the_writer_waits(n: usize, len: usize) -> (usize, usize) {
        let memory = MemoryBudget::new(4 << 20, None);
        let cfg = config();
        let q = Arc::new(Queue::new(WAKE_AT * 2));
        let (q2, m2, c2) = (q.clone(), memory.clone(), cfg.clone());
        let pusher = std::thread::spawn(move || {
            let line = vec![b'l'; len];
            for _ in 0..n {
                push(&q2, &m2, &line, len, &c2).unwrap();
            }
        });
        let started = tokio::time::Instant::now();
        let mut lines = Vec::new();
        let mut take = |wait| {
            q.take(wait, &mut Batch::default(), &mut Vec::new(), |b| {
                for run in b.runs() {
                    lines.extend(run.lines().map(|(_, l)| l.len()));
                }
            })
        };
        take(Duration::from_secs(60));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "woken by the lane"
        );
        pusher.join().unwrap();
        // Whatever came after the wake-up is in the next batch.
        take(Duration::ZERO);
        (lines.len(), lines.iter().sum())
    }

    #[test]
    fn a_lane_at_wake_at_records_wakes_the_writer_before_its_timer() {
        assert_eq!(
            pushed_while_the_writer_waits(WAKE_AT, 2),
            (WAKE_AT, WAKE_AT * 2)
        );
    }

    #[test]
    fn a_lane_holding_wake_bytes_wakes_the_writer_before_its_timer() {
        // 8 lines: far fewer than `WAKE_AT`.
        let len = 64 << 10;
        let n = WAKE_BYTES / len;
        assert_eq!(pushed_while_the_writer_waits(n, len), (n, WAKE_BYTES));
    }
}
