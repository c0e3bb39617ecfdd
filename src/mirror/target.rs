//! The mirrors of a route as the runtime built them for one configuration
//! generation: each with its backend, metrics, in-flight bound and byte
//! budget (`Mirror`), and the borrowed view that admission takes of a
//! route's shadows (`RouteShadows`).

use std::sync::Arc;

use super::bound::InFlightBound;
use crate::config::MirrorConfig;
use crate::memory::MemoryBudget;
use crate::telemetry::TargetMetrics;
use crate::upstream::Backend;

/// A mirror of a route, with its bound on copies in flight.
#[derive(Debug)]
pub struct Mirror {
    pub route: Arc<str>,
    pub config: MirrorConfig,
    pub backend: Arc<Backend>,
    pub metrics: TargetMetrics,
    /// Permits for copies in flight, shared by every generation of this
    /// mirror (route, backend, role); `try_acquire` failing means overload.
    pub in_flight: Arc<InFlightBound>,
    /// The byte budget that body copies and captures are reserved from.
    pub memory: Arc<MemoryBudget>,
}

/// A route's shadows, as admission sees them.
#[derive(Debug, Clone, Copy)]
pub struct RouteShadows<'a> {
    pub mirrors: &'a [Arc<Mirror>],
    /// The secondary (noise learning), when configured.
    pub secondary: Option<&'a Arc<Mirror>>,
    /// Whether the route splits live traffic between answerers.
    pub splits: bool,
}
