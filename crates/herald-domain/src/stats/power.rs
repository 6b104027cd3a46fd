//! Power before the send: the smallest relative lift of a conversion rate that
//! herald's own test would find significant four times in five, for the arm
//! sizes a campaign will have. Used by `herald send --dry-run` to warn when a
//! holdout is too small to show the lift the marketer expects.
//!
//! The equation. herald's test statistic for a rate is T = d^ / sd^(d^), d the
//! relative lift (pB - pA) / pA with SPEC section 5's delta-method variance;
//! multiplied out, T = (pB^ - pA^) / S^ with
//! S^2 = pB(1 - pB) / nB + (1 - pA) pB^2 / (pA nA): the control's variance counted
//! (pB / pA)^2 times. The numerator's true spread is the plain
//! s^2 = pB(1 - pB) / nB + pA(1 - pA) / nA. So, as in the two-variance sample-size
//! equation for two proportions (Fleiss, Levin and Paik, *Statistical Methods for
//! Rates and Proportions*, 3rd ed., section 4.2: Delta = z(1 - alpha/2) s0 +
//! z(1 - beta) s1, the test's standard error and the alternative's), the power is
//! 1 - beta when
//!     pB - pA = c S + z(1 - beta) s,
//! c being the test's threshold: z(1 - alpha/2) for a fixed horizon, the
//! always-valid multiplier of [`super::metric`] for sequential testing. Both
//! sides depend on pB = pA (1 + d), so the MDE d is the equation's root, found
//! by bisection (the left minus the right grows with d). Using one variance for
//! both terms, as the textbook "d = (z_alpha + z_beta) sd" does, overstates the
//! MDE of this test by about 5% (0.328 against 0.312 at a 10% rate and 2,000 a
//! side). The equation is asymptotic: with about 200 conversions an arm the
//! simulated power at the MDE is 83%, with 2,000 it is 80.8%.

use super::metric::{TestKind, sequential_half_width};
use super::{CONFIDENCE_LEVEL, dist};

/// The power the minimum detectable lift is computed for.
pub const POWER: f64 = 0.8;

/// Bisection steps: the bracket [0, 1 / baseline] shrinks to one ulp.
const BISECTION_STEPS: usize = 200;

/// How far a relative lift `d` of a rate `baseline` is past what the test
/// with threshold `threshold` detects with [`POWER`] (see the module's doc);
/// positive once it is detected more often.
fn power_margin(baseline: f64, d: f64, na: f64, nb: f64, threshold: f64, z_power: f64) -> f64 {
    let (pa, pb) = (baseline, baseline * (1.0 + d));
    let variant = pb * (1.0 - pb) / nb;
    let test_se = (variant + (1.0 - pa) * pb * pb / (pa * na)).sqrt();
    let true_se = (variant + pa * (1.0 - pa) / na).sqrt();
    pb - pa - threshold * test_se - z_power * true_se
}

