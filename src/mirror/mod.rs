//! Mirroring: which requests are copied (`sample`), how the body reaches
//! the copies without holding back the primary (`tee`: each chunk into
//! every copy's bounded queue, no gathering copy), and how copies are sent:
//! spawned at once, streamed, bounded, timed out, and counted when dropped
//! or abandoned mid-body (`dispatch`); the copy's own HTTP/1.1 client
//! (`client`, over `wire`).
//!
//! `bound` is the per-mirror in-flight bound that survives reloads (the
//! bytes held for shadows are bounded by `crate::memory`).
//!
//! Invariant: nothing here is ever awaited by the primary request path.

pub mod bound;
pub mod client;
pub mod dispatch;
pub mod sample;
pub mod target;
pub mod tee;
pub mod wire;

pub use dispatch::{admit, dispatch, CompareLink, MirrorBody, MirrorHead, MirrorJob, RequestView};
pub use target::{Mirror, RouteShadows};
