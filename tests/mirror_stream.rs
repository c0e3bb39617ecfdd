//! A mirrored request's body streams to its copies as it arrives (issue
//! #16): the copy's head and first chunks reach the shadow while the client
//! is still sending, and a copy that cannot be completed — its shadow reads
//! too slowly, the body grows past the mirror's cap, the client's body
//! fails — is abandoned mid-body: its connection closed, never a complete
//! request, counted with its reason, its queued bytes returned.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use shadowgate::app::Running;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// What a raw shadow saw on one connection.
#[derive(Default)]
struct Conn {
    data: Mutex<Vec<u8>>,
    /// The proxy closed (or reset) the connection.
    closed: AtomicBool,
}

impl Conn {
    fn bytes(&self) -> Vec<u8> {
        self.data.lock().clone()
    }
}

/// A shadow on a plain socket: records every byte of every connection and
/// answers `200 ok` once a request is complete (`Content-Length` or the
/// last chunk); or, `stalled`, accepts with a small receive buffer and
/// never reads.
struct RawShadow {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Conn>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawShadow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the head ends and whether the request in `data` is complete.
fn complete(data: &[u8]) -> bool {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let body = &data[end + 4..];
    if let Some(n) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= n;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    true
}

impl RawShadow {
    async fn spawn(stalled: bool) -> RawShadow {
        let socket = TcpSocket::new_v4().unwrap();
        if stalled {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Conn>>>> = Arc::default();
        let kept = conns.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let conn = Arc::new(Conn::default());
                kept.lock().push(conn.clone());
                if stalled {
                    held.push(s);
                    continue;
                }
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut answered = false;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let done = {
                                    let mut d = conn.data.lock();
                                    d.extend_from_slice(&buf[..n]);
                                    complete(&d)
                                };
                                if done && !answered {
                                    answered = true;
                                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                    if s.write_all(ok).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    conn.closed.store(true, Ordering::SeqCst);
                });
            }
        });
        RawShadow { addr, conns, task }
    }

    fn conns(&self) -> Vec<Arc<Conn>> {
        self.conns.lock().clone()
    }

    /// Waits (at most `bound`) until `cond` holds for some connection.
    async fn wait_for(&self, bound: Duration, what: &str, cond: impl Fn(&Conn) -> bool) {
        let deadline = Instant::now() + bound;
        while !self.conns().iter().any(|c| cond(c)) {
            assert!(
                Instant::now() < deadline,
                "shadow: {what} not within {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The body bytes after the head in `data`.
fn after_head(data: &[u8]) -> &[u8] {
    match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &data[end + 4..],
        None => &[],
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A connection to the proxy on which the head of a `POST path` with a
/// body of `len` bytes (and `connection: close`) has been sent.
async fn post_head(proxy: &Running, path: &str, len: usize) -> TcpStream {
    let mut c = TcpStream::connect(proxy.listen_addrs[0]).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: app\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c
}

/// Reads the proxy's whole answer (the request said `connection: close`),
/// at most 20 s.
async fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("no answer within 20s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn dropped(proxy: &Running, reason: &str) -> f64 {
    let m = metrics(proxy).await;
    metric(
        &m,
        &format!(r#"shadowgate_mirror_dropped_total{{route="r",backend="m0",reason="{reason}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_reaches_the_shadow_while_the_client_is_still_sending() {
    let mut v1 = TestBackend::new().spawn().await;
    let shadow = RawShadow::spawn(false).await;
    let proxy = start_proxy(&shadow_config(
        v1.addr,
        &[(shadow.addr, ", max_body_bytes: 4MiB, timeout: 30s")],
    ))
    .await;
    let body = pattern(1 << 20);
    let mut c = post_head(&proxy, "/up", body.len()).await;
    // The first half, in 64 KiB pieces.
    let half = body.len() / 2;
    for piece in body[..half].chunks(64 * 1024) {
        c.write_all(piece).await.unwrap();
    }
    // The shadow gets the copy's head and first body bytes before the
    // client has sent the second half (a gathering tee sends nothing yet).
    shadow
        .wait_for(Duration::from_secs(10), "first body bytes", |conn| {
            !after_head(&conn.bytes()).is_empty()
        })
        .await;
    for piece in body[half..].chunks(64 * 1024) {
        c.write_all(piece).await.unwrap();
    }
    let a = answer(&mut c).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let primary = v1.next().await;
    assert!(primary.complete);
    assert_eq!(&primary.body[..], &body[..], "the primary gets every byte");
    shadow
        .wait_for(Duration::from_secs(10), "the whole copy", |conn| {
            complete(&conn.bytes())
        })
        .await;
    let conns = shadow.conns();
    let copy = conns
        .iter()
        .map(|c| c.bytes())
        .find(|d| complete(d))
        .unwrap();
    let head = String::from_utf8_lossy(&copy[..copy.len() - body.len()]).to_ascii_lowercase();
    assert!(head.starts_with("post /up http/1.1\r\n"), "{head}");
    assert!(head.contains("host: app-shadow\r\n"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "the declared length is kept: {head}"
    );
    assert_eq!(
        after_head(&copy),
        &body[..],
        "the shadow gets the exact bytes"
    );
    mirrors_settled(&proxy).await;
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_requests_total{route="r",backend="m0",role="mirror",code="200"}"#
        ),
        1.0,
        "{m}"
    );
    memory_returns_to_zero(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_growing_past_the_mirror_cap_aborts_the_copy_mid_body() {
    let mut v1 = TestBackend::new().spawn().await;
    let shadow = RawShadow::spawn(false).await;
    let proxy = start_proxy(&shadow_config(
        v1.addr,
        &[(shadow.addr, ", max_body_bytes: 128KiB, timeout: 30s")],
    ))
    .await;
    let mut c = TcpStream::connect(proxy.listen_addrs[0]).await.unwrap();
    c.write_all(
        b"POST /grow HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let piece = vec![b'g'; 32 * 1024];
    let frame = |data: &[u8]| {
        let mut f = format!("{:x}\r\n", data.len()).into_bytes();
        f.extend_from_slice(data);
        f.extend_from_slice(b"\r\n");
        f
    };
    // 64 KiB, within the cap: the copy has started (streamed, chunked).
    for _ in 0..2 {
        c.write_all(&frame(&piece)).await.unwrap();
    }
    shadow
        .wait_for(Duration::from_secs(10), "the copy's first chunk", |conn| {
            !after_head(&conn.bytes()).is_empty()
        })
        .await;
    // Then 448 KiB more: 512 KiB in all, four times the cap.
    for _ in 0..14 {
        c.write_all(&frame(&piece)).await.unwrap();
    }
    c.write_all(b"0\r\n\r\n").await.unwrap();
    let a = answer(&mut c).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let primary = v1.next().await;
    assert_eq!(primary.body.len(), 512 * 1024, "the primary gets it all");
    // The copy's connection is closed without the last chunk.
    shadow
        .wait_for(
            Duration::from_secs(10),
            "the copy's connection closed",
            |conn| conn.closed.load(Ordering::SeqCst),
        )
        .await;
    for conn in shadow.conns() {
        let data = conn.bytes();
        let head = String::from_utf8_lossy(&data[..data.len() - after_head(&data).len()])
            .to_ascii_lowercase();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(!complete(&data), "the shadow saw a complete request");
        assert!(
            after_head(&data).len() <= 128 * 1024 + 4096,
            "{} body bytes passed a 128 KiB cap",
            after_head(&data).len()
        );
    }
    mirrors_settled(&proxy).await;
    assert_eq!(dropped(&proxy, "body_too_large").await, 1.0);
    memory_returns_to_zero(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_stops_reading_costs_the_primary_nothing_and_is_counted_slow() {
    let v1 = TestBackend::new().spawn().await;
    let shadow = RawShadow::spawn(true).await;
    // A timeout far longer than the test: only the full queue ends the copy.
    let proxy = start_proxy(&shadow_config(
        v1.addr,
        &[(shadow.addr, ", max_body_bytes: 64MiB, timeout: 60s")],
    ))
    .await;
    // Four times the copy's queue bound (`QUEUE_BYTES`, 4 MiB).
    let body = Bytes::from(pattern(16 << 20));
    let started = Instant::now();
    let a = tokio::time::timeout(
        Duration::from_secs(30),
        send(
            &client(),
            proxy.listen_addrs[0],
            Method::POST,
            "app",
            "/big",
            &[],
            body.clone(),
        ),
    )
    .await
    .expect("the primary's 16 MiB POST did not complete within 30s");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(v1.received(), 1);
    let took = started.elapsed();
    // Abandoned promptly (not at the 60 s timeout), its queue freed.
    mirrors_settled(&proxy).await;
    assert_eq!(dropped(&proxy, "shadow_slow").await, 1.0, "took {took:?}");
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            r#"shadowgate_mirror_errors_total{route="r",backend="m0",kind="timeout"}"#
        ),
        0.0
    );
    memory_returns_to_zero(&proxy).await;
    assert!(!shadow.conns().is_empty(), "the copy never started");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_mid_body_aborts_the_copy() {
    let v1 = TestBackend::new().spawn().await;
    let shadow = RawShadow::spawn(false).await;
    let proxy = start_proxy(&shadow_config(
        v1.addr,
        &[(shadow.addr, ", max_body_bytes: 4MiB, timeout: 30s")],
    ))
    .await;
    let body = pattern(1 << 20);
    let c = TcpSocket::new_v4()
        .unwrap()
        .connect(proxy.listen_addrs[0])
        .await
        .unwrap();
    let mut c = c;
    c.write_all(
        format!(
            "POST /reset HTTP/1.1\r\nhost: app\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    c.write_all(&body[..256 * 1024]).await.unwrap();
    shadow
        .wait_for(Duration::from_secs(10), "first body bytes", |conn| {
            !after_head(&conn.bytes()).is_empty()
        })
        .await;
    // Reset, not a clean close: linger 0.
    c.set_zero_linger().unwrap();
    drop(c);
    shadow
        .wait_for(
            Duration::from_secs(10),
            "the copy's connection closed",
            |conn| conn.closed.load(Ordering::SeqCst),
        )
        .await;
    for conn in shadow.conns() {
        let data = conn.bytes();
        assert!(!complete(&data), "the shadow saw a complete request");
        assert!(after_head(&data).len() < body.len());
    }
    mirrors_settled(&proxy).await;
    assert_eq!(dropped(&proxy, "body_incomplete").await, 1.0);
    memory_returns_to_zero(&proxy).await;
    assert_eq!(
        v1.completed(),
        0,
        "the primary saw no complete request either"
    );
    proxy.shutdown().await;
}

/// The same over HTTP/2 (hyper's client, the copy's queue as a streamed
/// body): the shadow gets the exact bytes with their declared length; a
/// body growing past the cap resets the copy's stream, never completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_shadow_gets_the_streamed_copy_or_a_reset_stream() {
    let mut v1 = TestBackend::new().spawn().await;
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{}\"] }}, m0: {{ endpoints: [\"{}\"], protocol: h2 }} }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: m0, max_body_bytes: 256KiB, timeout: 30s }}] }}]\n",
        v1.addr, v2.addr
    ))
    .await;
    let addr = proxy.listen_addrs[0];
    let body = Bytes::from(pattern(200 * 1024));
    let a = send(
        &client(),
        addr,
        Method::POST,
        "app",
        "/h2",
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(v1.next().await.body, body);
    let copy = v2.next().await;
    assert!(copy.complete);
    assert_eq!(copy.body, body, "the h2 shadow gets the exact bytes");
    assert_eq!(copy.header("content-length"), Some("204800"));

    // Chunked, 512 KiB: past the 256 KiB cap.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"POST /h2 HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let piece = vec![b'g'; 32 * 1024];
    for _ in 0..16 {
        let mut f = format!("{:x}\r\n", piece.len()).into_bytes();
        f.extend_from_slice(&piece);
        f.extend_from_slice(b"\r\n");
        c.write_all(&f).await.unwrap();
    }
    c.write_all(b"0\r\n\r\n").await.unwrap();
    let a = answer(&mut c).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert_eq!(v1.next().await.body.len(), 512 * 1024);
    mirrors_settled(&proxy).await;
    assert_eq!(dropped(&proxy, "body_too_large").await, 1.0);
    assert_eq!(v2.completed(), 1, "the cut copy never completed");
    memory_returns_to_zero(&proxy).await;
    proxy.shutdown().await;
}

/// An HTTP/2 shadow that never reads: hyper's client stops asking for the
/// body (flow control), the queue fills, the copy is abandoned at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2_shadow_is_counted_slow() {
    let v1 = TestBackend::new().spawn().await;
    let shadow = RawShadow::spawn(true).await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{}\"] }}, m0: {{ endpoints: [\"{}\"], protocol: h2 }} }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: m0, max_body_bytes: 64MiB, timeout: 60s }}] }}]\n",
        v1.addr, shadow.addr
    ))
    .await;
    // Four times the copy's queue bound (`QUEUE_BYTES`, 4 MiB).
    let body = Bytes::from(pattern(16 << 20));
    let a = tokio::time::timeout(
        Duration::from_secs(30),
        send(
            &client(),
            proxy.listen_addrs[0],
            Method::POST,
            "app",
            "/big",
            &[],
            body,
        ),
    )
    .await
    .expect("the primary's POST did not complete within 30s");
    assert_eq!(a.status, 200);
    mirrors_settled(&proxy).await;
    assert_eq!(dropped(&proxy, "shadow_slow").await, 1.0);
    memory_returns_to_zero(&proxy).await;
    proxy.shutdown().await;
}

/// A copy never holds more than a full queue, so a declared body larger
/// than the whole shadow memory budget is mirrored when the shadow keeps
/// up (admission used to refuse it, `memory`). The client sends 1 MiB at
/// a time, each once the shadow has every byte before it: a shadow that
/// keeps up whatever the machine's load (with the whole body sent at once,
/// a loaded machine let v1 run 4 MiB ahead of the shadow now and then, and
/// the copy was rightly cut as `shadow_slow`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_memory_budget_streams_to_a_shadow_that_keeps_up() {
    let v1 = TestBackend::new().spawn().await;
    let shadow = RawShadow::spawn(false).await;
    let proxy = start_proxy(&format!(
        "limits: {{ shadow_memory: 8MiB }}\n{}",
        shadow_config(
            v1.addr,
            &[(shadow.addr, ", max_body_bytes: 16MiB, timeout: 30s")]
        )
    ))
    .await;
    let body = pattern(12 << 20);
    let mut c = post_head(&proxy, "/", body.len()).await;
    let mut sent = 0;
    for piece in body.chunks(1 << 20) {
        c.write_all(piece).await.unwrap();
        sent += piece.len();
        shadow
            .wait_for(Duration::from_secs(20), "the copy keeping up", |conn| {
                after_head(&conn.data.lock()).len() >= sent
            })
            .await;
    }
    let a = answer(&mut c).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    shadow
        .wait_for(Duration::from_secs(10), "the whole copy", |conn| {
            complete(&conn.bytes())
        })
        .await;
    let copy = shadow
        .conns()
        .iter()
        .map(|c| c.bytes())
        .find(|d| complete(d))
        .unwrap();
    assert!(
        after_head(&copy) == &body[..],
        "the shadow gets the exact 12 MiB"
    );
    mirrors_settled(&proxy).await;
    assert_eq!(dropped(&proxy, "memory").await, 0.0);
    assert_eq!(dropped(&proxy, "shadow_slow").await, 0.0);
    memory_returns_to_zero(&proxy).await;
    proxy.shutdown().await;
}
