//! Opening connections to endpoints: TCP (hyper-util's connector: connect
//! timeout, nodelay, keep-alive), then TLS for `https://` backends, with
//! the ALPN ids the caller offers and SNI from the endpoint host or
//! `tls_server_name`. Also the connector of the pooled HTTP/1.1 client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::stream::UpstreamStream;
use crate::body::BoxError;
use crate::config::BackendConfig;

/// Opens connections to endpoints: TCP (hyper-util's connector: connect
/// timeout, nodelay, keep-alive), then TLS for `https://` backends. Also
/// the connector of the pooled HTTP/1.1 client.
#[derive(Clone)]
pub(super) struct Connector {
    http: HttpConnector,
    tls: Option<TlsSettings>,
    timeout: Duration,
}

#[derive(Clone)]
struct TlsSettings {
    connector: TlsConnector,
    /// `tls_server_name`, else the endpoint host.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    pub(super) fn new(config: &BackendConfig, alpn: &[&[u8]]) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.enforce_http(false);
        let tls = config.tls.as_ref().map(|t| {
            let mut client = (*t.client_config).clone();
            client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsSettings {
                connector: TlsConnector::from(Arc::new(client)),
                server_name: t
                    .server_name
                    .as_ref()
                    .and_then(|n| ServerName::try_from(n.clone()).ok()),
            }
        });
        Connector {
            http,
            tls,
            timeout: config.connect_timeout,
        }
    }

    pub(super) async fn connect(&self, uri: Uri) -> Result<UpstreamStream, BoxError> {
        let mut http = self.http.clone();
        let tcp = tower::Service::call(&mut http, uri.clone())
            .await?
            .into_inner();
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => {
                let host = uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_string())
                    .map_err(|e| format!("`{host}` cannot be a TLS server name: {e}"))?
            }
        };
        match tokio::time::timeout(self.timeout, tls.connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(UpstreamStream::Tls(Box::new(s))),
            Ok(Err(e)) => Err(format!("TLS handshake: {e}").into()),
            Err(_) => Err(format!("TLS handshake not done within {:?}", self.timeout).into()),
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}
