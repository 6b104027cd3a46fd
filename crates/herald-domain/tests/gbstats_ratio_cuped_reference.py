#!/usr/bin/env python3
"""Reference values for herald's CUPED on ratio metrics (issue 33), from
GrowthBook's own `RegressionAdjustedRatioStatistic`.

gbstats 0.8.0 (PyPI) has no CUPED for ratio metrics. It came with GrowthBook
commit 8724b3982aa0662a159028e088fdef72f315b80c ("Add CUPED statistics for
ratio metrics to gbstats", #3649, 2025-02-20), whose package still calls itself
0.8.0. That commit is the reference: later ones changed the covariance of two
0/1 measures (divisor n, #4250), which herald's other metrics, pinned to 0.8.0,
do not do. Writes the Rust fixture table
crates/herald-domain/src/stats/gbstats_ratio_cuped_cases.rs to stdout:

    git clone https://github.com/growthbook/growthbook /tmp/growthbook
    git -C /tmp/growthbook checkout 8724b3982aa0662a159028e088fdef72f315b80c
    python3 -m venv /tmp/gbratio
    /tmp/gbratio/bin/pip install 'numpy<2' 'scipy<1.14' 'pandas<2' 'pydantic>=2.5,<3' nbformat packaging
    PYTHONPATH=/tmp/growthbook/packages/stats /tmp/gbratio/bin/python \\
        crates/herald-domain/tests/gbstats_ratio_cuped_reference.py \\
        > crates/herald-domain/src/stats/gbstats_ratio_cuped_cases.rs
    rustfmt --edition 2024 crates/herald-domain/src/stats/gbstats_ratio_cuped_cases.rs

The script refuses to run on other sources (it checks the files' digests).
Each case is one variant against its control, given as the per-arm sums
gbstats takes: n, the four measures' sums (and sums of squares for means) and
the six sums of products. Cases are seeded synthetic contacts (revenue per
converting contact, clicks per delivered) plus the degenerate ones: no history
at all, one arm without history, an arm of one contact, no spread. Every case
goes through gbstats' `TwoSidedTTest`, `SequentialTwoSidedTTest` and the
flat-prior `EffectBayesianABTest`, relative differences, alpha 0.05; the
variance reduction is the adjusted relative variance against that of the plain
`RatioStatistic` of the same contacts. Not needed by `cargo test`.
"""

import hashlib
import math
import pathlib

import numpy as np

import gbstats
from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import (
    ProportionStatistic,
    RatioStatistic,
    RegressionAdjustedRatioStatistic,
    SampleMeanStatistic,
)

GROWTHBOOK_COMMIT = "8724b3982aa0662a159028e088fdef72f315b80c"
DIGESTS = {
    "models/statistics.py": "bfd7522822bfa1551cb087da307256d202441085809a35bb00ec1648def9bfa7",
    "frequentist/tests.py": "b35d0266704cf74cfa4e2757904469bd902d67e23421deb2b9267284dc635c27",
    "bayesian/tests.py": "3a430ab8b4d336b2396ff0a0003e4724a3d8447fc04c0e71af70bfa909d60788",
    "models/tests.py": "ba112c03baeffbd43cf2fc2eb2f1d0555ec4ade35b8991d55fb8da7e36cb3451",
}


def check_source():
    root = pathlib.Path(gbstats.__file__).parent
    for path, digest in DIGESTS.items():
        got = hashlib.sha256((root / path).read_bytes()).hexdigest()
        assert got == digest, f"gbstats/{path} is not GrowthBook {GROWTHBOOK_COMMIT}'s"


def rust_f64(x: float) -> str:
    if math.isnan(x):
        return "f64::NAN"
    r = repr(float(x))
    if "e" in r or "." in r or "inf" in r:
        return r
    return r + ".0"


# A measure: ("prop", n, sum) or ("mean", n, sum, sum_squares).
# An arm: ("cratio", n, m, d, m_pre, d_pre, products), products in the order of
# herald's RatioProducts: m_post_d_post, m_post_m_pre, d_post_d_pre,
# m_pre_d_pre, m_post_d_pre, m_pre_d_post.


def measure_stat(m):
    if m[0] == "prop":
        return ProportionStatistic(n=m[1], sum=m[2])
    return SampleMeanStatistic(n=m[1], sum=m[2], sum_squares=m[3])


