//! The offline egress (issue #17, `shadowgate replay --egress-listen`): a
//! server that answers a target build's outbound calls from a recording,
//! nothing leaving the machine. The caller puts the recorded calls of a
//! request in the [`Book`] under its correlation id before replaying it
//! (`insert`) and takes them out after (`remove`); a call is answered with
//! the recorded answer of the matching call: same id, same (service,)
//! method and path, same ordinal of that signature within the id (the
//! second `POST /charges` of a request gets the second recorded answer).
//! No match: 503 `{"error":"no_recorded_call"}`, as the live shadow side's
//! `replay` answers. HTTP/1.1 and h2c, absolute-form (`HTTP_PROXY`) and
//! origin-form with `Host`, like the live listeners; CONNECT is refused.
//!
//! The service is told from the call's host by the `egress.services`
//! matchers when the book is made with them ([`Book::with_services`]);
//! without them ([`Book::new`]) the service is not part of the match.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{answer, read_body, target, UNLISTED};
use crate::body::{full, ProxyBody};
use crate::config::{EgressConfig, EgressService};
use crate::protocol::headers::strip_hop_by_hop;
use crate::record::read::Call;

/// Largest call body read (and discarded) when no egress config says.
const MAX_BODY: usize = 1 << 20;
/// Distinct names the counters keep; the rest count under `other`.
const MAX_NAMES: usize = 1000;
/// Time calls in flight get to finish once the server is told to stop.
const GRACE: Duration = Duration::from_secs(5);

/// Calls answered and not, for one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Answered with a recorded answer.
    pub served: u64,
    /// Answered 503 (no recorded call, or its answer was not recorded whole).
    pub unmatched: u64,
}

/// (service when told, method, path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Sig {
    service: Option<String>,
    method: String,
    path: String,
}

#[derive(Debug)]
struct Entry {
    calls: Vec<Call>,
    /// Calls answered so far, by signature: the next one's ordinal.
    next: HashMap<Sig, usize>,
    /// Recorded calls served.
    served: usize,
}

/// The recorded calls by correlation id, and what was served from them.
#[derive(Debug)]
pub struct Book {
    /// By correlation id; one request's entry may be held under several
    /// ids (its trace id and its request id: `insert_all`).
    entries: Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
    counts: Mutex<BTreeMap<String, Counts>>,
    /// How a call's host names its service (`None`: not told).
    services: Option<Vec<EgressService>>,
    correlate: Vec<HeaderName>,
    max_body: usize,
}

