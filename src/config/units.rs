//! Durations (`200ms`, `5s`, `1.5m`) and sizes (`64KiB`, `1MiB`, plain
//! bytes), parsed once at load time.

use std::time::Duration;

use super::raw::RawSize;

/// Parses a duration written with a unit: `ms`, `s`, `m` or `h`; decimals allowed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("`{text}` has no unit; write it like `200ms`, `5s`, `2m` or `1h`")
        })?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like `200ms` or `5s`"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}`; use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
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
            ("5", None),
            ("5 parsecs", None),
            ("ms", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), want, "{text}");
        }
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
