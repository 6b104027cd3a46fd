//! A/B statistics for herald's report, computed as GrowthBook's engine gbstats 0.8
//! computes them for a binomial metric (SPEC section 5), so a user can check herald
//! against a tool they trust. Start with [`compare`] (a variant against its control),
//! then [`srm()`] (is the split what the weights promised?) and [`pick_winner`]
//! (the rollout decision). Pure computation; `dist` holds the distribution functions.

mod correction;
mod dist;
mod metric;
mod power;
mod rollout;
mod srm;

#[cfg(test)]
mod gbstats_cases;
#[cfg(test)]
mod gbstats_metric_cases;
#[cfg(test)]
mod gbstats_metric_tests;
#[cfg(test)]
mod gbstats_ratio_cuped_cases;
#[cfg(test)]
mod gbstats_ratio_cuped_tests;
#[cfg(test)]
mod gbstats_tests;
#[cfg(test)]
mod simulation_tests;

use std::cmp::Ordering;

use serde::Serialize;
use thiserror::Error;

pub use correction::{Correction, adjust_p_values};
pub use metric::{
    DEFAULT_SEQUENTIAL_TUNING, Measure, MetricArm, MetricComparison, MetricEstimate,
    MetricNoEstimate, RatioProducts, TestKind, compare_metric,
};
pub use power::{POWER, minimum_detectable_lift};
pub use rollout::{
    FISHER_MAX_P, RivalChance, Rollout, SEQUENTIAL_MAX_P, WINNER_MIN_CHANCE, decide_rollout,
    decide_rollout_adjusted, decide_rollout_with, fisher_one_sided, pick_winner,
};
pub use srm::{SRM_P_THRESHOLD, Srm, srm};

/// Confidence level of the interval of the relative lift.
pub const CONFIDENCE_LEVEL: f64 = 0.95;

/// Probability left in each tail outside the two-sided interval.
const TAIL_PROBABILITY: f64 = (1.0 - CONFIDENCE_LEVEL) / 2.0;

/// What herald says where gbstats has no estimate (SPEC section 5).
pub const NOT_ENOUGH_DATA: &str = "not enough conversions to compare";

/// Counts that cannot come from a real arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StatsError {
    /// More conversions than contacts.
    #[error("{k} conversions out of {n} contacts: an arm cannot convert more contacts than it has")]
    MoreConversionsThanContacts {
        /// Contacts in the arm.
        n: u64,
        /// Conversions claimed.
        k: u64,
    },
    /// The arms of one comparison are measured differently.
    #[error(
        "the arms of a comparison must be measured the same way (one a mean, the other a proportion?)"
    )]
    MismatchedArms,
}

/// One arm of an experiment: `n` contacts, `k` of them converted (`k <= n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ArmCounts {
    n: u64,
    k: u64,
}

impl ArmCounts {
    /// Counts of an arm; refuses more conversions than contacts.
    pub fn new(n: u64, k: u64) -> Result<Self, StatsError> {
        if k > n {
            return Err(StatsError::MoreConversionsThanContacts { n, k });
        }
        Ok(Self { n, k })
    }

    /// Contacts in the arm.
    pub fn n(self) -> u64 {
        self.n
    }

    /// Contacts that converted.
    pub fn k(self) -> u64 {
        self.k
    }

    /// Conversion rate k/n; `None` for an empty arm.
    pub fn rate(self) -> Option<f64> {
        (self.n > 0).then(|| self.k as f64 / self.n as f64)
    }

    /// Per-contact variance p(1 - p) (divisor n, as gbstats' `ProportionStatistic`).
    pub fn variance(self) -> Option<f64> {
        (self.n > 0).then(|| {
            let n = self.n as f64;
            // (n - k) / n rather than 1 - p: exact even when p is close to 1.
            (self.k as f64 / n) * ((self.n - self.k) as f64 / n)
        })
    }

    /// Orders arms by rate, exactly (no rounding); an empty arm ranks lowest.
    pub fn cmp_rate(self, other: Self) -> Ordering {
        match (self.n, other.n) {
            (0, 0) => Ordering::Equal,
            (0, _) => Ordering::Less,
            (_, 0) => Ordering::Greater,
            _ => (u128::from(self.k) * u128::from(other.n))
                .cmp(&(u128::from(other.k) * u128::from(self.n))),
        }
    }
}

/// Why a comparison has no estimate (gbstats' `ZERO_NEGATIVE_BASELINE_VARIATION`,
/// `ZERO_NEGATIVE_VARIANCE` and `NO_UNITS_IN_VARIATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoEstimate {
    /// An arm has no contacts.
    EmptyArm,
    /// The control converted no one, so a relative lift is undefined.
    NoControlConversions,
    /// The variant converted no one: its rate has no spread.
    NoVariantConversions,
    /// Every contact of an arm converted: its rate has no spread.
    AllConverted,
}

