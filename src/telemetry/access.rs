//! The access log: one line per request and per mirror, written to stdout
//! by a dedicated thread so no request ever waits on the terminal or a pipe.
//! When the writer falls behind, lines are dropped and counted rather than
//! queued without bound.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// One JSON object per line (for machines).
    #[default]
    Json,
    /// Plain words (for people).
    Text,
}

/// One access-log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub route: &'a str,
    pub backend: &'a str,
    /// `primary` or `mirror` (or `secondary`).
    pub role: &'a str,
    pub method: &'a str,
    /// The authority the client addressed (Host or `:authority`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<&'a str>,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub bytes: u64,
    pub duration_ms: f64,
    pub request_id: &'a str,
    /// The W3C trace id of the request's `traceparent`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// The client's address (the connection's peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<std::net::SocketAddr>,
    /// The endpoint (`host:port`) that answered or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

#[derive(Serialize)]
struct LogLine<'a> {
    time: String,
    #[serde(flatten)]
    record: &'a AccessRecord<'a>,
}

/// Handle to the access log; cheap to share.
#[derive(Debug)]
pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    /// Whether lines are written; a reload turns it on and off
    /// (`access_log:`), the writer thread stays.
    on: std::sync::atomic::AtomicBool,
    format: LogFormat,
    dropped: Counter,
}

impl AccessLog {
    /// An access log writing to stdout, or a disabled one (which
    /// [`AccessLog::set_enabled`] may turn on later).
    pub fn new(enabled: bool, format: LogFormat, dropped: Counter) -> Self {
        let tx = {
            let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || {
                    // Lines are batched while more are queued; the stdout lock
                    // is held per batch only, so other writers (the demo's
                    // sample apps) interleave whole lines.
                    let mut batch = Vec::with_capacity(64 * 1024);
                    while let Ok(line) = rx.recv() {
                        batch.extend_from_slice(&line);
                        while batch.len() < 64 * 1024 {
                            match rx.try_recv() {
                                Ok(more) => batch.extend_from_slice(&more),
                                Err(_) => break,
                            }
                        }
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&batch);
                        let _ = out.flush();
                        batch.clear();
                    }
                });
            spawned.ok().map(|_| tx)
        };
        AccessLog {
            tx,
            on: std::sync::atomic::AtomicBool::new(enabled),
            format,
            dropped,
        }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some() && self.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns writing on or off (on reload).
    pub fn set_enabled(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues one line.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(tx) = &self.tx else { return };
        if !self.on.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let line = match self.format {
            LogFormat::Json => {
                let mut buf = Vec::with_capacity(256);
                let line = LogLine {
                    time: rfc3339_now(),
                    record,
                };
                if serde_json::to_writer(&mut buf, &line).is_err() {
                    return;
                }
                buf.push(b'\n');
                buf
            }
            LogFormat::Text => {
                let status = record
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into());
                let mut s = format!(
                    "{} {:<7} {} -> {} {} {} {} {}B {:.1}ms id={}",
                    rfc3339_now(),
                    record.role,
                    record.route,
                    record.backend,
                    record.method,
                    record.path,
                    status,
                    record.bytes,
                    record.duration_ms,
                    record.request_id
                );
                if let Some(a) = record.authority {
                    s.push_str(" authority=");
                    s.push_str(a);
                }
                if let Some(c) = record.client {
                    s.push_str(&format!(" client={c}"));
                }
                if let Some(u) = record.upstream {
                    s.push_str(" upstream=");
                    s.push_str(u);
                }
                if let Some(t) = record.trace_id {
                    s.push_str(" trace_id=");
                    s.push_str(t);
                }
                if let Some(r) = record.reason {
                    s.push_str(" reason=");
                    s.push_str(r);
                }
                s.push('\n');
                s.into_bytes()
            }
        };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// The diagnostic log's JSON lines, shaped like the access log's: the
/// same `time` key and format, then `level`, `target`, and the event's
/// fields as JSON values (text once, never a quoted Debug string of text).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiagnosticJson;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for DiagnosticJson
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        let mut line = String::with_capacity(256);
        line.push_str("{\"time\":\"");
        line.push_str(&rfc3339_now());
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push_str("\",\"target\":");
        line.push_str(&serde_json::Value::from(meta.target()).to_string());
        for (k, v) in fields.0 {
            line.push(',');
            line.push_str(&serde_json::Value::from(k).to_string());
            line.push(':');
            line.push_str(&v.to_string());
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields as JSON values.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// The current UTC time as `2026-11-22T03:17:43.123Z`.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_millis())
}

/// Last second `humantime` formats (9999-12-31T23:59:59Z); later times
/// are written as that second rather than failing.
const LAST_FORMATTED_SECOND: u64 = 253_402_300_799;

/// Formats seconds since the epoch (UTC) with milliseconds
/// (`2026-11-22T03:17:43.123Z`, by `humantime`).
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let since_epoch = Duration::from_secs(secs.min(LAST_FORMATTED_SECOND))
        + Duration::from_millis(u64::from(millis.min(999)));
    let at = UNIX_EPOCH.checked_add(since_epoch).unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_317_463, 123), "2026-11-22T03:17:43.123Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    }
}
