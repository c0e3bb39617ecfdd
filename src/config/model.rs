//! The validated configuration: every value parsed, every reference checked.
//! This is what the runtime is built from; it never holds raw strings that
//! still need interpreting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

/// A whole, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
    /// Extra names (lower case, no port) the admin server answers to.
    pub admin_hosts: Vec<String>,
    /// Most admin connections open at once.
    pub admin_max_connections: usize,
    /// Where `/metrics` is served without the token (`metrics.listen`).
    pub metrics_listen: Option<SocketAddr>,
    pub backends: BTreeMap<String, BackendConfig>,
    pub routes: Vec<RouteConfig>,
    pub access_log: bool,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    /// Time after SIGTERM spent not ready but still serving, before the drain.
    pub shutdown_delay: Duration,
    pub watch_interval: Duration,
    /// Where results and promotion state are kept.
    pub store: StoreLocation,
    /// Heartbeat of a replica on a shared store (`fleet_heartbeat`).
    pub fleet_heartbeat: Duration,
    pub comparison: ComparisonSettings,
    /// The files this configuration was read from, in order.
    pub sources: Vec<PathBuf>,
    /// Request paths normalised before routing (see `proxy::path`).
    pub normalize_path: bool,
    /// Peers whose forwarding fields are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Secrets hidden in stored and served comparison examples.
    pub redact: crate::diff::Redactor,
    /// The egress proxy (`egress:`), when configured.
    pub egress: Option<EgressConfig>,
}

impl Config {
    /// Whether `peer` is a configured trusted proxy.
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

/// Where the store lives (`store:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    File(PathBuf),
    /// Nothing kept on disk.
    Memory,
    /// A PostgreSQL database shared by a fleet of replicas: the URL as
    /// written (`postgres://…` or `postgresql://…`, `sslmode` honoured).
    Postgres(String),
}

/// One client-facing listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
}

/// TLS of a listener: its certificates, read and parsed at load time, and
/// the rustls configuration built from them.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// The first one is the default (no SNI, or a name no entry lists).
    pub certificates: Vec<ServerCertificate>,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl PartialEq for ListenerTls {
    fn eq(&self, other: &Self) -> bool {
        self.certificates == other.certificates
    }
}

/// One listener certificate.
#[derive(Debug, Clone)]
pub struct ServerCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Lower-case names chosen by SNI (`*.example.com` allowed).
    pub server_names: Vec<String>,
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

impl PartialEq for ServerCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.server_names == other.server_names
            && self.certified.cert == other.certified.cert
    }
}

/// Limits on client requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Bytes held for shadow traffic at most (`limits.shadow_memory`).
    pub shadow_memory: usize,
    /// A client connection silent this long is closed gracefully (zero: never).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            shadow_memory: 128 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Scheme used to reach an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

/// HTTP version spoken to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS: ALPN `http/1.1`).
    #[default]
    Http1,
    /// HTTP/2: prior knowledge over cleartext, ALPN `h2` over TLS.
    H2,
    /// Over TLS, whatever ALPN settles on (h2 preferred); HTTP/1.1 over cleartext.
    Auto,
}

/// TLS towards a backend's `https://` endpoints.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Trusted CA file; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key files (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// SNI and verified name; `None`: the endpoint host.
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    /// The certificates of the files above and a fingerprint of the client
    /// key, so a reload notices changed files.
    pub material: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key_fingerprint: u64,
    /// Built at load time, without ALPN.
    pub client_config: Arc<rustls::ClientConfig>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_file == other.ca_file
            && self.client_cert == other.client_cert
            && self.server_name == other.server_name
            && self.insecure_skip_verify == other.insecure_skip_verify
            && self.material == other.material
            && self.key_fingerprint == other.key_fingerprint
    }
}

/// One instance of a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host:port`
    pub authority: String,
}

/// A named group of endpoints and how to talk to them.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub eject_for: Duration,
    pub max_idle_per_endpoint: usize,
    pub retry: bool,
    pub protocol: UpstreamProtocol,
    /// Present when the endpoints are `https://`.
    pub tls: Option<UpstreamTls>,
}

/// A route, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: RouteMatch,
    pub backend: String,
    /// Weighted split of live traffic: (backend, weight). Empty: all to `backend`.
    pub split: Vec<(String, u32)>,
    pub mirrors: Vec<MirrorConfig>,
    pub promotion: Option<PromotionConfig>,
    /// Comparison rules (used by mirrors with `compare`).
    pub compare: RouteCompareConfig,
    /// Backend of the secondary (noise learning), if any.
    pub secondary: Option<String>,
    /// Largest request body accepted (`None`: no limit).
    pub max_body_bytes: Option<u64>,
    /// Header changes on the primary's request and response.
    pub headers: RouteHeaders,
    /// Header changes by answering backend (a split share's `headers`),
    /// applied before the route's own.
    pub backend_headers: BTreeMap<String, RouteHeaders>,
    /// Retries of the primary request.
    pub retries: Option<RetryPolicy>,
    /// Path and authority rewrites of the upstream request.
    pub rewrite: Option<Rewrite>,
    /// CORS: preflights answered here, headers added to answers.
    pub cors: Option<CorsPolicy>,
    /// Recording of a share of the route's traffic (`record:`).
    pub record: Option<std::sync::Arc<super::record::RecordConfig>>,
}

/// A route's CORS policy, with its header values ready.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// Allowed origins; `None` in the list allows any.
    pub origins: Vec<Option<ValueMatch>>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
}

/// A route's rewrite of the request sent upstream (and copied to mirrors).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    /// Host / `:authority` sent instead of the client's.
    pub authority: Option<HeaderValue>,
}

