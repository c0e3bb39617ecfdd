//! A recording written out as one HAR 1.2 document, an entry at a time
//! (`shadowgate record export FILE --har OUT`, `docs/replay.md`, "HAR").
//! `record::har` reads it back.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::read::{Exchange, LineError, Message, OpenError};

/// The largest body decoded for export (a recorded body is at most
/// `max_body_bytes`; this only bounds a pathological compressed one).
const MAX_DECODED: usize = 256 << 20;

/// Writing a HAR failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{0}")]
    Read(LineError),
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportSummary {
    /// Entries written.
    pub entries: u64,
    /// Records that could not be read (left out).
    pub unreadable: u64,
    /// The first few of them.
    pub examples: Vec<LineError>,
}

#[derive(Serialize)]
struct OutPair<'a> {
    name: Cow<'a, str>,
    value: Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutPost<'a> {
    mime_type: &'a str,
    text: Cow<'a, str>,
    #[serde(rename = "_encoding", skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutRequest<'a> {
    method: &'a str,
    url: String,
    http_version: &'static str,
    cookies: [(); 0],
    headers: Vec<OutPair<'a>>,
    query_string: Vec<OutPair<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    post_data: Option<OutPost<'a>>,
    headers_size: i64,
    body_size: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutContent<'a> {
    size: i64,
    mime_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutResponse<'a> {
    status: u16,
    status_text: &'static str,
    http_version: &'static str,
    cookies: [(); 0],
    headers: Vec<OutPair<'a>>,
    content: OutContent<'a>,
    #[serde(rename = "redirectURL")]
    redirect_url: &'a str,
    headers_size: i64,
    body_size: i64,
}

#[derive(Serialize)]
struct Timings {
    send: f64,
    wait: f64,
    receive: f64,
}

#[derive(Serialize)]
struct Cache {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutEntry<'a> {
    started_date_time: &'a str,
    time: f64,
    request: OutRequest<'a>,
    response: OutResponse<'a>,
    cache: Cache,
    timings: Timings,
    #[serde(rename = "_route")]
    route: &'a str,
    #[serde(rename = "_requestId", skip_serializing_if = "str::is_empty")]
    request_id: &'a str,
    #[serde(rename = "_traceId", skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

fn out_headers(m: &Message) -> Vec<OutPair<'_>> {
    m.headers
        .iter()
        .map(|(k, v)| OutPair {
            name: Cow::Borrowed(k),
            value: Cow::Borrowed(v),
        })
        .collect()
}

/// A body as HAR text: UTF-8 as it is, anything else base64.
fn text_of(body: &[u8]) -> (Cow<'_, str>, Option<&'static str>) {
    match std::str::from_utf8(body) {
        Ok(t) => (Cow::Borrowed(t), None),
        Err(_) => (
            Cow::Owned(base64::engine::general_purpose::STANDARD.encode(body)),
            Some("base64"),
        ),
    }
}

/// The absolute URL of a recorded request: scheme from the recorded
/// `x-forwarded-proto` (else `http`), host from `host` (else `localhost`).
fn absolute_url(req: &Message) -> String {
    let uri = req.uri.as_deref().unwrap_or("/");
    let lower = uri.get(..8).unwrap_or(uri).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return uri.to_string();
    }
    let scheme = req
        .header("x-forwarded-proto")
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v == "http" || v == "https")
        .unwrap_or_else(|| "http".into());
    let host = req.header("host").unwrap_or("localhost");
    format!("{scheme}://{host}{uri}")
}

fn query_string(url: &str) -> Vec<OutPair<'static>> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            OutPair {
                name: Cow::Owned(decode(k)),
                value: Cow::Owned(decode(v)),
            }
        })
        .collect()
}

fn size(body: &[u8], truncated: bool) -> i64 {
    if truncated {
        -1
    } else {
        i64::try_from(body.len()).unwrap_or(i64::MAX)
    }
}

/// The answer's body decoded by its `content-encoding` (a HAR keeps it
/// decoded); `None` when it cannot be.
fn decoded_body(m: &Message) -> Option<Bytes> {
    let mut map = http::HeaderMap::new();
    for (k, v) in &m.headers {
        if k.eq_ignore_ascii_case("content-encoding") {
            map.append(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_str(v).ok()?,
            );
        }
    }
    let d = crate::diff::decode_body(&map, &m.body, MAX_DECODED).ok()?;
    (!d.truncated).then_some(d.bytes)
}

