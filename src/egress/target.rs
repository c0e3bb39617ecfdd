//! Where an outbound call goes: absolute-form (`POST http://host/path`,
//! what a client honouring `HTTP_PROXY` sends), origin-form with `Host`
//! (an app pointed at the egress by base URL), or an HTTP/2 `:authority`;
//! and which inbound request it belongs to (the correlation headers).

use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderName, Request};

use crate::protocol::headers::{split_host_port, trace_id};

/// The host and path an outbound call names.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host[:port]` as addressed.
    pub authority: String,
    /// Lower case, without port or trailing dot.
    pub host: String,
    pub path_and_query: PathAndQuery,
}

impl Target {
    pub fn path(&self) -> &str {
        self.path_and_query.path()
    }
}

/// The target of `req`, or why it has none.
pub fn of<B>(req: &Request<B>) -> Result<Target, &'static str> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .ok_or("no host: send absolute-form (http://host/path) or a Host header")?
            .to_string(),
    };
    let (host, _) = split_host_port(&authority);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("empty host");
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Ok(Target {
        authority,
        host,
        path_and_query,
    })
}

/// The correlation id an outbound call carries: the first of `names` it
/// has (`traceparent` stands for its trace id).
pub fn correlation_id(headers: &HeaderMap, names: &[HeaderName]) -> Option<String> {
    names.iter().find_map(|name| {
        if name.as_str() == "traceparent" {
            trace_id(headers).map(str::to_string)
        } else {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 200)
                .map(str::to_string)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_and_origin_form() {
        let req = Request::post("http://Payments.Example:80/charges?x=1")
            .body(())
            .unwrap();
        let t = of(&req).unwrap();
        assert_eq!(
            (t.host.as_str(), t.path()),
            ("payments.example", "/charges")
        );
        let req = Request::post("/charges")
            .header("host", "payments.example.")
            .body(())
            .unwrap();
        let t = of(&req).unwrap();
        assert_eq!(t.host, "payments.example");
        assert_eq!(t.authority, "payments.example.");
        assert!(of(&Request::get("/").body(()).unwrap()).is_err());
    }

    #[test]
    fn correlation_prefers_the_first_listed_header() {
        let mut h = HeaderMap::new();
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        h.insert("traceparent", tp.parse().unwrap());
        let names = [
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("traceparent"),
        ];
        assert_eq!(
            correlation_id(&h, &names).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        h.insert("x-request-id", "abc".parse().unwrap());
        assert_eq!(correlation_id(&h, &names).as_deref(), Some("abc"));
    }
}
