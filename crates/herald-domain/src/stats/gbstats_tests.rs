//! herald against GrowthBook's gbstats 0.8.0 at SPEC's tolerances, on the pinned
//! reference table `gbstats_cases.rs` (made by `tests/gbstats_reference.py`), and the
//! distribution functions against mpmath. Run with `--nocapture` to see the largest
//! deviations observed.

use super::gbstats_cases::{CHI2_SF, COMPARE, SRM, T_QUANTILE, T_SF};
use super::{ArmCounts, Comparison, NoEstimate, compare, dist, srm};

/// SPEC section 5: lifts and intervals agree with gbstats to this, relative.
const LIFT_REL_TOLERANCE: f64 = 1e-6;
/// SPEC section 5: p-values and chances to beat agree with gbstats to this, absolute.
const PROBABILITY_ABS_TOLERANCE: f64 = 1e-6;
/// Not promised by SPEC, but pinned so that a drift shows: df and stddev, relative.
const INTERNAL_REL_TOLERANCE: f64 = 1e-9;
/// Distribution functions against mpmath: absolute for probabilities.
const DIST_ABS_TOLERANCE: f64 = 1e-12;
/// Distribution functions against mpmath: relative for quantiles.
const DIST_REL_TOLERANCE: f64 = 1e-12;

/// One variant against the control, as gbstats saw it.
pub(super) struct CompareCase {
    pub name: &'static str,
    /// (n, k)
    pub control: (u64, u64),
    /// (n, k)
    pub variant: (u64, u64),
    pub expect: Expect,
}

