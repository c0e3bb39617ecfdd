//! The configuration file as written: serde structs that mirror the YAML
//! one to one. Nothing here is validated beyond its shape; `validate` turns
//! these into runtime types. Every field's doc comment is user documentation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One configuration file. Several files merge: backends and routes add up.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where the proxy accepts client traffic: one address (`127.0.0.1:8080`)
    /// or a list of listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<RawListen>,
    /// Address of the admin server (health, metrics, API, dashboard).
    /// Default `127.0.0.1:9901`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Bearer token the admin server requires on every endpoint except
    /// `/healthz` and `/readyz`. Required when `admin` is not a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Extra host names the admin server answers to (the `Host` header,
    /// without port), e.g. Kubernetes Service names such as
    /// `shadowgate-admin.default.svc`. It always answers to IP addresses,
    /// `localhost` and `*.localhost`; any other name is refused with 421 so
    /// that a DNS-rebinding page cannot read the API. Applied on reload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_hosts: Vec<String>,
    /// Most connections the admin server keeps open at once; more are
    /// closed as soon as they are accepted, so the admin port can never use
    /// up the descriptors the proxy listeners need (it is also held to a
    /// quarter of the process's descriptor limit). Default 256. Applied on
    /// reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_max_connections: Option<usize>,
    /// A listener of its own for Prometheus: `GET /metrics` only, plain
    /// HTTP, no admin token (so a scrape job needs no secret), with the
    /// admin server's cut-offs (`limits.header_read_timeout`,
    /// `admin_max_connections`) and host check (`admin_hosts`). Off unless
    /// set. Changes only on restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RawMetrics>,
    /// Named groups of upstream endpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, RawBackend>,
    /// Routes, matched in order; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RawRoute>,
    /// Access log: `stdout` (default) or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// Limits applied to every client connection and request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawLimits>,
    /// How long SIGTERM waits for in-flight requests before exiting. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,
    /// How long after SIGTERM the proxy keeps accepting and serving new
    /// connections while `/readyz` answers 503, before it stops accepting
    /// and drains (`shutdown_grace`): the time Kubernetes needs to take the
    /// pod out of its Services' endpoints, so a rolling update loses no
    /// request. A second SIGTERM or Ctrl-C skips the rest of it. Default `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_delay: Option<String>,
    /// Comparison workers and retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<RawComparison>,
    /// Where results and promotion state are kept: a SQLite file path
    /// (default `shadowgate.db`, relative to the first config file), `memory`,
    /// or a PostgreSQL URL (`postgres://user:pass@host:port/db?sslmode=…`)
    /// shared by every replica of a fleet (docs/fleet.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// With a PostgreSQL `store:`: how often this replica's heartbeat is
    /// written; a replica is listed as gone after 3 missed ones. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_heartbeat: Option<String>,
    /// Kubernetes service hosts as written in Istio / Gateway API manifests,
    /// mapped to endpoints: a list, or a map from subset name to a list.
    /// Overrides DNS; needed for subsets and for running outside a cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, RawService>,
    /// How often the config files are checked for changes (`0s` turns the
    /// watch off; SIGHUP still reloads). Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_interval: Option<String>,
    /// Whether request paths are normalised before routing, as Envoy's
    /// `normalize_path` and `merge_slashes` do: percent-encoded unreserved
    /// characters decoded (`%61` → `a`; `%2F` is kept), runs of slashes
    /// merged, `.` and `..` segments removed (`..` above the root stays at
    /// the root). The normalised path is what is routed and what the
    /// primary and the mirrors are sent. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize_path: Option<bool>,
    /// Peers (CIDR blocks or single addresses, `10.0.0.0/8`, `::1`) whose
    /// forwarding fields are believed: from them `x-forwarded-for` is
    /// appended to and `x-forwarded-host` / `x-forwarded-proto` are kept.
    /// From any other peer those fields are replaced by what shadowgate
    /// saw. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,

    /// Secrets hidden in everything stored or served (comparison examples
    /// and their differences, in the store and on the admin API): names
    /// added to the built-in lists, which always apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<RawRedact>,

    /// shadowgate as the apps' egress proxy: v1's outbound calls forwarded
    /// and kept, v2's answered with v1's answers and compared
    /// (`docs/egress.md`). Off unless set. Changes only on restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<RawEgress>,

    /// Settings for the routes imported from Kubernetes manifests (Istio,
    /// Gateway API) read with this config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<RawKube>,
}

