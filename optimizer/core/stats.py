"""Order statistics of a sample: the distribution-free confidence interval of a quantile, and
how many samples bound it. Pure; a leaf (imports nothing of the package).

Used by :mod:`optimizer.measures.metrics` (the P99's interval in every summary) and by
:mod:`optimizer.loadgen` (sizing a run so that the P99 has an upper bound).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

__all__ = ["min_samples_for_upper_bound", "quantile_ci", "t_cdf", "t_quantile", "thin_sample"]

NAN = float("nan")


def _binom_cdf(n: int, p: float) -> np.ndarray:
    """P(X <= k) for k = 0..n, X ~ Binomial(n, p), computed in log space."""
    k = np.arange(n + 1)
    lg = np.array([math.lgamma(i + 1) for i in range(n + 1)])
    logpmf = lg[n] - lg - lg[::-1] + k * math.log(p) + (n - k) * math.log1p(-p)
    pmf = np.exp(logpmf - logpmf.max())
    return np.cumsum(pmf) / pmf.sum()


def quantile_ci(values: Iterable[float], q: float, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free two-sided CI of the q-quantile from order statistics.

    Returns (low, high) with P(x_(l) <= Q_q <= x_(u)) >= confidence, where x_(i) is the i-th
    smallest value (1-based) and coverage follows from B ~ Binomial(n, q), the count of samples
    below the true quantile. A bound that would need an order statistic beyond the sample is NaN:
    too few samples to bound that side (at q = 0.99 and 95 %, the upper bound needs n >= 368)."""
    x = np.sort(np.asarray(list(values), dtype=float))
    n = x.size
    if n == 0:
        return NAN, NAN
    alpha = (1.0 - confidence) / 2.0
    cdf = _binom_cdf(n, q)  # cdf[k] = P(B <= k)
    # upper: smallest u with P(B <= u - 1) >= 1 - alpha, i.e. the quantile lies below x_(u)
    ups = np.nonzero(cdf[:n] >= 1 - alpha)[0]
    hi = float(x[ups[0]]) if ups.size else NAN  # u - 1 = index
    # lower: largest l with P(B <= l - 1) <= alpha
    lows = np.nonzero(cdf[:n] <= alpha)[0]
    lo = float(x[lows[-1]]) if lows.size else NAN  # l - 1 = k, x_(l) = x[k]
    return lo, hi


def _upper_index(n: int, q: float, confidence: float) -> int:
    """0-based index of the order statistic that :func:`quantile_ci` returns as the upper bound,
    or -1 when n samples cannot bound the q-quantile from above."""
    if n <= 0:
        return -1
    alpha = (1.0 - confidence) / 2.0
    ups = np.nonzero(_binom_cdf(n, q)[:n] >= 1 - alpha)[0]
    return int(ups[0]) if ups.size else -1


def min_samples_for_upper_bound(q: float = 0.99, confidence: float = 0.95, above: int = 0) -> int:
    """The fewest samples for which :func:`quantile_ci` gives the q-quantile an upper bound at
    ``confidence`` with at least ``above`` samples larger than that bound.

    ``above=0``: the bound exists (it is then the sample maximum): n >= ln(alpha) / ln(q) with
    alpha = (1 - confidence) / 2, e.g. 368 for the P99 at 95 %, 528 at 99 %. Each further
    sample above the bound costs roughly 1.5 / (1 - q) more (``above=2``: 720 for the P99 at
    95 %); a bound that is not the maximum is much less at the mercy of one outlier."""
    if not 0 < q < 1 or not 0 < confidence < 1 or above < 0:
        raise ValueError(f"need 0 < q < 1, 0 < confidence < 1 and above >= 0, got q={q}, "
                         f"confidence={confidence}, above={above}")
    alpha = (1.0 - confidence) / 2.0
    n = max(1, math.ceil(math.log(alpha) / math.log(q)) - 2)  # closed form for above=0, minus float slack

    def ok(m: int) -> bool:
        u = _upper_index(m, q, confidence)
        return u >= 0 and m - 1 - u >= above

    while not ok(n):  # grow geometrically, then bisect
        lo, n = n, n + max(1, n // 4)
        if ok(n):
            while lo + 1 < n:
                mid = (lo + n) // 2
                lo, n = (lo, mid) if ok(mid) else (mid, n)
            break
    while n > 1 and ok(n - 1):
        n -= 1
    return n


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer ``df`` >= 1: the closed form in theta = atan(t / sqrt(df))
    (Abramowitz & Stegun 26.7.3-4, a finite sum), exact to rounding. NaN for df < 1."""
    if df < 1 or t != t:
        return NAN
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    th = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(th) ** 2
    if df % 2:  # odd
        term, acc = math.cos(th), 0.0
        for j in range(1, (df - 1) // 2 + 1):
            acc += term
            term *= c2 * (2 * j) / (2 * j + 1)
        a = 2 / math.pi * (th + math.sin(th) * acc) if df > 1 else 2 / math.pi * th
    else:
        term, acc = 1.0, 0.0
        for j in range(1, df // 2 + 1):
            acc += term
            term *= c2 * (2 * j - 1) / (2 * j)
        a = math.sin(th) * acc
    return 0.5 + a / 2 if t >= 0 else 0.5 - a / 2


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom: :func:`t_cdf` inverted by
    bisection (exact to 1e-10, any p; the multiplicity-adjusted quantiles of
    :mod:`optimizer.confirmation.uplift` reach p = 0.998 at df 2-6, where expansions in 1/df are off by
    several %). NaN for df < 1."""
    if df < 1 or not 0 < p < 1:
        return NAN
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10 * max(1.0, hi):
            break
    return (lo + hi) / 2


def thin_sample(values: list[float], limit: int = 2000) -> list[float]:
    """At most ``limit`` + 1 values (ms, rounded) that keep the distribution's shape: evenly spaced
    order statistics and the maximum. For the latency samples a trial stores for the report."""
    if len(values) <= limit:
        return [round(v, 3) for v in values]
    step = len(values) / limit
    s = sorted(values)
    return [round(s[int(i * step)], 3) for i in range(limit)] + [round(s[-1], 3)]
