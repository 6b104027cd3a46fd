//! The report in a marketer's words: percentages, chances and p-values
//! formatted the same way everywhere, and the sentences under the tables
//! ("discount beat the holdout: +12% conversions (95% CI +3.1% to +21%), 97%
//! chance it is better").

use herald_domain::stats::{
    CONFIDENCE_LEVEL, Comparison, Correction, Estimate, Interval, MetricComparison, MetricEstimate,
    SRM_P_THRESHOLD, Srm, TestKind,
};

/// Below this p-value a difference is called a win or a loss.
pub const SIGNIFICANCE: f64 = 1.0 - CONFIDENCE_LEVEL;

/// A share as a percentage: one decimal below 10%, whole from there (decided
/// on the rounded value, so 9.98% is "10%", not "10.0%").
pub fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p * 10.0).round().abs() < 100.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// A change as a signed percentage ("+12%", "-3.4%").
pub fn signed_percent(change: f64) -> String {
    let text = percent(change);
    if text.starts_with('-') {
        // "-0.0%" says nothing a "+0.0%" does not.
        if text.trim_start_matches(['-', '0', '.']) == "%" {
            return "+0.0%".to_string();
        }
        text
    } else {
        format!("+{text}")
    }
}

/// A probability as a whole percentage, never rounded into a certainty (a
/// chance computed as exactly 1 is a normal tail beyond f64's reach, not a
/// sure thing).
pub fn chance(p: f64) -> String {
    if p > 0.99 {
        ">99%".to_string()
    } else if p < 0.01 {
        "<1%".to_string()
    } else {
        format!("{:.0}%", p * 100.0)
    }
}

/// A p-value with two significant digits ("p = 0.0031", "p < 0.0001").
pub fn p_value(p: f64) -> String {
    if p < 1e-4 {
        "p < 0.0001".to_string()
    } else if p >= 0.1 {
        format!("p = {p:.2}")
    } else {
        let digits = (-p.log10()).floor() as usize + 2;
        format!("p = {p:.digits$}")
    }
}

/// How an arm is named in a sentence.
pub fn arm_name(arm: &str, holdout: bool) -> String {
    if holdout {
        format!("the {arm}")
    } else {
        arm.to_string()
    }
}

/// The verdict on a comparison: a win, a loss, or no clear difference.
pub fn comparison_sentence(variant: &str, control: &str, result: &Comparison) -> String {
    comparison_sentence_on(variant, control, result, "conversions")
}

/// [`comparison_sentence`] on a metric other than conversion, `what` naming
/// it (`retention in days 1-7`).
pub fn comparison_sentence_on(
    variant: &str,
    control: &str,
    result: &Comparison,
    what: &str,
) -> String {
    comparison_sentence_adjusted(variant, control, result, what, None)
}

/// [`comparison_sentence_on`] judged on `adjusted`, the p-value corrected
/// for the number of comparisons, when there is one.
pub fn comparison_sentence_adjusted(
    variant: &str,
    control: &str,
    result: &Comparison,
    what: &str,
    adjusted: Option<f64>,
) -> String {
    match result {
        Comparison::NotEnoughData { message, .. } => format!("{variant} vs {control}: {message}"),
        Comparison::Estimate(e) => verdict(variant, control, &Numbers::of(e), what, adjusted),
    }
}

/// The verdict on a mean or ratio metric (`what`: "ARPU").
pub fn metric_sentence(
    variant: &str,
    control: &str,
    result: &MetricComparison,
    what: &str,
    adjusted: Option<f64>,
) -> String {
    match result {
        MetricComparison::NotEnoughData { message, .. } => {
            format!("{variant} vs {control} on {what}: {message}")
        }
        MetricComparison::Estimate(e) => {
            let numbers = Numbers {
                rel_lift: e.rel_lift,
                rel_ci: e.rel_ci,
                chance_to_beat: e.chance_to_beat,
                p_value: e.p_value,
            };
            verdict(variant, control, &numbers, what, adjusted)
        }
    }
}

/// What a sentence says of an estimate.
struct Numbers {
    rel_lift: f64,
    rel_ci: Interval,
    chance_to_beat: f64,
    p_value: f64,
}

