//! Metrics beyond a conversion rate, compared as gbstats 0.8 compares them:
//! mean metrics (revenue per assigned contact, LTV: `SampleMeanStatistic`),
//! ratio metrics (revenue per converting contact, clicks per delivered:
//! `RatioStatistic`, delta method), CUPED (`RegressionAdjustedStatistic`: each
//! contact's same measure before the message as the covariate; for a ratio
//! metric `RegressionAdjustedRatioStatistic`, which gbstats gained after 0.8),
//! and the choice
//! of test: fixed-horizon (`TwoSidedTTest`) or sequential, always valid
//! (`SequentialTwoSidedTTest`, Waudby-Smith et al. 2023), for reports read every
//! day. An arm is given as sums (n, sum, sum of squares, sum of products), which
//! is what one scan of the messages yields.

use serde::Serialize;

use super::{CONFIDENCE_LEVEL, Interval, StatsError, TAIL_PROBABILITY, dist};

/// gbstats' default `sequential_tuning_parameter`: the number of contacts (both
/// arms) at which the sequential interval is tightest relative to a fixed one.
pub const DEFAULT_SEQUENTIAL_TUNING: f64 = 5000.0;

/// One measure summed over an arm's contacts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Measure {
    /// A 0/1 measure (converted, clicked): `sum` of ones out of `n`.
    Proportion {
        /// Contacts.
        n: u64,
        /// Contacts with a one.
        sum: f64,
    },
    /// A number per contact (revenue, orders): its sum and sum of squares.
    Mean {
        /// Contacts.
        n: u64,
        /// Sum of the values.
        sum: f64,
        /// Sum of the squared values.
        sum_squares: f64,
    },
}

impl Measure {
    /// Contacts measured.
    pub fn n(&self) -> u64 {
        match *self {
            Measure::Proportion { n, .. } | Measure::Mean { n, .. } => n,
        }
    }

    /// Sum of the values.
    pub fn sum(&self) -> f64 {
        match *self {
            Measure::Proportion { sum, .. } | Measure::Mean { sum, .. } => sum,
        }
    }

    fn sum_squares(&self) -> f64 {
        match *self {
            // A 0/1 value is its own square.
            Measure::Proportion { sum, .. } => sum,
            Measure::Mean { sum_squares, .. } => sum_squares,
        }
    }

    /// The mean per contact; 0 for no contacts, as gbstats.
    pub fn mean(&self) -> f64 {
        match self.n() {
            0 => 0.0,
            n => self.sum() / n as f64,
        }
    }

    /// Per-contact variance: p(1 - p) for a proportion (divisor n), the sample
    /// variance (divisor n - 1, 0 below two contacts) for a mean.
    pub fn variance(&self) -> f64 {
        match *self {
            Measure::Proportion { .. } => {
                let p = self.mean();
                p * (1.0 - p)
            }
            Measure::Mean {
                n,
                sum,
                sum_squares,
                ..
            } => {
                if n <= 1 {
                    return 0.0;
                }
                let n = n as f64;
                (sum_squares - sum * sum / n) / (n - 1.0)
            }
        }
    }

    /// Both arms as one (gbstats' `create_joint_statistic`), for CUPED's theta.
    fn joined(&self, other: &Measure) -> Result<Measure, StatsError> {
        let n = self.n() + other.n();
        match (self, other) {
            (Measure::Proportion { .. }, Measure::Proportion { .. }) => Ok(Measure::Proportion {
                n,
                sum: self.sum() + other.sum(),
            }),
            (Measure::Mean { .. }, Measure::Mean { .. }) => Ok(Measure::Mean {
                n,
                sum: self.sum() + other.sum(),
                sum_squares: self.sum_squares() + other.sum_squares(),
            }),
            _ => Err(StatsError::MismatchedArms),
        }
    }
}

/// Sample covariance of two measures of the same `n` contacts from the sum of
/// their products (divisor n - 1; 0 below two contacts).
fn covariance(n: u64, x: &Measure, y: &Measure, sum_of_products: f64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let n = n as f64;
    (sum_of_products - x.sum() * y.sum() / n) / (n - 1.0)
}

