//! Noise cancellation, after Twitter's Diffy.
//!
//! Some fields differ between any two responses, even from two instances of
//! the same version (timestamps, random ids, ordering of hash maps). A
//! "secondary" instance of the primary's version shows how often each field
//! differs by itself: that is the noise. A field only counts as a real
//! difference of the shadow when its primary-vs-shadow difference rate
//! stands out clearly from its primary-vs-secondary rate.
//!
//! Diffy judges a field with the counts of raw differences `R` (primary vs
//! candidate) and noise differences `N` (primary vs secondary) over the
//! endpoint's `T` requests, each request having gone to all three:
//!
//! - the *absolute* difference is how many requests, as a percentage of
//!   all of them, separate the two counts: `|R − N| / T × 100`;
//! - the *relative* difference is that gap as a percentage of both counts
//!   together: `|R − N| / (R + N) × 100`;
//! - the field is kept (a real difference) only if `R > N`, the relative
//!   difference is above the relative threshold (default 20) and the
//!   absolute difference is above the absolute threshold (default 0.03).
//!
//! Here the secondary may see a different number of requests than the
//! shadow, so the same formulas are applied to rates instead of counts:
//! with `r = R / T_shadow` and `n = N / T_secondary`, absolute is
//! `|r − n| × 100` and relative is `|r − n| / (r + n) × 100`. When both
//! totals are equal this is exactly Diffy's arithmetic.
//!
//! Like Diffy, a rare difference can be judged noise even when the
//! secondary never differed there: with the default absolute threshold a
//! field must differ in more than 0.03 % of the requests to count. Without
//! (enough) secondary data nothing is noise.

use serde::{Deserialize, Serialize};

/// Thresholds of the noise filter, in percent like Diffy's flags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NoiseThresholds {
    /// Minimum relative difference, percent (Diffy's default 20).
    pub relative: f64,
    /// Minimum absolute difference, percentage points (Diffy's default
    /// 0.03).
    pub absolute: f64,
    /// Secondary comparisons an endpoint needs before its noise data is
    /// used at all; before that every difference is real.
    pub min_secondary: u64,
}

impl Default for NoiseThresholds {
    fn default() -> Self {
        NoiseThresholds {
            relative: 20.0,
            absolute: 0.03,
            min_secondary: 10,
        }
    }
}

/// How often something differed: `differences` out of `total` comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rate {
    pub differences: u64,
    pub total: u64,
}

impl Rate {
    pub fn new(differences: u64, total: u64) -> Self {
        Rate { differences, total }
    }

    /// The fraction (0 when there were no comparisons).
    pub fn fraction(self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.differences as f64 / self.total as f64
        }
    }
}

/// Diffy's absolute difference in percentage points: `|r − n| × 100`.
pub fn absolute_difference(raw: Rate, noise: Rate) -> f64 {
    (raw.fraction() - noise.fraction()).abs() * 100.0
}

/// Diffy's relative difference in percent: `|r − n| / (r + n) × 100`
/// (0 when both rates are 0).
pub fn relative_difference(raw: Rate, noise: Rate) -> f64 {
    let (r, n) = (raw.fraction(), noise.fraction());
    if r + n == 0.0 {
        0.0
    } else {
        (r - n).abs() / (r + n) * 100.0
    }
}

