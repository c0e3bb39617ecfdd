//! The queue between the request path and the record writer: a bounded
//! batch under a short lock. Hand-written rather than a channel on
//! purpose: a channel (std's `sync_channel` was used first) wakes the
//! parked writer thread on every record, and at `percent: 100` those
//! wake-ups (a futex call and a thread switch per request) were most of
//! recording's cost (`bench/record.py`: 0.73× throughput). Here the writer
//! wakes when `WAKE_AT` records have gathered, when asked to flush, or by
//! its own timer every `LINGER`, and takes the whole batch at once.

use std::time::Duration;

use super::Msg;

/// Records gathered that wake the writer before its timer.
const WAKE_AT: usize = 256;

/// How long the writer lets records gather.
pub(super) const LINGER: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Inner {
    msgs: Vec<Msg>,
    records: usize,
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

/// Why a message was not queued.
pub(super) enum Refused {
    Full(Msg),
    Closed(Msg),
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            inner: parking_lot::Mutex::new(Inner::default()),
            ready: parking_lot::Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `msg` without waiting, or gives it back.
    pub(super) fn push(&self, msg: Msg) -> Result<(), Refused> {
        let wake = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err(Refused::Closed(msg));
            }
            let wake = match &msg {
                Msg::Record(_) => {
                    if inner.records >= self.capacity {
                        return Err(Refused::Full(msg));
                    }
                    inner.records += 1;
                    inner.records == WAKE_AT
                }
                Msg::Flush(_) => true,
            };
            inner.msgs.push(msg);
            wake
        };
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves what is queued into `out` (empty), waiting at most `wait` for
    /// something; false once the queue is closed and emptied.
    pub(super) fn take(&self, out: &mut Vec<Msg>, wait: Duration) -> bool {
        let mut inner = self.inner.lock();
        if inner.msgs.is_empty() && !inner.closed {
            self.ready.wait_for(&mut inner, wait);
        }
        std::mem::swap(&mut inner.msgs, out);
        inner.records = 0;
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

    fn flush() -> Msg {
        Msg::Flush(std::sync::mpsc::sync_channel(1).0)
    }

    #[test]
    fn flushes_are_always_taken_and_a_closed_queue_ends() {
        let q = Queue::new(1);
        // A flush is not a record: it never counts against the bound.
        assert!(q.push(flush()).is_ok());
        assert!(q.push(flush()).is_ok());
        let mut out = Vec::new();
        assert!(q.take(&mut out, Duration::ZERO));
        assert_eq!(out.len(), 2);
        out.clear();
        // Nothing queued: `take` comes back empty after at most `wait`.
        assert!(q.take(&mut out, Duration::from_millis(10)));
        assert!(out.is_empty());
        q.close();
        assert!(matches!(q.push(flush()), Err(Refused::Closed(_))));
        assert!(!q.take(&mut out, Duration::from_secs(5)));
    }
}
