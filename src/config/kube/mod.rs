//! The Kubernetes importer: Istio `VirtualService` / `DestinationRule`,
//! Gateway API `HTTPRoute` / `GRPCRoute` and core `Service` objects, read
//! from the same files as the native config, become native backends and
//! routes. The semantics are those of Istio and the Gateway API: see
//! `docs/kubernetes.md` for what is supported.
//!
//! A file is split into YAML documents: those with `apiVersion` and `kind`
//! are Kubernetes objects, the others native config. A file without any
//! Kubernetes object is read exactly as before (`parse_text`). After every
//! file is read, the objects of all files are converted together, with the
//! `services:` map of all native documents, into one more native config.

use std::path::PathBuf;

use serde::Deserialize;
use serde_norway::Value;

use super::backends::endpoint;
use super::check::{compile_regex, parse_header_name, parse_method};
use super::error::{ConfigError, ConfigErrors};
use super::parse::parse_text;
use super::raw::{RawConfig, RawService};

mod build;
mod gateway;
mod istio;
mod model;
mod node;

#[cfg(test)]
mod tests;

use build::{Builder, ObjectOrigin, Registry, ServiceEntry, Target};
use node::{Cx, Node, Obj, NOT_SUPPORTED};

/// One Kubernetes object read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file it was read from.
    pub file: String,
    /// Where in the file: `document 2`, or `document 1 items[3]` in a `List`.
    pub document: String,
    /// The object as written.
    pub value: Value,
}

/// A file's documents, told apart.
#[derive(Debug, Clone, Default)]
pub struct FileParts {
    /// Native config documents, with the name errors report them under.
    pub native: Vec<(String, RawConfig)>,
    /// Kubernetes objects.
    pub manifests: Vec<Manifest>,
}

/// The object being read.
pub(crate) struct Meta {
    pub name: String,
    pub namespace: String,
    /// Position among all objects read.
    pub object: usize,
}