def adjusted(arm):
    _, n, m, d, mp, dp, p = arm
    return RegressionAdjustedRatioStatistic(
        n=n,
        m_statistic_post=measure_stat(m),
        d_statistic_post=measure_stat(d),
        m_statistic_pre=measure_stat(mp),
        d_statistic_pre=measure_stat(dp),
        m_post_d_post_sum_of_products=p[0],
        m_post_m_pre_sum_of_products=p[1],
        d_post_d_pre_sum_of_products=p[2],
        m_pre_d_pre_sum_of_products=p[3],
        m_post_d_pre_sum_of_products=p[4],
        m_pre_d_post_sum_of_products=p[5],
        theta=None,
    )


def plain(arm):
    _, n, m, d, _, _, p = arm
    return RatioStatistic(n=n, m_statistic=measure_stat(m), d_statistic=measure_stat(d), m_d_sum_of_products=p[0])


def rust_measure(m) -> str:
    if m[0] == "prop":
        return f"M::Proportion {{ n: {m[1]}, sum: {rust_f64(m[2])} }}"
    return f"M::Mean {{ n: {m[1]}, sum: {rust_f64(m[2])}, sum_squares: {rust_f64(m[3])} }}"


def rust_arm(arm) -> str:
    _, n, m, d, mp, dp, p = arm
    names = ["m_post_d_post", "m_post_m_pre", "d_post_d_pre", "m_pre_d_pre", "m_post_d_pre", "m_pre_d_post"]
    products = ", ".join(f"{k}: {rust_f64(v)}" for k, v in zip(names, p))
    return (
        f"MetricArm::AdjustedRatio {{ n: {n}, numerator: {rust_measure(m)}, denominator: {rust_measure(d)}, "
        f"pre_numerator: {rust_measure(mp)}, pre_denominator: {rust_measure(dp)}, "
        f"products: RatioProducts {{ {products} }} }}"
    )


def measure(kind, v):
    v = np.asarray(v, dtype=float)
    if kind == "prop":
        return ("prop", len(v), float(v.sum()))
    return ("mean", len(v), float(v.sum()), float((v * v).sum()))


def arm_of(kinds, m, d, mp, dp):
    s = lambda x, y: float((x * y).sum())  # noqa: E731
    products = (s(m, d), s(m, mp), s(d, dp), s(mp, dp), s(m, dp), s(mp, d))
    km, kd = kinds
    return ("cratio", len(m), measure(km, m), measure(kd, d), measure(km, mp), measure(kd, dp), products)


def revenue_per_converter(rng, n, lift, history=True, spend=None):
    """Contacts who bought before (d_pre) buy again more often, for about what
    they spent before (m_pre): revenue / converted, before and after."""
    d_pre = (rng.random(n) < 0.35).astype(float) if history else np.zeros(n)
    m_pre = d_pre * rng.gamma(2.0, 25.0, n)
    d = (rng.random(n) < 0.08 + 0.25 * d_pre).astype(float)
    base = spend if spend is not None else 20.0 + 0.6 * m_pre + rng.gamma(2.0, 10.0, n)
    m = d * base * (1 + lift)
    return arm_of(("mean", "prop"), m, d, m_pre, d_pre)


def clicks_per_delivered(rng, n, lift):
    """0/1 over 0/1: a contact who clicked before clicks again more often."""
    d_pre = (rng.random(n) < 0.7).astype(float)
    m_pre = d_pre * (rng.random(n) < 0.15)
    d = (rng.random(n) < 0.9).astype(float)
    m = d * (rng.random(n) < 0.08 + 0.3 * m_pre + lift)
    return arm_of(("prop", "prop"), m, d, m_pre, d_pre)


