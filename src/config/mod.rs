//! Configuration: raw file structs → validated model. Loading never touches
//! the running proxy; the runtime is built from a validated `Config` only.
//!
//! Reading goes `load` (entry points) → `parse` (one file's YAML) or
//! `kube` (Kubernetes manifests) → `validate` (merge and check the whole),
//! which checks each section in its own file: `settings`, `listen`,
//! `backends`, `routes`, `mirrors`, `promotion`, all writing to the error
//! collector of `check`.

mod backends;
mod check;
pub mod egress;
pub mod error;
pub mod kube;
mod listen;
pub mod load;
mod matching;
mod mirrors;
pub mod model;
mod parse;
mod promotion;
pub mod raw;
pub mod record;
mod routes;
mod settings;
pub use settings::{is_postgres_url, postgres_config};
pub mod units;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use load::{from_yaml, load_files};
pub use model::*;
pub use parse::parse_text;
pub use validate::validate;
