#!/usr/bin/env python3
"""Reference values for herald's A/B statistics, taken from GrowthBook's gbstats 0.8.0.

Writes the Rust fixture table crates/herald-domain/src/stats/gbstats_cases.rs to
stdout. The Rust tests read only that table; this script is how it was made, so
anyone can re-derive every pinned number from the engine herald promises to match:

    python3 -m venv /tmp/gbstats && /tmp/gbstats/bin/pip install gbstats==0.8.0 mpmath
    /tmp/gbstats/bin/python crates/herald-domain/tests/gbstats_reference.py \
        > crates/herald-domain/src/stats/gbstats_cases.rs
    rustfmt --edition 2024 crates/herald-domain/src/stats/gbstats_cases.rs

Every two-arm and multi-arm case goes through gbstats' own entry point
(`process_single_metric`, a binomial "mean" metric) twice: once with the
frequentist engine (p-value, confidence interval) and once with the Bayesian
engine and its default flat (improper) prior (chance to win). The degrees of
freedom are not in that output, so they are read from `TwoSidedTTest.dof`.
The Student-t and chi-squared tables are computed with mpmath at 60 digits,
to check herald's distribution functions on their own.

`--derive` prints the coefficients of the large-df expansion of the Student-t
survival function used in stats/dist.rs (needs sympy).
"""

import importlib.metadata
import math
import sys

import mpmath as mp
from scipy.stats import norm

from gbstats.frequentist.tests import TwoSidedTTest
from gbstats.gbstats import process_single_metric
from gbstats.models.settings import (
    AnalysisSettingsForStatsEngine,
    MetricSettingsForStatsEngine,
)
from gbstats.models.statistics import ProportionStatistic
from gbstats.utils import check_srm

GBSTATS_VERSION = "0.8.0"

# (name, [(n, k) for the control, then each variant])
COMPARE_CASES = [
    ("small", [(100, 10), (100, 15)]),
    ("typical", [(10_000, 500), (10_000, 560)]),
    ("typical_negative", [(10_000, 560), (10_000, 500)]),
    ("unequal_sizes", [(2_000, 120), (10_000, 700)]),
    ("unequal_small_control", [(40, 3), (450, 61)]),
    ("equal_rates", [(1_000, 50), (1_000, 50)]),
    ("tiny_arms", [(2, 1), (3, 1)]),
    ("tiny_arms_2", [(5, 1), (4, 3)]),
    ("strong_effect", [(10_000, 100), (10_000, 300)]),
    ("rates_near_one", [(1_000, 990), (1_000, 995)]),
    ("rare_events", [(1_000_000, 37), (1_000_000, 58)]),
    ("huge_billion", [(1_000_000_000, 10_000_000), (1_000_000_000, 10_100_000)]),
    ("huge_billion_borderline", [(1_000_000_000, 10_000_000), (1_000_000_000, 10_009_700)]),
    ("huge_billion_tiny_lift", [(1_000_000_000, 10_000_000), (1_000_000_000, 10_000_900)]),
    ("huge_unequal", [(1_000_000_000, 10_000_000), (250_000_000, 2_530_000)]),
    ("huge_vs_small", [(1_000_000_000, 10_000_000), (1_000, 14)]),
    ("huge_hundred_billion", [(100_000_000_000, 1_000_000_000), (100_000_000_000, 1_000_010_000)]),
    ("three_arms", [(4_000, 200), (4_000, 230), (4_000, 260)]),
    ("four_arms_mixed", [(5_000, 250), (5_000, 0), (5_000, 275), (5_000, 5_000)]),
    ("control_no_conversions", [(100, 0), (100, 5)]),
    ("variant_no_conversions", [(100, 5), (100, 0)]),
    ("control_all_converted", [(100, 100), (100, 90)]),
    ("variant_all_converted", [(100, 90), (100, 100)]),
    ("control_empty", [(0, 0), (100, 5)]),
    ("variant_empty", [(100, 5), (0, 0)]),
]

# (name, [(assigned, weight)])
SRM_CASES = [
    ("balanced", [(5_000, 0.5), (5_000, 0.5)]),
    ("slightly_off", [(5_100, 0.5), (4_900, 0.5)]),
    ("mismatch", [(5_200, 0.5), (4_800, 0.5)]),
    ("holdout_three_arms", [(1_000, 0.1), (4_550, 0.45), (4_450, 0.45)]),
    ("unnormalised_weights", [(2_480, 1.0), (2_530, 1.0), (4_990, 2.0)]),
    ("holdout_mismatch", [(1_100, 0.1), (4_500, 0.45), (4_400, 0.45)]),
    ("huge_balanced", [(500_000_000, 0.5), (500_030_000, 0.5)]),
    ("huge_mismatch", [(500_000_000, 0.5), (500_100_000, 0.5)]),
    ("empty", [(0, 0.5), (0, 0.5)]),
    ("tiny", [(3, 0.5), (1, 0.5)]),
]

