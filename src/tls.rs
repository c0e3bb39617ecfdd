//! TLS material on both sides, with rustls and the `ring` provider, TLS 1.2
//! and 1.3 only: reading certificate and key files into rustls types and
//! building the rustls configurations. A foundation below `config` (which
//! reads and checks the files at load) and `proxy` (which uses the built
//! configurations); it holds no connections.
//!
//! * Listeners: certificates are read and parsed when the configuration is
//!   loaded (a bad file is a configuration error naming it), chosen by SNI
//!   (exact name, then `*.` wildcard, then the first certificate), ALPN
//!   `h2` and `http/1.1`. The handshake runs in the connection's own task
//!   (`proxy::server`), bounded by `limits.header_read_timeout`.
//! * Upstreams: `https://` endpoints are verified against the system roots
//!   or a `ca_file`, optionally presenting a client certificate (mTLS); SNI
//!   is the endpoint host unless `tls_server_name` says otherwise. The
//!   stream type of those connections is `upstream::stream::UpstreamStream`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// ALPN protocol ids (defined with the other protocol constants).
pub use crate::protocol::{ALPN_H2, ALPN_HTTP11};

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (BEGIN CERTIFICATE) found",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) found",
            path.display()
        ),
        e => format!("{}: not valid PEM: {e}", path.display()),
    })
}

/// Which of a certificate / key pair a problem is with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairPart {
    Cert,
    Key,
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, (PairPart, String)> {
    let chain = read_certificates(cert).map_err(|r| (PairPart::Cert, r))?;
    let der = read_private_key(key).map_err(|r| (PairPart::Key, r))?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => (
            PairPart::Key,
            format!(
                "the key in {} does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
        ),
        rustls::Error::InvalidCertificate(e) => (
            PairPart::Cert,
            format!("{}: invalid certificate: {e}", cert.display()),
        ),
        e => (
            PairPart::Key,
            format!("{}: unusable private key: {e}", key.display()),
        ),
    })
}

/// A listener certificate and the server names it answers for
/// (lower case; `*.example.com` wildcards allowed; empty: default only).
#[derive(Debug, Clone)]
pub struct SniCertificate {
    pub server_names: Vec<String>,
    pub key: Arc<CertifiedKey>,
}

/// Picks a listener certificate by SNI: exact name, then a one-label
/// wildcard, then the first certificate.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// The server configuration of a TLS listener. The first certificate is
/// the default.
pub fn server_config(certs: &[SniCertificate]) -> Result<Arc<ServerConfig>, String> {
    let default = certs
        .first()
        .ok_or_else(|| "needs at least one certificate".to_string())?
        .key
        .clone();
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default,
    };
    for c in certs {
        for name in &c.server_names {
            match name.strip_prefix("*.") {
                Some(parent) => resolver.wildcard.insert(parent.to_string(), c.key.clone()),
                None => resolver.exact.insert(name.clone(), c.key.clone()),
            };
        }
    }
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Whether `name` can be a listener `server_names` entry.
pub fn valid_server_name(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && !bare.contains('*')
        && ServerName::try_from(bare).is_ok_and(|n| matches!(n, ServerName::DnsName(_)))
}

/// The system's trusted roots, loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "while loading the system's trusted certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no trusted certificates found on this system; https:// backends need a ca_file"
                );
            }
            tracing::debug!(added, ignored, "system trusted certificates loaded");
            Arc::new(roots)
        })
        .clone()
}

/// How to trust upstream servers and whether to present a client certificate.
pub struct ClientTlsParams<'a> {
    /// Trusted CA certificates; `None`: the system's roots.
    pub ca: Option<&'a [CertificateDer<'static>]>,
    /// A client certificate chain and key (mTLS).
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Accept any server certificate (tests only).
    pub insecure_skip_verify: bool,
}

/// The client configuration for a backend's `https://` endpoints, without
/// ALPN (set per connection kind by the caller). Errors name the part at
/// fault: `ca_file`, `client_cert` or `endpoints` (anything else).
pub fn client_config(
    params: ClientTlsParams<'_>,
) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| ("endpoints", e.to_string()))?;
    let builder = if params.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let roots = match params.ca {
            Some(certs) => {
                let mut roots = RootCertStore::empty();
                for c in certs {
                    roots
                        .add(c.clone())
                        .map_err(|e| ("ca_file", format!("not a usable CA certificate: {e}")))?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let config = match params.identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            (
                "client_cert",
                format!("client certificate and key unusable: {e}"),
            )
        })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts every server certificate but still checks handshake signatures.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(valid_server_name("example.com"));
        assert!(valid_server_name("*.example.com"));
        assert!(!valid_server_name("*"));
        assert!(!valid_server_name("a.*.example.com"));
        assert!(!valid_server_name("127.0.0.1"));
        assert!(!valid_server_name("bad name"));
    }
}
