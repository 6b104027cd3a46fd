#!/usr/bin/env python3
"""Reference values for herald's mean, ratio, CUPED and sequential statistics,
taken from GrowthBook's gbstats 0.8.0 itself.

Writes the Rust fixture table crates/herald-domain/src/stats/gbstats_metric_cases.rs
to stdout. The Rust tests read only that table; this script is how it was made:

    python3 -m venv /tmp/gbstats && /tmp/gbstats/bin/pip install gbstats==0.8.0 mpmath
    /tmp/gbstats/bin/python crates/herald-domain/tests/gbstats_metrics_reference.py \
        > crates/herald-domain/src/stats/gbstats_metric_cases.rs
    rustfmt --edition 2024 crates/herald-domain/src/stats/gbstats_metric_cases.rs

Each case is one variant against its control, given as the per-arm sums gbstats
takes (n, sum, sum of squares; for ratios and CUPED also the other measure's sums
and the sum of products). CUPED cases are made from seeded synthetic contacts
(a pre-period measure correlated with the post-period one), summed here; the Rust
side sees only the sums. Every case goes through gbstats' own test classes:
`TwoSidedTTest` or `SequentialTwoSidedTTest` (p-value, interval) and the flat-prior
`EffectBayesianABTest` (chance to win), relative differences, alpha 0.05.

gbstats 0.8.0 has no `RegressionAdjustedRatioStatistic` (it came in a later
release), so CUPED is pinned here for mean and proportion metrics only; CUPED on
ratio metrics has its own script, gbstats_ratio_cuped_reference.py. CUPED's
degenerate cases (no spread, an arm or both without history, an arm of one
contact) are here, from gbstats 0.8.0.
"""

import importlib.metadata
import math

import numpy as np

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
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
)

GBSTATS_VERSION = "0.8.0"


def rust_f64(x: float) -> str:
    if math.isnan(x):
        return "f64::NAN"
    r = repr(float(x))
    if "e" in r or "." in r or "inf" in r:
        return r
    return r + ".0"


# Arms are plain tuples so that each test gets fresh gbstats objects (gbstats
# writes theta into the CUPED statistics it is given).
#   ("mean", n, sum, sum_squares)
#   ("prop", n, sum)
#   ("ratio", n, numerator_arm, denominator_arm, sum_of_products)
#   ("cuped", n, post_arm, pre_arm, sum_of_products)


def stat(arm):
    kind = arm[0]
    if kind == "mean":
        return SampleMeanStatistic(n=arm[1], sum=arm[2], sum_squares=arm[3])
    if kind == "prop":
        return ProportionStatistic(n=arm[1], sum=arm[2])
    if kind == "ratio":
        return RatioStatistic(
            n=arm[1], m_statistic=stat(arm[2]), d_statistic=stat(arm[3]), m_d_sum_of_products=arm[4]
        )
    if kind == "cuped":
        return RegressionAdjustedStatistic(
            n=arm[1],
            post_statistic=stat(arm[2]),
            pre_statistic=stat(arm[3]),
            post_pre_sum_of_products=arm[4],
            theta=0,
        )
    raise ValueError(kind)


def rust_arm(arm) -> str:
    kind = arm[0]
    if kind == "mean":
        return f"A::Mean {{ n: {arm[1]}, sum: {rust_f64(arm[2])}, sum_squares: {rust_f64(arm[3])} }}"
    if kind == "prop":
        return f"A::Prop {{ n: {arm[1]}, sum: {rust_f64(arm[2])} }}"
    if kind == "ratio":
        return (
            f"A::Ratio {{ n: {arm[1]}, numerator: &{rust_arm(arm[2])}, "
            f"denominator: &{rust_arm(arm[3])}, sum_of_products: {rust_f64(arm[4])} }}"
        )
    if kind == "cuped":
        return (
            f"A::Cuped {{ n: {arm[1]}, post: &{rust_arm(arm[2])}, pre: &{rust_arm(arm[3])}, "
            f"sum_of_products: {rust_f64(arm[4])} }}"
        )
    raise ValueError(kind)