# (t, df) for the Student-t survival function.
T_SF_POINTS = [
    (t, df)
    for df in [1.0, 1.5, 2.0, 3.7, 10.0, 29.5, 100.0, 999.0, 1_000.0, 12_345.6, 1e6, 1.5e9, 2e11]
    for t in [0.0, 0.05, 0.6744897501960817, 1.0, 1.96, 2.5, 4.0, 7.0, 12.0]
]
# (upper tail probability, df) for the Student-t quantile.
T_QUANTILE_POINTS = [
    (p, df)
    for df in [1.0, 1.3, 2.0, 5.0, 17.2, 198.0, 999.0, 1_000.0, 54_321.0, 1e7, 2e9, 2e11]
    for p in [0.025, 0.25, 0.005]
]
# (x, df) for the chi-squared survival function.
CHI2_SF_POINTS = [
    (x, df)
    for df in [1, 2, 3, 5]
    for x in [0.0, 0.01, 1.0, 4.0, 10.828, 16.0, 40.0, 100.0]
]


def rust_f64(x: float) -> str:
    if math.isnan(x):
        return "f64::NAN"
    r = repr(float(x))
    if "e" in r or "." in r or "inf" in r:
        return r
    return r + ".0"


def run_gbstats(arms, engine):
    rows = [
        {
            "dimension": "",
            "variation": str(i),
            "users": n,
            "count": n,
            "main_sum": k,
            "main_sum_squares": k,
        }
        for i, (n, k) in enumerate(arms)
    ]
    metric = MetricSettingsForStatsEngine(
        id="conversion",
        name="conversion",
        statistic_type="mean",
        main_metric_type="binomial",
    )
    analysis = AnalysisSettingsForStatsEngine(
        var_names=[f"arm{i}" for i in range(len(arms))],
        var_ids=[str(i) for i in range(len(arms))],
        weights=[1 / len(arms)] * len(arms),
        stats_engine=engine,
        difference_type="relative",
        alpha=0.05,
    )
    out = process_single_metric(rows=rows, metric=metric, analyses=[analysis])
    return out.analyses[0].dimensions[0]


def compare_cases():
    lines = []
    for name, arms in COMPARE_CASES:
        freq = run_gbstats(arms, "frequentist")
        bayes = run_gbstats(arms, "bayesian")
        for v in range(1, len(arms)):
            case = name if len(arms) == 2 else f"{name}/arm{v}"
            f, b = freq.variations[v], bayes.variations[v]
            (na, ka), (nb, kb) = arms[0], arms[v]
            if f.errorMessage is not None:
                assert b.errorMessage is not None, case
                lines.append(
                    f'    CompareCase {{ name: "{case}", control: ({na}, {ka}), variant: ({nb}, {kb}), '
                    f'expect: Expect::NoEstimate("{f.errorMessage}") }},'
                )
                continue
            assert b.errorMessage is None, case
            a = ProportionStatistic(n=na, sum=ka)
            bstat = ProportionStatistic(n=nb, sum=kb)
            dof = TwoSidedTTest(a, bstat).dof
            abs_lift = bstat.mean - a.mean
            # The flat-prior Bayesian engine reports the frequentist point estimate
            # and stddev, and its chance to win is Phi(lift / stddev).
            assert abs(b.expected - f.expected) <= 1e-15 * abs(f.expected) + 1e-300, case
            assert abs(b.uplift.stddev - f.uplift.stddev) <= 1e-15 * f.uplift.stddev, case
            ctw = norm.cdf(f.expected / f.uplift.stddev)
            assert abs(ctw - b.chanceToWin) <= 1e-15, case
            lines.append(
                f'    CompareCase {{ name: "{case}", control: ({na}, {ka}), variant: ({nb}, {kb}), '
                f"expect: Expect::Estimate {{ abs_lift: {rust_f64(abs_lift)}, "
                f"rel_lift: {rust_f64(f.expected)}, rel_stddev: {rust_f64(f.uplift.stddev)}, "
                f"ci_lower: {rust_f64(f.ci[0])}, ci_upper: {rust_f64(f.ci[1])}, "
                f"df: {rust_f64(dof)}, p_value: {rust_f64(f.pValue)}, "
                f"chance_to_beat: {rust_f64(b.chanceToWin)} }} }},"
            )
    return lines


def srm_cases():
    lines = []
    for name, arms in SRM_CASES:
        p = float(check_srm([n for n, _ in arms], [w for _, w in arms]))
        arms_rs = ", ".join(f"({n}, {rust_f64(w)})" for n, w in arms)
        lines.append(f'    SrmCase {{ name: "{name}", arms: &[{arms_rs}], p_value: {rust_f64(p)} }},')
    return lines