/// One arm of a metric, as sums over its contacts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricArm {
    /// A proportion or a mean per contact.
    Plain {
        /// The measure.
        measure: Measure,
    },
    /// numerator sum / denominator sum (revenue per converting contact).
    Ratio {
        /// Contacts.
        n: u64,
        /// What is divided.
        numerator: Measure,
        /// What it is divided by.
        denominator: Measure,
        /// Sum over contacts of numerator x denominator.
        sum_of_products: f64,
    },
    /// CUPED: the measure after the message, adjusted by the same measure in
    /// the window before it (contacts without history count as zero).
    Adjusted {
        /// Contacts.
        n: u64,
        /// The measure after the message.
        post: Measure,
        /// The same measure before it.
        pre: Measure,
        /// Sum over contacts of post x pre.
        sum_of_products: f64,
    },
    /// CUPED on a ratio metric (gbstats' `RegressionAdjustedRatioStatistic`,
    /// GrowthBook commit 8724b39, after 0.8.0): numerator and denominator after
    /// the message, adjusted by the same two measures in the window before it.
    AdjustedRatio {
        /// Contacts.
        n: u64,
        /// The numerator after the message (revenue).
        numerator: Measure,
        /// The denominator after the message (converted).
        denominator: Measure,
        /// The numerator before it.
        pre_numerator: Measure,
        /// The denominator before it.
        pre_denominator: Measure,
        /// The six sums of products of the four measures, over contacts.
        products: RatioProducts,
    },
}

/// Sums over an arm's contacts of the products of a ratio's four measures
/// (m: numerator, d: denominator; post: after the message, pre: before it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RatioProducts {
    /// m_post x d_post.
    pub m_post_d_post: f64,
    /// m_post x m_pre.
    pub m_post_m_pre: f64,
    /// d_post x d_pre.
    pub d_post_d_pre: f64,
    /// m_pre x d_pre.
    pub m_pre_d_pre: f64,
    /// m_post x d_pre.
    pub m_post_d_pre: f64,
    /// m_pre x d_post.
    pub m_pre_d_post: f64,
}

/// Which test's intervals and p-values a comparison shows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TestKind {
    /// Valid when read once, at the planned end (Student t).
    FixedHorizon,
    /// Always valid: may be read every day without raising the error rate.
    Sequential {
        /// gbstats' `sequential_tuning_parameter` ([`DEFAULT_SEQUENTIAL_TUNING`]).
        tuning: f64,
    },
}

/// Why a metric comparison has no estimate (gbstats' error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricNoEstimate {
    /// An arm has no contacts (`NO_UNITS_IN_VARIATION`).
    EmptyArm,
    /// The control's mean is zero, so a relative lift is undefined
    /// (`ZERO_NEGATIVE_BASELINE_VARIATION`).
    ZeroBaseline,
    /// An arm's values have no spread: one contact, or all equal
    /// (`ZERO_NEGATIVE_VARIANCE`).
    NoSpread,
}

impl MetricNoEstimate {
    /// The reason in a marketer's words.
    pub fn message(self) -> &'static str {
        match self {
            Self::EmptyArm => "not enough data to compare: an arm has no contacts yet",
            Self::ZeroBaseline => {
                "not enough data to compare: the control's value is zero, so a relative lift is undefined"
            }
            Self::NoSpread => {
                "not enough data to compare: an arm's values do not vary (one contact, or all equal)"
            }
        }
    }
}

/// A variant's metric measured against its control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MetricEstimate {
    /// The control's mean (CUPED-adjusted when adjusted).
    pub control_mean: f64,
    /// The variant's mean (CUPED-adjusted when adjusted).
    pub variant_mean: f64,
    /// variant_mean - control_mean.
    pub abs_lift: f64,
    /// (variant - control) / control's unadjusted mean, gbstats' `expected`.
    pub rel_lift: f64,
    /// Delta-method standard deviation of the relative lift.
    pub rel_lift_stddev: f64,
    /// [`CONFIDENCE_LEVEL`] interval of the relative lift, of the test's kind.
    pub rel_ci: Interval,
    /// Welch-Satterthwaite degrees of freedom (fixed horizon only).
    pub df: Option<f64>,
    /// Two-sided p-value, of the test's kind.
    pub p_value: f64,
    /// Chance the variant beats the control under a flat prior.
    pub chance_to_beat: f64,
    /// The test the interval and p-value come from.
    pub test: TestKind,
    /// CUPED's regression coefficient; `None` when not adjusted, 0 when the
    /// history had no variance (then nothing is adjusted, as gbstats).
    pub theta: Option<f64>,
    /// Share of the lift's variance that CUPED removed (1 - adjusted /
    /// unadjusted); `None` when not adjusted.
    pub variance_reduction: Option<f64>,
}

