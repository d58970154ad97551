"""hosttune.bench.stats: unit tests, property tests, and agreement with scipy where installed."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hosttune.bench import stats

finite = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=60)


def test_percentiles_match_numpy_linear():
    np = pytest.importorskip("numpy")
    rng = random.Random(1)
    for _ in range(50):
        values = sorted(rng.random() * 100 for _ in range(rng.randint(1, 40)))
        for q in (0, 1, 50, 90, 95, 99, 100):
            assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-12)


def test_run_summary_and_errors():
    s = stats.run_summary([1.0, 2.0, 3.0, 4.0], 2.0, errors=1)
    assert s["throughput"] == 2.0 and s["count"] == 4 and s["errors"] == 1
    assert s["latency_ms"]["p50"] == 2.5 and s["latency_ms"]["max"] == 4.0
    with pytest.raises(ValueError):
        stats.run_summary([1.0], 0)
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_iqr_outliers():
    assert stats.iqr_outliers([10, 10.1, 9.9, 10, 20]) == [4]
    assert stats.iqr_outliers([10, 10.1, 9.9]) == []  # too few values to call anything an outlier
    # tight data: 1 % away is an IQR outlier but not a relevant one at min_rel 2 %
    assert stats.iqr_outliers([100, 100, 100.1, 99.9, 101]) == [4]
    assert stats.iqr_outliers([100, 100, 100.1, 99.9, 101], min_rel=0.02) == []


def test_verdict_rules():
    v = stats.verdict([100, 101, 99, 100.5, 100], [5, 5.1, 5.05, 4.9, 5.0])
    assert v["verdict"] == "stable" and v["more_runs"] == 0
    v = stats.verdict([100, 80, 120, 100, 90], [5, 5, 5, 5, 5])
    assert v["verdict"] == "unstable" and "throughput CV" in v["reasons"][0]
    v = stats.verdict([100, 100, 100, 100], [5, 8, 5, 3])
    assert v["verdict"] == "unstable" and "p99 CV" in v["reasons"][0]
    v = stats.verdict([100, 101], [5, 5])
    assert v["verdict"] == "unsure" and v["more_runs"] >= 1
    v = stats.verdict([100, 103, 97, 101, 99], [5, 5.4, 4.7, 5.1, 5.0])  # CV ~2.3% / 5%: more runs
    assert v["verdict"] == "unsure" and v["more_runs"] > 0
    # after the suggested number of runs with the same spread, the CI target is met
    assert stats.ci_halfwidth(v["cv_throughput"], v["runs_needed"]) <= stats.TARGET_THROUGHPUT
    assert stats.ci_halfwidth(v["cv_latency"], v["runs_needed"]) <= stats.TARGET_P99
    assert stats.verdict([], [])["verdict"] == "unsure"
    assert stats.worst(["stable", "unsure"]) == "unsure" and stats.worst(["unsure", "unstable"]) == "unstable"


# -- the documented thresholds (docs/serve-and-bench.md), each pinned by an example on either side --
def with_cv(cv_value: float, n: int, mean: float = 100.0) -> list[float]:
    """n values (alternating below/above the mean: no IQR outlier) whose sample CV is exactly cv_value,
    checked with the standard library's statistics module rather than the code under test."""
    z = [(-1) ** i for i in range(n)] if n % 2 == 0 else [-1.0, 0.0, 1.0] + [(-1) ** i for i in range(n - 3)]
    zm = statistics.fmean(z)
    scale = cv_value * mean / statistics.stdev(z)
    values = [mean + (v - zm) * scale for v in z]
    assert statistics.stdev(values) / statistics.fmean(values) == pytest.approx(cv_value, rel=1e-9)
    return values


def cv_for_halfwidth(halfwidth: float, n: int = 10) -> float:
    """The CV whose 95 % CI half-width of the mean over 10 runs is `halfwidth` (Student's
    t(0.975, 9) = 2.262157 from the tables, not from the code under test)."""
    assert n == 10
    return halfwidth * math.sqrt(n) / 2.262157


FLAT = [5.0] * 10  # a p99 that does not move: only throughput decides


