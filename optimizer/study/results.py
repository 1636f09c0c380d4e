"""The answer of a study: best feasible trial, the baseline, the gain. Pure over FrozenTrials,
read through their :class:`~optimizer.record.TrialRecord`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Optional, Sequence

from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from optimizer.record import Confirmation, Lineage, TrialRecord

__all__ = ["StudyResult", "engine_versions", "is_feasible", "latest_version", "of_version", "params_as_set",
           "study_result", "trial_version"]


def trial_version(t: FrozenTrial) -> str:
    """The vLLM version the trial ran on ("" unknown: see :attr:`TrialRecord.vllm_version`)."""
    return TrialRecord.from_attrs(t.user_attrs).vllm_version


def engine_versions(trials: Sequence[FrozenTrial]) -> list[str]:
    """The distinct known vLLM versions of ``trials``, in the order they first ran."""
    out: list[str] = []
    for t in sorted(trials, key=lambda t: t.number):
        if (v := trial_version(t)) and v not in out:
            out.append(v)
    return out


def latest_version(trials: Sequence[FrozenTrial]) -> str:
    """The version of the newest trial that knows its version ("" none does)."""
    for t in sorted(trials, key=lambda t: -t.number):
        if v := trial_version(t):
            return v
    return ""


def of_version(trials: Sequence[FrozenTrial], version: str) -> list[FrozenTrial]:
    """The trials that ran on vLLM ``version``, and those of unknown version after its first trial
    (a server that never answered, in a study that did not record the installed version yet).
    Everything where ``version`` is unknown, or is the only one the trials know (older studies)."""
    known = engine_versions(trials)
    if not version or not known or known == [version]:
        return list(trials)
    first = min((t.number for t in trials if trial_version(t) == version), default=None)
    if first is None:
        return []
    return [t for t in trials if (v := trial_version(t)) == version or (not v and t.number > first)]


def params_as_set(t: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters as the server got them: a stepped float rounded to its step's decimals.

    Optuna stores a stepped float as ``low + k * step`` in binary (``0.8700000000000001`` for
    0.87 in steps of 0.01); the search space rounds it before it becomes a flag
    (:mod:`optimizer.space.search_space`), so the table and the terminal print that value."""
    out = dict(t.params)
    for name, dist in t.distributions.items():
        value = out.get(name)
        if isinstance(dist, FloatDistribution) and isinstance(value, float) and dist.step is not None:
            exponent = Decimal(str(dist.step)).as_tuple().exponent
            out[name] = round(value, max(0, -exponent) if isinstance(exponent, int) else 6)
        elif isinstance(value, float):
            out[name] = float(f"{value:.12g}")
    return out


def is_feasible(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and bool(t.constraints) and all(v <= 0 for v in t.constraints.values())


@dataclass(frozen=True)
class StudyResult:
    n_complete: int
    n_feasible: int
    n_failed: int
    best: Optional[FrozenTrial]
    baseline: Optional[FrozenTrial]
    version: str = ""  # the vLLM version these trials ran on ("" unknown)
    set_aside: int = 0  # search trials of other vLLM versions, not ranked here

    @property
    def gain(self) -> float:
        """Best over baseline throughput, as a fraction (NaN without a feasible baseline)."""
        if self.best is None or self.baseline is None or not is_feasible(self.baseline):
            return math.nan
        base = self.baseline.value or 0.0
        return (self.best.value or 0.0) / base - 1.0 if base > 0 else math.nan

    @property
    def best_record(self) -> Optional[TrialRecord]:
        return TrialRecord.from_trial(self.best) if self.best is not None else None

    def best_command(self) -> str:
        rec = self.best_record
        return rec.launch.command if rec is not None and rec.launch is not None else ""


def study_result(trials: Sequence[FrozenTrial], version: Optional[str] = None) -> StudyResult:
    """The search's answer; confirmation runs (:mod:`optimizer.confirmation.stage`) are not study trials.

    A study resumed on another vLLM version ranks the trials of one version only: ``version``, by
    default that of its newest search trial. Trials of two engines are not one ranking (the same
    config can lose most of its throughput across a release); the older ones stay the sampler's prior."""
    search = [t for t in trials if Confirmation.from_attrs(t.user_attrs) is None]
    version = latest_version(search) if version is None else version
    trials = of_version(search, version)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if is_feasible(t)]
    best = max(feasible, key=lambda t: (t.value or 0.0, -t.number)) if feasible else None
    baselines = [t for t in complete if Lineage.from_attrs(t.user_attrs).baseline]
    return StudyResult(len(complete), len(feasible), sum(1 for t in trials if t.state == TrialState.FAIL), best,
                       baselines[-1] if baselines else None, version, len(search) - len(trials))


def describe(result: StudyResult, slo_metric: str, slo_ms: float) -> str:
    """The closing lines the terminal shows."""
    lines = [f"{result.n_complete} complete trials ({result.n_feasible} feasible), {result.n_failed} failed"
             + (f", on vLLM {result.version}" if result.version else "") + "."]
    if result.set_aside:
        lines.append(f"{result.set_aside} trial(s) of other vLLM versions are not ranked with these (the sampler's "
                     f"prior only).")
    b = result.baseline
    if b is not None:
        state = "feasible" if is_feasible(b) else "infeasible"
        p99 = TrialRecord.from_trial(b).p99(slo_metric)
        lines.append(f"baseline (vLLM defaults, trial {b.number}): {b.value or 0:.1f} output tok/s, "
                     f"P99 {slo_metric} {p99:.0f} ms ({state})")
    if result.best is None:
        lines.append(f"No config met the SLO (P99 {slo_metric} <= {slo_ms:.0f} ms with the allowed error rate). "
                     f"Raise slo.p99_ms, lower the load (load.concurrency / load.request_rate), or run more trials.")
        return "\n".join(lines)
    t = result.best
    p99 = TrialRecord.from_trial(t).p99(slo_metric)
    gain = result.gain
    gain_txt = f", {gain * 100:+.1f}% over the baseline" if gain == gain else ""
    lines.append(f"best: trial {t.number}: {t.value:.1f} output tok/s, P99 {slo_metric} {p99:.0f} ms "
                 f"(SLO {slo_ms:.0f} ms, margin {(1 - p99 / slo_ms) * 100:.0f}%){gain_txt}")
    lines.append(f"params: {json.dumps(params_as_set(t), sort_keys=True)}")
    lines.append(f"serve it: {result.best_command()}")
    return "\n".join(lines)
