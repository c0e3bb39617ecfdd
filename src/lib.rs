//! shadowgate: a traffic-shadowing proxy.
//!
//! Serve every request from the route's primary backend, mirror a share of
//! them to shadow backends without ever slowing the primary, compare the
//! answers, judge the shadow, and promote it when it has earned it.
//!
//! Modules follow the product's concepts:
//!
//! - `config`: files (native YAML, or Istio / Gateway API manifests) →
//!   validated model;
//! - `runtime`: live state built from a config (with the promotion
//!   switches of `runtime::switch` applied), swapped atomically on reload;
//! - `proxy`: listeners, TLS, the request path, guards on malformed
//!   requests, upgrades and CONNECT tunnels;
//! - `upstream`: the primary's client of a backend (endpoint health,
//!   connections, HTTP/1.1 and HTTP/2 pools);
//! - `mirror`: sampling, body tee, bounded shadow dispatch, and the copy's
//!   own HTTP/1.1 client;
//! - `memory`: the byte budget of what is held for shadows;
//! - `protocol`: header manners, gRPC status, ALPN ids (shared by the
//!   request path and the copy path);
//! - `body`: the body types of the request path (what goes upstream, what
//!   goes back to the client);
//! - `diff`: pure comparison of two answers (JSON, bodies, rules,
//!   noise, per-endpoint tallies and reports);
//! - `compare`: the comparison pipeline — captures of the primary's
//!   answer, the bounded queue, worker threads, tallies, persistence;
//! - `record`: recording of a share of a route's requests and the
//!   primary's answers to JSON-lines files (for replay);
//! - `egress`: the apps' egress proxy: v1's outbound calls forwarded and
//!   kept, v2's replayed from them and compared (side effects);
//! - `replay`: `shadowgate replay`: recorded requests sent to a build,
//!   its answers judged against the recorded ones (a CI gate);
//! - `promote`: promotion gates, switching, rollback and `auto` mode;
//! - `store`: persisted state (SQLite file or memory);
//! - `telemetry`: access logs, Prometheus metrics, sliding windows;
//! - `tls`: certificate and key files read into rustls types, and the
//!   listener and upstream TLS configurations built from them;
//! - `admin`: the admin server (JSON API, dashboard, `/metrics`) and the
//!   CLI's client and terminal views;
//! - `app`: start, reload, drain; `process`: descriptor table set-up.
//!
//! The sample servers (`demo`, `bench-backend`) are tools of the binary
//! (`src/tools/`), not part of the library.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod compare;
pub mod config;
pub mod diff;
pub mod egress;
pub mod memory;
pub mod mirror;
pub mod process;
pub mod promote;
pub mod protocol;
pub mod proxy;
pub mod record;
pub mod replay;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
