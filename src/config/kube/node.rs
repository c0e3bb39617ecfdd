//! Walking a generic YAML value with a key path, so that every problem can
//! name the file, the document, the object and the field it is about.

use serde_norway::{Mapping, Value};

use crate::config::error::ConfigError;

/// Reason given for a field shadowgate knows it cannot honour.
pub const NOT_SUPPORTED: &str = "not supported by shadowgate";

/// Where the object being read came from, and where its problems go.
pub struct Cx<'e> {
    /// File name as reported in errors.
    pub file: String,
    /// `document 2 (VirtualService reviews)`: prefix of every key path.
    pub label: String,
    pub errors: &'e mut Vec<ConfigError>,
    /// Fields accepted without effect (`spec.gateways`, `parentRefs`…),
    /// as `label path`, for `convert` to list.
    pub ignored: &'e mut Vec<String>,
}

impl Cx<'_> {
    /// Records a problem at `path` (relative to the object, e.g. `spec.http[0]`).
    pub fn fail(&mut self, path: &str, reason: impl Into<String>) {
        let full = if path.is_empty() {
            self.label.clone()
        } else {
            format!("{} {}", self.label, path)
        };
        self.errors
            .push(ConfigError::new(self.file.clone(), full, reason));
    }

    /// Records a field shadowgate does not support.
    pub fn unsupported(&mut self, path: &str) {
        self.fail(path, NOT_SUPPORTED);
    }
}

/// A value and its key path.
#[derive(Clone, Copy)]
pub struct Node<'v> {
    pub value: &'v Value,
}

/// A mapping and its key path.
#[derive(Clone)]
pub struct Obj<'v> {
    pub map: &'v Mapping,
    pub path: String,
}

/// Joins a key to a path.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins an index to a path.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl<'v> Node<'v> {
    pub fn new(value: &'v Value) -> Self {
        Node { value }
    }

    /// This value as a mapping; `null` reads as an empty mapping.
    pub fn obj(self, cx: &mut Cx, path: &str) -> Option<Obj<'v>> {
        static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
        match self.value {
            Value::Mapping(m) => Some(Obj {
                map: m,
                path: path.to_string(),
            }),
            Value::Null => Some(Obj {
                map: EMPTY.get_or_init(Mapping::new),
                path: path.to_string(),
            }),
            other => {
                cx.fail(path, format!("must be a mapping, not {}", type_name(other)));
                None
            }
        }
    }
}

impl<'v> Obj<'v> {
    /// Checks every key: `supported` ones are read by the caller, `ignored`
    /// ones have no effect in shadowgate (logged), any other is an error.
    pub fn fields(&self, cx: &mut Cx, supported: &[&str], ignored: &[&str]) {
        for key in self.map.keys() {
            let Some(k) = key.as_str() else {
                cx.fail(&self.path, "keys must be strings");
                continue;
            };
            if supported.contains(&k) {
                continue;
            }
            let path = join(&self.path, k);
            if ignored.contains(&k) {
                cx.ignored
                    .push(format!("{}: {} {}", cx.file, cx.label, path));
                tracing::info!(
                    file = %cx.file,
                    object = %cx.label,
                    field = %path,
                    "field has no effect in shadowgate; ignored"
                );
                continue;
            }
            cx.unsupported(&path);
        }
    }

    /// Path of a key of this mapping.
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<Node<'v>> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(Node::new(v)),
        }
    }

    /// Whether `key` is present with a value other than null.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The mapping under `key`, if present.
    pub fn obj(&self, cx: &mut Cx, key: &str) -> Option<Obj<'v>> {
        let n = self.get(key)?;
        n.obj(cx, &self.at(key))
    }

    /// A string field.
    pub fn str(&self, cx: &mut Cx, key: &str) -> Option<String> {
        match self.get(key)?.value {
            Value::String(s) => Some(s.clone()),
            other => {
                cx.fail(
                    &self.at(key),
                    format!("must be a string, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A string field that must be present and not empty.
    pub fn req_str(&self, cx: &mut Cx, key: &str) -> Option<String> {
        match self.str(cx, key) {
            Some(s) if !s.is_empty() => Some(s),
            Some(_) => {
                cx.fail(&self.at(key), "must not be empty");
                None
            }
            None => {
                if !self.has(key) {
                    cx.fail(&self.at(key), "is required");
                }
                None
            }
        }
    }

    /// A number field (integer or decimal).
    pub fn f64(&self, cx: &mut Cx, key: &str) -> Option<f64> {
        let n = self.get(key)?;
        match n.value {
            Value::Number(num) => num.as_f64().filter(|f| f.is_finite()).or_else(|| {
                cx.fail(&self.at(key), "must be a finite number");
                None
            }),
            other => {
                cx.fail(
                    &self.at(key),
                    format!("must be a number, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A non-negative integer field no larger than `max`.
    pub fn uint(&self, cx: &mut Cx, key: &str, max: u64) -> Option<u64> {
        let n = self.get(key)?;
        match n.value {
            Value::Number(num) => match num.as_u64() {
                Some(v) if v <= max => Some(v),
                _ => {
                    cx.fail(
                        &self.at(key),
                        format!("{num} is not a whole number between 0 and {max}"),
                    );
                    None
                }
            },
            other => {
                cx.fail(
                    &self.at(key),
                    format!("must be a whole number, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A boolean field.
    pub fn bool(&self, cx: &mut Cx, key: &str) -> Option<bool> {
        match self.get(key)?.value {
            Value::Bool(b) => Some(*b),
            other => {
                cx.fail(
                    &self.at(key),
                    format!("must be true or false, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// The items of a list field with their paths; absent reads as empty.
    pub fn list(&self, cx: &mut Cx, key: &str) -> Vec<(String, Node<'v>)> {
        let Some(n) = self.get(key) else {
            return Vec::new();
        };
        match n.value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (index(&self.at(key), i), Node::new(v)))
                .collect(),
            other => {
                cx.fail(
                    &self.at(key),
                    format!("must be a list, not {}", type_name(other)),
                );
                Vec::new()
            }
        }
    }

    /// The items of a list field that must be mappings.
    pub fn objs(&self, cx: &mut Cx, key: &str) -> Vec<Obj<'v>> {
        self.list(cx, key)
            .into_iter()
            .filter_map(|(path, n)| n.obj(cx, &path))
            .collect()
    }

    /// A list of strings.
    pub fn strs(&self, cx: &mut Cx, key: &str) -> Vec<(String, String)> {
        self.list(cx, key)
            .into_iter()
            .filter_map(|(path, n)| match n.value {
                Value::String(s) => Some((path, s.clone())),
                other => {
                    cx.fail(&path, format!("must be a string, not {}", type_name(other)));
                    None
                }
            })
            .collect()
    }

    /// The entries of a mapping field whose values are mappings, in order.
    pub fn entries(&self, cx: &mut Cx, key: &str) -> Vec<(String, Obj<'v>)> {
        let Some(o) = self.obj(cx, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in o.map {
            let Some(name) = k.as_str() else {
                cx.fail(&o.path, "keys must be strings");
                continue;
            };
            if let Some(child) = Node::new(v).obj(cx, &join(&o.path, name)) {
                out.push((name.to_string(), child));
            }
        }
        out
    }
}
