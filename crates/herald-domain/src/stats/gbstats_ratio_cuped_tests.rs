//! CUPED on ratio metrics against GrowthBook's own `RegressionAdjustedRatioStatistic`
//! (commit 8724b39, after gbstats 0.8.0) at SPEC's tolerances, on the pinned
//! table `gbstats_ratio_cuped_cases.rs` (made by
//! `tests/gbstats_ratio_cuped_reference.py`), degenerate cases included: no
//! history at all, one arm without history, an arm of one contact, no spread.

use super::gbstats_ratio_cuped_cases::RATIO_CUPED;
use super::{MetricArm, MetricComparison, MetricNoEstimate, TestKind, compare_metric};

/// SPEC section 5: lifts and intervals agree with gbstats to this, relative.
const LIFT_REL_TOLERANCE: f64 = 1e-6;
/// SPEC section 5: p-values and chances to beat agree with gbstats to this, absolute.
const PROBABILITY_ABS_TOLERANCE: f64 = 1e-6;
/// Not promised, pinned so that a drift shows: stddev, df, theta, reduction.
const INTERNAL_REL_TOLERANCE: f64 = 1e-9;

/// The gbstats test the case went through.
pub(super) enum RefTest {
    Fixed,
    Sequential(f64),
}

/// gbstats' answer.
pub(super) enum RatioExpect {
    Estimate {
        rel_lift: f64,
        rel_stddev: f64,
        ci_lower: f64,
        ci_upper: f64,
        /// NaN for a sequential test.
        df: f64,
        p_value: f64,
        chance_to_beat: f64,
        /// 0 when gbstats fell back to the plain ratio.
        theta: f64,
        /// 1 - adjusted / plain relative variance.
        variance_reduction: f64,
    },
    /// gbstats' error message.
    NoEstimate(&'static str),
}

/// One variant against its control.
pub(super) struct MetricCase {
    pub name: &'static str,
    pub control: MetricArm,
    pub variant: MetricArm,
    pub test: RefTest,
    pub expect: RatioExpect,
}

fn relative_error(actual: f64, expected: f64) -> f64 {
    if actual == expected {
        0.0
    } else {
        (actual - expected).abs() / expected.abs()
    }
}

fn close(name: &str, what: &str, got: f64, want: f64, tolerance: f64) {
    let off = relative_error(got, want);
    assert!(
        off <= tolerance,
        "{name}: {what} {got} against {want} ({off:e})"
    );
}

#[test]
fn ratio_cuped_matches_gbstats() {
    let (mut estimates, mut refused) = (0, 0);
    for case in RATIO_CUPED {
        let name = case.name;
        let test = match case.test {
            RefTest::Fixed => TestKind::FixedHorizon,
            RefTest::Sequential(tuning) => TestKind::Sequential { tuning },
        };
        let got = compare_metric(&case.control, &case.variant, test)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match (&case.expect, got) {
            (
                RatioExpect::Estimate {
                    rel_lift,
                    rel_stddev,
                    ci_lower,
                    ci_upper,
                    df,
                    p_value,
                    chance_to_beat,
                    theta,
                    variance_reduction,
                },
                MetricComparison::Estimate(e),
            ) => {
                estimates += 1;
                close(name, "rel_lift", e.rel_lift, *rel_lift, LIFT_REL_TOLERANCE);
                close(
                    name,
                    "ci lower",
                    e.rel_ci.lower,
                    *ci_lower,
                    LIFT_REL_TOLERANCE,
                );
                close(
                    name,
                    "ci upper",
                    e.rel_ci.upper,
                    *ci_upper,
                    LIFT_REL_TOLERANCE,
                );
                let p = (e.p_value - p_value).abs();
                assert!(p <= PROBABILITY_ABS_TOLERANCE, "{name}: p off by {p:e}");
                let ctb = (e.chance_to_beat - chance_to_beat).abs();
                assert!(
                    ctb <= PROBABILITY_ABS_TOLERANCE,
                    "{name}: chance_to_beat off by {ctb:e}"
                );
                close(
                    name,
                    "stddev",
                    e.rel_lift_stddev,
                    *rel_stddev,
                    INTERNAL_REL_TOLERANCE,
                );
                match e.df {
                    Some(got) => close(name, "df", got, *df, INTERNAL_REL_TOLERANCE),
                    None => assert!(df.is_nan(), "{name}: a fixed test has df"),
                }
                close(
                    name,
                    "theta",
                    e.theta.expect("adjusted"),
                    *theta,
                    INTERNAL_REL_TOLERANCE,
                );
                let reduction = e.variance_reduction.expect("adjusted");
                assert!(
                    (reduction - variance_reduction).abs() <= INTERNAL_REL_TOLERANCE,
                    "{name}: reduction {reduction} against {variance_reduction}"
                );
            }
            (RatioExpect::NoEstimate(message), MetricComparison::NotEnoughData { reason, .. }) => {
                refused += 1;
                let want = match *message {
                    "ZERO_NEGATIVE_BASELINE_VARIATION" => MetricNoEstimate::ZeroBaseline,
                    "ZERO_NEGATIVE_VARIANCE" => MetricNoEstimate::NoSpread,
                    other => panic!("{name}: unknown gbstats message {other}"),
                };
                assert_eq!(reason, want, "{name}");
            }
            (_, got) => panic!("{name}: gbstats and herald disagree: herald {got:?}"),
        }
    }
    // Four adjusted pairs and the fallback, each three ways; four refusals.
    assert_eq!((estimates, refused), (15, 12));
}
