//! Protocol pieces shared by the primary's request path and the mirrors'
//! copy path: header manners (`headers`), gRPC status (`grpc`) and the ALPN
//! protocol ids. Nothing here knows about routes, backends or mirrors.

pub mod grpc;
pub mod headers;

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