@pytest.mark.parametrize("cv_value, expected", [(0.09, "unsure"), (0.11, "unstable")])
def test_unstable_throughput_cv_is_10_percent(cv_value, expected):
    v = stats.verdict(with_cv(cv_value, 3), FLAT[:3])
    assert v["verdict"] == expected, v
    assert v["cv_throughput"] == pytest.approx(cv_value)
    assert ("throughput CV 11.0% > 10%" in v["reasons"]) == (expected == "unstable")


@pytest.mark.parametrize("cv_value, expected", [(0.24, "unsure"), (0.26, "unstable")])
def test_unstable_p99_cv_is_25_percent(cv_value, expected):
    v = stats.verdict([100.0] * 3, with_cv(cv_value, 3, mean=5.0))
    assert v["verdict"] == expected, v
    assert ("p99 CV 26.0% > 25%" in v["reasons"]) == (expected == "unstable")


@pytest.mark.parametrize("halfwidth, expected", [(0.019, "stable"), (0.021, "unsure")])
def test_throughput_confidence_target_is_2_percent(halfwidth, expected):
    v = stats.verdict(with_cv(cv_for_halfwidth(halfwidth, 10), 10), FLAT)
    assert v["ci95_throughput"] == pytest.approx(halfwidth, rel=1e-4)
    assert v["verdict"] == expected, v
    assert v["reasons"] == ([] if expected == "stable" else ["throughput 95% CI +-2.1% > 2%"])
    assert v["more_runs"] == (0 if expected == "stable" else 1)  # 11 runs at this CV meet the target


@pytest.mark.parametrize("halfwidth, expected", [(0.048, "stable"), (0.052, "unsure")])
def test_p99_confidence_target_is_5_percent(halfwidth, expected):
    v = stats.verdict([100.0] * 10, with_cv(cv_for_halfwidth(halfwidth, 10), 10, mean=5.0))
    assert v["ci95_latency"] == pytest.approx(halfwidth, rel=1e-4)
    assert v["verdict"] == expected, v
    assert v["reasons"] == ([] if expected == "stable" else ["p99 95% CI +-5.2% > 5%"])


def test_at_least_three_runs():
    assert stats.verdict([100.0] * 2, [5.0] * 2)["reasons"] == ["2 run(s) < 3"]
    assert stats.verdict([100.0] * 3, [5.0] * 3)["verdict"] == "stable"


# 19 runs within +-0.1 % and one run `away` from them: an IQR outlier whatever `away` is; it counts
# when it is more than the target (2 % throughput, 5 % p99) from the median. Its CV stays small
# enough for the CI target (20 runs): only the outlier rule can make these unsure.
def one_off(away: float, mean: float) -> list[float]:
    return [mean * (1 + 0.001 * (-1) ** i) for i in range(19)] + [mean * (1 + away)]


@pytest.mark.parametrize("away, expected", [(0.015, "stable"), (0.03, "unsure"), (-0.03, "unsure")])
def test_outlier_run_in_throughput(away, expected):
    thr = one_off(away, 100.0)
    assert stats.iqr_outliers(thr) == [19]  # outside the 1.5 x IQR fences either way
    v = stats.verdict(thr, [5.0] * 20)
    assert v["ci95_throughput"] < stats.TARGET_THROUGHPUT
    assert v["verdict"] == expected, v
    assert v["outlier_runs"] == ([] if expected == "stable" else [19])
    if expected == "unsure":
        assert v["reasons"] == ["outlier run(s) [19] (1.5 x IQR)"] and v["more_runs"] == 1


@pytest.mark.parametrize("away, expected", [(0.04, "stable"), (0.06, "unsure")])
def test_outlier_run_in_p99(away, expected):
    v = stats.verdict([100.0] * 20, one_off(away, 5.0))
    assert v["ci95_latency"] < stats.TARGET_P99
    assert v["verdict"] == expected, v
    assert v["outlier_runs"] == ([] if expected == "stable" else [19])


def test_outliers_need_four_runs():
    assert stats.iqr_outliers([100.0, 100.0, 130.0]) == []
    assert stats.iqr_outliers([100.0, 100.0, 100.0, 130.0]) == [3]


def test_judge_p999_judges_the_tail_it_is_given():
    calm, noisy = [5.0] * 5, with_cv(0.30, 5, mean=8.0)
    assert stats.verdict([100.0] * 5, calm, judge="p99")["verdict"] == "stable"
    v = stats.verdict([100.0] * 5, noisy, judge="p99.9")
    assert v["verdict"] == "unstable" and v["judge"] == "p99.9" and v["reasons"] == ["p99.9 CV 30.0% > 25%"]
    with pytest.raises(ValueError, match="judge"):
        stats.verdict([1.0], [1.0], judge="p95")