impl Meta {
    /// Name native routes are derived from: the object's name, with its
    /// namespace unless that is `default`.
    pub fn base(&self) -> String {
        let raw = if self.namespace == "default" {
            self.name.clone()
        } else {
            format!("{}.{}", self.name, self.namespace)
        };
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// Envoy's retry conditions that shadowgate honours (`routes[].retries.retry_on`).
pub(crate) const RETRY_CONDITIONS: [&str; 12] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-status-codes",
    "retriable-4xx",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Checks a regular expression as the native config will compile it.
pub(crate) fn check_regex(cx: &mut Cx, path: &str, pattern: &str) -> bool {
    compile_regex(pattern).map_err(|r| cx.fail(path, r)).is_ok()
}

/// Checks an HTTP method; returns it upper-cased.
pub(crate) fn check_method(cx: &mut Cx, path: &str, method: &str) -> Option<String> {
    match parse_method(method) {
        Ok(m) if !method.is_empty() => Some(m.as_str().to_string()),
        _ => {
            cx.fail(path, format!("`{method}` is not an HTTP method"));
            None
        }
    }
}

/// Checks a header name; returns it lower-cased.
pub(crate) fn check_header(cx: &mut Cx, path: &str, name: &str) -> Option<String> {
    parse_header_name(name)
        .map(|h| h.as_str().to_string())
        .map_err(|r| cx.fail(path, r))
        .ok()
}

/// Whether `a` is a host with an optional port, as a rewritten authority.
pub(crate) fn valid_authority(a: &str) -> bool {
    !a.is_empty()
        && !a.contains('@')
        && a.parse::<http::uri::Authority>()
            .is_ok_and(|u| u.as_str() == a)
}

fn is_object(v: &Value) -> bool {
    v.as_mapping()
        .is_some_and(|m| m.contains_key("apiVersion") && m.contains_key("kind"))
}

/// Splits one file into native config and Kubernetes objects. A file
/// without any Kubernetes object goes through [`parse_text`] unchanged.
pub fn split_text(file: &str, text: &str) -> Result<FileParts, ConfigErrors> {
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        match Value::deserialize(de) {
            Ok(v) => docs.push(v),
            // Not YAML: the native reader reports it as before.
            Err(_) => {
                return Ok(FileParts {
                    native: vec![(file.to_string(), parse_text(file, text)?)],
                    manifests: Vec::new(),
                })
            }
        }
    }
    if !docs.iter().any(is_object) {
        return Ok(FileParts {
            native: vec![(file.to_string(), parse_text(file, text)?)],
            manifests: Vec::new(),
        });
    }
    let mut parts = FileParts::default();
    let mut errors = Vec::new();
    for (i, mut doc) in docs.into_iter().enumerate() {
        let document = format!("document {}", i + 1);
        if let Err(e) = doc.apply_merge() {
            errors.push(ConfigError::new(file, &document, e.to_string()));
            continue;
        }
        match &doc {
            Value::Null => {}
            Value::Mapping(m) if m.contains_key("apiVersion") || m.contains_key("kind") => {
                object_or_list(file, &document, doc, &mut parts, &mut errors)
            }
            Value::Mapping(_) => {
                let label = format!("{file} ({document})");
                match serde_path_to_error::deserialize::<_, RawConfig>(doc) {
                    Ok(raw) => parts.native.push((label, raw)),
                    Err(e) => {
                        let path = e.path().to_string();
                        let path = if path == "." { String::new() } else { path };
                        errors.push(ConfigError::new(label, path, e.into_inner().to_string()));
                    }
                }
            }
            _ => errors.push(ConfigError::new(
                file,
                &document,
                "is neither a Kubernetes object nor a shadowgate config mapping",
            )),
        }
    }
    if errors.is_empty() {
        Ok(parts)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn object_or_list(
    file: &str,
    document: &str,
    doc: Value,
    parts: &mut FileParts,
    errors: &mut Vec<ConfigError>,
) {
    if !is_object(&doc) {
        errors.push(ConfigError::new(
            file,
            document,
            "a Kubernetes object needs both apiVersion and kind",
        ));
        return;
    }
    let is_list = doc.get("kind").and_then(Value::as_str) == Some("List");
    if !is_list {
        parts.manifests.push(Manifest {
            file: file.to_string(),
            document: document.to_string(),
            value: doc,
        });
        return;
    }
    match doc.get("items") {
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let document = format!("{document} items[{i}]");
                if is_object(item) {
                    parts.manifests.push(Manifest {
                        file: file.to_string(),
                        document,
                        value: item.clone(),
                    });
                } else {
                    errors.push(ConfigError::new(
                        file,
                        document,
                        "a Kubernetes object needs both apiVersion and kind",
                    ));
                }
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => errors.push(ConfigError::new(
            file,
            format!("{document} items"),
            "must be a list",
        )),
    }
}

/// What an object is to the importer.
enum Handler {
    VirtualService,
    DestinationRule,
    HttpRoute,
    GrpcRoute,
    Service,
    /// A routing kind shadowgate cannot honour.
    Unsupported(&'static str),
    /// Not about routing: skipped.
    Skip,
}

fn handler(api_version: &str, kind: &str) -> Result<Handler, String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let versions = |ok: &[&str]| -> Result<(), String> {
        if ok.contains(&version) {
            Ok(())
        } else {
            Err(format!(
                "{kind} version `{api_version}` is {NOT_SUPPORTED} (use {})",
                ok.iter()
                    .map(|v| format!("{group}/{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    Ok(match (group, kind) {
        ("networking.istio.io", "VirtualService") => {
            versions(&["v1", "v1beta1", "v1alpha3"])?;
            Handler::VirtualService
        }
        ("networking.istio.io", "DestinationRule") => {
            versions(&["v1", "v1beta1", "v1alpha3"])?;
            Handler::DestinationRule
        }
        ("gateway.networking.k8s.io", "HTTPRoute") => {
            versions(&["v1", "v1beta1"])?;
            Handler::HttpRoute
        }
        ("gateway.networking.k8s.io", "GRPCRoute") => {
            versions(&["v1", "v1alpha2"])?;
            Handler::GrpcRoute
        }
        ("gateway.networking.k8s.io", "TCPRoute" | "TLSRoute" | "UDPRoute") => {
            Handler::Unsupported("shadowgate routes HTTP and gRPC only")
        }
        ("", "Service") if version == "v1" => Handler::Service,
        _ => Handler::Skip,
    })
}

/// Reads a core `Service`'s ports.
fn service(cx: &mut Cx, meta: &Meta, spec: &Obj, registry: &mut Registry) {
    let mut ports = Vec::new();
    for p in spec.objs(cx, "ports") {
        if let Some(n) = p.uint(cx, "port", 65535) {
            ports.push(n as u16);
        }
    }
    registry.ports.insert(
        Target::Kube {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
        },
        ports,
    );
}

/// Merges the `services:` maps of the native documents, checking endpoints.
fn merge_services(native: &[(String, RawConfig)], errors: &mut Vec<ConfigError>) -> Registry {
    let mut registry = Registry::default();
    for (file, raw) in native {
        for (key, svc) in &raw.services {
            let path = format!("services.{key}");
            if let Some(first) = registry.services.get(key) {
                errors.push(ConfigError::new(
                    file,
                    &path,
                    format!("`{key}` is also given in {}", first.file),
                ));
                continue;
            }
            let check = |path: String, list: &[String], errors: &mut Vec<ConfigError>| {
                if list.is_empty() {
                    errors.push(ConfigError::new(file, &path, "needs at least one endpoint"));
                }
                for (i, e) in list.iter().enumerate() {
                    if let Err(reason) = endpoint(e) {
                        errors.push(ConfigError::new(file, format!("{path}[{i}]"), reason));
                    }
                }
            };
            match svc {
                RawService::Endpoints(list) => check(path.clone(), list, errors),
                RawService::Subsets(map) => {
                    if map.is_empty() {
                        errors.push(ConfigError::new(file, &path, "needs at least one subset"));
                    }
                    for (subset, list) in map {
                        check(format!("{path}.{subset}"), list, errors);
                    }
                }
            }
            registry.services.insert(
                key.clone(),
                ServiceEntry {
                    file: file.clone(),
                    service: svc.clone(),
                },
            );
        }
    }
    registry
}

/// The `kube: {host_suffix}` of the native documents (given in one only).
fn host_suffix(native: &[(String, RawConfig)], errors: &mut Vec<ConfigError>) -> Option<String> {
    let mut found: Option<(&str, String)> = None;
    for (file, raw) in native {
        let Some(suffix) = raw.kube.as_ref().and_then(|k| k.host_suffix.clone()) else {
            continue;
        };
        if let Some((first, _)) = &found {
            errors.push(ConfigError::new(
                file,
                "kube.host_suffix",
                format!("is also set in {first}; set it in one file only"),
            ));
            continue;
        }
        if suffix.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.')) {
            errors.push(ConfigError::new(
                file,
                "kube.host_suffix",
                "may hold only letters, digits, `-` and `.`",
            ));
        }
        found = Some((file, suffix));
    }
    found.map(|(_, s)| s)
}

/// Converts Kubernetes objects into native backends and routes, resolving
/// destinations with the `services:` maps of the native documents.
pub fn convert(
    manifests: &[Manifest],
    native: &[(String, RawConfig)],
) -> Result<RawConfig, ConfigErrors> {
    convert_noting(manifests, native).map(|(raw, _)| raw)
}

/// [`convert`], with the fields that were accepted without effect
/// (`file: document 1 (VirtualService x) spec.gateways`), in order.
fn convert_noting(
    manifests: &[Manifest],
    native: &[(String, RawConfig)],
) -> Result<(RawConfig, Vec<String>), ConfigErrors> {
    let mut errors = Vec::new();
    let mut ignored = Vec::new();
    let mut registry = merge_services(native, &mut errors);
    let mut origins = Vec::new();
    let mut rules = Vec::new();
    let mut seen: std::collections::BTreeMap<(String, String, String), String> =
        std::collections::BTreeMap::new();
    // Routes are read after every Service and DestinationRule, but the
    // objects keep their positions for ordering.
    let mut routes_later = Vec::new();
    for (object, m) in manifests.iter().enumerate() {
        let api_version = m
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = m.value.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = m
            .value
            .get("metadata")
            .and_then(|md| md.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let label = if name.is_empty() {
            format!("{} ({kind})", m.document)
        } else {
            format!("{} ({kind} {name})", m.document)
        };
        origins.push(ObjectOrigin {
            file: m.file.clone(),
            label: label.clone(),
        });
        let mut cx = Cx {
            file: m.file.clone(),
            label,
            errors: &mut errors,
            ignored: &mut ignored,
        };
        if api_version.is_empty() || kind.is_empty() {
            cx.fail("", "apiVersion and kind must be non-empty strings");
            continue;
        }
        let handler = match handler(api_version, kind) {
            Ok(h) => h,
            Err(reason) => {
                cx.fail("apiVersion", reason);
                continue;
            }
        };
        match handler {
            Handler::Skip => {
                tracing::info!(
                    file = %m.file,
                    document = %m.document,
                    "skipping {kind} {name}: it does not concern shadowgate's routing"
                );
                continue;
            }
            Handler::Unsupported(why) => {
                cx.fail("kind", format!("{kind} is {NOT_SUPPORTED}: {why}"));
                continue;
            }
            _ => {}
        }
        let Some(top) = Node::new(&m.value).obj(&mut cx, "") else {
            continue;
        };
        top.fields(
            &mut cx,
            &["apiVersion", "kind", "metadata", "spec"],
            &["status"],
        );
        let Some(md) = top.obj(&mut cx, "metadata") else {
            cx.fail("metadata", "is required");
            continue;
        };
        let Some(name) = md.req_str(&mut cx, "name") else {
            continue;
        };
        let namespace = md
            .str(&mut cx, "namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let key = (kind.to_string(), namespace.clone(), name.clone());
        if let Some(first) = seen.get(&key) {
            cx.fail(
                "metadata.name",
                format!("{kind} {namespace}/{name} is also defined in {first}"),
            );
            continue;
        }
        seen.insert(key, format!("{} {}", m.file, m.document));
        let meta = Meta {
            name,
            namespace,
            object,
        };
        let Some(spec) = top.obj(&mut cx, "spec") else {
            cx.fail("spec", "is required");
            continue;
        };
        match handler {
            Handler::Service => service(&mut cx, &meta, &spec, &mut registry),
            Handler::DestinationRule => {
                istio::destination_rule(&mut cx, &meta, &spec, &mut registry)
            }
            _ => routes_later.push((handler, meta, object)),
        }
    }
    for (handler, meta, object) in routes_later {
        let m = &manifests[object];
        let mut cx = Cx {
            file: m.file.clone(),
            label: origins[object].label.clone(),
            errors: &mut errors,
            ignored: &mut ignored,
        };
        let Some(spec) = m
            .value
            .get("spec")
            .and_then(|s| Node::new(s).obj(&mut cx, "spec"))
        else {
            continue;
        };
        match handler {
            Handler::VirtualService => istio::virtual_service(&mut cx, &meta, &spec, &mut rules),
            Handler::HttpRoute => {
                gateway::route(&mut cx, &meta, &spec, gateway::Kind::Http, &mut rules)
            }
            Handler::GrpcRoute => {
                gateway::route(&mut cx, &meta, &spec, gateway::Kind::Grpc, &mut rules)
            }
            _ => {}
        }
    }
    let suffix = host_suffix(native, &mut errors);
    let raw = Builder::new(&registry, &origins, &mut errors).build(&rules, suffix);
    if errors.is_empty() {
        Ok((raw, ignored))
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The documents of all files: native configs, Kubernetes objects, and the
/// names of the files that hold objects.
type Gathered<'f> = (Vec<(String, RawConfig)>, Vec<Manifest>, Vec<&'f str>);

/// A file's name and its text, or why it could not be read.
type FileText = (String, Result<String, ConfigError>);

/// Splits every file; problems are reported in file order.
fn gather(files: &[FileText]) -> Result<Gathered<'_>, ConfigErrors> {
    let mut native = Vec::new();
    let mut manifests = Vec::new();
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                errors.push(e.clone());
                continue;
            }
        };
        match split_text(file, text) {
            Ok(parts) => {
                if !parts.manifests.is_empty() {
                    sources.push(file.as_str());
                }
                native.extend(parts.native);
                manifests.extend(parts.manifests);
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok((native, manifests, sources))
    } else {
        Err(ConfigErrors(errors))
    }
}

fn converted_name(sources: &[&str]) -> String {
    format!("{} (converted)", sources.join(", "))
}

fn read_all(paths: &[PathBuf]) -> Vec<FileText> {
    paths
        .iter()
        .map(|path| {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(&file, "", format!("cannot read: {e}")));
            (file, text)
        })
        .collect()
}

fn texts(files: &[(String, String)]) -> Vec<FileText> {
    files
        .iter()
        .map(|(f, t)| (f.clone(), Ok(t.clone())))
        .collect()
}

fn parse_all(files: &[FileText]) -> Result<Vec<(String, RawConfig)>, ConfigErrors> {
    let (mut native, manifests, sources) = gather(files)?;
    if !manifests.is_empty() {
        let raw = convert(&manifests, &native)?;
        native.push((converted_name(&sources), raw));
    }
    Ok(native)
}

/// Reads and splits files, and converts their Kubernetes objects: the
/// native configs, followed by the config converted from the objects (when
/// there are any), ready for [`validate`](super::validate::validate).
pub fn parse_files(paths: &[PathBuf]) -> Result<Vec<(String, RawConfig)>, ConfigErrors> {
    parse_all(&read_all(paths))
}

/// [`parse_files`] for files already read, given as `(name, text)`.
pub fn parse_texts(files: &[(String, String)]) -> Result<Vec<(String, RawConfig)>, ConfigErrors> {
    parse_all(&texts(files))
}

fn convert_all(files: &[FileText]) -> Result<String, ConfigErrors> {
    let (native, manifests, sources) = gather(files)?;
    let (raw, ignored) = convert_noting(&manifests, &native)?;
    let mut all = native;
    all.push((converted_name(&sources), raw.clone()));
    super::validate::validate(all)?;
    let yaml = serde_norway::to_string(&raw).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "<convert>",
            "",
            format!("cannot write YAML: {e}"),
        )])
    })?;
    let header = if sources.is_empty() {
        "# shadowgate convert: no Kubernetes objects found\n".to_string()
    } else {
        format!(
            "# shadowgate convert: native config equivalent to {}\n",
            sources.join(", ")
        )
    };
    let mut notes = String::new();
    if !ignored.is_empty() {
        notes.push_str("# accepted, but without effect in shadowgate:\n");
        for i in &ignored {
            notes.push_str(&format!("#   {i}\n"));
        }
    }
    Ok(format!("{header}{notes}{yaml}"))
}

/// `shadowgate convert FILE…`: the native config (backends and routes)
/// equivalent to the Kubernetes objects in the files, as YAML. Native
/// documents of the files give the `services:` map; the whole set is
/// validated first, as `run` would.
pub fn convert_files(paths: &[PathBuf]) -> Result<String, ConfigErrors> {
    convert_all(&read_all(paths))
}

/// [`convert_files`] for files already read, given as `(name, text)`.
pub fn convert_texts(files: &[(String, String)]) -> Result<String, ConfigErrors> {
    convert_all(&texts(files))
}
