"""Benchmark statistics: pure functions, no I/O, no numpy (unit- and property-tested).

Per run: latency percentiles and throughput. Across runs: mean, stdev, coefficient of variation,
min/max spread, IQR outliers, a stability verdict and an estimate of the runs still needed.
Between two results: Mann-Whitney U and Welch's t test.

Stability verdict (`verdict()`; thresholds below, documented in docs/serve-and-bench.md):

- **unstable**: the run-to-run spread is too large for more runs to help: CV of throughput
  > `UNSTABLE_CV_THROUGHPUT` (10 %) or CV of the judged tail latency > `UNSTABLE_CV_P99` (25 %).
- **stable**: at least `MIN_RUNS` (3) runs, no outlier run (1.5 x IQR rule with >= 4 runs, counting
  only runs also more than the target (2 % throughput, 5 % tail) away from the median), and
  the 95 % confidence interval of the mean is narrow: half-width <= `TARGET_THROUGHPUT` (2 %) of
  the mean throughput and <= `TARGET_P99` (5 %) of the mean tail latency.

The judged tail is each run's p99 by default, or its p99.9 (`JUDGES`, `hosttune bench --judge`),
with the same thresholds.
- **unsure**: anything else; `runs_needed` estimates how many more runs would bring the
  confidence intervals under the targets at the CV seen so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PERCENTILES = (50, 90, 95, 99, 99.9)
JUDGES = ("p99", "p99.9")  # the per-run tail percentiles the verdict can judge
MIN_RUNS = 3
UNSTABLE_CV_THROUGHPUT = 0.10
UNSTABLE_CV_P99 = 0.25
TARGET_THROUGHPUT = 0.02  # relative 95% CI half-width of the mean throughput
TARGET_P99 = 0.05  # relative 95% CI half-width of the mean judged tail (p99 or p99.9)
MAX_RUNS_ESTIMATE = 1000
ALPHA = 0.05


# -- single sample ------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of already sorted values."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of an empty sample")
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(max(0.0, math.fsum((v - m) ** 2 for v in values) / (n - 1)))


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation (stdev / mean); 0 when the mean is 0."""
    m = mean(values)
    return stdev(values) / abs(m) if m else 0.0


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    s = sorted(latencies_ms)
    out = {f"p{q:g}": percentile(s, q) for q in PERCENTILES}
    out.update({"min": s[0], "max": s[-1], "mean": mean(s), "stdev": stdev(s)})
    return out


def run_summary(latencies_ms: Sequence[float], duration_s: float, errors: int = 0) -> dict[str, Any]:
    """One run: latency percentiles (ms) and throughput (completed inferences per second)."""
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    count = len(latencies_ms)
    out: dict[str, Any] = {"count": count, "errors": errors, "duration_s": duration_s,
                           "throughput": count / duration_s}
    out["latency_ms"] = latency_summary(latencies_ms) if count else None
    return out


def reduce_samples(latencies_ms: Sequence[float], keep: int = 1000) -> list[float]:
    """At most `keep` evenly spaced order statistics of the sorted sample (min and max kept):
    enough for a CDF and rank tests, small enough for the JSON."""
    s = sorted(latencies_ms)
    n = len(s)
    if n <= keep:
        return list(s)
    if keep < 2:
        return [s[-1]] if keep == 1 else []
    return [s[round(i * (n - 1) / (keep - 1))] for i in range(keep)]


# -- across runs --------------------------------------------------------------------------------
def iqr_outliers(values: Sequence[float], k: float = 1.5, min_rel: float = 0.0) -> list[int]:
    """Indices of values outside [Q1 - k IQR, Q3 + k IQR] (none with fewer than 4 values).
    With `min_rel`, a value must also lie more than min_rel x |median| from the median: on very
    tight data the IQR fences alone flag differences far below the precision that matters."""
    if len(values) < 4:
        return []
    s = sorted(values)
    q1, q3 = percentile(s, 25), percentile(s, 75)
    med = percentile(s, 50)
    spread = q3 - q1
    lo, hi = q1 - k * spread, q3 + k * spread
    return [i for i, v in enumerate(values) if (v < lo or v > hi) and abs(v - med) > min_rel * abs(med)]


