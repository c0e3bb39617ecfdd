//! The shop of the egress demo (issue #13), also the test apps of
//! `tests/egress.rs`: a payment provider that counts the charges it
//! receives, and a checkout app in two versions that charges each order
//! through the egress proxy. v2 has a pricing bug (it forgets the
//! quantity of each line) and, every hundredth order, makes a fraud check
//! that v1 never makes. Both propagate `x-request-id` and `traceparent`
//! from the inbound request to their outbound call, as Istio asks of apps.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The host the checkout apps call for payments.
pub const PAYMENTS_HOST: &str = "payments.example";

/// What the provider has received.
#[derive(Debug, Default)]
pub struct ProviderBook {
    /// Charges received (`POST /charges`).
    pub charges: AtomicU64,
    /// Every other call received.
    pub other: AtomicU64,
}

/// Serves the provider on `listener`: `POST /charges` answers a new charge
/// id with the amount it was asked for.
pub async fn provider(listener: TcpListener, book: Arc<ProviderBook>) {
    serve(listener, move |req| {
        let book = book.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            if path == "/charges" {
                let n = book.charges.fetch_add(1, Ordering::Relaxed) + 1;
                let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let answer = json!({
                    "id": format!("ch_{n:06}"),
                    "amount": asked.get("amount").cloned().unwrap_or(Value::Null),
                    "status": "succeeded",
                });
                json_response(StatusCode::OK, &answer)
            } else {
                book.other.fetch_add(1, Ordering::Relaxed);
                json_response(StatusCode::OK, &json!({ "ok": true }))
            }
        }
    })
    .await;
}

/// The charge ids a checkout version got back, by order.
pub type Charges = Arc<parking_lot::Mutex<HashMap<String, String>>>;

/// Serves checkout `version` (`v1` or `v2`) on `listener`; outbound calls
/// go to the egress listener `egress` (origin-form, `Host:
/// payments.example`). `POST /checkout` takes `{"order": "...", "items":
/// [{"sku": "...", "price": cents, "qty": n}]}`.
pub async fn checkout(
    listener: TcpListener,
    version: &'static str,
    egress: SocketAddr,
    charges: Charges,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    serve(listener, move |req| {
        let (client, charges) = (client.clone(), charges.clone());
        async move {
            let mut propagate = Vec::new();
            for name in ["x-request-id", "traceparent"] {
                if let Some(v) = req.headers().get(name) {
                    propagate.push((name, v.clone()));
                }
            }
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let order: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let id = order
                .get("order")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let amount: u64 = order
                .get("items")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .map(|i| {
                            let price = i.get("price").and_then(Value::as_u64).unwrap_or(0);
                            let qty = i.get("qty").and_then(Value::as_u64).unwrap_or(1);
                            // v2's pricing bug: the quantity is forgotten.
                            if version == "v2" {
                                price
                            } else {
                                price * qty
                            }
                        })
                        .sum()
                })
                .unwrap_or(0);
            let call = |path: &str, body: Value| {
                let mut b = Request::post(format!("http://{egress}{path}"))
                    .header("host", PAYMENTS_HOST)
                    .header("content-type", "application/json");
                for (k, v) in &propagate {
                    b = b.header(*k, v.clone());
                }
                let req = b.body(Full::new(Bytes::from(body.to_string())));
                let client = client.clone();
                async move {
                    let resp = client.request(req.ok()?).await.ok()?;
                    let ok = resp.status().is_success();
                    let body = resp.into_body().collect().await.ok()?.to_bytes();
                    ok.then(|| serde_json::from_slice::<Value>(&body).ok())
                        .flatten()
                }
            };
            let number: u64 = id
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(1);
            if version == "v2" && number.is_multiple_of(100) {
                // Only v2 does this: a side effect v1 never had.
                let _ = call("/fraud-checks", json!({ "order": id })).await;
            }
            let charge = call(
                "/charges",
                json!({ "order": id, "amount": amount, "currency": "EUR" }),
            )
            .await;
            let Some(charge_id) = charge
                .as_ref()
                .and_then(|c| c.get("id"))
                .and_then(Value::as_str)
            else {
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    &json!({ "error": "payment_failed" }),
                );
            };
            charges.lock().insert(id.clone(), charge_id.to_string());
            json_response(
                StatusCode::OK,
                &json!({ "order": id, "charge": charge_id, "amount": amount }),
            )
        }
    })
    .await;
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The shop of `shadowgate demo`: the provider is serving, the two
/// checkout versions are bound and start once the egress listens.
pub struct Shop {
    pub book: Arc<ProviderBook>,
    pub provider: SocketAddr,
    v1: TcpListener,
    v2: TcpListener,
}

impl Shop {
    /// Binds the three apps on loopback ports chosen by the system.
    pub async fn bind() -> std::io::Result<Shop> {
        let provider_listener = TcpListener::bind("127.0.0.1:0").await?;
        let provider_addr = provider_listener.local_addr()?;
        let book = Arc::new(ProviderBook::default());
        tokio::spawn(provider(provider_listener, book.clone()));
        Ok(Shop {
            book,
            provider: provider_addr,
            v1: TcpListener::bind("127.0.0.1:0").await?,
            v2: TcpListener::bind("127.0.0.1:0").await?,
        })
    }

    /// The configuration of the shop: its route (v1 answers, v2 gets
    /// every request, compared) and the egress in front of the provider.
    pub fn yaml(&self) -> std::io::Result<String> {
        let (v1, v2) = (self.v1.local_addr()?, self.v2.local_addr()?);
        Ok(format!(
            r#"  shop-v1: {{ endpoints: ["{v1}"] }}
  shop-v2: {{ endpoints: ["{v2}"] }}
  provider: {{ endpoints: ["{provider}"] }}
routes:
  - name: shop
    match: {{ host: shop.local }}
    backend: shop-v1
    mirrors: [{{ backend: shop-v2, percent: 100, compare: true }}]
egress:
  listen: 127.0.0.1:0
  shadow_listen: 127.0.0.1:0
  services:
    - {{ name: payments, match: {{ host: {PAYMENTS_HOST} }}, backend: provider, shadow: replay, wait: 1s, compare: true }}
"#,
            provider = self.provider,
        ))
    }

    /// Starts v1 (outbound calls to the live side `live`) and v2 (to the
    /// shadow side `shadow`).
    pub fn start(self, live: SocketAddr, shadow: SocketAddr) -> Arc<ProviderBook> {
        tokio::spawn(checkout(self.v1, "v1", live, Charges::default()));
        tokio::spawn(checkout(self.v2, "v2", shadow, Charges::default()));
        self.book
    }
}

/// Sends `n` checkouts (order `o-1`…) to the proxy at `proxy` as
/// `Host: shop.local`; returns how many were answered 200.
pub async fn place_orders(proxy: SocketAddr, n: u64) -> u64 {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut ok = 0;
    for i in 1..=n {
        let body = json!({
            "order": format!("o-{i}"),
            "items": [{ "sku": "tea", "price": 450, "qty": 1 + i % 3 }, { "sku": "cup", "price": 1200, "qty": 1 }],
        });
        let req = Request::post(format!("http://{proxy}/checkout"))
            .header("host", "shop.local")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let Ok(req) = req else { continue };
        let sent =
            tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req)).await;
        if let Ok(Ok(resp)) = sent {
            ok += u64::from(resp.status().is_success());
            let _ = resp.into_body().collect().await;
        }
    }
    ok
}
