//! The egress proxy (issue #13): shadowgate on the outbound side of the
//! apps. The live side (`egress.listen`, where v1 sends its outbound calls)
//! forwards each call and keeps the exchange; the shadow side
//! (`egress.shadow_listen`, where v2 sends its copies of those calls)
//! answers them with v1's kept answers, so a shadow never charges twice,
//! and compares what each version sent (`sidefx`).
//!
//! `target`: where a call goes and which inbound request it belongs to;
//! `registry`: inbound request id → route and mirror (written by the
//! proxy); `keep`: the kept exchanges and the waits on them; `live` and
//! `shadow`: the two sides; `sidefx`: the outbound-call comparison, on its
//! own thread behind a bounded queue. Nothing the shadow side does touches
//! the live side but a short lock on the kept exchanges.

mod keep;
mod live;
pub mod offline;
pub mod registry;
mod shadow;
mod sidefx;
pub mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::{full, ProxyBody};
use crate::compare::Engine;
use crate::config::Config;
use crate::config::{EgressConfig, EgressService};
use crate::telemetry::metrics::{EgressLabels, EgressSideLabels};
use crate::telemetry::{AccessRecord, Telemetry};
use crate::upstream::Backend;

pub use keep::{Exchange, Kept};
pub use registry::{Inbound, Registry};

/// Which listener a call came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// v1's calls: forwarded and kept.
    Live,
    /// v2's calls: replayed, forwarded or denied.
    Shadow,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Live => "live",
            Side::Shadow => "shadow",
        }
    }
}

/// A configured service with its own client of its backend.
#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub config: EgressService,
    pub backend: Arc<Backend>,
}

/// The egress: configuration, clients, kept exchanges, registry.
pub struct Egress {
    pub config: EgressConfig,
    pub services: Vec<Service>,
    pub kept: Kept,
    /// Mirrored inbound requests by id (written by the proxy).
    pub registry: Arc<Registry>,
    /// The open records whose outbound calls are being gathered (by
    /// correlation id; written by the proxy, appended to by the live side).
    pub recording: Arc<crate::record::calls::Open>,
    telemetry: Arc<Telemetry>,
    sidefx: sidefx::Queue,
    /// For calls to unlisted hosts that are forwarded (plain HTTP).
    plain: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("listen", &self.config.listen)
            .field("shadow_listen", &self.config.shadow_listen)
            .finish()
    }
}

/// How an egress call ended, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Replayed,
    Unmatched,
    Denied,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Replayed => "replayed",
            Outcome::Unmatched => "unmatched",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One call as the handlers see it.
pub(crate) struct Call {
    pub side: Side,
    pub started: Instant,
    pub peer: SocketAddr,
    pub method: Method,
    pub target: target::Target,
    pub id: Option<String>,
}

/// The name unlisted hosts are counted under.
pub const UNLISTED: &str = "unlisted";

