#!/usr/bin/env python3
"""Reference values for herald's CUPED report (issue 33), from gbstats 0.8.0.

A fixed data set of contacts, each with its measures before the message (had
the goal event, revenue) and after it (converted, 30-day revenue, LTV revenue),
is defined here and, by the same integer formulas, in the Rust test
`cuped_report_equals_gbstats_on_a_fixed_data_set` (crates/herald-storage/src/
report/build.rs). The Rust test sums the contacts as the report's scan does and
builds the report; this script sums them with numpy and runs gbstats' own
`RegressionAdjustedStatistic` through `TwoSidedTTest`, `SequentialTwoSidedTTest`
and the flat-prior `EffectBayesianABTest`. The variance reduction is gbstats'
adjusted relative variance against its unadjusted one (`SampleMeanStatistic`
or `ProportionStatistic` of the post measure).

    python3 -m venv /tmp/gbstats && /tmp/gbstats/bin/pip install gbstats==0.8.0
    /tmp/gbstats/bin/python crates/herald-domain/tests/gbstats_cuped_report_reference.py

prints the constants pasted into that test. Not needed by `cargo test`.
"""

import importlib.metadata

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
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
)

N = 80


def contact(g, i):
    """(pre_converted, pre_revenue, converted, revenue_30d, revenue_ltv) of
    contact i of arm g (0: the control `a`, 1: the variant `b`)."""
    pre_rev = (i * 37 + 11 + 5 * g) % 53 if i % 3 != 0 else 0
    pre_conv = 1 if (i * 7 + g) % 5 < 2 else 0
    r30 = (pre_rev * 3) // 4 + (i * 13 + 7 * g) % 19 + 4 * g if (i + g) % 4 != 0 else 0
    rltv = r30 + (i * 5) % 11
    conv = 1 if (pre_conv == 1 and i % 3 != 1) or (i * 11 + 3 * g) % 7 == 0 or (g == 1 and i % 10 == 3) else 0
    return pre_conv, pre_rev, conv, r30, rltv


def arm(g):
    return np.array([contact(g, i) for i in range(N)], dtype=float)


def prop(v):
    return ProportionStatistic(n=len(v), sum=float(v.sum()))


def mean(v):
    return SampleMeanStatistic(n=len(v), sum=float(v.sum()), sum_squares=float((v * v).sum()))


def adjusted(post, pre, post_kind, pre_kind):
    return RegressionAdjustedStatistic(
        n=len(post),
        post_statistic=post_kind(post),
        pre_statistic=pre_kind(pre),
        post_pre_sum_of_products=float((post * pre).sum()),
        theta=0,
    )


def main():
    assert importlib.metadata.version("gbstats") == "0.8.0"
    a, b = arm(0), arm(1)
    metrics = [
        ("CONVERSION", 2, 0, prop, prop),
        ("ARPU", 3, 1, mean, mean),
        ("LTV", 4, 1, mean, mean),
    ]
    for name, post, pre, post_kind, pre_kind in metrics:
        sa = lambda: adjusted(a[:, post], a[:, pre], post_kind, pre_kind)  # noqa: E731
        sb = lambda: adjusted(b[:, post], b[:, pre], post_kind, pre_kind)  # noqa: E731
        fixed = TwoSidedTTest(sa(), sb(), FrequentistConfig(alpha=0.05, difference_type="relative"))
        r = fixed.compute_result()
        seq = SequentialTwoSidedTTest(
            sa(),
            sb(),
            SequentialConfig(alpha=0.05, difference_type="relative", sequential_tuning_parameter=5000.0),
        ).compute_result()
        bayes = EffectBayesianABTest(sa(), sb(), EffectBayesianConfig(difference_type="relative")).compute_result()
        plain = TwoSidedTTest(
            post_kind(a[:, post]), post_kind(b[:, post]), FrequentistConfig(alpha=0.05, difference_type="relative")
        ).compute_result()
        reduction = 1.0 - (r.uplift.stddev / plain.uplift.stddev) ** 2
        print(f"// {name}: theta {fixed.stat_a.theta!r}")
        print(
            f"const {name}: Ref = Ref {{ rel_lift: {r.expected!r}, ci: ({r.ci[0]!r}, {r.ci[1]!r}), "
            f"p: {r.p_value!r}, seq_ci: ({seq.ci[0]!r}, {seq.ci[1]!r}), seq_p: {seq.p_value!r}, "
            f"chance: {bayes.chance_to_win!r}, reduction: {reduction!r} }};"
        )


if __name__ == "__main__":
    main()
