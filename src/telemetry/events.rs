//! Request-path events. Each function here writes the access-log line and
//! records the metric for one event, so logs and metrics always agree.

use std::sync::Arc;

use super::access::{AccessLog, AccessRecord};
use super::metrics::{Metrics, Role, TargetMetrics};

/// Why a mirror copy was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `max_in_flight` copies were already in flight.
    Overload,
    /// The request body was larger than `max_body_bytes`.
    BodyTooLarge,
    /// The method is not in the mirror's `methods` list.
    Method,
    /// The client's body ended early or failed, so there is no full copy.
    BodyIncomplete,
    /// Every endpoint of the mirror's backend refused connections lately
    /// (passed over for `eject_for`); one copy per period probes it again.
    Unhealthy,
    /// The shadow memory budget (`limits.shadow_memory`) could not hold
    /// the copy's body.
    Memory,
    /// The copy's queue filled (`mirror::tee::QUEUE_BYTES`): the shadow took
    /// the streamed body slower than the client sent it, so the copy was
    /// abandoned mid-body (its connection closed).
    ShadowSlow,
}

impl DropReason {
    /// Every reason, for series initialised at zero.
    pub const ALL: [DropReason; 7] = [
        DropReason::Overload,
        DropReason::BodyTooLarge,
        DropReason::Method,
        DropReason::BodyIncomplete,
        DropReason::Unhealthy,
        DropReason::Memory,
        DropReason::ShadowSlow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Overload => "overload",
            DropReason::BodyTooLarge => "body_too_large",
            DropReason::Method => "method",
            DropReason::BodyIncomplete => "body_incomplete",
            DropReason::Unhealthy => "backend_unhealthy",
            DropReason::Memory => "memory",
            DropReason::ShadowSlow => "shadow_slow",
        }
    }
}

/// How a mirror copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorErrorKind {
    /// The shadow refused or could not be reached.
    Connect,
    /// The shadow did not answer completely within the mirror timeout.
    Timeout,
    /// The connection was reset or closed mid-exchange.
    Reset,
    /// The shadow answered something that is not valid HTTP.
    Protocol,
    /// The shadow answered 5xx.
    Status5xx,
    /// The shadow answered a gRPC call with a non-zero `grpc-status`.
    GrpcStatus,
}

impl MirrorErrorKind {
    /// Every kind, for series initialised at zero.
    pub const ALL: [MirrorErrorKind; 6] = [
        MirrorErrorKind::Connect,
        MirrorErrorKind::Timeout,
        MirrorErrorKind::Reset,
        MirrorErrorKind::Protocol,
        MirrorErrorKind::Status5xx,
        MirrorErrorKind::GrpcStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MirrorErrorKind::Connect => "connect",
            MirrorErrorKind::Timeout => "timeout",
            MirrorErrorKind::Reset => "reset",
            MirrorErrorKind::Protocol => "protocol",
            MirrorErrorKind::Status5xx => "status_5xx",
            MirrorErrorKind::GrpcStatus => "grpc_status",
        }
    }
}

/// The access log and the metrics, together.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub access: AccessLog,
}

impl Telemetry {
    pub fn new(metrics: Arc<Metrics>, access: AccessLog) -> Self {
        Telemetry { metrics, access }
    }

    /// A request answered by a backend (primary or mirror), or by the proxy
    /// itself on the backend's behalf (502/504).
    pub fn answered(&self, target: &TargetMetrics, record: &AccessRecord<'_>) {
        if let Some(code) = record.status {
            target.answered(code, record.duration_ms / 1000.0);
        }
        self.access.write(record);
    }

    /// A request that matched no route, answered 404 by shadowgate:
    /// counted under route and backend `none` and logged.
    pub fn unrouted(&self, record: &AccessRecord<'_>) {
        self.metrics.unrouted(record.status.unwrap_or(404));
        self.access.write(record);
    }

    /// Creates every mirror drop and error series of `target` at zero, so
    /// that `rate(...)` alerts have a series before the first event.
    pub fn init_mirror_series(metrics: &Metrics, target: &TargetMetrics) {
        for r in DropReason::ALL {
            metrics.touch_dropped(&target.labels.route, &target.labels.backend, r.as_str());
        }
        for k in MirrorErrorKind::ALL {
            metrics.touch_error(&target.labels.route, &target.labels.backend, k.as_str());
        }
    }

    /// A mirror copy that was not sent.
    pub fn mirror_dropped(
        &self,
        target: &TargetMetrics,
        reason: DropReason,
        record: &AccessRecord<'_>,
    ) {
        target.dropped(reason.as_str());
        self.access.write(record);
    }

    /// A mirror copy that failed (the reason is in the record).
    pub fn mirror_failed(
        &self,
        target: &TargetMetrics,
        kind: MirrorErrorKind,
        record: &AccessRecord<'_>,
    ) {
        target.failed(kind.as_str());
        match record.status {
            Some(code) => target.answered(code, record.duration_ms / 1000.0),
            // No answer at all: an error in the windows, with the time it took.
            None => target.window.record(
                std::time::Duration::from_secs_f64((record.duration_ms / 1000.0).max(0.0)),
                true,
            ),
        }
        self.access.write(record);
    }

    /// A gRPC call answered with a non-zero `grpc-status` (in the trailers,
    /// or in the head of a trailers-only answer), whatever the HTTP status:
    /// counted as an error in the windows and in `grpc_errors` by status,
    /// and for a mirror as a mirror error of kind `grpc_status`.
    pub fn grpc_failed(&self, target: &TargetMetrics, grpc_status: u16, record: &AccessRecord<'_>) {
        if let Some(code) = record.status {
            target.answered_as(code, record.duration_ms / 1000.0, true);
        }
        target.grpc_error(grpc_status);
        if target.labels.role == Role::mirror {
            target.failed(MirrorErrorKind::GrpcStatus.as_str());
        }
        self.access.write(record);
    }
}