fn write_entry(out: &mut dyn Write, x: &Exchange) -> std::io::Result<()> {
    let req = &x.request;
    let resp = &x.response;
    let url = absolute_url(req);
    let queries = query_string(&url);
    let post_data = (!req.body.is_empty()).then(|| {
        let (text, encoding) = text_of(&req.body);
        OutPost {
            mime_type: req.header("content-type").unwrap_or(""),
            text,
            encoding,
        }
    });
    let status = resp.status.unwrap_or(0);
    let decoded = if resp.body_truncated {
        None
    } else {
        decoded_body(resp)
    };
    let content = match (&decoded, resp.body_truncated) {
        (_, true) => OutContent {
            size: -1,
            mime_type: resp.header("content-type").unwrap_or(""),
            text: None,
            encoding: None,
            comment: Some("body not recorded: longer than max_body_bytes"),
        },
        (Some(body), false) => {
            let (text, encoding) = text_of(body);
            OutContent {
                size: size(body, false),
                mime_type: resp.header("content-type").unwrap_or(""),
                text: Some(text),
                encoding,
                comment: None,
            }
        }
        (None, false) => {
            let (text, encoding) = text_of(&resp.body);
            OutContent {
                size: size(&resp.body, false),
                mime_type: resp.header("content-type").unwrap_or(""),
                text: Some(text),
                encoding,
                comment: Some("content-encoding not decoded: the body is as received"),
            }
        }
    };
    let entry = OutEntry {
        started_date_time: x.time.as_deref().unwrap_or("1970-01-01T00:00:00.000Z"),
        time: x.duration_ms,
        request: OutRequest {
            method: req.method.as_deref().unwrap_or("GET"),
            url,
            http_version: "HTTP/1.1",
            cookies: [],
            headers: out_headers(req),
            query_string: queries,
            post_data,
            headers_size: -1,
            body_size: size(&req.body, req.body_truncated),
        },
        response: OutResponse {
            status,
            status_text: http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or(""),
            http_version: "HTTP/1.1",
            cookies: [],
            headers: out_headers(resp),
            content,
            redirect_url: resp.header("location").unwrap_or(""),
            headers_size: -1,
            body_size: size(&resp.body, resp.body_truncated),
        },
        cache: Cache {},
        timings: Timings {
            send: 0.0,
            wait: x.duration_ms,
            receive: 0.0,
        },
        route: &x.route,
        request_id: &x.request_id,
        trace_id: x.trace_id.as_deref(),
    };
    serde_json::to_writer(&mut *out, &entry).map_err(std::io::Error::other)
}