def describe(values: Sequence[float]) -> dict[str, Any]:
    """mean, stdev, cv, min, max, spread ((max - min) / mean) and IQR outliers of per-run values."""
    m = mean(values)
    return {
        "mean": m, "stdev": stdev(values), "cv": cv(values), "min": min(values), "max": max(values),
        "spread": (max(values) - min(values)) / abs(m) if m else 0.0,
        "outliers": iqr_outliers(values), "values": list(values),
    }


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (bisection on the CDF)."""
    if not 0 < p < 1:
        raise ValueError("p must be within (0, 1)")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def ci_halfwidth(cv_value: float, n: int, confidence: float = 0.95) -> float:
    """Relative half-width of the confidence interval of a mean, from the CV of n values."""
    if n < 2:
        return math.inf
    return t_quantile(0.5 + confidence / 2, n - 1) * cv_value / math.sqrt(n)


def runs_needed(cv_value: float, target: float, confidence: float = 0.95) -> int:
    """Smallest n (>= MIN_RUNS) whose CI half-width at this CV is within `target` (capped at
    MAX_RUNS_ESTIMATE). The half-width falls as n grows, so a binary search finds it."""
    if cv_value <= 0 or ci_halfwidth(cv_value, MIN_RUNS, confidence) <= target:
        return MIN_RUNS
    if ci_halfwidth(cv_value, MAX_RUNS_ESTIMATE, confidence) > target:
        return MAX_RUNS_ESTIMATE
    lo, hi = MIN_RUNS, MAX_RUNS_ESTIMATE  # half-width(lo) > target >= half-width(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ci_halfwidth(cv_value, mid, confidence) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def verdict(throughputs: Sequence[float], tails: Sequence[float], judge: str = "p99") -> dict[str, Any]:
    """The stability verdict of repeated runs (see the module docstring for the rules): `tails` are
    the runs' `judge` percentiles (p99 or p99.9) in ms."""
    if judge not in JUDGES:
        raise ValueError(f"judge must be one of {', '.join(JUDGES)}")
    n = len(throughputs)
    if n != len(tails):
        raise ValueError(f"one throughput and one {judge} per run")
    if n == 0:
        return {"verdict": "unsure", "reasons": ["no runs"], "runs": 0, "judge": judge, "runs_needed": MIN_RUNS,
                "more_runs": MIN_RUNS}
    cv_t, cv_l = cv(throughputs), cv(tails)
    need = max(runs_needed(cv_t, TARGET_THROUGHPUT), runs_needed(cv_l, TARGET_P99))
    outliers = sorted(set(iqr_outliers(throughputs, min_rel=TARGET_THROUGHPUT))
                      | set(iqr_outliers(tails, min_rel=TARGET_P99)))
    half_t, half_l = ci_halfwidth(cv_t, n), ci_halfwidth(cv_l, n)
    reasons = []
    if n >= 2 and (cv_t > UNSTABLE_CV_THROUGHPUT or cv_l > UNSTABLE_CV_P99):
        if cv_t > UNSTABLE_CV_THROUGHPUT:
            reasons.append(f"throughput CV {cv_t:.1%} > {UNSTABLE_CV_THROUGHPUT:.0%}")
        if cv_l > UNSTABLE_CV_P99:
            reasons.append(f"{judge} CV {cv_l:.1%} > {UNSTABLE_CV_P99:.0%}")
        result = "unstable"
    else:
        if n < MIN_RUNS:
            reasons.append(f"{n} run(s) < {MIN_RUNS}")
        if outliers:
            reasons.append(f"outlier run(s) {outliers} (1.5 x IQR)")
        if half_t > TARGET_THROUGHPUT:
            reasons.append(f"throughput 95% CI +-{half_t:.1%} > {TARGET_THROUGHPUT:.0%}")
        if half_l > TARGET_P99:
            reasons.append(f"{judge} 95% CI +-{half_l:.1%} > {TARGET_P99:.0%}")
        result = "unsure" if reasons else "stable"
    more = max(0, need - n) if result != "stable" else 0
    if result == "unsure" and more == 0:
        more = 1  # only an outlier gets here (enough runs for the CI): one more run to see if it repeats
    return {
        "verdict": result, "reasons": reasons, "runs": n, "judge": judge,
        "cv_throughput": cv_t, "cv_latency": cv_l,
        "ci95_throughput": half_t if math.isfinite(half_t) else None,
        "ci95_latency": half_l if math.isfinite(half_l) else None,
        "outlier_runs": outliers, "runs_needed": max(need, n) if result != "stable" else n, "more_runs": more,
    }


