//! One byte budget for everything the proxy keeps in memory for its
//! shadows: the request-body copies made by the tee, the responses
//! captured for comparison (primary and shadow) and so the pairs waiting in
//! the comparison queue. Bytes are reserved *before* they are buffered and
//! returned when the buffer is freed (RAII), so the sum of what is held can
//! never pass the limit; what does not fit is refused at once and counted
//! by the caller (`memory`). The primary never waits on the budget: a
//! reservation is one atomic compare-and-swap that succeeds or fails.
//!
//! A quarter of the budget is kept for the comparison workers: the trees
//! they parse two JSON answers into take several times the answers' own
//! bytes (measured: a 1 MB document of small objects became ~5 MB of
//! tree), so buffers may fill only three quarters ([`MemoryBudget::reserve`])
//! and each of the workers' trees is bounded by its part of the last
//! quarter ([`MemoryBudget::work_share`], counted as the tree is built).
//! So what the shadows hold, queued or being compared, stays under the
//! limit; the gauge shows the buffers.
//!
//! The budget survives reloads (the runtime carries it over) and its limit
//! can be changed in place; a lower limit refuses new reservations until
//! enough old ones are returned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;

/// The workers' share of the budget: one part in this many.
const WORK_SHARE_DIVISOR: usize = 4;

/// Shared byte budget; hand out with [`MemoryBudget::reserve`].
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicUsize,
    /// Bytes reserved now, kept in the gauge's own atomic: one atomic
    /// operation per reservation and return rather than two (a separate
    /// gauge mirrored every change; both cache lines bounced between the
    /// serving threads on every recorded or mirrored request).
    used: Gauge,
}

