//! The offline egress (issue #17, `replay --egress-listen`): a target
//! build's outbound calls answered from a recording over real sockets,
//! matched by correlation id, (service,) method, path and ordinal; no
//! match → 503 `no_recorded_call`; HTTP/1.1 absolute- and origin-form, h2c.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use shadowgate::egress::offline::{self, Book, Counts};
use shadowgate::record::read::{parse_line, Call};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const T1: &str = "0af7651916cd43dd8448eb211c80319c";
const T2: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-b7ad6b7169203331-01")
}

/// The calls of one recorded line, read as replay reads them.
fn calls(calls_json: &str) -> Vec<Call> {
    let line = format!(
        r#"{{"v":1,"route":"shop","request_id":"r","request":{{"method":"POST","uri":"/checkout","headers":[]}},"response":{{"status":200,"headers":[]}},"calls":{calls_json}}}"#
    );
    parse_line(line.as_bytes(), 1).expect("a valid line").calls
}

fn call(service: &str, method: &str, uri: &str, status: u16, body: &str) -> String {
    serde_json::json!({
        "service": service,
        "request": { "method": method, "uri": uri, "headers": [["host", "payments.example"]], "body": "{}" },
        "response": { "status": status, "headers": [["content-type", "application/json"], ["content-length", "999"], ["transfer-encoding", "chunked"]], "body": body },
        "duration_ms": 1.5,
    })
    .to_string()
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(book: Arc<Book>) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = offline::serve(l, book, rx);
    Server { addr, stop, task }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stopped in time")
            .unwrap();
    }
}

/// One HTTP/1.1 exchange in absolute form (what an `HTTP_PROXY` client
/// sends): status and body.
async fn absolute(addr: SocketAddr, method: &str, url: &str, tp: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {url} HTTP/1.1\r\nhost: {}\r\ntraceparent: {tp}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}",
        url.trim_start_matches("http://").split('/').next().unwrap()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

async fn origin(
    c: &TestClient,
    addr: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    trace: Option<&str>,
) -> Answer {
    let tp = trace.map(traceparent);
    let headers: Vec<(&str, &str)> = tp
        .as_deref()
        .map(|t| vec![("traceparent", t)])
        .unwrap_or_default();
    send(c, addr, method, host, path, &headers, "{\"amount\":1}").await
}

