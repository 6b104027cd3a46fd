//! Corrections for many comparisons: a report with three variants and four
//! metrics makes twelve comparisons, and one of them is "significant" at 5%
//! about half the time by chance alone. The family is every
//! variant-vs-control pair times every metric of the report; the adjusted
//! p-values are those of R's `p.adjust` and GrowthBook's app.

use serde::Serialize;

/// How p-values of one report are adjusted for their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Correction {
    /// Each comparison on its own (the default).
    #[default]
    None,
    /// Holm-Bonferroni (1979): controls the family-wise error rate.
    Holm,
    /// Benjamini-Hochberg (1995): controls the false discovery rate.
    BenjaminiHochberg,
}

/// The `p_values` adjusted by `correction`, in their order. NaN stays NaN
/// and is not counted in the family.
pub fn adjust_p_values(p_values: &[f64], correction: Correction) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p_values.len())
        .filter(|&i| !p_values[i].is_nan())
        .collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let m = order.len() as f64;
    let mut adjusted = p_values.to_vec();
    match correction {
        Correction::None => {}
        Correction::Holm => {
            // Step down: the i-th smallest is multiplied by m - i + 1, and an
            // adjusted value never falls below the one before it.
            let mut running = 0.0_f64;
            for (rank, &i) in order.iter().enumerate() {
                running = running.max(((m - rank as f64) * p_values[i]).min(1.0));
                adjusted[i] = running;
            }
        }
        Correction::BenjaminiHochberg => {
            // Step up: the i-th smallest is multiplied by m / i, and an
            // adjusted value never exceeds the one after it.
            let mut running = 1.0_f64;
            for (rank, &i) in order.iter().enumerate().rev() {
                running = running.min((m / (rank as f64 + 1.0) * p_values[i]).min(1.0));
                adjusted[i] = running;
            }
        }
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Benjamini and Hochberg (1995), section 4.1: fifteen p-values from a
    /// study of myocardial infarction treatments.
    const BH_1995: [f64; 15] = [
        0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262,
        0.5719, 0.6528, 0.7590, 1.000,
    ];

    fn rejected(adjusted: &[f64]) -> usize {
        adjusted.iter().filter(|&&p| p <= 0.05).count()
    }

    #[test]
    fn the_published_example_rejects_as_the_paper_says() {
        // The paper: BH rejects the four smallest; Bonferroni-type procedures
        // (Holm's included) reject only the three smallest.
        let bh = adjust_p_values(&BH_1995, Correction::BenjaminiHochberg);
        let holm = adjust_p_values(&BH_1995, Correction::Holm);
        assert_eq!(rejected(&bh), 4);
        assert_eq!(rejected(&holm), 3);
        assert_eq!(rejected(&BH_1995), 9, "unadjusted");
    }

    #[test]
    fn adjusted_values_equal_statsmodels() {
        // statsmodels 0.15 `multipletests(p, method="holm" | "fdr_bh")` on the
        // paper's p-values (the same as R's `p.adjust`).
        let holm = [
            0.0015, 0.0056, 0.0247, 0.114, 0.2211, 0.278, 0.278, 0.278, 0.3213, 1.0, 1.0, 1.0, 1.0,
            1.0, 1.0,
        ];
        let bh = [
            0.0015,
            0.003,
            0.0095,
            0.035625,
            0.0603,
            0.0638571429,
            0.0638571429,
            0.0645,
            0.0765,
            0.486,
            0.5811818182,
            0.714875,
            0.7532307692,
            0.8132142857,
            1.0,
        ];
        for (correction, want) in [
            (Correction::Holm, holm),
            (Correction::BenjaminiHochberg, bh),
        ] {
            let got = adjust_p_values(&BH_1995, correction);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-9, "{correction:?}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn order_is_kept_and_nan_is_outside_the_family() {
        let p = [0.04, f64::NAN, 0.01];
        let holm = adjust_p_values(&p, Correction::Holm);
        assert_eq!(holm[2], 0.02);
        assert_eq!(holm[0], 0.04);
        assert!(holm[1].is_nan());
        assert_eq!(adjust_p_values(&p, Correction::None)[0], 0.04);
        assert!(adjust_p_values(&[], Correction::BenjaminiHochberg).is_empty());
    }
}
