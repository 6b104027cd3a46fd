//! Sample-ratio mismatch: do the arms' assigned counts fit the weights they were
//! promised? A chi-squared goodness-of-fit test, as gbstats' `utils.check_srm`.

use serde::Serialize;

use super::dist;

/// A split is flagged as a sample-ratio mismatch below this p-value (SPEC section 5).
pub const SRM_P_THRESHOLD: f64 = 0.001;

/// The outcome of [`srm`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Srm {
    /// Pearson's chi-squared statistic.
    pub chi2: f64,
    /// Degrees of freedom: arms - 1.
    pub df: u32,
    /// P(chi-squared >= `chi2`); 1 when there is nothing to test.
    pub p_value: f64,
    /// `p_value` < [`SRM_P_THRESHOLD`].
    pub mismatch: bool,
}

impl Srm {
    fn nothing_to_test(df: u32) -> Self {
        Self {
            chi2: 0.0,
            df,
            p_value: 1.0,
            mismatch: false,
        }
    }
}

/// Tests each arm's `(assigned count, weight)` against the weights, normalised to
/// sum to one. As gbstats, an arm whose weight is not positive adds no term but
/// still counts towards the degrees of freedom, and no contacts at all pass.
pub fn srm(arms: &[(u64, f64)]) -> Srm {
    let df = u32::try_from(arms.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let total: u128 = arms.iter().map(|&(count, _)| u128::from(count)).sum();
    let total_weight: f64 = arms
        .iter()
        .map(|&(_, weight)| weight)
        .filter(|weight| *weight > 0.0)
        .sum();
    if df == 0 || total == 0 || !(total_weight > 0.0 && total_weight.is_finite()) {
        return Srm::nothing_to_test(df);
    }
    let total = total as f64;
    let chi2: f64 = arms
        .iter()
        .filter(|(_, weight)| *weight > 0.0)
        .map(|&(count, weight)| {
            let expected = weight / total_weight * total;
            let gap = count as f64 - expected;
            gap * gap / expected
        })
        .sum();
    let p_value = dist::chi_squared_sf(chi2, df);
    Srm {
        chi2,
        df,
        p_value,
        mismatch: p_value < SRM_P_THRESHOLD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fair_split_passes_and_a_skewed_one_fails() {
        let fair = srm(&[(5_000, 0.5), (5_000, 0.5)]);
        assert_eq!(
            (fair.chi2, fair.df, fair.p_value, fair.mismatch),
            (0.0, 1, 1.0, false)
        );
        let skewed = srm(&[(5_200, 0.5), (4_800, 0.5)]);
        assert_eq!(skewed.chi2, 16.0);
        assert!(skewed.mismatch);
    }

    #[test]
    fn weights_are_normalised() {
        assert_eq!(
            srm(&[(100, 1.0), (300, 3.0)]),
            srm(&[(100, 0.25), (300, 0.75)])
        );
    }

    #[test]
    fn nothing_to_test_passes() {
        assert_eq!(srm(&[]), Srm::nothing_to_test(0));
        assert_eq!(srm(&[(10, 1.0)]), Srm::nothing_to_test(0));
        assert_eq!(srm(&[(0, 0.5), (0, 0.5)]), Srm::nothing_to_test(1));
        assert_eq!(srm(&[(3, 0.0), (4, 0.0)]), Srm::nothing_to_test(1));
    }

    #[test]
    fn an_arm_without_weight_adds_no_term_like_gbstats() {
        let with_zero = srm(&[(500, 0.5), (500, 0.5), (7, 0.0)]);
        assert_eq!(with_zero.df, 2);
        assert!(
            with_zero.chi2 > 0.0,
            "the 7 stray contacts shift the expected counts"
        );
    }

    #[test]
    fn json_shape_is_stable() {
        let json = serde_json::to_value(srm(&[(5_200, 0.5), (4_800, 0.5)])).unwrap();
        assert_eq!(json["chi2"], 16.0);
        assert_eq!(json["df"], 1);
        assert_eq!(json["mismatch"], true);
        assert!(json["p_value"].is_f64());
    }
}
