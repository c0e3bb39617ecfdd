//! `GET /api/v1/fleet`: the replicas sharing this store, when last seen,
//! which one leads `mode: auto`, and the promotion-state version. With a
//! local store (SQLite or memory) the fleet is this process alone.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::runtime::Shared;
use crate::store::fleet::ReplicaRow;

/// `GET /api/v1/fleet`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FleetResponse {
    /// `true` with a PostgreSQL store shared by replicas.
    pub shared: bool,
    /// This replica's id.
    pub replica: String,
    /// `ok`, or `degraded` while the shared store cannot be reached.
    pub store: String,
    /// Whether this replica judges `mode: auto` for the fleet.
    pub leader: bool,
    /// The version of the promotion state this replica serves.
    pub state_version: u64,
    /// Every registered replica (alive ones and those gone after 3 missed
    /// heartbeats, for an hour); as last read while the store is degraded.
    pub replicas: Vec<ReplicaRow>,
}

/// The fleet as this replica sees it (reads the store: call off the runtime).
pub fn fleet(shared: &Shared) -> FleetResponse {
    let store = &shared.store;
    FleetResponse {
        shared: store.is_shared(),
        replica: store.replica_id().to_string(),
        leader: store.is_shared() && store.may_judge(),
        state_version: shared.book.lock().version,
        replicas: store.replicas(),
        store: store.health().to_string(),
    }
}

pub async fn get_fleet(State(shared): State<Arc<Shared>>) -> Response {
    match tokio::task::spawn_blocking(move || fleet(&shared)).await {
        Ok(f) => Json(f).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