/// Whether a field's differences are noise: `raw` is the primary-vs-shadow
/// rate at the field, `noise` the primary-vs-secondary one (`None` when
/// there is no secondary). A field with no or too little noise data
/// (`noise.total < min_secondary`) is never noise.
pub fn is_noise(raw: Rate, noise: Option<Rate>, thresholds: &NoiseThresholds) -> bool {
    let Some(noise) = noise else {
        return false;
    };
    if noise.total == 0 || noise.total < thresholds.min_secondary {
        return false;
    }
    let real = raw.fraction() > noise.fraction()
        && relative_difference(raw, noise) > thresholds.relative
        && absolute_difference(raw, noise) > thresholds.absolute;
    !real
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas() {
        // Diffy's own arithmetic with a shared total of 1000.
        let raw = Rate::new(300, 1000);
        let noise = Rate::new(100, 1000);
        assert!((absolute_difference(raw, noise) - 20.0).abs() < 1e-9);
        assert!((relative_difference(raw, noise) - 50.0).abs() < 1e-9);
        // Rates, not counts, when totals differ: 30 % vs 10 %.
        let noise = Rate::new(10, 100);
        assert!((absolute_difference(raw, noise) - 20.0).abs() < 1e-9);
        assert!((relative_difference(raw, noise) - 50.0).abs() < 1e-9);
        assert_eq!(relative_difference(Rate::new(0, 10), Rate::new(0, 10)), 0.0);
        assert_eq!(absolute_difference(Rate::new(0, 0), Rate::new(0, 0)), 0.0);
    }

    #[test]
    fn noise_table() {
        let t = NoiseThresholds::default();
        let cases: &[(&str, Rate, Option<Rate>, bool)] = &[
            ("no secondary: real", Rate::new(1, 1000), None, false),
            (
                "too little secondary data: real",
                Rate::new(5, 10),
                Some(Rate::new(5, 9)),
                false,
            ),
            (
                "empty secondary: real",
                Rate::new(5, 10),
                Some(Rate::new(0, 0)),
                false,
            ),
            // Relative threshold (20 %): r = 59 %, n = 40 % → 19.2 %: below.
            (
                "relative below: noise",
                Rate::new(59, 100),
                Some(Rate::new(40, 100)),
                true,
            ),
            // r = 61 %, n = 40 % → 20.79 %: above.
            (
                "relative above: real",
                Rate::new(61, 100),
                Some(Rate::new(40, 100)),
                false,
            ),
            // Absolute threshold (0.03 points): over 100 000 requests.
            // 29 vs 0 differences: 0.029 points, relative 100 %: below.
            (
                "absolute below: noise",
                Rate::new(29, 100_000),
                Some(Rate::new(0, 100_000)),
                true,
            ),
            (
                "absolute above: real",
                Rate::new(31, 100_000),
                Some(Rate::new(0, 100_000)),
                false,
            ),
            // Shadow differs less often than the secondary: noise.
            (
                "raw below noise: noise",
                Rate::new(10, 100),
                Some(Rate::new(50, 100)),
                true,
            ),
            (
                "raw equal to noise: noise",
                Rate::new(50, 100),
                Some(Rate::new(50, 100)),
                true,
            ),
            // A field the secondary never saw differ, clearly above both.
            (
                "no noise at field: real",
                Rate::new(5, 100),
                Some(Rate::new(0, 100)),
                false,
            ),
            // Totals differ: 50 % vs 5/20 = 25 % → relative 33 %, absolute 25.
            (
                "rates with other totals: real",
                Rate::new(50, 100),
                Some(Rate::new(5, 20)),
                false,
            ),
        ];
        for (name, raw, noise, want) in cases {
            assert_eq!(is_noise(*raw, *noise, &t), *want, "{name}");
        }
    }

    #[test]
    fn custom_thresholds() {
        let t = NoiseThresholds {
            relative: 50.0,
            absolute: 1.0,
            min_secondary: 1,
        };
        // r = 29 %, n = 10 %: relative 48.7 % (below 50) → noise.
        assert!(is_noise(Rate::new(29, 100), Some(Rate::new(1, 10)), &t));
        // r = 31 %, n = 10 %: relative 51.2 %, absolute 21 → real.
        assert!(!is_noise(Rate::new(31, 100), Some(Rate::new(1, 10)), &t));
        // r = 0.9 %, n = 0: relative 100 %, absolute 0.9 → noise.
        assert!(is_noise(Rate::new(9, 1000), Some(Rate::new(0, 10)), &t));
    }
}
