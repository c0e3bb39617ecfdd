//! shadowgate: a traffic-shadowing proxy.
//!
//! Serve every request from the route's primary backend, mirror a share of
//! them to shadow backends without ever slowing the primary, compare the
//! answers, judge the shadow, and promote it when it has earned it.
//!
//! Modules follow the product's concepts: `config` (files → validated
//! model), `runtime` (live state built from a config, swapped on reload),
//! `proxy` (listeners and the request path), `mirror` (sampling, body tee,
//! bounded shadow dispatch), `telemetry` (logs and metrics), `admin` (the
//! admin server), `app` (start, reload, drain), `process` (descriptor table set-up), `demo` and `bench_backend`
//! (sample servers).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod bench_backend;
pub mod body;
pub mod compare;
pub mod comparison;
pub mod config;
pub mod demo;
pub mod mirror;
pub mod process;
pub mod promote;
pub mod proxy;
pub mod runtime;
pub mod store;
pub mod telemetry;
