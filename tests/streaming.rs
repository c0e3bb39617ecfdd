//! Bodies stream both ways: the client sees the primary's first chunk before
//! the primary sends its last, and the primary sees the client's first chunk
//! before the client sends its last — also while a mirror takes a copy.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Mutex};

type Chunk = Result<Frame<Bytes>, Infallible>;

#[tokio::test]
async fn response_streams_to_the_client_chunk_by_chunk() {
    // The primary sends "first", then waits for the test's go before "last".
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let go_rx = std::sync::Arc::new(Mutex::new(Some(go_rx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let v1 = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = service_fn(move |_req: Request<Incoming>| {
            let go_rx = go_rx.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Chunk>(4);
                tokio::spawn(async move {
                    tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
                        .await
                        .unwrap();
                    let go = go_rx.lock().await.take().unwrap();
                    go.await.unwrap();
                    tx.send(Ok(Frame::data(Bytes::from_static(b"last"))))
                        .await
                        .unwrap();
                });
                let body = StreamBody::new(tokio_stream_from(rx));
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{v1}\"] }}, v2: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: v2 }}] }}]\n",
        v2.addr
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.listen_addrs[0])
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk must arrive before the primary sends the last")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
    go_tx.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"last"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_body_streams_to_the_primary_while_mirrored() {
    // The primary reports each chunk it reads as it reads it.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Bytes>();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let v1 = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = service_fn(move |req: Request<Incoming>| {
            let seen_tx = seen_tx.clone();
            async move {
                let mut body = req.into_body();
                while let Some(Ok(f)) = body.frame().await {
                    if let Ok(d) = f.into_data() {
                        let _ = seen_tx.send(d);
                    }
                }
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"done"),
                )))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let mut v2 = TestBackend::new().spawn().await;
    let proxy = start_proxy(&format!(
        "backends: {{ v1: {{ endpoints: [\"{v1}\"] }}, v2: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: r, backend: v1, mirrors: [{{ backend: v2 }}] }}]\n",
        v2.addr
    ))
    .await;
    let (tx, rx) = mpsc::channel::<Chunk>(4);
    let stream = tokio::net::TcpStream::connect(proxy.listen_addrs[0])
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", "x")
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await.unwrap().status() });
    tx.send(Ok(Frame::data(Bytes::from_static(b"part-1 "))))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
        .await
        .expect("the primary must see the first chunk before the client sends the rest")
        .unwrap();
    assert_eq!(first, Bytes::from_static(b"part-1 "));
    tx.send(Ok(Frame::data(Bytes::from_static(b"part-2"))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(pending.await.unwrap(), 200);
    let copy = v2.next().await;
    assert_eq!(
        copy.body,
        Bytes::from_static(b"part-1 part-2"),
        "the mirror gets the whole body"
    );
    proxy.shutdown().await;
}

/// Adapts an mpsc receiver into a stream.
fn tokio_stream_from(rx: mpsc::Receiver<Chunk>) -> impl futures_util::Stream<Item = Chunk> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}