def cases():
    rng = np.random.default_rng(20261208)
    return [
        ("revenue_per_converter", revenue_per_converter(rng, 6_000, 0.0), revenue_per_converter(rng, 6_000, 0.05)),
        ("revenue_per_converter_unequal", revenue_per_converter(rng, 1_500, 0.0), revenue_per_converter(rng, 9_000, -0.03)),
        ("revenue_per_converter_small", revenue_per_converter(rng, 60, 0.0), revenue_per_converter(rng, 55, 0.2)),
        ("clicks_per_delivered", clicks_per_delivered(rng, 8_000, 0.0), clicks_per_delivered(rng, 8_000, 0.02)),
        # Degenerate: nobody has history (theta 0: the plain ratio).
        (
            "no_history_at_all",
            revenue_per_converter(rng, 2_000, 0.0, history=False),
            revenue_per_converter(rng, 2_000, 0.05, history=False),
        ),
        # One arm without history: its pre-period denominator is zero.
        (
            "variant_without_history",
            revenue_per_converter(rng, 2_000, 0.0),
            revenue_per_converter(rng, 2_000, 0.05, history=False),
        ),
        (
            "control_without_history",
            revenue_per_converter(rng, 2_000, 0.0, history=False),
            revenue_per_converter(rng, 2_000, 0.05),
        ),
        # An arm of one contact (one who converted and had history).
        (
            "one_contact",
            arm_of(("mean", "prop"), np.array([40.0]), np.array([1.0]), np.array([30.0]), np.array([1.0])),
            revenue_per_converter(rng, 300, 0.0),
        ),
        # No spread: every converter spent the same, before and after.
        (
            "zero_variance",
            revenue_per_converter(rng, 500, 0.0, spend=np.full(500, 25.0)),
            revenue_per_converter(rng, 500, 0.0, spend=np.full(500, 30.0)),
        ),
    ]


def case_line(name, a, b, label, test_kind, make_test):
    test = make_test(adjusted(a), adjusted(b))
    r = test.compute_result()
    # With theta 0 gbstats' tests fall back to the plain ratio; its Bayesian
    # test, at this commit, then keeps the unadjusted-theta statistics it was
    # given (whose mean is 0 without history), so it is given the plain ratio.
    reverted = isinstance(test.stat_a, RatioStatistic)
    pair = (plain(a), plain(b)) if reverted else (adjusted(a), adjusted(b))
    bayes = EffectBayesianABTest(*pair, EffectBayesianConfig(difference_type="relative")).compute_result()
    head = (
        f'    MetricCase {{ name: "{name}/{label}", control: {rust_arm(a)}, variant: {rust_arm(b)}, '
        f"test: {test_kind}, "
    )
    if r.error_message is not None:
        assert bayes.error_message is not None, name
        return head + f'expect: RatioExpect::NoEstimate("{r.error_message}") }},'
    assert bayes.error_message is None, name
    dof = test.dof if isinstance(test, TwoSidedTTest) else float("nan")
    sa = test.stat_a
    theta = sa.theta if isinstance(sa, RegressionAdjustedRatioStatistic) else 0.0
    unadjusted = make_test(plain(a), plain(b)).compute_result()
    reduction = 1.0 - (r.uplift.stddev / unadjusted.uplift.stddev) ** 2
    return head + (
        f"expect: RatioExpect::Estimate {{ rel_lift: {rust_f64(r.expected)}, "
        f"rel_stddev: {rust_f64(r.uplift.stddev)}, ci_lower: {rust_f64(r.ci[0])}, "
        f"ci_upper: {rust_f64(r.ci[1])}, df: {rust_f64(dof)}, p_value: {rust_f64(r.p_value)}, "
        f"chance_to_beat: {rust_f64(bayes.chance_to_win)}, theta: {rust_f64(theta)}, "
        f"variance_reduction: {rust_f64(reduction)} }} }},"
    )


def main():
    check_source()
    fixed = lambda a, b: TwoSidedTTest(a, b, FrequentistConfig(alpha=0.05, difference_type="relative"))  # noqa: E731

    def sequential(tuning):
        config = SequentialConfig(alpha=0.05, difference_type="relative", sequential_tuning_parameter=tuning)
        return lambda a, b: SequentialTwoSidedTTest(a, b, config)

    print(f"//! Reference values from GrowthBook's gbstats at commit {GROWTHBOOK_COMMIT[:10]}")
    print("//! (`RegressionAdjustedRatioStatistic`): generated by")
    print("//! `crates/herald-domain/tests/gbstats_ratio_cuped_reference.py`; do not edit by hand.")
    print()
    print("use super::gbstats_ratio_cuped_tests::{MetricCase, RatioExpect, RefTest};")
    print("use super::{Measure as M, MetricArm, RatioProducts};")
    print()
    print("/// CUPED on ratio metrics, fixed-horizon and sequential.")
    print("pub(super) const RATIO_CUPED: &[MetricCase] = &[")
    for name, a, b in cases():
        print(case_line(name, a, b, "fixed", "RefTest::Fixed", fixed))
        for tuning in (5000.0, 500.0):
            print(
                case_line(
                    name, a, b, f"sequential_{int(tuning)}", f"RefTest::Sequential({rust_f64(tuning)})", sequential(tuning)
                )
            )
    print("];")


if __name__ == "__main__":
    main()
