//! The `listen:` section and the `admin:` address: socket addresses, and
//! each listener's TLS certificates, read and parsed at load so that a bad
//! file is refused with its key path instead of failing at the first
//! handshake.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use super::check::Check;
use super::model::{Listener, ListenerTls, ServerCertificate};
use super::raw::{RawListen, RawTls};
use crate::tls;

pub(super) fn socket_addr(c: &mut Check, path: &str, text: &str) -> Option<SocketAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    match text.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            c.fail(
                path,
                format!("`{text}` is not a socket address like 127.0.0.1:8080"),
            );
            None
        }
    }
}

pub(super) fn listeners(c: &mut Check, raw: &RawListen) -> Vec<Listener> {
    match raw {
        RawListen::One(addr) => socket_addr(c, "listen", addr)
            .map(|address| vec![Listener { address, tls: None }])
            .unwrap_or_default(),
        RawListen::Many(list) => {
            if list.is_empty() {
                c.fail("listen", "needs at least one listener");
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let path = format!("listen[{i}]");
                    let address = socket_addr(c, &format!("{path}.address"), &l.address)?;
                    let tls = match &l.tls {
                        Some(t) => Some(listener_tls(c, &format!("{path}.tls"), t)?),
                        None => None,
                    };
                    Some(Listener { address, tls })
                })
                .collect()
        }
    }
}

/// Reads and parses a listener's certificates and keys now, so a bad file
/// is reported at load (and on reload) instead of at the first handshake.
fn listener_tls(c: &mut Check, path: &str, raw: &RawTls) -> Option<ListenerTls> {
    let mut entries: Vec<(String, &str, &str, &[String])> = Vec::new();
    match (&raw.cert, &raw.key, raw.certificates.is_empty()) {
        (Some(cert), Some(key), true) => entries.push((path.to_string(), cert, key, &[])),
        (None, None, false) => {
            for (i, e) in raw.certificates.iter().enumerate() {
                entries.push((
                    format!("{path}.certificates[{i}]"),
                    &e.cert,
                    &e.key,
                    &e.server_names,
                ));
            }
        }
        (None, None, true) => {
            c.fail(path, "give `cert` and `key`, or a list of `certificates`");
            return None;
        }
        (_, _, false) => {
            c.fail(
                path,
                "give either `cert` and `key` or `certificates`, not both",
            );
            return None;
        }
        (Some(_), None, true) => {
            c.fail(format!("{path}.key"), "`cert` needs a `key`");
            return None;
        }
        (None, Some(_), true) => {
            c.fail(format!("{path}.cert"), "`key` needs a `cert`");
            return None;
        }
    }
    let mut certificates = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, (epath, cert, key, names)) in entries.into_iter().enumerate() {
        let mut server_names = Vec::new();
        for (j, n) in names.iter().enumerate() {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            let npath = format!("{epath}.server_names[{j}]");
            if !tls::valid_server_name(&n) {
                c.fail(
                    npath,
                    format!("`{n}` is not a DNS name like example.com or *.example.com"),
                );
            } else if let Some(first) = seen.get(&n) {
                c.fail(npath, format!("`{n}` is already listed at {first}"));
            } else {
                seen.insert(n.clone(), npath);
                server_names.push(n);
            }
        }
        if i > 0 && names.is_empty() {
            c.fail(
                format!("{epath}.server_names"),
                "every certificate but the first needs server_names",
            );
        }
        let (cert, key) = (c.resolve(cert), c.resolve(key));
        match tls::certified_key(&cert, &key) {
            Ok(k) => certificates.push(ServerCertificate {
                cert,
                key,
                server_names,
                certified: Arc::new(k),
            }),
            Err((part, reason)) => {
                let key = match part {
                    tls::PairPart::Cert => "cert",
                    tls::PairPart::Key => "key",
                };
                c.fail(format!("{epath}.{key}"), reason)
            }
        }
    }
    let sni: Vec<tls::SniCertificate> = certificates
        .iter()
        .map(|s| tls::SniCertificate {
            server_names: s.server_names.clone(),
            key: s.certified.clone(),
        })
        .collect();
    if sni.is_empty() {
        return None;
    }
    match tls::server_config(&sni) {
        Ok(server_config) => Some(ListenerTls {
            certificates,
            server_config,
        }),
        Err(reason) => {
            c.fail(path, reason);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::{checked, key_paths, raw};

    /// A self-signed certificate for `names` and its key, as PEM files in `dir`.
    fn pem_pair(dir: &std::path::Path, stem: &str, names: &[&str]) {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write");
    }

    #[test]
    fn listeners_with_certificates_chosen_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        pem_pair(dir.path(), "a", &["a.example"]);
        pem_pair(dir.path(), "b", &["b.example"]);
        let d = dir.path().display();
        let yaml = format!(
            "- address: 127.0.0.1:8443\n  tls:\n    certificates:\n      - {{ cert: {d}/a.crt, key: {d}/a.key }}\n      - {{ cert: {d}/b.crt, key: {d}/b.key, server_names: [B.Example, \"*.b.example\"] }}\n"
        );
        let (listeners, errors) = checked(|c| {
            let one = listeners(c, &RawListen::One("127.0.0.1:8080".into()));
            let many = listeners(c, &RawListen::Many(raw(&yaml)));
            (one, many)
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(listeners.0[0].address, "127.0.0.1:8080".parse().unwrap());
        let tls = listeners.1[0].tls.as_ref().expect("tls");
        assert_eq!(tls.certificates.len(), 2);
        assert_eq!(
            tls.certificates[1].server_names,
            ["b.example", "*.b.example"]
        );
    }

    #[test]
    fn bad_listeners_are_refused_with_their_key_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        pem_pair(dir.path(), "a", &["a.example"]);
        pem_pair(dir.path(), "b", &["b.example"]);
        let d = dir.path().display();
        let yaml = format!(
            "- address: nowhere\n- address: 127.0.0.1:8443\n  tls: {{ cert: {d}/a.crt }}\n- address: 127.0.0.1:8444\n  tls: {{ cert: {d}/a.crt, key: {d}/b.key }}\n- address: 127.0.0.1:8445\n  tls:\n    certificates:\n      - {{ cert: {d}/a.crt, key: {d}/a.key, server_names: [\"a.*.example\"] }}\n      - {{ cert: {d}/b.crt, key: {d}/b.key }}\n"
        );
        let (_, errors) = checked(|c| listeners(c, &RawListen::Many(raw(&yaml))));
        assert_eq!(
            key_paths(&errors),
            [
                "listen[0].address",
                "listen[1].tls.key",
                "listen[2].tls.key",
                "listen[3].tls.certificates[0].server_names[0]",
                "listen[3].tls.certificates[1].server_names",
            ],
            "{errors:?}"
        );
        assert!(errors[0].ends_with("`nowhere` is not a socket address like 127.0.0.1:8080"));
        assert!(
            errors[2].contains("does not match the certificate"),
            "{errors:?}"
        );
    }
}