/// The outcome of [`compare_metric`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MetricComparison {
    /// The numbers.
    Estimate(MetricEstimate),
    /// No estimate, and why.
    NotEnoughData {
        /// Machine-readable reason.
        reason: MetricNoEstimate,
        /// The reason in words.
        message: &'static str,
    },
}

impl MetricComparison {
    /// The estimate, if there is one.
    pub fn estimate(&self) -> Option<&MetricEstimate> {
        match self {
            Self::Estimate(e) => Some(e),
            Self::NotEnoughData { .. } => None,
        }
    }

    fn not_enough(reason: MetricNoEstimate) -> Self {
        Self::NotEnoughData {
            reason,
            message: reason.message(),
        }
    }
}

/// An arm reduced to what a test needs (gbstats' `Statistic` properties).
#[derive(Debug, Clone, Copy)]
struct Summary {
    n: u64,
    mean: f64,
    unadjusted_mean: f64,
    variance: f64,
}

fn plain(measure: &Measure) -> Summary {
    Summary {
        n: measure.n(),
        mean: measure.mean(),
        unadjusted_mean: measure.mean(),
        variance: measure.variance(),
    }
}

fn ratio(n: u64, numerator: &Measure, denominator: &Measure, sum_of_products: f64) -> Summary {
    let (m, d) = (numerator, denominator);
    let mean = if d.sum() == 0.0 {
        0.0
    } else {
        m.sum() / d.sum()
    };
    let (mean_m, mean_d) = (m.mean(), d.mean());
    let variance = if mean_d == 0.0 || n <= 1 {
        0.0
    } else {
        let cov = covariance(n, m, d, sum_of_products);
        m.variance() / mean_d.powi(2) - 2.0 * cov * mean_m / mean_d.powi(3)
            + mean_m.powi(2) * d.variance() / mean_d.powi(4)
    };
    Summary {
        n,
        mean,
        unadjusted_mean: mean,
        variance,
    }
}

fn adjusted(n: u64, post: &Measure, pre: &Measure, sum_of_products: f64, theta: f64) -> Summary {
    let variance = if n <= 1 {
        0.0
    } else {
        post.variance() + theta * theta * pre.variance()
            - 2.0 * theta * covariance(n, post, pre, sum_of_products)
    };
    Summary {
        n,
        mean: post.mean() - theta * pre.mean(),
        unadjusted_mean: post.mean(),
        variance,
    }
}

/// One arm of a CUPED ratio metric, as gbstats' `RegressionAdjustedRatioStatistic`
/// sees it: the vector of per-contact means (m_post, d_post, m_pre, d_pre) and
/// their covariance matrix, the ratio's variance by the delta method.
struct RatioArm<'a> {
    n: u64,
    measures: [&'a Measure; 4],
    products: &'a RatioProducts,
}

