//! Promotion endpoints: `GET /api/v1/routes/{route}/promotion`,
//! `POST /api/v1/routes/{route}/promote` (body optional:
//! `{"to":"v2","force":false}`), `POST /api/v1/routes/{route}/rollback`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::promote::ops::{self, PromoteError};
use crate::runtime::Shared;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    to: Option<String>,
    #[serde(default)]
    force: bool,
}

fn refusal(e: PromoteError) -> Response {
    let status = match &e {
        PromoteError::UnknownRoute(_) => StatusCode::NOT_FOUND,
        PromoteError::NotAMirror { .. } => StatusCode::BAD_REQUEST,
        PromoteError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    let mut body = serde_json::json!({ "error": e.to_string() });
    if let PromoteError::GatesFail { judgement, .. } = &e {
        body["verdict"] = serde_json::to_value(judgement.verdict).unwrap_or_default();
        body["failing_gates"] = serde_json::to_value(judgement.failing()).unwrap_or_default();
        body["gates"] = serde_json::to_value(&judgement.gates).unwrap_or_default();
    }
    (status, Json(body)).into_response()
}

pub async fn get_promotion(
    State(shared): State<Arc<Shared>>,
    Path(route): Path<String>,
) -> Response {
    // Reads the promotion history from the store (SQLite).
    match tokio::task::spawn_blocking(move || ops::status(&shared, &route)).await {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub async fn post_promote(
    State(shared): State<Arc<Shared>>,
    Path(route): Path<String>,
    body: Bytes,
) -> Response {
    let body: PromoteBody = if body.iter().all(u8::is_ascii_whitespace) {
        PromoteBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({ "error": format!("invalid body: {e}") })),
                )
                    .into_response()
            }
        }
    };
    let result = tokio::task::spawn_blocking(move || {
        ops::promote(&shared, &route, body.to.as_deref(), body.force, "manual")
    })
    .await;
    match result {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub async fn post_rollback(
    State(shared): State<Arc<Shared>>,
    Path(route): Path<String>,
) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        ops::rollback(&shared, &route, "manual", "requested through the admin API")
    })
    .await;
    match result {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
