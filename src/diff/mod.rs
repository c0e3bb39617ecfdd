//! Diff: judging a shadow's response against the primary's.
//!
//! This module owns the pure logic of the Compare feature and nothing else
//! (the run-time pipeline that feeds it is `crate::compare`):
//!
//! - `rules`: what to compare, built once from configuration strings
//!   (ignored headers, ignored and unordered JSON paths, numeric tolerance,
//!   limits);
//! - `captured`: the captured responses, the input of a comparison;
//! - `outcome`: the top-level [`compare`] function and the [`Outcome`] it
//!   returns (status, header and body differences);
//! - `difference`: what a difference is, the field it is counted under,
//!   and the bounded sink the walkers put differences in;
//! - `render`: bounded renderings of values and difference paths;
//! - `digest`: the one digest (64-bit FNV-1a);
//! - `body`: content-encoding decoding with an output cap, dispatch by
//!   content type, line-by-line text and digest comparison;
//! - `json`: the structural JSON differ (field paths like `$.items[3].price`);
//! - `template`: grouping requests into endpoints (`GET /items/{id}`);
//! - `noise`: Diffy-style noise cancellation arithmetic;
//! - `example`: the pairs that differed, kept bounded and redacted;
//! - `tally`: bounded in-memory aggregation and its plain-data snapshots;
//! - `report`: the human-readable table printed by `shadowgate diffs`;
//! - `redact`: the secrets (header values, query parameter values) hidden
//!   in everything stored or served.
//!
//! It never does I/O, never spawns and never blocks: callers (the capture
//! side, the worker pool, the store, the HTTP API) feed it values and get
//! values back. Every input is treated as hostile: nothing here panics on
//! data, recursion is bounded, and every collection it keeps is capped.

mod body;
mod captured;
mod difference;
mod digest;
mod example;
mod json;
mod noise;
mod outcome;
pub mod redact;
mod render;
mod report;
mod rules;
mod tally;
mod template;

pub use body::{body_kind, decode_body, BodyKind, BodyMode, DecodeError, Decoded, MAX_CODINGS};
pub use captured::Captured;
pub use difference::{DiffKind, Difference};
pub use digest::digest;
pub use example::{Example, ExampleLimits, ExampleRequest, ExampleResponse};
pub use noise::{absolute_difference, is_noise, relative_difference, NoiseThresholds, Rate};
pub use outcome::{compare, compare_within, Outcome};
pub use redact::{Redactor, REDACTED, REDACTED_DIFFERENT};
pub use report::{render_route, ReportOptions};
pub use rules::{CompareLimits, CompareRules, RulesConfig, RulesError, DEFAULT_IGNORED_HEADERS};
pub use tally::{
    EndpointReport, EndpointTallyState, FieldCount, FieldReport, PairVerdict, RouteReport,
    SecondaryState, Tally, TallyLimits, TallyState, Totals, OTHER_ENDPOINT, OTHER_FIELD,
};
pub use template::{EndpointTemplater, TemplateError, DEFAULT_MAX_ENDPOINTS};