impl RatioArm<'_> {
    /// gbstats' `betahat`: the four per-contact means.
    fn means(&self) -> [f64; 4] {
        self.measures.map(Measure::mean)
    }

    /// gbstats' `lambda_matrix`: the four measures' covariance matrix.
    fn lambda(&self) -> [[f64; 4]; 4] {
        let [m, d, mp, dp] = self.measures;
        let p = self.products;
        let cov = |x: &Measure, y: &Measure, s: f64| covariance(self.n, x, y, s);
        let (m_d, m_mp, m_dp) = (
            cov(m, d, p.m_post_d_post),
            cov(m, mp, p.m_post_m_pre),
            cov(m, dp, p.m_post_d_pre),
        );
        let (d_mp, d_dp, mp_dp) = (
            cov(d, mp, p.m_pre_d_post),
            cov(d, dp, p.d_post_d_pre),
            cov(mp, dp, p.m_pre_d_pre),
        );
        [
            [m.variance(), m_d, m_mp, m_dp],
            [m_d, d.variance(), d_mp, d_dp],
            [m_mp, d_mp, mp.variance(), mp_dp],
            [m_dp, d_dp, mp_dp, dp.variance()],
        ]
    }

    /// gbstats' `nabla`: the gradient of m_post / d_post - theta m_pre / d_pre
    /// in the four means; zero when either denominator's mean is.
    fn nabla(&self, theta: f64) -> [f64; 4] {
        let [m, d, mp, dp] = self.means();
        if d == 0.0 || dp == 0.0 {
            return [0.0; 4];
        }
        [1.0 / d, -m / (d * d), -theta / dp, theta * mp / (dp * dp)]
    }

    /// The ratio of sums after (`pre` false) or before the message; 0 over a zero sum.
    fn ratio_of_sums(&self, pre: bool) -> f64 {
        let k = if pre { 2 } else { 0 };
        let (m, d) = (self.measures[k], self.measures[k + 1]);
        if d.sum() == 0.0 {
            0.0
        } else {
            m.sum() / d.sum()
        }
    }

    fn summary(&self, theta: f64) -> Summary {
        let [_, d, _, dp] = self.measures;
        let nabla = self.nabla(theta);
        Summary {
            n: self.n,
            // As gbstats: an arm without a pre-period denominator has mean 0.
            mean: if d.sum() == 0.0 || dp.sum() == 0.0 {
                0.0
            } else {
                self.ratio_of_sums(false) - theta * self.ratio_of_sums(true)
            },
            unadjusted_mean: self.ratio_of_sums(false),
            variance: quadratic(&nabla, &self.lambda(), &nabla),
        }
    }

    /// With theta 1: (the variance of the pre-period ratio, its covariance
    /// with the post-period one), gbstats' `var_pre` and `covariance`.
    fn pre_terms(&self) -> (f64, f64) {
        let [n0, n1, n2, n3] = self.nabla(1.0);
        let lambda = self.lambda();
        let pre = [0.0, 0.0, n2, n3];
        (
            quadratic(&pre, &lambda, &pre),
            quadratic(&pre, &lambda, &[n0, n1, 0.0, 0.0]),
        )
    }
}

/// x' L y.
fn quadratic(x: &[f64; 4], l: &[[f64; 4]; 4], y: &[f64; 4]) -> f64 {
    (0..4)
        .map(|i| (0..4).map(|j| x[i] * l[i][j] * y[j]).sum::<f64>())
        .sum()
}

/// gbstats' `compute_theta_regression_adjusted_ratio`: minus the pooled
/// covariance of the pre- and post-period ratios over the pooled pre-period
/// ratio's variance; 0 when that variance is.
fn ratio_theta(a: &RatioArm<'_>, b: &RatioArm<'_>) -> f64 {
    let ((va, ca), (vb, cb)) = (a.pre_terms(), b.pre_terms());
    if va + vb == 0.0 {
        return 0.0;
    }
    -(ca + cb) / (va + vb)
}

/// gbstats' `frequentist_variance_relative_cuped_ratio`: the delta-method
/// variance of (adjusted b - adjusted a) / unadjusted a.
fn ratio_relative_variance(a: &RatioArm<'_>, b: &RatioArm<'_>, theta: f64) -> f64 {
    let (sa, sb) = (a.summary(theta), b.summary(theta));
    let d = a.measures[1].mean();
    if sa.unadjusted_mean == 0.0 || d == 0.0 {
        return 0.0;
    }
    let m = a.measures[0].mean();
    let g_abs = sb.mean - sa.mean;
    let g = sa.unadjusted_mean.abs();
    let na = a.nabla(theta);
    let grad_a = [
        -(g + g_abs) / d / (g * g),
        (m * g / (d * d) + m * g_abs / (d * d)) / (g * g),
        -na[2] / g,
        -na[3] / g,
    ];
    let grad_b = b.nabla(theta).map(|x| x / g);
    quadratic(&grad_a, &a.lambda(), &grad_a) / a.n as f64
        + quadratic(&grad_b, &b.lambda(), &grad_b) / b.n as f64
}

