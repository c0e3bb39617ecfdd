//! HAR 1.2 (the HTTP Archive browsers and many tools export) read as
//! recorded [`Exchange`]s (`docs/replay.md`, "HAR"); `record::export`
//! writes one.
//!
//! Reading is streamed: a thread walks the document with a serde visitor
//! and hands `log.entries` over one at a time through a bounded channel, so
//! memory holds one entry (and the few waiting in the channel), whatever
//! the file's size. Entries that cannot be replayed are skipped, each
//! reported as a non-fatal [`LineError`] whose reason starts with
//! `skipped (KIND)` ([`LineError::skipped`]); for a HAR, `line` is the
//! entry's position in `log.entries` (1-based).

use std::borrow::Cow;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::read::{Exchange, LineError, Message, OpenError};

/// The route name of HAR exchanges, unless the caller names one or the
/// entry carries shadowgate's own `_route` (a HAR that shadowgate wrote).
pub const DEFAULT_ROUTE: &str = "har";

/// Entries read ahead of the consumer.
const AHEAD: usize = 16;

/// Why an entry is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Status 0 (or Playwright's -1): the request failed or was blocked
    /// and no answer came.
    Failed,
    /// Not an `http:` / `https:` URL (`data:`, `blob:`, `chrome-extension:` …).
    NotHttp,
    /// A WebSocket (a `ws:` / `wss:` URL, a 101 answer, an `Upgrade:
    /// websocket` request or Chrome's `_resourceType: "websocket"`).
    WebSocket,
}

impl Skip {
    /// The short name in [`LineError::skipped`].
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Failed => "failed",
            Skip::NotHttp => "not-http",
            Skip::WebSocket => "websocket",
        }
    }
}

/// Request headers left out: HTTP/2 pseudo-headers (`:authority` becomes
/// `host`), hop-by-hop fields (the replaying connection has its own), and
/// what the replaying client sets from the body it sends or that would
/// make the answer differ from the decoded body a HAR keeps.
const DROP_REQUEST: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "accept-encoding",
];

/// Response headers left out: hop-by-hop fields, and the framing of the
/// encoded body (a HAR keeps the body decoded).
const DROP_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "content-encoding",
];

// --- reading ------------------------------------------------------------------

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "startedDateTime", default)]
    started: Option<String>,
    #[serde(default)]
    time: Option<f64>,
    request: Request,
    response: Response,
    #[serde(rename = "_resourceType", default)]
    resource_type: Option<String>,
    #[serde(rename = "_route", default)]
    route: Option<String>,
    #[serde(rename = "_requestId", default)]
    request_id: Option<String>,
    #[serde(rename = "_traceId", default)]
    trace_id: Option<String>,
}

#[derive(Deserialize)]
struct Pair {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct Request {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<Pair>,
    #[serde(rename = "postData", default)]
    post_data: Option<PostData>,
    #[serde(rename = "bodySize", default)]
    body_size: Option<f64>,
}

#[derive(Deserialize)]
struct PostData {
    #[serde(rename = "mimeType", default)]
    mime_type: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    params: Option<Vec<Param>>,
    /// Not in HAR 1.2: shadowgate writes a binary request body as base64
    /// with `_encoding: "base64"`.
    #[serde(rename = "_encoding", alias = "encoding", default)]
    encoding: Option<String>,
}

#[derive(Deserialize)]
struct Param {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(rename = "fileName", default)]
    file_name: Option<String>,
    #[serde(rename = "contentType", default)]
    content_type: Option<String>,
}

#[derive(Deserialize)]
struct Response {
    status: i64,
    #[serde(default)]
    headers: Vec<Pair>,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    size: Option<f64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

/// Why an entry gives no exchange.
enum NotReplayed {
    Skip(Skip, String),
    Bad(String),
}

fn is_base64(encoding: Option<&str>) -> bool {
    encoding.is_some_and(|e| e.eq_ignore_ascii_case("base64"))
}

fn decode_base64(text: &str, what: &str) -> Result<Bytes, NotReplayed> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim().as_bytes())
        .map(Bytes::from)
        .map_err(|e| NotReplayed::Bad(format!("{what}: bad base64: {e}")))
}

