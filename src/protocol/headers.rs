//! A proxy's manners with headers: hop-by-hop fields removed both ways
//! (RFC 9110 §7.6.1), forwarding fields added, Host handling.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that describe one connection and never cross a proxy.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop fields: the fixed set and every field the
/// `Connection` header names. `te: trailers` survives (gRPC needs it);
/// with `keep_upgrade` the `Connection: upgrade` / `Upgrade` pair survives.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            let named: Vec<HeaderName> = list
                .split(',')
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|h| !(keep_upgrade && h == header::UPGRADE))
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Joins several `cookie` fields into one, separated by `; `. HTTP/2
/// clients (browsers) split cookies into fields of their own for HPACK;
/// an HTTP/1.1 backend must see a single field (RFC 9113 §8.2.3, RFC 6265
/// §5.4). One field or none: untouched, nothing allocated.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    if all.nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Sets the forwarding fields and appends to `via`.
///
/// From a `trusted` peer (a configured proxy in front of shadowgate):
/// `x-forwarded-for` is appended to, `x-forwarded-proto` and
/// `x-forwarded-host` are kept (and set when absent), and so is
/// `x-real-ip`; a `forwarded` field (RFC 7239) gets shadowgate's element
/// appended (`for=…;proto=…;host=…`). From any other peer the client's own
/// values are not believed: the three `x-forwarded-*` are replaced by what
/// shadowgate saw (peer address, scheme of the listener, authority), and
/// `forwarded` and `x-real-ip`, which a backend may take for the client's
/// address as well, are removed.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    tls: bool,
    host: &str,
    version: http::Version,
    trusted: bool,
) {
    let client = client.to_canonical();
    let prev = trusted.then(|| joined(headers, &X_FORWARDED_FOR)).flatten();
    let xff = match prev {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {client}")),
        None => HeaderValue::from_str(&client.to_string()),
    };
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        headers.remove(&X_FORWARDED_HOST);
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
    }
    if trusted {
        append_forwarded(headers, client, tls, host);
    } else {
        headers.remove(header::FORWARDED);
        headers.remove(&X_REAL_IP);
    }
    let hop = match version {
        http::Version::HTTP_2 => "2 shadowgate",
        http::Version::HTTP_10 => "1.0 shadowgate",
        _ => "1.1 shadowgate",
    };
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {hop}")).ok(),
        None => Some(HeaderValue::from_static(hop)),
    };
    if let Some(v) = via {
        headers.insert(header::VIA, v);
    }
}

/// Appends this hop's element to a `forwarded` field the trusted peer
/// sent (RFC 7239 §4; none is added when there is none: the
/// `x-forwarded-*` fields are shadowgate's own). An IPv6 address and a
/// host with a port are quoted (§6: `"[2001:db8::1]"`, `"app:8080"`).
fn append_forwarded(headers: &mut HeaderMap, client: IpAddr, tls: bool, host: &str) {
    let Some(prev) = joined(headers, &header::FORWARDED) else {
        return;
    };
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let proto = if tls { "https" } else { "http" };
    let element = if host.is_empty() {
        format!("for={node};proto={proto}")
    } else if host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        format!("for={node};proto={proto};host={host}")
    } else {
        let quoted = host.replace('\\', "\\\\").replace('"', "\\\"");
        format!("for={node};proto={proto};host=\"{quoted}\"")
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{prev}, {element}")) {
        headers.insert(header::FORWARDED, v);
    }
}

/// Every field `name` joined with `, ` (several `x-forwarded-for` lines
/// are one list), or `None` when absent or not text.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out = String::new();
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?.trim();
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(v);
    }
    (!out.is_empty()).then_some(out)
}

/// The trace id of a valid W3C `traceparent` field
/// (`00-<32 hex>-<16 hex>-<2 hex>`), or `None`. Only one field counts;
/// an all-zero id, upper-case hex or version `ff` is invalid.
pub fn trace_id(headers: &HeaderMap) -> Option<&str> {
    let mut all = headers.get_all("traceparent").iter();
    let value = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let v = value.to_str().ok()?.trim();
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = lower_hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && lower_hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && lower_hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && lower_hex(flags, 2);
    valid.then_some(trace)
}

/// Splits `host[:port]` (IPv6 in brackets) into host and optional `:port`.
pub fn split_host_port(authority: &str) -> (&str, &str) {
    if authority.starts_with('[') {
        if let Some(end) = authority.find(']') {
            return authority.split_at(end + 1);
        }
        return (authority, "");
    }
    match authority.rfind(':') {
        Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => authority.split_at(i),
        _ => (authority, ""),
    }
}

/// Appends `suffix` to the host part of `authority`, keeping any port:
/// `my-app.local:8080` + `-shadow` → `my-app.local-shadow:8080`.
pub fn suffixed_authority(authority: &str, suffix: &str) -> String {
    let (host, port) = split_host_port(authority);
    let mut out = String::with_capacity(authority.len() + suffix.len());
    out.push_str(host);
    out.push_str(suffix);
    out.push_str(port);
    out
}

