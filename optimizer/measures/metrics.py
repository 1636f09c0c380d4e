"""Request records to a load summary. Pure.

Percentiles are numpy's (linear interpolation). An empty sample is NaN with its count beside it,
never 0: a config whose every request failed must not look like the fastest. The P99's
confidence interval is distribution-free (:func:`optimizer.core.stats.quantile_ci`), so the study can
judge feasibility on its upper bound.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from optimizer.core.stats import quantile_ci
from optimizer.loadgen.records import RequestResult
from optimizer.settings.choices import SloMetric

__all__ = ["LATENCY_METRICS", "Dist", "LoadSummary", "summarize"]

# every latency a LoadSummary holds as a Dist field of the same name, in the report's order: the one list
# the record's encoding, the report and the load test's table read (a new metric: choices.SloMetric)
LATENCY_METRICS: tuple[str, ...] = tuple(m.value for m in SloMetric)

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
        """The distribution of ``metric``, one of :data:`LATENCY_METRICS`."""
        if metric not in LATENCY_METRICS:
            raise KeyError(f"latency metric {metric!r}: the summary holds {', '.join(LATENCY_METRICS)}")
        d: Dist = getattr(self, metric)
        return d


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