/// gbstats' answer.
pub(super) enum Expect {
    Estimate {
        abs_lift: f64,
        rel_lift: f64,
        rel_stddev: f64,
        ci_lower: f64,
        ci_upper: f64,
        df: f64,
        p_value: f64,
        chance_to_beat: f64,
    },
    /// gbstats' error message.
    NoEstimate(&'static str),
}

/// Arms' (assigned, weight) and gbstats' SRM p-value.
pub(super) struct SrmCase {
    pub name: &'static str,
    pub arms: &'static [(u64, f64)],
    pub p_value: f64,
}

fn relative_error(actual: f64, expected: f64) -> f64 {
    if actual == expected {
        0.0
    } else {
        (actual - expected).abs() / expected.abs()
    }
}

/// The largest deviation seen for one quantity, and where.
#[derive(Default)]
struct Worst {
    deviation: f64,
    case: &'static str,
}

impl Worst {
    fn check(&mut self, case: &'static str, what: &str, deviation: f64, tolerance: f64) {
        assert!(
            deviation <= tolerance,
            "{case}: {what} off by {deviation:e} (tolerance {tolerance:e})"
        );
        if deviation >= self.deviation {
            *self = Self { deviation, case };
        }
    }
}

#[test]
fn compare_matches_gbstats() {
    let names = [
        "abs_lift (rel)",
        "rel_lift (rel)",
        "rel_ci (rel)",
        "p_value (abs)",
        "chance_to_beat (abs)",
        "rel_lift_stddev (rel)",
        "df (rel)",
    ];
    let mut worst: [Worst; 7] = Default::default();
    let mut estimates = 0;
    for case in COMPARE {
        let control = ArmCounts::new(case.control.0, case.control.1).unwrap();
        let variant = ArmCounts::new(case.variant.0, case.variant.1).unwrap();
        let result = compare(control, variant);
        match (&case.expect, result) {
            (
                Expect::Estimate {
                    abs_lift,
                    rel_lift,
                    rel_stddev,
                    ci_lower,
                    ci_upper,
                    df,
                    p_value,
                    chance_to_beat,
                },
                Comparison::Estimate(got),
            ) => {
                estimates += 1;
                let name = case.name;
                worst[0].check(
                    name,
                    "abs_lift",
                    relative_error(got.abs_lift, *abs_lift),
                    LIFT_REL_TOLERANCE,
                );
                worst[1].check(
                    name,
                    "rel_lift",
                    relative_error(got.rel_lift, *rel_lift),
                    LIFT_REL_TOLERANCE,
                );
                let ci = relative_error(got.rel_ci.lower, *ci_lower)
                    .max(relative_error(got.rel_ci.upper, *ci_upper));
                worst[2].check(name, "rel_ci", ci, LIFT_REL_TOLERANCE);
                worst[3].check(
                    name,
                    "p_value",
                    (got.p_value - p_value).abs(),
                    PROBABILITY_ABS_TOLERANCE,
                );
                worst[4].check(
                    name,
                    "chance_to_beat",
                    (got.chance_to_beat - chance_to_beat).abs(),
                    PROBABILITY_ABS_TOLERANCE,
                );
                worst[5].check(
                    name,
                    "rel_lift_stddev",
                    relative_error(got.rel_lift_stddev, *rel_stddev),
                    INTERNAL_REL_TOLERANCE,
                );
                worst[6].check(
                    name,
                    "df",
                    relative_error(got.df, *df),
                    INTERNAL_REL_TOLERANCE,
                );
            }
            (Expect::NoEstimate(code), Comparison::NotEnoughData { reason, .. }) => {
                let matches = match *code {
                    "ZERO_NEGATIVE_BASELINE_VARIATION" => matches!(
                        reason,
                        NoEstimate::NoControlConversions | NoEstimate::EmptyArm
                    ),
                    "ZERO_NEGATIVE_VARIANCE" => matches!(
                        reason,
                        NoEstimate::NoVariantConversions
                            | NoEstimate::AllConverted
                            | NoEstimate::EmptyArm
                    ),
                    _ => false,
                };
                assert!(
                    matches,
                    "{}: gbstats said {code}, herald {reason:?}",
                    case.name
                );
            }
            (expect, got) => {
                let gbstats = match expect {
                    Expect::Estimate { .. } => "an estimate",
                    Expect::NoEstimate(code) => code,
                };
                panic!("{}: gbstats gave {gbstats}, herald {got:?}", case.name);
            }
        }
    }
    assert!(estimates >= 20, "the table lost its cases");
    eprintln!("herald vs gbstats 0.8.0, {} comparisons:", COMPARE.len());
    for (name, worst) in names.iter().zip(&worst) {
        eprintln!("  {name:<24} max {:.2e} ({})", worst.deviation, worst.case);
    }
}

#[test]
fn srm_matches_gbstats() {
    let mut worst = Worst::default();
    for case in SRM {
        let result = srm(case.arms);
        worst.check(
            case.name,
            "srm p_value",
            (result.p_value - case.p_value).abs(),
            PROBABILITY_ABS_TOLERANCE,
        );
        assert_eq!(
            result.mismatch,
            case.p_value < super::SRM_P_THRESHOLD,
            "{}",
            case.name
        );
    }
    eprintln!(
        "herald vs gbstats check_srm: p-value max {:.2e} ({})",
        worst.deviation, worst.case
    );
}

#[test]
fn student_t_sf_matches_mpmath() {
    let mut worst = Worst::default();
    for &(t, df, expected) in T_SF {
        worst.check(
            "t sf",
            &format!("sf({t}; {df})"),
            (dist::student_t_sf(t, df) - expected).abs(),
            DIST_ABS_TOLERANCE,
        );
        // Symmetry: the lower tail is the mirror image.
        let mirrored = dist::student_t_sf(-t, df);
        assert!(((1.0 - mirrored) - expected).abs() <= DIST_ABS_TOLERANCE);
    }
    eprintln!("student t sf vs mpmath: max abs {:.2e}", worst.deviation);
}

#[test]
fn student_t_quantile_matches_mpmath() {
    let mut worst = Worst::default();
    for &(upper, df, expected) in T_QUANTILE {
        worst.check(
            "t quantile",
            &format!("quantile({upper}; {df})"),
            relative_error(dist::student_t_upper_quantile(upper, df), expected),
            DIST_REL_TOLERANCE,
        );
    }
    eprintln!(
        "student t quantile vs mpmath: max rel {:.2e}",
        worst.deviation
    );
}

#[test]
fn chi_squared_sf_matches_mpmath() {
    let mut worst = Worst::default();
    for &(x, df, expected) in CHI2_SF {
        worst.check(
            "chi2 sf",
            &format!("sf({x}; {df})"),
            (dist::chi_squared_sf(x, df) - expected).abs(),
            DIST_ABS_TOLERANCE,
        );
    }
    eprintln!("chi-squared sf vs mpmath: max abs {:.2e}", worst.deviation);
}

#[test]
fn distribution_functions_refuse_nonsense() {
    assert!(dist::student_t_sf(1.0, 0.0).is_nan());
    assert!(dist::student_t_sf(f64::NAN, 3.0).is_nan());
    assert_eq!(dist::student_t_sf(f64::INFINITY, 3.0), 0.0);
    assert_eq!(dist::student_t_sf(f64::NEG_INFINITY, 3.0), 1.0);
    assert!(dist::student_t_upper_quantile(0.0, 3.0).is_nan());
    assert!(dist::student_t_upper_quantile(0.7, 3.0).is_nan());
    assert_eq!(dist::student_t_upper_quantile(0.5, 3.0), 0.0);
    assert!(dist::chi_squared_sf(1.0, 0).is_nan());
    assert_eq!(dist::chi_squared_sf(0.0, 2), 1.0);
}