/// How routes imported from Kubernetes manifests are built.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawKube {
    /// Appended to the Host of the mirrors' copies of imported routes, as
    /// a native mirror's `host_suffix`: `""` keeps the Host as the client
    /// sent it (what Envoy Gateway and recent Istio allow). Default `-shadow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_suffix: Option<String>,
}

/// Names whose values are redacted, added to the built-in ones.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRedact {
    /// Header names whose values are hidden, besides `authorization`,
    /// `proxy-authorization`, `cookie`, `set-cookie`, `x-api-key`,
    /// `x-auth-token`, `x-csrf-token` and `x-xsrf-token`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Query parameter names (case-insensitive) whose values are hidden,
    /// besides `token`, `access_token`, `key`, `api_key`, `password`,
    /// `secret`, `signature`, `sig`, `code` and the like.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<String>,
}

/// `listen:` is either a single address or a list of listeners.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawListen {
    /// `listen: 127.0.0.1:8080`
    One(String),
    /// `listen: [{ address: 127.0.0.1:8443, tls: {…} }]`
    Many(Vec<RawListener>),
}

/// One listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Socket address to bind, e.g. `0.0.0.0:8080`.
    pub address: String,
    /// TLS for this listener (PEM certificate chain and private key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
}

/// PEM files for a TLS listener: `cert` and `key` for one certificate, or
/// `certificates` for several chosen by SNI. Relative paths are relative to
/// the configuration file. The files are re-read on every reload.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Path of the PEM certificate chain (leaf first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Path of the PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Several certificates, chosen by the name the client asks for (SNI);
    /// the first one also answers clients that ask for no name or an
    /// unlisted one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<RawCertificate>,
}

/// One certificate of a TLS listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// Path of the PEM certificate chain (leaf first).
    pub cert: String,
    /// Path of the PEM private key.
    pub key: String,
    /// Names this certificate answers for (`example.com`, `*.example.com`).
    /// Needed on every certificate but the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

/// The metrics listener (`metrics:`).
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address that serves `/metrics` without the admin token, e.g.
    /// `0.0.0.0:9090`.
    pub listen: String,
}

/// Limits on what clients may send.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time a client has to send a complete request head. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
    /// Largest request head (request line and headers). Default `64KiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<RawSize>,
    /// Most header fields in one request. Default `100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<usize>,
    /// Bytes the proxy may hold for shadow traffic at once: request-body
    /// copies, responses captured for comparison and queued comparisons.
    /// What does not fit is dropped (`memory`). Default `128MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_memory: Option<RawSize>,
    /// A client connection with no byte in either direction for this long
    /// is closed gracefully (HTTP/2: GOAWAY, in-flight streams finish).
    /// Default `5m`; `0s` never. (An idle HTTP/1.1 keep-alive connection
    /// is closed after `header_read_timeout` already.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// A named group of endpoints.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `host:port`, `http://host:port` or `https://host:port` of each
    /// instance; requests are spread round robin. All endpoints of a backend
    /// use the same scheme.
    pub endpoints: Vec<String>,
    /// HTTP version towards the backend: `http1` (default), `h2` (prior
    /// knowledge over cleartext, ALPN `h2` over TLS; needed for gRPC) or
    /// `auto` (ALPN decides over TLS; HTTP/1.1 over cleartext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// PEM file of the CA certificates trusted for `https://` endpoints.
    /// Default: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM client certificate chain presented to `https://` endpoints (mTLS);
    /// needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Accept any certificate from `https://` endpoints. For tests only:
    /// logged as a warning whenever the backend is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Name sent as SNI and checked against the certificate, instead of the
    /// endpoint host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Time allowed to open a connection. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// Time allowed from sending a request to receiving its response head.
    /// Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How long an endpoint that refused a connection is passed over. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eject_for: Option<String>,
    /// Idle keep-alive connections kept per endpoint. Default `256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<usize>,
    /// Retry a request that failed to connect once on another endpoint, for
    /// idempotent methods without a body. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<bool>,
}