impl Egress {
    /// Builds the egress of `config`, if it has one.
    pub fn new(
        config: &Config,
        telemetry: Arc<Telemetry>,
        engine: Arc<Engine>,
    ) -> Option<Arc<Egress>> {
        let ec = config.egress.clone()?;
        let services = ec
            .services
            .iter()
            .filter_map(|s| {
                let bc = config.backends.get(&s.backend)?;
                Some(Service {
                    name: Arc::from(s.name.as_str()),
                    config: s.clone(),
                    backend: Arc::new(Backend::new(bc.clone())),
                })
            })
            .collect();
        let metrics = &telemetry.metrics;
        let kept = Kept::new(
            ec.keep,
            ec.max_exchanges,
            ec.max_bytes,
            metrics.egress_kept.clone(),
            metrics.egress_evicted.clone(),
        );
        let registry = Arc::new(Registry::new(ec.max_exchanges.max(1024) * 4, ec.keep));
        let sidefx = sidefx::Queue::start(engine);
        Some(Arc::new(Egress {
            services,
            kept,
            registry,
            recording: crate::record::calls::Open::new(),
            telemetry,
            sidefx,
            plain: {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new()).build(connector)
            },
            config: ec,
        }))
    }

    /// The first service whose match holds for the call.
    fn service(
        &self,
        t: &target::Target,
        method: &Method,
        req: &http::HeaderMap,
    ) -> Option<&Service> {
        self.services.iter().find(|s| {
            s.config.matcher.matches(&t.host, t.path(), method, req)
                && s.config.matcher.query_matches(t.path_and_query.query())
        })
    }

    /// Counts and logs one call.
    fn done(
        &self,
        call: &Call,
        service: &str,
        outcome: Outcome,
        status: u16,
        bytes: u64,
        route: Option<&str>,
    ) {
        let m = &self.telemetry.metrics;
        m.egress_requests
            .get_or_create(&EgressLabels {
                service: service.to_string(),
                side: call.side.as_str().to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
        let seconds = call.started.elapsed().as_secs_f64();
        m.egress_duration
            .get_or_create(&EgressSideLabels {
                service: service.to_string(),
                side: call.side.as_str().to_string(),
            })
            .observe(seconds);
        let role = match call.side {
            Side::Live => "egress-live",
            Side::Shadow => "egress-shadow",
        };
        self.telemetry.access.write(&AccessRecord {
            route: route.unwrap_or("-"),
            backend: service,
            role,
            method: call.method.as_str(),
            authority: Some(&call.target.authority),
            path: call.target.path(),
            status: Some(status),
            bytes,
            duration_ms: seconds * 1000.0,
            request_id: call.id.as_deref().unwrap_or("-"),
            trace_id: None,
            client: Some(call.peer),
            upstream: None,
            reason: Some(outcome.as_str()),
        });
    }

    /// A recorded request (`pending`) will carry the outbound calls that
    /// name it by one of the correlation headers: the ids its own head
    /// (`headers`, as sent to the primary) carries for `egress.correlate`.
    pub fn expect_calls(&self, pending: &mut crate::record::Pending, headers: &http::HeaderMap) {
        let ids: Vec<String> = self
            .config
            .correlate
            .iter()
            .filter_map(|name| target::correlation_id(headers, std::slice::from_ref(name)))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        pending.expect_calls(&self.recording, &ids);
    }

    /// Sends the "only in primary" differences of live calls that no
    /// shadow call matched within `keep`; called every second.
    pub fn sweep(&self) {
        self.sidefx.orphans(self.kept.sweep());
    }
}

/// A short JSON answer made by the egress itself.
pub(crate) fn answer(status: StatusCode, error: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": error }).to_string();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

impl Egress {
    /// Reads a call's body (at most `egress.max_body_bytes`); on failure
    /// the call is counted `failed` for `service` and the answer to send is
    /// returned.
    pub(crate) async fn call_body(
        &self,
        call: &Call,
        service: &str,
        body: Incoming,
    ) -> Result<Bytes, Response<ProxyBody>> {
        read_body(body, self.config.max_body_bytes)
            .await
            .inspect_err(|resp| {
                let status = resp.status().as_u16();
                self.done(call, service, Outcome::Failed, status, 0, None);
            })
    }
}

/// Reads a call's body, at most `cap` bytes.
async fn read_body(body: Incoming, cap: usize) -> Result<Bytes, Response<ProxyBody>> {
    match Limited::new(body, cap).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(answer(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"))
        }
        Err(_) => Err(answer(StatusCode::BAD_REQUEST, "body_failed")),
    }
}

async fn handle(
    eg: Arc<Egress>,
    side: Side,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let target = match target::of(&req) {
        Ok(t) => t,
        Err(why) => return answer(StatusCode::BAD_REQUEST, why),
    };
    let call = Call {
        side,
        started,
        peer,
        method: req.method().clone(),
        id: target::correlation_id(req.headers(), &eg.config.correlate),
        target,
    };
    if req.method() == Method::CONNECT {
        return live::connect(&eg, call, req).await;
    }
    let service = eg.service(&call.target, &call.method, req.headers());
    match side {
        Side::Live => live::call(&eg, call, service, req).await,
        Side::Shadow => shadow::call(&eg, call, service, req).await,
    }
}

/// Addresses the egress listeners were bound to.
#[derive(Debug, Clone, Copy)]
pub struct EgressAddrs {
    pub live: SocketAddr,
    pub shadow: SocketAddr,
}

/// Binds both listeners.
pub async fn bind(
    config: &EgressConfig,
) -> Result<[(TcpListener, SocketAddr); 2], (SocketAddr, std::io::Error)> {
    let mut out = Vec::with_capacity(2);
    for address in [config.listen, config.shadow_listen] {
        let l = TcpListener::bind(address).await.map_err(|e| (address, e))?;
        let bound = l.local_addr().unwrap_or(address);
        out.push((l, bound));
    }
    let mut it = out.into_iter();
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => Ok([a, b]),
        _ => Err((config.listen, std::io::Error::other("listeners not bound"))),
    }
}

/// Serves both sides until `stop`, then lets calls in flight finish (at
/// most `grace`). Also sweeps expired exchanges every second.
pub fn serve(
    eg: Arc<Egress>,
    listeners: [(TcpListener, SocketAddr); 2],
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> Vec<JoinHandle<()>> {
    let [(live, _), (shadow, _)] = listeners;
    let mut tasks = vec![tokio::spawn(accept_loop(
        eg.clone(),
        live,
        Side::Live,
        stop.clone(),
        grace,
    ))];
    // The shadow side runs on a runtime of its own with one thread: a
    // flood of shadow calls takes at most that thread's share of the CPU,
    // never the live side's workers.
    let (shadow_eg, shadow_stop) = (eg.clone(), stop.clone());
    let std_listener = shadow.into_std();
    tasks.push(tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("egress-shadow")
            .build();
        let (Ok(rt), Ok(std_listener)) = (rt, std_listener) else {
            tracing::error!("cannot start the egress shadow side");
            return;
        };
        rt.block_on(async move {
            match TcpListener::from_std(std_listener) {
                Ok(l) => accept_loop(shadow_eg, l, Side::Shadow, shadow_stop, grace).await,
                Err(e) => tracing::error!(error = %e, "cannot serve the egress shadow side"),
            }
        });
    }));
    let mut stop_sweep = stop;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop_sweep.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => eg.sweep(),
            }
        }
    });
    tasks
}

async fn accept_loop(
    eg: Arc<Egress>,
    listener: TcpListener,
    side: Side,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let eg = eg.clone();
        let service = service_fn(move |req| {
            let eg = eg.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(eg, side, peer, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "egress connection ended");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}