def sums(values):
    v = np.asarray(values, dtype=float)
    return float(v.sum()), float((v * v).sum())


def measure(kind, values):
    s, ss = sums(values)
    if kind == "prop":
        return ("prop", len(values), s)
    return ("mean", len(values), s, ss)


def cuped_arm(rng, n, post_kind, pre_kind, lift, no_history=False):
    """n synthetic contacts: a pre-period measure and a post-period one that
    depends on it (the correlation CUPED removes)."""
    if pre_kind == "prop":
        pre = (rng.random(n) < 0.3).astype(float)
    else:
        pre = rng.gamma(0.6, 80.0, n) * (rng.random(n) < 0.4)
    if no_history:
        pre = np.zeros(n)
    if post_kind == "prop":
        p = np.clip(0.05 + 0.25 * (pre > 0) + lift, 0, 1)
        post = (rng.random(n) < p).astype(float)
    else:
        post = (0.7 * pre + rng.gamma(0.5, 60.0, n) * (rng.random(n) < 0.3)) * (1 + lift)
    return ("cuped", n, measure(post_kind, post), measure(pre_kind, pre), float((post * pre).sum()))


def ratio_arm(rng, n, m_kind, d_kind, lift):
    """Revenue per converting contact (mean over proportion) or clicks per
    delivered (proportion over proportion), from n synthetic contacts."""
    if d_kind == "prop":
        d = (rng.random(n) < 0.6).astype(float)
    else:
        d = rng.poisson(2.0, n).astype(float)
    if m_kind == "prop":
        m = d * (rng.random(n) < 0.2 + lift)
    else:
        m = d * rng.gamma(2.0, 30.0, n) * (1 + lift)
    return ("ratio", n, measure(m_kind, m), measure(d_kind, d), float((m * d).sum()))


def cuped_of(post_kind, post, pre_kind, pre):
    post, pre = np.asarray(post, dtype=float), np.asarray(pre, dtype=float)
    return ("cuped", len(post), measure(post_kind, post), measure(pre_kind, pre), float((post * pre).sum()))


def degenerate_cuped_cases(rng):
    def conversion(n, rate, history=True):
        pre = (rng.random(n) < 0.3).astype(float) if history else np.zeros(n)
        return cuped_of("prop", (rng.random(n) < rate + 0.2 * pre).astype(float), "prop", pre)

    spend = lambda n: rng.gamma(0.6, 80.0, n)  # noqa: E731
    return [
        # No spread after the message: every contact of an arm spent the same.
        ("cuped_zero_variance_post", cuped_of("mean", np.full(200, 10.0), "mean", spend(200)),
         cuped_of("mean", np.full(200, 12.0), "mean", spend(200))),
        # Nor before it, and the arms equal: nothing varies at all.
        ("cuped_zero_variance_everywhere", cuped_of("mean", np.full(200, 10.0), "mean", np.full(200, 5.0)),
         cuped_of("mean", np.full(200, 10.0), "mean", np.full(200, 5.0))),
        # Everyone had the same history: theta 0, the plain comparison.
        ("cuped_constant_history", cuped_of("mean", spend(500), "mean", np.full(500, 30.0)),
         cuped_of("mean", spend(500) * 1.1, "mean", np.full(500, 30.0))),
        ("cuped_conversion_variant_without_history", conversion(3_000, 0.1), conversion(3_000, 0.12, history=False)),
        ("cuped_conversion_control_without_history", conversion(3_000, 0.1, history=False), conversion(3_000, 0.12)),
        ("cuped_conversion_no_history_at_all", conversion(3_000, 0.1, history=False),
         conversion(3_000, 0.12, history=False)),
        ("cuped_conversion_one_contact_control", cuped_of("prop", [1.0], "prop", [1.0]), conversion(400, 0.1)),
        ("cuped_conversion_one_contact_variant", conversion(400, 0.1), cuped_of("prop", [1.0], "prop", [0.0])),
        ("cuped_revenue_one_contact_variant", cuped_arm(rng, 300, "mean", "mean", 0.0),
         cuped_of("mean", [55.0], "mean", [20.0])),
        ("cuped_one_contact_each", cuped_of("mean", [40.0], "mean", [10.0]), cuped_of("mean", [55.0], "mean", [20.0])),
    ]


