//! `auto` mode: a background task that judges every auto route's gates on
//! its `evaluate_every` and promotes, steps or rolls back by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::ops::auto_pass;
use crate::runtime::Shared;

/// Runs until `stop` turns true.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut last = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
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
