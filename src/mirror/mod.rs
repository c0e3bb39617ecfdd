//! Mirroring: which requests are copied (`sample`), how the body is copied
//! without holding back the primary (`tee`), and how copies are sent:
//! spawned, bounded, timed out, and counted when dropped (`dispatch`).
//!
//! Invariant: nothing here is ever awaited by the primary request path.

pub mod dispatch;
pub mod sample;
pub mod tee;

pub use dispatch::{admit, dispatch, MirrorBody, MirrorHead, MirrorJob, RequestView};
