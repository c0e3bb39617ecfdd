//! Promotion: judge a mirror against the primary (`gates`), switch it to
//! primary atomically and roll back in one step (`switch`), and do both by
//! itself in `auto` mode (`controller`).

pub mod gates;