impl NoEstimate {
    /// The reason in a marketer's words; always starts with [`NOT_ENOUGH_DATA`].
    pub fn message(self) -> &'static str {
        match self {
            Self::EmptyArm => "not enough conversions to compare: an arm has no contacts yet",
            Self::NoControlConversions => {
                "not enough conversions to compare: the control has no conversions"
            }
            Self::NoVariantConversions => {
                "not enough conversions to compare: the variant has no conversions"
            }
            Self::AllConverted => {
                "not enough conversions to compare: every contact in an arm converted, \
                 so there is no spread to measure"
            }
        }
    }
}

/// A two-sided interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

/// A variant measured against its control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// Control's rate pA.
    pub control_rate: f64,
    /// Variant's rate pB.
    pub variant_rate: f64,
    /// pB - pA.
    pub abs_lift: f64,
    /// (pB - pA) / pA, gbstats' `expected`.
    pub rel_lift: f64,
    /// Delta-method standard deviation of the relative lift, gbstats' `uplift.stddev`.
    pub rel_lift_stddev: f64,
    /// [`CONFIDENCE_LEVEL`] interval of the relative lift (Student t), gbstats' `ci`.
    pub rel_ci: Interval,
    /// Welch-Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided Student-t p-value, gbstats' `pValue`.
    pub p_value: f64,
    /// Chance the variant beats the control under a flat prior, gbstats' `chanceToWin`.
    pub chance_to_beat: f64,
}

/// The outcome of [`compare`]: an estimate, or words saying why there is none.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Comparison {
    /// The numbers.
    Estimate(Estimate),
    /// No estimate, and why.
    NotEnoughData {
        /// Machine-readable reason.
        reason: NoEstimate,
        /// The reason in words.
        message: &'static str,
    },
}

impl Comparison {
    /// The estimate, if there is one.
    pub fn estimate(&self) -> Option<&Estimate> {
        match self {
            Self::Estimate(estimate) => Some(estimate),
            Self::NotEnoughData { .. } => None,
        }
    }

    fn not_enough(reason: NoEstimate) -> Self {
        Self::NotEnoughData {
            reason,
            message: reason.message(),
        }
    }
}

/// `a - b` for exact products, rounded once to f64.
fn signed_difference(a: u128, b: u128) -> f64 {
    if a >= b {
        (a - b) as f64
    } else {
        -((b - a) as f64)
    }
}

/// The variant against its control, as gbstats' `TwoSidedTTest` (p-value, interval)
/// and flat-prior `EffectBayesianABTest` (chance to beat) with relative differences.
pub fn compare(control: ArmCounts, variant: ArmCounts) -> Comparison {
    if control.n == 0 || variant.n == 0 {
        return Comparison::not_enough(NoEstimate::EmptyArm);
    }
    if control.k == 0 {
        return Comparison::not_enough(NoEstimate::NoControlConversions);
    }
    if variant.k == 0 {
        return Comparison::not_enough(NoEstimate::NoVariantConversions);
    }
    if control.k == control.n || variant.k == variant.n {
        return Comparison::not_enough(NoEstimate::AllConverted);
    }

    let (n_a, n_b) = (control.n as f64, variant.n as f64);
    let (p_a, p_b) = (control.k as f64 / n_a, variant.k as f64 / n_b);
    let var_a = p_a * ((control.n - control.k) as f64 / n_a);
    let var_b = p_b * ((variant.n - variant.k) as f64 / n_b);

    // pB - pA = (kB nA - kA nB) / (nA nB): the numerator is exact in integers, so
    // two nearly equal rates of a billion-contact arm lose nothing to cancellation.
    let cross_b = u128::from(variant.k) * u128::from(control.n);
    let cross_a = u128::from(control.k) * u128::from(variant.n);
    let numerator = signed_difference(cross_b, cross_a);
    let abs_lift = numerator / (u128::from(control.n) * u128::from(variant.n)) as f64;
    let rel_lift = numerator / cross_a as f64;

    // gbstats frequentist/tests.py `frequentist_variance(..., relative=True)`.
    let rel_variance =
        var_b / (p_a * p_a * n_b) + var_a * (p_b * p_b) / (p_a * p_a * p_a * p_a * n_a);
    let rel_lift_stddev = rel_variance.sqrt();

    // gbstats `TTest.dof`: Welch-Satterthwaite on the absolute scale.
    let (se2_a, se2_b) = (var_a / n_a, var_b / n_b);
    let df = (se2_a + se2_b).powi(2) / (se2_b * se2_b / (n_b - 1.0) + se2_a * se2_a / (n_a - 1.0));

    let critical = rel_lift / rel_lift_stddev;
    let p_value = (2.0 * dist::student_t_sf(critical.abs(), df)).min(1.0);
    let half_width = dist::student_t_upper_quantile(TAIL_PROBABILITY, df) * rel_lift_stddev;
    let chance_to_beat = dist::normal_cdf(critical);

    Comparison::Estimate(Estimate {
        control_rate: p_a,
        variant_rate: p_b,
        abs_lift,
        rel_lift,
        rel_lift_stddev,
        rel_ci: Interval {
            lower: rel_lift - half_width,
            upper: rel_lift + half_width,
        },
        df,
        p_value,
        chance_to_beat,
    })
}