/// A route: which requests it takes, where they go, what is mirrored.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name, used in logs, metrics and the API.
    pub name: String,
    /// Which requests this route takes. Absent: every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<RawMatch>,
    /// Name of the primary backend: its response is what the client gets.
    pub backend: String,
    /// Split of live traffic between backends by weight, e.g. a canary
    /// (`[{backend: v1, weight: 90}, {backend: v2, weight: 10}]`). When set,
    /// `backend` is still the route's primary for comparison and promotion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<RawSplit>,
    /// Shadow copies of a share of this route's requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<RawMirror>,
    /// Comparison rules for this route's mirrors with `compare: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<RawCompareRules>,
    /// A second instance of the primary's version: sampled requests also go
    /// there, and fields that differ between primary and secondary are noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
    /// Noise thresholds used with `secondary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<RawNoise>,
    /// When and how a mirror is promoted to primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<RawPromotion>,
    /// Largest request body this route accepts. A larger declared
    /// `Content-Length` is answered 413 before anything reaches a backend; a
    /// chunked body is cut at the first byte over it. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<RawSize>,
    /// Header changes on the primary's request and response (Istio's
    /// `headers`, the Gateway API's header modifier filters). The request
    /// changes are made before the request is copied, so mirrors get them
    /// too (as Envoy does); the response changes apply to the primary's
    /// answer only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RawRouteHeaders>,
    /// Retries of the primary request (never of a mirror's copy), for
    /// requests without a body or with a declared body of at most 64 KiB
    /// (read whole first, then sent again). Default: none (the backend's one retry on
    /// a refused connection, `backends.<name>.retry`, still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RawRetries>,
    /// Path and authority rewrites of the request sent upstream (Istio's
    /// `rewrite`, the Gateway API's `URLRewrite`), made before the request
    /// is copied, so mirrors get them too; the mirror's Host suffix is
    /// added to the rewritten authority. Routing, the access log and
    /// comparison endpoint templates keep the client's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RawRewrite>,
    /// Cross-origin resource sharing (Istio's `corsPolicy`): a preflight
    /// (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
    /// allowed origin is answered by the proxy, reaching no backend and no
    /// mirror; the primary's answers to allowed origins get the CORS
    /// response headers. Requests from other origins pass untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<RawCors>,
    /// Recording of a share of this route's requests and the primary's
    /// answers to a JSON-lines file, for replay (`docs/replay.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RawRecord>,
}

/// `routes[].record` as written.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRecord {
    /// File the records are appended to, one JSON object a line; relative
    /// to the configuration file's directory. A name ending in `.zst`
    /// (`captures/items.jsonl.zst`) is written zstd-compressed.
    pub file: String,
    /// Share of the route's requests recorded, 0 to 100. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Methods recorded (any case). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Largest request body and largest answer body kept in a record
    /// (each); a longer body is recorded empty with `body_truncated: true`.
    /// Default 1MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<RawSize>,
    /// Size at which the file is rotated (renamed `<file>.1`, older ones
    /// shifted up). Default 64MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<RawSize>,
    /// Files kept, the one being written included (so `<file>.1` up to
    /// `<file>.<max_files - 1>`); older ones are deleted. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
    /// With `egress:` on: most outbound calls kept in one record (made
    /// through the egress live listener while answering it); the calls
    /// past it are counted in the line's `calls_cut`. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<usize>,
}

