//! The proxy: listeners (`server`, `guard`; certificates in `crate::tls`), the request path as
//! named phases (`phases`, carrying a `context::RequestContext`; the
//! primary's retries in `retry`, a route's
//! rewrite of the upstream path in `rewrite`, CORS in `cors`), tunnels
//! for Upgrade and CONNECT (`tunnel`), path checks (`path`) and the one
//! place that turns failures into responses (`error`). The primary's
//! upstream client is `crate::upstream`; header manners are
//! `crate::protocol::headers`.

pub mod context;
pub mod cors;
pub mod error;
pub mod guard;
pub mod idle;
pub mod path;
pub mod phases;
pub mod retry;
pub mod rewrite;
pub mod server;
pub mod tunnel;
