//! gRPC awareness on the request path. gRPC needs nothing special to pass
//! through (HTTP/2 end to end, bodies and trailers streamed frame by frame),
//! but its outcome lives in `grpc-status`, not in the HTTP status: in the
//! trailers, or in the head of a trailers-only answer. A non-zero value is
//! an error for the access log (`reason: grpc_status_N`) and the metrics.

use http::HeaderMap;

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The `grpc-status` in `headers`, if any. A value that is not a number
/// counts as 2 (UNKNOWN), as gRPC clients treat it.
pub fn status(headers: &HeaderMap) -> Option<u16> {
    let v = headers.get(&GRPC_STATUS)?;
    Some(
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .unwrap_or(2),
    )
}

/// The access-log reason for a failed call.
pub fn reason(code: u16) -> String {
    format!("grpc_status_{code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_status() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(status(&h), Some(0));
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status(&h), Some(14));
        h.insert("grpc-status", "nope".parse().unwrap());
        assert_eq!(status(&h), Some(2));
        assert_eq!(reason(5), "grpc_status_5");
    }
}
