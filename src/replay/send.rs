//! Sending one recorded request to a target and capturing its answer.
//!
//! The request is rebuilt from the recording: method, path and query,
//! headers (hop-by-hop fields, `content-length` and redacted values left
//! out; `traceparent` and every other field sent unchanged), body. Host is
//! the recorded one unless the target's authority is asked for. Keep-alive
//! connections come from one pooled client per target; an `https://`
//! target is reached over TLS (rustls, through `hyper-rustls`), trusting
//! the system's roots, `--ca-file`, or with `--insecure` any certificate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::diff::{Captured, REDACTED};
use crate::record::read::Exchange;

/// Bytes that cannot stand in a request target as they are; a recorded
/// URI holding them (e.g. `token=<redacted>`) has them percent-encoded.
const NOT_IN_URI: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Where requests are sent: `http://host:port` or `https://host:port`
/// with an optional path prefix put before every recorded path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Over TLS (`https://`).
    pub https: bool,
    pub authority: http::uri::Authority,
    /// Without a trailing `/` (`""` when none).
    pub prefix: String,
}

/// A `--target` / `--secondary` URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct BadUrl {
    pub url: String,
    pub reason: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, BadUrl> {
        let bad = |reason: &str| BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("expected http(s)://HOST:PORT[/PREFIX]")),
        };
        let authority = uri
            .authority()
            .cloned()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed here"));
        }
        Ok(Target {
            https,
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// Why a recorded request cannot be sent at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsendable {
    #[error("request body was cut at the recording's max_body_bytes")]
    BodyTruncated,
    #[error("{0}")]
    Invalid(String),
}

/// How requests are sent.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Send the target's authority as Host instead of the recorded one.
    pub target_host: bool,
    /// Time for the whole answer (head and body).
    pub timeout: Duration,
    /// Answer bodies longer than this are not kept (`Captured.truncated`).
    pub max_body_bytes: usize,
    /// Headers set on every request (replacing recorded ones of the same
    /// name), e.g. a test credential in place of a redacted one.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How `https://` targets are trusted.
    pub tls: TlsOptions,
}

/// How `https://` targets (and secondaries) are trusted.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust the CA certificates in this PEM file instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (a build with a self-signed one in CI).
    pub insecure: bool,
}

impl TlsOptions {
    /// The TLS client configuration, or why it cannot be made (naming
    /// the file at fault).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let ca = match &self.ca_file {
            Some(path) => Some(
                crate::tls::read_certificates(path)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        crate::tls::client_config(crate::tls::ClientTlsParams {
            ca: ca.as_deref(),
            identity: None,
            insecure_skip_verify: self.insecure,
        })
        .map_err(|(part, e)| match (&self.ca_file, part) {
            (Some(path), "ca_file") => format!("--ca-file {}: {e}", path.display()),
            _ => e,
        })
    }
}

/// A recorded request, ready to send anywhere.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub method: Method,
    /// Path and query.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Rebuilds the request of `exchange`.