def test_latency_summary_has_p999_and_max():
    values = [float(v) for v in range(1, 1001)]  # 1..1000 ms
    s = stats.latency_summary(values)
    assert s["p99.9"] == pytest.approx(999.001) and s["max"] == 1000.0 and s["p99"] == pytest.approx(990.01)


def test_thresholds_are_strict():
    """Exactly at a threshold is on the calm side: the docs say 'more than'."""
    assert stats.cv([90.0, 100.0, 110.0]) == 0.10 and stats.cv([3.75, 5.0, 6.25]) == 0.25
    assert stats.verdict([90.0, 100.0, 110.0], [5.0] * 3)["verdict"] == "unsure"
    assert stats.verdict([100.0] * 3, [3.75, 5.0, 6.25])["verdict"] == "unsure"
    assert stats.iqr_outliers([0, 0, 2, 2, 5]) == [] and stats.iqr_outliers([0, 0, 2, 2, 5.01]) == [4]
    assert stats.iqr_outliers([-3, 0, 0, 2, 2]) == [] and stats.iqr_outliers([-3.01, 0, 0, 2, 2]) == [0]
    # 2 % from the median exactly is not 'more than 2 %'
    assert stats.iqr_outliers([100, 100, 100, 100, 102], min_rel=0.02) == []
    assert stats.iqr_outliers([100, 100, 100, 100, 102.01], min_rel=0.02) == [4]


def test_two_runs_can_be_unstable_and_the_result_fields():
    v = stats.verdict([100.0, 130.0], [5.0, 5.0])
    assert v["verdict"] == "unstable" and v["runs"] == 2
    assert v["reasons"] == ["throughput CV 18.4% > 10%"]  # stdev 21.2 / mean 115
    one = stats.verdict([100.0], [5.0])  # one run: no spread to judge, no confidence interval
    assert one["verdict"] == "unsure" and one["ci95_throughput"] is None and one["ci95_latency"] is None
    assert one["reasons"][0] == "1 run(s) < 3" and one["more_runs"] == 2 and one["runs_needed"] == 3
    assert stats.verdict([], []) == {"verdict": "unsure", "reasons": ["no runs"], "runs": 0, "judge": "p99",
                                     "runs_needed": 3, "more_runs": 3}
    with pytest.raises(ValueError, match="one throughput and one p99.9 per run"):
        stats.verdict([1.0, 2.0], [1.0], judge="p99.9")
    # unstable after more runs than the CI would need: nothing to add (more runs do not help)
    many = with_cv(0.11, 200)
    v = stats.verdict(many, [5.0] * 200)
    assert v["verdict"] == "unstable" and v["runs_needed"] == 200 and v["more_runs"] == 0
    assert stats.worst([]) == "unsure" and stats.worst(["stable", "stable"]) == "stable"


def test_describe_and_summaries():
    d = stats.describe([90.0, 100.0, 110.0, 100.0, 150.0])
    assert d == {"mean": 110.0, "stdev": pytest.approx(statistics.stdev([90, 100, 110, 100, 150])),
                 "cv": pytest.approx(statistics.stdev([90, 100, 110, 100, 150]) / 110),
                 "min": 90.0, "max": 150.0, "spread": pytest.approx(60 / 110), "outliers": [4],
                 "values": [90.0, 100.0, 110.0, 100.0, 150.0]}
    assert stats.describe([0.0, 0.0])["spread"] == 0.0 and stats.cv([0.0, 0.0]) == 0.0
    s = stats.latency_summary([3.0, 1.0, 2.0, 4.0])
    assert (s["min"], s["max"], s["mean"]) == (1.0, 4.0, 2.5) and s["stdev"] == pytest.approx(statistics.stdev([1, 2, 3, 4]))
    assert set(s) == {"p50", "p90", "p95", "p99", "p99.9", "min", "max", "mean", "stdev"}
    r = stats.run_summary([1.0, 2.0], 0.5)
    assert r["duration_s"] == 0.5 and r["throughput"] == 4.0 and r["errors"] == 0
    assert stats.run_summary([], 1.0)["latency_ms"] is None
    assert stats.reduce_samples([3.0, 1.0, 2.0], 1) == [3.0] and stats.reduce_samples([3.0, 1.0], 0) == []
    assert stats.reduce_samples([3.0, 1.0, 2.0], 3) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="empty sample"):
        stats.percentile([], 50)
    with pytest.raises(ValueError, match=r"within \[0, 100\]"):
        stats.percentile([1.0], -1)
    with pytest.raises(ValueError, match="duration must be positive"):
        stats.run_summary([1.0], 0)


