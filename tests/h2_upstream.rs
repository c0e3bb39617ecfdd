//! HTTP/2 upstreams: clients that stop reading must not starve the other
//! clients of the same backend (issue #19 item 2).
//!
//! Requests to a `protocol: h2` backend share one upstream connection. A
//! stalled client keeps its stream's data unread in the proxy; if the
//! connection's flow-control window is not larger than what all its
//! streams can hold, a few stalled clients exhaust it and every other
//! response on that connection stops after its status line.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const BIG: usize = 20 << 20;
const CHUNK: usize = 64 << 10;

#[derive(Default)]
struct Seen {
    big_requests: AtomicUsize,
    /// Bytes of big bodies handed to the HTTP/2 layer.
    emitted: AtomicU64,
}

/// A big body produced on demand, counting what it hands out.
struct Big {
    left: usize,
    chunk: Bytes,
    seen: Arc<Seen>,
}

impl http_body::Body for Big {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK);
        self.left -= n;
        self.seen.emitted.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// An HTTP/2 (prior knowledge) backend: `/big` answers 20 MiB, anything
/// else `ok`.
async fn h2_backend() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, chunk) = (state.clone(), chunk.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, chunk) = (seen.clone(), chunk.clone());
                    async move {
                        let body: BoxBody<Bytes, Infallible> = if req.uri().path() == "/big" {
                            seen.big_requests.fetch_add(1, Ordering::SeqCst);
                            Big {
                                left: BIG,
                                chunk,
                                seen,
                            }
                            .boxed()
                        } else {
                            Full::new(Bytes::from_static(b"ok")).boxed()
                        };
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Waits (bounded) until `value` stops changing for `quiet`.
async fn settled(value: impl Fn() -> u64, quiet: Duration, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut last = value();
    let mut since = Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = value();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_do_not_stall_other_clients_of_an_h2_backend() {
    let (backend, seen) = h2_backend().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{backend}\"], protocol: h2 }} }}\nroutes: [{{ name: r, backend: v1 }}]\n"
    ))
    .await;
    let addr = proxy.listen_addrs[0];

    // A normal request first: the one upstream connection is open.
    assert_eq!(get(&client(), addr, "x", "/small").await.text(), "ok");

    // Three clients ask for 20 MiB each and never read a byte.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    let start = Instant::now();
    while seen.big_requests.load(Ordering::SeqCst) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the big requests never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Until the backend can send no more: every stalled stream holds what
    // the proxy let in (its window) and the socket buffers are full.
    let emitted = settled(
        || seen.emitted.load(Ordering::SeqCst),
        Duration::from_millis(300),
        Duration::from_secs(15),
    )
    .await;
    assert!(
        emitted < 3 * BIG as u64,
        "the stalled clients were sent everything ({emitted} bytes): nothing is stalled"
    );

    // Every other client is still served, body and all, promptly.
    let c = client();
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), get(&c, addr, "x", "/small"))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "request {i} did not complete within 5 s while 3 clients stalled (backend emitted {emitted} bytes)"
                )
            });
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "ok");
        slowest = slowest.max(t.elapsed());
    }
    eprintln!(
        "h2 upstream: 3 stalled clients held {:.1} MiB; slowest of 10 other requests {:?}",
        emitted as f64 / (1 << 20) as f64,
        slowest
    );
    drop(stalled);
}
