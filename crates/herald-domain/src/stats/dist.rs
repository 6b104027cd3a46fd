//! The distribution functions behind the A/B statistics: the standard normal,
//! Student's t (survival function and upper quantile, accurate at any degrees of
//! freedom, from 1 to beyond 1e11) and chi-squared. statrs supplies the special
//! functions, with two detours: its Student-t quantile drifts beyond about 1e5
//! degrees of freedom (7% off at 1e7) and never returns at 1e8, and its `erfc` is
//! only good to about 1e-10, so the normal goes through the incomplete gamma function.

use std::f64::consts::{PI, SQRT_2};

use statrs::function::beta::checked_beta_reg;
use statrs::function::erf::erfc_inv;
use statrs::function::gamma::{checked_gamma_ur, ln_gamma};

/// From this many degrees of freedom on, Student's t uses Fisher's expansion in
/// 1/df: its absolute error there is below 1e-15 (relative accuracy fades only
/// where sf < 1e-20), while statrs' incomplete beta function loses digits as df
/// grows (1e-8 off at df = 1e8).
const ASYMPTOTIC_MIN_DF: f64 = 1_000.0;

/// Fisher's (1926) expansion: sf_t(t) = sf_normal(t) + pdf_normal(t) * sum_k q_k(t) / df^k.
/// Row k - 1 holds the coefficients of q_k for t, t^3, t^5, ...; derived with sympy by
/// `tests/gbstats_reference.py --derive`.
const FISHER_EXPANSION: [&[f64]; 5] = [
    &[1.0 / 4.0, 1.0 / 4.0],
    &[-1.0 / 32.0, -5.0 / 96.0, -7.0 / 96.0, 1.0 / 32.0],
    &[
        -5.0 / 128.0,
        -1.0 / 128.0,
        1.0 / 64.0,
        7.0 / 192.0,
        -11.0 / 384.0,
        1.0 / 384.0,
    ],
    &[
        21.0 / 2048.0,
        61.0 / 6144.0,
        -71.0 / 30720.0,
        -313.0 / 30720.0,
        -2141.0 / 92160.0,
        445.0 / 18432.0,
        -25.0 / 6144.0,
        1.0 / 6144.0,
    ],
    &[
        399.0 / 8192.0,
        119.0 / 8192.0,
        1.0 / 2048.0,
        19.0 / 6144.0,
        83.0 / 12288.0,
        333.0 / 20480.0,
        -1879.0 / 92160.0,
        49.0 / 10240.0,
        -133.0 / 368_640.0,
        1.0 / 122_880.0,
    ],
];

/// Newton steps of the quantile search stop when they move less than this many ulps.
const QUANTILE_TOLERANCE_ULPS: f64 = 4.0;

/// Enough for bracket doubling plus bisection down to one ulp; Newton needs about five.
const QUANTILE_MAX_ITERATIONS: usize = 2_200;

/// Standard normal cumulative distribution function.
pub(super) fn normal_cdf(x: f64) -> f64 {
    normal_sf(-x)
}

/// Standard normal survival function, 1 - cdf, without cancellation in the tail:
/// erfc(x / sqrt 2) / 2 = Q(1/2, x^2 / 2) / 2, good to 1e-14 relative (statrs' own
/// `erfc` is off by up to 1e-10: it reads Boost's single-precision constants as doubles).
fn normal_sf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 1.0 - normal_sf(-x);
    }
    if x == 0.0 {
        return 0.5;
    }
    if x.is_infinite() {
        return 0.0;
    }
    0.5 * checked_gamma_ur(0.5, 0.5 * x * x).unwrap_or(f64::NAN)
}

/// The z with P(Z > z) = `upper` for the standard normal, 0 < `upper` < 1:
/// statrs' `erfc_inv` (about 1e-10), polished by two Newton steps on [`normal_sf`].
pub(super) fn normal_upper_quantile(upper: f64) -> f64 {
    if !(upper > 0.0 && upper < 1.0) {
        return f64::NAN;
    }
    let mut z = SQRT_2 * erfc_inv(2.0 * upper);
    for _ in 0..2 {
        z += (normal_sf(z) - upper) / normal_pdf(z);
    }
    z
}

