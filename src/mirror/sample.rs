//! Sampling: which requests a mirror copies.
//!
//! Without a `sample_key`, each request is drawn at random. With one, the
//! value of that header (or, failing that, that cookie) is hashed, so one
//! user's requests are all mirrored or none are, and every mirror with the
//! same percent picks the same users. A request without the key falls back
//! to a random draw.

use std::hash::Hasher;

use fnv::FnvHasher;
use http::HeaderMap;

/// Resolution of the sampling space: percent is compared in millionths.
const SCALE: u64 = 100_000_000;

/// Decides whether a request is sampled for a mirror.
pub fn sampled(percent: f64, sample_key: Option<&str>, headers: &HeaderMap) -> bool {
    if percent >= 100.0 {
        return true;
    }
    if percent <= 0.0 {
        return false;
    }
    let threshold = (percent / 100.0 * SCALE as f64) as u64;
    let point = match sample_key.and_then(|k| key_value(k, headers)) {
        Some(value) => fnv1a(value) % SCALE,
        None => fastrand::u64(0..SCALE),
    };
    point < threshold
}

/// The value of header `name`, or of the cookie `name`.
fn key_value<'a>(name: &str, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    if let Some(v) = headers.get(name) {
        return Some(v.as_bytes());
    }
    for cookie in headers.get_all(http::header::COOKIE) {
        let Ok(text) = cookie.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k.eq_ignore_ascii_case(name) {
                    return Some(v.as_bytes());
                }
            }
        }
    }
    None
}

/// FNV-1a, 64 bit, with a final avalanche so that nearby keys spread evenly.
fn fnv1a(data: &[u8]) -> u64 {
    let mut hasher = FnvHasher::default();
    hasher.write(data);
    let mut h = hasher.finish();
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn edges() {
        let h = HeaderMap::new();
        assert!((0..1000).all(|_| sampled(100.0, None, &h)));
        assert!((0..1000).all(|_| !sampled(0.0, None, &h)));
    }

    #[test]
    fn random_rate_is_within_bound() {
        let h = HeaderMap::new();
        let n = 100_000;
        let hits = (0..n).filter(|_| sampled(25.0, None, &h)).count();
        // 25% of 100k: sd = sqrt(n p (1-p)) ≈ 137; allow 6 sd.
        assert!((24_180..=25_820).contains(&hits), "{hits}");
    }

    #[test]
    fn keyed_sampling_is_stable_and_near_rate() {
        let mut hits = 0;
        for user in 0..20_000 {
            let mut h = HeaderMap::new();
            h.insert(
                "x-user",
                HeaderValue::from_str(&format!("user-{user}")).unwrap(),
            );
            let first = sampled(10.0, Some("x-user"), &h);
            for _ in 0..3 {
                assert_eq!(sampled(10.0, Some("x-user"), &h), first);
            }
            hits += usize::from(first);
        }
        // 10% of 20k = 2000, sd ≈ 42; allow 6 sd.
        assert!((1_745..=2_255).contains(&hits), "{hits}");
    }

    #[test]
    fn key_from_cookie() {
        let mut a = HeaderMap::new();
        a.insert(
            "cookie",
            HeaderValue::from_static("theme=dark; session=abc123"),
        );
        let mut b = HeaderMap::new();
        b.insert("x-other", HeaderValue::from_static("1"));
        b.insert("cookie", HeaderValue::from_static("session=abc123"));
        assert_eq!(key_value("session", &a), Some(&b"abc123"[..]));
        assert_eq!(
            (0..50)
                .map(|_| sampled(50.0, Some("session"), &a))
                .collect::<Vec<_>>(),
            (0..50)
                .map(|_| sampled(50.0, Some("session"), &b))
                .collect::<Vec<_>>()
        );
    }
}