fn path_of(uri: &str) -> &str {
    let path = uri.split('?').next().unwrap_or("");
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

impl Book {
    /// A book that matches calls by id, method, path and ordinal (any
    /// service); the id is the trace id of the call's `traceparent`, or
    /// its `x-request-id`.
    pub fn new() -> Arc<Book> {
        Arc::new(Book {
            entries: Mutex::default(),
            counts: Mutex::default(),
            services: None,
            correlate: vec![
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("x-request-id"),
            ],
            max_body: MAX_BODY,
        })
    }

    /// A book that also tells the service from the call (host, path,
    /// method, headers) by `egress.services`, and reads ids from the
    /// headers `egress.correlate` names.
    pub fn with_services(config: &EgressConfig) -> Arc<Book> {
        Arc::new(Book {
            entries: Mutex::default(),
            counts: Mutex::default(),
            services: Some(config.services.clone()),
            correlate: config.correlate.clone(),
            max_body: config.max_body_bytes,
        })
    }

    /// The recorded calls of the request with correlation id `id` (its
    /// trace id), replacing any before.
    pub fn insert(&self, id: &str, calls: Vec<Call>) {
        self.insert_all(&[id], calls);
    }

    /// The recorded calls of one request under each of its ids (e.g. its
    /// trace id and its `x-request-id`): a call carrying any of them is
    /// answered from the one list.
    pub fn insert_all(&self, ids: &[&str], calls: Vec<Call>) {
        let entry = Arc::new(Mutex::new(Entry {
            calls,
            next: HashMap::new(),
            served: 0,
        }));
        let mut entries = self.entries.lock();
        for id in ids {
            entries.insert(id.to_string(), entry.clone());
        }
    }

    /// Forgets `id`'s calls (its request has been replayed).
    pub fn remove(&self, id: &str) {
        self.entries.lock().remove(id);
    }

    /// Forgets the calls held under `ids` (one request's, as given to
    /// `insert_all`) and tells how many recorded calls were not asked for:
    /// calls the recorded version made that the replayed build did not.
    pub fn finish(&self, ids: &[&str]) -> usize {
        let mut entries = self.entries.lock();
        let mut seen: Vec<Arc<Mutex<Entry>>> = Vec::new();
        for id in ids {
            if let Some(e) = entries.remove(*id) {
                if !seen.iter().any(|s| Arc::ptr_eq(s, &e)) {
                    seen.push(e);
                }
            }
        }
        drop(entries);
        seen.iter()
            .map(|e| {
                let e = e.lock();
                e.calls.len().saturating_sub(e.served)
            })
            .sum()
    }

    /// Ids held now.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls served and unmatched so far, by service (`unlisted` for hosts
    /// no service matches; without services, the call's host when nothing
    /// matched).
    pub fn counts(&self) -> BTreeMap<String, Counts> {
        self.counts.lock().clone()
    }

    fn count(&self, name: &str, served: bool) {
        let mut counts = self.counts.lock();
        let name = if counts.contains_key(name) || counts.len() < MAX_NAMES {
            name
        } else {
            "other"
        };
        let c = counts.entry(name.to_string()).or_default();
        if served {
            c.served += 1;
        } else {
            c.unmatched += 1;
        }
    }

    /// The service a call is for: `Ok(None)` when services are not told,
    /// `Err(())` when they are and none matches.
    fn service_of(
        &self,
        t: &target::Target,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Option<String>, ()> {
        let Some(services) = &self.services else {
            return Ok(None);
        };
        services
            .iter()
            .find(|s| {
                s.matcher.matches(&t.host, t.path(), method, headers)
                    && s.matcher.query_matches(t.path_and_query.query())
            })
            .map(|s| Some(s.name.clone()))
            .ok_or(())
    }

    /// The recorded call answering this one, if any: the first id the call
    /// carries that the book holds, the next ordinal of its signature.
    fn take(&self, headers: &HeaderMap, sig: &Sig) -> Option<Call> {
        let entry = {
            let entries = self.entries.lock();
            self.correlate.iter().find_map(|name| {
                target::correlation_id(headers, std::slice::from_ref(name))
                    .and_then(|id| entries.get(&id).cloned())
            })?
        };
        let mut entry = entry.lock();
        let ordinal = entry.next.entry(sig.clone()).or_insert(0);
        let n = *ordinal;
        *ordinal += 1;
        let call = entry
            .calls
            .iter()
            .filter(|c| {
                sig.service.as_deref().is_none_or(|s| s == c.service)
                    && c.request
                        .method
                        .as_deref()
                        .is_some_and(|m| m.eq_ignore_ascii_case(&sig.method))
                    && path_of(c.request.uri.as_deref().unwrap_or("")) == sig.path
            })
            .nth(n)
            .cloned();
        if call.is_some() {
            entry.served += 1;
        }
        call
    }
}

/// The recorded answer as a response.
fn recorded(call: &Call) -> Response<ProxyBody> {
    let mut headers = HeaderMap::new();
    for (k, v) in &call.response.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    strip_hop_by_hop(&mut headers, false);
    // The body is sent whole: its length is the one it has now.
    headers.remove(header::CONTENT_LENGTH);
    let mut resp = Response::new(full(Bytes::clone(&call.response.body)));
    *resp.status_mut() =
        StatusCode::from_u16(call.response.status.unwrap_or(200)).unwrap_or(StatusCode::OK);
    *resp.headers_mut() = headers;
    resp
}

async fn handle(book: Arc<Book>, req: Request<Incoming>) -> Response<ProxyBody> {
    let t = match target::of(&req) {
        Ok(t) => t,
        Err(why) => return answer(StatusCode::BAD_REQUEST, why),
    };
    if req.method() == Method::CONNECT {
        book.count(UNLISTED, false);
        return answer(StatusCode::FORBIDDEN, "connect_refused_offline");
    }
    let (parts, body) = req.into_parts();
    let service = book.service_of(&t, &parts.method, &parts.headers);
    let name = match &service {
        Ok(Some(s)) => s.clone(),
        Ok(None) => t.host.clone(),
        Err(()) => UNLISTED.to_string(),
    };
    if let Err(resp) = read_body(body, book.max_body).await {
        book.count(&name, false);
        return resp;
    }
    let Ok(service) = service else {
        book.count(&name, false);
        return answer(StatusCode::SERVICE_UNAVAILABLE, "no_recorded_call");
    };
    let sig = Sig {
        service,
        method: parts.method.as_str().to_string(),
        path: t.path().to_string(),
    };
    match book.take(&parts.headers, &sig) {
        Some(call) if !call.response.body_truncated => {
            book.count(sig.service.as_deref().unwrap_or(&call.service), true);
            recorded(&call)
        }
        Some(call) => {
            book.count(sig.service.as_deref().unwrap_or(&call.service), false);
            answer(StatusCode::SERVICE_UNAVAILABLE, "recorded_answer_too_large")
        }
        None => {
            book.count(&name, false);
            answer(StatusCode::SERVICE_UNAVAILABLE, "no_recorded_call")
        }
    }
}

/// Serves `book` on `listener` until `shutdown` turns true, then lets the
/// calls in flight finish (a few seconds at most).
pub fn serve(
    listener: TcpListener,
    book: Arc<Book>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let book = book.clone();
            let service = service_fn(move |req| {
                let book = book.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(book, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_leaves_the_query_out() {
        assert_eq!(path_of("/charges?x=1"), "/charges");
        assert_eq!(path_of(""), "/");
        assert_eq!(path_of("?a"), "/");
    }
}