/// Writes `source` as one HAR 1.2 document to `out`, an entry at a time.
/// Records that cannot be read are left out and counted; a fatal read
/// error ends the export.
pub fn write_har(
    source: super::Source,
    out: &mut dyn Write,
    out_path: &Path,
) -> Result<ExportSummary, ExportError> {
    let io = |source| ExportError::Write {
        path: out_path.to_path_buf(),
        source,
    };
    let head = serde_json::json!({
        "name": "shadowgate",
        "version": env!("CARGO_PKG_VERSION"),
    });
    write!(
        out,
        "{{\"log\":{{\"version\":\"1.2\",\"creator\":{head},\"pages\":[],\"entries\":["
    )
    .map_err(io)?;
    let mut summary = ExportSummary::default();
    for item in source {
        match item {
            Ok(x) => {
                if summary.entries > 0 {
                    out.write_all(b",\n").map_err(io)?;
                } else {
                    out.write_all(b"\n").map_err(io)?;
                }
                write_entry(out, &x).map_err(io)?;
                summary.entries += 1;
            }
            Err(e) if e.fatal => return Err(ExportError::Read(e)),
            Err(e) => {
                summary.unreadable += 1;
                if summary.examples.len() < 10 {
                    summary.examples.push(e);
                }
            }
        }
    }
    out.write_all(b"\n]}}\n").map_err(io)?;
    out.flush().map_err(io)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    type Item = Result<Exchange, LineError>;

    const LINES: &str = concat!(
        r#"{"v":1,"time":"2026-11-30T02:41:59.123Z","route":"items","request_id":"r1","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","#,
        r#""request":{"method":"POST","uri":"/items?colour=red&q=a%20b","headers":[["host","shop.test"],["x-forwarded-proto","https"],["content-type","application/json"]],"body":"{\"name\":\"lamp\"}","body_truncated":false},"#,
        r#""response":{"status":201,"headers":[["content-type","application/json"],["location","/items/7"]],"body":"{\"id\":7}","body_truncated":false},"duration_ms":3.412}"#,
        "\n",
        r#"{"v":1,"time":"2026-11-30T02:42:00.000Z","route":"items","request_id":"r2","#,
        r#""request":{"method":"PUT","uri":"/blobs/9","headers":[["host","shop.test:8080"],["content-type","application/octet-stream"]],"body_b64":"/wABAg==","body_truncated":false},"#,
        r#""response":{"status":200,"headers":[["content-type","image/png"]],"body_b64":"iVBORw==","body_truncated":false},"duration_ms":1.0}"#,
        "\n",
        "not json\n",
        r#"{"v":1,"time":"2026-11-30T02:42:01.000Z","route":"files","request_id":"r3","#,
        r#""request":{"method":"GET","uri":"/files/big","headers":[["host","shop.test"]],"body":"","body_truncated":false},"#,
        r#""response":{"status":200,"headers":[["content-type","text/plain"]],"body":"","body_truncated":true},"duration_ms":9.5}"#,
        "\n",
    );

    #[test]
    fn export_then_import_gives_the_same_exchanges() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("c.jsonl");
        std::fs::write(&rec, LINES).unwrap();
        let out = dir.path().join("c.har");
        let summary = super::super::export_har(&rec, &out).unwrap();
        assert_eq!(summary.entries, 3);
        assert_eq!(summary.unreadable, 1);
        assert!(!dir.path().join("c.har.partial").exists());

        let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let log = &doc["log"];
        assert_eq!(log["version"], "1.2");
        assert_eq!(log["creator"]["name"], "shadowgate");
        assert_eq!(log["creator"]["version"], env!("CARGO_PKG_VERSION"));
        let first = &log["entries"][0];
        assert_eq!(
            first["request"]["url"],
            "https://shop.test/items?colour=red&q=a%20b"
        );
        assert_eq!(
            first["request"]["queryString"],
            json!([{"name": "colour", "value": "red"}, {"name": "q", "value": "a b"}])
        );
        assert_eq!(first["request"]["postData"]["mimeType"], "application/json");
        assert_eq!(first["response"]["redirectURL"], "/items/7");
        assert_eq!(first["timings"]["wait"], 3.412);
        assert_eq!(first["time"], 3.412);
        let second = &log["entries"][1];
        assert_eq!(second["request"]["url"], "http://shop.test:8080/blobs/9");
        assert_eq!(second["request"]["postData"]["_encoding"], "base64");
        assert_eq!(second["response"]["content"]["encoding"], "base64");
        assert_eq!(log["entries"][2]["response"]["content"]["size"], -1);
        assert_eq!(log["entries"][2]["response"]["bodySize"], -1);

        let before: Vec<Exchange> = super::super::open(&rec)
            .unwrap()
            .filter_map(Result::ok)
            .collect();
        let after: Vec<Exchange> = super::super::open(&out)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(after.len(), before.len());
        for (a, b) in after.iter().zip(&before) {
            assert_eq!(a.route, b.route);
            assert_eq!(a.request_id, b.request_id);
            assert_eq!(a.trace_id, b.trace_id);
            assert_eq!(a.time, b.time);
            assert_eq!(a.duration_ms, b.duration_ms);
            assert_eq!(a.request, b.request);
            assert_eq!(a.response, b.response);
        }
    }

    #[test]
    fn an_encoded_answer_is_exported_decoded_and_imported_without_its_coding() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"ok\":true}").unwrap();
        let packed = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let line = format!(
            r#"{{"v":1,"route":"r","request":{{"method":"GET","uri":"/z","headers":[["host","h"],["accept-encoding","gzip"]]}},"response":{{"status":200,"headers":[["content-encoding","gzip"],["content-type","application/json"]],"body_b64":"{packed}"}}}}"#
        );
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("gz.jsonl");
        std::fs::write(&rec, line).unwrap();
        let out = dir.path().join("gz.har");
        super::super::export_har(&rec, &out).unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let content = &doc["log"]["entries"][0]["response"]["content"];
        assert_eq!(content["text"], "{\"ok\":true}");
        assert_eq!(content["size"], 11);
        let back: Vec<Item> = super::super::open(&out).unwrap().collect();
        let x = back[0].as_ref().unwrap();
        assert_eq!(&x.response.body[..], b"{\"ok\":true}");
        assert_eq!(x.response.header("content-encoding"), None);
        assert_eq!(x.request.header("accept-encoding"), None);
    }
}
