//! Promotion operations: judge a route's candidate, promote, step, roll
//! back, and report the state. Used by the admin API and the `auto` mode
//! controller. Each change is persisted, logged with the figures that
//! caused it, counted, and applied as one atomic runtime swap.

use serde::{Deserialize, Serialize};

use super::gates::{judge, Judgement, Verdict};
use crate::config::{Config, PromotionConfig, PromotionMode};
use crate::runtime::switch::{Book, HistoryEntry, Switch};
use crate::runtime::{Route, Runtime, Shared};
use crate::store::Store;
use crate::telemetry::access::rfc3339_now;
use crate::telemetry::metrics::PromotionLabels;
use crate::telemetry::window::WindowSummary;

/// History entries kept per route.
const HISTORY: usize = 100;

/// Why a promotion request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("no route named `{0}`")]
    UnknownRoute(String),
    #[error("route `{route}`: `{to}` is not a mirror of this route (mirrors: {mirrors})")]
    NotAMirror {
        route: String,
        to: String,
        mirrors: String,
    },
    #[error("route `{route}`: the gates do not pass ({})", .judgement.describe())]
    GatesFail { route: String, judgement: Judgement },
    #[error("route `{0}`: already promoted; roll back first")]
    AlreadyPromoted(String),
    #[error("route `{0}`: nothing to roll back")]
    NothingToRollBack(String),
    #[error("the shared store cannot be reached, so the fleet's promotion state cannot change now (no replica switches alone): {0}")]
    StoreUnavailable(String),
    #[error(
        "route `{0}`: another replica changed the promotion state just now; look again and retry"
    )]
    Stale(String),
}

/// `GET /api/v1/routes/{route}/promotion`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromotionStatus {
    pub route: String,
    /// false: the route has no `promotion:` block and is judged by the
    /// documented defaults (`min_requests` 100, the default gates).
    #[serde(default)]
    pub configured: bool,
    pub mode: PromotionMode,
    /// The backend the configuration names as primary.
    pub configured_primary: String,
    /// The backend answering now (the candidate once promoted).
    pub primary: String,
    /// The candidate judged against the baseline.
    pub candidate: String,
    /// `shadowing`, `stepping` or `promoted`.
    pub state: String,
    /// Percent of live traffic the candidate answers.
    pub share: u32,
    pub window_seconds: f64,
    pub verdict: Verdict,
    pub judgement: Judgement,
    /// Automatic promotion paused after an automatic rollback.
    pub auto_held: bool,
    pub history: Vec<HistoryEntry>,
}

fn store_key(route: &str) -> String {
    format!("promotion:{route}")
}

