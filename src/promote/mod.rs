//! Promotion: judge a mirror against the primary (`gates`), switch it to
//! primary atomically and roll back in one step (`switch`, `ops`), and do
//! both by itself in `auto` mode (`controller`).

pub mod controller;
pub mod gates;
pub mod ops;
pub mod switch;