impl Numbers {
    fn of(e: &Estimate) -> Self {
        Self {
            rel_lift: e.rel_lift,
            rel_ci: e.rel_ci,
            chance_to_beat: e.chance_to_beat,
            p_value: e.p_value,
        }
    }
}

fn verdict(variant: &str, control: &str, e: &Numbers, what: &str, adjusted: Option<f64>) -> String {
    let numbers = estimate_words(e, what, adjusted);
    let p = adjusted.unwrap_or(e.p_value);
    if p < SIGNIFICANCE && e.rel_lift > 0.0 {
        format!("{variant} beat {control}: {numbers}")
    } else if p < SIGNIFICANCE {
        format!("{variant} did worse than {control}: {numbers}")
    } else {
        format!("{variant} vs {control}: no clear difference yet: {numbers}")
    }
}

fn estimate_words(e: &Numbers, what: &str, adjusted: Option<f64>) -> String {
    let p = match adjusted {
        Some(a) => format!("{}, corrected {}", p_value(e.p_value), p_value(a)),
        None => p_value(e.p_value),
    };
    format!(
        "{} {what} ({:.0}% CI {} to {}), {} chance it is better ({p})",
        signed_percent(e.rel_lift),
        CONFIDENCE_LEVEL * 100.0,
        signed_percent(e.rel_ci.lower),
        signed_percent(e.rel_ci.upper),
        chance(e.chance_to_beat),
    )
}

/// Which intervals and p-values the report shows, and why it matters.
pub fn test_sentence(test: TestKind) -> String {
    match test {
        TestKind::FixedHorizon => "intervals and p-values are fixed-horizon: valid read once, \
             when the test ends; read every day until one dips below 0.05, they find a \
             difference that is not there far more often than 5% of the time \
             (`[results] sequential = true` gives ones you can read daily)"
            .to_string(),
        TestKind::Sequential { tuning } => format!(
            "intervals and p-values are sequential (always valid, tuning {tuning}): reading \
             them every day keeps the chance of a false win at 5%; they are wider than \
             fixed-horizon ones"
        ),
    }
}

/// What `[results] cuped` does to the report.
pub fn cuped_sentence(days: u32) -> String {
    format!(
        "CUPED is applied where every contact shown had its history recorded: conversion, \
         ARPU, LTV and revenue per converting contact are regression-adjusted by each \
         contact's goal events and revenue in the {days} day(s) before the message (contacts \
         without any count as zero); revenue per converting contact is shown unadjusted \
         where gbstats has no adjusted estimate (an arm without a converter before the \
         message); clicks per delivered and retention are not adjusted"
    )
}

/// `" (CUPED removed 31% of its variance)"` for an adjusted estimate; empty otherwise.
pub fn variance_reduction_clause(e: &MetricEstimate) -> String {
    match e.variance_reduction {
        // A reduction that rounds to nothing is not called an increase.
        Some(v) if v >= -5e-4 => {
            format!(" (CUPED removed {} of its variance)", percent(v.max(0.0)))
        }
        Some(v) => format!(
            " (CUPED added {} to its variance: the history barely predicts it)",
            percent(-v)
        ),
        None => String::new(),
    }
}

/// How the p-values of a scope's `family` comparisons are corrected; `None` without correction.
pub fn correction_sentence(correction: Correction, family: usize) -> Option<String> {
    let how = match correction {
        Correction::None => return None,
        Correction::Holm => "Holm-Bonferroni (the chance of any false win stays at 5%)",
        Correction::BenjaminiHochberg => {
            "Benjamini-Hochberg (the share of false wins among the wins stays at 5%)"
        }
    };
    Some(format!(
        "p-values are corrected by {how} over the {family} comparison(s) here: every \
         variant-vs-control pair times every metric; a verdict reads the corrected one"
    ))
}

/// The verdict on the split.
pub fn srm_sentence(srm: &Srm) -> String {
    if srm.mismatch {
        format!(
            "sample ratio mismatch ({}, below {SRM_P_THRESHOLD}): the arms' sizes do not fit their \
             weights, so something other than chance decided who landed where; do not trust the \
             comparisons until you know why",
            p_value(srm.p_value)
        )
    } else {
        format!(
            "the split fits the weights (sample ratio check {})",
            p_value(srm.p_value)
        )
    }
}

