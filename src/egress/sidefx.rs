//! Side effects compared: each shadow call against its live counterpart
//! (method, path, query, request body: JSON structurally, with the route's
//! rules), and calls only one side made. Results go into the same tally as
//! the route's answers, under endpoints named `egress <service> <METHOD>
//! <path template>`, and into the mirror's window (the diff rate gate).
//! Off the request path: a bounded queue and one worker thread; a full
//! queue drops the work (counted as `shadowgate_compare_total{result="dropped"}`
//! under backend `egress`).

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Uri};

use super::keep::{Exchange, Orphan};
use super::registry::Inbound;
use crate::compare::Engine;
use crate::diff::{
    self, Captured, CompareRules, DiffKind, Difference, EndpointTemplater, Example, ExampleLimits,
    PairVerdict,
};

/// Work waiting for the worker at most.
const QUEUE: usize = 1024;

/// Bytes of work memory per comparison (JSON trees of two request bodies).
const WORK_BYTES: usize = 16 << 20;

/// A shadow call as received.
#[derive(Debug)]
pub struct ShadowCall {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One thing to compare.
#[derive(Debug)]
pub enum Work {
    Pair {
        inbound: Inbound,
        service: Arc<str>,
        live: Arc<Exchange>,
        shadow: ShadowCall,
    },
    OnlyShadow {
        inbound: Inbound,
        service: Arc<str>,
        shadow: ShadowCall,
    },
    OnlyPrimary(Orphan),
}

/// The bounded queue in front of the worker.
pub struct Queue {
    tx: SyncSender<Work>,
    engine: Arc<Engine>,
}

impl Queue {
    pub fn start(engine: Arc<Engine>) -> Queue {
        let (tx, rx) = sync_channel(QUEUE);
        let e = engine.clone();
        let spawned = std::thread::Builder::new()
            .name("egress-compare".into())
            .spawn(move || worker(rx, e));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the egress comparison worker");
        }
        Queue { tx, engine }
    }

    /// Queues `work`; never waits. Full: dropped and counted.
    pub fn submit(&self, work: Work) {
        if let Err(TrySendError::Full(w) | TrySendError::Disconnected(w)) = self.tx.try_send(work) {
            let route = match &w {
                Work::Pair { inbound, .. } | Work::OnlyShadow { inbound, .. } => &inbound.route,
                Work::OnlyPrimary(o) => &o.inbound.route,
            };
            self.engine.count(route, "egress", "dropped");
        }
    }

    pub fn orphans(&self, orphans: Vec<Orphan>) {
        for o in orphans {
            self.submit(Work::OnlyPrimary(o));
        }
    }
}

/// A request as the differ sees it: its body under its content type.
fn captured(headers: &HeaderMap, body: &Bytes) -> Captured {
    let mut h = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
        if let Some(v) = headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    Captured {
        status: 200,
        headers: h,
        body: body.clone(),
        truncated: false,
    }
}

fn one(
    path: &str,
    kind: DiffKind,
    primary: Option<String>,
    other: Option<String>,
) -> diff::Outcome {
    diff::Outcome {
        differences: vec![Difference {
            path: path.to_string(),
            kind,
            primary,
            other,
        }],
        differences_cut: false,
        truncated: false,
        body: diff::BodyMode::NotCompared,
        notes: Vec::new(),
    }
}

fn worker(rx: Receiver<Work>, engine: Arc<Engine>) {
    let default_rules = CompareRules::default();
    let limits = ExampleLimits::default();
    let mut templaters: HashMap<Arc<str>, EndpointTemplater> = HashMap::new();
    while let Ok(work) = rx.recv() {
        let (inbound, service, method, uri) = match &work {
            Work::Pair {
                inbound,
                service,
                shadow,
                ..
            }
            | Work::OnlyShadow {
                inbound,
                service,
                shadow,
            } => (inbound, service, &shadow.method, &shadow.uri),
            Work::OnlyPrimary(o) => (&o.inbound, &o.service, &o.exchange.method, &o.exchange.uri),
        };
        let templater = templaters.entry(service.clone()).or_insert_with(|| {
            EndpointTemplater::new(&[], diff::DEFAULT_MAX_ENDPOINTS)
                .unwrap_or_else(|_| unreachable!("no explicit templates"))
        });
        let endpoint = format!(
            "egress {service} {}",
            templater.endpoint(method, uri.path())
        );
        let rules = inbound.rules.as_ref().map_or(&default_rules, |r| &r.rules);
        let empty = Captured {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            truncated: false,
        };
        let call = format!("{method} {}", uri.path());
        let (outcome, primary, other, headers) = match &work {
            Work::Pair { live, shadow, .. } => {
                let p = captured(&live.request_headers, &live.request_body);
                let o = captured(&shadow.headers, &shadow.body);
                let mut outcome = diff::compare_within(&p, &o, rules, WORK_BYTES);
                if live.uri.query() != shadow.uri.query() {
                    outcome.differences.insert(
                        0,
                        Difference {
                            path: "query".into(),
                            kind: DiffKind::ValueChanged,
                            primary: live.uri.query().map(str::to_string),
                            other: shadow.uri.query().map(str::to_string),
                        },
                    );
                }
                (outcome, p, o, &shadow.headers)
            }
            Work::OnlyShadow { shadow, .. } => (
                one(
                    "only in shadow",
                    DiffKind::Extra,
                    None,
                    Some(format!("only in shadow: {call}")),
                ),
                empty.clone(),
                captured(&shadow.headers, &shadow.body),
                &shadow.headers,
            ),
            Work::OnlyPrimary(o) => (
                one(
                    "only in primary",
                    DiffKind::Missing,
                    Some(format!("only in primary: {call}")),
                    None,
                ),
                captured(&o.exchange.request_headers, &o.exchange.request_body),
                empty.clone(),
                &o.exchange.request_headers,
            ),
        };
        let verdict = engine.tally.lock().record_shadow(
            &inbound.route,
            &inbound.mirror,
            &endpoint,
            &outcome,
            || {
                Example::new(
                    method,
                    &uri.to_string(),
                    headers,
                    &primary,
                    &other,
                    &outcome,
                    &limits,
                )
            },
        );
        inbound
            .window
            .record_compare(verdict == PairVerdict::Different);
        engine.mark_changed();
    }
}
