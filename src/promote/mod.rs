//! Promotion: judge a mirror against the primary (`gates`), switch it to
//! primary atomically and roll back in one step (`ops`, acting on the
//! switches of `crate::runtime::switch`), and do both by itself in `auto`
//! mode (`controller`).

pub mod controller;
pub mod fleet;
pub mod gates;
pub mod ops;
