//! Which recorded exchanges are replayed (`--filter`) and when (`--rate`,
//! `--speed`): pure parsing and matching, no I/O.

use std::time::{Duration, SystemTime};

use crate::record::read::Exchange;

/// What a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKey {
    Route,
    Method,
    Path,
}

/// One `--filter KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub key: FilterKey,
    /// For `path`: a pattern where `*` stands for any run of characters
    /// (`/` included); otherwise the exact value (`method`: ASCII case
    /// ignored).
    pub value: String,
}

impl std::str::FromStr for Filter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected KEY=VALUE (route=, method= or path=)"))?;
        let key = match key.trim() {
            "route" => FilterKey::Route,
            "method" => FilterKey::Method,
            "path" => FilterKey::Path,
            other => {
                return Err(format!(
                    "`{s}`: unknown key `{other}` (expected route, method or path)"
                ))
            }
        };
        if value.is_empty() {
            return Err(format!("`{s}`: empty value"));
        }
        Ok(Filter {
            key,
            value: value.to_string(),
        })
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (none included).
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether `exchange` passes every filter: filters of different keys must
/// all hold; of several filters with the same key, one is enough.
pub fn selected(filters: &[Filter], exchange: &Exchange) -> bool {
    let path = exchange
        .request
        .uri
        .as_deref()
        .unwrap_or("")
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let method = exchange.request.method.as_deref().unwrap_or("");
    let holds = |f: &Filter| match f.key {
        FilterKey::Route => exchange.route == f.value,
        FilterKey::Method => method.eq_ignore_ascii_case(&f.value),
        FilterKey::Path => glob(&f.value, path),
    };
    [FilterKey::Route, FilterKey::Method, FilterKey::Path]
        .iter()
        .all(|key| {
            let mut of_key = filters.iter().filter(|f| f.key == *key).peekable();
            of_key.peek().is_none() || of_key.any(holds)
        })
}

/// When requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as `--concurrency` allows.
    Max,
    /// At most this many requests a second (`--rate`).
    Rate(f64),
    /// The recorded gaps between requests (their `time`), divided by
    /// this factor (`--speed 2x`).
    Speed(f64),
}

/// Parses `--speed`: `max`, or a positive factor with an optional `x`
/// (`1x`, `2x`, `0.5x`).
pub fn parse_speed(s: &str) -> Result<Pace, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Pace::Max);
    }
    let factor: f64 = s
        .strip_suffix(['x', 'X'])
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("`{s}`: expected max or a factor such as 1x, 2x, 0.5x"))?;
    if !(factor.is_finite() && factor > 0.0) {
        return Err(format!("`{s}`: the factor must be above 0"));
    }
    Ok(Pace::Speed(factor))
}

/// Parses `--rate`: requests a second, above 0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim_end_matches("/s")
        .parse()
        .map_err(|_| format!("`{s}`: expected requests a second, e.g. 50"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("`{s}`: the rate must be above 0"));
    }
    Ok(rate)
}

/// Works out when each request is due, as an offset from the start.
#[derive(Debug)]
pub struct Pacer {
    pace: Pace,
    sent: u64,
    /// `Speed`: the first request's recorded time and the latest offset
    /// given (recorded times may go back a little: requests are written
    /// when their answer ends).
    first: Option<SystemTime>,
    last: Duration,
}

impl Pacer {
    pub fn new(pace: Pace) -> Self {
        Pacer {
            pace,
            sent: 0,
            first: None,
            last: Duration::ZERO,
        }
    }

    /// The offset from the start at which the next request (recorded at
    /// `time`) is due; `None`: at once.
    pub fn due(&mut self, time: Option<&str>) -> Option<Duration> {
        let n = self.sent;
        self.sent += 1;
        match self.pace {
            Pace::Max => None,
            Pace::Rate(rate) => Some(Duration::from_secs_f64(n as f64 / rate)),
            Pace::Speed(factor) => {
                let at = time.and_then(|t| humantime::parse_rfc3339_weak(t).ok())?;
                let first = *self.first.get_or_insert(at);
                let gap = at.duration_since(first).unwrap_or(Duration::ZERO);
                let offset = gap.div_f64(factor).max(self.last);
                self.last = offset;
                Some(offset)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(route: &str, method: &str, uri: &str) -> Exchange {
        let mut e = Exchange {
            route: route.into(),
            ..Exchange::default()
        };
        e.request.method = Some(method.into());
        e.request.uri = Some(uri.into());
        e
    }

    #[test]
    fn globs() {
        assert!(glob("/items/*", "/items/7"));
        assert!(glob("/items/*", "/items/7/parts"));
        assert!(!glob("/items/*", "/item"));
        assert!(glob("*", ""));
        assert!(glob("/a*c*e", "/abcde"));
        assert!(!glob("/a*c*e", "/abcd"));
        assert!(glob("/exact", "/exact"));
        assert!(!glob("/exact", "/exact/"));
        assert!(!glob("/ab*ba", "/aba"));
    }

    #[test]
    fn filters_and_across_keys_or_within() {
        let f: Vec<Filter> = ["route=items", "method=get", "method=POST", "path=/items/*"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(selected(&f, &exchange("items", "GET", "/items/3?x=1")));
        assert!(selected(&f, &exchange("items", "POST", "/items/3")));
        assert!(!selected(&f, &exchange("items", "PUT", "/items/3")));
        assert!(!selected(&f, &exchange("users", "GET", "/items/3")));
        assert!(!selected(&f, &exchange("items", "GET", "/users/3")));
        assert!(selected(&[], &exchange("x", "GET", "/")));
        assert!("colour=red".parse::<Filter>().is_err());
        assert!("route".parse::<Filter>().is_err());
    }

    #[test]
    fn speeds_and_rates() {
        assert_eq!(parse_speed("max").unwrap(), Pace::Max);
        assert_eq!(parse_speed("2x").unwrap(), Pace::Speed(2.0));
        assert_eq!(parse_speed("0.5").unwrap(), Pace::Speed(0.5));
        assert!(parse_speed("0x").is_err());
        assert!(parse_speed("fast").is_err());
        assert_eq!(parse_rate("50").unwrap(), 50.0);
        assert!(parse_rate("-1").is_err());
    }

    #[test]
    fn pacing() {
        let mut p = Pacer::new(Pace::Rate(10.0));
        assert_eq!(p.due(None), Some(Duration::ZERO));
        assert_eq!(p.due(None), Some(Duration::from_millis(100)));
        let mut s = Pacer::new(Pace::Speed(2.0));
        assert_eq!(
            s.due(Some("2026-11-30T02:41:59.000Z")),
            Some(Duration::ZERO)
        );
        assert_eq!(
            s.due(Some("2026-11-30T02:42:01.000Z")),
            Some(Duration::from_secs(1))
        );
        // Earlier than the previous one: not before it.
        assert_eq!(
            s.due(Some("2026-11-30T02:42:00.000Z")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(s.due(None), None);
    }
}