@given(st.lists(finite, min_size=4, max_size=30), st.sampled_from([0.0, 0.02, 0.05]))
@settings(deadline=None)  # a loaded 2-CPU machine must not fail the property on time
def test_outliers_are_exactly_those_numpy_fences_give(values, min_rel):
    np = pytest.importorskip("numpy")
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    expected = [i for i, v in enumerate(values) if (v < lo or v > hi) and abs(v - med) > min_rel * abs(med)]
    assert stats.iqr_outliers(values, min_rel=min_rel) == expected


def test_mutation_survivors_in_the_verdict_path():
    """Examples that kill what scripts/mutation left alive in the verdict's own arithmetic."""
    # unstable on the tail only, with throughput CV exactly 10 %: only the tail is named
    v = stats.verdict([90.0, 100.0, 110.0], [3.5, 5.0, 6.5])
    assert v["verdict"] == "unstable" and v["reasons"] == ["p99 CV 30.0% > 25%"]
    v = stats.verdict([80.0, 100.0, 120.0], [3.75, 5.0, 6.25])
    assert v["reasons"] == ["throughput CV 20.0% > 10%"]
    # 99 is outside the IQR fences but 1.98 % from the median (101): not an outlier run at 2 %
    assert stats.iqr_outliers([103, 102.1, 99, 101, 101]) == [2]
    assert stats.iqr_outliers([103, 102.1, 99, 101, 101], min_rel=0.02) == []
    # the CI's t quantile below 1 and on the lower tail; the t CDF on both sides (scipy's values)
    assert stats.t_quantile(0.6, 10) == pytest.approx(0.2601848, rel=1e-6)
    assert stats.t_quantile(0.5, 3) == 0.0
    assert stats.t_cdf(-2.0, 5) == pytest.approx(0.0509697, rel=1e-6) and stats.t_cdf(0.0, 5) == 0.5
    assert stats.t_cdf(math.inf, 5) == 1.0 and stats.t_cdf(-math.inf, 5) == 0.0
    assert stats.betainc(2, 3, 0.0) == 0.0 and stats.betainc(2, 3, 1.0) == 1.0
    for p in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"p must be within \(0, 1\)"):
            stats.t_quantile(p, 5)
    with pytest.raises(ValueError, match="mean of an empty sample"):
        stats.mean([])
    with pytest.raises(ValueError, match="judge must be one of p99, p99.9"):
        stats.verdict([1.0], [1.0], judge="max")
    # the reduced sample: evenly spaced order statistics, min and max kept
    assert stats.reduce_samples([float(v) for v in range(100, -1, -1)], 11) == [float(v) for v in range(0, 101, 10)]
    assert stats.reduce_samples([5.0, 1.0, 3.0], 2) == [1.0, 5.0]
    assert stats.reduce_samples([5.0, 1.0], 2) == [1.0, 5.0]


def test_t_quantiles():
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776445, rel=1e-5)
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.7062, rel=1e-4)
    assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.959966, rel=1e-4)
    assert stats.t_quantile(0.025, 10) == pytest.approx(-stats.t_quantile(0.975, 10))