pub fn prepare(exchange: &Exchange, options: &SendOptions) -> Result<Prepared, Unsendable> {
    let request = &exchange.request;
    if request.body_truncated {
        return Err(Unsendable::BodyTruncated);
    }
    let method_text = request.method.as_deref().unwrap_or("");
    let method = Method::from_bytes(method_text.as_bytes())
        .map_err(|_| Unsendable::Invalid(format!("method `{method_text}`")))?;
    let uri = request.uri.as_deref().unwrap_or("");
    if !uri.starts_with('/') {
        return Err(Unsendable::Invalid(format!(
            "request.uri `{uri}` is not a path"
        )));
    }
    let path_and_query = match uri.parse::<http::uri::PathAndQuery>() {
        Ok(_) => uri.to_string(),
        Err(_) => utf8_percent_encode(uri, NOT_IN_URI).to_string(),
    };
    if path_and_query.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(Unsendable::Invalid(format!(
            "request.uri `{uri}` is not a valid path"
        )));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        if value == REDACTED {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    crate::protocol::headers::strip_hop_by_hop(&mut headers, false);
    // hyper frames the body it is given.
    headers.remove(CONTENT_LENGTH);
    for (name, value) in &options.headers {
        headers.insert(name.clone(), value.clone());
    }
    Ok(Prepared {
        method,
        path_and_query,
        headers,
        body: request.body.clone(),
    })
}

/// A pooled keep-alive client for one target.
#[derive(Debug, Clone)]
pub struct Sender {
    pub target: Target,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Sender {
    /// A client for `target`; `tls` is used when it is `https://`.
    pub fn new(target: Target, concurrency: usize, tls: Arc<rustls::ClientConfig>) -> Sender {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        // Offered in ALPN: the client speaks HTTP/1.1 only.
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // http:// and https:// alike (the builder refuses a preset ALPN).
        let connector = HttpsConnector::from((http, tls));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .build(connector);
        Sender { target, client }
    }

    /// Sends `request` and reads the answer (bounded by `options`).
    pub async fn send(
        &self,
        request: &Prepared,
        options: &SendOptions,
    ) -> Result<Captured, SendError> {
        match tokio::time::timeout(options.timeout, self.exchange(request, options)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(options.timeout)),
        }
    }

    async fn exchange(
        &self,
        request: &Prepared,
        options: &SendOptions,
    ) -> Result<Captured, SendError> {
        let uri = format!(
            "{}://{}{}{}",
            if self.target.https { "https" } else { "http" },
            self.target.authority,
            self.target.prefix,
            request.path_and_query
        );
        let mut builder = Request::builder().method(request.method.clone()).uri(uri);
        let mut headers = request.headers.clone();
        if options.target_host || !headers.contains_key(HOST) {
            if let Ok(host) = HeaderValue::from_str(self.target.authority.as_str()) {
                headers.insert(HOST, host);
            }
        }
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        let req = builder
            .body(Full::new(request.body.clone()))
            .map_err(|e| SendError::Failed(e.to_string()))?;
        let answer = self
            .client
            .request(req)
            .await
            .map_err(|e| SendError::Failed(error_chain(&e)))?;
        let (parts, mut body) = answer.into_parts();
        let mut kept = BytesMut::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| SendError::Failed(error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if kept.len() + data.len() > options.max_body_bytes {
                    // Not kept (only status and headers are compared),
                    // but read to its end so the connection is reused.
                    truncated = true;
                    kept.clear();
                } else if !truncated {
                    kept.extend_from_slice(&data);
                }
            }
        }
        Ok(Captured {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: kept.freeze(),
            truncated,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SendOptions {
        SendOptions {
            target_host: false,
            timeout: Duration::from_secs(1),
            max_body_bytes: 1024,
            headers: vec![(
                HeaderName::from_static("x-test"),
                HeaderValue::from_static("1"),
            )],
            tls: TlsOptions::default(),
        }
    }

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!(t.authority.as_str(), "127.0.0.1:8080");
        assert_eq!(t.prefix, "/base");
        assert_eq!(Target::parse("http://h").unwrap().prefix, "");
        assert!(!t.https);
        assert!(Target::parse("https://h:8443").unwrap().https);
        for bad in [
            "127.0.0.1:8080",
            "ftp://h",
            "http://",
            "not a url",
            "http://h/?q=1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prepared_requests_drop_hop_by_hop_and_redacted_fields() {
        let mut e = Exchange::default();
        e.request.method = Some("POST".into());
        e.request.uri = Some("/items?token=<redacted>&c=1".into());
        e.request.headers = vec![
            ("host".into(), "shop.example".into()),
            ("connection".into(), "keep-alive".into()),
            ("content-length".into(), "2".into()),
            ("authorization".into(), REDACTED.into()),
            (
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
            ("x-test".into(), "recorded".into()),
        ];
        e.request.body = Bytes::from_static(b"{}");
        let p = prepare(&e, &options()).unwrap();
        assert_eq!(p.method, Method::POST);
        assert_eq!(p.path_and_query, "/items?token=%3Credacted%3E&c=1");
        assert_eq!(p.headers["host"], "shop.example");
        assert!(p.headers.get("connection").is_none());
        assert!(p.headers.get("content-length").is_none());
        assert!(p.headers.get("authorization").is_none());
        assert!(p.headers["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-4bf9"));
        assert_eq!(p.headers["x-test"], "1");
        e.request.body_truncated = true;
        assert_eq!(
            prepare(&e, &options()).unwrap_err(),
            Unsendable::BodyTruncated
        );
        e.request.body_truncated = false;
        e.request.uri = Some("http://elsewhere/".into());
        assert!(matches!(
            prepare(&e, &options()),
            Err(Unsendable::Invalid(_))
        ));
    }
}