def cases():
    rng = np.random.default_rng(20261207)
    out = []
    # Mean metrics (revenue per assigned contact, LTV): n, sum, sum of squares.
    out += [
        ("mean_typical", ("mean", 10_000, 52_310.5, 3_911_022.75), ("mean", 10_000, 55_902.25, 4_230_118.5)),
        ("mean_negative", ("mean", 8_000, 40_100.0, 2_410_500.0), ("mean", 8_100, 38_900.0, 2_300_800.0)),
        ("mean_unequal", ("mean", 1_200, 6_000.0, 390_000.0), ("mean", 9_000, 47_000.0, 3_020_000.0)),
        ("mean_small", ("mean", 12, 310.0, 12_950.0), ("mean", 9, 301.0, 15_003.0)),
        ("mean_huge", ("mean", 500_000_000, 2.5e9, 1.9e11), ("mean", 500_000_000, 2.5025e9, 1.91e11)),
        ("mean_zero_variance", ("mean", 100, 500.0, 2_500.0), ("mean", 100, 600.0, 4_000.0)),
        ("mean_one_contact", ("mean", 1, 20.0, 400.0), ("mean", 100, 600.0, 4_000.0)),
        ("mean_control_zero", ("mean", 100, 0.0, 0.0), ("mean", 100, 600.0, 4_000.0)),
        ("mean_empty_variant", ("mean", 100, 600.0, 4_000.0), ("mean", 0, 0.0, 0.0)),
    ]
    # Ratio metrics.
    out += [
        ("ratio_revenue_per_converter", ratio_arm(rng, 4_000, "mean", "prop", 0.0), ratio_arm(rng, 4_000, "mean", "prop", 0.05)),
        ("ratio_clicks_per_delivered", ratio_arm(rng, 6_000, "prop", "prop", 0.0), ratio_arm(rng, 5_900, "prop", "prop", 0.03)),
        ("ratio_per_order", ratio_arm(rng, 3_000, "mean", "mean", 0.0), ratio_arm(rng, 3_100, "mean", "mean", -0.04)),
        (
            "ratio_zero_denominator",
            ("ratio", 50, ("mean", 50, 0.0, 0.0), ("prop", 50, 0.0), 0.0),
            ratio_arm(rng, 50, "mean", "prop", 0.0),
        ),
    ]
    # CUPED: regression adjustment by the same measure before the message.
    out += [
        ("cuped_revenue", cuped_arm(rng, 5_000, "mean", "mean", 0.0), cuped_arm(rng, 5_000, "mean", "mean", 0.06)),
        ("cuped_conversion", cuped_arm(rng, 6_000, "prop", "prop", 0.0), cuped_arm(rng, 6_000, "prop", "prop", 0.02)),
        ("cuped_conversion_by_spend", cuped_arm(rng, 3_000, "prop", "mean", 0.0), cuped_arm(rng, 3_200, "prop", "mean", 0.01)),
        ("cuped_small", cuped_arm(rng, 40, "mean", "mean", 0.0), cuped_arm(rng, 35, "mean", "mean", 0.2)),
        (
            "cuped_variant_without_history",
            cuped_arm(rng, 2_000, "mean", "mean", 0.0),
            cuped_arm(rng, 2_000, "mean", "mean", 0.05, no_history=True),
        ),
        (
            "cuped_no_history_at_all",
            cuped_arm(rng, 2_000, "mean", "mean", 0.0, no_history=True),
            cuped_arm(rng, 2_000, "mean", "mean", 0.05, no_history=True),
        ),
        (
            "cuped_one_contact",
            cuped_arm(rng, 1, "mean", "mean", 0.0),
            cuped_arm(rng, 300, "mean", "mean", 0.0),
        ),
    ]
    # CUPED's degenerate cases (issue 33), from their own seed so that the
    # cases above keep their values.
    out += degenerate_cuped_cases(np.random.default_rng(20261208))
    # Proportions through the general path (as the conversion table does).
    out += [
        ("prop_typical", ("prop", 10_000, 500.0), ("prop", 10_000, 560.0)),
        ("prop_all_converted", ("prop", 100, 100.0), ("prop", 100, 90.0)),
    ]
    return out