def test_tests_agree_with_scipy():
    sps = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for _ in range(30):
        a = [rng.gauss(10, 2) for _ in range(rng.randint(2, 15))]
        b = [rng.gauss(11, 3) for _ in range(rng.randint(2, 15))]
        assert stats.welch_t(a, b)["p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-7)
        ours = stats.mann_whitney_u(a, b)
        ref = sps.mannwhitneyu(a, b, alternative="two-sided", method="exact")
        assert ours["u"] == ref.statistic and ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    a = [round(rng.gauss(10, 2), 1) for _ in range(300)]  # ties: normal approximation
    b = [round(rng.gauss(10.4, 2), 1) for _ in range(250)]
    ref = sps.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    ours = stats.mann_whitney_u(a, b)
    assert ours["method"] == "normal" and ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_significance_detects_a_real_shift_and_not_noise():
    rng = random.Random(3)
    base = [rng.gauss(100, 1) for _ in range(8)]
    shifted = [rng.gauss(110, 1) for _ in range(8)]
    same = [rng.gauss(100, 1) for _ in range(8)]
    assert stats.mann_whitney_u(base, shifted)["p"] < 0.01
    assert stats.welch_t(base, shifted)["p"] < 0.001
    assert stats.welch_t(base, same)["p"] > 0.01


@given(samples)
@settings(deadline=None)  # a loaded 2-CPU machine must not fail the property on time
def test_percentiles_are_ordered_and_bounded(values):
    s = sorted(values)
    ps = [stats.percentile(s, q) for q in (0, 50, 90, 95, 99, 100)]
    assert ps[0] == s[0] and ps[-1] == s[-1]
    assert all(x <= y * (1 + 1e-12) + 1e-12 for x, y in zip(ps, ps[1:]))


@given(st.lists(finite, min_size=2, max_size=40), st.floats(min_value=1e-2, max_value=1e3))
@settings(deadline=None)  # a loaded 2-CPU machine must not fail the property on time
def test_cv_is_scale_invariant(values, k):
    assume(stats.mean(values) > 0)
    assert stats.cv([v * k for v in values]) == pytest.approx(stats.cv(values), rel=1e-6, abs=1e-9)


@given(st.lists(finite, min_size=1, max_size=30), st.lists(finite, min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)  # a loaded machine must not fail on time
def test_mann_whitney_is_symmetric(a, b):
    ab, ba = stats.mann_whitney_u(a, b), stats.mann_whitney_u(b, a)
    assert ab["u"] + ba["u"] == pytest.approx(len(a) * len(b))
    assert ab["p"] == pytest.approx(ba["p"], rel=1e-9, abs=1e-12)
    assert 0 <= ab["p"] <= 1


@given(st.lists(finite, min_size=1, max_size=12), st.lists(finite, min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)  # a loaded machine must not fail on time
def test_verdict_is_consistent(thr, p99):
    n = min(len(thr), len(p99))
    thr, p99 = thr[:n], p99[:n]
    v = stats.verdict(thr, p99)
    assert v["verdict"] in ("stable", "unstable", "unsure")
    if v["verdict"] == "stable":
        assert n >= stats.MIN_RUNS and v["more_runs"] == 0 and not v["outlier_runs"]
        assert v["cv_throughput"] <= stats.UNSTABLE_CV_THROUGHPUT
    if v["verdict"] == "unsure":
        assert v["more_runs"] >= 1
    # identical runs are stable as soon as there are enough of them
    assert stats.verdict([thr[0]] * 5, [p99[0]] * 5)["verdict"] == "stable"


@given(st.lists(finite, min_size=1, max_size=3000), st.integers(min_value=2, max_value=500))
@settings(deadline=None)  # a loaded 2-CPU machine must not fail the property on time
def test_reduce_samples_keeps_the_shape(values, keep):
    out = stats.reduce_samples(values, keep)
    assert len(out) == min(len(values), keep)
    assert out[0] == min(values) and out[-1] == max(values)
    assert out == sorted(out)


@given(st.lists(finite, min_size=4, max_size=30))
@settings(deadline=None)  # a loaded 2-CPU machine must not fail the property on time
def test_outliers_lie_outside_the_fences(values):
    s = sorted(values)
    q1, q3 = stats.percentile(s, 25), stats.percentile(s, 75)
    for i in stats.iqr_outliers(values):
        assert values[i] < q1 - 1.5 * (q3 - q1) or values[i] > q3 + 1.5 * (q3 - q1)


@given(st.floats(min_value=0.001, max_value=0.3), st.floats(min_value=0.005, max_value=0.1))
@settings(deadline=None)  # a loaded 2-CPU machine must not fail the property on time
def test_runs_needed_meets_the_target(cv_value, target):
    n = stats.runs_needed(cv_value, target)
    if n < stats.MAX_RUNS_ESTIMATE:
        assert stats.ci_halfwidth(cv_value, n) <= target
        if n > stats.MIN_RUNS:
            assert stats.ci_halfwidth(cv_value, n - 1) > target
    assert math.isinf(stats.ci_halfwidth(cv_value, 1))
