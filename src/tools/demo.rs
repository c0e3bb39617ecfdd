//! `shadowgate demo`: the seeds' walkthrough on one machine. Two sample
//! apps play my-app v1 and v2 (each answers `Host: <host>, Version: …` and
//! logs every request as a JSON line), and the proxy routes `my-app.local`
//! to v1 while mirroring every request to v2.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;

use shadowgate::app::{self, Running, StartOptions};
use shadowgate::config;
use shadowgate::telemetry::access::rfc3339_now;
use shadowgate::telemetry::LogFormat;

/// Options of `shadowgate demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Proxy listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin server.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Address of the sample app playing v1.
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub v1: SocketAddr,
    /// Address of the sample app playing v2.
    #[arg(long, default_value = "127.0.0.1:18082")]
    pub v2: SocketAddr,
}

/// A sample app: answers `Host: <host>, Version: <version>` and logs each
/// request it receives as a JSON line on stdout.
pub async fn sample_app(listener: TcpListener, version: &'static str) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(answer(req, version).await)
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, version: &str) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_string();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let _ = req.into_body().collect().await;
    let body = format!("Host: {host}, Version: {version}\n");
    let line = serde_json::json!({
        "time": rfc3339_now(),
        "app": "my-app",
        "version": version,
        "host": host,
        "method": method,
        "path": path,
        "status": 200,
        "size": body.len(),
        "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
    });
    println!("{line}");
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// Starts the sample apps and the proxy; returns once all are serving.
pub async fn start(
    args: &DemoArgs,
    log_format: LogFormat,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let v1 = TcpListener::bind(args.v1).await?;
    let v2 = TcpListener::bind(args.v2).await?;
    let (v1_addr, v2_addr) = (v1.local_addr()?, v2.local_addr()?);
    tokio::spawn(sample_app(v1, "v1.0.0"));
    tokio::spawn(sample_app(v2, "v2.0.0"));
    let shop = super::demo_shop::Shop::bind().await?;
    let mut yaml = format!(
        r#"
listen: "{listen}"
admin: "{admin}"
store: memory
backends:
  v1: {{ endpoints: ["{v1_addr}"] }}
  v2: {{ endpoints: ["{v2_addr}"] }}
routes:
  - name: my-app
    match: {{ host: my-app.local, path_prefix: / }}
    backend: v1
    mirrors:
      - backend: v2
        percent: 100
"#,
        listen = args.listen,
        admin = args.admin,
    );
    // The shop of the egress story (issue #13): its backends, its route
    // and the egress in front of the payment provider.
    let shop_yaml = shop.yaml()?;
    let (backends, rest) = shop_yaml
        .split_once("routes:\n")
        .unwrap_or((&shop_yaml, ""));
    yaml = yaml.replace("routes:\n", &format!("{backends}routes:\n"));
    let (shop_routes, shop_egress) = rest.split_once("egress:\n").unwrap_or((rest, ""));
    yaml.push_str(shop_routes);
    yaml.push_str("egress:\n");
    yaml.push_str(shop_egress);
    let config = config::from_yaml("<demo>", &yaml).map_err(|e| e.to_string())?;
    let running = app::start(config, StartOptions { log_format }).await?;
    let egress = running
        .egress_addrs
        .ok_or("the demo's egress did not start")?;
    let book = shop.start(egress.live, egress.shadow);
    let proxy = running.listen_addrs[0];
    println!(
        "\nshadowgate demo is running.\n\
         \x20 proxy   http://{proxy}  (my-app.local → v1 at {v1_addr}, mirrored 100% to v2 at {v2_addr})\n\
         \x20 admin   http://{admin}/healthz  http://{admin}/metrics\n\n\
         Try:\n\
         \x20 curl -H 'Host: my-app.local' http://{proxy}/\n\
         \x20 for i in $(seq 10); do curl -s -H 'Host: my-app.local' http://{proxy}/; done\n\
         \x20 curl -s http://{admin}/metrics | grep shadowgate_requests_total\n\n\
         The client always gets v1's answer; the JSON lines with \"version\":\"v2.0.0\" show v2\n\
         receiving each request with Host my-app.local-shadow. Ctrl-C stops the demo.\n",
        admin = running.admin_addr,
    );
    // The shop's story: 20 orders, 100% mirrored to v2, whose payment
    // calls are answered from v1's (nothing leaves twice).
    const ORDERS: u64 = 20;
    let answered = super::demo_shop::place_orders(proxy, ORDERS).await;
    // v2's copies finish on their own; wait (bounded) for their calls.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while running
        .shared
        .comparison
        .tally
        .lock()
        .route_totals("shop")
        .iter()
        .map(|t| t.compared)
        .sum::<u64>()
        < ORDERS
        && Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let charges = book.charges.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "Side effects (docs/egress.md): checkout v1 and v2 (v2 has a pricing bug) at shop.local,\n\
         call a payment provider through the egress (live side {live}, shadow side {shadow}).\n\
         \x20 {answered} orders placed, 100% mirrored: the provider received {charges} charges, one per order;\n\
         \x20 v2's charges were answered with v1's kept answers (same charge ids), nothing left twice.\n\
         \x20 What v2 charged differs: curl -s http://{admin}/api/v1/diffs/shop\n\
         \x20 (endpoint \"egress payments POST /charges\", field $.amount), or\n\
         \x20 shadowgate diffs --route shop --admin http://{admin}\n",
        live = egress.live,
        shadow = egress.shadow,
        admin = running.admin_addr,
    );
    Ok(running)
}
