//! Tools of the binary, not the product: sample servers that only the
//! command line starts (`shadowgate demo`, `shadowgate bench-backend`).
//! They use the library through its public paths (`shadowgate::…`), as any
//! other program would; nothing in the library depends on them.

pub mod bench_backend;
pub mod demo;
pub mod demo_shop;
