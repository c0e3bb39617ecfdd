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
//! - `runtime`: live state built from a config (with promotion switches
//!   applied), swapped atomically on reload;
//! - `proxy`: listeners, TLS, the request path, guards on malformed
//!   requests, gRPC, upgrades and CONNECT tunnels, and the upstream
//!   clients;
//! - `mirror`: sampling, body tee, bounded shadow dispatch;
//! - `body`: the body types of the request path (what goes upstream, what
//!   goes back to the client);
//! - `compare`: pure comparison of two answers (JSON, bodies, rules,
//!   noise, per-endpoint tallies and reports);
//! - `comparison`: the comparison engine — captures of the primary's
//!   answer, the worker queue, persisted results;
//! - `promote`: promotion gates, the switch, rollback and `auto` mode;
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
pub mod comparison;
pub mod config;
pub mod mirror;
pub mod process;
pub mod promote;
pub mod proxy;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod tls;