/// Checks and settles the framing fields of a response from an HTTP/1.1
/// upstream before its head goes on (hyper's client has already decoded a
/// chunked body; the fields are as the backend sent them).
///
/// * `Transfer-Encoding: chunked` together with `Content-Length`: RFC 9112
///   §6.3 — the transfer coding wins, the length is wrong by definition and
///   is dropped. Passed on, it made hyper send the client `content-length: 3`
///   and cut the dechunked body there (HTTP/1.1: truncated, and the
///   keep-alive connection went on, out of step; HTTP/2: a stream error).
/// * Any other transfer coding (`gzip, chunked`, `deflate`, …): an error
///   (502). hyper's client removes only `chunked`, so the body still carries
///   the other coding, and `Transfer-Encoding` is hop-by-hop: forwarded as
///   is, the client got raw gzip with nothing saying so. Passing it on as a
///   transfer coding would only do for HTTP/1.1 clients that sent a
///   matching `TE`, never for HTTP/2; decoding it here would be a
///   decompressor on the request path for something backends do not send
///   in practice. Production proxies refuse it the same way (nginx: "upstream
///   sent unknown Transfer-Encoding", 502; Envoy and HAProxy likewise).
pub fn response_framing(headers: &mut http::HeaderMap) -> Result<(), &'static str> {
    if !headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(());
    }
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty());
    let only_chunked = codings
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none();
    if !only_chunked {
        return Err("response with a transfer coding other than chunked");
    }
    headers.remove(header::CONTENT_LENGTH);
    Ok(())
}

/// Header changes of a route (Istio `headers`, the Gateway API's header
/// modifier filters): applied in the order `remove`, `set`, `add`, as
/// Envoy does (removing first, so a header both removed and set or added
/// ends up with the new value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderEdits {
    pub remove: Vec<HeaderName>,
    /// Replaces every field of that name.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appended after the fields of that name already there.
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the changes to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_remove_then_set_then_add() {
        let mut h = map(&[("x-a", "1"), ("x-a", "2"), ("x-b", "old"), ("x-gone", "z")]);
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).unwrap();
        let value = |v: &'static str| HeaderValue::from_static(v);
        let edits = HeaderEdits {
            remove: vec![name("x-gone"), name("x-b")],
            set: vec![(name("x-a"), value("only")), (name("x-b"), value("new"))],
            add: vec![(name("x-a"), value("more")), (name("x-c"), value("c"))],
        };
        assert!(!edits.is_empty());
        edits.apply(&mut h);
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-a"), ["only", "more"]);
        assert_eq!(all("x-b"), ["new"]);
        assert_eq!(all("x-c"), ["c"]);
        assert!(all("x-gone").is_empty());
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn split_cookies_are_joined_and_a_single_one_is_untouched() {
        let mut h = map(&[
            ("cookie", "a=1"),
            ("x", "y"),
            ("cookie", "b=2"),
            ("cookie", "c=3"),
        ]);
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut one = map(&[("cookie", "a=1; b=2")]);
        join_cookies(&mut one);
        assert_eq!(
            one.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );
        let mut none = map(&[("x", "y")]);
        join_cookies(&mut none);
        assert!(none.get("cookie").is_none());
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = map(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-checksum"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn te_trailers_and_upgrade_survive_when_asked() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    /// Forwarding fields added for a cleartext HTTP/1.1 request to
    /// `my-app.local` from `peer`.
    fn forward(h: &mut HeaderMap, peer: &str, trusted: bool) {
        let peer = peer.parse().unwrap();
        add_forwarded(
            h,
            peer,
            false,
            "my-app.local",
            http::Version::HTTP_11,
            trusted,
        );
    }

    #[test]
    fn forwarded_fields() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1"), ("via", "1.1 edge")]);
        forward(&mut h, "127.0.0.1", true);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "my-app.local");
        assert_eq!(h["via"], "1.1 edge, 1.1 shadowgate");
    }

    #[test]
    fn forwarded_fields_from_an_untrusted_peer_are_replaced() {
        let sent = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ];
        let mut h = map(&sent);
        forward(&mut h, "::ffff:127.0.0.1", false);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "my-app.local");
        // From a trusted peer: several lines are one list, appended to.
        let mut h = map(&sent);
        forward(&mut h, "127.0.0.1", true);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 7.7.7.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.example");
    }

    #[test]
    fn forwarded_and_x_real_ip_are_removed_from_an_untrusted_peer_and_appended_to_from_a_trusted_one(
    ) {
        let sent = [
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("forwarded", "for=7.7.7.7"),
            ("x-real-ip", "6.6.6.6"),
        ];
        let mut h = map(&sent);
        forward(&mut h, "127.0.0.1", false);
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-real-ip").is_none());

        let mut h = map(&sent);
        forward(&mut h, "127.0.0.1", true);
        assert_eq!(
            h["forwarded"],
            "for=6.6.6.6;proto=https, for=7.7.7.7, for=127.0.0.1;proto=http;host=my-app.local"
        );
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "6.6.6.6");
        // IPv6 and a host with a port are quoted.
        let mut h = map(&sent);
        add_forwarded(
            &mut h,
            "2001:db8::1".parse().unwrap(),
            true,
            "app:8080",
            http::Version::HTTP_11,
            true,
        );
        assert!(
            h["forwarded"]
                .to_str()
                .unwrap()
                .ends_with(", for=\"[2001:db8::1]\";proto=https;host=\"app:8080\""),
            "{:?}",
            h["forwarded"]
        );
        // None sent: none added.
        let mut h = map(&[]);
        forward(&mut h, "127.0.0.1", true);
        assert!(h.get("forwarded").is_none());
    }

    #[test]
    fn trace_ids() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let ok = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(trace_id(&map(&[("traceparent", &ok)])), Some(id));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            assert_eq!(trace_id(&map(&[("traceparent", bad)])), None, "{bad}");
        }
        assert_eq!(trace_id(&map(&[])), None);
    }

    #[test]
    fn suffixes() {
        assert_eq!(
            suffixed_authority("my-app.local", "-shadow"),
            "my-app.local-shadow"
        );
        assert_eq!(
            suffixed_authority("my-app.local:8080", "-shadow"),
            "my-app.local-shadow:8080"
        );
        assert_eq!(suffixed_authority("[::1]:80", "-shadow"), "[::1]-shadow:80");
        assert_eq!(suffixed_authority("a", ""), "a");
    }
}