def worst(verdicts: Sequence[str]) -> str:
    order = {"stable": 0, "unsure": 1, "unstable": 2}
    return max(verdicts, key=lambda v: order[v]) if verdicts else "unsure"


# -- between two results -----------------------------------------------------------------------
def compare_values(va: Sequence[float], vb: Sequence[float], alpha: float, higher_better: bool) -> dict[str, Any]:
    """B against A on per-run values: the test `hosttune bench compare` (and `hosttune tune`) decides
    by, and whether B is better, worse or not significantly different."""
    ma, mb = mean(va), mean(vb)
    out: dict[str, Any] = {"a": ma, "b": mb, "delta": (mb - ma) / ma if ma else None,
                           "mann_whitney": mann_whitney_u(va, vb)}
    if len(va) >= 2 and len(vb) >= 2:
        out["welch"] = welch_t(va, vb)
    # the exact Mann-Whitney U cannot reach 0.05 with fewer than 4 runs a side: Welch's t decides there
    small = len(va) < 4 or len(vb) < 4
    out["test"] = "welch" if small and "welch" in out else "mann_whitney"
    p = out[out["test"]]["p"]
    out["p"] = p
    out["significant"] = p < alpha
    if not out["significant"]:
        out["change"] = "no significant difference"
    else:
        better = (mb > ma) == higher_better
        out["change"] = "better" if better else "worse"
    return out


# -- distributions for the tests ----------------------------------------------------------------
def normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    x = df / (df + t * t)
    tail = 0.5 * betainc(df / 2, 0.5, x)
    return 1 - tail if t > 0 else tail


def welch_t(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Welch's unequal-variances t test, two-sided."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t test needs two values per side")
    ma, mb = mean(a), mean(b)
    va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
    if va + vb == 0:
        return {"t": 0.0 if ma == mb else math.copysign(math.inf, ma - mb), "df": len(a) + len(b) - 2,
                "p": 1.0 if ma == mb else 0.0}
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0) + (vb ** 2 / (len(b) - 1) if vb else 0))
    p = 2 * (1 - t_cdf(abs(t), df))
    return {"t": t, "df": df, "p": min(1.0, max(0.0, p))}


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        r = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = r
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def _exact_u_cdf(u: int, n1: int, n2: int) -> float:
    """P(U <= u) under H0 without ties (counting arrangements, dynamic programming)."""
    # f[j][k]: arrangements of j items of sample 1 among j+k with U = ...; use the classic recurrence
    # c(n1, n2, u) = c(n1-1, n2, u-n2) + c(n1, n2-1, u)
    from functools import lru_cache

    @lru_cache(maxsize=None)
    def count(a: int, b: int, v: int) -> int:
        if v < 0:
            return 0
        if a == 0 or b == 0:
            return 1 if v == 0 else 0
        return count(a - 1, b, v - b) + count(a, b - 1, v)

    total = math.comb(n1 + n2, n1)
    return sum(count(n1, n2, v) for v in range(u + 1)) / total


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Mann-Whitney U test: exact without ties for small samples, else the normal
    approximation with tie and continuity corrections. U is the statistic of `a`."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann-Whitney U needs values on both sides")
    ranks, ties = _ranks(list(a) + list(b))
    r1 = math.fsum(ranks[:n1])
    u1 = r1 - n1 * (n1 + 1) / 2
    u2 = n1 * n2 - u1
    if not ties and n1 * n2 <= 400 and n1 + n2 <= 40:
        umin = int(round(min(u1, u2)))
        p = min(1.0, 2 * _exact_u_cdf(umin, n1, n2))
        method = "exact"
    else:
        n = n1 + n2
        tie_term = math.fsum(t ** 3 - t for t in ties) / (n * (n - 1)) if n > 1 else 0.0
        sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term))
        if sigma == 0:
            p = 1.0
        else:
            z = (abs(u1 - n1 * n2 / 2) - 0.5) / sigma
            p = min(1.0, 2 * normal_sf(max(z, 0.0)))
        method = "normal"
    # common-language effect size: P(a > b) + P(a = b) / 2
    return {"u": u1, "p": p, "method": method, "effect": u1 / (n1 * n2)}
