//! A route's rewrite of the upstream request (`routes[].rewrite`, Istio's
//! `rewrite`, the Gateway API's `URLRewrite`): the path sent to the
//! primary and copied to the mirrors. The client's path is kept for
//! routing, logging and comparison.

use http::uri::PathAndQuery;

use crate::config::{PathRewrite, Rewrite};

/// The path and query sent upstream for `pq` under `rewrite`; `None` when
/// the path is unchanged (or the result would not be a valid request target).
pub fn path_and_query(rewrite: &Rewrite, pq: &PathAndQuery) -> Option<PathAndQuery> {
    let path = rewritten_path(rewrite.path.as_ref()?, pq.path())?;
    let target = match pq.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    target.parse().ok()
}

/// The rewritten path, `None` when the rule does not apply.
pub fn rewritten_path(rule: &PathRewrite, path: &str) -> Option<String> {
    match rule {
        PathRewrite::Full(p) => Some(p.clone()),
        PathRewrite::Prefix { prefix, with } => {
            let head = path.get(..prefix.len())?;
            if !head.eq_ignore_ascii_case(prefix) {
                return None;
            }
            let out = format!("{with}{}", &path[prefix.len()..]);
            Some(if out.is_empty() { "/".to_string() } else { out })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str, w: &str, path: &str) -> Option<String> {
        rewritten_path(
            &PathRewrite::Prefix {
                prefix: p.into(),
                with: w.into(),
            },
            path,
        )
    }

    #[test]
    fn prefixes_are_replaced_as_text() {
        assert_eq!(
            prefix("/api", "/v2", "/api/items").as_deref(),
            Some("/v2/items")
        );
        assert_eq!(
            prefix("/api", "/v2", "/API/items").as_deref(),
            Some("/v2/items")
        );
        assert_eq!(prefix("/api", "", "/api").as_deref(), Some("/"));
        assert_eq!(prefix("/", "/v1/", "/items").as_deref(), Some("/v1/items"));
        assert_eq!(prefix("/api", "/v2", "/other"), None);
        assert_eq!(prefix("/api/", "/v2", "/ap"), None);
    }

    #[test]
    fn the_query_is_kept() {
        let rw = Rewrite {
            path: Some(PathRewrite::Full("/status/200".into())),
            authority: None,
        };
        let pq: PathAndQuery = "/anything/x?a=1".parse().expect("pq");
        assert_eq!(
            path_and_query(&rw, &pq).map(|p| p.to_string()).as_deref(),
            Some("/status/200?a=1")
        );
    }
}
