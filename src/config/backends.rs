//! The `backends:` section: endpoints (`host:port`, `http://`, `https://`),
//! timeouts and protocol of each backend, and the TLS towards `https://`
//! endpoints (CA, client certificate and key files read and checked at
//! load).

use std::time::Duration;

use super::check::Check;
use super::model::{BackendConfig, Endpoint, Scheme, UpstreamProtocol, UpstreamTls};
use super::raw::RawBackend;
use crate::tls;

/// Parses `host:port`, `http://host:port` or `https://host:port`.
pub fn endpoint(text: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((other, _)) => {
            return Err(format!(
                "scheme `{other}` is not supported (use http or https)"
            ))
        }
        None => (Scheme::Http, text),
    };
    let rest = rest.trim_end_matches('/');
    let uri: http::uri::Authority = rest
        .parse()
        .map_err(|_| format!("`{text}` is not host:port"))?;
    if uri.port_u16().is_none() {
        return Err(format!("`{text}` has no port; write it as host:port"));
    }
    if rest.contains('@') {
        return Err(format!("`{text}` must not carry user information"));
    }
    Ok(Endpoint {
        scheme,
        authority: uri.as_str().to_string(),
    })
}

pub(super) fn backend(
    c: &mut Check,
    path: &str,
    name: &str,
    raw: &RawBackend,
) -> Option<BackendConfig> {
    if raw.endpoints.is_empty() {
        c.fail(format!("{path}.endpoints"), "needs at least one endpoint");
    }
    let endpoints: Vec<Endpoint> = raw
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            endpoint(e)
                .map_err(|reason| c.fail(format!("{path}.endpoints[{i}]"), reason))
                .ok()
        })
        .collect();
    let b = BackendConfig {
        name: name.to_string(),
        endpoints,
        connect_timeout: c.duration(
            &format!("{path}.connect_timeout"),
            &raw.connect_timeout,
            Duration::from_secs(1),
        ),
        timeout: c.duration(
            &format!("{path}.timeout"),
            &raw.timeout,
            Duration::from_secs(30),
        ),
        eject_for: c.duration(
            &format!("{path}.eject_for"),
            &raw.eject_for,
            Duration::from_secs(5),
        ),
        max_idle_per_endpoint: raw.max_idle_per_endpoint.unwrap_or(256),
        retry: raw.retry.unwrap_or(true),
        protocol: match raw.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2") => UpstreamProtocol::H2,
            Some("auto") => UpstreamProtocol::Auto,
            Some(other) => {
                c.fail(
                    format!("{path}.protocol"),
                    format!("`{other}` is not one of: http1, h2, auto"),
                );
                UpstreamProtocol::Http1
            }
        },
        tls: None,
    };
    let https = b
        .endpoints
        .iter()
        .filter(|e| e.scheme == Scheme::Https)
        .count();
    if https > 0 && https < b.endpoints.len() {
        c.fail(
            format!("{path}.endpoints"),
            "mixes http and https endpoints; use one scheme per backend",
        );
    }
    let mut b = b;
    if https > 0 {
        b.tls = upstream_tls(c, path, raw);
    } else {
        for (key, set) in [
            ("ca_file", raw.ca_file.is_some()),
            ("client_cert", raw.client_cert.is_some()),
            ("client_key", raw.client_key.is_some()),
            ("insecure_skip_verify", raw.insecure_skip_verify.is_some()),
            ("tls_server_name", raw.tls_server_name.is_some()),
        ] {
            if set {
                c.fail(
                    format!("{path}.{key}"),
                    "applies to https:// endpoints only, and this backend has none",
                );
            }
        }
    }
    if b.connect_timeout.is_zero() {
        c.fail(format!("{path}.connect_timeout"), "must be more than 0");
    }
    if b.timeout.is_zero() {
        c.fail(format!("{path}.timeout"), "must be more than 0");
    }
    Some(b)
}