def fixed(a, b):
    return TwoSidedTTest(stat(a), stat(b), FrequentistConfig(alpha=0.05, difference_type="relative"))


def sequential(a, b, tuning):
    return SequentialTwoSidedTTest(
        stat(a),
        stat(b),
        SequentialConfig(alpha=0.05, difference_type="relative", sequential_tuning_parameter=tuning),
    )


def theta_of(a, b):
    if a[0] != "cuped":
        return None
    test = TwoSidedTTest(stat(a), stat(b))
    sa = test.stat_a
    return sa.theta if isinstance(sa, RegressionAdjustedStatistic) else 0.0


def case_line(name, a, b, test_kind, test):
    result = test.compute_result()
    bayes = EffectBayesianABTest(stat(a), stat(b), EffectBayesianConfig(difference_type="relative")).compute_result()
    head = f'    MetricCase {{ name: "{name}", control: &{rust_arm(a)}, variant: &{rust_arm(b)}, test: {test_kind}, '
    if result.error_message is not None:
        assert bayes.error_message is not None, name
        return head + f'expect: MetricExpect::NoEstimate("{result.error_message}") }},'
    assert bayes.error_message is None, name
    assert abs(bayes.expected - result.expected) <= 1e-12 * abs(result.expected) + 1e-300, name
    dof = test.dof if isinstance(test, TwoSidedTTest) else float("nan")
    theta = theta_of(a, b)
    return head + (
        f"expect: MetricExpect::Estimate {{ rel_lift: {rust_f64(result.expected)}, "
        f"rel_stddev: {rust_f64(result.uplift.stddev)}, ci_lower: {rust_f64(result.ci[0])}, "
        f"ci_upper: {rust_f64(result.ci[1])}, df: {rust_f64(dof)}, p_value: {rust_f64(result.p_value)}, "
        f"chance_to_beat: {rust_f64(bayes.chance_to_win)}, "
        f"theta: {rust_f64(theta) if theta is not None else 'f64::NAN'} }} }},"
    )


def main():
    assert importlib.metadata.version("gbstats") == GBSTATS_VERSION
    print("//! Reference values from GrowthBook's gbstats 0.8.0: generated by")
    print("//! `crates/herald-domain/tests/gbstats_metrics_reference.py`; do not edit by hand.")
    print()
    print("use super::gbstats_metric_tests::{MetricCase, MetricExpect, RefArm as A, RefTest};")
    print()
    print("/// Mean, ratio, CUPED and proportion metrics, fixed-horizon and sequential.")
    print("pub(super) const METRIC: &[MetricCase] = &[")
    for name, a, b in cases():
        print(case_line(name, a, b, "RefTest::Fixed", fixed(a, b)))
        for tuning in (5000.0, 500.0):
            label = f"{name}/sequential_{int(tuning)}"
            print(case_line(label, a, b, f"RefTest::Sequential({rust_f64(tuning)})", sequential(a, b, tuning)))
    print("];")


if __name__ == "__main__":
    main()