/// CUPED's theta over both arms together (gbstats' `compute_theta`): the
/// covariance of post and pre over their pooled contacts divided by the pooled
/// pre variance; 0 when either pooled measure has no variance.
fn theta(
    a: (u64, &Measure, &Measure, f64),
    b: (u64, &Measure, &Measure, f64),
) -> Result<f64, StatsError> {
    let n = a.0 + b.0;
    let post = a.1.joined(b.1)?;
    let pre = a.2.joined(b.2)?;
    if pre.variance() == 0.0 || post.variance() == 0.0 {
        return Ok(0.0);
    }
    Ok(covariance(n, &post, &pre, a.3 + b.3) / pre.variance())
}

/// gbstats' `frequentist_variance(..., relative=True)`: the delta-method variance
/// of (mean_b - mean_a) / unadjusted mean_a.
fn relative_variance(a: &Summary, b: &Summary) -> f64 {
    let (ma, mb) = (a.unadjusted_mean, b.unadjusted_mean);
    b.variance / (ma * ma * b.n as f64) + a.variance * mb * mb / (ma.powi(4) * a.n as f64)
}

/// gbstats' `TTest.dof`: Welch-Satterthwaite on the absolute scale.
fn welch_df(a: &Summary, b: &Summary) -> f64 {
    let (na, nb) = (a.n as f64, b.n as f64);
    let (se2_a, se2_b) = (a.variance / na, b.variance / nb);
    (se2_a + se2_b).powi(2) / (se2_b * se2_b / (nb - 1.0) + se2_a * se2_a / (na - 1.0))
}

/// The sequential test's rho for two-sided alpha (Waudby-Smith et al. 2023, eq. 161).
fn sequential_rho(alpha: f64, tuning: f64) -> f64 {
    let l = -2.0 * alpha.ln();
    ((l + (l + 1.0).ln()) / tuning).sqrt()
}

/// Half-width of the always-valid interval around a relative lift whose
/// delta-method variance is `variance`, after `n` contacts in both arms (eq. 9).
pub(super) fn sequential_half_width(variance: f64, n: f64, alpha: f64, tuning: f64) -> f64 {
    let rho = sequential_rho(alpha, tuning);
    let nr2 = n * rho * rho;
    let s2 = variance * n;
    s2.sqrt() * ((2.0 * (nr2 + 1.0)) * ((nr2 + 1.0).sqrt() / alpha).ln() / (n * rho).powi(2)).sqrt()
}

/// The always-valid p-value (eq. 155): the inverse of the e-value, at most 1.
pub(super) fn sequential_p_value(lift: f64, variance: f64, n: f64, alpha: f64, tuning: f64) -> f64 {
    let rho = sequential_rho(alpha, tuning);
    let st2 = lift * lift * n / variance;
    let tr2p1 = n * rho * rho + 1.0;
    // 1 / e-value, in logs so that a huge e-value gives 0 rather than inf / inf.
    let log_inverse = -(rho * rho * st2 / (2.0 * tr2p1)) + 0.5 * tr2p1.ln();
    log_inverse.exp().min(1.0)
}

