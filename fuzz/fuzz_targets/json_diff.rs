//! The differ on two arbitrary bodies (JSON mostly), with rules chosen by
//! the input: an outcome within its limits, never a panic.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use shadowgate::diff::{compare, Captured, CompareRules, RulesConfig};

fn captured(body: &[u8], status: u16, ct: &'static str, gzip: bool) -> Captured {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(ct));
    if gzip {
        headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    Captured {
        status,
        headers,
        body: Bytes::copy_from_slice(body),
        truncated: false,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (flags, split, rest) = (data[0], data[1] as usize, &data[2..]);
    let split = split.min(rest.len());
    let (a, b) = rest.split_at(split);
    let config = RulesConfig {
        ignore_headers: vec!["x-*".into()],
        ignore_paths: if flags & 1 != 0 {
            vec!["$.meta.ts".into(), "$..etag".into(), "$.items[*].id".into()]
        } else {
            Vec::new()
        },
        unordered_paths: if flags & 2 != 0 {
            vec!["$.items".into(), "$..tags".into()]
        } else {
            Vec::new()
        },
        numeric_tolerance: (flags & 4 != 0).then_some(0.001),
    };
    let Ok(rules) = CompareRules::new(&config) else {
        return;
    };
    let ct = if flags & 8 != 0 {
        "text/plain"
    } else {
        "application/json"
    };
    let gzip = flags & 16 != 0;
    let status_b = if flags & 32 != 0 { 500 } else { 200 };
    let outcome = compare(
        &captured(a, 200, ct, gzip),
        &captured(b, status_b, ct, gzip),
        &rules,
    );
    assert!(outcome.differences.len() <= rules.limits().max_differences);
    // Identical answers never differ.
    let same = compare(
        &captured(a, 200, ct, gzip),
        &captured(a, 200, ct, gzip),
        &rules,
    );
    assert!(same.differences.is_empty(), "{same:?}");
});