/// [`compare`] under `test`: with [`TestKind::Sequential`] the interval and
/// p-value are gbstats' `SequentialTwoSidedTTest` ones (always valid, for a
/// report read every day) over the same lift and delta-method variance, the
/// arms' total size being the test's n; the rest is [`compare`]'s (the Welch
/// degrees of freedom stay, as gbstats keeps them, though the interval no
/// longer uses them).
pub fn compare_with(control: ArmCounts, variant: ArmCounts, test: TestKind) -> Comparison {
    let fixed = compare(control, variant);
    let (TestKind::Sequential { tuning }, Comparison::Estimate(mut e)) = (test, fixed) else {
        return fixed;
    };
    let n = (control.n + variant.n) as f64;
    let variance = e.rel_lift_stddev * e.rel_lift_stddev;
    let alpha = 1.0 - CONFIDENCE_LEVEL;
    let half_width = metric::sequential_half_width(variance, n, alpha, tuning);
    e.rel_ci = Interval {
        lower: e.rel_lift - half_width,
        upper: e.rel_lift + half_width,
    };
    e.p_value = metric::sequential_p_value(e.rel_lift, variance, n, alpha, tuning);
    Comparison::Estimate(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_counts_equal_the_sequential_proportion_metric() {
        let test = TestKind::Sequential { tuning: 5000.0 };
        let (c, v) = (arm(4_000, 400), arm(4_100, 470));
        let Comparison::Estimate(got) = compare_with(c, v, test) else {
            panic!("no estimate")
        };
        let plain = |a: ArmCounts| MetricArm::Plain {
            measure: Measure::Proportion {
                n: a.n(),
                sum: a.k() as f64,
            },
        };
        let want = *compare_metric(&plain(c), &plain(v), test)
            .unwrap()
            .estimate()
            .unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(got.p_value, want.p_value), "{got:?} vs {want:?}");
        assert!(close(got.rel_ci.lower, want.rel_ci.lower));
        assert!(close(got.rel_ci.upper, want.rel_ci.upper));
        let fixed = *compare(c, v).estimate().unwrap();
        assert!(got.p_value > fixed.p_value, "always valid costs power");
        assert_eq!(compare_with(c, v, TestKind::FixedHorizon), compare(c, v));
    }

    fn arm(n: u64, k: u64) -> ArmCounts {
        ArmCounts::new(n, k).unwrap()
    }

    #[test]
    fn refuses_more_conversions_than_contacts() {
        let err = ArmCounts::new(10, 11).unwrap_err();
        assert_eq!(
            err,
            StatsError::MoreConversionsThanContacts { n: 10, k: 11 }
        );
        assert!(
            err.to_string()
                .contains("11 conversions out of 10 contacts")
        );
    }

    #[test]
    fn rate_and_variance() {
        assert_eq!(arm(0, 0).rate(), None);
        assert_eq!(arm(0, 0).variance(), None);
        assert_eq!(arm(200, 50).rate(), Some(0.25));
        assert_eq!(arm(200, 50).variance(), Some(0.1875));
    }

    #[test]
    fn rates_order_exactly_and_empty_arms_rank_lowest() {
        assert_eq!(arm(3, 1).cmp_rate(arm(6, 2)), Ordering::Equal);
        assert_eq!(
            arm(1_000_000_000, 10_000_001).cmp_rate(arm(999_999_999, 10_000_000)),
            Ordering::Greater
        );
        assert_eq!(arm(0, 0).cmp_rate(arm(10, 0)), Ordering::Less);
        assert_eq!(arm(0, 0).cmp_rate(arm(0, 0)), Ordering::Equal);
    }

    #[test]
    fn every_degenerate_case_says_so_in_words() {
        let cases = [
            (arm(0, 0), arm(100, 5), NoEstimate::EmptyArm),
            (arm(100, 5), arm(0, 0), NoEstimate::EmptyArm),
            (arm(100, 0), arm(100, 5), NoEstimate::NoControlConversions),
            (arm(100, 0), arm(100, 0), NoEstimate::NoControlConversions),
            (arm(100, 5), arm(100, 0), NoEstimate::NoVariantConversions),
            (arm(100, 100), arm(100, 90), NoEstimate::AllConverted),
            (arm(100, 90), arm(100, 100), NoEstimate::AllConverted),
            (arm(1, 1), arm(100, 5), NoEstimate::AllConverted),
        ];
        for (control, variant, reason) in cases {
            let result = compare(control, variant);
            assert_eq!(
                result,
                Comparison::NotEnoughData {
                    reason,
                    message: reason.message()
                }
            );
            assert!(reason.message().starts_with(NOT_ENOUGH_DATA));
            assert!(result.estimate().is_none());
        }
    }

    #[test]
    fn smallest_comparable_arms_give_finite_numbers() {
        let result = compare(arm(2, 1), arm(2, 1));
        let estimate = result.estimate().unwrap();
        assert_eq!(estimate.rel_lift, 0.0);
        assert_eq!(estimate.p_value, 1.0);
        assert_eq!(estimate.chance_to_beat, 0.5);
        assert_eq!(estimate.df, 2.0);
        assert!(estimate.rel_ci.lower.is_finite() && estimate.rel_ci.upper.is_finite());
    }

    #[test]
    fn lift_of_nearly_equal_huge_arms_is_exact() {
        // 10,000,001 / 1e9 vs 10,000,000 / 1e9: the difference is exactly 1e-9.
        let result = compare(
            arm(1_000_000_000, 10_000_000),
            arm(1_000_000_000, 10_000_001),
        );
        let estimate = result.estimate().unwrap();
        assert_eq!(estimate.abs_lift, 1e-9);
        assert_eq!(estimate.rel_lift, 1e-7);
    }

    #[test]
    fn p_value_interval_and_chance_tell_the_same_story() {
        let sizes = [2_u64, 7, 50, 1_000, 123_457, 1_000_000_000];
        let shares = [0.001, 0.05, 0.3, 0.5, 0.97];
        let arms: Vec<ArmCounts> = sizes
            .iter()
            .flat_map(|&n| {
                shares
                    .iter()
                    .map(move |s| arm(n, (n as f64 * s).round() as u64))
            })
            .collect();
        let mut estimates = 0;
        for &control in &arms {
            for &variant in &arms {
                let Comparison::Estimate(e) = compare(control, variant) else {
                    continue;
                };
                estimates += 1;
                let all = [e.rel_lift, e.rel_ci.lower, e.rel_ci.upper, e.df, e.p_value];
                assert!(all.iter().all(|x| x.is_finite()), "{control:?} {variant:?}");
                assert!(
                    (0.0..=1.0).contains(&e.p_value) && (0.0..=1.0).contains(&e.chance_to_beat)
                );
                assert!(e.rel_ci.lower <= e.rel_lift && e.rel_lift <= e.rel_ci.upper);
                let excludes_zero = e.rel_ci.lower > 0.0 || e.rel_ci.upper < 0.0;
                let significant = e.p_value < 1.0 - CONFIDENCE_LEVEL;
                let borderline = (e.p_value - (1.0 - CONFIDENCE_LEVEL)).abs() < 1e-9;
                assert!(
                    borderline || excludes_zero == significant,
                    "{control:?} {variant:?}"
                );
                assert_eq!(
                    e.rel_lift > 0.0,
                    e.chance_to_beat > 0.5,
                    "{control:?} {variant:?}"
                );
                assert_eq!(e.abs_lift.signum(), e.rel_lift.signum());
            }
        }
        assert!(estimates > 500, "only {estimates} estimates");
    }

    #[test]
    fn json_shape_is_stable() {
        let estimate = compare(arm(10_000, 500), arm(10_000, 560));
        let json = serde_json::to_value(estimate).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "abs_lift",
                "chance_to_beat",
                "control_rate",
                "df",
                "outcome",
                "p_value",
                "rel_ci",
                "rel_lift",
                "rel_lift_stddev",
                "variant_rate"
            ]
        );
        assert_eq!(json["outcome"], "estimate");
        assert!(json["rel_ci"]["lower"].is_f64() && json["rel_ci"]["upper"].is_f64());

        let none = serde_json::to_value(compare(arm(100, 0), arm(100, 5))).unwrap();
        assert_eq!(
            none,
            serde_json::json!({
                "outcome": "not_enough_data",
                "reason": "no_control_conversions",
                "message": "not enough conversions to compare: the control has no conversions",
            })
        );
        assert_eq!(
            serde_json::to_value(arm(7, 3)).unwrap(),
            serde_json::json!({"n": 7, "k": 3})
        );
    }
}
