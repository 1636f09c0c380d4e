"""The report's trial table: one :class:`TrialInfo` per search trial, its :class:`Status`, and
the throughput/P99 Pareto front. Each trial is read through its
:class:`~optimizer.record.TrialRecord` (absent parts: that stage was not reached; NaN: not
measured); nothing here reads a user attr by its key.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, NamedTuple, Optional, Sequence

from optuna.trial import FrozenTrial, TrialState

from optimizer.capacity.curve import fitted
from optimizer.core.errors import FailureReason
from optimizer.measures.metrics import LATENCY_METRICS
from optimizer.record import TrialRecord
from optimizer.study.results import is_feasible, params_as_set

__all__ = ["METRICS", "Status", "TrialInfo", "classify", "pareto_front", "trial_info"]

METRICS = LATENCY_METRICS


class Status(str, Enum):
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"  # measured, but broke the SLO or the error budget
    FAILED = "failed"  # no measurement: the server could not start, or the trial failed
    RULED_OUT = "ruled out"  # the memory estimate refused it; no server was started
    RUNNING = "running"  # not finished (still running, or left behind by a killed run)


class TrialInfo(NamedTuple):
    number: int
    status: Status
    state: str
    baseline: bool
    throughput: float  # output tokens/s; NaN when not measured
    p99: float  # P99 of the SLO metric, ms
    p99s: dict[str, float]  # metric -> P99 ms
    error_rate: float
    params: dict[str, Any]
    constraints: dict[str, float]
    failure: str
    detail: str
    attempt: int
    retry_of: Optional[int]
    wall_s: float
    worker: str = ""  # <host>/w<index> that ran it ("" in studies from before parallel workers)
    gpus: str = ""  # the CUDA_VISIBLE_DEVICES its server got ("" where none were pinned)
    capacity: float = math.nan  # load.mode=capacity: the highest passing load (NaN: none, or no search)
    cap_limited_by: str = ""  # what limited it ("" without a search)
    cap_interval: str = ""  # the capacity fitted over every probe with its interval ("" without one)

    @property
    def measured(self) -> bool:
        return math.isfinite(self.throughput) and math.isfinite(self.p99)




def classify(t: FrozenTrial, rec: Optional[TrialRecord] = None) -> Status:
    rec = rec or TrialRecord.from_trial(t)
    if t.state == TrialState.COMPLETE:
        if is_feasible(t):
            return Status.FEASIBLE
        if rec.ruled_out:
            return Status.RULED_OUT
        if rec.failure is not None or not rec.measured:
            return Status.FAILED
        return Status.INFEASIBLE
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return Status.RUNNING
    return Status.FAILED


def trial_info(t: FrozenTrial, slo_metric: str, rec: Optional[TrialRecord] = None) -> TrialInfo:
    rec = rec or TrialRecord.from_trial(t)
    m = rec.measurement
    thr = m.summary.output_tok_s if m is not None else math.nan
    if t.state == TrialState.COMPLETE and t.value is not None and rec.failure is None:
        thr = float(t.value)
    wall = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
        else rec.timings.total_s if rec.timings is not None else math.nan
    p99s = {metric: rec.p99(metric) for metric in METRICS}
    failure = rec.failure.label if rec.failure else FailureReason.INTERRUPTED.value if rec.interrupted else ""
    detail = (rec.failure.detail if rec.failure else "") or (m.first_error if m is not None else "") \
        or rec.lineage.retry_reason
    error_rate = m.summary.error_rate if m is not None else math.nan
    return TrialInfo(
        number=t.number, status=classify(t, rec), state=t.state.name, baseline=rec.lineage.baseline,
        throughput=thr, p99=rec.p99(slo_metric), p99s=p99s, error_rate=error_rate, params=params_as_set(t),
        constraints=dict(t.constraints or {}), failure=failure,
        detail=detail or _violations(t, slo_metric, rec.p99(slo_metric), error_rate, rec),
        attempt=rec.lineage.attempt, retry_of=rec.lineage.retry_of, wall_s=wall, worker=rec.setup.worker,
        gpus=rec.setup.gpus, capacity=rec.capacity.result.value if rec.capacity else math.nan,
        cap_limited_by=rec.capacity.limit_label() if rec.capacity else "",
        cap_interval=fitted(rec.capacity.result).interval_text() if rec.capacity else "")  # early stop: below which incumbent


def _violations(t: FrozenTrial, metric: str, p99: float, error_rate: float, rec: TrialRecord) -> str:
    """Why a measured trial is infeasible, in words ('' when it is not)."""
    c = t.constraints or {}
    out = []
    if c.get("slo", 0.0) > 0 and math.isfinite(p99):
        out.append(f"P99 {metric} {p99:.0f} ms is {c['slo']:.0%} over the SLO")
    if c.get("errors", 0.0) > 0 and math.isfinite(error_rate):
        out.append(f"error rate {error_rate:.1%} is over the allowed rate")
    if c.get("quality", 0.0) > 0:
        why = rec.quality.why_rejected if rec.quality is not None else ""
        out.append("rejected by the quality gate" + (f": {why}" if why else ""))
    return "; ".join(out)


def pareto_front(infos: Sequence[TrialInfo]) -> list[int]:
    """Measured trials no other beats on both throughput (higher) and P99 (lower), by P99."""
    pts = sorted((i for i in infos if i.measured), key=lambda i: (i.p99, -i.throughput))
    front, best = [], -math.inf
    for i in pts:
        if i.throughput > best:
            front.append(i.number)
            best = i.throughput
    return front

