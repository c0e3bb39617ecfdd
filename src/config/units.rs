//! Durations (`200ms`, `5s`, `1.5m`) and sizes (`64KiB`, `1MiB`, plain
//! bytes), parsed once at load time.

use std::time::Duration;

use super::raw::RawSize;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` has no unit; write it like `200ms`, `5s`, `1m30s` or `1h`")]
    NoUnit(String),
    #[error(
        "`{text}` has an unknown unit `{unit}`; use h, m, s, ms, us or ns (like `1m30s` or `1.5s`)"
    )]
    UnknownUnit { text: String, unit: String },
    #[error("`{0}` is not a duration; write it like `200ms`, `1.5s` or `1m30s`")]
    Malformed(String),
    #[error("`{0}` is out of range")]
    OutOfRange(String),
}

/// Parses a duration as Go's `time.ParseDuration` (and so Kubernetes and
/// Istio manifests, whose protobuf durations are a subset) writes it: one
/// or more `<number><unit>` with units `h`, `m`, `s`, `ms`, `us` (`µs`)
/// and `ns`; decimals allowed (`1.5s`, `1m30s`, `500ms`, `1h`); a bare `0`
/// is zero. No sign, no spaces inside. The one duration parser of the
/// native config and the imported manifests.
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(DurationError::Malformed(text.to_string()));
    }
    let is_num = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = t;
    let mut secs = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !is_num(c)).ok_or_else(|| {
            if secs == 0.0 && rest.len() == t.len() {
                DurationError::NoUnit(text.to_string())
            } else {
                DurationError::Malformed(text.to_string())
            }
        })?;
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail.find(is_num).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let value: f64 = num
            .parse()
            .map_err(|_| DurationError::Malformed(text.to_string()))?;
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ns" => 1e-9,
            other => {
                return Err(DurationError::UnknownUnit {
                    text: text.to_string(),
                    unit: other.trim().to_string(),
                })
            }
        };
        secs += value * scale;
        rest = tail;
    }
    if !secs.is_finite() || secs > 1e9 {
        return Err(DurationError::OutOfRange(text.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a duration of the native config (see [`parse_go_duration`]),
/// with the reason as text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_go_duration(text).map_err(|e| e.to_string())
}

/// Parses a size: a plain number of bytes, or a number with a unit
/// (`B`, `KB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`).
pub fn parse_size(raw: &RawSize) -> Result<u64, String> {
    let text = match raw {
        RawSize::Bytes(n) => return Ok(*n),
        RawSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("`{text}` is not a size; write it like `64KiB`, `1MiB` or `1048576`")
    })?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" | "Ki" => 1024.0,
        "MiB" | "Mi" => 1024.0 * 1024.0,
        "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}`; use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("200ms", Some(Duration::from_millis(200))),
            ("5s", Some(Duration::from_secs(5))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("2m", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            ("0s", Some(Duration::ZERO)),
            ("0", Some(Duration::ZERO)),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1h30m", Some(Duration::from_secs(5400))),
            ("0.25s", Some(Duration::from_millis(250))),
            ("1.5m", Some(Duration::from_secs(90))),
            ("2s500ms", Some(Duration::from_millis(2500))),
            ("1500us", Some(Duration::from_micros(1500))),
            ("1d", None),
            ("-1s", None),
            ("1m30", None),
            ("10 seconds", None),
            ("5", None),
            ("5 parsecs", None),
            ("ms", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), want, "{text}");
        }
        assert_eq!(
            parse_duration("5 parsecs").unwrap_err(),
            "`5 parsecs` has an unknown unit `parsecs`; use h, m, s, ms, us or ns (like `1m30s` or `1.5s`)"
        );
        assert_eq!(
            parse_duration("5").unwrap_err(),
            "`5` has no unit; write it like `200ms`, `5s`, `1m30s` or `1h`"
        );
    }

    #[test]
    fn sizes() {
        let cases = [
            (RawSize::Bytes(10), Some(10)),
            (RawSize::Text("64KiB".into()), Some(65536)),
            (RawSize::Text("1MiB".into()), Some(1 << 20)),
            (RawSize::Text("10MB".into()), Some(10_000_000)),
            (RawSize::Text("512".into()), Some(512)),
            (RawSize::Text("1.5KiB".into()), Some(1536)),
            (RawSize::Text("1 potato".into()), None),
            (RawSize::Text("KiB".into()), None),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_size(&raw).ok(), want, "{raw:?}");
        }
    }
}
