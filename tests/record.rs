//! Recording (issue #17, part 1): a route's `record:` writes its sampled
//! requests and the primary's answers as JSON lines, secrets hidden,
//! rotated, compressed when asked, never failing or delaying a request
//! when the file cannot be written, and flushed at shutdown.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use shadowgate::app::Running;
use support::*;

/// A proxy with one route `r` to `primary`, recording with `record` (the
/// inside of the `record:` flow mapping).
async fn recording_to(primary: std::net::SocketAddr, record: &str) -> Running {
    start_proxy(&format!(
        "backends:\n  v1: {{ endpoints: [\"{primary}\"] }}\nroutes:\n  - name: r\n    backend: v1\n    record: {{ {record} }}\n",
    ))
    .await
}

/// A proxy with one route `r` to a backend answering `body`, recording
/// with `record`.
async fn proxy_recording(body: &'static str, record: &str) -> (Running, BackendHandle) {
    let v1 = TestBackend::new()
        .body(body)
        .header("content-type", "application/json")
        .header("set-cookie", "session=s3cret")
        .spawn()
        .await;
    (recording_to(v1.addr, record).await, v1)
}

/// A proxy recording route `r` (to `primary`) into `file`, and a raw
/// connection to it.
async fn raw_client_of_recording(
    primary: std::net::SocketAddr,
    file: &Path,
) -> (Running, tokio::net::TcpStream) {
    let proxy = recording_to(primary, &format!("file: {}", file.display())).await;
    let s = tokio::net::TcpStream::connect(proxy.listen_addrs[0])
        .await
        .unwrap();
    (proxy, s)
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits (at most 10 s) until `path` holds at least `n` lines.
async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = lines(path);
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` GETs of `/x`, each answered 200 `ok` (recording never fails a request).
async fn gets_answered_ok(c: &TestClient, addr: std::net::SocketAddr, n: usize) {
    for _ in 0..n {
        let a = get(c, addr, "shop.example", "/x").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "ok");
    }
}

fn file_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[tokio::test]
async fn records_carry_the_exchange_with_secrets_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "captures/items.jsonl");
    let (proxy, _v1) = proxy_recording(
        "{\"id\":7,\"name\":\"lamp\"}",
        &format!("file: {}, max_body_bytes: 16", file.display()),
    )
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    let a = send(
        &c,
        addr,
        Method::POST,
        "shop.example",
        "/items?token=abc123&colour=red",
        &[
            ("authorization", "Bearer hunter2"),
            ("x-request-id", "req-1"),
            ("content-type", "text/plain"),
        ],
        "small body",
    )
    .await;
    assert_eq!(a.status, 200);
    let big = send(
        &c,
        addr,
        Method::PUT,
        "shop.example",
        "/items/7",
        &[("x-request-id", "req-2")],
        Bytes::from(vec![b'x'; 100]),
    )
    .await;
    assert_eq!(big.status, 200);

    let got = wait_lines(&file, 2).await;
    assert_eq!(got.len(), 2, "two records: {got:?}");
    let r = got
        .iter()
        .find(|l| l["request_id"] == "req-1")
        .expect("the first request's record");
    assert_eq!(r["v"], 1);
    assert_eq!(r["route"], "r");
    assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    assert_eq!(r["request"]["method"], "POST");
    let uri = r["request"]["uri"].as_str().unwrap();
    assert!(uri.contains("colour=red"), "{uri}");
    assert!(!uri.contains("abc123"), "query secret kept: {uri}");
    assert_eq!(r["request"]["body"], "small body");
    assert_eq!(r["request"]["body_truncated"], false);
    let headers = r["request"]["headers"].as_array().unwrap();
    let auth = headers
        .iter()
        .find(|h| h[0] == "authorization")
        .expect("authorization listed");
    assert_eq!(auth[1], "<redacted>");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("hunter2"), "a credential reached the file");
    assert!(!text.contains("s3cret"), "a cookie reached the file");
    assert_eq!(r["response"]["status"], 200);
    // Over `max_body_bytes` (16): the answer's body is kept out, marked.
    assert_eq!(r["response"]["body_truncated"], true);
    assert!(r["duration_ms"].as_f64().unwrap() >= 0.0);

    let b = got.iter().find(|l| l["request_id"] == "req-2").unwrap();
    assert_eq!(b["request"]["method"], "PUT");
    assert_eq!(b["request"]["body_truncated"], true);
    assert_eq!(b["request"]["body"], "");

    let m = metrics(&proxy).await;
    assert_eq!(
        metric(&m, "shadowgate_record_written_total{route=\"r\"}"),
        2.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn binary_bodies_are_base64_and_small_ones_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "items.jsonl");
    let (proxy, _v1) = proxy_recording("{\"ok\":true}", &format!("file: {}", file.display())).await;
    let a = send(
        &client(),
        proxy.listen_addrs[0],
        Method::POST,
        "shop.example",
        "/upload",
        &[],
        Bytes::from_static(&[0xff, 0x00, 0xfe]),
    )
    .await;
    assert_eq!(a.status, 200);
    let got = wait_lines(&file, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["request"]["body_b64"], "/wD+");
    assert_eq!(got[0]["response"]["body"], "{\"ok\":true}");
    assert_eq!(got[0]["response"]["body_truncated"], false);
    // A request without a body (no tap in its way) is recorded whole.
    let g = get(&client(), proxy.listen_addrs[0], "shop.example", "/g").await;
    assert_eq!(g.status, 200);
    let got = wait_lines(&file, 2).await;
    assert_eq!(got[1]["request"]["method"], "GET");
    assert_eq!(got[1]["request"]["body"], "");
    assert_eq!(got[1]["request"]["body_truncated"], false, "{}", got[1]);
    assert_eq!(got[1]["response"]["body"], "{\"ok\":true}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn percent_and_methods_choose_what_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "sampled.jsonl");
    let (proxy, _v1) = proxy_recording(
        "ok",
        &format!("file: {}, percent: 25, methods: [post]", file.display()),
    )
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, addr, "shop.example", "/g").await.status, 200);
    }
    for _ in 0..400 {
        let a = send(&c, addr, Method::POST, "shop.example", "/p", &[], "b").await;
        assert_eq!(a.status, 200);
    }
    proxy.shutdown().await;
    let got = lines(&file);
    assert!(
        got.iter().all(|l| l["request"]["method"] == "POST"),
        "a GET was recorded"
    );
    // 25% of 400 is 100; far outside 50..=160 is not sampling at 25%.
    assert!(
        (50..=160).contains(&got.len()),
        "{} of 400 POSTs recorded at 25%",
        got.len()
    );
}

#[tokio::test]
async fn rotation_keeps_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "rot.jsonl");
    let (proxy, _v1) = proxy_recording(
        "a body of some length to fill the files",
        &format!(
            "file: {}, max_file_bytes: 2KiB, max_files: 3",
            file.display()
        ),
    )
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for i in 0..60 {
        let a = get(&c, addr, "shop.example", &format!("/items/{i}")).await;
        assert_eq!(a.status, 200);
    }
    proxy.shutdown().await;
    let names: Vec<PathBuf> = ["", ".1", ".2", ".3"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", file.display())))
        .collect();
    for n in &names[..3] {
        assert!(n.exists(), "{} missing", n.display());
        let len = std::fs::metadata(n).unwrap().len();
        assert!(len <= 2048, "{} is {len} bytes", n.display());
        assert!(!lines(n).is_empty());
    }
    assert!(!names[3].exists(), "more than max_files kept");
    // The newest records are in the file being written.
    let last = lines(&names[0]);
    assert_eq!(last.last().unwrap()["request"]["uri"], "/items/59");
}

#[tokio::test]
async fn a_zst_file_is_compressed_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "items.jsonl.zst");
    let (proxy, _v1) = proxy_recording("{\"id\":1}", &format!("file: {}", file.display())).await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for i in 0..20 {
        let a = get(&c, addr, "shop.example", &format!("/z/{i}")).await;
        assert_eq!(a.status, 200);
    }
    proxy.shutdown().await;
    let raw = std::fs::read(&file).unwrap();
    assert_eq!(&raw[..4], &[0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");
    let mut text = String::new();
    zstd::stream::read::Decoder::new(&raw[..])
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let got: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 20);
    assert_eq!(got[0]["response"]["body"], "{\"id\":1}");
}

#[tokio::test]
async fn an_unwritable_file_drops_and_counts_without_failing_requests() {
    let dir = tempfile::tempdir().unwrap();
    // The file's directory is a regular file: it can be neither created
    // nor opened, whoever runs the test.
    let blocker = file_in(&dir, "blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let file = blocker.join("items.jsonl");
    let (proxy, _v1) = proxy_recording("ok", &format!("file: {}", file.display())).await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    gets_answered_ok(&c, addr, 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let key = "shadowgate_record_dropped_total{route=\"r\",reason=\"write_failed\"}";
    let mut dropped = 0.0;
    while tokio::time::Instant::now() < deadline {
        dropped = metric(&metrics(&proxy).await, key);
        if dropped >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped, 10.0, "every record counted as dropped");
    assert_eq!(
        metric(
            &metrics(&proxy).await,
            "shadowgate_record_written_total{route=\"r\"}"
        ),
        0.0
    );
    proxy.shutdown().await;
}

/// The line's first part (the request's method, target and headers) is
/// written when the request is admitted, into a buffer of 1 KiB held from
/// the shadow memory budget: a budget that cannot hold it drops the
/// record, counted, and the request is served all the same. (Buffers may
/// hold 750 of a 1000-byte budget: enough for this record's whole line,
/// about 550 bytes, but the buffer is counted as allocated, not as used.)
#[tokio::test]
async fn a_budget_too_small_for_the_request_part_drops_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "small.jsonl");
    let v1 = TestBackend::new().body("ok").spawn().await;
    let proxy = start_proxy(&format!(
        "limits: {{ shadow_memory: 1000 }}\nbackends:\n  v1: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: r\n    backend: v1\n    record: {{ file: {} }}\n",
        v1.addr,
        file.display()
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    gets_answered_ok(&c, addr, 3).await;
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "shadowgate_record_dropped_total{route=\"r\",reason=\"over_budget\"}"
        ),
        3.0
    );
    assert_eq!(metric(&m, "shadowgate_shadow_memory_bytes"), 0.0);
    proxy.shutdown().await;
    assert!(lines(&file).is_empty());
}

/// Waits (at most 10 s) until the proxy holds no shadow memory: a
/// record's bytes are held until written, then all returned.
async fn wait_memory_returned(proxy: &Running) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = metric(&metrics(proxy).await, "shadowgate_shadow_memory_bytes");
        if held == 0.0 || tokio::time::Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The answer's body is copied into the record's buffer as the client
/// reads it, each growth reserved first: an answer the budget cannot hold
/// drops the record (counted) and reaches the client whole; a record that
/// is written gives all its memory back.
#[tokio::test]
async fn an_answer_too_large_for_the_budget_drops_the_record_and_is_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (dropped, file) = (file_in(&dir, "large.jsonl"), file_in(&dir, "small.jsonl"));
    let large = "y".repeat(8000);
    let v1 = TestBackend::new().body(large.clone()).spawn().await;
    let small = TestBackend::new().body("ok").spawn().await;
    // Buffers may hold 3000 bytes: the parts' 1 KiB and a small answer
    // fit, 8000 bytes of answer do not.
    let proxy = start_proxy(&format!(
        "limits: {{ shadow_memory: 4000 }}\nbackends:\n  v1: {{ endpoints: [\"{}\"] }}\n  small: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: large\n    match: {{ path_prefix: /large }}\n    backend: v1\n    record: {{ file: {}, max_body_bytes: 65536 }}\n  - name: r\n    backend: small\n    record: {{ file: {}, max_body_bytes: 65536 }}\n",
        v1.addr,
        small.addr,
        dropped.display(),
        file.display()
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    let a = get(&c, addr, "shop.example", "/large").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), large, "the answer reached the client whole");
    gets_answered_ok(&c, addr, 2).await;
    let got = wait_lines(&file, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got
        .iter()
        .all(|l| l["route"] == "r" && l["response"]["body"] == "ok"));
    assert_eq!(wait_memory_returned(&proxy).await, 0.0);
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "shadowgate_record_dropped_total{route=\"large\",reason=\"over_budget\"}"
        ),
        1.0
    );
    proxy.shutdown().await;
    assert!(lines(&dropped).is_empty());
}

/// A primary that tells on `got_first` when the bytes `first` of a body
/// have reached it, then reads the request to its end and answers `ok`.
async fn primary_telling_first_chunk(
    first: Vec<u8>,
    got_first: tokio::sync::mpsc::Sender<()>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (first, got_first) = (first.clone(), got_first.clone());
            tokio::spawn(async move {
                let (mut buf, mut told) = (Vec::new(), false);
                let mut chunk = [0u8; 4096];
                while !buf.ends_with(b"0\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if !told && buf.windows(first.len()).any(|w| w == first) {
                        told = true;
                        let _ = got_first.send(()).await;
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    addr
}

/// A request body that comes in chunks is recorded as sent: a character
/// cut between two chunks is written whole, and a body whose later chunk
/// is not UTF-8 is written as base64 of all its bytes. The second chunk is
/// sent only once the first has reached the primary, so the proxy has
/// passed (and copied) it as a chunk of its own.
#[tokio::test]
async fn a_body_streamed_in_chunks_is_recorded_as_sent() {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "chunks.jsonl");
    let text = "caf\u{e9} \"quoted\" \u{1f980}\n".as_bytes().to_vec();
    let mut not_utf8 = text.clone();
    not_utf8.extend_from_slice(&[b'a', 0xff, b'z']);
    // Cut inside `é`, and (the second) before the bad byte.
    for (i, (body, cut)) in [(&text, 4), (&text, 17), (&not_utf8, 4)]
        .into_iter()
        .enumerate()
    {
        let (first, second) = body.split_at(cut);
        let (tell, mut got_first) = tokio::sync::mpsc::channel(1);
        let primary = primary_telling_first_chunk(first.to_vec(), tell).await;
        let (proxy, mut s) = raw_client_of_recording(primary, &file).await;
        let mut head = b"POST /up HTTP/1.1\r\nhost: shop.example\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
        head.extend_from_slice(format!("{:x}\r\n", first.len()).as_bytes());
        head.extend_from_slice(first);
        head.extend_from_slice(b"\r\n");
        s.write_all(&head).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), got_first.recv())
            .await
            .expect("the first chunk reached the primary");
        let mut tail = format!("{:x}\r\n", second.len()).into_bytes();
        tail.extend_from_slice(second);
        tail.extend_from_slice(b"\r\n0\r\n\r\n");
        s.write_all(&tail).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("the answer in time")
            .unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        proxy.shutdown().await;
        assert_eq!(lines(&file).len(), i + 1, "flushed at shutdown");
    }
    let got = lines(&file);
    for r in &got[..2] {
        assert_eq!(
            r["request"]["body"],
            std::str::from_utf8(&text).unwrap(),
            "{r}"
        );
        assert_eq!(r["request"]["body_truncated"], false);
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&not_utf8);
    assert_eq!(got[2]["request"]["body_b64"], b64.as_str(), "{}", got[2]);
    assert!(got[2]["request"].get("body").is_none());
}

#[tokio::test]
async fn shutdown_flushes_the_last_records() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "last.jsonl");
    let (proxy, _v1) = proxy_recording("ok", &format!("file: {}", file.display())).await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for i in 0..3 {
        let a = get(&c, addr, "shop.example", &format!("/last/{i}")).await;
        assert_eq!(a.status, 200);
    }
    // Read at once after the shutdown, within the writer's one-second
    // batch: only the shutdown's flush can have written them.
    proxy.shutdown().await;
    let got = lines(&file);
    assert_eq!(got.len(), 3, "records lost at shutdown: {got:?}");
}

/// What the test app saw while making its outbound calls: how many
/// records were gathering calls at that moment.
type Seen = std::sync::Arc<parking_lot::Mutex<Vec<usize>>>;

/// The egress of the proxy under test, known once it has started.
type EgressCell = std::sync::Arc<std::sync::OnceLock<std::sync::Arc<shadowgate::egress::Egress>>>;

/// An app (v1) that answers each request after making `calls=N` outbound
/// calls (query) to `payments.example` through the egress live listener,
/// propagating `traceparent` only, with a credential and a query secret;
/// call `i` sends `{"n":i}`, padded past 64 bytes when `pad=1`.
async fn calling_app(
    egress: std::sync::Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    cell: EgressCell,
    seen: Seen,
) -> std::net::SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = client();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                return;
            };
            let (client, egress, cell, seen) =
                (client.clone(), egress.clone(), cell.clone(), seen.clone());
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (client, egress, cell, seen) =
                    (client.clone(), egress.clone(), cell.clone(), seen.clone());
                async move {
                    let q = req.uri().query().unwrap_or("").to_string();
                    let arg = |k: &str| {
                        q.split('&')
                            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0)
                    };
                    let (calls, pad) = (arg("calls"), arg("pad") == 1);
                    let tp = req.headers().get("traceparent").cloned();
                    let _ = req.into_body().collect().await;
                    let eg = *egress.get().expect("egress address");
                    let mut answers = Vec::new();
                    for i in 0..calls {
                        if let Some(e) = cell.get() {
                            seen.lock().push(e.recording.len());
                        }
                        let body = if pad {
                            format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(100))
                        } else {
                            format!("{{\"n\":{i}}}")
                        };
                        let mut b = http::Request::post(format!(
                            "http://{eg}/charges?api_key=k3ysecret&n={i}"
                        ))
                        .header("host", "payments.example")
                        .header("authorization", "Bearer pr0vider")
                        .header("content-type", "application/json");
                        if let Some(tp) = &tp {
                            b = b.header("traceparent", tp.clone());
                        }
                        let resp = client
                            .request(b.body(Full::new(Bytes::from(body))).unwrap())
                            .await
                            .unwrap();
                        let status = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        answers.push(status);
                    }
                    let text = format!("{answers:?}");
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        text,
                    ))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A proxy with an egress (`payments` → a provider) and two routes to the
/// calling app: `/rec` recorded to `file`, `/plain` not.
async fn proxy_with_egress(file: &Path, record: &str) -> (Running, Seen, BackendHandle) {
    let provider = TestBackend::new()
        .body("{\"id\":\"ch_1\",\"status\":\"succeeded\"}")
        .header("content-type", "application/json")
        .header("set-cookie", "psession=c00kie")
        .spawn()
        .await;
    let egress_addr = std::sync::Arc::new(std::sync::OnceLock::new());
    let cell: EgressCell = Default::default();
    let seen: Seen = Default::default();
    let app = calling_app(egress_addr.clone(), cell.clone(), seen.clone()).await;
    let proxy = start_proxy(&format!(
        "backends:\n  app: {{ endpoints: [\"{app}\"] }}\n  provider: {{ endpoints: [\"{}\"] }}\n\
         egress:\n  listen: 127.0.0.1:0\n  shadow_listen: 127.0.0.1:0\n  services:\n    - {{ name: payments, match: {{ host: payments.example }}, backend: provider }}\n\
         routes:\n  - name: rec\n    backend: app\n    match: {{ path_prefix: /rec }}\n    record: {{ file: {}, {record} }}\n  - name: plain\n    backend: app\n",
        provider.addr,
        file.display()
    ))
    .await;
    egress_addr
        .set(proxy.egress_addrs.expect("egress").live)
        .unwrap();
    let _ = cell.set(proxy.shared.egress.clone().expect("egress"));
    (proxy, seen, provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_request_carries_its_outbound_calls_bounded_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "calls.jsonl");
    let (proxy, seen, _provider) =
        proxy_with_egress(&file, "max_body_bytes: 64, max_calls: 3").await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for (path, id) in [
        ("/rec?calls=2", "two"),
        ("/rec?calls=5", "five"),
        ("/rec?calls=1&pad=1", "padded"),
        ("/rec?calls=0", "none"),
    ] {
        let a = send(
            &c,
            addr,
            Method::GET,
            "shop.example",
            path,
            &[("x-request-id", id)],
            "",
        )
        .await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
    let got = wait_lines(&file, 4).await;
    assert_eq!(got.len(), 4, "{got:?}");
    let by_id = |id: &str| got.iter().find(|l| l["request_id"] == id).unwrap().clone();

    let two = by_id("two");
    let calls = two["calls"].as_array().expect("calls in the record");
    assert_eq!(calls.len(), 2, "{two}");
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call["service"], "payments");
        assert_eq!(call["request"]["method"], "POST");
        let uri = call["request"]["uri"].as_str().unwrap();
        assert!(uri.starts_with("/charges?"), "{uri}");
        assert!(uri.contains(&format!("n={i}")), "in the order made: {uri}");
        assert!(!uri.contains("k3ysecret"), "query secret kept: {uri}");
        assert_eq!(call["request"]["body"], format!("{{\"n\":{i}}}"));
        assert_eq!(call["response"]["status"], 200);
        assert_eq!(
            call["response"]["body"],
            "{\"id\":\"ch_1\",\"status\":\"succeeded\"}"
        );
        assert_eq!(call["response"]["body_truncated"], false);
        assert!(call["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    assert!(two.get("calls_cut").is_none(), "{two}");
    assert_eq!(
        two["request"]["body_truncated"], false,
        "an empty body is whole"
    );

    // Bounded: `max_calls` kept, the rest counted.
    let five = by_id("five");
    assert_eq!(five["calls"].as_array().unwrap().len(), 3, "{five}");
    assert_eq!(five["calls_cut"], 2, "{five}");
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(&m, "shadowgate_record_calls_cut_total{route=\"rec\"}"),
        2.0
    );
    // A body over `max_body_bytes` is kept out, marked.
    let padded = by_id("padded");
    let call = &padded["calls"][0];
    assert_eq!(call["request"]["body"], "", "{padded}");
    assert_eq!(call["request"]["body_truncated"], true);
    assert_eq!(call["response"]["body_truncated"], false);
    assert!(by_id("none").get("calls").is_none());

    // Redacted like the rest of the record.
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in ["pr0vider", "k3ysecret", "c00kie"] {
        assert!(!text.contains(secret), "{secret} reached the file");
    }
    // The reader (replay's) reads the calls back as written.
    let read: Vec<_> = shadowgate::record::open(&file)
        .unwrap()
        .map(|e| e.expect("a readable line"))
        .collect();
    let two = read.iter().find(|e| e.request_id == "two").unwrap();
    assert_eq!(two.calls.len(), 2);
    assert_eq!(two.calls[1].service, "payments");
    assert_eq!(two.calls[1].request.method.as_deref(), Some("POST"));
    assert_eq!(&two.calls[1].request.body[..], b"{\"n\":1}");
    assert_eq!(two.calls[1].response.status, Some(200));
    assert!(two.calls[1].request.header("traceparent").is_some());

    // And the offline egress answers a replayed build's calls from them.
    let trace = two.trace_id.clone().expect("a trace id with egress on");
    let book = shadowgate::egress::offline::Book::new();
    book.insert(&trace, two.calls.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let offline_addr = l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = shadowgate::egress::offline::serve(l, book.clone(), rx);
    let tp = format!("00-{trace}-b7ad6b7169203331-01");
    let a = send(
        &c,
        offline_addr,
        Method::POST,
        "payments.example",
        "/charges",
        &[("traceparent", tp.as_str())],
        "{}",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "{\"id\":\"ch_1\",\"status\":\"succeeded\"}");
    assert_eq!(book.counts()["payments"].served, 1);
    let _ = stop.send(true);
    server.await.unwrap();

    // Every call was made while its record was gathering; none is held now.
    assert!(seen.lock().iter().all(|n| *n >= 1), "{:?}", seen.lock());
    let eg = proxy.shared.egress.clone().unwrap();
    assert!(eg.recording.is_empty());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_an_unrecorded_request_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "calls.jsonl");
    let (proxy, seen, _provider) = proxy_with_egress(&file, "percent: 0").await;
    let addr = proxy.listen_addrs[0];
    let c = client();
    for path in ["/plain?calls=3", "/rec?calls=3"] {
        let a = send(&c, addr, Method::GET, "shop.example", path, &[], "").await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        assert_eq!(a.text(), "[200, 200, 200]");
    }
    // Not recorded (no route `record`, or not sampled): no entry while its
    // calls are made, nothing held, nothing written.
    assert_eq!(*seen.lock(), vec![0; 6]);
    let m = metrics(&proxy).await;
    assert_eq!(metric(&m, "shadowgate_shadow_memory_bytes"), 0.0);
    proxy.shutdown().await;
    assert!(lines(&file).is_empty());
}

#[tokio::test]
async fn a_request_body_the_primary_did_not_read_whole_is_marked_truncated() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A primary that answers as soon as it has the head, then reads on.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let primary = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                    .await;
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "early.jsonl");
    // The client sends the head and a first chunk, reads the whole answer,
    // and only then ends its body.
    let (proxy, mut s) = raw_client_of_recording(primary, &file).await;
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: shop.example\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"early") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("the answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let lines = wait_lines(&file, 1).await;
    let _ = s.write_all(b"0\r\n\r\n").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let r = &lines[0];
    assert_eq!(r["response"]["body"], "early");
    assert_eq!(r["request"]["body_truncated"], true, "{r}");
    assert_eq!(r["request"]["body"], "", "{r}");
    proxy.shutdown().await;
}

/// Whether this process holds `path` open.
fn held_open(path: &Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == path))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_record_closes_its_file() {
    let v1 = TestBackend::new().body("ok").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir, "reloaded.jsonl");
    let yaml = |record: &str| {
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: off\nstore: memory\nwatch_interval: 0s\nbackends:\n  v1: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: r\n    backend: v1\n{record}",
            v1.addr
        )
    };
    let config_file = file_in(&dir, "shadowgate.yaml");
    std::fs::write(
        &config_file,
        yaml(&format!("    record: {{ file: {} }}\n", file.display())),
    )
    .unwrap();
    let config = shadowgate::config::load_files(std::slice::from_ref(&config_file)).unwrap();
    let proxy = shadowgate::app::start(config, Default::default())
        .await
        .unwrap();
    let addr = proxy.listen_addrs[0];
    let c = client();
    assert_eq!(get(&c, addr, "shop.example", "/a").await.status, 200);
    assert_eq!(wait_lines(&file, 1).await.len(), 1);
    let file = file.canonicalize().unwrap();
    assert!(held_open(&file), "the record file is open while recording");

    std::fs::write(&config_file, yaml("")).unwrap();
    proxy.reload_off_runtime().await.expect("reloaded");
    assert_eq!(get(&c, addr, "shop.example", "/b").await.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held_open(&file) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !held_open(&file),
        "still open after the reload removed `record`"
    );
    assert_eq!(lines(&file).len(), 1);
    proxy.shutdown().await;
}
