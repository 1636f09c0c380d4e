"""How noisy one measurement is, and whether the search's ranking is inside that noise. Pure.

:func:`throughput_interval` gives a trial's output tokens/s a confidence interval by batch
means, the standard interval for the mean of a steady-state time series: the measured window is
cut into ``B`` equal batches, each request's output tokens are spread over the time it streamed
them (first token to end), each batch's tokens/s is one observation, and the interval is the
t-interval of their mean (which is the overall throughput). Batches much longer than a request
make the batch rates nearly independent; on a short run there are few batches and a wide interval,
which is the honest answer. The P99's interval is the distribution-free one every summary already
carries (:class:`optimizer.measures.metrics.Dist`).

:func:`ranking_note` says, in words, when the two best feasible trials of a study are within each
other's interval: their order is not established by the search, only by the confirmation stage
(:mod:`optimizer.confirmation.stage`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from optimizer.core.stats import t_quantile
from optimizer.loadgen.records import RequestResult
from optimizer.record import ThroughputCI, TrialRecord

__all__ = ["MIN_BATCHES", "ranking_note", "throughput_interval"]

MIN_BATCHES = 3  # fewer: no interval (a t-interval on 2 batches is +-12.7 standard errors)
_PER_BATCH = 4  # requests per batch at least


def throughput_interval(results: Sequence[RequestResult], confidence: float = 0.95,
                        max_batches: int = 10) -> ThroughputCI:
    """The batch-means interval of the output tokens/s of the measured requests ``results``
    (warm-up excluded). NaN bounds when fewer than :data:`MIN_BATCHES` batches of at least
    four requests fit."""
    ok = [r for r in results if r.ok and math.isfinite(r.latency) and r.output_tokens > 0]
    batches = min(max_batches, len(ok) // _PER_BATCH)
    if batches < MIN_BATCHES:
        return ThroughputCI(math.nan, math.nan, batches, confidence)
    start = min(r.t_start for r in results)
    end = max(r.t_end for r in ok)
    if not end > start:
        return ThroughputCI(math.nan, math.nan, 0, confidence)
    edges = np.linspace(start, end, batches + 1)
    tokens = np.zeros(batches)
    for r in ok:
        a = r.t_start + (r.ttft if math.isfinite(r.ttft) else 0.0)
        b = r.t_end
        if b <= a:  # one chunk: all at the end
            tokens[min(batches - 1, int(np.searchsorted(edges, b, side="right")) - 1)] += r.output_tokens
            continue
        overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None)
        tokens += r.output_tokens * overlap / (b - a)
    rates = tokens / ((end - start) / batches)
    mean = float(rates.mean())
    half = t_quantile(1 - (1 - confidence) / 2, batches - 1) * float(rates.std(ddof=1)) / math.sqrt(batches)
    return ThroughputCI(mean - half, mean + half, batches, confidence)


def _entry(number: int, rec: TrialRecord) -> Optional[tuple[float, int, ThroughputCI]]:
    ci = rec.throughput_ci
    if rec.outcome is None or not rec.outcome.feasible or rec.confirmation is not None or ci is None:
        return None
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return None
    return rec.outcome.value, number, ci


def ranking_note(trials: Sequence[FrozenTrial], number: int, rec: TrialRecord) -> str:
    """A warning when trial ``number`` (just finished, record ``rec``, not stored yet) is one of
    the two best feasible search trials and their throughput intervals overlap; '' otherwise."""
    entries = [e for t in trials if t.state == TrialState.COMPLETE and t.number != number
               if (e := _entry(t.number, TrialRecord.from_trial(t))) is not None]
    mine = _entry(number, rec)
    if mine is None:
        return ""
    top = sorted([*entries, mine], key=lambda e: (-e[0], e[1]))[:2]
    if len(top) < 2 or mine not in top:
        return ""
    (v1, n1, c1), (v2, n2, c2) = top
    if c1.low > c2.high:
        return ""
    return (f"trials {n1} ({v1:.1f} output tok/s, {c1.confidence:.0%} CI {c1.low:.1f}-{c1.high:.1f}) and {n2} "
            f"({v2:.1f}, CI {c2.low:.1f}-{c2.high:.1f}) differ by {(v1 / v2 - 1) * 100 if v2 > 0 else math.nan:.1f}%, "
            f"inside the measurement noise: the search cannot tell them apart. The confirmation stage "
            f"(study.confirm.top_k) re-measures the top configs on fresh servers; longer load tests "
            f"(load.num_requests) narrow the intervals.")