/// How the path is rewritten.
#[derive(Debug, Clone, PartialEq)]
pub enum PathRewrite {
    /// The whole path is replaced.
    Full(String),
    /// A leading `prefix` (ASCII case ignored) is replaced by `with`; an
    /// empty result becomes `/`.
    Prefix { prefix: String, with: String },
}

/// Header changes on a request and on its response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteHeaders {
    pub request: crate::protocol::headers::HeaderEdits,
    pub response: crate::protocol::headers::HeaderEdits,
}

/// When and how often the primary request is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Each try's time for the response head (`None`: the backend's timeout).
    pub per_try_timeout: Option<Duration>,
    pub on: Vec<RetryOn>,
    /// Statuses retried under `RetryOn::StatusCodes`.
    pub statuses: Vec<u16>,
    /// Pause before each retry.
    pub backoff: Duration,
}

/// A retry condition (Envoy's `retry_on` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// `5xx`: a 5xx answer, or no answer.
    FiveXx,
    /// `gateway-error`: 502, 503, 504, or no answer.
    GatewayError,
    /// `reset`: no answer (reset, closed, timed out) after connecting.
    Reset,
    /// `connect-failure`.
    ConnectFailure,
    /// `refused-stream`: an HTTP/2 stream refused by the backend.
    RefusedStream,
    /// `retriable-status-codes`: a status in `RetryPolicy::statuses`.
    StatusCodes,
    /// `retriable-4xx`: 409.
    Retriable4xx,
    /// A gRPC status in the response head (`cancelled` 1,
    /// `deadline-exceeded` 4, `resource-exhausted` 8, `internal` 13,
    /// `unavailable` 14).
    Grpc(u16),
}

/// Comparison rules of a route, checked at load.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteCompareConfig {
    pub rules: crate::diff::RulesConfig,
    pub endpoints: Vec<String>,
    pub max_endpoints: usize,
    pub noise: crate::diff::NoiseThresholds,
}

/// Comparison workers and retention.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonSettings {
    pub workers: usize,
    pub queue: usize,
    pub max_examples: usize,
    pub example_max_age: Duration,
}

impl Default for ComparisonSettings {
    fn default() -> Self {
        ComparisonSettings {
            workers: 1,
            queue: 1024,
            max_examples: 5,
            example_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// `manual` or `auto` promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromotionMode {
    Manual,
    Auto,
}

/// Promotion gates of a route, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionConfig {
    /// The candidate: a backend that is a mirror of the route.
    pub mirror: String,
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_rate_delta: GateLimit,
    pub max_p99_ratio: GateLimit,
    /// A candidate p99 at most this much above the baseline's passes the
    /// p99 gate whatever the ratio.
    pub p99_slack: Duration,
    pub max_diff_rate: GateLimit,
    pub mode: PromotionMode,
    /// Percent of live traffic per step; empty: switch at once.
    pub steps: Vec<u32>,
    pub step_interval: Duration,
    pub evaluate_every: Duration,
}

/// Default `promotion.p99_slack`.
pub const DEFAULT_P99_SLACK: Duration = Duration::from_millis(2);

/// A promotion gate's limit as configured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum GateLimit {
    /// Not written: the default limit applies (see `promote::gates`).
    #[default]
    Default,
    /// Written as a number.
    Set(f64),
    /// Turned off: `off`, or `gates: none`.
    Off,
}

impl PromotionConfig {
    /// The documented defaults, for `mirror`: what a route without a
    /// `promotion:` block is judged by (manual mode, default gates).
    pub fn defaults(mirror: String) -> Self {
        PromotionConfig {
            mirror,
            window: Duration::from_secs(600),
            min_requests: 100,
            max_error_rate_delta: GateLimit::Default,
            max_p99_ratio: GateLimit::Default,
            p99_slack: DEFAULT_P99_SLACK,
            max_diff_rate: GateLimit::Default,
            mode: PromotionMode::Manual,
            steps: Vec::new(),
            step_interval: Duration::from_secs(300),
            evaluate_every: Duration::from_secs(5),
        }
    }
}

/// Conditions for a route; all present ones must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Query parameter conditions (name, value as written in the URL).
    pub query: Vec<(String, ValueMatch)>,
}

/// Host condition (compared without the port, case-insensitively).
#[derive(Debug, Clone)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

/// Path condition.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

/// Header value condition.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

/// A shadow target of a route, validated.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub backend: String,
    /// 0.0 to 100.0
    pub percent: f64,
    /// Lower-case header or cookie name.
    pub sample_key: Option<String>,
    pub host_suffix: String,
    pub methods: Option<Vec<Method>>,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
    pub max_body_bytes: u64,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub compare: bool,
    pub compare_max_body_bytes: u64,
}

/// Validated `egress:`.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    pub listen: SocketAddr,
    pub shadow_listen: SocketAddr,
    /// Lower-case header names, in order.
    pub correlate: Vec<HeaderName>,
    pub keep: Duration,
    pub max_exchanges: usize,
    pub max_bytes: usize,
    pub max_body_bytes: usize,
    pub live_default: Unlisted,
    pub shadow_default: Unlisted,
    pub services: Vec<EgressService>,
}

/// What an unlisted host gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlisted {
    Forward,
    Deny,
}

/// How a shadow call of a service is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowMode {
    Replay,
    Forward,
    Deny,
}

/// One validated `egress.services[]` entry.
#[derive(Debug, Clone)]
pub struct EgressService {
    pub name: String,
    pub matcher: RouteMatch,
    pub backend: String,
    pub shadow: ShadowMode,
    pub wait: Duration,
    pub compare: bool,
}