fn kept_headers(pairs: Vec<Pair>, drop: &[&str]) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .filter_map(|p| {
            let name = p.name.trim().to_ascii_lowercase();
            (!name.is_empty() && !name.starts_with(':') && !drop.contains(&name.as_str()))
                .then_some((name, p.value))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` bytes left as they are.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

fn form_encode(s: &str) -> String {
    utf8_percent_encode(s, FORM).to_string().replace("%20", "+")
}

/// A `params`-only `postData` as the body a browser sends: form-encoded,
/// or multipart with the boundary its `mimeType` names. `None` when it
/// cannot be rebuilt (another type, or multipart without a boundary).
fn body_from_params(mime: &str, params: &[Param]) -> Option<Bytes> {
    let kind = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if kind.is_empty() || kind == "application/x-www-form-urlencoded" {
        let body = params
            .iter()
            .map(|p| {
                let value = p.value.as_deref().unwrap_or("");
                format!("{}={}", form_encode(&p.name), form_encode(value))
            })
            .collect::<Vec<_>>()
            .join("&");
        return Some(Bytes::from(body));
    }
    if kind != "multipart/form-data" {
        return None;
    }
    let boundary = mime.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })?;
    let mut body = String::new();
    for p in params {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"",
            p.name
        ));
        if let Some(file) = &p.file_name {
            body.push_str(&format!("; filename=\"{file}\""));
        }
        body.push_str("\r\n");
        if let Some(ct) = &p.content_type {
            body.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        body.push_str("\r\n");
        body.push_str(p.value.as_deref().unwrap_or(""));
        body.push_str("\r\n");
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    Some(Bytes::from(body))
}

/// The request body and whether it is known to be missing.
fn request_body(req: &Request) -> Result<(Bytes, bool), NotReplayed> {
    let said = req.body_size.unwrap_or(0.0);
    let Some(post) = &req.post_data else {
        return Ok((Bytes::new(), said > 0.0));
    };
    if let Some(text) = &post.text {
        if is_base64(post.encoding.as_deref()) {
            return Ok((decode_base64(text, "request.postData.text")?, false));
        }
        return Ok((Bytes::from(text.clone()), false));
    }
    match &post.params {
        Some(params) if !params.is_empty() => match body_from_params(&post.mime_type, params) {
            Some(body) => Ok((body, false)),
            None => Ok((Bytes::new(), true)),
        },
        _ => Ok((Bytes::new(), said > 0.0)),
    }
}

fn convert(e: Entry, n: u64, route: Option<&str>) -> Result<Exchange, NotReplayed> {
    let url = e.request.url.split('#').next().unwrap_or("").trim();
    let scheme = url
        .split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    let what = format!("{} {}", e.request.method, short(url));
    match scheme.as_str() {
        "http" | "https" => {}
        "ws" | "wss" => return Err(NotReplayed::Skip(Skip::WebSocket, what)),
        _ => return Err(NotReplayed::Skip(Skip::NotHttp, what)),
    }
    let upgrade = e.request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case("websocket")
    });
    let ws_type = e
        .resource_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("websocket"));
    if upgrade || ws_type || e.response.status == 101 {
        return Err(NotReplayed::Skip(Skip::WebSocket, what));
    }
    if e.response.status <= 0 {
        return Err(NotReplayed::Skip(
            Skip::Failed,
            format!("{what}: status {}, no answer", e.response.status),
        ));
    }
    let status = u16::try_from(e.response.status)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| NotReplayed::Bad(format!("{what}: status {}", e.response.status)))?;
    if e.request.method.is_empty() {
        return Err(NotReplayed::Bad("request.method is empty".into()));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|err| NotReplayed::Bad(format!("request.url {:?}: {err}", short(url))))?;
    // The host (and port) without any `user:password@`.
    let authority = uri
        .authority()
        .and_then(|a| a.as_str().rsplit('@').next())
        .map(str::to_string)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| NotReplayed::Bad(format!("request.url {:?}: no host", short(url))))?;
    let target = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") => "/".to_string(),
        Some(p) if p.starts_with('?') => format!("/{p}"),
        Some(p) => p.to_string(),
    };
    let (req_body, req_truncated) = request_body(&e.request)?;
    let mut headers = kept_headers(e.request.headers, DROP_REQUEST);
    if !headers.iter().any(|(k, _)| k == "host") {
        headers.insert(0, ("host".to_string(), authority));
    }
    let request = Message {
        method: Some(e.request.method),
        uri: Some(target),
        status: None,
        headers,
        body: req_body,
        body_truncated: req_truncated,
    };
    let (body, body_truncated) = match e.response.content {
        // Said to have a body, but kept none (some tools write `""`).
        Some(Content {
            text: Some(text),
            size: Some(size),
            ..
        }) if text.is_empty() && size > 0.0 => (Bytes::new(), true),
        Some(Content {
            text: Some(text),
            encoding,
            ..
        }) => {
            if is_base64(encoding.as_deref()) {
                (decode_base64(&text, "response.content.text")?, false)
            } else {
                (Bytes::from(text), false)
            }
        }
        // The browser did not keep the body: said to have a size (or an
        // unknown one, -1), but no text.
        Some(Content { size, .. }) => (Bytes::new(), size.unwrap_or(0.0) != 0.0),
        None => (Bytes::new(), true),
    };
    let response = Message {
        method: None,
        uri: None,
        status: Some(status),
        headers: kept_headers(e.response.headers, DROP_RESPONSE),
        body,
        body_truncated,
    };
    Ok(Exchange {
        line: n,
        time: e.started,
        route: route
            .map(str::to_string)
            .or(e.route)
            .unwrap_or_else(|| DEFAULT_ROUTE.to_string()),
        request_id: e.request_id.unwrap_or_default(),
        trace_id: e.trace_id,
        request,
        response,
        duration_ms: e.time.filter(|t| t.is_finite() && *t > 0.0).unwrap_or(0.0),
        calls: Vec::new(),
    })
}

/// At most 120 characters of a URL for a message (a `data:` URL may be long).
fn short(url: &str) -> Cow<'_, str> {
    match url.char_indices().nth(120) {
        Some((i, _)) => Cow::Owned(format!("{}…", &url[..i])),
        None => Cow::Borrowed(url),
    }
}

type Item = Result<Exchange, LineError>;

/// What the walking thread carries.
struct Walk {
    path: PathBuf,
    route: Option<String>,
    tx: SyncSender<Item>,
    entries: u64,
    saw_entries: bool,
    /// The consumer went away: stop quietly.
    stopped: bool,
}

impl Walk {
    fn error(&self, line: u64, reason: String, fatal: bool) -> LineError {
        LineError {
            path: self.path.clone(),
            line,
            reason,
            fatal,
        }
    }

    fn entry(&mut self, raw: &RawValue) -> bool {
        self.entries += 1;
        let n = self.entries;
        let item = match serde_json::from_str::<Entry>(raw.get()) {
            Err(e) => Err(self.error(n, format!("not a HAR entry: {e}"), false)),
            Ok(entry) => match convert(entry, n, self.route.as_deref()) {
                Ok(x) => Ok(x),
                Err(NotReplayed::Skip(kind, why)) => Err(self.error(
                    n,
                    format!("{}{}): {why}", super::read::SKIPPED, kind.as_str()),
                    false,
                )),
                Err(NotReplayed::Bad(why)) => Err(self.error(n, why, false)),
            },
        };
        if self.tx.send(item).is_err() {
            self.stopped = true;
        }
        !self.stopped
    }
}

struct Document<'a>(&'a mut Walk);
struct Log<'a>(&'a mut Walk);
struct Entries<'a>(&'a mut Walk);

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a HAR document (an object with `log`)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut saw_log = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "log" {
                saw_log = true;
                map.next_value_seed(Log(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(saw_log)
    }
}

impl<'de> DeserializeSeed<'de> for Log<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Log<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the `log` object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "entries" {
                self.0.saw_entries = true;
                map.next_value_seed(Entries(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the `log.entries` array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            if !self.0.entry(&raw) {
                return Err(de::Error::custom("the reader was dropped"));
            }
        }
        Ok(())
    }
}

fn walk(mut w: Walk, input: Box<dyn BufRead + Send>) {
    let mut de = serde_json::Deserializer::from_reader(input);
    let result = Document(&mut w)
        .deserialize(&mut de)
        .and_then(|saw_log| de.end().map(|()| saw_log));
    if w.stopped {
        return;
    }
    let line = w.entries + 1;
    let fatal = match result {
        Ok(true) if w.saw_entries => return,
        Ok(true) => "not a HAR file: `log` has no `entries`".to_string(),
        Ok(false) => "not a HAR file: no `log` object".to_string(),
        Err(e) => format!("not a HAR file or cut short: {e}"),
    };
    let _ = w.tx.send(Err(w.error(line, fatal, true)));
}

/// A HAR file's entries, read on a thread of their own.
pub struct Reader {
    rx: Receiver<Item>,
    done: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("har::Reader").finish_non_exhaustive()
    }
}

impl Reader {
    /// Starts reading `input` (named `path` in errors); `route` names the
    /// exchanges (default: the entry's `_route`, else [`DEFAULT_ROUTE`]).
    pub fn start(
        path: &Path,
        input: Box<dyn BufRead + Send>,
        route: Option<&str>,
    ) -> Result<Reader, OpenError> {
        let (tx, rx) = sync_channel(AHEAD);
        let w = Walk {
            path: path.to_path_buf(),
            route: route.map(str::to_string),
            tx,
            entries: 0,
            saw_entries: false,
            stopped: false,
        };
        std::thread::Builder::new()
            .name("shadowgate-har".into())
            .spawn(move || walk(w, input))
            .map_err(|source| OpenError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Reader { rx, done: false })
    }
}

impl Iterator for Reader {
    type Item = Item;
    fn next(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        let item = self.rx.recv().ok();
        match &item {
            None | Some(Err(LineError { fatal: true, .. })) => self.done = true,
            _ => {}
        }
        item
    }
}

/// Whether a file's first bytes start a HAR document: a JSON object whose
/// first key is `log` (after a byte-order mark and white space).
pub fn looks_like_har(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let mut rest = head.iter().skip_while(|b| b.is_ascii_whitespace());
    if rest.next() != Some(&b'{') {
        return false;
    }
    let rest: Vec<u8> = rest
        .skip_while(|b| b.is_ascii_whitespace())
        .take(5)
        .copied()
        .collect();
    rest == b"\"log\""
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn entry(method: &str, url: &str, status: i64) -> Value {
        json!({
            "startedDateTime": "2026-11-30T02:41:59.123Z",
            "time": 12.5,
            "request": {"method": method, "url": url, "httpVersion": "HTTP/1.1",
                        "headers": [], "queryString": [], "cookies": [],
                        "headersSize": -1, "bodySize": 0},
            "response": {"status": status, "statusText": "", "httpVersion": "HTTP/1.1",
                         "headers": [], "cookies": [],
                         "content": {"size": 2, "mimeType": "application/json", "text": "{}"},
                         "redirectURL": "", "headersSize": -1, "bodySize": 2},
            "cache": {}, "timings": {"send": 0, "wait": 12.5, "receive": 0}
        })
    }

    fn har(entries: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({"log": {"version": "1.2",
            "creator": {"name": "test", "version": "1"}, "entries": entries}}))
        .unwrap()
    }

    fn read(bytes: Vec<u8>) -> Vec<Item> {
        Reader::start(
            Path::new("t.har"),
            Box::new(std::io::Cursor::new(bytes)),
            None,
        )
        .unwrap()
        .collect()
    }

    #[test]
    fn unreplayable_entries_are_skipped_with_their_reason_and_reading_goes_on() {
        let mut ws = entry("GET", "https://h.test/socket", 101);
        ws["_resourceType"] = json!("websocket");
        let mut upgrade = entry("GET", "http://h.test/chat", 200);
        upgrade["request"]["headers"] = json!([{"name": "Upgrade", "value": "websocket"}]);
        let out = read(har(vec![
            entry("GET", "http://h.test/ok", 200),
            entry("GET", "http://h.test/blocked", 0),
            entry("GET", "http://h.test/aborted", -1),
            entry("GET", "data:image/png;base64,AAAA", 200),
            entry("GET", "blob:http://h.test/5f0c", 200),
            entry("GET", "chrome-extension://abc/x.js", 200),
            entry("GET", "wss://h.test/live", 101),
            ws,
            upgrade,
            json!({"request": {"method": "GET"}}),
            entry("GET", "http://h.test?last=1", 200),
        ]));
        let kinds: Vec<Option<&str>> = out
            .iter()
            .map(|r| match r {
                Ok(_) => Some("ok"),
                Err(e) => e.skipped(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                Some("ok"),
                Some("failed"),
                Some("failed"),
                Some("not-http"),
                Some("not-http"),
                Some("not-http"),
                Some("websocket"),
                Some("websocket"),
                Some("websocket"),
                None,
                Some("ok"),
            ]
        );
        let blocked = out[1].as_ref().unwrap_err();
        assert_eq!(blocked.line, 2);
        assert!(!blocked.fatal);
        assert!(
            blocked
                .to_string()
                .starts_with("t.har:2: skipped (failed): GET http://h.test/blocked"),
            "{blocked}"
        );
        let bad = out[9].as_ref().unwrap_err();
        assert!(
            !bad.fatal && bad.reason.contains("not a HAR entry"),
            "{bad}"
        );
        let last = out[10].as_ref().unwrap();
        assert_eq!(last.line, 11);
        assert_eq!(last.request.uri.as_deref(), Some("/?last=1"));
    }

    #[test]
    fn an_entry_becomes_an_exchange() {
        let mut e = entry(
            "POST",
            "https://api.test:8443/items?colour=red&n=2#frag",
            201,
        );
        e["request"]["headers"] = json!([
            {"name": ":authority", "value": "api.test:8443"},
            {"name": ":method", "value": "POST"},
            {"name": "Content-Type", "value": "application/json"},
            {"name": "Content-Length", "value": "15"},
            {"name": "Accept-Encoding", "value": "gzip, br"},
            {"name": "Connection", "value": "keep-alive"},
            {"name": "X-Trace", "value": "a"}
        ]);
        e["request"]["postData"] =
            json!({"mimeType": "application/json", "text": "{\"name\":\"lamp\"}"});
        e["response"]["headers"] = json!([
            {"name": "Content-Type", "value": "image/png"},
            {"name": "Content-Encoding", "value": "br"},
            {"name": "Content-Length", "value": "3"},
            {"name": "ETag", "value": "\"x\""}
        ]);
        e["response"]["content"] =
            json!({"size": 3, "mimeType": "image/png", "text": "AAEC", "encoding": "base64"});
        e["_route"] = json!("items");
        let out = read(har(vec![e.clone()]));
        let x = out[0].as_ref().unwrap();
        assert_eq!(x.route, "items");
        assert_eq!(x.time.as_deref(), Some("2026-11-30T02:41:59.123Z"));
        assert_eq!(x.duration_ms, 12.5);
        assert_eq!(x.request.method.as_deref(), Some("POST"));
        assert_eq!(x.request.uri.as_deref(), Some("/items?colour=red&n=2"));
        assert_eq!(
            x.request.headers,
            [
                ("host".to_string(), "api.test:8443".to_string()),
                ("content-type".into(), "application/json".into()),
                ("x-trace".into(), "a".into()),
            ]
        );
        assert_eq!(&x.request.body[..], br#"{"name":"lamp"}"#);
        assert_eq!(x.response.status, Some(201));
        assert_eq!(
            x.response.headers,
            [
                ("content-type".to_string(), "image/png".to_string()),
                ("etag".into(), "\"x\"".into()),
            ]
        );
        assert_eq!(&x.response.body[..], &[0u8, 1, 2]);
        assert!(!x.response.body_truncated);

        // The caller's name wins; a Host that is there is kept.
        e["request"]["headers"] = json!([{"name": "Host", "value": "other.test"}]);
        let named: Vec<Item> = Reader::start(
            Path::new("t.har"),
            Box::new(std::io::Cursor::new(har(vec![e]))),
            Some("browser"),
        )
        .unwrap()
        .collect();
        let x = named[0].as_ref().unwrap();
        assert_eq!(x.route, "browser");
        assert_eq!(
            x.request.headers,
            [("host".to_string(), "other.test".to_string())]
        );
    }

    #[test]
    fn a_body_the_browser_did_not_keep_is_truncated_and_params_make_a_body() {
        let mut gone = entry("GET", "http://h.test/big", 200);
        gone["response"]["content"] = json!({"size": 5000, "mimeType": "text/html"});
        let mut empty = entry("GET", "http://h.test/none", 204);
        empty["response"]["content"] = json!({"size": 0, "mimeType": ""});
        let mut blank = entry("GET", "http://h.test/blank", 200);
        blank["response"]["content"] = json!({"size": 70, "mimeType": "text/css", "text": ""});
        let mut form = entry("POST", "http://h.test/form", 200);
        form["request"]["postData"] = json!({"mimeType": "application/x-www-form-urlencoded",
            "params": [{"name": "q", "value": "a b&c"}, {"name": "n", "value": "é"}]});
        let mut multi = entry("POST", "http://h.test/upload", 200);
        multi["request"]["postData"] = json!({"mimeType": "multipart/form-data; boundary=XyZ",
            "params": [{"name": "title", "value": "hi"},
                       {"name": "f", "fileName": "a.txt", "contentType": "text/plain", "value": "abc"}]});
        let mut odd = entry("POST", "http://h.test/odd", 200);
        odd["request"]["postData"] = json!({"mimeType": "text/plain", "params": [{"name": "x"}]});
        let mut b64 = entry("PUT", "http://h.test/bin", 200);
        b64["request"]["postData"] =
            json!({"mimeType": "application/octet-stream", "text": "/wA=", "_encoding": "base64"});
        let out = read(har(vec![gone, empty, form, multi, odd, b64, blank]));
        let x: Vec<&Exchange> = out.iter().map(|r| r.as_ref().unwrap()).collect();
        assert!(x[0].response.body_truncated);
        assert_eq!(x[0].response.status, Some(200));
        assert!(!x[1].response.body_truncated && x[1].response.body.is_empty());
        assert_eq!(&x[2].request.body[..], b"q=a+b%26c&n=%C3%A9");
        assert_eq!(
            std::str::from_utf8(&x[3].request.body).unwrap(),
            "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhi\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\
             Content-Type: text/plain\r\n\r\nabc\r\n--XyZ--\r\n"
        );
        assert!(x[4].request.body_truncated && x[4].request.body.is_empty());
        assert_eq!(&x[5].request.body[..], &[0xffu8, 0]);
        assert!(x[6].response.body_truncated);
    }

    #[test]
    fn a_file_that_is_not_a_har_ends_with_one_fatal_error() {
        for (text, want) in [
            (&b"{\"x\": 1}"[..], "no `log` object"),
            (b"{\"log\": {\"version\": \"1.2\"}}", "has no `entries`"),
            (b"[1, 2]", "not a HAR file"),
        ] {
            let out = read(text.to_vec());
            assert_eq!(out.len(), 1, "{out:?}");
            let e = out[0].as_ref().unwrap_err();
            assert!(e.fatal && e.reason.contains(want), "{e}");
        }
        // Cut short after two entries: both are read, then the error.
        let mut text = har(vec![
            entry("GET", "http://h.test/a", 200),
            entry("GET", "http://h.test/b", 200),
            entry("GET", "http://h.test/c", 200),
        ]);
        let cut = text.windows(3).rposition(|w| w == b"},{").unwrap() + 2;
        text.truncate(cut + 10);
        let out = read(text);
        assert_eq!(out.len(), 3);
        assert!(out[0].is_ok() && out[1].is_ok());
        assert!(out[2].as_ref().unwrap_err().fatal);
    }

    /// A reader whose bytes come over a channel: the test decides when the
    /// rest of the file arrives.
    struct Drip(std::sync::mpsc::Receiver<Vec<u8>>, std::io::Cursor<Vec<u8>>);

    impl std::io::Read for Drip {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            loop {
                let n = self.1.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                match self.0.recv() {
                    Ok(chunk) => self.1 = std::io::Cursor::new(chunk),
                    Err(_) => return Ok(0),
                }
            }
        }
    }

    #[test]
    fn entries_stream_before_the_file_ends() {
        let text = har(vec![
            entry("GET", "http://h.test/first", 200),
            entry("GET", "http://h.test/second", 200),
        ]);
        let split = text.windows(3).position(|w| w == b"},{").unwrap() + 2;
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(text[..split].to_vec()).unwrap();
        let input = std::io::BufReader::new(Drip(rx, std::io::Cursor::new(Vec::new())));
        let reader = Reader::start(Path::new("t.har"), Box::new(input), None).unwrap();
        let (got_tx, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for item in reader {
                let _ = got_tx.send(item);
            }
        });
        // The first entry arrives while the rest of the file has not.
        let wait = std::time::Duration::from_secs(10);
        let first = got.recv_timeout(wait).expect("the first entry").unwrap();
        assert_eq!(first.request.uri.as_deref(), Some("/first"));
        tx.send(text[split..].to_vec()).unwrap();
        drop(tx);
        let second = got.recv_timeout(wait).expect("the second").unwrap();
        assert_eq!(second.request.uri.as_deref(), Some("/second"));
        assert!(got.recv_timeout(wait).is_err(), "nothing more");
    }

    #[test]
    fn a_har_is_told_by_its_extension_or_first_key() {
        assert!(looks_like_har(b"\xEF\xBB\xBF \n{ \"log\": {"));
        assert!(!looks_like_har(b"{\"v\":1,\"log\":1}"));
        assert!(!looks_like_har(b"{\"logs\":1}"));
        let dir = tempfile::tempdir().unwrap();
        let body = har(vec![entry("GET", "http://h.test/a?b=1", 200)]);
        for name in ["session.har", "session.json", "session"] {
            let path = dir.path().join(name);
            std::fs::write(&path, &body).unwrap();
            let out: Vec<Item> = super::super::open(&path).unwrap().collect();
            let x = out[0].as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(x.route, DEFAULT_ROUTE);
            assert_eq!(x.request.uri.as_deref(), Some("/a?b=1"));
        }
        // A recording named .jsonl is read as JSON lines, whatever it holds.
        let path = dir.path().join("session.jsonl");
        std::fs::write(&path, &body).unwrap();
        let out: Vec<Item> = super::super::open(&path).unwrap().collect();
        assert!(out[0].as_ref().unwrap_err().skipped().is_none());
    }
}
