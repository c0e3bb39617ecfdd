//! `auto` mode: a background task that judges every auto route's gates on
//! its `evaluate_every` and promotes, steps or rolls back by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::ops::{auto_pass, follow_fleet};
use crate::runtime::Shared;

/// Runs until `stop` turns true.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut last = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // In a fleet only the leader judges (fleet-wide) and switches for all.
        if !shared.store.may_judge() {
            continue;
        }
        // The pass may write the store (SQLite): off the runtime's workers.
        let (sh, mut seen) = (shared.clone(), std::mem::take(&mut last));
        let now = tokio::time::Instant::now();
        last = tokio::task::spawn_blocking(move || {
            auto_pass(&sh, now, &mut seen);
            seen
        })
        .await
        .unwrap_or_default();
    }
}

/// Shared store: applies every change of the fleet's promotion state (made
/// through any replica) as it is announced or polled. Runs until `stop`.
pub async fn follow(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(fleet) = shared.store.fleet() else {
        return;
    };
    let mut versions = fleet.versions();
    loop {
        let version = *versions.borrow_and_update();
        let sh = shared.clone();
        let applied = tokio::task::spawn_blocking(move || follow_fleet(&sh, version))
            .await
            .unwrap_or(false);
        let behind = !applied && shared.book.lock().version < version;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = versions.changed() => if changed.is_err() { return },
            // A read that failed is tried again.
            _ = tokio::time::sleep(Duration::from_millis(500)), if behind => {}
        }
    }
}
