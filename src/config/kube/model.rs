//! What the importer reads from Istio and Gateway API objects before it
//! resolves destinations and writes native routes: routing rules with their
//! matches, weighted destinations and mirrors, each with its key path.

use std::time::Duration;

use crate::config::raw::{RawCors, RawMatch, RawRetries, RawRouteHeaders};

/// A destination as written in a manifest: a Kubernetes service host (or
/// another host given in `services:`), an optional subset and port.
#[derive(Debug, Clone)]
pub struct Dest {
    /// Key path of the destination, for errors (`spec.http[0].route[1].destination`).
    pub path: String,
    /// Host as written: `httpbin`, `httpbin.shadow`, `httpbin.shadow.svc.cluster.local`.
    pub host: String,
    /// Namespace short names are relative to (the object's own).
    pub namespace: String,
    /// Istio subset (resolved through DestinationRules and `services:`).
    pub subset: Option<String>,
    /// Port number, when written.
    pub port: Option<u16>,
}

/// A weighted destination of a rule.
#[derive(Debug, Clone)]
pub struct WeightedDest {
    pub dest: Dest,
    pub weight: u32,
    /// Header changes when this destination answers (Istio `route[].headers`).
    pub headers: Option<RawRouteHeaders>,
}

/// A mirror of a rule.
#[derive(Debug, Clone)]
pub struct MirrorDest {
    pub dest: Dest,
    /// Share mirrored, 0 to 100; absent means 100.
    pub percent: Option<f64>,
}

/// One entry of a rule's match list (the conditions are ANDed).
#[derive(Debug, Clone)]
pub struct MatchEntry {
    /// Position in the rule's match list (used in the route name).
    pub index: usize,
    pub raw: RawMatch,
    /// An Istio `uri.prefix` as written (the native match holds it as a
    /// regex): the prefix a `rewrite.uri` replaces.
    pub prefix: Option<String>,
}

/// How a rule rewrites the path.
#[derive(Debug, Clone)]
pub enum PathRewriteSpec {
    /// Istio `rewrite.uri`: replaces the matched prefix, or the whole path
    /// after an exact or regex match.
    Istio(String),
    /// Gateway API `ReplaceFullPath`.
    Full(String),
    /// Gateway API `ReplacePrefixMatch` (needs `PathPrefix` matches).
    PrefixMatch(String),
}

/// A rule's rewrite (Istio `rewrite`, Gateway API `URLRewrite`).
#[derive(Debug, Clone, Default)]
pub struct RuleRewrite {
    pub path: Option<PathRewriteSpec>,
    pub authority: Option<String>,
}

/// How routes of one kind of object are ordered among themselves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// Istio: rules in the order written, objects in the order read.
    Istio { object: usize },
    /// Gateway API: by match precedence, then `namespace/name`.
    Gateway { object: String },
}

/// A routing rule: an Istio `http[]` entry or a Gateway API `rules[]` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Index of the object this rule comes from (file and label for errors).
    pub origin: usize,
    /// Name the routes are derived from: `<name>` or `<name>.<namespace>`.
    pub base: String,
    /// Position of the rule in its object.
    pub index: usize,
    /// Host conditions; `None` means any host. One native route per host.
    pub hosts: Vec<Option<String>>,
    /// Match entries, ORed; empty means every request.
    pub matches: Vec<MatchEntry>,
    pub dests: Vec<WeightedDest>,
    pub mirrors: Vec<MirrorDest>,
    /// Request timeout and its key path.
    pub timeout: Option<(String, Duration)>,
    /// gRPC (GRPCRoute): its backends speak HTTP/2.
    pub grpc: bool,
    /// Header changes of the rule (request and response).
    pub headers: Option<RawRouteHeaders>,
    /// Retries of the primary request.
    pub retries: Option<RawRetries>,
    /// Path and authority rewrites.
    pub rewrite: Option<RuleRewrite>,
    /// CORS policy (Istio `corsPolicy`).
    pub cors: Option<RawCors>,
    pub family: Family,
}
