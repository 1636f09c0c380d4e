"""The capacity and its confidence interval, from every probe of a search. Pure (numpy only).

The bisection's answer (the highest load that passed) assumes the P99 rises with the load and
reads each probe's verdict as certain; neither holds (a probe near the limit passes or fails by
chance, and a noisy P99 can fall between two loads). :func:`estimate_capacity` instead fits the
latency curve over all the probes of the search and reads the capacity off the fit:

- **the curve**: ``log P99`` of ``slo.metric`` against the load, fitted by isotonic (monotone
  non-decreasing) least squares (the pool-adjacent-violators algorithm, :func:`isotonic`),
  weighted by each probe's sample count. Monotone, because on one server more load never truly
  lowers the tail latency; any dip in the measured P99s is noise, which the fit pools away;
- **the point**: the load where the fit crosses ``log(limit)``, linear between the two probed
  loads that bracket it (at or beyond the highest probe: that probe's load, and the interval is
  open above; every probe above the limit: infeasible, NaN);
- **the uncertainty** by resampling the requests (a nonparametric bootstrap, ``replicates``
  times): each probe's P99 is recomputed from its requests drawn again with replacement, the
  whole curve refitted and its crossing taken. Only the sample's upper tail decides a resampled
  P99, so a probe keeps its largest values (``ProbeResult.tail_ms``, :func:`upper_tail`) and the
  resample is exact. A probe recorded before those existed (old studies) is resampled from its
  recorded P99 interval instead (log-normal with that interval's width: the order-statistic
  interval that the bootstrap approximates). A probe that failed on errors stays a failure in
  every replicate;
- **run-to-run noise**: probes of one search scatter around the fit more than their requests
  explain (the H200 study: most searches hold a lower load whose P99 lies above a higher one's
  beyond both resamples); the excess (the fit's residual variance on its residual degrees of
  freedom, less the mean resampling variance: a method-of-moments variance component) is added
  to every replicate as a shift of each probe, so the interval carries it;
- **the interval**: the bootstrap percentiles of the crossing, each end then moved outward to
  the nearest probed load: between probes the curve is interpolated, not measured, so the
  interval claims no more than the probes bracket.

Flags: ``non-monotone`` where a lower load's P99 lies above a higher load's beyond both
resamples' 95 % ranges (the curve is not one server's steady curve: warm-up, preemption storms,
a drifting host); ``cliff`` where the fitted P99 at least doubles between adjacent probes less
than 25 % apart (the capacity then sits at the cliff and a small shift of the workload moves it
little, but a probe just past it is far off the limit).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from optimizer.capacity.result import CapacityResult, ProbeResult

__all__ = ["CapacityEstimate", "estimate_capacity", "isotonic", "upper_tail"]

TAIL_SHARE = 0.05  # the share of a probe's sample that upper_tail keeps (P99's bootstrap needs ~3 %)
FAIL_LOG = 50.0  # log P99 that stands for a probe that failed on errors: above any limit


@dataclass(frozen=True)
class CapacityEstimate:
    """The fitted capacity and its interval (loads: users or requests/s)."""

    estimate: float  # NaN: infeasible (every probe above the limit)
    low: float  # 0.0: the capacity may be below the lowest probe
    high: float  # NaN: open above (the fit does not reach the limit within the probes)
    confidence: float
    flags: tuple[str, ...] = ()
    # the median of the resampled crossings: the load whose verdict is least certain, where one more probe
    # narrows the interval most (NaN: none)
    pivot: float = math.nan


def upper_tail(values_ms: Sequence[float], share: float = TAIL_SHARE) -> tuple[float, ...]:
    """The largest ``max(10, ceil(share * n))`` values, ascending, rounded to 0.1 ms: all a
    bootstrap of the P99 reads of a sample (:func:`estimate_capacity`)."""
    x = sorted(v for v in values_ms if v == v)
    k = min(len(x), max(10, math.ceil(share * len(x))))
    return tuple(round(v, 1) for v in x[len(x) - k:])


def isotonic(y: "Sequence[float] | np.ndarray", w: "Optional[Sequence[float] | np.ndarray]" = None) -> np.ndarray:
    """The non-decreasing least-squares fit of ``y`` (in order) with weights ``w``: the
    pool-adjacent-violators algorithm."""
    yy = np.asarray(y, dtype=float)
    ww = np.ones_like(yy) if w is None else np.asarray(w, dtype=float)
    vals: list[float] = []
    wts: list[float] = []
    cnt: list[int] = []
    for v, wt in zip(yy, ww):
        vals.append(float(v))
        wts.append(float(wt))
        cnt.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            wts[-2] = wsum
            cnt[-2] += cnt[-1]
            vals.pop(), wts.pop(), cnt.pop()
    return np.repeat(np.array(vals), cnt)


def _crossing(loads: np.ndarray, fit: np.ndarray, limit: float) -> float:
    """Where ``fit`` (non-decreasing over ``loads``) crosses ``limit``: 0.0 below the lowest load,
    +inf at or beyond the highest."""
    below = np.nonzero(fit <= limit)[0]
    if below.size == 0:
        return 0.0
    j = int(below[-1])
    if j == len(loads) - 1:
        return math.inf
    f0, f1 = fit[j], fit[j + 1]
    return float(loads[j] + (limit - f0) / (f1 - f0) * (loads[j + 1] - loads[j]))


def _replicates(p: ProbeResult, rng: np.random.Generator, b: int) -> np.ndarray:
    """``b`` resampled log P99s of one probe."""
    if p.failed_on == "errors":
        return np.full(b, FAIL_LOG)
    if p.tail_ms and p.tail_n >= len(p.tail_ms):
        tail = np.asarray(p.tail_ms, dtype=float)
        n, k = p.tail_n, len(tail)
        # a resample of n draws: how many land on each tail value, the rest below the tail
        counts = rng.multinomial(n, np.r_[np.full(k, 1.0 / n), 1.0 - k / n], size=b)
        target = math.ceil(0.99 * n)  # the P99 is the target-th smallest (numpy's linear rule: within a rank)
        above = np.cumsum(counts[:, k - 1::-1][:, :k], axis=1)  # draws at or above each tail value, top down
        idx = np.argmax(above >= n - target + 1, axis=1)  # top-down position of the target-th smallest
        ok = above[:, -1] >= n - target + 1
        vals = tail[k - 1 - idx]
        vals = np.where(ok, vals, tail[0])  # the rank fell below the tail (never, with 5 % kept): its floor
        return np.log(np.maximum(vals, 1e-3))
    c = math.log(p.p99_ms)
    lo, hi = p.p99_low_ms, p.p99_high_ms
    if not hi == hi:
        hi = p.max_ms
    if lo == lo and hi == hi and hi > lo > 0:
        sd = (math.log(hi) - math.log(lo)) / (2 * 1.96)
    elif hi == hi and hi > p.p99_ms:
        sd = (math.log(hi) - c) / 1.96
    else:
        sd = 0.05
    return c + sd * rng.standard_normal(b)


def estimate_capacity(probes: Sequence[ProbeResult], limit_ms: float, control: str = "concurrency",
                      confidence: float = 0.95, replicates: int = 400, seed: int = 0) -> CapacityEstimate:
    """The capacity of the module docstring from a search's probes. Aborted probes and probes
    without a P99 are left out; NaN everywhere when none is left."""
    use = sorted((p for p in probes if not p.aborted and (p.p99_ms == p.p99_ms or p.failed_on == "errors")
                  and p.p99_ms != 0), key=lambda p: p.load)
    if not use or not limit_ms > 0:
        return CapacityEstimate(math.nan, math.nan, math.nan, confidence)
    merged: dict[float, ProbeResult] = {}
    for p in use:  # one probe per load: the one with more requests
        if p.load not in merged or p.n_requests > merged[p.load].n_requests:
            merged[p.load] = p
    ps = list(merged.values())
    loads = np.array([p.load for p in ps])
    w = np.array([max(1, p.n_ok) for p in ps], dtype=float)
    y = np.array([FAIL_LOG if p.failed_on == "errors" else math.log(p.p99_ms) for p in ps])
    lim = math.log(limit_ms)
    fit = isotonic(y, w)
    point = _crossing(loads, fit, lim)
    rng = np.random.default_rng(seed)
    reps = np.stack([_replicates(p, rng, replicates) for p in ps], axis=1)  # (b, probes)
    flags = _flags(ps, loads, fit, reps)
    tau = _extra_sd(y, fit, reps, ps)
    if tau > 0:  # the probes scatter around the fit more than their requests explain: a run-to-run shift
        reps = reps + tau * rng.standard_normal(reps.shape) * np.array([p.failed_on != "errors" for p in ps])
    cross = np.array([_crossing(loads, isotonic(r, w), lim) for r in reps])
    beyond = float(loads[-1]) * 1e6  # stands for "at or beyond the highest probe" (inf breaks the quantile)
    cross = np.minimum(cross, beyond)
    a = (1 - confidence) / 2
    lo_q, hi_q = float(np.quantile(cross, a)), float(np.quantile(cross, 1 - a))
    hi_q = math.inf if hi_q >= beyond else hi_q
    low = float(loads[loads <= lo_q].max()) if (loads <= lo_q).any() else 0.0
    high = float(loads[loads >= hi_q].min()) if math.isfinite(hi_q) and (loads >= hi_q).any() else math.nan
    if point == 0.0:
        est = math.nan
    elif math.isinf(point):
        est = float(loads[-1])
    else:
        est = math.floor(point) if control == "concurrency" else point
    if est == est:
        est = min(max(est, low), high) if high == high else max(est, low)
    finite = cross[(cross > 0) & (cross < beyond)]
    pivot = float(np.median(finite)) if finite.size else math.nan
    return CapacityEstimate(float(est), low, high, confidence, flags, pivot)


def _extra_sd(y: np.ndarray, fit: np.ndarray, reps: np.ndarray, ps: list[ProbeResult]) -> float:
    """The run-to-run sd of a probe's log P99 beyond its requests' resampling: the isotonic fit's
    residual variance (on its residual degrees of freedom: probes minus fitted levels) less the
    mean bootstrap variance, floored at 0 (a method-of-moments variance component)."""
    keep = np.array([p.failed_on != "errors" for p in ps])
    if keep.sum() < 3:
        return 0.0
    levels = len(np.unique(np.round(fit[keep], 12)))
    dof = int(keep.sum()) - levels
    if dof < 1:
        return 0.0
    resid = float(np.sum((y[keep] - fit[keep]) ** 2)) / dof
    boot = float(np.mean(np.var(reps[:, keep], axis=0)))
    return math.sqrt(max(0.0, resid - boot))


def _flags(ps: list[ProbeResult], loads: np.ndarray, fit: np.ndarray, reps: np.ndarray) -> tuple[str, ...]:
    out = []
    lo, hi = np.quantile(reps, 0.025, axis=0), np.quantile(reps, 0.975, axis=0)
    for i in range(len(ps)):
        for j in range(i + 1, len(ps)):
            if lo[i] > hi[j] and ps[i].failed_on != "errors":
                out.append(f"non-monotone: the P99 at {loads[i]:g} ({ps[i].p99_ms:.0f} ms) lies above the P99 at "
                           f"{loads[j]:g} ({ps[j].p99_ms:.0f} ms) beyond both probes' noise")
                break
        if out:
            break
    for i in range(len(ps) - 1):
        if fit[i + 1] - fit[i] >= math.log(2) and fit[i] < 0.9 * FAIL_LOG and loads[i + 1] <= 1.25 * loads[i] \
                and ps[i + 1].failed_on != "errors":
            out.append(f"cliff: the fitted P99 more than doubles between {loads[i]:g} and {loads[i + 1]:g}")
            break
    return tuple(out)


def fitted(result: CapacityResult, confidence: float = 0.95, seed: int = 0) -> CapacityResult:
    """``result`` with the fitted capacity and its interval, computed from its probes; ``result``
    itself when it has one already (results recorded before the fit existed decode without one)."""
    if result.has_fit:
        return result
    e = estimate_capacity(result.probes, result.slo_p99_ms, result.control, confidence, seed=seed)
    return dataclasses.replace(result, estimate=e.estimate, low=e.low, high=e.high, confidence=e.confidence,
                               flags=e.flags)