#[cfg(test)]
mod tests {
    use herald_domain::stats::{ArmCounts, compare, srm};

    #[test]
    fn the_variance_cuped_removed_is_said_as_it_is() {
        let mut e = herald_domain::stats::MetricEstimate {
            control_mean: 1.0,
            variant_mean: 1.1,
            abs_lift: 0.1,
            rel_lift: 0.1,
            rel_lift_stddev: 0.05,
            rel_ci: super::Interval {
                lower: 0.0,
                upper: 0.2,
            },
            df: None,
            p_value: 0.04,
            chance_to_beat: 0.98,
            test: super::TestKind::FixedHorizon,
            theta: Some(0.5),
            variance_reduction: Some(0.31),
        };
        let said = |e: &herald_domain::stats::MetricEstimate| super::variance_reduction_clause(e);
        assert_eq!(said(&e), " (CUPED removed 31% of its variance)");
        e.variance_reduction = Some(-1e-6);
        assert_eq!(said(&e), " (CUPED removed 0.0% of its variance)");
        e.variance_reduction = Some(-0.02);
        assert!(said(&e).contains("CUPED added 2.0% to its variance"));
        e.variance_reduction = None;
        assert_eq!(said(&e), "");
    }

    use super::*;

    fn arm(n: u64, k: u64) -> ArmCounts {
        ArmCounts::new(n, k).unwrap()
    }

    #[test]
    fn numbers_read_naturally() {
        assert_eq!(percent(0.0652), "6.5%");
        assert_eq!(percent(0.1249), "12%");
        assert_eq!(percent(-0.0998), "-10%");
        assert_eq!(percent(0.0994), "9.9%");
        assert_eq!(signed_percent(0.12), "+12%");
        assert_eq!(signed_percent(-0.034), "-3.4%");
        assert_eq!(signed_percent(-0.0001), "+0.0%");
        assert_eq!(chance(0.9712), "97%");
        assert_eq!(chance(0.9999), ">99%");
        assert_eq!(chance(0.00002), "<1%");
        assert_eq!(chance(1.0), ">99%");
        assert_eq!(chance(0.0), "<1%");
        assert_eq!(chance(0.985), "98%");
        assert_eq!(p_value(0.31), "p = 0.31");
        assert_eq!(p_value(0.0412), "p = 0.041");
        assert_eq!(p_value(0.00312), "p = 0.0031");
        assert_eq!(p_value(0.00001), "p < 0.0001");
    }

    #[test]
    fn a_win_a_loss_and_a_draw_are_told_apart() {
        let win = compare(arm(10_000, 500), arm(10_000, 650));
        let s = comparison_sentence("discount", "the holdout", &win);
        assert!(
            s.starts_with("discount beat the holdout: +30% conversions (95% CI +"),
            "{s}"
        );
        assert!(s.contains(">99% chance it is better (p < 0.0001)"), "{s}");

        let loss = compare(arm(10_000, 560), arm(10_000, 500));
        let s = comparison_sentence("reminder", "discount", &loss);
        assert!(
            s.starts_with("reminder did worse than discount: -11% conversions"),
            "{s}"
        );
        assert!(s.ends_with("2% chance it is better (p = 0.045)"), "{s}");

        let draw = compare(arm(100, 10), arm(100, 15));
        let s = comparison_sentence("reminder", "the holdout", &draw);
        assert_eq!(
            s,
            "reminder vs the holdout: no clear difference yet: +50% conversions \
             (95% CI -63% to +163%), 81% chance it is better (p = 0.39)"
        );

        let none = compare(arm(100, 0), arm(100, 5));
        assert_eq!(
            comparison_sentence("discount", "the holdout", &none),
            "discount vs the holdout: not enough conversions to compare: the control has no conversions"
        );
    }

    #[test]
    fn the_split_is_judged_at_one_in_a_thousand() {
        let bad = srm_sentence(&srm(&[(5_200, 0.5), (4_800, 0.5)]));
        assert!(
            bad.starts_with("sample ratio mismatch (p < 0.0001, below 0.001)"),
            "{bad}"
        );
        let good = srm_sentence(&srm(&[(5_010, 0.5), (4_990, 0.5)]));
        assert_eq!(
            good,
            "the split fits the weights (sample ratio check p = 0.84)"
        );
    }
}