/// TLS towards a backend: files read and checked now, client config built.
fn upstream_tls(c: &mut Check, path: &str, raw: &RawBackend) -> Option<UpstreamTls> {
    let insecure = raw.insecure_skip_verify.unwrap_or(false);
    let mut ok = true;
    if insecure && raw.ca_file.is_some() {
        c.fail(
            format!("{path}.ca_file"),
            "has no effect with insecure_skip_verify: true; remove one of them",
        );
        ok = false;
    }
    let ca_file = raw.ca_file.as_deref().map(|f| c.resolve(f));
    let ca = match &ca_file {
        Some(f) => match tls::read_certificates(f) {
            Ok(certs) => Some(certs),
            Err(reason) => {
                c.fail(format!("{path}.ca_file"), reason);
                ok = false;
                None
            }
        },
        None => None,
    };
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => Some((c.resolve(cert), c.resolve(key))),
        (Some(_), None) => {
            c.fail(
                format!("{path}.client_key"),
                "`client_cert` needs a `client_key`",
            );
            ok = false;
            None
        }
        (None, Some(_)) => {
            c.fail(
                format!("{path}.client_cert"),
                "`client_key` needs a `client_cert`",
            );
            ok = false;
            None
        }
        (None, None) => None,
    };
    let mut identity = None;
    let mut key_fingerprint = 0;
    if let Some((cert, key)) = &client_cert {
        let read = tls::read_certificates(cert)
            .map_err(|r| (format!("{path}.client_cert"), r))
            .and_then(|chain| {
                tls::read_private_key(key)
                    .map(|k| (chain, k))
                    .map_err(|r| (format!("{path}.client_key"), r))
            });
        match read {
            Ok((chain, k)) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                k.secret_der().hash(&mut h);
                key_fingerprint = h.finish();
                identity = Some((chain, k));
            }
            Err((p, reason)) => {
                c.fail(p, reason);
                ok = false;
            }
        }
    }
    let server_name = raw.tls_server_name.as_ref().map(|n| n.trim().to_string());
    if let Some(n) = &server_name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            c.fail(
                format!("{path}.tls_server_name"),
                format!("`{n}` is not a DNS name or IP address"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let mut material = ca.clone().unwrap_or_default();
    if let Some((chain, _)) = &identity {
        material.extend(chain.iter().cloned());
    }
    let params = tls::ClientTlsParams {
        ca: ca.as_deref(),
        identity,
        insecure_skip_verify: insecure,
    };
    match tls::client_config(params) {
        Ok(client_config) => Some(UpstreamTls {
            ca_file,
            client_cert,
            server_name,
            insecure_skip_verify: insecure,
            material,
            key_fingerprint,
            client_config,
        }),
        Err((key, reason)) => {
            c.fail(format!("{path}.{key}"), reason);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::{checked, raw};

    #[test]
    fn a_backend_with_its_endpoints_and_settings() {
        let (b, errors) = checked(|c| {
            backend(
                c,
                "backends.v1",
                "v1",
                &raw("endpoints: [\"127.0.0.1:9000\", \"http://localhost:9001/\"]\nprotocol: h2\ntimeout: 2s\n"),
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        let b = b.expect("backend");
        assert_eq!(b.endpoints.len(), 2);
        assert_eq!(b.endpoints[1].authority, "localhost:9001");
        assert_eq!(b.protocol, UpstreamProtocol::H2);
        assert_eq!(b.timeout, Duration::from_secs(2));
        assert_eq!(b.connect_timeout, Duration::from_secs(1));
        assert!(b.tls.is_none());
        let secure = endpoint("https://api.example:443").expect("endpoint");
        assert_eq!(secure.scheme, Scheme::Https);
    }

    #[test]
    fn bad_backends_are_refused_with_their_key_path() {
        let (_, errors) = checked(|c| {
            backend(
                c,
                "backends.v1",
                "v1",
                &raw("endpoints: [\"ftp://x:1\", \"localhost\"]\nprotocol: h3\nca_file: ca.pem\ntimeout: 0s\n"),
            )
        });
        assert_eq!(
            errors,
            [
                "backends.v1.endpoints[0]: scheme `ftp` is not supported (use http or https)",
                "backends.v1.endpoints[1]: `localhost` has no port; write it as host:port",
                "backends.v1.protocol: `h3` is not one of: http1, h2, auto",
                "backends.v1.ca_file: applies to https:// endpoints only, and this backend has none",
                "backends.v1.timeout: must be more than 0",
            ]
        );
        let (_, errors) = checked(|c| {
            backend(
                c,
                "backends.v2",
                "v2",
                &raw("endpoints: [\"https://x:1\"]\nclient_cert: c.pem\ntls_server_name: \"not a name\"\n"),
            )
        });
        assert_eq!(
            errors,
            [
                "backends.v2.client_key: `client_cert` needs a `client_key`",
                "backends.v2.tls_server_name: `not a name` is not a DNS name or IP address",
            ]
        );
    }
}
