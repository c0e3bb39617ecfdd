//! The input of a comparison: one response as the proxy captured it.

use bytes::Bytes;
use http::HeaderMap;

/// One response as the proxy captured it.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as received (still content-encoded), up to the capture cap.
    pub body: Bytes,
    /// The body was cut at the capture cap: only status and headers can be
    /// compared.
    pub truncated: bool,
}
