"""The typed records of a capacity search and their JSON. Pure.

A :class:`ProbeResult` is one load level measured and judged; a :class:`CapacityResult` is the
whole search: the highest load that met the SLO, the throughput and P99 there, what stopped the
search from going higher (:class:`LimitedBy`), and every probe (the latency-throughput curve).

``CapacityResult.to_json()`` is the object that ``python -m optimizer.loadtest ...
load.mode=capacity out=FILE.json`` writes under the top-level key ``capacity``::

    {"control": "concurrency", "value": 12, "output_tok_s": 812.3, "req_s": 12.7, "p99_ms": 1402.0,
     "limited_by": "slo", "feasible": true, "probes": [{"load": 1, "passed": true, ...}, ...], ...}

Numbers that could not be measured are NaN in the records and ``null`` in the JSON (never 0);
``from_json(to_json())`` gives back an equal record.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

__all__ = ["CapacityResult", "LimitedBy", "ProbeResult"]

NAN = math.nan


class LimitedBy(str, Enum):
    """What kept the capacity from being higher."""

    SLO = "slo"  # the next load broke the P99 limit (or, infeasible: the lowest load did)
    ERRORS = "errors"  # the next load broke the error-rate limit
    CAP = "cap"  # the highest load allowed (load.capacity.max) passed: the capacity may be higher
    BUDGET = "budget"  # load.capacity.max_probes or max_s ran out before the bracket closed
    ABORTED = "aborted"  # a probe could not reach the server (it died or hung): the search stopped
    EARLY_STOP = "early_stop"  # the caller's hook: the capacity is certainly below what it needs


@dataclass(frozen=True)
class ProbeResult:
    """One load level, measured and judged like a trial (optimizer/measures/objective.py)."""

    load: float  # concurrency (users) or rate (requests/s)
    passed: bool
    failed_on: str = ""  # "" (passed), "slo", "errors" or "aborted"
    output_tok_s: float = NAN
    req_s: float = NAN
    p99_ms: float = NAN  # of slo.metric, the point estimate
    p99_low_ms: float = NAN  # its confidence interval
    p99_high_ms: float = NAN
    judged_p99_ms: float = NAN  # what was compared with the limit (the upper bound if slo.use_upper_bound)
    max_ms: float = NAN  # of slo.metric: the upper end of the interval when too few samples bound the P99
    ttft_p50_ms: float = NAN
    ttft_p99_ms: float = NAN
    itl_p50_ms: float = NAN
    itl_p99_ms: float = NAN
    e2e_p50_ms: float = NAN
    e2e_p99_ms: float = NAN
    n_requests: int = 0
    n_ok: int = 0
    error_rate: float = NAN
    errors: Mapping[str, int] = field(default_factory=dict)
    constraints: Mapping[str, float] = field(default_factory=dict)  # objective.score's slo/errors slack
    kv_usage_peak: float = NAN  # 0..1, from the server's /metrics when telemetry was given
    preemptions: float = NAN
    duration_s: float = NAN  # measured phase(s), warm-up excluded
    seed: int = 0  # the workload seed of the (first) run: its prompts are reproducible
    lengthened: bool = False  # its P99 interval straddled the limit: measured again, judged on both runs
    aborted: str = ""  # why the run stopped issuing requests early
    # the largest values of slo.metric's sample (ms, ascending) and the sample's size: what a bootstrap of the
    # P99 reads (optimizer.capacity.curve); empty in probes recorded before they were kept
    tail_ms: tuple[float, ...] = ()
    tail_n: int = 0

    def straddles(self, limit_ms: float) -> bool:
        """Whether the P99's confidence interval holds values on both sides of ``limit_ms``
        (low <= limit < high), i.e. more requests could change the verdict. Too few samples for an
        upper bound: the sample maximum stands in (as in objective.score); for a lower bound: open.
        A probe that failed on errors or was aborted never straddles."""
        if self.aborted or self.failed_on == "errors":
            return False
        lo = self.p99_low_ms if self.p99_low_ms == self.p99_low_ms else -math.inf
        hi = self.p99_high_ms if self.p99_high_ms == self.p99_high_ms else self.max_ms
        if not hi == hi:
            hi = math.inf
        return lo <= limit_ms < hi

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["errors"], d["constraints"] = dict(self.errors), dict(self.constraints)
        return _clean(d)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ProbeResult":
        kw = _restore(cls, d)
        if "tail_ms" in kw:
            kw["tail_ms"] = tuple(float(v) for v in kw["tail_ms"])
        return cls(**kw)


@dataclass(frozen=True)
class CapacityResult:
    """The search's answer. ``value`` is the highest passing load (NaN when none passed)."""

    control: str  # concurrency | rate
    value: float
    output_tok_s: float
    req_s: float
    p99_ms: float  # of slo.metric at ``value``
    limited_by: LimitedBy
    feasible: bool  # some load passed
    constraints: Mapping[str, float]  # at ``value``; infeasible: the lowest load's (graded, > 0)
    probes: tuple[ProbeResult, ...]
    cap: float = NAN  # the highest load the search was allowed
    resolution: float = NAN  # relative bracket width it stopped at
    stop_reason: str = ""  # one line for people
    duration_s: float = NAN  # the whole search, warm-ups included
    slo_metric: str = "e2e"
    slo_p99_ms: float = NAN
    # limited_by=early_stop: the load the caller needed this config to exceed (the incumbent's
    # capacity); a failure at or below it proved the capacity lower, so ``value`` is a lower bound
    early_stop_load: float = NAN
    # limited_by=early_stop: the bar in the study's unit (the incumbent's lower confidence bound on its value) and
    # this search's upper bound on its own value when it stopped (below the bar): the true value is at most that
    early_stop_bound: float = NAN
    upper_value: float = NAN
    # the capacity fitted over every probe (optimizer.capacity.curve): the point, its interval (low 0: may be
    # below the lowest probe; high NaN: open above), the interval's confidence and the curve's flags
    # (non-monotone, cliff). NaN in results recorded before the fit: optimizer.capacity.curve.fitted() computes it
    estimate: float = NAN
    low: float = NAN
    high: float = NAN
    confidence: float = NAN
    flags: tuple[str, ...] = ()

    @property
    def stopped_early(self) -> bool:
        return self.limited_by is LimitedBy.EARLY_STOP

    @property
    def has_fit(self) -> bool:
        return self.confidence == self.confidence

    def interval_text(self) -> str:
        """``~12 users (95 % CI 10-14)``, for people; '' without a fit."""
        if not self.has_fit or not self.estimate == self.estimate:
            return ""
        unit = " users" if self.control == "concurrency" else " req/s"
        hi = f"{self.high:g}" if self.high == self.high else "open above"
        return f"~{self.estimate:g}{unit} ({self.confidence:.0%} CI {self.low:g}-{hi})"

    @property
    def at_capacity(self) -> ProbeResult | None:
        """The probe that passed at ``value`` (None when infeasible)."""
        return next((p for p in self.probes if p.passed and p.load == self.value), None)

    def throughput(self, kind: str = "output_tok_s") -> float:
        """The trial's value: ``output_tok_s`` or ``req_s`` at the capacity (0.0 when infeasible,
        as objective.score gives a config that served nothing)."""
        v = self.output_tok_s if kind == "output_tok_s" else self.req_s
        return v if v == v else 0.0

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["limited_by"] = self.limited_by.value
        d["constraints"] = dict(self.constraints)
        d["probes"] = [p.to_json() for p in self.probes]
        if self.control == "concurrency" and self.value == self.value:
            d["value"] = int(self.value)
        return _clean(d)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CapacityResult":
        kw = _restore(cls, {k: v for k, v in d.items() if k != "probes"})
        kw["limited_by"] = LimitedBy(d["limited_by"])
        kw["flags"] = tuple(str(f) for f in kw.get("flags", ()))
        kw["probes"] = tuple(ProbeResult.from_json(p) for p in d.get("probes", ()))
        return cls(**kw)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _restore(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from JSON: null -> NaN for float fields, unknown keys refused."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None and names[k].type in ("float", "float | None"):
            v = NAN
        elif isinstance(v, int) and not isinstance(v, bool) and names[k].type == "float":
            v = float(v)
        out[k] = v
    return out