/// Reads the stored switches and re-applies them, saying so when they
/// override what the configuration names.
pub fn load_book(store: &Store, config: &Config) -> Book {
    let mut book = Book {
        version: store.switch_version().unwrap_or(0),
        ..Book::default()
    };
    let keys = store.keys("promotion:").unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read stored promotions; starting from the configuration");
        Vec::new()
    });
    for key in keys {
        let route = key.trim_start_matches("promotion:").to_string();
        match store.get::<Switch>(&key) {
            Ok(Some(s)) => {
                if config.routes.iter().any(|r| r.name == route) {
                    tracing::warn!(
                        route = %route, from = %s.from, to = %s.to, share = s.share, at = %s.at,
                        "stored promotion overrides the configuration: {} answers {}% of this route (the config file names {})",
                        s.to, s.share, s.from
                    );
                    book.switches.insert(route, s);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(route = %route, error = %e, "cannot read stored promotion"),
        }
    }
    book.held = held_routes(store, config);
    book
}

/// Whether automatic promotion is paused after `entry`, the last of a
/// route's history: it is an automatic rollback (any entry after it, which
/// can only be a person's promote or rollback, lifts the pause). The one
/// rule for the book's `held` set, whether it is kept as entries are
/// recorded (`note_hold`) or read back from the store (`held_routes`).
fn holds(entry: &HistoryEntry) -> bool {
    entry.action == "rollback" && entry.trigger == "auto"
}

/// Keeps `held` as `holds` says after `entry`, just recorded for `route`.
fn note_hold(held: &mut std::collections::BTreeSet<String>, route: &str, entry: &HistoryEntry) {
    if holds(entry) {
        held.insert(route.to_string());
    } else {
        held.remove(route);
    }
}

/// The configured routes whose automatic promotion is paused, read from
/// the stored history: every replica of a fleet, whichever leads, and a
/// replica that restarts agree on it. A history that cannot be read holds
/// nothing (logged).
fn held_routes(store: &Store, config: &Config) -> std::collections::BTreeSet<String> {
    let mut held = std::collections::BTreeSet::new();
    for route in &config.routes {
        match store.events::<HistoryEntry>("promotion", &route.name) {
            Ok(history) if history.last().is_some_and(holds) => {
                held.insert(route.name.clone());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(route = %route.name, error = %e, "cannot read the promotion history")
            }
        }
    }
    held
}

/// Shared store: when the fleet's promotion state is newer than this
/// replica's book, reads the switches and applies them (one runtime swap).
/// Returns whether anything was applied. Off the async runtime: it reads
/// the store.
pub fn follow_fleet(shared: &Shared, version: u64) -> bool {
    if shared.book.lock().version == version {
        return false;
    }
    let store = &shared.store;
    let Ok(version) = store.switch_version() else {
        return false;
    };
    let Ok(keys) = store.keys("promotion:") else {
        return false;
    };
    let mut switches = std::collections::BTreeMap::new();
    for key in keys {
        match store.get::<Switch>(&key) {
            Ok(Some(s)) => {
                switches.insert(key.trim_start_matches("promotion:").to_string(), s);
            }
            Ok(None) => {}
            Err(_) => return false,
        }
    }
    let held = held_routes(store, &shared.runtime.load().config);
    {
        let mut book = shared.book.lock();
        if book.version >= version {
            return false;
        }
        if book.switches != switches {
            tracing::warn!(
                version,
                "fleet: promotion state changed on another replica; applying it"
            );
        }
        book.switches = switches;
        book.held = held;
        book.version = version;
    }
    shared.rebuild();
    true
}

/// The promotion settings of a route: its `promotion:` block, or (for a
/// manual promotion of a route without one) the documented defaults —
/// `min_requests` 100 and the default gates — for the first mirror.
fn settings(route: &Route) -> Option<PromotionConfig> {
    if let Some(p) = &route.config.promotion {
        return Some(p.clone());
    }
    let first = route.config.mirrors.first()?;
    Some(PromotionConfig::defaults(first.backend.clone()))
}

fn summary_of(
    shared: &Shared,
    route: &Route,
    backend: &str,
    primary_role: bool,
    cfg: &PromotionConfig,
) -> WindowSummary {
    let primary_targets =
        std::iter::once(&route.primary_metrics).chain(route.split.iter().map(|(_, m, _)| m));
    let found = if primary_role {
        primary_targets
            .map(|m| &**m)
            .find(|m| m.labels.backend == backend)
    } else {
        route
            .mirrors
            .iter()
            .map(|m| &m.metrics)
            .find(|m| m.labels.backend == backend)
    };
    let local = found
        .map(|m| m.window.summary(cfg.window))
        .unwrap_or_default();
    // In a fleet: the other replicas' traffic too.
    let role = if primary_role { "primary" } else { "mirror" };
    let key = super::fleet::window_key(&route.name, role, backend, cfg.window);
    super::fleet::with_fleet(shared, local, &key)
}

/// Judges the candidate of `route` against its baseline, in its current state.
fn judge_route(
    shared: &Shared,
    route: &Route,
    switch: Option<&Switch>,
    cfg: &PromotionConfig,
) -> Judgement {
    // `mirror`: the mirror whose comparisons judge the pair.
    let (baseline, candidate, mirror) = match switch {
        // Promoted: the new primary against the old, now a mirror.
        Some(s) if s.share >= 100 => (
            summary_of(shared, route, &s.from, false, cfg),
            summary_of(shared, route, &s.to, true, cfg),
            s.from.as_str(),
        ),
        // Stepping: both answer live traffic; the candidate is still mirrored too.
        Some(s) => (
            summary_of(shared, route, &s.from, true, cfg),
            summary_of(shared, route, &s.to, true, cfg),
            s.to.as_str(),
        ),
        None => (
            summary_of(shared, route, &route.config.backend, true, cfg),
            summary_of(shared, route, &cfg.mirror, false, cfg),
            cfg.mirror.as_str(),
        ),
    };
    let compare = summary_of(shared, route, mirror, false, cfg);
    let compares = route
        .config
        .mirrors
        .iter()
        .any(|m| m.backend == mirror && m.compare);
    judge(
        cfg,
        &baseline,
        &candidate,
        compare.compared,
        compare.different,
        compares,
    )
}

fn find<'a>(rt: &'a Runtime, name: &str) -> Result<&'a Route, PromoteError> {
    rt.routes
        .iter()
        .find(|r| &*r.name == name)
        .ok_or_else(|| PromoteError::UnknownRoute(name.to_string()))
}

