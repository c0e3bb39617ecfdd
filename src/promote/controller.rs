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
        auto_pass(&shared, tokio::time::Instant::now(), &mut last);
    }
}
