//! Comparison results: `GET /api/v1/diffs` (totals per route and mirror),
//! `GET /api/v1/diffs/{route}` (per endpoint, with differing field paths)
//! and `GET /api/v1/diffs/{route}/examples?endpoint=…&mirror=…` (example
//! pairs). 404 when comparison is not enabled.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::diff::{Example, ExampleResponse, Totals};
use crate::runtime::Shared;

fn not_found(message: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// `GET /api/v1/diffs`
#[derive(Debug, Serialize, Deserialize)]
pub struct DiffTotals {
    pub routes: Vec<Totals>,
}

fn compared_routes(shared: &Shared) -> Vec<String> {
    shared
        .runtime
        .load()
        .routes
        .iter()
        .filter(|r| r.comparison.is_some())
        .map(|r| r.name.to_string())
        .collect()
}

pub async fn get_totals(State(shared): State<Arc<Shared>>) -> Response {
    let routes = compared_routes(&shared);
    if routes.is_empty() {
        return not_found(
            "comparison is not enabled on any route (set `compare: true` on a mirror)".into(),
        );
    }
    let totals = shared.comparison.with_report(|tally| {
        let mut totals: Vec<Totals> = tally.totals();
        // Routes with comparison on but nothing compared yet still appear.
        for r in routes {
            if !totals.iter().any(|t| t.route == r) {
                totals.extend(tally.route_totals(&r));
            }
        }
        totals
    });
    Json(DiffTotals { routes: totals }).into_response()
}

pub async fn get_route(State(shared): State<Arc<Shared>>, Path(route): Path<String>) -> Response {
    if !compared_routes(&shared).contains(&route) {
        return not_found(format!("no route `{route}` with comparison enabled"));
    }
    let report = shared
        .comparison
        .with_report(|tally| tally.route_report(&route));
    Json(report).into_response()
}

#[derive(Debug, Deserialize)]
pub struct ExampleQuery {
    endpoint: String,
    mirror: Option<String>,
}

/// One example pair, as the dashboard shows it.
#[derive(Debug, Serialize)]
struct ExampleView<'a> {
    mirror: &'a str,
    request: ExampleRequestView<'a>,
    primary: ResponseView<'a>,
    shadow: ResponseView<'a>,
    differences: &'a [crate::diff::Difference],
}

#[derive(Debug, Serialize)]
struct ExampleRequestView<'a> {
    method: &'a str,
    path: &'a str,
    headers: BTreeMap<&'a str, &'a str>,
}

#[derive(Debug, Serialize)]
struct ResponseView<'a> {
    status: u16,
    headers: BTreeMap<&'a str, &'a str>,
    body: &'a str,
    body_bytes: usize,
    body_truncated: bool,
}

fn response_view(r: &ExampleResponse) -> ResponseView<'_> {
    ResponseView {
        status: r.status,
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        body: &r.body,
        body_bytes: r.body_bytes,
        body_truncated: r.body_truncated,
    }
}

fn example_view<'a>(mirror: &'a str, e: &'a Example) -> ExampleView<'a> {
    ExampleView {
        mirror,
        request: ExampleRequestView {
            method: &e.request.method,
            path: &e.request.uri,
            headers: e
                .request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        },
        primary: response_view(&e.primary),
        shadow: response_view(&e.other),
        differences: &e.differences,
    }
}

pub async fn get_examples(
    State(shared): State<Arc<Shared>>,
    Path(route): Path<String>,
    Query(q): Query<ExampleQuery>,
) -> Response {
    if !compared_routes(&shared).contains(&route) {
        return not_found(format!("no route `{route}` with comparison enabled"));
    }
    let mirrors: Vec<String> = match q.mirror {
        Some(m) => vec![m],
        None => {
            let rt = shared.runtime.load();
            rt.routes
                .iter()
                .find(|r| *r.name == *route)
                .map(|r| {
                    r.mirrors
                        .iter()
                        .map(|m| m.backend.name().to_string())
                        .collect()
                })
                .unwrap_or_default()
        }
    };
    shared.comparison.with_report(|tally| {
        let examples: Vec<ExampleView<'_>> = mirrors
            .iter()
            .flat_map(|m| {
                tally
                    .examples(&route, m, &q.endpoint)
                    .iter()
                    .map(move |e| example_view(m, e))
            })
            .collect();
        Json(serde_json::json!({ "examples": examples })).into_response()
    })
}