impl MemoryBudget {
    /// A budget of `limit` bytes; `gauge`, when given, shows the bytes in use.
    pub fn new(limit: usize, gauge: Option<Gauge>) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit: AtomicUsize::new(limit),
            used: gauge.unwrap_or_default(),
        })
    }

    /// Changes the limit; reservations already made are kept.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        usize::try_from(self.used.inner().load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Bytes that buffers could reserve now.
    pub fn available(&self) -> usize {
        self.buffer_limit().saturating_sub(self.in_use())
    }

    /// The part of the limit kept for the comparison workers.
    pub fn work_share(&self) -> usize {
        self.limit() / WORK_SHARE_DIVISOR
    }

    /// What buffers (copies, captures, queued pairs) may hold in total.
    fn buffer_limit(&self) -> usize {
        self.limit() - self.work_share()
    }

    /// Reserves `bytes` for a buffer, or `None` when they do not fit
    /// (nothing reserved).
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut r = Reservation::empty(self);
        r.grow(bytes).then_some(r)
    }

    fn take(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        // A limit past i64 (the gauge's type) holds anything that can be
        // reserved; more bytes than that never fit.
        let limit = i64::try_from(self.buffer_limit()).unwrap_or(i64::MAX);
        let Ok(bytes) = i64::try_from(bytes) else {
            return false;
        };
        self.used
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        // Only what was taken is given back: it fits an i64.
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.used.inner().fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes held from a [`MemoryBudget`]; returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    /// A reservation of nothing, to grow later.
    pub fn empty(budget: &Arc<MemoryBudget>) -> Self {
        Reservation {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Reserves `more` bytes on top; false (and unchanged) when they do not fit.
    pub fn grow(&mut self, more: usize) -> bool {
        if !self.budget.take(more) {
            return false;
        }
        self.bytes += more;
        true
    }

    /// Returns everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Why a bounded buffer refused more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufRefused {
    /// More than the buffer's own cap.
    TooLarge,
    /// The budget could not take them.
    Memory,
}

/// A growing byte buffer whose capacity is always reserved from a budget
/// before it is allocated. Growth doubles (up to `cap`) so a streamed body
/// costs few reallocations; the reservation follows the capacity, not the
/// length, because the capacity is what is allocated.
#[derive(Debug)]
pub struct BoundedBuf {
    buf: Vec<u8>,
    cap: usize,
    reservation: Reservation,
}

impl BoundedBuf {
    /// An empty buffer of at most `cap` bytes with `initial` bytes of
    /// capacity reserved up front (e.g. a declared length); `None` when the
    /// budget cannot take `initial`.
    pub fn new(budget: &Arc<MemoryBudget>, cap: usize, initial: usize) -> Option<Self> {
        let initial = initial.min(cap);
        let reservation = budget.reserve(initial)?;
        Some(BoundedBuf {
            buf: Vec::with_capacity(initial),
            cap,
            reservation,
        })
    }

    /// An empty buffer holding no reservation (e.g. after a refusal).
    pub fn empty(budget: &Arc<MemoryBudget>, cap: usize) -> Self {
        BoundedBuf {
            buf: Vec::new(),
            cap,
            reservation: Reservation::empty(budget),
        }
    }

    /// Takes the contents (and their reservation), leaving an empty buffer.
    pub fn take(&mut self) -> BoundedBuf {
        let empty = BoundedBuf::empty(&self.reservation.budget, self.cap);
        std::mem::replace(self, empty)
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Keeps the first `len` bytes, and gives back what the shorter
    /// contents no longer need (at least the doubling growth's share).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
        if self.buf.capacity() > len.saturating_mul(2) {
            self.buf.shrink_to_fit();
            self.reservation.shrink_to(self.buf.capacity());
        }
    }

    /// The budget this buffer reserves from.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.reservation.budget
    }

    /// Frees the buffer but keeps its reservation, for what its bytes
    /// were copied into.
    pub fn into_reservation(self) -> Reservation {
        self.reservation
    }

    /// Makes room for `additional` more bytes, reserved before allocated
    /// (e.g. a body's declared length, so that it is not copied again
    /// each time the buffer doubles). On a refusal nothing changes.
    pub fn reserve(&mut self, additional: usize) -> Result<(), BufRefused> {
        let needed = self
            .buf
            .len()
            .checked_add(additional)
            .filter(|n| *n <= self.cap)
            .ok_or(BufRefused::TooLarge)?;
        if needed > self.buf.capacity() {
            let doubled = self.buf.capacity().saturating_mul(2).min(self.cap);
            let want = needed.max(doubled);
            let have = self.reservation.bytes();
            let grown = self.reservation.grow(want.saturating_sub(have))
                || (want > needed && self.reservation.grow(needed.saturating_sub(have)));
            if !grown {
                return Err(BufRefused::Memory);
            }
            let target = self.reservation.bytes();
            self.buf.reserve_exact(target - self.buf.len());
        }
        Ok(())
    }

    /// Appends `data`, reserving more capacity first when needed. On a
    /// refusal nothing is appended; the caller normally drops the buffer.
    pub fn extend(&mut self, data: &[u8]) -> Result<(), BufRefused> {
        self.reserve(data.len())?;
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The bytes, still accounted for until the last clone is dropped.
    pub fn freeze(self) -> Bytes {
        if self.buf.is_empty() {
            return Bytes::new();
        }
        Bytes::from_owner(Accounted {
            buf: self.buf,
            _reservation: self.reservation,
        })
    }
}

/// The owner behind a frozen [`BoundedBuf`]: its memory and reservation
/// go together.
struct Accounted {
    buf: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Accounted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_returned() {
        // 400 bytes: buffers get 300, the workers' share is 100.
        let b = MemoryBudget::new(400, None);
        let r1 = b.reserve(180).unwrap();
        assert!(b.reserve(121).is_none());
        let mut r2 = b.reserve(120).unwrap();
        assert_eq!(b.in_use(), 300);
        assert_eq!(b.available(), 0);
        assert!(!r2.grow(1));
        drop(r1);
        assert!(r2.grow(10));
        r2.shrink_to(5);
        assert_eq!(b.in_use(), 5);
        drop(r2);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn the_workers_share_is_kept_from_buffers() {
        let b = MemoryBudget::new(400, None);
        assert_eq!(b.work_share(), 100);
        let full = b.reserve(300).unwrap();
        assert!(b.reserve(1).is_none());
        assert_eq!(b.in_use(), 300);
        b.set_limit(800);
        assert_eq!(b.work_share(), 200);
        assert_eq!(b.available(), 300);
        drop(full);
    }

    #[test]
    fn the_gauge_follows_the_bytes_in_use() {
        let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        let b = MemoryBudget::new(140, Some(g.clone()));
        let r = b.reserve(60).unwrap();
        assert_eq!(g.get(), 60);

        let mut buf = BoundedBuf::new(&b, 40, 0).unwrap();
        buf.extend(&[1; 30]).unwrap();
        assert_eq!(g.get() as usize, b.in_use());
        drop(r);
        let frozen = buf.freeze();
        assert_eq!(g.get() as usize, b.in_use());
        drop(frozen);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn a_limit_past_the_gauges_range_still_lends() {
        let b = MemoryBudget::new(usize::MAX, None);
        let r = b.reserve(1 << 20).unwrap();
        assert_eq!(b.in_use(), 1 << 20);
        drop(r);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn room_made_ahead_is_reserved_and_filled_without_growing() {
        let b = MemoryBudget::new(4000, None);
        let mut buf = BoundedBuf::new(&b, 2000, 0).unwrap();
        // Past the buffer's cap, then past the budget's 3000: refused, unchanged.
        assert_eq!(buf.reserve(2001), Err(BufRefused::TooLarge));
        let other = b.reserve(2500).unwrap();
        assert_eq!(buf.reserve(1000), Err(BufRefused::Memory));
        assert_eq!(b.in_use(), 2500);
        drop(other);
        buf.reserve(1000).unwrap();
        assert_eq!(b.in_use(), 1000);
        for _ in 0..10 {
            buf.extend(&[7; 100]).unwrap();
        }
        assert_eq!(buf.len(), 1000);
        assert_eq!(b.in_use(), 1000, "filled within the room made");
        // Cut back to a tenth: the rest is given back.
        buf.truncate(100);
        assert!(b.in_use() >= 100 && b.in_use() < 200, "{}", b.in_use());
        let held = buf.into_reservation();
        assert_eq!(held.bytes(), b.in_use());
        drop(held);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn buffer_reserves_before_growing_and_frozen_bytes_hold_it() {
        let b = MemoryBudget::new(1000, None);
        let mut buf = BoundedBuf::new(&b, 600, 0).unwrap();
        buf.extend(&[1; 100]).unwrap();
        assert!(b.in_use() >= 100 && b.in_use() <= 600);
        assert_eq!(buf.extend(&[1; 501]), Err(BufRefused::TooLarge));
        buf.extend(&[2; 500]).unwrap();
        assert_eq!(buf.len(), 600);
        let frozen = buf.freeze();
        let clone = frozen.clone();
        drop(frozen);
        assert!(b.in_use() >= 600);
        assert_eq!(clone.len(), 600);
        drop(clone);
        assert_eq!(b.in_use(), 0);

        let small = MemoryBudget::new(66, None); // buffers: 50
        let mut buf = BoundedBuf::new(&small, 600, 0).unwrap();
        assert_eq!(buf.extend(&[1; 51]), Err(BufRefused::Memory));
        assert!(buf.is_empty());
        assert!(BoundedBuf::new(&small, 600, 51).is_none());
        assert_eq!(small.in_use(), 0);
    }
}