/// Standard normal density.
fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// Sum over k of q_k(t) / df^k in Fisher's expansion.
fn fisher_correction(t: f64, df: f64) -> f64 {
    let t2 = t * t;
    let mut sum = 0.0;
    let mut df_power = 1.0;
    for coefficients in FISHER_EXPANSION {
        df_power *= df;
        let poly = coefficients.iter().rev().fold(0.0, |acc, c| acc * t2 + c);
        sum += t * poly / df_power;
    }
    sum
}

/// P(T > t) for Student's t with `df` degrees of freedom (`df` > 0, finite).
pub(super) fn student_t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    if df >= ASYMPTOTIC_MIN_DF {
        return normal_sf(t) + normal_pdf(t) * fisher_correction(t, df);
    }
    let t2 = t * t;
    // P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2) = 1 - I_{t^2/(df+t^2)}(1/2, df/2);
    // take the form whose argument is small, so that it carries no rounding from 1 - x.
    let two_tailed = if t2 < df {
        1.0 - checked_beta_reg(0.5, 0.5 * df, t2 / (df + t2)).unwrap_or(f64::NAN)
    } else {
        checked_beta_reg(0.5 * df, 0.5, df / (df + t2)).unwrap_or(f64::NAN)
    };
    if t >= 0.0 {
        0.5 * two_tailed
    } else {
        1.0 - 0.5 * two_tailed
    }
}

/// Density of Student's t; only steers the quantile's Newton steps, so a close
/// approximation is enough at large df.
fn student_t_pdf(t: f64, df: f64) -> f64 {
    if df >= ASYMPTOTIC_MIN_DF {
        let t2 = t * t;
        return normal_pdf(t) * (1.0 + (t2 * t2 - 2.0 * t2 - 1.0) / (4.0 * df));
    }
    let log_norm = ln_gamma(0.5 * (df + 1.0)) - ln_gamma(0.5 * df) - 0.5 * (df * PI).ln();
    (log_norm - 0.5 * (df + 1.0) * (t * t / df).ln_1p()).exp()
}

/// The t with P(T > t) = `upper` for Student's t with `df` degrees of freedom,
/// for 0 < `upper` <= 0.5: a Newton search on [`student_t_sf`], kept inside a bracket.
pub(super) fn student_t_upper_quantile(upper: f64, df: f64) -> f64 {
    if !(upper > 0.0 && upper <= 0.5) || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if upper == 0.5 {
        return 0.0;
    }
    // Cornish-Fisher start (Abramowitz and Stegun 26.7.5).
    let z = SQRT_2 * erfc_inv(2.0 * upper);
    let (z2, z3) = (z * z, z * z * z);
    let g1 = (z3 + z) / 4.0;
    let g2 = (5.0 * z3 * z2 + 16.0 * z3 + 3.0 * z) / 96.0;
    let g3 = (3.0 * z3 * z2 * z2 + 19.0 * z3 * z2 + 17.0 * z3 - 15.0 * z) / 384.0;
    let mut x = z + g1 / df + g2 / (df * df) + g3 / (df * df * df);
    if !(x.is_finite() && x > 0.0) {
        x = 1.0;
    }

    // sf(lo) >= upper > sf(hi)
    let mut lo = 0.0;
    let mut hi = x;
    let mut iterations = 0;
    while student_t_sf(hi, df) >= upper && iterations < QUANTILE_MAX_ITERATIONS {
        lo = hi;
        hi *= 2.0;
        iterations += 1;
    }
    while iterations < QUANTILE_MAX_ITERATIONS {
        iterations += 1;
        let excess = student_t_sf(x, df) - upper;
        if excess == 0.0 {
            return x;
        }
        if excess > 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        let newton = x + excess / student_t_pdf(x, df);
        let next = if newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        if (next - x).abs() <= QUANTILE_TOLERANCE_ULPS * f64::EPSILON * x
            || next == lo
            || next == hi
        {
            return next;
        }
        x = next;
    }
    x
}

/// P(X > x) for chi-squared with `df` >= 1 degrees of freedom.
pub(super) fn chi_squared_sf(x: f64, df: u32) -> f64 {
    if df == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    checked_gamma_ur(0.5 * f64::from(df), 0.5 * x).unwrap_or(f64::NAN)
}
