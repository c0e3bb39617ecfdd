//! The bound on copies in flight, one per mirror identity (route, mirror
//! backend, role) for the life of the process: every runtime generation
//! built by a reload or a promotion step gets the same bound, so copies
//! still in flight from an older generation count against the newer one.
//! A changed `max_in_flight` resizes the bound in place (copies already in
//! flight above a lower bound finish; no new one starts until the count is
//! under it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use crate::telemetry::Role;

/// Copies in flight for one mirror identity, and their maximum.
#[derive(Debug)]
pub struct InFlightBound {
    max: AtomicUsize,
    current: AtomicUsize,
}

impl InFlightBound {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(InFlightBound {
            max: AtomicUsize::new(max),
            current: AtomicUsize::new(0),
        })
    }

    /// A permit when fewer than the maximum are in flight; never waits.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlightPermit> {
        let max = self.max.load(Ordering::Acquire);
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightPermit {
                bound: self.clone(),
            })
    }

    /// Copies in flight now, of every generation.
    pub fn in_flight(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    /// Permits that could be taken now (0 while over a lowered maximum).
    pub fn available_permits(&self) -> usize {
        self.max().saturating_sub(self.in_flight())
    }

    fn resize(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }
}

/// One copy in flight; released when dropped.
#[derive(Debug)]
pub struct InFlightPermit {
    bound: Arc<InFlightBound>,
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        self.bound.current.fetch_sub(1, Ordering::AcqRel);
    }
}

type Identity = (String, String, Role);

/// The bounds of every mirror identity; carried from one runtime
/// generation to the next. Entries are weak: a bound lives while a
/// runtime or a copy in flight holds it.
#[derive(Debug, Default)]
pub struct MirrorBounds {
    bounds: parking_lot::Mutex<HashMap<Identity, Weak<InFlightBound>>>,
}

impl MirrorBounds {
    /// The bound of (`route`, `backend`, `role`), resized to `max`.
    pub fn get(&self, route: &str, backend: &str, role: Role, max: usize) -> Arc<InFlightBound> {
        let mut bounds = self.bounds.lock();
        bounds.retain(|_, b| b.strong_count() > 0);
        let key = (route.to_string(), backend.to_string(), role);
        if let Some(b) = bounds.get(&key).and_then(Weak::upgrade) {
            b.resize(max);
            return b;
        }
        let b = InFlightBound::new(max);
        bounds.insert(key, Arc::downgrade(&b));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bound_per_identity_resized_in_place() {
        let reg = MirrorBounds::default();
        let a = reg.get("r", "m", Role::mirror, 2);
        let p1 = a.try_acquire().unwrap();
        let _p2 = a.try_acquire().unwrap();
        assert!(a.try_acquire().is_none());
        let b = reg.get("r", "m", Role::mirror, 1);
        assert!(Arc::ptr_eq(&a, &b));
        drop(p1);
        assert!(b.try_acquire().is_none(), "still 1 in flight at max 1");
        assert_eq!(b.in_flight(), 1);
        let other = reg.get("r", "m", Role::secondary, 1);
        assert!(!Arc::ptr_eq(&a, &other));
    }
}