def t_sf(t, df):
    t, df = mp.mpf(t), mp.mpf(df)
    return mp.betainc(df / 2, mp.mpf(1) / 2, 0, df / (df + t * t), regularized=True) / 2


def t_quantile(p, df):
    # upper-tail quantile: the t with sf(t) = p
    return mp.findroot(lambda t: t_sf(t, df) - p, mp.sqrt(2) * mp.erfinv(1 - 2 * mp.mpf(p)))


def chi2_sf(x, df):
    return mp.gammainc(mp.mpf(df) / 2, mp.mpf(x) / 2, mp.inf, regularized=True)


def dist_tables():
    mp.mp.dps = 60
    t_sf_rows = [f"    ({rust_f64(t)}, {rust_f64(df)}, {rust_f64(float(t_sf(t, df)))})," for t, df in T_SF_POINTS]
    t_q_rows = [
        f"    ({rust_f64(p)}, {rust_f64(df)}, {rust_f64(float(t_quantile(p, df)))}),"
        for p, df in T_QUANTILE_POINTS
    ]
    chi2_rows = [f"    ({rust_f64(x)}, {df}, {rust_f64(float(chi2_sf(x, df)))})," for x, df in CHI2_SF_POINTS]
    return t_sf_rows, t_q_rows, chi2_rows


def derive_t_expansion(order=5):
    """sf_t(t; df) = sf_normal(t) + pdf_normal(t) * sum_k q_k(t) / df^k (Fisher 1926)."""
    import sympy as sp

    t, e, s = sp.symbols("t epsilon s", positive=True)
    x = 1 / (2 * e)  # df / 2
    half = sp.Rational(1, 2)
    # log Gamma(x + 1/2) - log Gamma(x) - log(x)/2, asymptotic series (Tricomi-Erdelyi)
    lg = sum(
        (-1) ** (k + 1) * (sp.bernoulli(k + 1, half) - sp.bernoulli(k + 1, 0)) / (k * (k + 1) * x**k)
        for k in range(1, 2 * order + 2)
    )
    log_ratio = lg + t**2 / 2 - (1 / e + 1) / 2 * sp.log(1 + t**2 * e)
    ratio = sp.expand(sp.series(sp.exp(sp.series(log_ratio, e, 0, order + 1).removeO()), e, 0, order + 1).removeO())
    phi = sp.exp(-(s**2) / 2) / sp.sqrt(2 * sp.pi)
    for k in range(1, order + 1):
        poly = sp.Poly(sp.expand(ratio.coeff(e, k)), t)
        integral = sum(c * sp.integrate(s**m * phi, (s, t, sp.oo)) for (m,), c in poly.terms())
        q = sp.expand(sp.simplify(integral / (sp.exp(-(t**2) / 2) / sp.sqrt(2 * sp.pi))))
        print(f"q{k}(t) =", q)


def main():
    if "--derive" in sys.argv:
        derive_t_expansion()
        return
    version = importlib.metadata.version("gbstats")
    assert version == GBSTATS_VERSION, f"expected gbstats {GBSTATS_VERSION}, found {version}"
    t_sf_rows, t_q_rows, chi2_rows = dist_tables()
    out = []
    out.append("//! Reference values from GrowthBook's gbstats 0.8.0 and mpmath: generated by")
    out.append("//! `crates/herald-domain/tests/gbstats_reference.py`; do not edit by hand.")
    out.append("")
    out.append("use super::gbstats_tests::{CompareCase, Expect, SrmCase};")
    out.append("")
    out.append("/// Two-arm comparisons through gbstats' frequentist and flat-prior Bayesian engines.")
    out.append("pub(super) const COMPARE: &[CompareCase] = &[")
    out += compare_cases()
    out.append("];")
    out.append("")
    out.append("/// Sample-ratio-mismatch p-values from `gbstats.utils.check_srm`.")
    out.append("pub(super) const SRM: &[SrmCase] = &[")
    out += srm_cases()
    out.append("];")
    out.append("")
    out.append("/// (t, df, survival function of Student's t), mpmath at 60 digits.")
    out.append("pub(super) const T_SF: &[(f64, f64, f64)] = &[")
    out += t_sf_rows
    out.append("];")
    out.append("")
    out.append("/// (upper tail probability, df, quantile of Student's t), mpmath at 60 digits.")
    out.append("pub(super) const T_QUANTILE: &[(f64, f64, f64)] = &[")
    out += t_q_rows
    out.append("];")
    out.append("")
    out.append("/// (x, df, survival function of chi-squared), mpmath at 60 digits.")
    out.append("pub(super) const CHI2_SF: &[(f64, u32, f64)] = &[")
    out += chi2_rows
    out.append("];")
    print("\n".join(out))


if __name__ == "__main__":
    main()
