//! Whether a request meets a match condition (`RouteMatch`): used by
//! routing (`runtime`) and by the egress's services alike.

use http::{HeaderMap, Method};

use super::model::{HostMatch, PathMatch, RouteMatch, ValueMatch};

impl RouteMatch {
    /// Whether a request meets every condition.
    pub fn matches(&self, host: &str, path: &str, method: &Method, headers: &HeaderMap) -> bool {
        if let Some(h) = &self.host {
            let ok = match h {
                HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
                HostMatch::Suffix(s) => {
                    host.len() > s.len()
                        && host.as_bytes()[host.len() - s.len()..]
                            .eq_ignore_ascii_case(s.as_bytes())
                }
            };
            if !ok {
                return false;
            }
        }
        if let Some(p) = &self.path {
            let ok = match p {
                PathMatch::Exact(e) => path == e,
                PathMatch::Prefix(pre) => {
                    let pre = pre.trim_end_matches('/');
                    pre.is_empty()
                        || (path.starts_with(pre)
                            && matches!(path.as_bytes().get(pre.len()), None | Some(b'/')))
                }
                PathMatch::Regex(r) => r.is_match(path),
            };
            if !ok {
                return false;
            }
        }
        if let Some(want) = &self.method {
            if want != method {
                return false;
            }
        }
        self.headers.iter().all(|(name, rule)| {
            headers.get_all(name).iter().any(|v| {
                let Ok(v) = v.to_str() else { return false };
                match rule {
                    ValueMatch::Exact(e) => v == e,
                    ValueMatch::Regex(r) => r.is_match(v),
                }
            })
        })
    }

    /// Whether the query string meets every query condition of `m`: each
    /// named parameter is present with a matching value (values as written,
    /// not percent-decoded; `a` alone has the value ``).
    pub fn query_matches(&self, query: Option<&str>) -> bool {
        if self.query.is_empty() {
            return true;
        }
        let pairs = || {
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
        };
        self.query.iter().all(|(name, rule)| {
            pairs().any(|(k, v)| {
                k == name
                    && match rule {
                        ValueMatch::Exact(e) => v == e,
                        ValueMatch::Regex(r) => r.is_match(v),
                    }
            })
        })
    }
}