/// The smallest relative lift of a conversion rate `baseline` (0 < baseline < 1)
/// that herald's test detects with [`POWER`] at 5% two-sided, with `n_control`
/// and `n_variant` contacts; `None` when no lift the rate allows (pB <= 1) is
/// detectable, or the inputs cannot describe arms.
pub fn minimum_detectable_lift(
    baseline: f64,
    n_control: u64,
    n_variant: u64,
    test: TestKind,
) -> Option<f64> {
    if !(baseline > 0.0 && baseline < 1.0) || n_control < 2 || n_variant < 2 {
        return None;
    }
    let (na, nb) = (n_control as f64, n_variant as f64);
    let alpha = 1.0 - CONFIDENCE_LEVEL;
    let z_power = dist::normal_upper_quantile(1.0 - POWER);
    let threshold = match test {
        TestKind::FixedHorizon => dist::normal_upper_quantile(alpha / 2.0),
        // The sequential half-width is its standard error times this.
        TestKind::Sequential { tuning } => sequential_half_width(1.0, na + nb, alpha, tuning),
    };
    let margin = |d: f64| power_margin(baseline, d, na, nb, threshold, z_power);
    let top = 1.0 / baseline - 1.0;
    // Not even the largest lift the rate allows is detected (NaN: no arms).
    if margin(top).partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let (mut lo, mut hi) = (0.0, top);
    for _ in 0..BISECTION_STEPS {
        let mid = 0.5 * (lo + hi);
        if margin(mid) > 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::super::{ArmCounts, compare};
    use super::*;

    #[test]
    fn large_arms_meet_the_textbook_formula() {
        // With many contacts the lift is small, both variances meet, and the
        // MDE tends to the textbook (z(0.975) + z(0.8)) sqrt(2 p (1 - p) / n) / p.
        let (p, n) = (0.05, 10_000_000_u64);
        let textbook = (1.959_963_984_540_054 + 0.841_621_233_572_914_3)
            * (2.0 * p * (1.0 - p) / n as f64).sqrt()
            / p;
        let mde = minimum_detectable_lift(p, n, n, TestKind::FixedHorizon).unwrap();
        // The variances still differ by (1 + d)^2 on the control's side: 0.3% here.
        assert!(
            (mde - textbook).abs() / textbook < 5e-3,
            "{mde} vs {textbook}"
        );
    }

    #[test]
    fn smaller_arms_need_larger_lifts_and_sequential_needs_more() {
        let mde = minimum_detectable_lift(0.05, 10_000, 10_000, TestKind::FixedHorizon).unwrap();
        assert!((0.17..0.20).contains(&mde), "{mde}");
        let bigger = minimum_detectable_lift(0.05, 40_000, 40_000, TestKind::FixedHorizon).unwrap();
        assert!(
            (bigger - mde / 2.0).abs() / mde < 0.05,
            "four times the arms, half the MDE"
        );
        let seq = minimum_detectable_lift(
            0.05,
            10_000,
            10_000,
            TestKind::Sequential { tuning: 5000.0 },
        )
        .unwrap();
        assert!(
            seq > mde,
            "always-valid intervals cost power: {seq} vs {mde}"
        );
    }

    #[test]
    fn hopeless_arms_have_no_mde() {
        assert_eq!(
            minimum_detectable_lift(0.05, 1, 100, TestKind::FixedHorizon),
            None
        );
        assert_eq!(
            minimum_detectable_lift(0.0, 100, 100, TestKind::FixedHorizon),
            None
        );
        // A 60% rate cannot rise by the 70% lift that 20 contacts would need.
        assert_eq!(
            minimum_detectable_lift(0.6, 20, 20, TestKind::FixedHorizon),
            None
        );
    }

    /// Seeded SplitMix64: reproducible uniforms without a dependency.
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }

        fn binomial(&mut self, n: u64, p: f64) -> u64 {
            (0..n).filter(|_| self.uniform() < p).count() as u64
        }
    }

    #[test]
    fn herald_finds_the_mde_about_four_times_in_five() {
        // Simulated experiments at the MDE, analysed by herald's own tests.
        use super::super::{Measure, MetricArm, compare_metric};
        let arm = |n: u64, k: u64| MetricArm::Plain {
            measure: Measure::Proportion { n, sum: k as f64 },
        };
        // 2,000 conversions an arm, where the asymptotic equation holds.
        let (p, n) = (0.1, 20_000);
        let sequential = TestKind::Sequential { tuning: 5000.0 };
        for test in [TestKind::FixedHorizon, sequential] {
            let mde = minimum_detectable_lift(p, n, n, test).unwrap();
            let mut rng = Rng(7);
            let runs = 1_500;
            let significant = (0..runs)
                .filter(|_| {
                    let (ka, kb) = (rng.binomial(n, p), rng.binomial(n, p * (1.0 + mde)));
                    if test == TestKind::FixedHorizon {
                        // The binomial report's own path.
                        let (a, b) = (
                            ArmCounts::new(n, ka).unwrap(),
                            ArmCounts::new(n, kb).unwrap(),
                        );
                        compare(a, b)
                            .estimate()
                            .is_some_and(|e| e.p_value < 0.05 && e.rel_lift > 0.0)
                    } else {
                        compare_metric(&arm(n, ka), &arm(n, kb), test)
                            .unwrap()
                            .estimate()
                            .is_some_and(|e| e.p_value < 0.05 && e.rel_lift > 0.0)
                    }
                })
                .count();
            let power = significant as f64 / runs as f64;
            // 1,500 runs: one standard error is 1 point.
            assert!(
                (0.77..0.84).contains(&power),
                "{test:?}: power {power} at MDE {mde}"
            );
        }
    }
}