/// A route's CORS policy.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Origins allowed: `https://a.example` (exact) or `{regex: …}`
    /// (anchored); `"*"` allows any origin.
    pub allow_origins: Vec<RawHeaderMatch>,
    /// `Access-Control-Allow-Methods` of a preflight answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers` of a preflight answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers` of the primary's answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age` of a preflight answer (a duration, whole
    /// seconds sent). Default: not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Sends `Access-Control-Allow-Credentials: true`. Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
}

/// A route's request rewrite. Give at most one of `path` and `path_prefix`.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    /// The whole path is replaced by this one (the query string is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The path's leading `prefix` is replaced by this (plain text, as
    /// Envoy's `prefix_rewrite`: `/api` → `/v2` turns `/api/items` into
    /// `/v2/items`); an empty result becomes `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The prefix `path_prefix` replaces, compared without regard to ASCII
    /// case; a path that does not start with it is sent unchanged. Default:
    /// the route's `match.path_prefix`, or `/` when the route has no path
    /// condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The Host (HTTP/2 `:authority`) sent upstream instead of the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Header changes of a route (or of one share of its split): on the
/// request sent to the backend, and on the response sent to the client.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRouteHeaders {
    /// Changes to the request sent upstream (and copied to mirrors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RawHeaderOps>,
    /// Changes to the primary's response sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<RawHeaderOps>,
}

/// Header operations, applied in this order: `remove`, `set`, `add`.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    /// Headers set to this value, replacing any the message carries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers added with this value, after any the message carries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Retries of a route's primary request.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Retries after the first try (so `2` means at most 3 tries), 0 to 10.
    pub attempts: u32,
    /// Time each try has to get the response head. Default: the backend's
    /// `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// When a try is retried, with Envoy's condition names: `5xx` (a 5xx
    /// answer, or no answer), `gateway-error` (502, 503, 504 or no
    /// answer), `reset` (no answer: connection reset or closed, or the try
    /// timed out), `connect-failure`, `refused-stream`,
    /// `retriable-status-codes` (a status in `retriable_status_codes`),
    /// `retriable-4xx` (409), gRPC `cancelled`, `deadline-exceeded`,
    /// `internal`, `resource-exhausted`, `unavailable` (a `grpc-status` in
    /// the response head), or a status code written as a number (`503`).
    /// Default `[connect-failure, refused-stream, unavailable, cancelled,
    /// retriable-status-codes]` with `retriable_status_codes: [503]` (Istio's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
    /// Statuses retried with `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Pause before each retry. Default `25ms` (Envoy's base interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// Promotion gates of a route. A gate left out has its default limit
/// (`max_error_rate_delta` 1, `max_p99_ratio` 1.5, and `max_diff_rate` 1
/// when the candidate compares); `off` turns one gate off, `gates: none`
/// all of them.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPromotion {
    /// The mirror (backend name) that may become primary. Default: the first mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Span the gates are judged over, at most `15m`. Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Requests each side needs in the window before a verdict. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// `default` (the default): gates left out have their default limits.
    /// `none`: every gate is off (an explicit opt-out; no gate may then be
    /// given a limit). Shown in `status` and on the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<String>,
    /// Largest allowed error rate of the candidate minus the baseline's, in
    /// percentage points (errors: 5xx and failed exchanges). Default 1;
    /// `off` turns the gate off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_delta: Option<RawGate>,
    /// Largest allowed p99 latency of the candidate over the baseline's.
    /// Default 1.5; `off` turns the gate off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<RawGate>,
    /// A candidate p99 at most this much above the baseline's passes the
    /// p99 gate whatever the ratio (at sub-millisecond latencies a ratio
    /// alone fails on jitter). Default `2ms`; `0ms`: the ratio alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_slack: Option<String>,
    /// Largest allowed rate of real differences (after noise), in percent
    /// of compared pairs. Default 1 when the candidate's mirror compares
    /// (`compare: true`); `off` turns the gate off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_diff_rate: Option<RawGate>,
    /// `manual` (default): promote on request. `auto`: promote when every
    /// gate passes, and roll back by itself when one fails afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Progressive switch: shares of live traffic (percent) answered by the
    /// candidate, each step gated, e.g. `[10, 50, 100]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<u32>>,
    /// Time between steps. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_interval: Option<String>,
    /// How often `auto` mode judges the gates. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate_every: Option<String>,
}