/// The promotion state of `route`.
pub fn status(shared: &Shared, route: &str) -> Result<PromotionStatus, PromoteError> {
    let rt = shared.runtime.load();
    let r = find(&rt, route)?;
    let book = shared.book.lock();
    let switch = book.switches.get(route);
    let cfg = settings(r).ok_or_else(|| PromoteError::NotAMirror {
        route: route.to_string(),
        to: "(none)".into(),
        mirrors: "none".into(),
    })?;
    let judgement = judge_route(shared, r, switch, &cfg);
    let configured = rt
        .config
        .routes
        .iter()
        .find(|c| c.name == route)
        .map(|c| c.backend.clone())
        .unwrap_or_default();
    let (state, share, candidate) = match switch {
        Some(s) if s.share >= 100 => ("promoted", 100, s.to.clone()),
        Some(s) => ("stepping", s.share, s.to.clone()),
        None => ("shadowing", 0, cfg.mirror.clone()),
    };
    Ok(PromotionStatus {
        route: route.to_string(),
        configured: r.config.promotion.is_some(),
        mode: cfg.mode,
        configured_primary: configured,
        primary: r.primary.name().to_string(),
        candidate,
        state: state.into(),
        share,
        window_seconds: cfg.window.as_secs_f64(),
        verdict: judgement.verdict,
        judgement,
        auto_held: book.held.contains(route),
        history: shared.store.events("promotion", route).unwrap_or_default(),
    })
}

/// Persists a switch and its history entry, then counts and logs it. With
/// a shared store the switch is refused unless the fleet's state was
/// written (no replica switches alone), and the book takes the new version.
fn record(
    shared: &Shared,
    route: &str,
    entry: &HistoryEntry,
    switch: Option<&Switch>,
    book: &mut Book,
) -> Result<(), PromoteError> {
    let store = &shared.store;
    let expected = store.is_shared().then_some(book.version);
    match store.record_switch(
        &store_key(route),
        switch,
        ("promotion", route, entry, HISTORY),
        expected,
    ) {
        Ok(Ok(version)) => book.version = version,
        Ok(Err(_)) => return Err(PromoteError::Stale(route.to_string())),
        Err(e) if store.is_shared() => {
            return Err(PromoteError::StoreUnavailable(e.to_string()));
        }
        Err(e) => {
            tracing::error!(route = %route, error = %e, "cannot persist the promotion state; it holds until restart");
        }
    }
    shared
        .telemetry
        .metrics
        .promotions
        .get_or_create(&PromotionLabels {
            route: route.to_string(),
            action: entry.action.clone(),
            trigger: entry.trigger.clone(),
        })
        .inc();
    tracing::warn!(
        route = %route, action = %entry.action, from = %entry.from, to = %entry.to, share = entry.share,
        trigger = %entry.trigger, forced = entry.forced, figures = %entry.reason,
        "promotion: {} {} -> {} ({}% of traffic)", entry.action, entry.from, entry.to, entry.share
    );
    Ok(())
}

