//! Mean, ratio, CUPED and sequential comparisons against GrowthBook's gbstats
//! 0.8.0 at SPEC's tolerances, on the pinned table `gbstats_metric_cases.rs`
//! (made by `tests/gbstats_metrics_reference.py`).

use super::gbstats_metric_cases::METRIC;
use super::{Measure, MetricArm, MetricComparison, MetricNoEstimate, TestKind, compare_metric};

/// SPEC section 5: lifts and intervals agree with gbstats to this, relative.
const LIFT_REL_TOLERANCE: f64 = 1e-6;
/// SPEC section 5: p-values and chances to beat agree with gbstats to this, absolute.
const PROBABILITY_ABS_TOLERANCE: f64 = 1e-6;
/// Not promised, pinned so that a drift shows: stddev, df and theta, relative.
const INTERNAL_REL_TOLERANCE: f64 = 1e-9;

/// An arm as the reference script wrote it.
pub(super) enum RefArm {
    Prop {
        n: u64,
        sum: f64,
    },
    Mean {
        n: u64,
        sum: f64,
        sum_squares: f64,
    },
    Ratio {
        n: u64,
        numerator: &'static RefArm,
        denominator: &'static RefArm,
        sum_of_products: f64,
    },
    Cuped {
        n: u64,
        post: &'static RefArm,
        pre: &'static RefArm,
        sum_of_products: f64,
    },
}

/// The gbstats test the case went through.
pub(super) enum RefTest {
    Fixed,
    Sequential(f64),
}

/// gbstats' answer.
pub(super) enum MetricExpect {
    Estimate {
        rel_lift: f64,
        rel_stddev: f64,
        ci_lower: f64,
        ci_upper: f64,
        /// NaN for a sequential test.
        df: f64,
        p_value: f64,
        chance_to_beat: f64,
        /// NaN when the metric is not adjusted.
        theta: f64,
    },
    /// gbstats' error message.
    NoEstimate(&'static str),
}

/// One variant against its control.
pub(super) struct MetricCase {
    pub name: &'static str,
    pub control: &'static RefArm,
    pub variant: &'static RefArm,
    pub test: RefTest,
    pub expect: MetricExpect,
}

fn measure(arm: &RefArm) -> Measure {
    match *arm {
        RefArm::Prop { n, sum } => Measure::Proportion { n, sum },
        RefArm::Mean {
            n,
            sum,
            sum_squares,
        } => Measure::Mean {
            n,
            sum,
            sum_squares,
        },
        _ => panic!("a measure is a proportion or a mean"),
    }
}

fn metric_arm(arm: &RefArm) -> MetricArm {
    match *arm {
        RefArm::Prop { .. } | RefArm::Mean { .. } => MetricArm::Plain {
            measure: measure(arm),
        },
        RefArm::Ratio {
            n,
            numerator,
            denominator,
            sum_of_products,
        } => MetricArm::Ratio {
            n,
            numerator: measure(numerator),
            denominator: measure(denominator),
            sum_of_products,
        },
        RefArm::Cuped {
            n,
            post,
            pre,
            sum_of_products,
        } => MetricArm::Adjusted {
            n,
            post: measure(post),
            pre: measure(pre),
            sum_of_products,
        },
    }
}

fn relative_error(actual: f64, expected: f64) -> f64 {
    if actual == expected {
        0.0
    } else {
        (actual - expected).abs() / expected.abs()
    }
}

#[test]
fn metrics_match_gbstats() {
    let mut estimates = 0;
    let mut worst = [0.0_f64; 4];
    for case in METRIC {
        let test = match case.test {
            RefTest::Fixed => TestKind::FixedHorizon,
            RefTest::Sequential(tuning) => TestKind::Sequential { tuning },
        };
        let got = compare_metric(&metric_arm(case.control), &metric_arm(case.variant), test)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let name = case.name;
        match (&case.expect, got) {
            (
                MetricExpect::Estimate {
                    rel_lift,
                    rel_stddev,
                    ci_lower,
                    ci_upper,
                    df,
                    p_value,
                    chance_to_beat,
                    theta,
                },
                MetricComparison::Estimate(e),
            ) => {
                estimates += 1;
                let lift = relative_error(e.rel_lift, *rel_lift);
                let ci = relative_error(e.rel_ci.lower, *ci_lower)
                    .max(relative_error(e.rel_ci.upper, *ci_upper));
                let p = (e.p_value - p_value).abs();
                let ctb = (e.chance_to_beat - chance_to_beat).abs();
                assert!(
                    lift <= LIFT_REL_TOLERANCE,
                    "{name}: rel_lift off by {lift:e}"
                );
                assert!(ci <= LIFT_REL_TOLERANCE, "{name}: rel_ci off by {ci:e}");
                assert!(p <= PROBABILITY_ABS_TOLERANCE, "{name}: p off by {p:e}");
                assert!(
                    ctb <= PROBABILITY_ABS_TOLERANCE,
                    "{name}: chance_to_beat off by {ctb:e}"
                );
                let sd = relative_error(e.rel_lift_stddev, *rel_stddev);
                assert!(sd <= INTERNAL_REL_TOLERANCE, "{name}: stddev off by {sd:e}");
                match e.df {
                    Some(got) => {
                        let off = relative_error(got, *df);
                        assert!(off <= INTERNAL_REL_TOLERANCE, "{name}: df off by {off:e}");
                    }
                    None => assert!(df.is_nan(), "{name}: a fixed test has df"),
                }
                match e.theta {
                    Some(got) => {
                        let off = relative_error(got, *theta);
                        assert!(
                            off <= INTERNAL_REL_TOLERANCE,
                            "{name}: theta off by {off:e}"
                        );
                    }
                    None => assert!(theta.is_nan(), "{name}: gbstats adjusted it"),
                }
                for (w, d) in worst.iter_mut().zip([lift, ci, p, ctb]) {
                    *w = w.max(d);
                }
            }
            (MetricExpect::NoEstimate(message), MetricComparison::NotEnoughData { reason, .. }) => {
                let allowed: &[MetricNoEstimate] = match *message {
                    "ZERO_NEGATIVE_BASELINE_VARIATION" => &[MetricNoEstimate::ZeroBaseline],
                    // gbstats' frequentist engine sees an empty arm as one without variance.
                    "ZERO_NEGATIVE_VARIANCE" => {
                        &[MetricNoEstimate::NoSpread, MetricNoEstimate::EmptyArm]
                    }
                    "NO_UNITS_IN_VARIATION" => &[MetricNoEstimate::EmptyArm],
                    other => panic!("{name}: unknown gbstats message {other}"),
                };
                assert!(
                    allowed.contains(&reason),
                    "{name}: {reason:?} for {message}"
                );
            }
            (expect, got) => panic!(
                "{name}: gbstats {} but herald {got:?}",
                match expect {
                    MetricExpect::Estimate { .. } => "estimated",
                    MetricExpect::NoEstimate(m) => m,
                }
            ),
        }
    }
    assert!(estimates >= 30, "only {estimates} estimates");
    println!(
        "largest deviations: rel_lift {:e}, ci {:e}, p {:e}, chance {:e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn mismatched_arms_are_refused() {
    let mean = MetricArm::Plain {
        measure: Measure::Mean {
            n: 10,
            sum: 5.0,
            sum_squares: 9.0,
        },
    };
    let prop = MetricArm::Plain {
        measure: Measure::Proportion { n: 10, sum: 5.0 },
    };
    assert!(compare_metric(&mean, &prop, TestKind::FixedHorizon).is_err());
}
