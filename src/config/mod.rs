//! Configuration: raw file structs → validated model. Loading never touches
//! the running proxy; the runtime is built from a validated `Config` only.

pub mod error;
pub mod kube;
pub mod load;
pub mod model;
pub mod raw;
pub mod units;

pub use error::{ConfigError, ConfigErrors};
pub use load::{from_yaml, load_files, parse_text, validate};
pub use model::*;
