//! Seeded simulations of why sequential testing and CUPED exist: A/A tests
//! (no true difference) read at ten looks, and A/A tests with a pre-period
//! history. Fast enough for every `cargo test`.

use super::{
    CONFIDENCE_LEVEL, DEFAULT_SEQUENTIAL_TUNING, Measure, MetricArm, MetricComparison,
    RatioProducts, TestKind, compare_metric,
};

/// Seeded SplitMix64 uniforms, and normals by Box-Muller: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn proportion(n: u64, sum: u64) -> MetricArm {
    MetricArm::Plain {
        measure: Measure::Proportion { n, sum: sum as f64 },
    }
}

/// Share of `tests` A/A experiments declared significant at any of `looks`
/// looks, each look adding `per_look` contacts to each arm, rate `p`.
fn false_positives_with_peeking(test: TestKind, seed: u64) -> f64 {
    const TESTS: usize = 2_000;
    const LOOKS: usize = 10;
    const PER_LOOK: u64 = 200;
    const RATE: f64 = 0.1;
    let alpha = 1.0 - CONFIDENCE_LEVEL;
    let mut rng = Rng(seed);
    let mut declared = 0;
    for _ in 0..TESTS {
        let (mut ka, mut kb, mut n) = (0_u64, 0_u64, 0_u64);
        let mut significant = false;
        for _ in 0..LOOKS {
            n += PER_LOOK;
            ka += (0..PER_LOOK).filter(|_| rng.uniform() < RATE).count() as u64;
            kb += (0..PER_LOOK).filter(|_| rng.uniform() < RATE).count() as u64;
            let result = compare_metric(&proportion(n, ka), &proportion(n, kb), test).unwrap();
            if let MetricComparison::Estimate(e) = result {
                significant |= e.p_value < alpha;
            }
        }
        declared += usize::from(significant);
    }
    declared as f64 / TESTS as f64
}

#[test]
fn sequential_testing_survives_daily_peeking_and_fixed_horizon_does_not() {
    let sequential = false_positives_with_peeking(
        TestKind::Sequential {
            tuning: DEFAULT_SEQUENTIAL_TUNING,
        },
        11,
    );
    let fixed = false_positives_with_peeking(TestKind::FixedHorizon, 11);
    println!("A/A, 10 looks: sequential {sequential:.3}, fixed horizon {fixed:.3}");
    // 2,000 tests: one standard error at 5% is 0.5 points.
    assert!(sequential <= 0.05, "sequential declared {sequential}");
    // Read ten times, a fixed-horizon p-value is wrong far more often than its
    // 5% (about 19% in theory for ten equally spaced looks).
    assert!(fixed >= 0.12, "fixed horizon declared only {fixed}");
}

/// One A/A arm of `n` contacts whose spend after the message follows their
/// spend before it (correlation about 0.85), summed for CUPED.
fn history_arm(rng: &mut Rng, n: u64) -> MetricArm {
    let (mut post_sum, mut post_sq, mut pre_sum, mut pre_sq, mut products) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    for _ in 0..n {
        let pre = 50.0 + 20.0 * rng.normal();
        let post = 30.0 + 0.8 * pre + 10.0 * rng.normal();
        post_sum += post;
        post_sq += post * post;
        pre_sum += pre;
        pre_sq += pre * pre;
        products += post * pre;
    }
    MetricArm::Adjusted {
        n,
        post: Measure::Mean {
            n,
            sum: post_sum,
            sum_squares: post_sq,
        },
        pre: Measure::Mean {
            n,
            sum: pre_sum,
            sum_squares: pre_sq,
        },
        sum_of_products: products,
    }
}

#[test]
fn cuped_narrows_intervals_and_keeps_their_coverage() {
    const TESTS: usize = 1_000;
    const N: u64 = 500;
    let mut rng = Rng(23);
    let (mut covered, mut reduction) = (0, 0.0);
    for _ in 0..TESTS {
        let (a, b) = (history_arm(&mut rng, N), history_arm(&mut rng, N));
        let e = *compare_metric(&a, &b, TestKind::FixedHorizon)
            .unwrap()
            .estimate()
            .expect("an estimate");
        covered += usize::from(e.rel_ci.lower <= 0.0 && 0.0 <= e.rel_ci.upper);
        reduction += e.variance_reduction.expect("adjusted");
    }
    let coverage = covered as f64 / TESTS as f64;
    let reduction = reduction / TESTS as f64;
    println!("CUPED A/A: coverage {coverage:.3}, variance reduction {reduction:.3}");
    // 1,000 tests: one standard error of a 95% coverage is 0.7 points.
    assert!((0.93..=0.97).contains(&coverage), "coverage {coverage}");
    // Theory: the squared correlation of post and pre, 256 / 356 = 0.72.
    assert!((0.65..0.78).contains(&reduction), "reduction {reduction}");
}