/// A promotion gate's limit: a number, or `off`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawGate {
    Limit(f64),
    /// `off` (anything else is refused at load).
    Word(String),
}

/// Conditions a request must meet, all of them, for a route to take it.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Host, exact (`my-app.local`) or a wildcard (`*.example.com`). The port
    /// of the Host header is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path starts with this prefix, on segment boundaries (`/api` matches
    /// `/api` and `/api/x`, not `/apix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// Path matches this regular expression (anchored at both ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers the request must carry: name → value (exact), or name →
    /// `{ regex: … }` / `{ exact: … }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, RawHeaderMatch>,
    /// Query parameters the request must carry: name (case-sensitive) →
    /// value (exact), or name → `{ regex: … }` / `{ exact: … }`. Values are
    /// compared as written in the URL (not percent-decoded); a parameter
    /// given several times matches when one of its values does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, RawHeaderMatch>,
}

/// A header condition.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawHeaderMatch {
    /// The header's value equals this.
    Exact(String),
    /// `{ exact: … }` or `{ regex: … }`.
    Rule(RawHeaderRule),
}

/// `{ exact: … }` or `{ regex: … }`; exactly one of them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderRule {
    /// The header's value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The header's value matches this regular expression (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A shadow copy of a route's traffic.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// Name of the backend that receives the copies.
    pub backend: String,
    /// Share of requests mirrored, 0 to 100, decimals allowed. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Header or cookie whose value decides sampling, so that all of one
    /// user's requests are mirrored or none are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_key: Option<String>,
    /// Appended to the Host (or `:authority`) of the copy. Default `-shadow`;
    /// `""` keeps the Host as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_suffix: Option<String>,
    /// Only these methods are mirrored (e.g. `[GET, HEAD]`). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Header changes applied to the shadow copy only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RawHeaderRules>,
    /// Largest request body that is mirrored. Default `1MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<RawSize>,
    /// Time the shadow has to answer completely. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Most copies in flight at once; beyond it copies are dropped and
    /// counted. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Compare each shadow response with the primary's. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<bool>,
    /// Largest response body kept for comparison, on each side; larger ones
    /// are compared on status and headers only (counted as truncated).
    /// Default `1MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_max_body_bytes: Option<RawSize>,
}

/// What a route's comparison ignores, and how it groups endpoints.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCompareRules {
    /// Headers not compared, added to the defaults (`date`, `server`,
    /// `content-length`, hop-by-hop, `x-request-id`, tracing headers…);
    /// a trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_headers: Vec<String>,
    /// JSON paths not compared: `$.meta.timestamp`, `$..etag`, `$.items[*].id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_paths: Vec<String>,
    /// JSON arrays compared without regard to order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unordered_paths: Vec<String>,
    /// Relative tolerance for numbers, e.g. `0.001`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric_tolerance: Option<f64>,
    /// Explicit endpoint templates (`/users/{id}/orders`); others are learned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Most endpoints per route; more are grouped as `other`. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_endpoints: Option<usize>,
}

/// Noise thresholds (Diffy's): a field is a real difference only when its
/// primary-vs-shadow diff rate exceeds its primary-vs-secondary rate by both.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawNoise {
    /// Percent. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<f64>,
    /// Percent. Default 0.03.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute: Option<f64>,
}

