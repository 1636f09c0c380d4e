"""What a trial scores and which constraints it breaks. Pure.

Every trial, whatever happened to it, gets the same constraint keys (Optuna 5 reads a missing
key as feasible, and GPSampler refuses differing keys). A value <= 0 is satisfied; the size of a
positive value says how badly, so the sampler learns the way back to feasibility:

- ``slo``: P99 / limit - 1 for the configured metric (its upper confidence bound if asked);
- ``errors``: error rate - allowed error rate;
- ``startup``: 1 when the server could not start or died, else 0;
- ``memory``: 1 when the memory estimate ruled the config out before any start, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.measures.metrics import LoadSummary
from optimizer.settings.config import SloConfig

__all__ = ["CONSTRAINT_KEYS", "Outcome", "infeasible", "score"]

CONSTRAINT_KEYS = ("slo", "errors", "startup", "memory")
_BROKEN = 1.0  # violation recorded when a measure could not be taken at all


@dataclass(frozen=True)
class Outcome:
    value: float  # output tokens/s to maximize (0.0 when nothing was served)
    constraints: dict[str, float]
    feasible: bool


def score(summary: LoadSummary, slo: SloConfig) -> Outcome:
    d = summary.dist(slo.metric)
    p99 = d.p99_high if slo.use_upper_bound else d.p99
    if slo.use_upper_bound and not p99 == p99:
        p99 = d.max  # too few samples to bound the P99: the sample maximum is the honest stand-in
    slo_violation = p99 / slo.limit_ms - 1.0 if p99 == p99 else _BROKEN
    err = summary.error_rate if summary.error_rate == summary.error_rate else 1.0
    constraints = {"slo": slo_violation, "errors": err - slo.max_error_rate, "startup": 0.0, "memory": 0.0}
    value = summary.output_tok_s if summary.output_tok_s == summary.output_tok_s else 0.0
    feasible = all(v <= 0 for v in constraints.values())
    return Outcome(value=value, constraints=constraints, feasible=feasible)


def infeasible(*, startup: bool = False, memory: bool = False) -> Outcome:
    """A config that served nothing: it could not start (``startup``) or was ruled out (``memory``)."""
    return Outcome(value=0.0, constraints={"slo": _BROKEN, "errors": _BROKEN, "startup": float(startup),
                                           "memory": float(memory)}, feasible=False)