#[tokio::test]
async fn recorded_answers_by_id_method_path_and_ordinal() {
    let book = Book::new();
    book.insert(
        T1,
        calls(&format!(
            "[{},{},{}]",
            call(
                "payments",
                "POST",
                "/charges?api_key=<redacted>",
                200,
                r#"{"id":"ch_1"}"#
            ),
            call("payments", "GET", "/status", 200, r#"{"up":true}"#),
            call("payments", "POST", "/charges", 201, r#"{"id":"ch_2"}"#),
        )),
    );
    book.insert(
        T2,
        calls(&format!(
            "[{}]",
            call("payments", "POST", "/charges", 200, r#"{"id":"ch_9"}"#)
        )),
    );
    let server = start(book.clone()).await;
    let addr = server.addr;
    let c = client();

    // The first POST /charges of T1, absolute-form.
    let (status, body) = absolute(
        addr,
        "POST",
        "http://payments.example/charges",
        &traceparent(T1),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"id":"ch_1"}"#));
    // Another request's calls are its own.
    let a = origin(
        &c,
        addr,
        Method::POST,
        "payments.example",
        "/charges",
        Some(T2),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.text().as_str()),
        (200, r#"{"id":"ch_9"}"#)
    );
    // The second POST /charges of T1 (origin-form, another query): the second answer.
    let a = origin(
        &c,
        addr,
        Method::POST,
        "payments.example",
        "/charges?retry=1",
        Some(T1),
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.text(), r#"{"id":"ch_2"}"#);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.headers["content-length"], "13", "the length the body has");
    // GET /status is its own signature.
    let a = origin(
        &c,
        addr,
        Method::GET,
        "payments.example",
        "/status",
        Some(T1),
    )
    .await;
    assert_eq!(a.text(), r#"{"up":true}"#);
    // A third POST /charges was never recorded: the fallback.
    let a = origin(
        &c,
        addr,
        Method::POST,
        "payments.example",
        "/charges",
        Some(T1),
    )
    .await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "no_recorded_call");
    // No id, an unknown id, a removed id: the fallback too.
    let a = origin(&c, addr, Method::POST, "payments.example", "/charges", None).await;
    assert_eq!(a.status, 503);
    book.remove(T2);
    let a = origin(
        &c,
        addr,
        Method::POST,
        "payments.example",
        "/charges",
        Some(T2),
    )
    .await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "no_recorded_call");

    let counts = book.counts();
    assert_eq!(
        counts["payments"],
        Counts {
            served: 4,
            unmatched: 0
        },
        "{counts:?}"
    );
    assert_eq!(counts["payments.example"].unmatched, 3, "{counts:?}");
    server.stop().await;
}

#[tokio::test]
async fn h2c_calls_are_answered_and_a_partial_answer_is_not_replayed() {
    let book = Book::new();
    let mut recorded = calls(&format!(
        "[{},{}]",
        call("payments", "POST", "/charges", 200, r#"{"id":"ch_1"}"#),
        call("payments", "POST", "/refunds", 200, ""),
    ));
    // An answer recorded without its body (over `max_body_bytes`).
    recorded[1].response.body_truncated = true;
    book.insert(T1, recorded);
    let server = start(book.clone()).await;
    let c = h2_client();
    let a = origin(
        &c,
        server.addr,
        Method::POST,
        "payments.example",
        "/charges",
        Some(T1),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), r#"{"id":"ch_1"}"#);
    let a = origin(
        &c,
        server.addr,
        Method::POST,
        "payments.example",
        "/refunds",
        Some(T1),
    )
    .await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "recorded_answer_too_large");
    // CONNECT cannot be answered from a recording.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"CONNECT payments.example:443 HTTP/1.1\r\nhost: payments.example:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 403");
    assert_eq!(
        book.counts()["payments"],
        Counts {
            served: 1,
            unmatched: 1
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn with_the_egress_config_the_host_tells_the_service() {
    let config = shadowgate::config::from_yaml(
        "t.yaml",
        "store: memory\nbackends:\n  p: { endpoints: [\"127.0.0.1:9\"] }\n  s: { endpoints: [\"127.0.0.1:9\"] }\nroutes:\n  - { name: r, backend: p }\n\
         egress:\n  listen: 127.0.0.1:0\n  shadow_listen: 127.0.0.1:0\n  services:\n    - { name: payments, match: { host: payments.example }, backend: p }\n    - { name: stock, match: { host: stock.example }, backend: s }\n",
    )
    .expect("valid");
    let book = Book::with_services(config.egress.as_ref().unwrap());
    book.insert(
        T1,
        calls(&format!(
            "[{},{}]",
            call(
                "payments",
                "POST",
                "/reserve",
                200,
                r#"{"from":"payments"}"#
            ),
            call("stock", "POST", "/reserve", 200, r#"{"from":"stock"}"#),
        )),
    );
    let server = start(book.clone()).await;
    let c = client();
    // Same method and path, told apart by the host's service.
    let a = origin(
        &c,
        server.addr,
        Method::POST,
        "stock.example",
        "/reserve",
        Some(T1),
    )
    .await;
    assert_eq!(a.text(), r#"{"from":"stock"}"#);
    let (_, body) = absolute(
        server.addr,
        "POST",
        "http://payments.example/reserve",
        &traceparent(T1),
    )
    .await;
    assert_eq!(body, r#"{"from":"payments"}"#);
    // Each service's only call is used up; an unlisted host matches nothing.
    let a = origin(
        &c,
        server.addr,
        Method::POST,
        "stock.example",
        "/reserve",
        Some(T1),
    )
    .await;
    assert_eq!(a.status, 503);
    let a = origin(
        &c,
        server.addr,
        Method::POST,
        "other.example",
        "/reserve",
        Some(T1),
    )
    .await;
    assert_eq!(a.status, 503);
    let counts = book.counts();
    assert_eq!(
        counts["stock"],
        Counts {
            served: 1,
            unmatched: 1
        }
    );
    assert_eq!(
        counts["payments"],
        Counts {
            served: 1,
            unmatched: 0
        }
    );
    assert_eq!(
        counts["unlisted"],
        Counts {
            served: 0,
            unmatched: 1
        }
    );
    server.stop().await;
}