/// Settings of the comparison workers and their results.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawComparison {
    /// Worker threads comparing pairs. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Pairs waiting for a worker; beyond it pairs are dropped and counted. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Example pairs kept per endpoint. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_examples: Option<usize>,
    /// Examples older than this are dropped, making room for fresh ones.
    /// Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example_max_age: Option<String>,
}

/// Header changes for a shadow copy.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderRules {
    /// Headers set (replaced) on the copy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers removed from the copy, e.g. `authorization`, `cookie`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A size: plain bytes (`65536`) or with a unit (`64KiB`, `1MiB`, `10MB`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawSize {
    /// A number of bytes.
    Bytes(u64),
    /// A number with a unit.
    Text(String),
}

/// Endpoints of a Kubernetes service host in `services:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawService {
    /// `httpbin: ["127.0.0.1:18081"]`
    Endpoints(Vec<String>),
    /// `httpbin: { v1: ["127.0.0.1:18081"], v2: ["127.0.0.1:18082"] }`
    Subsets(BTreeMap<String, Vec<String>>),
}

/// One share of a weighted split.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    /// Backend answering this share.
    pub backend: String,
    /// Relative weight (shares are weight / sum of weights).
    pub weight: u32,
    /// Header changes when this share's backend answers, applied before
    /// the route's own `headers` (so the route's win, as in Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RawRouteHeaders>,
}

/// `egress:` as written.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    /// Address of the live side: the primaries (v1) send their outbound
    /// calls here (`HTTP_PROXY`, or a base URL). Required.
    pub listen: String,
    /// Address of the shadow side: the mirrors (v2) send their outbound
    /// calls here. Required; must differ from `listen`.
    pub shadow_listen: String,
    /// Headers that tie an outbound call to the inbound request it belongs
    /// to, tried in order (apps must propagate one of them). `traceparent`
    /// stands for its W3C trace id. Default `[x-request-id, traceparent]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlate: Option<Vec<String>>,
    /// How long a live exchange is kept for replay (and how long a live
    /// call may wait for its shadow counterpart before it counts as "only
    /// in primary"). Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<String>,
    /// Most live exchanges kept at once; the oldest are evicted (counted).
    /// Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_exchanges: Option<usize>,
    /// Most bytes of kept exchanges (request and response bodies and
    /// heads); the oldest are evicted (counted). Default `64MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<RawSize>,
    /// Largest request or response body of an egress call. A larger
    /// request body is refused with 413; a larger live response is passed
    /// on but not kept (its shadow call gets the fallback). Default `1MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<RawSize>,
    /// What happens to a call from the live side to a host no service
    /// lists: `forward` (default; sent to the host it names) or `deny` (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_default: Option<String>,
    /// What happens to a call from the shadow side to a host no service
    /// lists: `deny` (default, 403) or `forward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_default: Option<String>,
    /// The outbound dependencies, matched in order; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<RawEgressService>,
}

/// One outbound dependency (`egress.services[]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawEgressService {
    /// Unique name, used in metrics, logs and diff endpoint names.
    pub name: String,
    /// Which outbound calls this service takes: the route matcher (`host`,
    /// `path_prefix` / `path_exact` / `path_regex`, `method`, `headers`).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<RawMatch>,
    /// A `backends:` entry the calls are sent to; `https://` endpoints mean
    /// TLS origination (the app calls `http://`, shadowgate calls `https://`).
    pub backend: String,
    /// What the shadow side's calls get: `replay` (default: v1's kept
    /// answer, nothing leaves), `forward` (sent on; for read-only
    /// dependencies) or `deny` (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    /// How long a replayed shadow call waits for v1's matching call when it
    /// arrives first. Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
    /// Compare each shadow call (method, path, query, request body) with
    /// its live counterpart; differences appear in the route's diff report.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<bool>,
}
