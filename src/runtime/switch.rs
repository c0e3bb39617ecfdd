//! The switch: who answers a route's traffic. A promotion makes the mirror
//! the primary and the old primary a mirror of the route (a reverse
//! shadow), so comparison goes on and a rollback is one swap back. A
//! progressive promotion first gives the candidate a share of live traffic.
//!
//! Switches live in the `Book`, are applied when a runtime is built (so a
//! switch is one atomic runtime swap), and are persisted in the store so
//! they survive a restart.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{Config, RouteConfig};

/// A route whose traffic has moved (fully or partly) to a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Switch {
    /// The primary named by the configuration.
    pub from: String,
    /// The candidate (a mirror in the configuration).
    pub to: String,
    /// Percent of live traffic answered by `to`; 100 = promoted.
    pub share: u32,
    /// When this switch (or its latest step) happened, RFC 3339.
    pub at: String,
    /// `manual` or `auto`.
    pub trigger: String,
}

/// One promotion-history entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: String,
    /// `promote`, `step`, `rollback`.
    pub action: String,
    pub from: String,
    pub to: String,
    pub share: u32,
    pub trigger: String,
    pub forced: bool,
    /// The gate figures that caused or accompanied it.
    pub reason: String,
}

/// The switches in force, by route.
#[derive(Debug, Default, Clone)]
pub struct Book {
    pub switches: BTreeMap<String, Switch>,
    /// Routes whose automatic promotion is paused after an automatic
    /// rollback, until a manual promote or rollback.
    pub held: BTreeSet<String>,
    /// With a shared store: the fleet's promotion-state version these
    /// switches are (0 with a local store).
    pub version: u64,
}

impl Book {
    /// The routes as they serve now: the configuration with the switches applied.
    /// A switch that no longer fits the configuration (the candidate is no
    /// longer a mirror of the route) is ignored, with a warning.
    pub fn effective_routes(&self, config: &Config) -> Vec<RouteConfig> {
        config
            .routes
            .iter()
            .map(|r| match self.switches.get(&r.name) {
                Some(s) => apply(r, s).unwrap_or_else(|| {
                    tracing::warn!(route = %r.name, to = %s.to, from = %s.from,
                        "stored promotion no longer fits the configuration; ignoring it");
                    r.clone()
                }),
                None => r.clone(),
            })
            .collect()
    }
}

fn apply(route: &RouteConfig, switch: &Switch) -> Option<RouteConfig> {
    if route.backend != switch.from || !route.mirrors.iter().any(|m| m.backend == switch.to) {
        return None;
    }
    let mut r = route.clone();
    if switch.share >= 100 {
        r.backend = switch.to.clone();
        r.split.clear();
        for m in &mut r.mirrors {
            if m.backend == switch.to {
                m.backend = switch.from.clone();
            }
        }
    } else {
        r.split = vec![
            (switch.to.clone(), switch.share),
            (switch.from.clone(), 100 - switch.share),
        ];
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml;

    #[test]
    fn promotion_swaps_primary_and_mirror_and_steps_split() {
        let c = from_yaml(
            "t",
            "backends: { v1: { endpoints: [\"127.0.0.1:1\"] }, v2: { endpoints: [\"127.0.0.1:2\"] }, v3: { endpoints: [\"127.0.0.1:3\"] } }\n\
             routes: [{ name: r, backend: v1, mirrors: [{ backend: v2, percent: 50 }, { backend: v3 }] }, { name: other, backend: v1 }]\n",
        )
        .unwrap();
        let mut book = Book::default();
        let switch = |share| Switch {
            from: "v1".into(),
            to: "v2".into(),
            share,
            at: String::new(),
            trigger: "manual".into(),
        };
        book.switches.insert("r".into(), switch(100));
        let routes = book.effective_routes(&c);
        assert_eq!(routes[0].backend, "v2");
        assert_eq!(
            routes[0].mirrors[0].backend, "v1",
            "the old primary becomes a mirror"
        );
        assert_eq!(
            routes[0].mirrors[0].percent, 50.0,
            "with the promoted mirror's settings"
        );
        assert_eq!(routes[0].mirrors[1].backend, "v3");
        assert_eq!(routes[1].backend, "v1", "other routes are untouched");

        book.switches.insert("r".into(), switch(10));
        let routes = book.effective_routes(&c);
        assert_eq!(routes[0].backend, "v1");
        assert_eq!(
            routes[0].split,
            vec![("v2".to_string(), 10), ("v1".to_string(), 90)]
        );

        // A switch that no longer fits is ignored.
        book.switches.insert("other".into(), switch(100));
        assert_eq!(book.effective_routes(&c)[1].backend, "v1");
    }
}
