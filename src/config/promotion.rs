//! A route's `promotion:` block: the candidate mirror, the judging window,
//! the gates and their limits, `manual` or `auto` mode and the steps.

use std::time::Duration;

use super::check::Check;
use super::model::{GateLimit, PromotionConfig, PromotionMode};
use super::raw::{RawGate, RawPromotion, RawRoute};

pub(super) fn promotion(
    c: &mut Check,
    path: &str,
    raw: &RawPromotion,
    route: &RawRoute,
) -> Option<PromotionConfig> {
    let mirror = match &raw.mirror {
        Some(m) => m.clone(),
        None => match route.mirrors.first() {
            Some(m) => m.backend.clone(),
            None => {
                c.fail(path, "needs a mirror to promote; the route has none");
                return None;
            }
        },
    };
    if !route.mirrors.iter().any(|m| m.backend == mirror) {
        c.fail(
            format!("{path}.mirror"),
            format!("`{mirror}` is not a mirror of this route"),
        );
    }
    let window = c.duration(
        &format!("{path}.window"),
        &raw.window,
        Duration::from_secs(600),
    );
    if window > Duration::from_secs(900) || window < Duration::from_secs(10) {
        c.fail(format!("{path}.window"), "must be between 10s and 15m");
    }
    let none = match raw.gates.as_deref() {
        None | Some("default") => false,
        Some("none") => true,
        Some(other) => {
            c.fail(
                format!("{path}.gates"),
                format!("`{other}` is not one of: default, none"),
            );
            false
        }
    };
    let mut gate = |key: &str, value: &Option<RawGate>| match value {
        None if none => GateLimit::Off,
        None => GateLimit::Default,
        Some(RawGate::Word(w)) if w == "off" => GateLimit::Off,
        Some(RawGate::Limit(v)) if v.is_finite() && *v >= 0.0 => {
            if none {
                c.fail(
                    format!("{path}.{key}"),
                    "is set, but `gates: none` turns every gate off; remove one of them",
                );
            }
            GateLimit::Set(*v)
        }
        Some(_) => {
            c.fail(
                format!("{path}.{key}"),
                "must be a number of 0 or more, or `off`",
            );
            GateLimit::Off
        }
    };
    let max_error_rate_delta = gate("max_error_rate_delta", &raw.max_error_rate_delta);
    let max_p99_ratio = gate("max_p99_ratio", &raw.max_p99_ratio);
    let max_diff_rate = gate("max_diff_rate", &raw.max_diff_rate);
    let mode = match raw.mode.as_deref() {
        None | Some("manual") => PromotionMode::Manual,
        Some("auto") => PromotionMode::Auto,
        Some(other) => {
            c.fail(
                format!("{path}.mode"),
                format!("`{other}` is not one of: manual, auto"),
            );
            PromotionMode::Manual
        }
    };
    let steps = raw.steps.clone().unwrap_or_default();
    if !steps.is_empty()
        && (steps.windows(2).any(|w| w[0] >= w[1])
            || steps.iter().any(|s| *s == 0 || *s > 100)
            || steps.last() != Some(&100))
    {
        c.fail(
            format!("{path}.steps"),
            "must rise strictly from above 0 and end at 100, e.g. [10, 50, 100]",
        );
    }
    Some(PromotionConfig {
        mirror,
        window,
        min_requests: raw.min_requests.unwrap_or(100),
        max_error_rate_delta,
        max_p99_ratio,
        p99_slack: c.duration(
            &format!("{path}.p99_slack"),
            &raw.p99_slack,
            super::model::DEFAULT_P99_SLACK,
        ),
        max_diff_rate,
        mode,
        steps,
        step_interval: c.duration(
            &format!("{path}.step_interval"),
            &raw.step_interval,
            Duration::from_secs(300),
        ),
        evaluate_every: c.duration(
            &format!("{path}.evaluate_every"),
            &raw.evaluate_every,
            Duration::from_secs(5),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::{checked, raw};

    fn shop(promotion: &str) -> RawRoute {
        raw(&format!(
            "name: shop\nbackend: v1\nmirrors: [{{ backend: v2 }}]\npromotion:\n{promotion}"
        ))
    }

    #[test]
    fn a_promotion_block_with_its_gates() {
        let route = shop("  mode: auto\n  window: 1m\n  max_p99_ratio: 1.5\n  p99_slack: 5ms\n  max_diff_rate: off\n  steps: [10, 50, 100]\n");
        let (p, errors) = checked(|c| {
            promotion(
                c,
                "routes[0].promotion",
                route.promotion.as_ref().unwrap(),
                &route,
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        let p = p.expect("promotion");
        assert_eq!(p.mirror, "v2");
        assert_eq!(p.mode, PromotionMode::Auto);
        assert_eq!(p.window, Duration::from_secs(60));
        assert_eq!(p.p99_slack, Duration::from_millis(5));
        assert_eq!(p.max_p99_ratio, GateLimit::Set(1.5));
        assert_eq!(p.max_diff_rate, GateLimit::Off);
        assert_eq!(p.max_error_rate_delta, GateLimit::Default);
        assert_eq!(p.steps, [10, 50, 100]);
    }

    #[test]
    fn bad_promotions_are_refused_with_their_key_path() {
        let route = shop("  mirror: v3\n  window: 1h\n  gates: none\n  max_p99_ratio: 2\n  mode: yolo\n  steps: [50, 10]\n");
        let (_, errors) = checked(|c| {
            promotion(
                c,
                "routes[0].promotion",
                route.promotion.as_ref().unwrap(),
                &route,
            )
        });
        assert_eq!(
            errors,
            [
                "routes[0].promotion.mirror: `v3` is not a mirror of this route",
                "routes[0].promotion.window: must be between 10s and 15m",
                "routes[0].promotion.max_p99_ratio: is set, but `gates: none` turns every gate off; remove one of them",
                "routes[0].promotion.mode: `yolo` is not one of: manual, auto",
                "routes[0].promotion.steps: must rise strictly from above 0 and end at 100, e.g. [10, 50, 100]",
            ]
        );
        let bare: RawRoute = raw("name: shop\nbackend: v1\npromotion: {}\n");
        let (p, errors) = checked(|c| {
            promotion(
                c,
                "routes[0].promotion",
                bare.promotion.as_ref().unwrap(),
                &bare,
            )
        });
        assert!(p.is_none());
        assert_eq!(
            errors,
            ["routes[0].promotion: needs a mirror to promote; the route has none"]
        );
    }
}