/// One A/A arm of `n` contacts for CUPED on a ratio (revenue per converting
/// contact): contacts who bought in the window before (about 40%) convert more
/// often after the message, for about what they spent before.
fn ratio_history_arm(rng: &mut Rng, n: u64) -> MetricArm {
    let mut x = [0.0_f64; 4]; // sums of m, d, m_pre, d_pre
    let mut squares = [0.0_f64; 2]; // of m and m_pre (d and d_pre are 0/1)
    let mut p = RatioProducts::default();
    for _ in 0..n {
        let d_pre = f64::from(u8::from(rng.uniform() < 0.4));
        let m_pre = d_pre * (40.0 + 12.0 * rng.normal()).max(1.0);
        let d = f64::from(u8::from(rng.uniform() < 0.1 + 0.3 * d_pre));
        let m = d * (20.0 + 0.6 * m_pre + 8.0 * rng.normal()).max(1.0);
        for (s, v) in x.iter_mut().zip([m, d, m_pre, d_pre]) {
            *s += v;
        }
        squares[0] += m * m;
        squares[1] += m_pre * m_pre;
        p.m_post_d_post += m * d;
        p.m_post_m_pre += m * m_pre;
        p.d_post_d_pre += d * d_pre;
        p.m_pre_d_pre += m_pre * d_pre;
        p.m_post_d_pre += m * d_pre;
        p.m_pre_d_post += m_pre * d;
    }
    let mean = |sum, sum_squares| Measure::Mean {
        n,
        sum,
        sum_squares,
    };
    MetricArm::AdjustedRatio {
        n,
        numerator: mean(x[0], squares[0]),
        denominator: Measure::Proportion { n, sum: x[1] },
        pre_numerator: mean(x[2], squares[1]),
        pre_denominator: Measure::Proportion { n, sum: x[3] },
        products: p,
    }
}

/// One A/A arm of conversion with CUPED: a contact who converted in the
/// window before (30%) converts again more often.
fn conversion_history_arm(rng: &mut Rng, n: u64) -> MetricArm {
    let (mut post, mut pre, mut both) = (0.0, 0.0, 0.0);
    for _ in 0..n {
        let before = f64::from(u8::from(rng.uniform() < 0.3));
        let after = f64::from(u8::from(rng.uniform() < 0.05 + 0.25 * before));
        post += after;
        pre += before;
        both += after * before;
    }
    MetricArm::Adjusted {
        n,
        post: Measure::Proportion { n, sum: post },
        pre: Measure::Proportion { n, sum: pre },
        sum_of_products: both,
    }
}

/// Draws one A/A arm of `n` contacts.
type DrawArm = fn(&mut Rng, u64) -> MetricArm;

/// (coverage of the true lift 0, mean variance reduction) of `TESTS` A/A
/// comparisons of arms drawn by `arm`, under `test`.
fn aa_coverage(seed: u64, test: TestKind, arm: DrawArm) -> (f64, f64) {
    const TESTS: usize = 1_000;
    const N: u64 = 2_000;
    let mut rng = Rng(seed);
    let (mut covered, mut reduction) = (0, 0.0);
    for _ in 0..TESTS {
        let (a, b) = (arm(&mut rng, N), arm(&mut rng, N));
        let e = *compare_metric(&a, &b, test)
            .unwrap()
            .estimate()
            .expect("an estimate");
        covered += usize::from(e.rel_ci.lower <= 0.0 && 0.0 <= e.rel_ci.upper);
        reduction += e.variance_reduction.expect("adjusted");
    }
    (covered as f64 / TESTS as f64, reduction / TESTS as f64)
}

#[test]
fn cuped_on_ratios_and_conversion_keeps_coverage_fixed_and_sequential() {
    let arms: [(&str, DrawArm); 2] = [
        ("revenue per converter", ratio_history_arm),
        ("conversion", conversion_history_arm),
    ];
    for (seed, (name, arm)) in (31..).zip(arms) {
        let (fixed, reduction) = aa_coverage(seed, TestKind::FixedHorizon, arm);
        let (sequential, _) = aa_coverage(
            seed,
            TestKind::Sequential {
                tuning: DEFAULT_SEQUENTIAL_TUNING,
            },
            arm,
        );
        println!(
            "CUPED A/A, {name}: coverage fixed {fixed:.3}, sequential {sequential:.3}, \
             variance reduction {reduction:.3}"
        );
        // 1,000 tests: one standard error of a 95% coverage is 0.7 points.
        assert!(
            (0.93..=0.97).contains(&fixed),
            "{name}: fixed coverage {fixed}"
        );
        // Always valid: at least nominal at any one look.
        assert!(
            sequential >= 0.95,
            "{name}: sequential coverage {sequential}"
        );
        assert!(reduction > 0.05, "{name}: CUPED removed only {reduction}");
    }
}
