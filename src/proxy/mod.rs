//! The proxy: listeners (`server`), the request path as named phases
//! (`phases`), upstream clients (`upstream`), tunnels for Upgrade and
//! CONNECT (`tunnel`), header manners (`headers`) and the one place that
//! turns failures into responses (`error`).

pub mod error;
pub mod guard;
pub mod path;
pub mod phases;
pub mod server;
pub mod tls;
pub mod tunnel;
