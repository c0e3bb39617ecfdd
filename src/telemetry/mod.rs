//! Telemetry: diagnostic logs (`tracing`), the access log, and metrics.
//! `events` is the one place where each request-path event is both logged
//! and counted, so the two never disagree. Labels are route and backend
//! names, never raw paths or user data.

pub mod access;
pub mod events;
pub mod metrics;
pub mod window;

pub use access::{AccessLog, AccessRecord, LogFormat};
pub use events::{DropReason, MirrorErrorKind, Telemetry};
pub use metrics::{Metrics, Role, TargetMetrics};

/// Sets up diagnostic logging on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.event_format(access::DiagnosticJson).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