/// Promotes `to` (default: the configured candidate) on `route`. Refused
/// unless the gates pass or `force` is set. With `steps`, the first step
/// starts; otherwise the switch is complete at once.
pub fn promote(
    shared: &Shared,
    route: &str,
    to: Option<&str>,
    force: bool,
    trigger: &str,
) -> Result<PromotionStatus, PromoteError> {
    {
        let rt = shared.runtime.load();
        let r = find(&rt, route)?;
        let mut book = shared.book.lock();
        if book.switches.get(route).is_some_and(|s| s.share >= 100) {
            return Err(PromoteError::AlreadyPromoted(route.to_string()));
        }
        let mut cfg = settings(r).ok_or_else(|| PromoteError::NotAMirror {
            route: route.to_string(),
            to: to.unwrap_or("(none)").to_string(),
            mirrors: "none".into(),
        })?;
        let to = to.map(str::to_string).unwrap_or_else(|| cfg.mirror.clone());
        if !r.config.mirrors.iter().any(|m| m.backend == to)
            && book.switches.get(route).is_none_or(|s| s.to != to)
        {
            return Err(PromoteError::NotAMirror {
                route: route.to_string(),
                to,
                mirrors: r
                    .config
                    .mirrors
                    .iter()
                    .map(|m| m.backend.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        cfg.mirror = to.clone();
        let current = book.switches.get(route).cloned();
        let judgement = judge_route(shared, r, current.as_ref(), &cfg);
        if judgement.verdict != Verdict::Ready && !force {
            return Err(PromoteError::GatesFail {
                route: route.to_string(),
                judgement,
            });
        }
        let from = current
            .as_ref()
            .map(|s| s.from.clone())
            .unwrap_or_else(|| r.config.backend.clone());
        // Manual promotion completes at once; auto mode walks the steps.
        let share = match (&current, trigger) {
            (Some(s), "auto") => next_step(&cfg.steps, s.share),
            (None, "auto") => cfg.steps.first().copied().unwrap_or(100),
            _ => 100,
        };
        let switch = Switch {
            from: from.clone(),
            to: to.clone(),
            share,
            at: rfc3339_now(),
            trigger: trigger.to_string(),
        };
        let entry = HistoryEntry {
            at: switch.at.clone(),
            action: if current.is_some() {
                "step".into()
            } else {
                "promote".into()
            },
            from,
            to,
            share,
            trigger: trigger.to_string(),
            forced: force && judgement.verdict != Verdict::Ready,
            reason: judgement.describe(),
        };
        // Recorded under the book's lock: `status` reads the state and the
        // history under it too, so nobody sees one without the other.
        record(shared, route, &entry, Some(&switch), &mut book)?;
        book.switches.insert(route.to_string(), switch.clone());
        note_hold(&mut book.held, route, &entry);
        drop(book);
    }
    shared.rebuild();
    status(shared, route)
}

fn next_step(steps: &[u32], share: u32) -> u32 {
    steps.iter().copied().find(|s| *s > share).unwrap_or(100)
}

/// Rolls `route` back to the configured primary in one step.
pub fn rollback(
    shared: &Shared,
    route: &str,
    trigger: &str,
    reason: &str,
) -> Result<PromotionStatus, PromoteError> {
    {
        let rt = shared.runtime.load();
        find(&rt, route)?;
        let mut book = shared.book.lock();
        let Some(switch) = book.switches.get(route).cloned() else {
            return Err(PromoteError::NothingToRollBack(route.to_string()));
        };
        let entry = HistoryEntry {
            at: rfc3339_now(),
            action: "rollback".into(),
            from: switch.to,
            to: switch.from,
            share: 0,
            trigger: trigger.to_string(),
            forced: false,
            reason: reason.to_string(),
        };
        // Under the book's lock, as in `promote`.
        record(shared, route, &entry, None, &mut book)?;
        book.switches.remove(route);
        note_hold(&mut book.held, route, &entry);
        drop(book);
    }
    shared.rebuild();
    status(shared, route)
}

/// One pass of `auto` mode over every route: promote when the gates pass,
/// advance steps after `step_interval`, roll back when a gate fails.
pub fn auto_pass(
    shared: &Shared,
    now: tokio::time::Instant,
    last: &mut std::collections::HashMap<String, tokio::time::Instant>,
) {
    let rt = shared.runtime.load_full();
    for r in &rt.routes {
        let Some(cfg) = r
            .config
            .promotion
            .as_ref()
            .filter(|p| p.mode == PromotionMode::Auto)
        else {
            continue;
        };
        let name = r.name.to_string();
        if last
            .get(&name)
            .is_some_and(|t| now.duration_since(*t) < cfg.evaluate_every)
        {
            continue;
        }
        last.insert(name.clone(), now);
        let (switch, held) = {
            let book = shared.book.lock();
            (book.switches.get(&name).cloned(), book.held.contains(&name))
        };
        let judgement = judge_route(shared, r, switch.as_ref(), cfg);
        match (&switch, judgement.verdict) {
            (Some(_), Verdict::NotReady) => {
                let _ = rollback(shared, &name, "auto", &judgement.describe());
            }
            (None, Verdict::Ready) if !held => {
                let _ = promote(shared, &name, None, false, "auto");
            }
            (Some(s), Verdict::Ready) if s.share < 100 => {
                let since = chrono_like_elapsed(&s.at);
                if since.is_none_or(|d| d >= cfg.step_interval) {
                    let _ = promote(shared, &name, Some(&s.to), false, "auto");
                }
            }
            _ => {}
        }
    }
}

/// Time since an RFC 3339 timestamp written by `rfc3339_now`.
fn chrono_like_elapsed(at: &str) -> Option<std::time::Duration> {
    let then = parse_rfc3339(at)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    now.checked_sub(then)
}

/// Time since the epoch of an RFC 3339 timestamp (`humantime`).
fn parse_rfc3339(at: &str) -> Option<std::time::Duration> {
    humantime::parse_rfc3339(at)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::access::rfc3339;

    fn entry(action: &str, trigger: &str) -> HistoryEntry {
        HistoryEntry {
            at: rfc3339(1_795_317_463, 0),
            action: action.into(),
            from: "v1".into(),
            to: "v2".into(),
            share: 100,
            trigger: trigger.into(),
            forced: false,
            reason: String::new(),
        }
    }

    #[test]
    fn only_an_automatic_rollback_as_the_last_entry_holds() {
        let auto_back = entry("rollback", "auto");
        let last_holds = |history: &[HistoryEntry]| history.last().is_some_and(holds);
        assert!(!last_holds(&[]));
        assert!(last_holds(&[entry("promote", "auto"), auto_back.clone()]));
        for after in [
            entry("promote", "manual"),
            entry("rollback", "manual"),
            entry("step", "auto"),
        ] {
            assert!(
                !last_holds(&[auto_back.clone(), after.clone()]),
                "{after:?}"
            );
        }
        assert!(!last_holds(&[entry("promote", "auto")]));
        // Kept as entries are recorded, by the same rule.
        let mut held = std::collections::BTreeSet::new();
        note_hold(&mut held, "r", &auto_back);
        assert!(held.contains("r"));
        note_hold(&mut held, "r", &entry("promote", "manual"));
        assert!(held.is_empty());
    }

    #[test]
    fn timestamps_round_trip() {
        for secs in [0u64, 951_782_400, 1_795_317_463] {
            let text = rfc3339(secs, 250);
            assert_eq!(
                parse_rfc3339(&text),
                Some(std::time::Duration::from_millis(secs * 1000 + 250)),
                "{text}"
            );
        }
    }

    #[test]
    fn steps_advance_to_100() {
        assert_eq!(next_step(&[10, 50, 100], 10), 50);
        assert_eq!(next_step(&[10, 50, 100], 50), 100);
        assert_eq!(next_step(&[], 0), 100);
    }
}