/// The variant's metric against its control, as gbstats' `TwoSidedTTest` or
/// `SequentialTwoSidedTTest` (interval, p-value) and the flat-prior
/// `EffectBayesianABTest` (chance to beat), relative differences, alpha 0.05.
/// Both arms must be of one kind (and their measures of one kind each).
pub fn compare_metric(
    control: &MetricArm,
    variant: &MetricArm,
    test: TestKind,
) -> Result<MetricComparison, StatsError> {
    // The relative variance when it is not `relative_variance` of the two
    // summaries (a CUPED ratio's own delta method).
    let mut own_variance = None;
    let (a, b, theta, unadjusted) = match (control, variant) {
        (MetricArm::Plain { measure: ma }, MetricArm::Plain { measure: mb }) => {
            ma.joined(mb)?;
            (plain(ma), plain(mb), None, None)
        }
        (
            MetricArm::Ratio {
                n: na,
                numerator: ma,
                denominator: da,
                sum_of_products: pa,
            },
            MetricArm::Ratio {
                n: nb,
                numerator: mb,
                denominator: db,
                sum_of_products: pb,
            },
        ) => {
            ma.joined(mb)?;
            da.joined(db)?;
            (ratio(*na, ma, da, *pa), ratio(*nb, mb, db, *pb), None, None)
        }
        (
            MetricArm::Adjusted {
                n: na,
                post: qa,
                pre: ra,
                sum_of_products: pa,
            },
            MetricArm::Adjusted {
                n: nb,
                post: qb,
                pre: rb,
                sum_of_products: pb,
            },
        ) => {
            let t = theta((*na, qa, ra, *pa), (*nb, qb, rb, *pb))?;
            let unadjusted = (
                adjusted(*na, qa, ra, *pa, 0.0),
                adjusted(*nb, qb, rb, *pb, 0.0),
            );
            (
                adjusted(*na, qa, ra, *pa, t),
                adjusted(*nb, qb, rb, *pb, t),
                Some(t),
                Some(unadjusted),
            )
        }
        (
            MetricArm::AdjustedRatio {
                n: na,
                numerator: ma,
                denominator: da,
                pre_numerator: mpa,
                pre_denominator: dpa,
                products: pa,
            },
            MetricArm::AdjustedRatio {
                n: nb,
                numerator: mb,
                denominator: db,
                pre_numerator: mpb,
                pre_denominator: dpb,
                products: pb,
            },
        ) => {
            for (x, y) in [(ma, mb), (da, db), (mpa, mpb), (dpa, dpb)] {
                x.joined(y)?;
            }
            let arm_a = RatioArm {
                n: *na,
                measures: [ma, da, mpa, dpa],
                products: pa,
            };
            let arm_b = RatioArm {
                n: *nb,
                measures: [mb, db, mpb, dpb],
                products: pb,
            };
            let unadjusted = (
                ratio(*na, ma, da, pa.m_post_d_post),
                ratio(*nb, mb, db, pb.m_post_d_post),
            );
            let t = ratio_theta(&arm_a, &arm_b);
            if t == 0.0 {
                // As gbstats: no pre-period variance, so the plain ratio.
                (unadjusted.0, unadjusted.1, Some(0.0), Some(unadjusted))
            } else {
                own_variance = Some(ratio_relative_variance(&arm_a, &arm_b, t));
                (
                    arm_a.summary(t),
                    arm_b.summary(t),
                    Some(t),
                    Some(unadjusted),
                )
            }
        }
        _ => return Err(StatsError::MismatchedArms),
    };
    if a.n == 0 || b.n == 0 {
        return Ok(MetricComparison::not_enough(MetricNoEstimate::EmptyArm));
    }
    if a.mean == 0.0 || a.unadjusted_mean == 0.0 {
        return Ok(MetricComparison::not_enough(MetricNoEstimate::ZeroBaseline));
    }
    if a.variance <= 0.0 || b.variance <= 0.0 {
        return Ok(MetricComparison::not_enough(MetricNoEstimate::NoSpread));
    }
    let rel_lift = (b.mean - a.mean) / a.unadjusted_mean;
    let variance = own_variance.unwrap_or_else(|| relative_variance(&a, &b));
    let stddev = variance.sqrt();
    let alpha = 1.0 - CONFIDENCE_LEVEL;
    let (half_width, p_value, df) = match test {
        TestKind::FixedHorizon => {
            let df = welch_df(&a, &b);
            let half = dist::student_t_upper_quantile(TAIL_PROBABILITY, df) * stddev;
            let p = (2.0 * dist::student_t_sf((rel_lift / stddev).abs(), df)).min(1.0);
            (half, p, Some(df))
        }
        TestKind::Sequential { tuning } => {
            let n = (a.n + b.n) as f64;
            (
                sequential_half_width(variance, n, alpha, tuning),
                sequential_p_value(rel_lift, variance, n, alpha, tuning),
                None,
            )
        }
    };
    let variance_reduction = unadjusted.map(|(ua, ub)| {
        let before = relative_variance(&ua, &ub);
        if before > 0.0 {
            1.0 - variance / before
        } else {
            0.0
        }
    });
    Ok(MetricComparison::Estimate(MetricEstimate {
        control_mean: a.mean,
        variant_mean: b.mean,
        abs_lift: b.mean - a.mean,
        rel_lift,
        rel_lift_stddev: stddev,
        rel_ci: Interval {
            lower: rel_lift - half_width,
            upper: rel_lift + half_width,
        },
        df,
        p_value,
        chance_to_beat: dist::normal_cdf(rel_lift / stddev),
        test,
        theta,
        variance_reduction,
    }))
}
