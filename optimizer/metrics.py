"""Request records to a load summary. Pure.

Percentiles are numpy's (linear interpolation). An empty sample is NaN with its count beside it,
never 0: a config whose every request failed must not look like the fastest. The P99's
confidence interval is distribution-free (order statistics with binomial coverage), so the
study can judge feasibility on its upper bound.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from optimizer.loadgen.records import RequestResult

__all__ = ["Dist", "LoadSummary", "min_samples_for_upper_bound", "quantile_ci", "summarize"]

NAN = float("nan")


@dataclass(frozen=True)
class Dist:
    """A latency distribution in milliseconds."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    p99_low: float  # confidence interval of the P99 (NaN when too few samples to bound it)
    p99_high: float

    @classmethod
    def of(cls, seconds: Sequence[float], confidence: float = 0.95) -> "Dist":
        a = np.asarray([x for x in seconds if x == x], dtype=float) * 1000.0
        if a.size == 0:
            return cls(0, NAN, NAN, NAN, NAN, NAN, NAN, NAN)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        lo, hi = quantile_ci(a, 0.99, confidence)
        return cls(int(a.size), float(a.mean()), float(p50), float(p90), float(p99), float(a.max()), lo, hi)


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


@dataclass(frozen=True)
class LoadSummary:
    n_requests: int
    n_ok: int
    error_rate: float
    errors: dict[str, int] = field(default_factory=dict)
    duration_s: float = NAN
    output_tok_s: float = NAN
    total_tok_s: float = NAN
    req_s: float = NAN
    output_tokens: int = 0
    prompt_tokens: int = 0
    ttft: Dist = Dist.of([])
    itl: Dist = Dist.of([])
    e2e: Dist = Dist.of([])
    tpot_mean_ms: float = NAN

    def dist(self, metric: str) -> Dist:
        return {"ttft": self.ttft, "itl": self.itl, "e2e": self.e2e}[metric]

    def flat(self) -> dict[str, float]:
        """Flat ``key -> number`` attributes for the study database."""
        out: dict[str, float] = {
            "n_requests": self.n_requests, "n_ok": self.n_ok, "error_rate": self.error_rate,
            "duration_s": self.duration_s, "output_tok_s": self.output_tok_s, "total_tok_s": self.total_tok_s,
            "req_s": self.req_s, "output_tokens": self.output_tokens, "prompt_tokens": self.prompt_tokens,
            "tpot_mean_ms": self.tpot_mean_ms,
        }
        for name in ("ttft", "itl", "e2e"):
            for k, v in asdict(self.dist(name)).items():
                out[f"{name}_{k}" if k != "n" else f"{name}_n"] = v
        for kind, count in self.errors.items():
            out[f"errors_{kind}"] = count
        return out


def summarize(results: Sequence[RequestResult], duration_s: float, confidence: float = 0.95) -> LoadSummary:
    n = len(results)
    ok = [r for r in results if r.ok]
    errors = dict(Counter(r.error_kind for r in results if not r.ok))
    out_tok = sum(r.output_tokens for r in ok)
    prompt_tok = sum(r.prompt_tokens for r in ok)
    valid_duration = duration_s == duration_s and duration_s > 0
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return LoadSummary(
        n_requests=n,
        n_ok=len(ok),
        error_rate=(n - len(ok)) / n if n else NAN,
        errors=errors,
        duration_s=duration_s,
        output_tok_s=out_tok / duration_s if valid_duration and ok else NAN,
        total_tok_s=(out_tok + prompt_tok) / duration_s if valid_duration and ok else NAN,
        req_s=len(ok) / duration_s if valid_duration and ok else NAN,
        output_tokens=out_tok,
        prompt_tokens=prompt_tok,
        ttft=Dist.of([r.ttft for r in ok], confidence),
        itl=Dist.of([x for r in ok for x in r.itl], confidence),
        e2e=Dist.of([r.latency for r in ok], confidence),
        tpot_mean_ms=float(np.mean(tpots)) * 1000.0 if tpots else NAN,
    )
