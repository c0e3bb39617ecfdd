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
    let yaml = format!(
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
    let config = config::from_yaml("<demo>", &yaml).map_err(|e| e.to_string())?;
    let running = app::start(config, StartOptions { log_format }).await?;
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
    Ok(running)
}
